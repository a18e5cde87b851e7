//! `edadm calibrate`: FP trajectories of a model, one step per trajectory chosen by TDAC or a
//! baseline, saved as a calibration set (safetensors) that `edadm quantize` reads, so one
//! calibration serves several bit widths and reconstruction methods.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use edadm_quantizer::calib::{self, Eps, Method};
use edadm_runtime::Model;
use edadm_runtime::sampler::Skip;

use crate::sampler_args::SamplerArgs;

/// How to build a calibration set (shared by `edadm calibrate` and `edadm quantize`).
#[derive(clap::Args, Debug, Clone)]
pub struct CalibOpts {
    /// Selection method: TDAC (EDA-DM), Q-Diffusion's uniform steps, PTQ4DM's NDTC, or random.
    #[arg(long, default_value = "tdac", value_parser = ["tdac", "uniform", "ndtc", "random"])]
    pub calib: String,
    /// Calibration samples = FP trajectories (one sample each).
    #[arg(long, default_value_t = 1024)]
    pub n_calib: usize,
    /// TDAC: weight λ of the variety score.
    #[arg(long, default_value_t = 1.2)]
    pub lambda: f64,
    /// TDAC: density threshold ε on the mean squared feature distance between two steps' feature
    /// maps — `median` (the median over all step pairs of this model's trajectories) or a number
    /// (the official code: 3.0, fitted to CIFAR-10).
    #[arg(long, default_value = "median")]
    pub eps: String,
    /// The trajectories' sampler (the task's sampler; `--skip` defaults to quad).
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Images per FP evaluation while sampling trajectories.
    #[arg(long, default_value_t = 64)]
    pub sample_batch: usize,
    /// Seed of the trajectories' noise and of the selection (and, for quantize, of the
    /// reconstruction's draws).
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
}

/// Arguments of `edadm calibrate`.
#[derive(clap::Args, Debug)]
pub struct CalibrateArgs {
    /// The FP model (`.edq`).
    model: PathBuf,
    #[command(flatten)]
    opts: CalibOpts,
    /// Output file (safetensors).
    #[arg(short, long)]
    output: PathBuf,
}

/// Runs `edadm calibrate`.
pub fn run(a: CalibrateArgs) -> Result<()> {
    crate::output::check_output(&a.output, &[Some(&a.model)])?;
    edadm_runtime::keep_freed_memory();
    let model = Model::open(&a.model).with_context(|| format!("cannot open {}", a.model.display()))?;
    let started = Instant::now();
    let (set, sampled) = build(&model, &a.model, &a.opts)?;
    calib::save(&set, &a.output)?;
    let per = set.per_step();
    let used = per.iter().filter(|&&c| c > 0).count();
    println!(
        "wrote {}: {} samples from {} steps ({} used), {} in {:.1} s (sampling {:.1} s)",
        a.output.display(),
        set.len(),
        set.steps,
        used,
        a.opts.calib,
        started.elapsed().as_secs_f64(),
        sampled
    );
    if let Some(s) = &set.tdac {
        let [lo, _, hi] = s.pair_mse;
        let rule = if a.opts.eps == "median" { " (the median step-pair distance)" } else { "" };
        println!("TDAC: ε {:.4e}{rule}, step-pair distances {lo:.4e} .. {hi:.4e}", s.eps);
        println!("TDAC: samples per step (denoising order) {:?}", s.counts);
    }
    Ok(())
}

/// Samples FP trajectories and selects the calibration set; returns it with the sampling time.
pub fn build(model: &Model, path: &std::path::Path, a: &CalibOpts) -> Result<(calib::CalibSet, f64)> {
    if a.n_calib == 0 || a.sample_batch == 0 || a.sampler.steps == 0 {
        bail!("--n-calib, --sample-batch and --steps must be at least 1");
    }
    let Some(eps) = Eps::parse(&a.eps) else {
        bail!("--eps {}: expected `median` or a finite non-negative number", a.eps);
    };
    if !(a.lambda.is_finite() && a.lambda >= 0.0) {
        bail!("--lambda {}: must be finite and non-negative", a.lambda);
    }
    if model.is_quantized() {
        bail!("{}: calibration needs the FP model, this file is already quantized", path.display());
    }
    let method = match a.calib.as_str() {
        "tdac" => Method::Tdac { lambda: a.lambda, eps },
        "uniform" => Method::Uniform,
        "ndtc" => Method::Ndtc,
        _ => Method::Random,
    };
    let feature = match method {
        Method::Tdac { .. } => Some(
            calib::feature_value(model.graph())
                .with_context(|| format!("{}: no middle block to take TDAC's feature map from", path.display()))?,
        ),
        _ => None,
    };
    let cfg = a.sampler.config(Skip::Quad, None, a.seed);
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{spinner} FP trajectories [{bar:30}] {pos}/{len} steps, {eta} left")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let tr = calib::collect(model, cfg, a.n_calib, a.sample_batch, feature.as_ref().map(|f| f.0), &mut |d, n| {
        bar.set_length(n as u64);
        bar.set_position(d as u64);
    })
    .with_context(|| format!("cannot sample from {}", path.display()))?;
    bar.finish_and_clear();
    let sampled = started.elapsed().as_secs_f64();
    let mut set = calib::select(&tr, method, a.seed)?;
    if let Some(w) = set.tdac.as_ref().and_then(|s| s.constant_density_warning()) {
        eprintln!("warning: {w}");
    }
    set.provenance.extend([
        ("model".to_string(), path.display().to_string()),
        ("sampler".into(), a.sampler.describe(Skip::Quad)),
        ("trajectories".into(), a.n_calib.to_string()),
    ]);
    if let Some((_, what)) = &feature {
        set.provenance.push(("feature_map".into(), what.clone()));
    }
    Ok((set, sampled))
}
