//! Where the quantization error comes from, measured on final images (`edadm quantize
//! --sensitivity DIR`).
//!
//! From one fixed batch of noise the FP model is sampled once; then, for every activation
//! quantizer and (separately) every weighted node's weights, a model with **only that one
//! quantized** and everything else FP is sampled from the same noise, and its final images are
//! compared with the FP ones (PSNR over all pixels in the data range). The same variant is also
//! evaluated on the FP trajectory's inputs at every step (ε-MSE per step against the FP network:
//! which steps a quantizer hurts). Finally the whole quantized model is sampled with its
//! quantization switched on at one sampler step only (FP at every other), once per step: which
//! steps the final-image error comes from. Variants run in the float fake-quant form on the
//! quantizer's interpreter (the integer form needs every quantizer on; the two agree to f32
//! rounding).

use std::fmt::Write as _;
use std::path::Path;

use edadm_eval::fidelity::{mse, psnr};
use edadm_format::graph::Prediction;
use edadm_runtime::sampler::{Denoiser, Sampler, SamplerConfig, Schedule, noise};
use serde::Serialize;

use super::hooks::{Only, QHooks};
use super::model::{NodeQ, QModel};
use super::report::{Series, chart, esc};
use crate::error::{QuantError, Result};
use crate::net::{Fp, Hooks, Net, tensor4, to_vec};

/// What to measure on.
#[derive(Clone, Copy, Debug)]
pub struct SensitivityConfig {
    /// The sampler (the one the model will be used with, usually with fewer steps).
    pub sampler: SamplerConfig,
    /// Images sampled from the noise streams `0..images` of `sampler.seed`.
    pub images: usize,
    /// The data range the PSNR maps to `[0, 1]`.
    pub range: [f32; 2],
}

/// One measured variant.
#[derive(Clone, Debug, Serialize)]
pub struct Variant {
    /// What is quantized: a node name, with `input` / `input[g]` / `q`,`k`,`v`,`prob` / `weights`.
    pub name: String,
    /// `act` or `weights`.
    pub kind: &'static str,
    /// Final-image PSNR against FP (dB; infinite when identical).
    pub psnr_db: f64,
    /// Final-image MSE against FP in `[0, 1]` units.
    pub mse: f64,
    /// ε-MSE against the FP network on the FP trajectory, per sampler step (denoising order).
    pub eps_mse_per_step: Vec<f64>,
    /// Its mean.
    pub eps_mse: f64,
}

/// The whole analysis.
#[derive(Clone, Debug, Serialize)]
pub struct Sensitivity {
    /// Images, steps, sampler.
    pub settings: serde_json::Value,
    /// The whole quantized model (every quantizer on).
    pub full: Variant,
    /// One quantizer at a time, most harmful (lowest PSNR) first.
    pub quantizers: Vec<Variant>,
    /// Per sampler step: the timestep and the final-image PSNR when only that step is quantized.
    pub steps: Vec<(i64, f64)>,
}

/// A denoiser on the interpreter; `per_call` picks the hooks of each model call (by its index).
struct NetDenoiser<'a> {
    net: &'a Net,
    batch: usize,
    prediction: Prediction,
    per_call: &'a dyn Fn(usize) -> &'a dyn Hooks,
    call: usize,
}

impl Denoiser for NetDenoiser<'_> {
    fn batch(&self) -> usize {
        self.batch
    }
    fn sample_len(&self) -> usize {
        self.batch * self.net.sample_shape().iter().product::<usize>()
    }
    fn prediction(&self) -> Prediction {
        self.prediction
    }
    fn eval(&mut self, x: &[f32], t: &[f32], out: &mut [f32]) -> edadm_runtime::Result<()> {
        let hooks = (self.per_call)(self.call);
        self.call += 1;
        let y = forward(self.net, x, t, self.batch, hooks)
            .map_err(|e| edadm_runtime::RuntimeError::Input(format!("interpreter: {e}")))?;
        out.copy_from_slice(&y);
        Ok(())
    }
}

fn forward(net: &Net, x: &[f32], t: &[f32], batch: usize, hooks: &dyn Hooks) -> Result<Vec<f32>> {
    let [c, h, w] = net.sample_shape();
    let y = net.forward(tensor4(x, [batch, c, h, w], &net.device)?, t, hooks)?;
    to_vec(&y)
}

/// Every activation quantizer and weighted node of `q`, with a readable name.
fn units(net: &Net, q: &QModel) -> Vec<(String, &'static str, Only)> {
    let mut v = Vec::new();
    for (ni, n) in q.nodes.iter().enumerate() {
        let name = &net.graph.nodes[ni].name;
        match n {
            Some(NodeQ::Weight(w)) => {
                for (g, grp) in w.groups.iter().enumerate() {
                    if grp.input.is_some() {
                        let label =
                            if w.groups.len() == 1 { format!("{name} input") } else { format!("{name} input[{g}]") };
                        v.push((label, "act", Only { acts: [(ni, g)].into(), weights: Default::default() }));
                    }
                }
                v.push((format!("{name} weights"), "weights", Only { acts: Default::default(), weights: [ni].into() }));
            }
            Some(NodeQ::Attention(_)) => {
                for (g, part) in ["q", "k", "v", "prob"].iter().enumerate() {
                    v.push((
                        format!("{name} {part}"),
                        "act",
                        Only { acts: [(ni, g)].into(), weights: Default::default() },
                    ));
                }
            }
            None => {}
        }
    }
    v
}

/// The fixed noise and sampler every variant is sampled with.
struct Fixture<'a> {
    net: &'a Net,
    n: usize,
    prediction: Prediction,
    sampler: Sampler,
    z: Vec<f32>,
}

impl<'a> Fixture<'a> {
    fn new(net: &'a Net, schedule: &Schedule, cfg: &SensitivityConfig) -> Result<Self> {
        let n = cfg.images;
        if n == 0 || cfg.range[1].partial_cmp(&cfg.range[0]) != Some(std::cmp::Ordering::Greater) {
            return Err(QuantError::Invalid("sensitivity: at least one image and a non-empty data range".into()));
        }
        let per: usize = net.sample_shape().iter().product();
        let sampler = Sampler::new(schedule, cfg.sampler, n, n * per)
            .map_err(|e| QuantError::Invalid(format!("sensitivity sampler: {e}")))?;
        let mut z = vec![0f32; n * per];
        noise::initial_noise(cfg.sampler.seed, 0, &mut z, n);
        Ok(Fixture { net, n, prediction: net.graph.outputs[0].prediction, sampler, z })
    }

    /// Samples from the fixed noise with `pick(call)`'s hooks at each model call.
    fn sample<'h>(&mut self, pick: &'h dyn Fn(usize) -> &'h dyn Hooks) -> Result<Vec<f32>>
    where
        'a: 'h,
    {
        let mut d = NetDenoiser { net: self.net, batch: self.n, prediction: self.prediction, per_call: pick, call: 0 };
        let mut x = self.z.clone();
        self.sampler.run(&mut d, &mut x, &mut |_, _| {}).map_err(|e| QuantError::Invalid(e.to_string()))?;
        Ok(x)
    }

    /// Samples with the same hooks at every call.
    fn sample_with(&mut self, hooks: &dyn Hooks) -> Result<Vec<f32>> {
        let pick = |_: usize| hooks;
        self.sample(&pick)
    }
}

/// A weighted node ranked by [`rank_weights`].
#[derive(Clone, Debug, Serialize)]
pub struct WeightRank {
    /// Node index in the graph.
    pub node: usize,
    /// Node name.
    pub name: String,
    /// Final-image MSE against FP (in `[0, 1]` units) with only this node's weights quantized.
    pub mse: f64,
    /// Its parameter count.
    pub params: usize,
}

/// The weighted nodes of `q` below 8-bit weights, most harmful first, by the final-image error when only that
/// node's weights are quantized (everything else FP): one FP run and one sampling run per node,
/// none of [`analyse`]'s per-step measurements — what `--w8-auto` takes to choose the layers that
/// keep 8-bit weights. `progress(done, total)` counts sampling runs.
pub fn rank_weights(
    net: &Net,
    q: &QModel,
    schedule: &Schedule,
    cfg: &SensitivityConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<WeightRank>> {
    let mut fx = Fixture::new(net, schedule, cfg)?;
    let weights = q.weight_tensors(net)?;
    // Nodes already at 8 bits have nothing to gain.
    let nodes: Vec<(usize, usize)> = q
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| match n {
            Some(NodeQ::Weight(w)) if w.bits < 8 => Some((i, w.ints.len())),
            _ => None,
        })
        .collect();
    let total = 1 + nodes.len();
    let fp_final = fx.sample_with(&Fp)?;
    progress(1, total);
    let mut ranks = Vec::with_capacity(nodes.len());
    for (k, &(ni, params)) in nodes.iter().enumerate() {
        let only = Only { acts: Default::default(), weights: [ni].into() };
        let hooks = QHooks::new(q, &weights).only(&only);
        let x = fx.sample_with(&hooks)?;
        ranks.push(WeightRank {
            node: ni,
            name: net.graph.nodes[ni].name.clone(),
            mse: mse(&x, &fp_final, cfg.range),
            params,
        });
        progress(2 + k, total);
    }
    ranks.sort_by(|a, b| b.mse.total_cmp(&a.mse));
    Ok(ranks)
}

/// Runs the analysis. `progress(done, total)` counts sampling runs.
pub fn analyse(
    net: &Net,
    q: &QModel,
    schedule: &Schedule,
    cfg: &SensitivityConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Sensitivity> {
    let mut fx = Fixture::new(net, schedule, cfg)?;
    let n = fx.n;
    let steps = fx.sampler.model_calls();
    let weights = q.weight_tensors(net)?;
    let list = units(net, q);
    let total = 1 + list.len() + 1 + steps;
    let mut done = 0;

    // The FP run, recording every model call's inputs and output.
    let fp_hooks: &dyn Hooks = &Fp;
    let mut rec: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = Vec::with_capacity(steps);
    let fp_final = {
        struct Rec<'a> {
            inner: NetDenoiser<'a>,
            rec: &'a mut Vec<(Vec<f32>, Vec<f32>, Vec<f32>)>,
        }
        impl Denoiser for Rec<'_> {
            fn batch(&self) -> usize {
                self.inner.batch()
            }
            fn sample_len(&self) -> usize {
                self.inner.sample_len()
            }
            fn prediction(&self) -> Prediction {
                self.inner.prediction()
            }
            fn eval(&mut self, x: &[f32], t: &[f32], out: &mut [f32]) -> edadm_runtime::Result<()> {
                self.inner.eval(x, t, out)?;
                self.rec.push((x.to_vec(), t.to_vec(), out.to_vec()));
                Ok(())
            }
        }
        let pick = |_: usize| fp_hooks;
        let inner = NetDenoiser { net, batch: n, prediction: fx.prediction, per_call: &pick, call: 0 };
        let mut d = Rec { inner, rec: &mut rec };
        let mut x = fx.z.clone();
        fx.sampler.run(&mut d, &mut x, &mut |_, _| {}).map_err(|e| QuantError::Invalid(e.to_string()))?;
        x
    };
    done += 1;
    progress(done, total);

    let mut measure = |name: String, kind: &'static str, hooks: &dyn Hooks| -> Result<Variant> {
        let x = fx.sample_with(hooks)?;
        let err = mse(&x, &fp_final, cfg.range);
        let mut per_step = Vec::with_capacity(rec.len());
        for (xi, ti, eps_fp) in &rec {
            let e = forward(net, xi, ti, n, hooks)?;
            per_step.push(e.iter().zip(eps_fp).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>() / e.len() as f64);
        }
        let eps_mse = per_step.iter().sum::<f64>() / per_step.len().max(1) as f64;
        let psnr_db = psnr(&x, &fp_final, cfg.range);
        Ok(Variant { name, kind, psnr_db, mse: err, eps_mse_per_step: per_step, eps_mse })
    };

    let mut quantizers = Vec::with_capacity(list.len());
    for (name, kind, only) in &list {
        let hooks = QHooks::new(q, &weights).only(only);
        quantizers.push(measure(name.clone(), kind, &hooks)?);
        done += 1;
        progress(done, total);
    }
    let all = QHooks::new(q, &weights);
    let full = measure("every quantizer".into(), "all", &all)?;
    done += 1;
    progress(done, total);
    quantizers.sort_by(|a, b| a.psnr_db.total_cmp(&b.psnr_db));

    let timesteps = fx.sampler.timesteps().to_vec();
    let mut per_step = Vec::with_capacity(steps);
    for k in 0..steps {
        let all_ref: &dyn Hooks = &all;
        let pick = move |c: usize| if c == k { all_ref } else { fp_hooks };
        let x = fx.sample(&pick)?;
        let t = timesteps.get(timesteps.len().saturating_sub(1 + k)).copied().unwrap_or(-1);
        per_step.push((t, psnr(&x, &fp_final, cfg.range)));
        done += 1;
        progress(done, total);
    }
    let s = &cfg.sampler;
    let settings = serde_json::json!({
        "images": n,
        "sampler": s.kind.name(),
        "steps": s.steps,
        "eta": s.eta,
        "seed": s.seed,
        "model_calls": steps,
        "range": cfg.range,
        "form": "float fake-quant on the interpreter",
    });
    Ok(Sensitivity { settings, full, quantizers, steps: per_step })
}

/// Writes `sensitivity.json`, `sensitivity.md` (the ranked table) and two SVGs: the final-image
/// MSE of the `top` most harmful quantizers, and per step the PSNR when only that step is
/// quantized with the whole model's ε-MSE.
pub fn write(dir: &Path, s: &Sensitivity, top: usize) -> Result<()> {
    let io = |e: std::io::Error| QuantError::Invalid(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let json = serde_json::to_vec_pretty(s).map_err(|e| QuantError::Invalid(e.to_string()))?;
    crate::io::write_atomic(&dir.join("sensitivity.json"), &json)?;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Quantization sensitivity\n\n{} images, {} {} steps, seed {}. Whole model: PSNR {:.2} dB vs FP, mean ε-MSE {:.3e}.\n",
        s.settings["images"],
        s.settings["sampler"].as_str().unwrap_or("?"),
        s.settings["steps"],
        s.settings["seed"],
        s.full.psnr_db,
        s.full.eps_mse
    );
    let total: f64 = s.quantizers.iter().map(|v| v.mse).sum();
    let _ = writeln!(md, "| # | quantized alone | kind | PSNR vs FP (dB) | share of summed MSE | mean ε-MSE |");
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for (i, v) in s.quantizers.iter().enumerate() {
        let share = if total > 0.0 { 100.0 * v.mse / total } else { 0.0 };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2} | {share:.1} % | {:.3e} |",
            i + 1,
            v.name,
            v.kind,
            v.psnr_db,
            v.eps_mse
        );
    }
    let _ = writeln!(md, "\n## Per sampler step (whole model quantized at that step only)\n");
    let _ = writeln!(md, "| step | t | PSNR vs FP (dB) | whole-model ε-MSE |");
    let _ = writeln!(md, "|---|---|---|---|");
    for (k, (t, p)) in s.steps.iter().enumerate() {
        let e = s.full.eps_mse_per_step.get(k).copied().unwrap_or(f64::NAN);
        let _ = writeln!(md, "| {k} | {t} | {p:.2} | {e:.3e} |");
    }
    crate::io::write_atomic(&dir.join("sensitivity.md"), md.as_bytes())?;

    let shown: Vec<&Variant> = s.quantizers.iter().take(top.max(1)).collect();
    let ticks: Vec<(usize, String)> = shown.iter().enumerate().map(|(i, v)| (i, esc(&v.name))).collect();
    let svg = chart(
        "final-image MSE vs FP with one quantizer on (most harmful first)",
        "quantizer",
        &[Series { name: "MSE", color: "#c0392b", points: shown.iter().map(|v| v.mse).collect(), bars: true }],
        false,
        &ticks,
    );
    crate::io::write_atomic(&dir.join("quantizers.svg"), svg.as_bytes())?;
    let step_ticks: Vec<(usize, String)> = s
        .steps
        .iter()
        .enumerate()
        .step_by((s.steps.len() / 10).max(1))
        .map(|(k, (t, _))| (k, format!("t={t}")))
        .collect();
    let svg = chart(
        "per sampler step: final-image MSE vs FP when only that step is quantized, and ε-MSE",
        "sampler step (denoising order)",
        &[
            Series {
                name: "final-image MSE, this step quantized",
                color: "#2c7fb8",
                points: s.steps.iter().map(|(_, p)| 10f64.powf(-p / 10.0)).collect(),
                bars: true,
            },
            Series {
                name: "ε-MSE, whole model",
                color: "#e67e22",
                points: s.full.eps_mse_per_step.clone(),
                bars: false,
            },
        ],
        true,
        &step_ticks,
    );
    crate::io::write_atomic(&dir.join("steps.svg"), svg.as_bytes())?;
    Ok(())
}
