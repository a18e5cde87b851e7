//! The quantizer pipeline (METHOD.md §3.5): initialise weights and activations, reconstruct
//! unit by unit with a checkpoint after each, check the result against the initialised model,
//! and export.

pub mod checkpoint;
pub mod export;
pub mod hooks;
pub mod model;
pub mod recon;
pub mod report;
pub mod sensitivity;

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use hooks::{Only, QHooks, Trainable};
pub use model::{ActQ, NodeQ, QModel, Structure, WGroup, WNode};
pub use recon::{IterProgress, Recon, ReconConfig, UnitReport, UnitSpec};

use crate::calib::{CalibSet, Rng};
use crate::error::{QuantError, Result};
use crate::net::{Fp, Net, tensor4};

/// Everything that decides a quantization run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantizeConfig {
    /// Bits and split.
    pub structure: Structure,
    /// Reconstruction.
    pub recon: ReconConfig,
    /// Seed of the held-out split, minibatches and QDrop masks.
    pub seed: u64,
    /// Calibration samples held out for validation (not trained on).
    pub holdout: usize,
    /// Calibration samples for the activation initialisation (official CIFAR: 256).
    pub init_samples: usize,
    /// Batch of the activation initialisation (official CIFAR: 64; the EMA runs over batches).
    pub init_batch: usize,
    /// Samples per chunk of the cached streams.
    pub chunk: usize,
    /// How activation ranges are initialised (official: the L2.4 search).
    #[serde(default)]
    pub act_init: crate::grid::ActInit,
}

impl QuantizeConfig {
    /// The official hyper-parameters for CIFAR-10 (METHOD.md §3.6) at `wbits`.
    pub fn official(wbits: u32, method: Recon) -> QuantizeConfig {
        let (lr_w, lr_a) = if wbits == 4 { (5e-1, 5e-4) } else { (5e-2, 1e-3) };
        QuantizeConfig {
            structure: Structure { wbits, abits: 8, split: true },
            recon: ReconConfig { method, iters: 5000, batch: 32, lr_w, lr_a, gamma: 0.8, drop_prob: 0.5 },
            seed: 1234,
            holdout: 0,
            init_samples: 256,
            init_batch: 64,
            chunk: 32,
            act_init: crate::grid::ActInit::Mse,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunReport {
    /// Per reconstructed unit.
    pub units: Vec<UnitReport>,
    /// ε-MSE against the FP model on the evaluation samples: initialisation only.
    pub eps_mse_init: f64,
    /// Same, the reconstructed model.
    pub eps_mse_recon: f64,
    /// Same, the model returned (the better of the two).
    pub eps_mse_final: f64,
    /// Whether the reconstruction made the whole model worse and the initialised one was kept.
    pub reverted_to_init: bool,
    /// Seconds spent initialising.
    pub seconds_init: f64,
    /// Seconds spent reconstructing (this process; a resumed run counts its own part).
    pub seconds_recon: f64,
    /// Evaluation samples.
    pub eval_samples: usize,
}

/// Progress events.
#[derive(Clone, Debug)]
pub enum Event<'a> {
    /// A stage begins.
    Stage(&'a str),
    /// A unit's iteration.
    Iter {
        /// Unit index.
        unit: usize,
        /// Units.
        units: usize,
        /// Unit name.
        name: &'a str,
        /// The iteration.
        it: IterProgress,
    },
    /// A unit finished.
    UnitDone {
        /// Unit index.
        unit: usize,
        /// Units.
        units: usize,
        /// Its report.
        report: &'a UnitReport,
    },
    /// A unit was taken from the checkpoint.
    UnitResumed {
        /// Unit index.
        unit: usize,
        /// Units.
        units: usize,
        /// Name.
        name: &'a str,
    },
}

/// The result of a run.
#[derive(Debug)]
pub struct Outcome {
    /// The final quantized model.
    pub model: QModel,
    /// What happened.
    pub report: RunReport,
}

/// Mean squared error of the network output against FP over the samples `rows` of `set`.
pub fn eps_mse(net: &Net, q: &QModel, set: &CalibSet, rows: &[usize], batch: usize) -> Result<f64> {
    let weights = q.weight_tensors(net)?;
    let ints = q.int_tensors(net)?;
    let hooks = QHooks::new(q, &weights).integer(&ints);
    let [c, h, w] = set.sample_shape;
    let (mut sum, mut n) = (0.0f64, 0usize);
    for part in rows.chunks(batch.max(1)) {
        let mut x = Vec::new();
        let mut t = Vec::new();
        for &r in part {
            x.extend_from_slice(set.sample(r));
            t.push(set.t[r]);
        }
        let xt = tensor4(&x, [part.len(), c, h, w], &net.device)?;
        let yf = net.forward(xt.clone(), &t, &Fp)?;
        let yq = net.forward(xt, &t, &hooks)?;
        let d = (yq - yf)?.sqr()?.sum_all()?.to_scalar::<f32>()?;
        sum += f64::from(d);
        n += part.len() * c * h * w;
    }
    Ok(sum / n.max(1) as f64)
}

fn channel_counts(
    net: &Net,
    calib: &CalibSet,
) -> Result<std::collections::HashMap<edadm_format::graph::ValueId, usize>> {
    let [c, h, w] = calib.sample_shape;
    let x = tensor4(calib.sample(0), [1, c, h, w], &net.device)?;
    let mut env = net.inputs(x, &calib.t[..1])?;
    net.run(0..net.graph.nodes.len(), &mut env, &Fp)?;
    Ok(model::channel_counts(&env))
}

/// Initialises the quantized model: weights by the per-channel search, then activation ranges
/// by the EMA over batches of `rows` on the weight-quantized model with every activation
/// quantizer on (METHOD.md §2.3).
pub fn initialise(net: &Net, calib: &CalibSet, rows: &[usize], cfg: &QuantizeConfig) -> Result<QModel> {
    let channels = channel_counts(net, calib)?;
    let mut q = QModel::new(net, cfg.structure, &channels)?;
    let weights = q.weight_tensors(net)?;
    let [c, h, w] = calib.sample_shape;
    let mut ranges = model::Ranges::new();
    for part in rows.chunks(cfg.init_batch.max(1)) {
        let mut x = Vec::new();
        let mut t = Vec::new();
        for &r in part {
            x.extend_from_slice(calib.sample(r));
            t.push(calib.t[r]);
        }
        let hooks = QHooks::new(&q, &weights).observing(std::mem::take(&mut ranges), cfg.act_init);
        net.forward(tensor4(&x, [part.len(), c, h, w], &net.device)?, &t, &hooks)?;
        ranges = hooks.into_ranges();
    }
    for (&(ni, g), r) in &ranges {
        let grid = r.grid().expect("observed");
        let bits = q.act(ni, g).expect("quantizer").bits;
        q.set_act(ni, g, ActQ::from_grid(grid, bits));
    }
    let missing = q.act_keys(0..net.graph.nodes.len()).into_iter().filter(|k| !ranges.contains_key(k)).count();
    if missing > 0 {
        return Err(QuantError::Invalid(format!("{missing} activation quantizers saw no data during initialisation")));
    }
    Ok(q)
}

/// The split of the calibration rows: (training rows, held-out rows).
pub fn split_rows(n: usize, holdout: usize, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    if holdout >= n {
        return Err(QuantError::Invalid(format!(
            "{holdout} held-out samples leave none to train on out of {n} calibration samples"
        )));
    }
    let mut rows: Vec<usize> = (0..n).collect();
    Rng::new(seed ^ 0x005E_ED0F_4011).shuffle(&mut rows);
    let hold = rows[..holdout].to_vec();
    let mut train = rows[holdout..].to_vec();
    train.sort_unstable();
    Ok((train, hold))
}

/// The seed of unit `k`'s draws.
fn unit_seed(seed: u64, k: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (k as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

/// Runs the whole quantizer. With `ckpt`, the state is saved there after initialisation and
/// after every unit; with `resume`, a compatible checkpoint there is continued. `eval` is the
/// set the final ε-MSE check uses (default: the held-out calibration samples).
pub fn quantize(
    net: &Net,
    calib: &CalibSet,
    cfg: &QuantizeConfig,
    ckpt: Option<&Path>,
    resume: bool,
    eval: Option<&CalibSet>,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<Outcome> {
    if calib.sample_shape != net.sample_shape() {
        return Err(QuantError::Invalid(format!(
            "the calibration samples are {:?}, the model takes {:?}",
            calib.sample_shape,
            net.sample_shape()
        )));
    }
    let r = &cfg.recon;
    if r.method != Recon::None && (r.iters == 0 || r.batch == 0) {
        return Err(QuantError::Invalid("--iters and --batch must be at least 1".into()));
    }
    let (train, hold) = split_rows(calib.len(), cfg.holdout, cfg.seed)?;
    let init_rows: Vec<usize> = train.iter().copied().take(cfg.init_samples.max(1)).collect();
    let fingerprint = checkpoint::fingerprint(cfg, calib);
    let mut report = RunReport::default();

    let resumed = match (ckpt, resume) {
        (Some(p), true) if p.exists() => Some(checkpoint::load(p, &fingerprint)?),
        (Some(p), true) => {
            return Err(QuantError::Invalid(format!("--resume: no checkpoint at {}", p.display())));
        }
        _ => None,
    };
    let (init, mut q, done) = match resumed {
        Some(c) => {
            report.units = c.reports;
            report.seconds_init = c.seconds_init;
            (c.init, c.current, c.done)
        }
        None => {
            progress(Event::Stage("initialising weight and activation quantizers"));
            let t0 = Instant::now();
            let init = initialise(net, calib, &init_rows, cfg)?;
            report.seconds_init = t0.elapsed().as_secs_f64();
            if let Some(p) = ckpt {
                checkpoint::save(p, &fingerprint, &init, &init, 0, &report.units, report.seconds_init)?;
            }
            (init.clone(), init, 0)
        }
    };

    let specs = recon::unit_specs(net, &q, r.method)?;
    let t0 = Instant::now();
    if !specs.is_empty() && done < specs.len() {
        progress(Event::Stage("caching the calibration set's FP and quantized-path activations"));
        let all: Vec<usize> = (0..calib.len()).collect();
        let mut streams = recon::Streams::new(net, calib, &all, cfg.chunk)?;
        let mut weights = q.weight_tensors(net)?;
        let mut ints = q.int_tensors(net)?;
        let mut pos = 0;
        for (k, u) in specs.iter().enumerate() {
            {
                let hooks = QHooks::new(&q, &weights).integer(&ints);
                streams.advance_fp(net, pos..u.range.start, &Fp)?;
                streams.advance_q(net, pos..u.range.start, &hooks)?;
            }
            if k < done {
                progress(Event::UnitResumed { unit: k, units: specs.len(), name: &u.name });
                streams.advance_fp(net, u.range.clone(), &Fp)?;
            } else {
                let data = recon::unit_data(net, &mut streams, u)?;
                let (nq, rep) = recon::reconstruct_unit(
                    net,
                    &q,
                    &weights,
                    u,
                    &data,
                    &train,
                    &hold,
                    r,
                    unit_seed(cfg.seed, k),
                    &mut |it| progress(Event::Iter { unit: k, units: specs.len(), name: &u.name, it }),
                )?;
                q = nq;
                for (ni, t) in q.weight_tensors_of(net, &u.trained)? {
                    weights[ni] = Some(t);
                }
                ints = q.int_tensors(net)?;
                progress(Event::UnitDone { unit: k, units: specs.len(), report: &rep });
                report.units.push(rep);
                if let Some(p) = ckpt {
                    checkpoint::save(p, &fingerprint, &init, &q, k + 1, &report.units, report.seconds_init)?;
                }
            }
            if k + 1 < specs.len() {
                let hooks = QHooks::new(&q, &weights).integer(&ints);
                streams.advance_q(net, u.range.clone(), &hooks)?;
            }
            pos = u.range.end;
            streams.free_before(pos);
        }
    }
    report.seconds_recon = t0.elapsed().as_secs_f64();

    progress(Event::Stage("checking the whole model against its initialisation"));
    let (set, rows): (&CalibSet, Vec<usize>) = match eval {
        Some(e) => (e, (0..e.len()).collect()),
        None if !hold.is_empty() => (calib, hold.clone()),
        None => (calib, train.clone()),
    };
    report.eval_samples = rows.len();
    report.eps_mse_init = eps_mse(net, &init, set, &rows, r.batch.max(8))?;
    report.eps_mse_recon =
        if r.method == Recon::None { report.eps_mse_init } else { eps_mse(net, &q, set, &rows, r.batch.max(8))? };
    report.eps_mse_final = report.eps_mse_recon;
    if report.eps_mse_recon > report.eps_mse_init {
        report.reverted_to_init = true;
        q = init;
        report.eps_mse_final = report.eps_mse_init;
    }
    Ok(Outcome { model: q, report })
}
