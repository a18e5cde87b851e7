//! The initialisation of a quantized model: weight rounding (nearest or GPTQ), activation
//! ranges observed over the calibration batches (with `--act-init layer`'s choice per
//! quantizer) and the time-step groups' tables.

use std::collections::{BTreeMap, HashMap};

use candle_core::Tensor;

use super::hooks::{Only, QHooks};
use super::model::{self, ActQ, QModel, StepActs, Structure};
use super::{QuantizeConfig, gptq, sample_batch};
use crate::calib::CalibSet;
use crate::error::{QuantError, Result};
use crate::grid::{ActInit, LAYER_CANDIDATES};
use crate::net::{Fp, Net, tensor4};

fn channel_counts(net: &Net, calib: &CalibSet) -> Result<HashMap<edadm_format::graph::ValueId, usize>> {
    let [c, h, w] = calib.sample_shape;
    let x = tensor4(calib.sample(0), [1, c, h, w], &net.device)?;
    let mut env = net.inputs(x, &calib.t[..1])?;
    net.run(0..net.graph.nodes.len(), &mut env, &Fp)?;
    Ok(model::channel_counts(&env))
}

/// Initialises the quantized model: weights by the per-channel search (rounded to nearest or
/// by GPTQ), then activation ranges by the EMA over batches of `rows` on the weight-quantized
/// model with every activation quantizer on (METHOD.md §2.3). Also returns how many
/// quantizers chose each candidate of `--act-init layer` (empty for the other initialisations).
pub fn initialise(
    net: &Net,
    calib: &CalibSet,
    rows: &[usize],
    cfg: &QuantizeConfig,
) -> Result<(QModel, BTreeMap<String, usize>)> {
    let mut q = weights_rounded(net, calib, rows, cfg)?;
    let (acts, counts) = observe_acts(net, &q, calib, rows, cfg)?;
    for (k, a) in acts {
        q.set_act(k.0, k.1, a);
    }
    Ok((q, counts))
}

/// The quantized model with its weights rounded (nearest, or GPTQ on the samples `rows`) and
/// placeholder activation quantizers.
/// `structure`'s weight quantizers with nearest rounding and no activation quantizer
/// initialised (what a weights-only analysis needs: no calibration forward pass).
pub fn weights_nearest(net: &Net, calib: &CalibSet, structure: &Structure) -> Result<QModel> {
    QModel::new(net, structure.clone(), &channel_counts(net, calib)?)
}

pub(super) fn weights_rounded(net: &Net, calib: &CalibSet, rows: &[usize], cfg: &QuantizeConfig) -> Result<QModel> {
    let mut q = QModel::new(net, cfg.structure.clone(), &channel_counts(net, calib)?)?;
    if cfg.gptq {
        gptq::round_weights(net, calib, rows, cfg.init_batch, &mut q)?;
    }
    Ok(q)
}

/// The activation quantizers of `q` initialised on the samples `rows` (the EMA over batches on
/// the weight-quantized model with every activation quantizer on), by key `(node, group)`, and
/// the choice counts of `--act-init layer`.
#[allow(clippy::type_complexity)]
fn observe_acts(
    net: &Net,
    q: &QModel,
    calib: &CalibSet,
    rows: &[usize],
    cfg: &QuantizeConfig,
) -> Result<(Vec<((usize, usize), ActQ)>, BTreeMap<String, usize>)> {
    let weights = q.weight_tensors(net)?;
    let mut ranges = model::Ranges::new();
    for part in rows.chunks(cfg.init_batch.max(1)) {
        let (x, t) = sample_batch(net, calib, part)?;
        let hooks = QHooks::new(q, &weights).observing(std::mem::take(&mut ranges), cfg.act_init);
        net.forward(x, &t, &hooks)?;
        ranges = hooks.into_ranges();
    }
    let missing = q.act_keys(0..net.graph.nodes.len()).into_iter().filter(|k| !ranges.contains_key(k)).count();
    if missing > 0 {
        return Err(QuantError::Invalid(format!("{missing} activation quantizers saw no data during initialisation")));
    }
    let counts = if cfg.act_init == ActInit::Layer {
        choose_by_layer_error(net, q, &weights, calib, rows, cfg, &mut ranges)?
    } else {
        BTreeMap::new()
    };
    let mut acts: Vec<((usize, usize), ActQ)> = ranges
        .iter()
        .map(|(&(ni, g), r)| {
            let bits = q.act(ni, g).expect("quantizer").bits;
            ((ni, g), ActQ::from_grid(r.grid().expect("observed"), bits))
        })
        .collect();
    acts.sort_by_key(|a| a.0);
    Ok((acts, counts))
}

/// `--act-init layer`: every quantizer keeps the candidate range whose layer, run alone on the
/// FP model's inputs with only this quantizer and the layer's own weights quantized, lands
/// closest (squared error summed over `rows`) to the FP layer's output. Returns how many
/// quantizers chose each candidate.
fn choose_by_layer_error(
    net: &Net,
    q: &QModel,
    weights: &[Option<Tensor>],
    calib: &CalibSet,
    rows: &[usize],
    cfg: &QuantizeConfig,
    ranges: &mut model::Ranges,
) -> Result<BTreeMap<String, usize>> {
    let mut keys: Vec<(usize, usize)> = ranges.keys().copied().collect();
    keys.sort_unstable();
    let mut err: HashMap<(usize, usize), Vec<f64>> = HashMap::new();
    for part in rows.chunks(cfg.init_batch.max(1)) {
        let (x, t) = sample_batch(net, calib, part)?;
        let mut env = net.inputs(x, &t)?;
        net.run(0..net.graph.nodes.len(), &mut env, &Fp)?;
        for &(ni, g) in &keys {
            let Some(fp) = env[net.graph.nodes[ni].output.0 as usize].clone() else { continue };
            let only = Only { acts: [(ni, g)].into(), weights: [ni].into() };
            let bits = q.act(ni, g).expect("observed quantizer").bits;
            let e = err.entry((ni, g)).or_default();
            for (i, grid) in ranges[&(ni, g)].candidates().into_iter().enumerate() {
                let hooks = QHooks::new(q, weights).only(&only).with_act((ni, g), ActQ::from_grid(grid, bits));
                let y = net.node(ni, &env, &hooks)?;
                let d = f64::from((y - &fp)?.sqr()?.sum_all()?.to_scalar::<f32>()?);
                if e.len() <= i {
                    e.push(0.0);
                }
                e[i] += if d.is_finite() { d } else { f64::INFINITY };
            }
        }
    }
    let mut counts = BTreeMap::new();
    for (k, e) in err {
        // Ties keep the earlier candidate (the default percentile first).
        let best = e.iter().enumerate().fold(0, |b, (i, &v)| if v < e[b] { i } else { b });
        ranges.get_mut(&k).expect("observed quantizer").choose(best);
        *counts.entry(LAYER_CANDIDATES[best].name()).or_insert(0) += 1;
    }
    Ok(counts)
}

/// `q` with time-step-aware activation quantizers: the groups' edges from the timesteps of the
/// samples `rows`, each group's quantizers initialised (as [`initialise`] does) on the samples
/// of `rows` in that group, on `q`'s weights (one group: on all of `rows`).
pub fn with_step_groups(
    net: &Net,
    q: &QModel,
    calib: &CalibSet,
    rows: &[usize],
    cfg: &QuantizeConfig,
) -> Result<QModel> {
    let ts: Vec<f32> = rows.iter().map(|&r| calib.t[r]).collect();
    let edges = cfg.step_groups.edges(&ts)?;
    if edges.is_empty() {
        let mut out = q.at_group(0);
        for ((ni, slot), a) in observe_acts(net, q, calib, rows, cfg)?.0 {
            out.set_act(ni, slot, a);
        }
        return Ok(out);
    }
    let mut out = q.at_group(0);
    let mut groups = Vec::with_capacity(edges.len());
    for g in 0..=edges.len() {
        let mine: Vec<usize> = rows.iter().copied().filter(|&r| model::group_of(&edges, calib.t[r]) == g).collect();
        if mine.is_empty() {
            return Err(QuantError::Invalid(format!(
                "time-step group {g} of {} has no initialisation samples",
                edges.len() + 1
            )));
        }
        let (acts, _) = observe_acts(net, q, calib, &mine, cfg)?;
        if g == 0 {
            for &((ni, slot), a) in &acts {
                out.set_act(ni, slot, a);
            }
        } else {
            groups.push(acts);
        }
    }
    out.steps = Some(StepActs { edges, groups });
    Ok(out)
}
