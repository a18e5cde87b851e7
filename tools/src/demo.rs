//! `edadm demo`: the whole product on one model — quantize it to W8A8 with EDA-DM (TDAC + FBR)
//! at quick settings, sample the same noise with the f32 engine and the integer runtime, and
//! write both grids side by side with a short report (speed, memory, file sizes, PSNR).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use edadm_quantizer::pipeline;
use edadm_quantizer::quant::Recon;
use edadm_runtime::sampler::{Sampler, SamplerConfig, SamplerKind, Skip, noise};
use edadm_runtime::{Model, Session, SessionOptions};

use crate::output::{atomic_write, png_grid_cols};

/// Arguments of `edadm demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// The FP model (default: the built-in model, `models/fmnist-builtin.edq` next to the
    /// repository or the binary).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Output folder.
    #[arg(long, default_value = "demo-out")]
    out: PathBuf,
    /// Images to generate (the same noise for both engines).
    #[arg(short = 'n', long, default_value_t = 16)]
    num: usize,
    /// DDIM steps (quad spacing, η 0).
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Threads of the runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Quick EDA-DM settings: calibration trajectories (TDAC picks one step of each).
    #[arg(long, default_value_t = 64)]
    n_calib: usize,
    /// Quick EDA-DM settings: steps of the calibration trajectories.
    #[arg(long, default_value_t = 20)]
    calib_steps: usize,
    /// Quick EDA-DM settings: FBR iterations per unit (official 5000).
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Where the built-in model is looked for.
fn builtin() -> Option<PathBuf> {
    let name = "models/fmnist-builtin.edq";
    let mut cands = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(name), PathBuf::from(name)];
    if let Ok(exe) = std::env::current_exe() {
        for up in exe.ancestors().skip(1).take(4) {
            cands.push(up.join(name));
        }
    }
    cands.into_iter().find(|p| p.is_file()).map(|p| p.canonicalize().unwrap_or(p))
}

/// Samples `n` images from the same noise; returns them and the ms per sampling step.
fn sample(path: &Path, n: usize, steps: usize, threads: usize, seed: u64) -> Result<(Vec<f32>, f64)> {
    let model = Model::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let schedule = model.schedule()?;
    let mut s = Session::new(&model, &SessionOptions { threads, ..SessionOptions::batch(n) })?;
    let cfg = SamplerConfig {
        kind: SamplerKind::Ddim,
        steps,
        skip: Skip::Quad,
        eta: 0.0,
        clip_x0: None,
        seed,
        first_image: 0,
    };
    let mut sampler = Sampler::new(&schedule, cfg, n, s.sample_len())?;
    let mut x = vec![0f32; s.sample_len()];
    noise::initial_noise(seed, 0, &mut x, n);
    let t0 = Instant::now();
    sampler.run(&mut s, &mut x, &mut |_, _| {})?;
    Ok((x, t0.elapsed().as_secs_f64() * 1e3 / sampler.num_steps() as f64))
}

/// `edadm bench --json` in a child process (a clean peak RSS per model).
fn bench(path: &Path, threads: usize) -> Result<serde_json::Value> {
    let exe = std::env::current_exe().context("cannot find the edadm binary")?;
    let out = Command::new(exe)
        .args(["bench", &path.display().to_string(), "--batch", "1", "--runs", "5", "--steps", "0"])
        .args(["--threads", &threads.to_string(), "--json"])
        .output()
        .context("cannot run edadm bench")?;
    if !out.status.success() {
        bail!("edadm bench {} failed: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

pub fn run(a: DemoArgs) -> Result<()> {
    if a.num == 0 || a.steps == 0 || a.threads == 0 {
        bail!("-n, --steps and --threads must be at least 1");
    }
    let model = match &a.model {
        Some(p) => p.clone(),
        None => builtin().context(
            "cannot find the built-in model models/fmnist-builtin.edq (next to the checkout, in the current folder or above the binary); pass --model FP.edq",
        )?,
    };
    let fm = Model::open(&model).with_context(|| format!("cannot open {}", model.display()))?;
    if fm.is_quantized() {
        bail!("{}: the demo starts from an FP model; this file is already quantized", model.display());
    }
    let started = Instant::now();
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let q = a.out.join("model-w8a8.edq");
    eprintln!(
        "[1/4] EDA-DM W8A8 of {}: TDAC over {} DDIM-{} trajectories, FBR {} iterations per unit",
        model.display(),
        a.n_calib,
        a.calib_steps,
        a.iters
    );
    let t_q = Instant::now();
    // The library pipeline, as `edadm quantize --calib tdac --recon fbr` would run it.
    let calib_opts = crate::calibrate::CalibOpts {
        calib: "tdac".into(),
        n_calib: a.n_calib,
        lambda: 1.2,
        eps: "median".into(),
        sampler: crate::sampler_args::SamplerArgs::ddim(a.calib_steps, Skip::Quad),
        sample_batch: 32,
        seed: 1234,
    };
    let (set, _) = crate::calibrate::build(&fm, &model, &calib_opts)?;
    let opts = pipeline::Options {
        wbits: 8,
        recon: Some(Recon::Fbr),
        iters: a.iters,
        batch: 16,
        seed: calib_opts.seed,
        ..pipeline::Options::default()
    };
    let ckpt = a.out.join("model-w8a8.edq.ckpt");
    let _ = std::fs::remove_file(&ckpt);
    let resume = pipeline::Resume { checkpoint: &ckpt, resume: false };
    let out = pipeline::quantize(&fm, &set, &opts, Some(resume), &mut |e| {
        if let edadm_quantizer::quant::Event::Stage(s) = e {
            eprintln!("      {s}");
        }
    })
    .with_context(|| format!("cannot quantize {}", model.display()))?;
    out.write(&q)?;
    let quant_s = t_q.elapsed().as_secs_f64();

    eprintln!("[2/4] sampling {} images, DDIM {} steps, with the f32 engine and the integer runtime", a.num, a.steps);
    let (fp, fp_ms) = sample(&model, a.num, a.steps, a.threads, a.seed)?;
    let (int, int_ms) = sample(&q, a.num, a.steps, a.threads, a.seed)?;
    let [c, h, w] = fm.sample_shape();
    let range = crate::sample::data_range(&fm, None);
    // PSNR of the integer runtime's images against the f32 ones, pixels in [0, 1].
    let to01 = |v: f32| ((v - range[0]) / (range[1] - range[0])).clamp(0.0, 1.0);
    let mse = fp.iter().zip(&int).map(|(a, b)| f64::from(to01(*a) - to01(*b)).powi(2)).sum::<f64>() / fp.len() as f64;
    let psnr = if mse > 0.0 { 10.0 * (1.0 / mse).log10() } else { f64::INFINITY };

    eprintln!("[3/4] grids");
    let per = c * h * w;
    let cols = (a.num as f64).sqrt().ceil() as usize;
    let rows = a.num.div_ceil(cols);
    // Side by side: each row holds `cols` f32 images, then `cols` integer ones.
    let mut both = vec![range[0]; 2 * rows * cols * per];
    for i in 0..a.num {
        let (r, k) = (i / cols, i % cols);
        both[(r * 2 * cols + k) * per..][..per].copy_from_slice(&fp[i * per..(i + 1) * per]);
        both[(r * 2 * cols + cols + k) * per..][..per].copy_from_slice(&int[i * per..(i + 1) * per]);
    }
    png_grid_cols(&a.out.join("fp32.png"), &fp, a.num, c, h, w, range, 2, cols)?;
    png_grid_cols(&a.out.join("w8a8.png"), &int, a.num, c, h, w, range, 2, cols)?;
    png_grid_cols(&a.out.join("side-by-side.png"), &both, 2 * rows * cols, c, h, w, range, 2, 2 * cols)?;

    eprintln!("[4/4] speed and memory (edadm bench, batch 1, {} threads)", a.threads);
    let (bf, bq) = (bench(&model, a.threads)?, bench(&q, a.threads)?);
    let f = |v: &serde_json::Value, k: &[&str]| k.iter().fold(v, |v, k| &v[*k]).as_f64().unwrap_or(f64::NAN);
    let mib = |b: f64| b / (1024.0 * 1024.0);
    let (fsize, qsize) = (std::fs::metadata(&model)?.len() as f64, std::fs::metadata(&q)?.len() as f64);
    let fp_weights = if fm.file().tensors().any(|t| t.dtype == edadm_format::DType::F16) { "f16" } else { "f32" };
    let report = serde_json::json!({
        "model": model.display().to_string(),
        "quantization": {"method": "EDA-DM (TDAC + FBR)", "bits": "W8A8", "n_calib": a.n_calib,
                         "calib_steps": a.calib_steps, "fbr_iters": a.iters, "seconds": quant_s},
        "sampling": {"images": a.num, "sampler": "ddim", "steps": a.steps, "seed": a.seed, "threads": a.threads,
                     "ms_per_step_f32": fp_ms, "ms_per_step_w8a8": int_ms},
        "psnr_w8a8_vs_f32_db": psnr,
        "eval_batch1_ms": {"f32": f(&bf, &["eval_ms", "median"]), "w8a8": f(&bq, &["eval_ms", "median"])},
        "peak_rss_bytes": {"f32": f(&bf, &["memory", "peak_rss_bytes"]), "w8a8": f(&bq, &["memory", "peak_rss_bytes"])},
        "file_bytes": {"f32": fsize, "w8a8": qsize},
        "fp_file_weights": fp_weights,
        "seconds_total": started.elapsed().as_secs_f64(),
    });
    let summary = format!(
        "edadm demo: {}\n\
         quantized W8A8 with EDA-DM (TDAC over {} DDIM-{} trajectories, FBR {} it/unit) in {:.0} s\n\
         {} images, DDIM {} steps, same noise: f32 {:.1} ms/step, W8A8 {:.1} ms/step ({:.2}x), {} threads\n\
         one evaluation at batch 1: f32 {:.2} ms, W8A8 {:.2} ms; peak RSS f32 {:.1} MiB, W8A8 {:.1} MiB\n\
         files: FP {:.2} MiB ({} weights), W8A8 {:.2} MiB; PSNR W8A8 vs f32 {:.1} dB\n\
         wrote {}: fp32.png, w8a8.png, side-by-side.png (left f32, right W8A8), model-w8a8.edq, report.json, report.md\n",
        model.display(),
        a.n_calib,
        a.calib_steps,
        a.iters,
        quant_s,
        a.num,
        a.steps,
        fp_ms,
        int_ms,
        fp_ms / int_ms,
        a.threads,
        f(&bf, &["eval_ms", "median"]),
        f(&bq, &["eval_ms", "median"]),
        mib(f(&bf, &["memory", "peak_rss_bytes"])),
        mib(f(&bq, &["memory", "peak_rss_bytes"])),
        mib(fsize),
        fp_weights,
        mib(qsize),
        psnr,
        a.out.display()
    );
    atomic_write(&a.out.join("report.json"), |w| {
        use std::io::Write;
        w.write_all(serde_json::to_string_pretty(&report)?.as_bytes())?;
        Ok(())
    })?;
    atomic_write(&a.out.join("report.md"), |w| {
        use std::io::Write;
        writeln!(w, "# edadm demo\n\n```\n{summary}```\n\n![f32 | W8A8](side-by-side.png)")?;
        Ok(())
    })?;
    print!("{summary}");
    Ok(())
}
