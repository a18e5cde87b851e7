//! The quantize pipeline as one library call: an FP model and a calibration set in, a quantized
//! `.edq` out. It owns what `edadm quantize` used to decide itself — the per-bit-width defaults
//! (reconstruction method, learning rates), the held-out split, the provenance metadata written
//! into the file, the checkpoint and the report — so that the CLI, `edadm demo` and any Rust
//! caller quantize the same way.
//!
//! ```no_run
//! use edadm_quantizer::pipeline::{Options, quantize};
//! use edadm_runtime::Model;
//!
//! let model = Model::open("fmnist.edq")?;
//! let set = edadm_quantizer::calib::load("calib.safetensors".as_ref())?;
//! let q = quantize(&model, &set, &Options::default(), None, &mut |_| {})?;
//! q.write("fmnist-w8a8.edq".as_ref())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;

use edadm_format::MetaValue;
use edadm_format::metadata::keys;
use edadm_runtime::Model;

use crate::calib::{self, CalibSet};
use crate::error::{QuantError, Result};
use crate::grid::ActInit;
use crate::net::Net;
use crate::quant::{self, Event, QModel, QuantizeConfig, Recon, ReconConfig, RunReport, StepGrouping, Structure};

/// Everything a quantization run takes besides the model and the calibration set; `Default` is
/// `edadm quantize`'s default recipe (docs/QUANTIZER.md).
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// Weight bits, 4 to 8.
    pub wbits: u32,
    /// Activation bits (8).
    pub abits: u32,
    /// Reconstruction; `None` for the measured default per bit width ([`Options::recon_method`]).
    pub recon: Option<Recon>,
    /// Iterations per reconstruction unit (official: 5000).
    pub iters: usize,
    /// Reconstruction minibatch (official: 32).
    pub batch: usize,
    /// FBR's weight of the layer losses (official: 0.8).
    pub gamma: f64,
    /// AdaRound's learning rate; `None` for the official one of the bit width.
    pub lr_w: Option<f64>,
    /// Activation-step learning rate; `None` for the official one of the bit width.
    pub lr_a: Option<f64>,
    /// Held-out calibration samples; `None` for N/8 (at least 8, at most N/2).
    pub holdout: Option<usize>,
    /// Seed of the held-out split, minibatches and QDrop masks.
    pub seed: u64,
    /// Activation range initialisation.
    pub act_init: ActInit,
    /// Time-step-aware activation quantizers.
    pub step_groups: StepGrouping,
    /// Bias correction of the rounded weights.
    pub bias_correction: bool,
    /// The output layer keeps f32 weights.
    pub fp_output_layer: bool,
    /// Layers reading x_t keep an f32 input.
    pub fp_input_layer: bool,
    /// Layers (by node name) whose inputs stay f32.
    pub fp_layers: Vec<String>,
    /// Layers (by node name) that keep 8-bit weights below `wbits` 8.
    pub w8_layers: Vec<String>,
    /// Below 8-bit weights, this many more layers keep 8-bit weights, chosen by measurement: the
    /// ones whose low-bit weights alone (nearest rounding, everything else FP) move the final
    /// images furthest from FP ([`quant::sensitivity::rank_weights`]); `None` for the measured
    /// default per bit width ([`Options::w8_auto_layers`]).
    pub w8_auto: Option<usize>,
    /// The ranking's images and DDIM steps (quad skip, η 0, noise seed 0).
    pub w8_auto_images: usize,
    /// See `w8_auto_images`.
    pub w8_auto_steps: usize,
    /// GPTQ weight rounding instead of nearest; `None` for the measured default per bit width
    /// ([`Options::weight_round_gptq`]).
    pub gptq: Option<bool>,
    /// Q-Diffusion's split skip convolution.
    pub split: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            wbits: 8,
            abits: 8,
            recon: None,
            iters: 5000,
            batch: 32,
            gamma: 0.8,
            lr_w: None,
            lr_a: None,
            holdout: None,
            seed: 1234,
            act_init: ActInit::Percentile(99.999),
            step_groups: StepGrouping::One,
            bias_correction: true,
            fp_output_layer: true,
            fp_input_layer: true,
            fp_layers: Vec::new(),
            w8_layers: Vec::new(),
            w8_auto: None,
            w8_auto_images: 8,
            w8_auto_steps: 10,
            gptq: None,
            split: true,
        }
    }
}

impl Options {
    /// The reconstruction that runs: the one asked for, else none at 7–8-bit and at 4-bit
    /// weights and block-wise at 5–6 (what measured best on final images, docs/RESULTS.md).
    pub fn recon_method(&self) -> Recon {
        self.recon.unwrap_or(if self.wbits >= 7 || self.wbits == 4 { Recon::None } else { Recon::Block })
    }

    /// Whether the weights are rounded with GPTQ: as asked, else at 4-bit weights (where it
    /// measured best on both models) and not above.
    pub fn weight_round_gptq(&self) -> bool {
        self.gptq.unwrap_or(self.wbits == 4)
    }

    /// How many layers `--w8-auto` keeps at 8-bit weights: as asked, else 12 at 4-bit weights
    /// (the best of 4, 8 and 12 measured on both models; four small layers alone carry half the
    /// error) and none above; always none at 8 bits.
    pub fn w8_auto_layers(&self) -> usize {
        if self.wbits >= 8 { 0 } else { self.w8_auto.unwrap_or(if self.wbits == 4 { 12 } else { 0 }) }
    }

    /// The learning rates (AdaRound α, activation steps): given, else the official CIFAR values
    /// of the bit width (5e-1 / 5e-4 at 4 bits, 5e-2 / 1e-3 otherwise).
    pub fn learning_rates(&self) -> (f64, f64) {
        let (w, a) = if self.wbits == 4 { (5e-1, 5e-4) } else { (5e-2, 1e-3) };
        (self.lr_w.unwrap_or(w), self.lr_a.unwrap_or(a))
    }

    /// The quantizer's configuration for a calibration set of `n` samples, every option checked.
    pub fn config(&self, n: usize, has_eval_set: bool) -> Result<QuantizeConfig> {
        let method = self.recon_method();
        let bad = |m: String| Err(QuantError::Invalid(m));
        if !(4..=8).contains(&self.wbits) {
            return bad(format!("--wbits {}: 4 to 8 are supported", self.wbits));
        }
        if self.abits != 8 {
            return bad(format!(
                "--abits {}: only 8-bit activations are supported (the integer kernels take u8 inputs)",
                self.abits
            ));
        }
        if method != Recon::None && (self.iters == 0 || self.batch == 0) {
            return bad("--iters and --batch must be at least 1".into());
        }
        if !(self.gamma.is_finite() && self.gamma >= 0.0) {
            return bad("--gamma must be finite and non-negative".into());
        }
        if method != Recon::Fbr && self.gamma != 0.8 {
            return bad(format!("--gamma weighs FBR's layer losses; it has no meaning with --recon {}", method.name()));
        }
        for (name, v) in [("--lr-w", self.lr_w), ("--lr-a", self.lr_a)] {
            if let Some(v) = v
                && !(v.is_finite() && v > 0.0)
            {
                return bad(format!("{name} must be finite and positive"));
            }
        }
        if self.w8_auto_layers() > 0 && (self.w8_auto_images == 0 || self.w8_auto_steps == 0) {
            return bad("--w8-auto needs at least one image and one step to rank the layers on".into());
        }
        let holdout = self.holdout.unwrap_or((n / 8).max(8).min(n / 2));
        if method != Recon::None && holdout == 0 && !has_eval_set {
            return bad("--holdout 0 leaves nothing to validate the units on".into());
        }
        let (lr_w, lr_a) = self.learning_rates();
        Ok(QuantizeConfig {
            structure: Structure {
                wbits: self.wbits,
                abits: self.abits,
                split: self.split,
                fp_last: self.fp_output_layer,
                fp_input: self.fp_input_layer,
                fp_layers: self.fp_layers.clone(),
                w8_layers: self.w8_layers.clone(),
            },
            recon: ReconConfig {
                method,
                iters: self.iters,
                batch: self.batch,
                lr_w,
                lr_a,
                gamma: if method == Recon::Fbr { self.gamma } else { 0.0 },
                drop_prob: 0.5,
            },
            seed: self.seed,
            holdout,
            init_samples: 256,
            init_batch: 64,
            chunk: 32,
            act_init: self.act_init,
            step_groups: self.step_groups,
            bias_correction: self.bias_correction,
            gptq: self.weight_round_gptq(),
        })
    }
}

/// Where a run keeps its checkpoint, and whether it continues one.
#[derive(Clone, Copy, Debug)]
pub struct Resume<'a> {
    /// The checkpoint file (written after every unit, removed when the run completes).
    pub checkpoint: &'a Path,
    /// Continue from it (it must exist and belong to the same model, set and options).
    pub resume: bool,
}

/// A finished run: the quantized model, ready to write.
pub struct Quantized<'m> {
    /// The FP model it was quantized from.
    pub source: &'m Model,
    /// The FP network (candle), for analyses on the result.
    pub net: Net,
    /// The quantized model.
    pub model: QModel,
    /// What happened.
    pub report: RunReport,
    /// The configuration it ran with.
    pub config: QuantizeConfig,
    /// The provenance metadata written into the file.
    pub metadata: Vec<(String, MetaValue)>,
}

impl std::fmt::Debug for Quantized<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quantized")
            .field("config", &self.config)
            .field("units", &self.report.units.len())
            .field("eps_mse_final", &self.report.eps_mse_final)
            .finish_non_exhaustive()
    }
}

impl Quantized<'_> {
    /// Writes the quantized `.edq` atomically; returns its size in bytes.
    pub fn write(&self, path: &Path) -> Result<u64> {
        quant::export::write(path, self.source, &self.model, self.metadata.clone())
    }
}

/// Quantizes `model` on `set`: initialisation, reconstruction (with a checkpoint after every
/// unit when `resume` names one), the final check against FP; `eval` replaces the held-out
/// samples of that check.
pub fn quantize<'m>(
    model: &'m Model,
    set: &CalibSet,
    opts: &Options,
    resume: Option<Resume<'_>>,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<Quantized<'m>> {
    quantize_with_eval(model, set, None, opts, resume, progress)
}

/// [`quantize`] with a separate evaluation set for the final check.
pub fn quantize_with_eval<'m>(
    model: &'m Model,
    set: &CalibSet,
    eval: Option<&CalibSet>,
    opts: &Options,
    resume: Option<Resume<'_>>,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<Quantized<'m>> {
    if model.is_quantized() {
        return Err(QuantError::Invalid("this file is already quantized; quantize its FP source".into()));
    }
    if set.sample_shape != model.sample_shape() {
        return Err(QuantError::Invalid(format!(
            "the calibration samples are {:?}, the model takes {:?}",
            set.sample_shape,
            model.sample_shape()
        )));
    }
    let mut config = opts.config(set.len(), eval.is_some())?;
    // Refused before any work (the `--w8-auto` ranking takes minutes).
    if let Some(r) = resume
        && !r.resume
        && r.checkpoint.exists()
    {
        return Err(QuantError::Invalid(format!(
            "{} exists (an interrupted run?): continue it with --resume, or delete it to start over",
            r.checkpoint.display()
        )));
    }
    let net = Net::from_model(model, &candle_core::Device::Cpu)?;
    let mut opts = opts.clone();
    let auto = opts.w8_auto_layers();
    if auto > 0 {
        let chosen = choose_w8_layers(model, &net, set, &opts, auto, &config, progress)?;
        opts.w8_layers.extend(chosen);
        config = opts.config(set.len(), eval.is_some())?;
    }
    let opts = &opts;
    let out = quant::quantize(
        &net,
        set,
        &config,
        resume.map(|r| r.checkpoint),
        resume.is_some_and(|r| r.resume),
        eval,
        progress,
    )?;
    if let Some(r) = resume {
        let _ = std::fs::remove_file(r.checkpoint);
    }
    let metadata = provenance(opts, &config, set, out.model.num_groups());
    Ok(Quantized { source: model, net, model: out.model, report: out.report, config, metadata })
}

/// The `count` layers not yet in `opts.w8_layers` whose nearest-rounded low-bit weights
/// (biases corrected when the run corrects them) alone cost the most on final images.
fn choose_w8_layers(
    model: &Model,
    net: &Net,
    set: &CalibSet,
    opts: &Options,
    count: usize,
    config: &QuantizeConfig,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<Vec<String>> {
    use edadm_runtime::sampler::{SamplerConfig, Skip};
    let t0 = std::time::Instant::now();
    let mut q = quant::weights_nearest(net, set, &config.structure)?;
    if config.bias_correction {
        // As the run will: the biases corrected on the samples the initialisation uses.
        let (train, _) = quant::split_rows(set.len(), config.holdout, config.seed)?;
        let rows: Vec<usize> = train.into_iter().take(config.init_samples.max(1)).collect();
        q = quant::bias_corrected(net, &q, &quant::input_means(net, set, &rows, config.init_batch)?)?;
    }
    let cfg = quant::sensitivity::SensitivityConfig {
        sampler: SamplerConfig::ddim(opts.w8_auto_steps, Skip::Quad),
        images: opts.w8_auto_images,
        range: model.data_range(),
    };
    let mut last = 0;
    let ranks = quant::sensitivity::rank_weights(net, &q, &model.schedule()?, &cfg, &mut |done, total| {
        if done == 1 || done == total || done >= last + total / 10 {
            last = done;
            progress(Event::Stage(&format!(
                "--w8-auto: ranking the layers' {}-bit weights, {done}/{total} sampling runs",
                opts.wbits
            )));
        }
    })?;
    let low: usize = ranks.iter().map(|r| r.params).sum();
    let chosen: Vec<_> = ranks.into_iter().filter(|r| !opts.w8_layers.contains(&r.name)).take(count).collect();
    let kept: usize = chosen.iter().map(|r| r.params).sum();
    let names: Vec<String> = chosen.into_iter().map(|r| r.name).collect();
    progress(Event::Stage(&format!(
        "--w8-auto {count}: 8-bit weights for {} ({:.1} % of the {}-bit weights; ranked in {:.1} s)",
        names.join(", "),
        100.0 * kept as f64 / low.max(1) as f64,
        opts.wbits,
        t0.elapsed().as_secs_f64()
    )));
    Ok(names)
}

/// The `quant.*` and `calib.*` metadata of a run (docs/FORMAT.md §4.2).
fn provenance(opts: &Options, cfg: &QuantizeConfig, set: &CalibSet, groups: usize) -> Vec<(String, MetaValue)> {
    let method = cfg.recon.method;
    let calib_method = set.provenance.iter().find(|(k, _)| k == "method").map_or("unknown", |(_, v)| v.as_str());
    let mut meta: Vec<(String, MetaValue)> = vec![
        (keys::QUANT_METHOD.into(), MetaValue::Str(format!("{calib_method}+{}", method.name()))),
        (keys::QUANT_CALIBRATION.into(), MetaValue::Str(calib_method.into())),
        (keys::QUANT_RECONSTRUCTION.into(), MetaValue::Str(method.name().into())),
        (keys::QUANT_WEIGHT_BITS.into(), MetaValue::U64(u64::from(opts.wbits))),
        (keys::QUANT_ACT_BITS.into(), MetaValue::U64(u64::from(opts.abits))),
        (keys::QUANT_SPLIT.into(), MetaValue::Bool(opts.split)),
        (keys::QUANT_SEED.into(), MetaValue::U64(cfg.seed)),
        (keys::QUANT_ACT_INIT.into(), MetaValue::Str(opts.act_init.name())),
        (keys::QUANT_STEP_GROUPS.into(), MetaValue::U64(groups as u64)),
        (keys::QUANT_BIAS_CORRECTION.into(), MetaValue::Bool(opts.bias_correction)),
        (keys::QUANT_FP_OUTPUT_LAYER.into(), MetaValue::Bool(opts.fp_output_layer)),
        (keys::QUANT_FP_INPUT_LAYER.into(), MetaValue::Bool(opts.fp_input_layer)),
        (
            keys::QUANT_WEIGHT_ROUND.into(),
            MetaValue::Str(if opts.weight_round_gptq() { "gptq" } else { "nearest" }.into()),
        ),
        (keys::QUANT_FP_LAYERS.into(), MetaValue::Str(opts.fp_layers.join(","))),
        (keys::QUANT_W8_LAYERS.into(), MetaValue::Str(opts.w8_layers.join(","))),
        (keys::QUANT_W8_AUTO.into(), MetaValue::U64(opts.w8_auto_layers() as u64)),
        (keys::CALIB_SAMPLES.into(), MetaValue::U64(set.len() as u64)),
        (keys::CALIB_SHA256.into(), MetaValue::Str(calib::digest(set))),
    ];
    if method != Recon::None {
        meta.extend([
            (keys::QUANT_ITERS.to_string(), MetaValue::U64(cfg.recon.iters as u64)),
            (keys::QUANT_BATCH.into(), MetaValue::U64(cfg.recon.batch as u64)),
            (keys::QUANT_LR_W.into(), MetaValue::F64(cfg.recon.lr_w)),
            (keys::QUANT_LR_A.into(), MetaValue::F64(cfg.recon.lr_a)),
        ]);
    }
    if method == Recon::Fbr {
        meta.push((keys::QUANT_GAMMA.into(), MetaValue::F64(cfg.recon.gamma)));
    }
    for (k, key) in [("lambda", keys::QUANT_LAMBDA), ("eps", keys::QUANT_EPSILON)] {
        if let Some(v) = set.provenance.iter().find(|(p, _)| p == k).and_then(|(_, v)| v.parse::<f64>().ok()) {
            meta.push((key.into(), MetaValue::F64(v)));
        }
    }
    meta
}
