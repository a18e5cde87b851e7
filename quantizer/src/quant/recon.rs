//! Reconstruction (METHOD.md §3): units in forward order, each trained on its FP and
//! quantized-path input caches with AdaRound α and LSQ steps, QDrop, two Adam optimisers with
//! cosine decay; FBR adds γ · the layer losses of the block's QuantModules but the last.
//!
//! Deviations (also in `docs/QUANTIZER.md`):
//! * One quantized pass per iteration gives both the block output and the layer outputs (the
//!   official code runs two independent quantized passes, A and C; METHOD.md §3.3 notes they
//!   are equal in expectation), and the FP layer targets are computed once per unit, not per
//!   iteration (they depend on nothing that is trained).
//! * Each unit is validated on held-out calibration samples: its reconstructed parameters are
//!   kept only if the unit's output error went down, otherwise its initialised ones stay.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use candle_core::{DType as CDType, Tensor, Var, backprop::GradStore};
use edadm_format::graph::{Graph, UnitKind, ValueId};
use serde::{Deserialize, Serialize};

use super::hooks::{FpRecorder, QHooks, Trainable};
use super::model::{ActQ, QModel};
use crate::calib::{CalibSet, Rng};
use crate::error::{QuantError, Result};
use crate::fq::AdaRound;
use crate::net::{Env, Hooks, Net};

/// Reconstruction method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recon {
    /// Initialisation only.
    None,
    /// Every quantized layer on its own, output MSE (AdaRound / layer-wise).
    Layer,
    /// Blocks and the layers outside blocks, block output MSE (BRECQ; γ = 0).
    Block,
    /// Blocks with γ · the layer losses (EDA-DM's FBR).
    Fbr,
}

impl Recon {
    /// From its CLI name.
    pub fn from_name(s: &str) -> Option<Recon> {
        Some(match s {
            "none" => Recon::None,
            "layer" => Recon::Layer,
            "block" => Recon::Block,
            "fbr" => Recon::Fbr,
            _ => return None,
        })
    }

    /// CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Recon::None => "none",
            Recon::Layer => "layer",
            Recon::Block => "block",
            Recon::Fbr => "fbr",
        }
    }
}

/// Reconstruction settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReconConfig {
    /// The method.
    pub method: Recon,
    /// Iterations per unit.
    pub iters: usize,
    /// Minibatch.
    pub batch: usize,
    /// Adam learning rate of AdaRound's α.
    pub lr_w: f64,
    /// Adam learning rate of the activation steps.
    pub lr_a: f64,
    /// Weight of the layer losses (FBR; ignored otherwise).
    pub gamma: f64,
    /// QDrop probability of keeping an element FP (0.5 officially).
    pub drop_prob: f32,
}

/// One reconstruction unit.
#[derive(Clone, Debug)]
pub struct UnitSpec {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: UnitKind,
    /// Its nodes.
    pub range: Range<usize>,
    /// The weighted nodes (AdaRound).
    pub trained: Vec<usize>,
    /// The nodes whose outputs enter the layer loss.
    pub loss_layers: Vec<usize>,
    /// The activation quantizers whose steps are learned.
    pub acts: Vec<(usize, usize)>,
    /// Values read from outside, the first being the QDrop-mixed one.
    pub inputs: Vec<ValueId>,
    /// The unit's output.
    pub output: ValueId,
}

/// The units of `method` in forward order.
pub fn unit_specs(net: &Net, q: &QModel, method: Recon) -> Result<Vec<UnitSpec>> {
    let g = &net.graph;
    let mut specs = Vec::new();
    match method {
        Recon::None => {}
        Recon::Layer => {
            for ni in 0..g.nodes.len() {
                if q.weight(ni).is_some() {
                    specs.push(spec(g, q, g.nodes[ni].name.clone(), UnitKind::Layer, ni..ni + 1)?);
                }
            }
        }
        Recon::Block | Recon::Fbr => {
            for (u, unit) in g.units.iter().enumerate() {
                let members: Vec<usize> =
                    (0..g.nodes.len()).filter(|&i| g.nodes[i].unit.map(|x| x.0 as usize) == Some(u)).collect();
                let (Some(&a), Some(&b)) = (members.first(), members.last()) else { continue };
                if !(a..=b).any(|i| q.weight(i).is_some()) {
                    continue;
                }
                specs.push(spec(g, q, unit.name.clone(), unit.kind, a..b + 1)?);
            }
        }
    }
    Ok(specs)
}

fn spec(g: &Graph, q: &QModel, name: String, kind: UnitKind, range: Range<usize>) -> Result<UnitSpec> {
    let defined: HashSet<ValueId> = range.clone().map(|i| g.nodes[i].output).collect();
    let mut inputs = Vec::new();
    for i in range.clone() {
        for &v in &g.nodes[i].inputs {
            if !defined.contains(&v) && !inputs.contains(&v) {
                inputs.push(v);
            }
        }
    }
    let graph_out: HashSet<ValueId> = g.outputs.iter().map(|o| o.value).collect();
    let mut outputs: Vec<ValueId> = defined
        .iter()
        .copied()
        .filter(|v| {
            graph_out.contains(v)
                || g.nodes.iter().enumerate().any(|(i, n)| !range.contains(&i) && n.inputs.contains(v))
        })
        .collect();
    outputs.sort();
    if outputs.len() != 1 {
        return Err(QuantError::Invalid(format!(
            "reconstruction unit `{name}` has {} outputs; one is supported",
            outputs.len()
        )));
    }
    let trained: Vec<usize> = range.clone().filter(|&i| q.weight(i).is_some()).collect();
    let loss_layers =
        if kind == UnitKind::Layer { Vec::new() } else { trained[..trained.len().saturating_sub(1)].to_vec() };
    Ok(UnitSpec {
        name,
        kind,
        acts: q.act_keys(range.clone()),
        range,
        trained,
        loss_layers,
        inputs,
        output: outputs[0],
    })
}

/// The calibration set flowing through the FP model and the quantized model, in chunks, node
/// range by node range; values are dropped after their last reader.
#[derive(Debug)]
pub struct Streams {
    /// FP environments, one per chunk.
    pub fp: Vec<Env>,
    /// Quantized-path environments.
    pub q: Vec<Env>,
    last_use: Vec<usize>,
    keep: HashSet<ValueId>,
}

impl Streams {
    /// Both streams at the graph inputs, for the samples `rows` of `calib` in chunks of `chunk`.
    pub fn new(net: &Net, calib: &CalibSet, rows: &[usize], chunk: usize) -> Result<Streams> {
        let mut fp = Vec::new();
        for part in rows.chunks(chunk.max(1)) {
            let (x, t) = super::sample_batch(net, calib, part)?;
            fp.push(net.inputs(x, &t)?);
        }
        let g = &net.graph;
        let mut last_use = vec![0usize; g.num_values as usize];
        for (i, n) in g.nodes.iter().enumerate() {
            for v in &n.inputs {
                last_use[v.0 as usize] = i;
            }
        }
        Ok(Streams { q: fp.clone(), fp, last_use, keep: g.outputs.iter().map(|o| o.value).collect() })
    }

    /// Runs `range` on the FP stream.
    pub fn advance_fp(&mut self, net: &Net, range: Range<usize>, hooks: &dyn Hooks) -> Result<()> {
        for env in &mut self.fp {
            net.run(range.clone(), env, hooks)?;
        }
        Ok(())
    }

    /// Runs `range` on the quantized stream.
    pub fn advance_q(&mut self, net: &Net, range: Range<usize>, hooks: &dyn Hooks) -> Result<()> {
        for env in &mut self.q {
            net.run(range.clone(), env, hooks)?;
        }
        Ok(())
    }

    /// Drops the values nobody at or after node `next` reads.
    pub fn free_before(&mut self, next: usize) {
        for env in self.fp.iter_mut().chain(self.q.iter_mut()) {
            for (v, slot) in env.iter_mut().enumerate() {
                if slot.is_some() && self.last_use[v] < next && !self.keep.contains(&ValueId(v as u32)) {
                    *slot = None;
                }
            }
        }
    }

    /// A value over all samples (chunks concatenated).
    pub fn gather(&self, fp: bool, v: ValueId) -> Result<Tensor> {
        let envs = if fp { &self.fp } else { &self.q };
        let parts: Vec<Tensor> = envs
            .iter()
            .map(|e| {
                e[v.0 as usize].clone().ok_or_else(|| QuantError::Invalid(format!("value {} is not available", v.0)))
            })
            .collect::<Result<_>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }
}

/// `lp` loss (p = 2): squared error summed over axis 1, averaged over the rest.
pub fn lp(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let d = (a - b)?.sqr()?;
    Ok(if d.rank() >= 2 { d.sum(1)?.mean_all()? } else { d.mean_all()? })
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(f64::from(t.to_dtype(CDType::F32)?.to_scalar::<f32>()?))
}

/// Adam as PyTorch implements it (default betas and ε, no weight decay).
pub(crate) struct Adam {
    pub(crate) m: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
    pub(crate) t: i32,
}

impl Adam {
    pub(crate) fn new(vars: &[Var]) -> Result<Adam> {
        let z = |v: &Var| v.as_tensor().zeros_like();
        Ok(Adam {
            m: vars.iter().map(z).collect::<candle_core::Result<_>>()?,
            v: vars.iter().map(z).collect::<candle_core::Result<_>>()?,
            t: 0,
        })
    }

    pub(crate) fn step(&mut self, vars: &[Var], grads: &GradStore, lr: f64) -> Result<()> {
        self.step_scaled(vars, grads, lr, 1.0)
    }

    /// [`Adam::step`] with every gradient multiplied by `scale` first (gradient clipping).
    pub(crate) fn step_scaled(&mut self, vars: &[Var], grads: &GradStore, lr: f64, scale: f64) -> Result<()> {
        const B1: f64 = 0.9;
        const B2: f64 = 0.999;
        self.t += 1;
        let bc1 = 1.0 - B1.powi(self.t);
        let bc2 = 1.0 - B2.powi(self.t);
        for (i, var) in vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let g = &(g * scale)?;
            // Detached: the moments must not hold on to the graphs their inputs came from.
            self.m[i] = ((&self.m[i] * B1)? + (g * (1.0 - B1))?)?.detach();
            self.v[i] = ((&self.v[i] * B2)? + (g.sqr()? * (1.0 - B2))?)?.detach();
            let denom = ((self.v[i].sqrt()? / bc2.sqrt())? + 1e-8)?;
            let upd = ((&self.m[i] / denom)? * (lr / bc1))?;
            var.set(&(var.as_tensor() - upd)?)?;
        }
        Ok(())
    }
}

/// Cosine annealing to 0 over `total` steps (`CosineAnnealingLR`, η_min = 0): the rate of step `t`.
pub fn cosine(lr: f64, t: usize, total: usize) -> f64 {
    lr * 0.5 * (1.0 + (std::f64::consts::PI * t as f64 / total.max(1) as f64).cos())
}

/// What happened to one unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitReport {
    /// Unit name.
    pub name: String,
    /// Unit kind.
    pub kind: String,
    /// Output loss on the held-out samples with the initialised parameters.
    pub block_before: f64,
    /// Same, reconstructed.
    pub block_after: f64,
    /// Sum of the layer losses (the FBR layer set) on the held-out samples, initialised.
    pub layer_before: f64,
    /// Same, reconstructed.
    pub layer_after: f64,
    /// Training loss, mean of the first iterations.
    pub train_first: f64,
    /// Training loss, mean of the last iterations.
    pub train_last: f64,
    /// Whether the reconstructed parameters were kept.
    pub kept: bool,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// The data one unit trains and validates on.
#[derive(Debug)]
pub struct UnitData {
    /// Per external input, FP and quantized-path values over all samples.
    pub inputs: Vec<(ValueId, Tensor, Tensor)>,
    /// FP unit output.
    pub y_fp: Tensor,
    /// FP outputs of the loss layers.
    pub targets: HashMap<usize, Tensor>,
}

/// Gathers a unit's caches and runs the FP stream through it.
pub fn unit_data(net: &Net, s: &mut Streams, u: &UnitSpec) -> Result<UnitData> {
    let inputs =
        u.inputs.iter().map(|&v| Ok((v, s.gather(true, v)?, s.gather(false, v)?))).collect::<Result<Vec<_>>>()?;
    let layers: HashSet<usize> = u.loss_layers.iter().copied().collect();
    let mut targets: HashMap<usize, Vec<Tensor>> = HashMap::new();
    for env in &mut s.fp {
        let rec = FpRecorder::new(&layers);
        net.run(u.range.clone(), env, &rec)?;
        for (k, t) in rec.take() {
            targets.entry(k).or_default().push(t);
        }
    }
    let targets = targets.into_iter().map(|(k, v)| Ok((k, Tensor::cat(&v, 0)?))).collect::<Result<_>>()?;
    let y_fp = s.gather(true, u.output)?;
    Ok(UnitData { inputs, y_fp, targets })
}

fn rows_tensor(rows: &[usize], device: &candle_core::Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), rows.len(), device)?)
}

/// Evaluates a unit on the quantized-path inputs of `rows`: (output loss, layer loss sum).
fn evaluate(
    net: &Net,
    u: &UnitSpec,
    d: &UnitData,
    hooks: &QHooks<'_>,
    rows: &[usize],
    batch: usize,
) -> Result<(f64, f64)> {
    let (mut block, mut layer, mut n) = (0.0, 0.0, 0usize);
    for part in rows.chunks(batch.max(1)) {
        let idx = rows_tensor(part, &net.device)?;
        let mut env: Env = vec![None; net.graph.num_values as usize];
        for (v, _, xq) in &d.inputs {
            env[v.0 as usize] = Some(xq.index_select(&idx, 0)?);
        }
        net.run(u.range.clone(), &mut env, hooks)?;
        let out = env[u.output.0 as usize].clone().expect("unit output");
        let w = part.len() as f64;
        block += scalar(&lp(&out, &d.y_fp.index_select(&idx, 0)?)?)? * w;
        let rec = hooks.take_recorded();
        for l in &u.loss_layers {
            layer += scalar(&lp(&rec[l], &d.targets[l].index_select(&idx, 0)?)?)? * w;
        }
        n += part.len();
    }
    Ok((block / n.max(1) as f64, layer / n.max(1) as f64))
}

/// Progress of one unit's training.
#[derive(Clone, Copy, Debug)]
pub struct IterProgress {
    /// Iterations done.
    pub iter: usize,
    /// Of.
    pub iters: usize,
    /// Loss of the last iteration.
    pub loss: f64,
}

/// Reconstructs one unit; returns the model with the unit's final parameters (reconstructed
/// or, when that did not lower the held-out error, initialised) and the report.
#[allow(clippy::too_many_arguments)]
pub fn reconstruct_unit(
    net: &Net,
    q: &QModel,
    weights: &[Option<Tensor>],
    u: &UnitSpec,
    d: &UnitData,
    train_rows: &[usize],
    hold_rows: &[usize],
    cfg: &ReconConfig,
    seed: u64,
    progress: &mut dyn FnMut(IterProgress),
) -> Result<(QModel, UnitReport)> {
    let start = std::time::Instant::now();
    let gamma = if cfg.method == Recon::Fbr { cfg.gamma } else { 0.0 };
    let layers: HashSet<usize> = if gamma > 0.0 { u.loss_layers.iter().copied().collect() } else { HashSet::new() };
    let eval_layers: HashSet<usize> = u.loss_layers.iter().copied().collect();

    let ints = q.int_tensors(net)?;
    let before =
        evaluate(net, u, d, &QHooks::new(q, weights).integer(&ints).recording(&eval_layers), hold_rows, cfg.batch)?;

    // Parameters.
    let mut train = Trainable::default();
    let mut wvars = Vec::new();
    for &ni in &u.trained {
        let w = q.weight(ni).expect("weighted");
        let (fp, _, _) = super::model::fp_rows(net, ni)?;
        let mut parts = Vec::new();
        for g in 0..w.groups.len() {
            let (ada, alpha) = AdaRound::new(&w.slice(g, &fp), &w.grids(g));
            let var = Var::from_vec(alpha, (w.out, (w.groups[g].end - w.groups[g].start) * w.kernel), &net.device)?;
            wvars.push(var.clone());
            parts.push((var, ada));
        }
        train.alphas.insert(ni, parts);
    }
    let mut avars = Vec::new();
    for &(ni, g) in &u.acts {
        let aq = q.act(ni, g).expect("quantizer");
        let var = Var::from_vec(vec![aq.delta], 1, &net.device)?;
        avars.push(var.clone());
        train.deltas.insert((ni, g), var);
    }
    let mut opt_w = Adam::new(&wvars)?;
    let mut opt_a = Adam::new(&avars)?;
    let mut rng = Rng::new(seed);
    let bsz = cfg.batch.min(train_rows.len()).max(1);
    let mut losses = Vec::with_capacity(cfg.iters);
    let main = u.inputs[0];
    for it in 0..cfg.iters {
        let pick: Vec<usize> = rng.choose(train_rows.len(), bsz).into_iter().map(|i| train_rows[i]).collect();
        let idx = rows_tensor(&pick, &net.device)?;
        let mut env: Env = vec![None; net.graph.num_values as usize];
        for (v, xf, xq) in &d.inputs {
            let xq = xq.index_select(&idx, 0)?;
            let x = if *v == main && cfg.drop_prob > 0.0 {
                let xf = xf.index_select(&idx, 0)?;
                let n = xq.elem_count();
                let m: Vec<u8> = (0..n).map(|_| u8::from(rng.uniform_f32() < cfg.drop_prob)).collect();
                let m = Tensor::from_vec(m, xq.shape(), &net.device)?;
                m.where_cond(&xq, &xf)?
            } else {
                xq
            };
            env[v.0 as usize] = Some(x);
        }
        let drop_seed = if cfg.drop_prob > 0.0 { Some(rng.next_u64()) } else { None };
        let hooks = QHooks::new(q, weights).training(&train, drop_seed).recording(&layers);
        net.run(u.range.clone(), &mut env, &hooks)?;
        let out = env[u.output.0 as usize].clone().expect("unit output");
        let mut loss = lp(&out, &d.y_fp.index_select(&idx, 0)?)?;
        if gamma > 0.0 {
            let rec = hooks.take_recorded();
            for l in &u.loss_layers {
                let ll = lp(&rec[l], &d.targets[l].index_select(&idx, 0)?)?;
                loss = (loss + (ll * gamma)?)?;
            }
        }
        let lv = scalar(&loss)?;
        if !lv.is_finite() {
            return Err(QuantError::Invalid(format!("unit `{}`: the loss became {lv} at iteration {it}", u.name)));
        }
        losses.push(lv);
        let grads = loss.backward()?;
        opt_w.step(&wvars, &grads, cosine(cfg.lr_w, it, cfg.iters))?;
        opt_a.step(&avars, &grads, cosine(cfg.lr_a, it, cfg.iters))?;
        for v in &avars {
            v.set(&v.as_tensor().clamp(1e-8f32, f32::MAX)?)?;
        }
        progress(IterProgress { iter: it + 1, iters: cfg.iters, loss: lv });
    }

    // Harden.
    let mut cand = q.clone();
    for &ni in &u.trained {
        let parts = &train.alphas[&ni];
        let w = cand.weight_mut(ni).expect("weighted");
        let mut ints = std::mem::take(&mut w.ints);
        for (g, (var, ada)) in parts.iter().enumerate() {
            let alpha: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
            let hard: Vec<i8> = ada.hard_ints(&alpha).into_iter().map(|v| v as i8).collect();
            w.unslice(g, &hard, &mut ints);
        }
        w.ints = ints;
        w.adaround = true;
    }
    for (&(ni, g), var) in &train.deltas {
        let mut aq: ActQ = cand.act(ni, g).expect("quantizer");
        aq.delta = var.as_tensor().flatten_all()?.to_vec1::<f32>()?[0];
        cand.set_act(ni, g, aq);
    }
    let mut cand_w = weights.to_vec();
    let fresh = cand.weight_tensors_of(net, &u.trained)?;
    for (ni, t) in fresh {
        cand_w[ni] = Some(t);
    }
    let cand_ints = cand.int_tensors(net)?;
    let after = evaluate(
        net,
        u,
        d,
        &QHooks::new(&cand, &cand_w).integer(&cand_ints).recording(&eval_layers),
        hold_rows,
        cfg.batch,
    )?;
    let kept = after.0 < before.0;
    let k = (losses.len() / 10).clamp(1, 50);
    let mean = |s: &[f64]| if s.is_empty() { f64::NAN } else { s.iter().sum::<f64>() / s.len() as f64 };
    let report = UnitReport {
        name: u.name.clone(),
        kind: u.kind.name().into(),
        block_before: before.0,
        block_after: after.0,
        layer_before: before.1,
        layer_after: after.1,
        train_first: mean(&losses[..k.min(losses.len())]),
        train_last: mean(&losses[losses.len().saturating_sub(k)..]),
        kept,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((if kept { cand } else { q.clone() }, report))
}

impl QModel {
    /// The dequantized weights of `nodes` (op layout).
    pub fn weight_tensors_of(&self, net: &Net, nodes: &[usize]) -> Result<Vec<(usize, Tensor)>> {
        nodes
            .iter()
            .map(|&ni| {
                let w = self.weight(ni).expect("weighted");
                let t = Tensor::from_vec(w.dequant_rows(), w.ints.len(), &net.device)?;
                Ok((ni, w.to_op_layout(t)?))
            })
            .collect()
    }
}
