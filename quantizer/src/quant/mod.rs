//! The quantizer pipeline (METHOD.md §3.5): initialise weights and activations, reconstruct
//! unit by unit with a checkpoint after each, check the result against the initialised model,
//! and export.

pub mod checkpoint;
pub mod export;
pub mod gptq;
pub mod hooks;
mod init;
pub mod model;
pub mod recon;
pub mod report;
pub mod sensitivity;

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use hooks::{Only, QHooks, Trainable};
pub use init::{initialise, weights_nearest, with_step_groups};
pub use model::{ActQ, NodeQ, QModel, StepActs, Structure, WGroup, WNode};
pub use recon::{IterProgress, Recon, ReconConfig, UnitReport, UnitSpec};

use crate::calib::{CalibSet, Rng};
use crate::error::{QuantError, Result};
use std::collections::{BTreeMap, HashMap};

use crate::grid::ActInit;

use candle_core::Tensor;

use crate::net::{Fp, Hooks, Net, tensor4};

/// Everything that decides a quantization run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    pub act_init: ActInit,
    /// Time-step-aware activation quantizers (official: one set for every step).
    #[serde(default)]
    pub step_groups: StepGrouping,
    /// Bias correction of the weight quantization error (not in EDA-DM): every conv and linear
    /// layer's bias absorbs `−(Ŵ − W)·E[x]`, the mean shift its rounded weights cause.
    #[serde(default)]
    pub bias_correction: bool,
    /// GPTQ weight rounding (not in EDA-DM; [`gptq`]) instead of rounding to nearest.
    #[serde(default)]
    pub gptq: bool,
}

/// How the activation quantizers depend on the timestep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepGrouping {
    /// One (Δ, zp) per quantizer for every step (EDA-DM, official).
    #[default]
    One,
    /// This many groups of consecutive sampler steps, each with its own (Δ, zp) per quantizer.
    /// The distinct timesteps of the initialisation samples (their sampler steps) are split into
    /// runs of (nearly) equal length; capped at the number of distinct timesteps.
    Groups(u32),
    /// One group per distinct timestep of the initialisation samples.
    PerStep,
}

impl StepGrouping {
    /// From the command line: `1`, a group count, or `steps`.
    pub fn from_name(s: &str) -> Option<StepGrouping> {
        match s {
            "steps" => Some(StepGrouping::PerStep),
            n => match n.parse::<u32>().ok()? {
                0 => None,
                1 => Some(StepGrouping::One),
                g => Some(StepGrouping::Groups(g)),
            },
        }
    }

    /// Name for metadata and reports.
    pub fn name(self) -> String {
        match self {
            StepGrouping::One => "1".into(),
            StepGrouping::Groups(g) => g.to_string(),
            StepGrouping::PerStep => "steps".into(),
        }
    }

    /// The edges of the groups for a calibration set's timesteps `ts`: consecutive runs of its
    /// distinct timesteps, the edges halfway between runs. Empty for one group.
    pub fn edges(self, ts: &[f32]) -> Result<Vec<f32>> {
        let mut d: Vec<f32> = ts.iter().copied().filter(|t| t.is_finite()).collect();
        d.sort_by(f32::total_cmp);
        d.dedup();
        let want = match self {
            StepGrouping::One | StepGrouping::Groups(0 | 1) => return Ok(Vec::new()),
            StepGrouping::Groups(g) => g as usize,
            StepGrouping::PerStep => d.len(),
        };
        if d.len() < 2 {
            return Err(QuantError::Invalid(format!(
                "--step-groups {}: the calibration set has {} distinct timesteps; time-step groups need at least 2",
                self.name(),
                d.len()
            )));
        }
        let g = want.min(d.len()).min(edadm_format::limits::MAX_STEP_GROUPS as usize);
        Ok((1..g)
            .map(|k| {
                let i = k * d.len() / g;
                0.5 * (d[i - 1] + d[i])
            })
            .collect())
    }
}

impl QuantizeConfig {
    /// The official hyper-parameters for CIFAR-10 (METHOD.md §3.6) at `wbits`.
    pub fn official(wbits: u32, method: Recon) -> QuantizeConfig {
        let (lr_w, lr_a) = if wbits == 4 { (5e-1, 5e-4) } else { (5e-2, 1e-3) };
        QuantizeConfig {
            structure: Structure {
                wbits,
                abits: 8,
                split: true,
                fp_last: false,
                fp_input: false,
                fp_layers: Vec::new(),
                w8_layers: Vec::new(),
            },
            recon: ReconConfig { method, iters: 5000, batch: 32, lr_w, lr_a, gamma: 0.8, drop_prob: 0.5 },
            seed: 1234,
            holdout: 0,
            init_samples: 256,
            init_batch: 64,
            chunk: 32,
            act_init: ActInit::Mse,
            step_groups: StepGrouping::One,
            bias_correction: false,
            gptq: false,
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
    /// `--act-init layer`: how many activation quantizers chose each candidate range.
    #[serde(default)]
    pub act_choices: BTreeMap<String, usize>,
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

/// The samples `rows` of `set` as a batch: `x` `[N, C, H, W]` on the net's device and `t`.
pub fn sample_batch(net: &Net, set: &CalibSet, rows: &[usize]) -> Result<(Tensor, Vec<f32>)> {
    let [c, h, w] = set.sample_shape;
    let mut x = Vec::with_capacity(rows.len() * c * h * w);
    for &r in rows {
        x.extend_from_slice(set.sample(r));
    }
    Ok((tensor4(&x, [rows.len(), c, h, w], &net.device)?, rows.iter().map(|&r| set.t[r]).collect()))
}

/// Mean squared error of the network output against FP over the samples `rows` of `set` (each
/// sample through its time-step group's quantizers).
pub fn eps_mse(net: &Net, q: &QModel, set: &CalibSet, rows: &[usize], batch: usize) -> Result<f64> {
    if q.steps.is_none() {
        return eps_mse_one(net, q, set, rows, batch);
    }
    let (mut sum, mut n) = (0.0, 0usize);
    for g in 0..q.num_groups() {
        let mine: Vec<usize> = rows.iter().copied().filter(|&r| q.group_of(set.t[r]) == g).collect();
        if !mine.is_empty() {
            sum += eps_mse_one(net, &q.at_group(g), set, &mine, batch)? * mine.len() as f64;
            n += mine.len();
        }
    }
    Ok(sum / n.max(1) as f64)
}

fn eps_mse_one(net: &Net, q: &QModel, set: &CalibSet, rows: &[usize], batch: usize) -> Result<f64> {
    let weights = q.weight_tensors(net)?;
    let ints = q.int_tensors(net)?;
    let hooks = QHooks::new(q, &weights).integer(&ints);
    let [c, h, w] = set.sample_shape;
    let (mut sum, mut n) = (0.0f64, 0usize);
    for part in rows.chunks(batch.max(1)) {
        let (x, t) = sample_batch(net, set, part)?;
        let yf = net.forward(x.clone(), &t, &Fp)?;
        let yq = net.forward(x, &t, &hooks)?;
        let d = (yq - yf)?.sqr()?.sum_all()?.to_scalar::<f32>()?;
        sum += f64::from(d);
        n += part.len() * c * h * w;
    }
    Ok(sum / n.max(1) as f64)
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
    let fingerprint = checkpoint::fingerprint(cfg, calib, net)?;
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
            let init = if r.method == Recon::None && cfg.step_groups != StepGrouping::One {
                // Nothing is reconstructed: the single table would be replaced by the groups'.
                let weights_only = init::weights_rounded(net, calib, &init_rows, cfg)?;
                with_step_groups(net, &weights_only, calib, &init_rows, cfg)?
            } else {
                let (q, counts) = initialise(net, calib, &init_rows, cfg)?;
                report.act_choices = counts;
                q
            };
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
    let (init, q) = if cfg.step_groups == StepGrouping::One || q.steps.is_some() {
        (init, q)
    } else {
        progress(Event::Stage("initialising the activation quantizers of each time-step group"));
        let t0 = Instant::now();
        let gi = with_step_groups(net, &init, calib, &init_rows, cfg)?;
        // After reconstruction the groups are initialised on the reconstructed weights (the
        // learned single-table steps are replaced).
        let gq = if q == init { gi.clone() } else { with_step_groups(net, &q, calib, &init_rows, cfg)? };
        let grouped = (gi, gq);
        report.seconds_init += t0.elapsed().as_secs_f64();
        grouped
    };

    let (init, mut q) = if cfg.bias_correction {
        progress(Event::Stage("correcting the biases for the weights' rounding"));
        let means = input_means(net, calib, &init_rows, cfg.init_batch)?;
        (bias_corrected(net, &init, &means)?, bias_corrected(net, &q, &means)?)
    } else {
        (init, q)
    };
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

/// FP hooks that average every weighted node's input per input channel (axis 1 of an image,
/// the last axis of a vector or token sequence).
struct InputMeans<'a> {
    q: &'a [bool],
    sums: std::cell::RefCell<HashMap<usize, (Vec<f64>, usize)>>,
}

impl Hooks for InputMeans<'_> {
    fn input(&self, ni: usize, _g: usize, x: Tensor) -> Result<Tensor> {
        if self.q.get(ni).copied().unwrap_or(false) {
            let dims = x.dims().to_vec();
            let v = crate::net::to_vec(&x)?;
            let (c, inner) = if dims.len() == 4 { (dims[1], dims[2] * dims[3]) } else { (dims[dims.len() - 1], 1) };
            let mut sums = self.sums.borrow_mut();
            let e = sums.entry(ni).or_insert_with(|| (vec![0.0; c], 0));
            if e.0.len() == c {
                if dims.len() == 4 {
                    for (i, &val) in v.iter().enumerate() {
                        e.0[(i / inner) % c] += f64::from(val);
                    }
                    e.1 += dims[0] * inner;
                } else {
                    for (i, &val) in v.iter().enumerate() {
                        e.0[i % c] += f64::from(val);
                    }
                    e.1 += v.len() / c;
                }
            }
        }
        Ok(x)
    }
}

/// Per weighted node, the mean of its FP input per input channel over the samples `rows`.
pub fn input_means(net: &Net, calib: &CalibSet, rows: &[usize], batch: usize) -> Result<HashMap<usize, Vec<f64>>> {
    let weighted: Vec<bool> = net.graph.nodes.iter().map(|n| n.op.is_weighted()).collect();
    let hooks = InputMeans { q: &weighted, sums: Default::default() };
    for part in rows.chunks(batch.max(1)) {
        let (x, t) = sample_batch(net, calib, part)?;
        net.forward(x, &t, &hooks)?;
    }
    Ok(hooks
        .sums
        .into_inner()
        .into_iter()
        .map(|(ni, (s, n))| (ni, s.iter().map(|v| v / n.max(1) as f64).collect()))
        .collect())
}

/// `q` with every conv and linear bias corrected for the mean error of its rounded weights:
/// `b[c] − Σ_{i,k} (Ŵ − W)[c, i, k]·E[x_i]` (borders ignored; divided by the stride area for a
/// transposed convolution).
pub fn bias_corrected(net: &Net, q: &QModel, means: &HashMap<usize, Vec<f64>>) -> Result<QModel> {
    let mut out = q.clone();
    for ni in 0..out.nodes.len() {
        let Some(m) = means.get(&ni) else { continue };
        let Some(wn) = out.weight_mut(ni) else { continue };
        if m.is_empty() || m.len() % wn.inp != 0 {
            continue;
        }
        // A transposed convolution spreads each input over `stride²` output positions: an
        // output pixel receives `1/stride²` of the kernel's taps on average (exactly, away from
        // the borders, when the kernel is a multiple of the stride).
        let spread = match &net.graph.nodes[ni].op {
            edadm_format::graph::Op::ConvTranspose2d(c) => f64::from(c.stride[0] * c.stride[1]),
            _ => 1.0,
        };
        let (fp, _, _) = model::fp_rows(net, ni)?;
        let deq = wn.dequant_rows();
        let (row, k) = (wn.row(), wn.kernel);
        let conv_groups = m.len() / wn.inp;
        let per_group = (wn.out / conv_groups).max(1);
        let base = match &net.params[ni].bias {
            Some(b) => crate::net::to_vec(b)?,
            None => vec![0.0; wn.out],
        };
        let bias = (0..wn.out)
            .map(|c| {
                let m0 = (c / per_group) * wn.inp;
                let corr: f64 = (0..row).map(|j| f64::from(deq[c * row + j] - fp[c * row + j]) * m[m0 + j / k]).sum();
                (f64::from(base[c]) - corr / spread) as f32
            })
            .collect();
        wn.bias = Some(bias);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_groups_split_the_distinct_timesteps_into_runs_with_edges_halfway() {
        assert_eq!(StepGrouping::from_name("1"), Some(StepGrouping::One));
        assert_eq!(StepGrouping::from_name("10"), Some(StepGrouping::Groups(10)));
        assert_eq!(StepGrouping::from_name("steps"), Some(StepGrouping::PerStep));
        assert_eq!(StepGrouping::from_name("0"), None);
        assert_eq!(StepGrouping::from_name("x"), None);
        // Nine distinct timesteps (repeats and order do not matter), three groups of three.
        let ts = [990.0, 10.0, 20.0, 30.0, 500.0, 510.0, 520.0, 980.0, 970.0, 10.0, 500.0];
        assert_eq!(StepGrouping::Groups(3).edges(&ts).unwrap(), vec![265.0, 745.0]);
        assert!(StepGrouping::One.edges(&ts).unwrap().is_empty());
        // More groups than timesteps: one per timestep, like `steps`.
        let per = StepGrouping::PerStep.edges(&ts).unwrap();
        assert_eq!(per, StepGrouping::Groups(50).edges(&ts).unwrap());
        assert_eq!(per, vec![15.0, 25.0, 265.0, 505.0, 515.0, 745.0, 975.0, 985.0]);
        for (i, &t) in [10.0f32, 20.0, 30.0, 500.0, 510.0, 520.0, 970.0, 980.0, 990.0].iter().enumerate() {
            assert_eq!(model::group_of(&per, t), i);
        }
        let e = StepGrouping::Groups(4).edges(&[7.0, 7.0]).unwrap_err().to_string();
        assert!(e.contains("1 distinct timesteps"), "{e}");
    }
}
