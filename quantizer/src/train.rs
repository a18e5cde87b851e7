//! Training a diffusion UNet from scratch on the quantizer's differentiable graph interpreter
//! (`edadm train`): ε-prediction with Ho et al.'s simple loss, Adam, gradient-norm clipping, an
//! exponential moving average of the weights, checkpoints and resume.
//!
//! The recipe is the one of `shared/models/fmnist-ddpm` (its `train.py`): images zero-padded to
//! the model's size and scaled to [-1, 1], random horizontal flips, `t ~ U{0..T−1}`,
//! `x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε`, loss `mean((ε − ε_θ(x_t, t))²)`, Adam (β 0.9/0.999, ε 1e-8),
//! global gradient-norm clip, and a zero-initialised, bias-corrected EMA (an exact exponential
//! average of the weights seen so far). Deviation: the graph has no dropout (it is the inference
//! graph), so training runs without it.
//!
//! Every draw of step `s` (images, flips, timesteps, noise) comes from a generator seeded by
//! `(seed, s)`, so a run resumed from a checkpoint takes exactly the steps of an uninterrupted one.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use edadm_format::graph::{Op, TensorId};
use edadm_format::{DType, FileBuilder, MetaValue};
use edadm_runtime::Model;
use serde::{Deserialize, Serialize};

use crate::calib::rng::Rng;
use crate::error::{QuantError, Result};
use crate::net::{Fp, Net};
use crate::quant::recon::Adam;

/// Images of a dataset, `n × h × w` bytes (one channel).
#[derive(Clone, Debug)]
pub struct Images {
    /// Pixels, image after image, row-major.
    pub pixels: Vec<u8>,
    /// Images.
    pub n: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl Images {
    /// Reads an IDX image file (`idx3-ubyte`, e.g. MNIST or Fashion-MNIST), gzip-compressed or
    /// not (with the reader `edadm eval` uses).
    pub fn read_idx(path: &Path) -> Result<Images> {
        use edadm_eval::EvalError;
        let im = edadm_eval::images::Images::read_idx(path).map_err(|e| match e {
            EvalError::Io { path, source } => QuantError::Io { path, source },
            EvalError::BadFile { path, what } => QuantError::BadFile { path, what },
            EvalError::Invalid(what) => QuantError::BadFile { path: path.display().to_string(), what },
        })?;
        Ok(Images { pixels: im.pixels, n: im.n, h: im.h, w: im.w })
    }
}

/// Training settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Images per step.
    pub batch: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Linear learning-rate warm-up steps.
    pub warmup: usize,
    /// EMA decay.
    pub ema: f64,
    /// Global gradient-norm clip (0: none).
    pub clip: f64,
    /// Flip images horizontally with probability ½.
    pub flip: bool,
    /// Seed of every draw.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig { steps: 10_000, batch: 64, lr: 2e-4, warmup: 0, ema: 0.999, clip: 1.0, flip: true, seed: 1234 }
    }
}

/// The state a checkpoint holds beside the tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct State {
    config: TrainConfig,
    /// What the run trains on (model graph size, data size), so a checkpoint of another run is
    /// refused.
    fingerprint: String,
    step: usize,
    adam_t: i32,
    /// Mean loss of every 100 steps so far.
    losses: Vec<f64>,
}

/// A training run's result.
#[derive(Clone, Debug)]
pub struct Trained {
    /// The EMA weights by tensor.
    pub ema: BTreeMap<TensorId, Vec<f32>>,
    /// Mean loss of every 100 steps.
    pub losses: Vec<f64>,
    /// Steps run in this call (the rest came from the checkpoint).
    pub steps_run: usize,
}

/// The trainable tensors of a graph in a fixed order, with the (node, weight-or-bias) they feed.
fn trainable(net: &Net) -> Vec<(usize, bool, TensorId)> {
    let mut out = Vec::new();
    for (ni, node) in net.graph.nodes.iter().enumerate() {
        let (w, b) = match &node.op {
            Op::Conv2d(c) => (Some(c.weight), c.bias),
            Op::ConvTranspose2d(c) => (Some(c.weight), c.bias),
            Op::Linear(l) => (Some(l.weight), l.bias),
            Op::GroupNorm(n) => (n.weight, n.bias),
            Op::LayerNorm(n) => (n.weight, n.bias),
            _ => (None, None),
        };
        if let Some(w) = w {
            out.push((ni, true, w));
        }
        if let Some(b) = b {
            out.push((ni, false, b));
        }
    }
    out
}

/// Trains `model`'s weights (its file holds the initial ones) on `images`, checkpointing into
/// `checkpoint` every `every` steps and at the end; with `resume`, continues from it — up to
/// `cfg.steps`, which may differ from the interrupted run's (a resume with the checkpoint's own
/// step count exports its weights as they are).
/// `progress(step, loss)` is called after every step.
pub fn train(
    model: &Model,
    images: &Images,
    cfg: &TrainConfig,
    checkpoint: &Path,
    every: usize,
    resume: bool,
    progress: &mut dyn FnMut(usize, f64),
) -> Result<Trained> {
    if cfg.steps == 0
        || cfg.batch == 0
        || cfg.lr.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        || !(0.0..1.0).contains(&cfg.ema)
        || cfg.clip < 0.0
    {
        return Err(QuantError::Invalid(
            "steps and batch must be at least 1, lr positive, ema in [0, 1), clip ≥ 0".into(),
        ));
    }
    let [c, h, w] = model.sample_shape();
    if c != 1 {
        return Err(QuantError::Invalid(format!("the model takes {c} channels; the image files hold 1")));
    }
    if images.h > h || images.w > w {
        return Err(QuantError::Invalid(format!(
            "{}x{} images do not fit the model's {h}x{w} input",
            images.h, images.w
        )));
    }
    let schedule = model.schedule()?;
    let alpha_bar: Vec<f64> = (0..schedule.len()).map(|t| schedule.alpha_bar(t as i64)).collect();
    let dev = Device::Cpu;
    let mut net = Net::from_model(model, &dev)?;
    let params = trainable(&net);
    let mut vars = Vec::with_capacity(params.len());
    for &(ni, is_w, _) in &params {
        let p = &mut net.params[ni];
        let slot = if is_w { &mut p.weight } else { &mut p.bias };
        let t = slot.as_ref().expect("the graph names this parameter");
        let v = Var::from_tensor(t)?;
        *slot = Some(v.as_tensor().clone());
        vars.push(v);
    }
    let mut adam = Adam::new(&vars)?;
    let mut ema: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().zeros_like()).collect::<candle_core::Result<_>>()?;
    let fingerprint = format!(
        "nodes {} params {} data {}x{}x{} sum {}",
        net.graph.nodes.len(),
        vars.iter().map(|v| v.elem_count()).sum::<usize>(),
        images.n,
        images.h,
        images.w,
        images.pixels.iter().map(|&b| u64::from(b)).sum::<u64>()
    );
    let mut state = State { config: cfg.clone(), fingerprint, step: 0, adam_t: 0, losses: Vec::new() };
    if resume {
        let (st, tensors) = load_checkpoint(checkpoint)?;
        // The step count may change (stop early, or go on): no draw and no learning rate
        // depends on it.
        let same = TrainConfig { steps: cfg.steps, ..st.config.clone() } == state.config;
        if !same || st.fingerprint != state.fingerprint {
            return Err(QuantError::BadFile {
                path: checkpoint.display().to_string(),
                what: "a checkpoint of another training run (other settings, model or data)".into(),
            });
        }
        let get = |name: String| {
            tensors.get(&name).cloned().ok_or_else(|| QuantError::BadFile {
                path: checkpoint.display().to_string(),
                what: format!("tensor {name} missing"),
            })
        };
        for (i, v) in vars.iter().enumerate() {
            let shape = v.shape().clone();
            v.set(&Tensor::from_vec(get(format!("p.{i}"))?, shape.clone(), &dev)?)?;
            adam.m[i] = Tensor::from_vec(get(format!("m.{i}"))?, shape.clone(), &dev)?;
            adam.v[i] = Tensor::from_vec(get(format!("v.{i}"))?, shape.clone(), &dev)?;
            ema[i] = Tensor::from_vec(get(format!("ema.{i}"))?, shape, &dev)?;
        }
        if st.step > cfg.steps {
            return Err(QuantError::Invalid(format!(
                "the checkpoint is at step {}, beyond --steps {}",
                st.step, cfg.steps
            )));
        }
        adam.t = st.adam_t;
        state = State { config: cfg.clone(), ..st };
    } else if checkpoint.exists() {
        return Err(QuantError::Invalid(format!(
            "{} exists: pass --resume to continue that run, or remove it",
            checkpoint.display()
        )));
    }

    let start = state.step;
    let (pad_y, pad_x) = ((h - images.h) / 2, (w - images.w) / 2);
    let per = c * h * w;
    let mut window = (0.0f64, 0usize);
    for step in start..cfg.steps {
        // Every draw of this step from (seed, step).
        let mut rng = Rng::new(cfg.seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17));
        let mut x0 = vec![-1f32; cfg.batch * per];
        let mut xt = vec![0f32; cfg.batch * per];
        let mut eps = vec![0f32; cfg.batch * per];
        let mut ts = vec![0f32; cfg.batch];
        for b in 0..cfg.batch {
            let img = rng.below(images.n as u64) as usize;
            let flip = cfg.flip && rng.below(2) == 1;
            let src = &images.pixels[img * images.h * images.w..(img + 1) * images.h * images.w];
            for y in 0..images.h {
                for x in 0..images.w {
                    let sx = if flip { images.w - 1 - x } else { x };
                    x0[b * per + (y + pad_y) * w + x + pad_x] = f32::from(src[y * images.w + sx]) / 127.5 - 1.0;
                }
            }
            let t = rng.below(alpha_bar.len() as u64) as usize;
            ts[b] = t as f32;
            let (sa, sn) = (alpha_bar[t].sqrt() as f32, (1.0 - alpha_bar[t]).sqrt() as f32);
            for i in b * per..(b + 1) * per {
                let e = rng.normal() as f32;
                eps[i] = e;
                xt[i] = sa * x0[i] + sn * e;
            }
        }
        let x = Tensor::from_vec(xt, (cfg.batch, c, h, w), &dev)?;
        let target = Tensor::from_vec(eps, (cfg.batch, c, h, w), &dev)?;
        let pred = net.forward(x, &ts, &Fp)?;
        let loss = (pred - target)?.sqr()?.mean_all()?;
        let lv = f64::from(loss.to_scalar::<f32>()?);
        if !lv.is_finite() {
            return Err(QuantError::Invalid(format!("the loss became {lv} at step {step}; lower --lr")));
        }
        let grads = loss.backward()?;
        let scale = if cfg.clip > 0.0 {
            let mut sq = 0f64;
            for v in &vars {
                if let Some(g) = grads.get(v.as_tensor()) {
                    sq += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
                }
            }
            let norm = sq.sqrt();
            if norm > cfg.clip { cfg.clip / (norm + 1e-6) } else { 1.0 }
        } else {
            1.0
        };
        let lr = if cfg.warmup > 0 { cfg.lr * ((step + 1) as f64 / cfg.warmup as f64).min(1.0) } else { cfg.lr };
        adam.step_scaled(&vars, &grads, lr, scale)?;
        // Detached: an op on a Var is recorded for backprop, and the EMA would otherwise keep
        // the whole history of the run alive through its graph.
        for (e, v) in ema.iter_mut().zip(&vars) {
            *e = ((&*e * cfg.ema)? + (v.as_tensor().detach() * (1.0 - cfg.ema))?)?.detach();
        }
        state.step = step + 1;
        window.0 += lv;
        window.1 += 1;
        if state.step.is_multiple_of(100) || state.step == cfg.steps {
            state.losses.push(window.0 / window.1 as f64);
            window = (0.0, 0);
        }
        progress(state.step, lv);
        if (every > 0 && state.step.is_multiple_of(every)) || state.step == cfg.steps {
            state.adam_t = adam.t;
            save_checkpoint(checkpoint, &state, &vars, &adam, &ema)?;
        }
    }
    // The bias-corrected EMA.
    let correction = 1.0 - cfg.ema.powi(state.step as i32);
    let mut out = BTreeMap::new();
    for (e, &(_, _, id)) in ema.iter().zip(&params) {
        let v: Vec<f32> = (e / correction)?.flatten_all()?.to_vec1()?;
        out.insert(id, v);
    }
    Ok(Trained { ema: out, losses: state.losses, steps_run: cfg.steps - start })
}

fn save_checkpoint(path: &Path, state: &State, vars: &[Var], adam: &Adam, ema: &[Tensor]) -> Result<()> {
    let mut named: Vec<(String, Vec<f32>, Vec<usize>)> = Vec::new();
    for (i, v) in vars.iter().enumerate() {
        let shape = v.dims().to_vec();
        named.push((format!("p.{i}"), v.flatten_all()?.to_vec1()?, shape.clone()));
        named.push((format!("m.{i}"), adam.m[i].flatten_all()?.to_vec1()?, shape.clone()));
        named.push((format!("v.{i}"), adam.v[i].flatten_all()?.to_vec1()?, shape.clone()));
        named.push((format!("ema.{i}"), ema[i].flatten_all()?.to_vec1()?, shape));
    }
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> =
        named.into_iter().map(|(n, v, s)| (n, v.iter().flat_map(|x| x.to_le_bytes()).collect(), s)).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, b, s)| Ok((n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?)))
        .collect::<std::result::Result<_, safetensors::SafeTensorError>>()?;
    let mut meta = std::collections::HashMap::new();
    meta.insert(
        "edadm.train".to_string(),
        serde_json::to_string(state).map_err(|e| QuantError::Invalid(e.to_string()))?,
    );
    let data = safetensors::serialize(views, Some(meta))?;
    crate::io::write_atomic(path, &data)
}

fn load_checkpoint(path: &Path) -> Result<(State, BTreeMap<String, Vec<f32>>)> {
    let bad = |what: String| QuantError::BadFile { path: path.display().to_string(), what };
    let raw = std::fs::read(path).map_err(|source| QuantError::Io { path: path.display().to_string(), source })?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&raw).map_err(|e| bad(format!("not a checkpoint: {e}")))?;
    let st = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("edadm.train"))
        .ok_or_else(|| bad("not a training checkpoint (no edadm.train metadata)".into()))?;
    let state: State = serde_json::from_str(st).map_err(|e| bad(format!("bad training state: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&raw).map_err(|e| bad(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(bad(format!("tensor {name} is not f32")));
        }
        out.insert(name, view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect());
    }
    Ok((state, out))
}

/// The bytes of `source` with the trained tensors replaced (in their stored dtype, f32 or f16;
/// with `f16`, every trained weight matrix — two or more dimensions — is stored in f16, biases
/// and norm parameters stay f32, as `edadm import --dtype f16` does) and `meta` added to its
/// metadata.
pub fn export(
    source: &Model,
    weights: &BTreeMap<TensorId, Vec<f32>>,
    meta: Vec<(String, MetaValue)>,
    f16: bool,
) -> Result<Vec<u8>> {
    let file = source.file();
    let err = |e: edadm_format::FormatError| QuantError::Invalid(format!("export: {e}"));
    let mut b = FileBuilder::new();
    b.set_alignment(file.header().alignment).map_err(|e| QuantError::Invalid(e.to_string()))?;
    let mut md = file.metadata().clone();
    for (k, v) in meta {
        md.insert(k, v);
    }
    b.set_metadata(md);
    for view in file.tensors() {
        match weights.get(&view.id) {
            Some(v) => {
                let dtype =
                    if view.dtype == DType::F16 || (f16 && view.shape.len() >= 2) { DType::F16 } else { DType::F32 };
                let bytes: Vec<u8> = match dtype {
                    DType::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
                    _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                };
                b.add_tensor(view.name, dtype, view.shape, bytes).map_err(err)?;
            }
            None => {
                b.add_tensor(view.name, view.dtype, view.shape, std::borrow::Cow::Borrowed(view.data)).map_err(err)?;
            }
        }
    }
    b.set_graph(source.graph().clone());
    b.to_bytes().map_err(err)
}
