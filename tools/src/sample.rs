//! `edadm sample`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use edadm_runtime::sampler::{Sampler, Skip, noise};

use crate::sampler_args::SamplerArgs;
use edadm_runtime::{Model, Session, SessionOptions};

use crate::output::{npy, png_grid};

/// Arguments of `edadm sample`.
#[derive(clap::Args, Debug)]
pub struct SampleArgs {
    /// The .edq model.
    model: PathBuf,
    /// Number of samples.
    #[arg(short = 'n', long, default_value_t = 16)]
    num: usize,
    #[command(flatten)]
    sampler: SamplerArgs,
    /// Seed of the initial noise and of the noise added while sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per network evaluation (default: all, at most 16).
    #[arg(long)]
    batch: Option<usize>,
    /// Threads per evaluation (the caller and N − 1 workers; results do not depend on it).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Where to run: `cpu`, or `cuda[:N]` (no CUDA backend exists yet: refused with one line).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Most memory a session may hold beyond the mapped model (activations and prepared weights),
    /// e.g. `512M`, `4G` (default: three quarters of physical memory); a batch or image size that
    /// needs more is refused before anything is allocated.
    #[arg(long, value_parser = crate::parse_size)]
    max_memory: Option<usize>,
    /// DDPM: clip the x₀ estimate to the data range (`--range`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    clip_x0: bool,
    /// Data range mapped to black and white, `LO,HI` (default: the model's `model.data_range`,
    /// else -1,1).
    #[arg(long, value_parser = parse_range)]
    range: Option<[f32; 2]>,
    /// Upscaling of each image in the grid.
    #[arg(long, default_value_t = 2)]
    scale: usize,
    /// The PNG grid to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Also save the final samples as a NumPy .npy array [N, C, H, W].
    #[arg(long)]
    raw: Option<PathBuf>,
    /// Also save the initial noise x_T of every image as a NumPy .npy array [N, C, H, W] (to run
    /// another implementation from exactly the same noise).
    #[arg(long)]
    noise_out: Option<PathBuf>,
}

pub(crate) fn parse_range(s: &str) -> Result<[f32; 2], String> {
    let (lo, hi) = s.split_once(',').ok_or("expected LO,HI")?;
    let lo: f32 = lo.trim().parse().map_err(|_| format!("{lo:?} is not a number"))?;
    let hi: f32 = hi.trim().parse().map_err(|_| format!("{hi:?} is not a number"))?;
    if !(lo.is_finite() && hi.is_finite() && hi > lo) {
        return Err("the range must be finite with LO < HI".into());
    }
    Ok([lo, hi])
}

/// The data range of `model`'s samples: `over` when given, else the model's
/// ([`Model::data_range`]).
pub(crate) fn data_range(model: &Model, over: Option<[f32; 2]>) -> [f32; 2] {
    over.unwrap_or_else(|| model.data_range())
}

/// Most samples one `sample` run takes.
const MAX_SAMPLES: usize = 100_000;

pub fn run(a: SampleArgs) -> Result<()> {
    for out in [Some(&a.output), a.raw.as_ref(), a.noise_out.as_ref()].into_iter().flatten() {
        crate::output::check_output(out, &[Some(&a.model)])?;
    }
    if a.num == 0 {
        bail!("-n must be at least 1");
    }
    if a.num > MAX_SAMPLES {
        bail!("-n {}: at most {MAX_SAMPLES} samples per run (they are held in memory and tiled into one PNG)", a.num);
    }
    if a.scale == 0 || a.scale > 16 {
        bail!("--scale must be between 1 and 16");
    }
    let model = Model::open(&a.model).with_context(|| format!("cannot open {}", a.model.display()))?;
    let schedule = model.schedule().with_context(|| format!("cannot sample from {}", a.model.display()))?;
    // Never more images per evaluation than samples asked for.
    let batch = a.batch.unwrap_or(16).min(a.num);
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let [c, h, w] = model.sample_shape();
    let image = c.checked_mul(h).and_then(|v| v.checked_mul(w));
    let held =
        image.and_then(|v| v.checked_mul(a.num)).and_then(|v| v.checked_mul(4 * (1 + a.noise_out.is_some() as usize)));
    // One budget for the samples held and the session: the session gets what the samples leave.
    let limit = a.max_memory.unwrap_or_else(edadm_runtime::default_memory_limit);
    let held = match held {
        Some(b) if b < limit => b,
        _ => bail!(
            "-n {} of {c}×{h}×{w} images would hold {} of samples; the memory limit is {} (--max-memory)",
            a.num,
            held.map_or_else(|| "more than the address space".into(), edadm_runtime::human_bytes),
            edadm_runtime::human_bytes(limit)
        ),
    };
    if a.threads == 0 {
        bail!("--threads must be at least 1");
    }
    let mut session = Session::new(
        &model,
        &SessionOptions {
            threads: a.threads,
            device: crate::device(&a.device)?,
            max_memory: Some(limit - held),
            ..SessionOptions::batch(batch)
        },
    )
    .with_context(|| format!("cannot run {}", a.model.display()))?;
    let range = data_range(&model, a.range);
    let cfg = a.sampler.config(Skip::Uniform, a.clip_x0.then_some(range), a.seed);
    let kind = cfg.kind;
    let len = session.sample_len();
    let mut sampler = Sampler::new(&schedule, cfg, batch, len)?;
    let chunks = a.num.div_ceil(batch);
    let total = chunks * sampler.num_steps();
    let bar = indicatif::ProgressBar::new(total as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} sampling [{bar:30}] {pos}/{len} steps, {elapsed} elapsed, {eta} left",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let per = len / batch;
    let mut all = vec![0f32; a.num * per];
    let mut start = if a.noise_out.is_some() { vec![0f32; a.num * per] } else { Vec::new() };
    let mut x = vec![0f32; len];
    let started = Instant::now();
    for chunk in 0..chunks {
        let first = chunk * batch;
        noise::initial_noise(a.seed, first as u64, &mut x, batch);
        let take = (a.num - first).min(batch);
        if !start.is_empty() {
            start[first * per..(first + take) * per].copy_from_slice(&x[..take * per]);
        }
        sampler.set_first_image(first as u64);
        let base = bar.position();
        sampler.run(&mut session, &mut x, &mut |done, _| bar.set_position(base + done as u64))?;
        all[first * per..(first + take) * per].copy_from_slice(&x[..take * per]);
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let [c, h, w] = session.sample_shape();
    png_grid(&a.output, &all, a.num, c, h, w, range, a.scale)?;
    if let Some(raw) = &a.raw {
        npy(raw, &all, &[a.num, c, h, w])?;
    }
    if let Some(p) = &a.noise_out {
        npy(p, &start, &[a.num, c, h, w])?;
    }
    let evals = chunks * sampler.model_calls();
    println!(
        "wrote {}: {} samples, {} {} steps ({} skip, eta {}), seed {}",
        a.output.display(),
        a.num,
        kind.name(),
        sampler.num_steps(),
        cfg.skip.name(),
        cfg.eta,
        a.seed
    );
    println!(
        "time: {:.2} s total, {:.2} ms per step at batch {batch} ({:.3} ms per image-step), {:.2} ms per network evaluation; kernels {}",
        secs,
        secs * 1e3 / total as f64,
        secs * 1e3 / (total * batch) as f64,
        secs * 1e3 / evals as f64,
        session.kernels().describe()
    );
    Ok(())
}
