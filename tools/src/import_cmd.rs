//! `edadm import`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use edadm_quantizer::import::{Family, ImportOptions, import};

use crate::inspect::bytes;

/// Arguments of `edadm import`.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// Model family: ddpm (pytorch_diffusion / ddim checkpoints), diffusers (a UNet2DModel
    /// folder), mnist-unet.
    #[arg(long, value_parser = ["ddpm", "diffusers", "mnist-unet"])]
    family: String,
    /// The checkpoint (.ckpt, .pth, .pt, .bin, .safetensors) or, for diffusers, the model folder.
    #[arg(required_unless_present = "random_weights")]
    checkpoint: Option<PathBuf>,
    /// Instead of a checkpoint: the architecture (from --preset/--config) with random weights
    /// drawn from this seed — a model of the right shapes for `edadm bench`, not for sampling.
    #[arg(long, value_name = "SEED", conflicts_with = "checkpoint")]
    random_weights: Option<u64>,
    /// ddpm: a ddim-repository config (JSON or YAML); diffusers: a scheduler_config.json.
    #[arg(long)]
    config: Option<PathBuf>,
    /// ddpm: a built-in config (cifar10, fmnist-ddpm).
    #[arg(long)]
    preset: Option<String>,
    /// Where the model sits in a checkpoint holding several (state_dict, ema, ...).
    #[arg(long)]
    key: Option<String>,
    /// Storage type of the weight matrices.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    dtype: String,
    /// The .edq file to write.
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(a: ImportArgs) -> Result<()> {
    crate::output::check_output(&a.output, &[a.checkpoint.as_deref(), a.config.as_deref()])?;
    let family = Family::from_name(&a.family).expect("clap checked the family");
    let opts = ImportOptions {
        config: a.config,
        preset: a.preset,
        key: a.key,
        f16: a.dtype == "f16",
        random: a.random_weights,
    };
    let started = std::time::Instant::now();
    let ckpt = a.checkpoint.unwrap_or_default();
    let what = match a.random_weights {
        Some(seed) => format!("random weights (seed {seed})"),
        None => ckpt.display().to_string(),
    };
    let imported = import(family, &ckpt, &opts).with_context(|| format!("cannot import {what}"))?;
    for note in &imported.notes {
        eprintln!("note: {note}");
    }
    let g = imported.file.graph();
    let (nodes, units) = (g.nodes.len(), g.units.len());
    let n_tensors = imported.file.num_tensors();
    let len = imported.file.write_atomic(&a.output).with_context(|| format!("cannot write {}", a.output.display()))?;
    println!(
        "wrote {} ({}, {}): {nodes} nodes, {units} reconstruction units, {n_tensors} tensors, {} weights, {:.1} s",
        a.output.display(),
        a.family,
        bytes(len),
        a.dtype,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
