//! `edadm quantize`: EDA-DM (or a baseline) from an FP `.edq` to a quantized `.edq` — calibration
//! (or a saved calibration set), quantizer initialisation, reconstruction with a checkpoint after
//! every unit, export. The output file appears only when the run is complete.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use edadm_quantizer::calib::{self, CalibSet};
use edadm_quantizer::grid::ActInit;
use edadm_quantizer::net::Net;
use edadm_quantizer::pipeline::{self, Options, Resume};
use edadm_quantizer::quant::{self, Event, Recon};
use edadm_runtime::Model;
use edadm_runtime::sampler::{SamplerConfig, Skip};

use crate::calibrate::CalibOpts;

/// Arguments of `edadm quantize`.
#[derive(clap::Args, Debug)]
pub struct QuantizeArgs {
    /// The FP model (`.edq`).
    model: PathBuf,
    /// Weight bits, 4 to 8 (the first time-embedding linear and the output conv always get 8). 7
    /// multiplies 1.2–1.6× faster on CPUs without VNNI (AVX2, AVX-512F): every product fits
    /// `vpmaddubsw` exactly.
    #[arg(long, default_value_t = 8)]
    wbits: u32,
    /// Activation bits (8 is what the integer kernels take).
    #[arg(long, default_value_t = 8)]
    abits: u32,
    #[command(flatten)]
    calib: CalibOpts,
    /// Use a saved calibration set (`edadm calibrate`) instead of sampling one; the calibration
    /// options must then be left at their defaults.
    #[arg(long)]
    calib_set: Option<PathBuf>,
    /// Reconstruction: EDA-DM's FBR, BRECQ's block-wise, layer-wise, none (initialisation only),
    /// or `auto`: none at 7–8-bit weights; at 4 bits none either (GPTQ rounding and twelve 8-bit
    /// layers, `--weight-round auto`, `--w8-auto`); block-wise at 5–6 — what measured best on
    /// final images (docs/RESULTS.md: at W8A8 reconstruction lowered the PSNR against FP; at
    /// W4A8 measured 8-bit layers with GPTQ rounding beat every reconstruction on both models over
    /// three calibration seeds).
    #[arg(long, default_value = "auto", value_parser = ["auto", "fbr", "block", "layer", "none"])]
    recon: String,
    /// FBR: weight γ of the layer losses.
    #[arg(long, default_value_t = 0.8)]
    gamma: f64,
    /// Iterations per unit (official: 5000).
    #[arg(long, default_value_t = 5000)]
    iters: usize,
    /// Reconstruction minibatch (official: 32).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Learning rate of AdaRound's α (default: 5e-2 at W8, 5e-1 at W4, the official CIFAR values).
    #[arg(long)]
    lr_w: Option<f64>,
    /// Learning rate of the activation steps (default: 1e-3 at W8, 5e-4 at W4).
    #[arg(long)]
    lr_a: Option<f64>,
    /// Calibration samples held out to validate each unit (default: an eighth, at least 8).
    #[arg(long)]
    holdout: Option<usize>,
    /// Activation range initialisation: the official L2.4 search over symmetric ranges (`mse`),
    /// the same search scaling both ends of [min, max] (`mse-asym`), the extremes over the
    /// calibration set (`minmax`, ONNX Runtime's default), or averaged per-batch percentiles
    /// (`percentile`, see --act-percentile; the default: it measured best on both shared models,
    /// docs/RESULTS.md), or per quantizer whichever of percentile 99.999 / 99.99 / 99.9 / 99 and
    /// minmax gives its layer the smallest output error against FP on the calibration samples
    /// (`layer`). EDA-DM's official initialisation is `mse`.
    #[arg(long, default_value = "percentile", value_parser = ["mse", "mse-asym", "minmax", "percentile", "layer"])]
    act_init: String,
    /// The percentile of `--act-init percentile` (the range is [P(100 − p), P(p)]; default 99.999).
    #[arg(long)]
    act_percentile: Option<f32>,
    /// Time-step-aware activation quantizers: `1` (one (Δ, zp) per quantizer for every step, as
    /// EDA-DM), a number of groups of consecutive sampler steps, or `steps` (one group per
    /// distinct timestep of the calibration set). Each group is initialised on its own steps'
    /// samples; the runtime picks the group from t.
    #[arg(long, default_value = "1")]
    step_groups: String,
    /// Bias correction: every conv and linear layer's bias absorbs the mean error its rounded
    /// weights cause on the calibration inputs, `−(Ŵ − W)·E[x]` (zero cost at run time; on by
    /// default, `false` for EDA-DM as published).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    bias_correction: bool,
    /// Keep the output layer (the last conv, whose input stays f32 in every recipe) entirely in
    /// f32 instead of 8-bit weights: the same speed, one rounding error less (on by default,
    /// `false` for EDA-DM as published).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    fp_output_layer: bool,
    /// Convs and linears reading the network input x_t (or x_t plus an embedding) keep that
    /// input f32: their weights stay quantized and they run in f32 on dequantized weights, like
    /// the output layer. One activation range for all steps must span pure noise and a clean
    /// image (on by default, `false` for EDA-DM as published).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    fp_input_layer: bool,
    /// Convs and linears (by node name, comma-separated, as `--sensitivity` and `inspect` name
    /// them) whose inputs stay f32, their weights quantized: the measured most sensitive
    /// activation quantizers left out, at the cost of running those layers in f32.
    #[arg(long, value_delimiter = ',')]
    fp_layers: Vec<String>,
    /// Convs, transposed convs and linears (by node name, comma-separated) that keep 8-bit
    /// weights below `--wbits 8`: mixed precision for the layers whose low-bit weights
    /// `--sensitivity` ranks as costing the most (the runtime runs each layer at its own width).
    #[arg(long, value_delimiter = ',')]
    w8_layers: Vec<String>,
    /// Below `--wbits 8`, this many more layers keep 8-bit weights, chosen by measurement before
    /// quantizing: each layer's low-bit weights alone (nearest rounding, everything else FP) are
    /// sampled from fixed noise and the layers that move the final images furthest from FP are
    /// kept at 8 bits (a weights-only `--sensitivity`: one DDIM run per layer). Default: 12 at
    /// `--wbits 4`, 0 otherwise.
    #[arg(long)]
    w8_auto: Option<usize>,
    /// Images of the `--w8-auto` ranking.
    #[arg(long, default_value_t = 8)]
    w8_auto_images: usize,
    /// DDIM steps (quad skip) of the `--w8-auto` ranking.
    #[arg(long, default_value_t = 10)]
    w8_auto_steps: usize,
    /// Weight rounding before any reconstruction: to the nearest level of each channel's grid,
    /// or GPTQ (each layer's columns rounded in turn, the error spread over the columns not
    /// rounded yet through the inverse Hessian of the layer's FP inputs on the calibration
    /// samples; transposed convolutions round to nearest). Reconstruction (`--recon`) learns its
    /// own rounding from the FP weights on top of either.
    /// `auto`: GPTQ at 4-bit weights, nearest above (what measured best, docs/RESULTS.md).
    #[arg(long, default_value = "auto", value_parser = ["auto", "nearest", "gptq"])]
    weight_round: String,
    /// Q-Diffusion's split of the skip convolution on decoder concatenations (official: on).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    split: bool,
    /// A calibration-set file whose samples the final ε-MSE check uses instead of the held-out ones.
    #[arg(long)]
    eval_set: Option<PathBuf>,
    /// Write report.json, calibration.svg and units.svg here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Checkpoint file (default: the output path + `.ckpt`).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Continue from the checkpoint of an interrupted run with the same options.
    #[arg(long)]
    resume: bool,
    /// Also measure where the error comes from and write the ranked tables here: every
    /// activation quantizer and every layer's weights quantized alone (final-image PSNR and ε-MSE
    /// per step against FP from the same noise), and the whole model quantized at one step only.
    #[arg(long)]
    sensitivity: Option<PathBuf>,
    /// Images of the sensitivity analysis.
    #[arg(long, default_value_t = 16)]
    sens_images: usize,
    /// Sampler steps of the sensitivity analysis (the sampler, skip and η are the calibration
    /// options').
    #[arg(long, default_value_t = 20)]
    sens_steps: usize,
    /// Quantizers shown in the sensitivity chart.
    #[arg(long, default_value_t = 30)]
    sens_top: usize,
    /// Output file.
    #[arg(short, long)]
    output: PathBuf,
}

fn calib_defaults_changed(o: &CalibOpts) -> Vec<&'static str> {
    let mut v = Vec::new();
    if o.calib != "tdac" {
        v.push("--calib");
    }
    if o.n_calib != 1024 {
        v.push("--n-calib");
    }
    if o.lambda != 1.2 {
        v.push("--lambda");
    }
    if o.eps != "median" {
        v.push("--eps");
    }
    if o.sampler.config(Skip::Quad, None, 0) != SamplerConfig::ddim(100, Skip::Quad) {
        v.push("--sampler/--steps/--skip/--eta");
    }
    v
}

/// Runs `edadm quantize`.
pub fn run(a: QuantizeArgs) -> Result<()> {
    crate::output::check_output(&a.output, &[Some(&a.model), a.calib_set.as_deref(), a.eval_set.as_deref()])?;
    edadm_runtime::keep_freed_memory();
    let started = Instant::now();
    let recon = match a.recon.as_str() {
        "auto" => None,
        r => Some(Recon::from_name(r).expect("clap checked --recon")),
    };
    let percentile = a.act_percentile.unwrap_or(99.999);
    if !(percentile.is_finite() && percentile > 50.0 && percentile <= 100.0) {
        bail!("--act-percentile {percentile}: must lie in (50, 100]");
    }
    let act_init = ActInit::from_name(&a.act_init, percentile).expect("clap checked --act-init");
    if !matches!(act_init, ActInit::Percentile(_)) && a.act_percentile.is_some() {
        bail!(
            "--act-percentile sets the clip of --act-init percentile; it has no meaning with --act-init {}",
            a.act_init
        );
    }
    let Some(step_groups) = quant::StepGrouping::from_name(&a.step_groups) else {
        bail!("--step-groups {}: give a number of groups (1 or more) or `steps`", a.step_groups);
    };
    let opts = Options {
        wbits: a.wbits,
        abits: a.abits,
        recon,
        iters: a.iters,
        batch: a.batch,
        gamma: a.gamma,
        lr_w: a.lr_w,
        lr_a: a.lr_a,
        holdout: a.holdout,
        seed: a.calib.seed,
        act_init,
        step_groups,
        bias_correction: a.bias_correction,
        fp_output_layer: a.fp_output_layer,
        fp_input_layer: a.fp_input_layer,
        fp_layers: a.fp_layers.clone(),
        w8_layers: a.w8_layers.clone(),
        w8_auto: a.w8_auto,
        w8_auto_images: a.w8_auto_images,
        w8_auto_steps: a.w8_auto_steps,
        gptq: match a.weight_round.as_str() {
            "auto" => None,
            r => Some(r == "gptq"),
        },
        split: a.split,
    };
    let method = opts.recon_method();
    // Every option checked before any work (the held-out count again once the set is known).
    opts.config(usize::MAX, true)?;
    if a.sensitivity.is_some() && step_groups != quant::StepGrouping::One {
        bail!("--sensitivity does not support --step-groups yet (it analyses one set of activation quantizers)");
    }
    if a.sensitivity.is_some() && (a.sens_images == 0 || a.sens_steps == 0) {
        bail!("--sens-images and --sens-steps must be at least 1");
    }
    if a.output.extension().and_then(|e| e.to_str()) != Some("edq") {
        bail!("{}: the output must be an .edq file", a.output.display());
    }
    let model = Model::open(&a.model).with_context(|| format!("cannot open {}", a.model.display()))?;
    if model.is_quantized() {
        bail!("{}: this file is already quantized; quantize its FP source", a.model.display());
    }

    let set: CalibSet = match &a.calib_set {
        Some(p) => {
            let changed = calib_defaults_changed(&a.calib);
            if !changed.is_empty() {
                bail!("{} cannot be combined with --calib-set (the set was already selected)", changed.join(", "));
            }
            calib::load(p)?
        }
        None => {
            eprintln!("calibration: {} trajectories, {} selection", a.calib.n_calib, a.calib.calib);
            calibrate_set(&model, &a)?
        }
    };
    if set.sample_shape != model.sample_shape() {
        bail!(
            "the calibration samples are {:?} but {} takes {:?}",
            set.sample_shape,
            a.model.display(),
            model.sample_shape()
        );
    }
    let eval = match &a.eval_set {
        Some(p) => Some(calib::load(p)?),
        None => None,
    };
    opts.config(set.len(), eval.is_some())?;
    let ckpt = a.checkpoint.clone().unwrap_or_else(|| {
        let mut p = a.output.clone().into_os_string();
        p.push(".ckpt");
        PathBuf::from(p)
    });

    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} it, loss {msg}, {eta} left")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut progress = |e: Event<'_>| match e {
        Event::Stage(s) => eprintln!("{s}"),
        Event::Iter { unit, units, name, it } => {
            if it.iter == 1 {
                bar.reset();
                bar.set_length(it.iters as u64);
                bar.set_prefix(format!("unit {}/{units} {name}", unit + 1));
            }
            bar.set_position(it.iter as u64);
            bar.set_message(format!("{:.4e}", it.loss));
        }
        Event::UnitDone { unit, units, report: r } => {
            bar.suspend(|| {
                eprintln!(
                    "unit {}/{units} {:<28} held-out loss {:.4e} -> {:.4e} {} ({:.1} s)",
                    unit + 1,
                    r.name,
                    r.block_before,
                    r.block_after,
                    if r.kept { "kept" } else { "not lower: initialised parameters kept" },
                    r.seconds
                )
            });
        }
        Event::UnitResumed { unit, units, name } => eprintln!("unit {}/{units} {name}: from the checkpoint", unit + 1),
    };
    let resume = Resume { checkpoint: &ckpt, resume: a.resume };
    let out = pipeline::quantize_with_eval(&model, &set, eval.as_ref(), &opts, Some(resume), &mut progress)
        .with_context(|| format!("cannot quantize {}", a.model.display()))?;
    bar.finish_and_clear();
    let r = &out.report;
    let calib_method = set.provenance.iter().find(|(k, _)| k == "method").map_or("unknown", |(_, v)| v.as_str());
    let size = out.write(&a.output)?;
    if let Some(dir) = &a.report {
        let settings = serde_json::json!({
            "model": a.model.display().to_string(),
            "config": out.config,
            "calib_set": a.calib_set.as_ref().map(|p| p.display().to_string()),
            "output": a.output.display().to_string(),
            "output_bytes": size,
            "seconds_total": started.elapsed().as_secs_f64(),
        });
        quant::report::write(dir, &set, r, settings)?;
    }
    if let Some(dir) = &a.sensitivity {
        sensitivity(&model, &out.net, &out.model, &a, dir)?;
    }
    if !r.act_choices.is_empty() {
        let list: Vec<String> = r.act_choices.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        eprintln!(
            "--act-init layer: ranges chosen per activation quantizer by layer-output error — {}",
            list.join(", ")
        );
    }
    let kept = r.units.iter().filter(|u| u.kept).count();
    println!(
        "wrote {} ({:.1} MiB, W{}A{} {}+{}): ε-MSE vs FP on {} samples {:.4e} (initialisation only {:.4e}){}; \
         {}/{} units improved; {:.1} s",
        a.output.display(),
        size as f64 / (1024.0 * 1024.0),
        a.wbits,
        a.abits,
        calib_method,
        method.name(),
        r.eval_samples,
        r.eps_mse_final,
        r.eps_mse_init,
        if r.reverted_to_init { " — reconstruction was worse overall, the initialised model was kept" } else { "" },
        kept,
        r.units.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn sensitivity(model: &Model, net: &Net, q: &quant::QModel, a: &QuantizeArgs, dir: &std::path::Path) -> Result<()> {
    let cfg = quant::sensitivity::SensitivityConfig {
        sampler: SamplerConfig { steps: a.sens_steps, ..a.calib.sampler.config(Skip::Quad, None, 0) },
        images: a.sens_images,
        range: crate::sample::data_range(model, None),
    };
    let started = Instant::now();
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} sensitivity [{bar:30}] {pos}/{len} sampling runs, {eta} left",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let s = quant::sensitivity::analyse(net, q, &model.schedule()?, &cfg, &mut |d, n| {
        bar.set_length(n as u64);
        bar.set_position(d as u64);
    })?;
    bar.finish_and_clear();
    quant::sensitivity::write(dir, &s, a.sens_top)?;
    let worst: Vec<String> = s.quantizers.iter().take(3).map(|v| format!("{} {:.1} dB", v.name, v.psnr_db)).collect();
    println!(
        "sensitivity: whole model {:.2} dB vs FP over {} images × {} steps; most harmful alone: {}; {} ({:.1} s)",
        s.full.psnr_db,
        a.sens_images,
        a.sens_steps,
        worst.join(", "),
        dir.join("sensitivity.md").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn calibrate_set(model: &Model, a: &QuantizeArgs) -> Result<CalibSet> {
    let (set, secs) = crate::calibrate::build(model, &a.model, &a.calib)?;
    eprintln!("calibration: {} samples in {secs:.1} s", set.len());
    Ok(set)
}
