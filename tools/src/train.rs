//! `edadm train`: train a DDPM UNet from scratch (host side, candle on the CPU).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use edadm_format::{MetaArray, MetaValue};
use edadm_quantizer::import::{Family, ImportOptions, import};
use edadm_quantizer::train::{Images, TrainConfig, export, train};
use edadm_runtime::Model;

/// Arguments of `edadm train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Training images: an IDX file (`train-images-idx3-ubyte[.gz]` of MNIST or Fashion-MNIST,
    /// e.g. /usr/share/datasets/fashion-mnist/ from Debian's dataset-fashion-mnist).
    #[arg(long)]
    data: PathBuf,
    /// The architecture: a ddpm preset (fmnist-ddpm, cifar10) ...
    #[arg(long, conflicts_with_all = ["config", "init"])]
    preset: Option<String>,
    /// ... or a ddim-repository config file ...
    #[arg(long, conflicts_with = "init")]
    config: Option<PathBuf>,
    /// ... or an .edq model whose weights are the starting point.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Optimiser steps.
    #[arg(long, default_value_t = 10_000)]
    steps: usize,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// Linear learning-rate warm-up steps.
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// EMA decay of the exported weights.
    #[arg(long, default_value_t = 0.999)]
    ema: f64,
    /// Global gradient-norm clip (0: none).
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// No random horizontal flips.
    #[arg(long)]
    no_flip: bool,
    /// Seed of the initial weights and of every draw.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Checkpoint file (default: the output path + `.ckpt`).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 200)]
    every: usize,
    /// Continue the interrupted run of the checkpoint (same settings).
    #[arg(long)]
    resume: bool,
    /// Storage of the exported weight matrices (biases and norm parameters stay f32).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    dtype: String,
    /// The trained .edq model (EMA weights).
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(a: TrainArgs) -> Result<()> {
    crate::output::check_output(&a.output, &[Some(&a.data), a.config.as_deref(), a.init.as_deref()])?;
    edadm_runtime::keep_freed_memory();
    let images =
        Images::read_idx(&a.data).with_context(|| format!("cannot read training images {}", a.data.display()))?;
    let model = match &a.init {
        Some(p) => Model::open(p).with_context(|| format!("cannot open {}", p.display()))?,
        None => {
            if a.preset.is_none() && a.config.is_none() {
                bail!("give the architecture with --preset NAME, --config FILE or --init MODEL.edq");
            }
            let opts = ImportOptions {
                config: a.config.clone(),
                preset: a.preset.clone(),
                key: None,
                f16: false,
                random: Some(a.seed),
            };
            let imported =
                import(Family::Ddpm, std::path::Path::new(""), &opts).context("cannot build the architecture")?;
            let bytes = imported.file.to_bytes().context("cannot build the architecture")?;
            Model::from_bytes(bytes).context("cannot build the architecture")?
        }
    };
    let cfg = TrainConfig {
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        warmup: a.warmup,
        ema: a.ema,
        clip: a.clip,
        flip: !a.no_flip,
        seed: a.seed,
    };
    let ckpt = a.checkpoint.clone().unwrap_or_else(|| {
        let mut p = a.output.clone().into_os_string();
        p.push(".ckpt");
        PathBuf::from(p)
    });
    let bar = indicatif::ProgressBar::new(a.steps as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} training [{bar:30}] {pos}/{len} steps, {msg}, {elapsed} elapsed, {eta} left",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut avg = None::<f64>;
    let trained = train(&model, &images, &cfg, &ckpt, a.every, a.resume, &mut |step, loss| {
        let m = avg.map_or(loss, |m| 0.98 * m + 0.02 * loss);
        avg = Some(m);
        bar.set_position(step as u64);
        bar.set_message(format!("loss {m:.4}"));
    })
    .with_context(|| format!("training on {} failed", a.data.display()))?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let meta = vec![
        ("train.data".to_string(), MetaValue::Str(a.data.display().to_string())),
        ("train.steps".to_string(), MetaValue::U64(a.steps as u64)),
        ("train.batch".to_string(), MetaValue::U64(a.batch as u64)),
        ("train.lr".to_string(), MetaValue::F64(a.lr)),
        ("train.ema".to_string(), MetaValue::F64(a.ema)),
        ("train.seed".to_string(), MetaValue::U64(a.seed)),
        ("train.loss_per_100_steps".to_string(), MetaValue::Array(MetaArray::F64(trained.losses.clone()))),
    ];
    let bytes = export(&model, &trained.ema, meta, a.dtype == "f16").context("cannot export the trained model")?;
    edadm_quantizer::io::write_atomic(&a.output, &bytes)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    println!(
        "wrote {}: {} steps ({} in this run, {:.2} s per step), last loss {:.4}, EMA {} weights",
        a.output.display(),
        a.steps,
        trained.steps_run,
        secs / trained.steps_run.max(1) as f64,
        trained.losses.last().copied().unwrap_or(f64::NAN),
        a.ema
    );
    Ok(())
}
