//! `edadm bench`: latency per evaluation, per sampling step and per image, peak memory split by
//! owner, the kernel variant of every op, and with `--profile` time and G MAC/s per node. The
//! measurement itself is `edadm_runtime::bench`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use edadm_runtime::bench::{BenchOptions, measure};
use edadm_runtime::{Model, Session, SessionOptions};
use serde_json::json;

use crate::inspect::bytes;

/// Arguments of `edadm bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The .edq model (f32 or quantized).
    model: PathBuf,
    /// Images per network evaluation.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Steps of a timed DDIM sampling run (0 skips it).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Timed evaluations (median, min and max are reported).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Threads per evaluation (the caller and N − 1 workers).
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
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Time every step of the plan: ms and G MAC/s per node (mean over --runs evaluations).
    #[arg(long)]
    profile: bool,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn rate(macs: u64, ms: f64) -> f64 {
    if ms > 0.0 { macs as f64 / (ms * 1e-3) / 1e9 } else { 0.0 }
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.batch == 0 || a.runs == 0 || a.threads == 0 {
        bail!("--batch, --runs and --threads must be at least 1");
    }
    let model = Model::open(&a.model).with_context(|| format!("cannot open {}", a.model.display()))?;
    let opts = SessionOptions {
        threads: a.threads,
        device: crate::device(&a.device)?,
        max_memory: a.max_memory,
        ..SessionOptions::batch(a.batch)
    };
    let mut session = Session::new(&model, &opts).with_context(|| format!("cannot run {}", a.model.display()))?;
    let bo = BenchOptions { runs: a.runs, steps: a.steps, profile: a.profile };
    let r = measure(&mut session, Some(&a.model), &bo).with_context(|| format!("cannot run {}", a.model.display()))?;
    let per_image = r.eval.median / a.batch as f64;
    let gmacs = rate(r.macs, r.eval.median);
    let mut variants: Vec<(&str, &str)> = r.steps.iter().map(|s| (s.op, s.variant.as_str())).collect();
    variants.sort_unstable();
    variants.dedup();
    let m = r.memory;

    if a.json {
        let mut v = json!({
            "model": a.model.display().to_string(),
            "quantized": model.is_quantized(),
            "batch": a.batch,
            "threads": session.threads(),
            "kernels": session.kernels().describe(),
            "eval_ms": {"median": r.eval.median, "min": r.eval.min, "max": r.eval.max, "runs": a.runs},
            "ms_per_image_eval": per_image,
            "gmac_per_eval": r.macs as f64 / 1e9,
            "gmacs_per_s": gmacs,
            "sampling": r.step_ms.map(|s| json!({"sampler": "ddim", "steps": a.steps, "ms_per_step": s,
                                                 "ms_per_image_step": s / a.batch as f64})),
            "memory": {
                "file_bytes": m.file,
                "peak_rss_bytes": m.peak_rss,
                "mapped_weights_resident_bytes": m.mapped_resident,
                "arena_bytes": m.arena,
                "prepared_weights_bytes": m.prepared,
                "rest_bytes": m.rest(),
            },
            "variants": variants.iter().map(|(op, v)| json!({"op": op, "variant": v})).collect::<Vec<_>>(),
        });
        if let Some(p) = &r.profile {
            v["profile"] = r
                .steps
                .iter()
                .zip(p)
                .map(|(s, ms)| {
                    json!({"node": s.node, "op": s.op, "variant": s.variant, "ms": ms, "macs": s.macs,
                           "gmacs_per_s": rate(s.macs, *ms)})
                })
                .collect();
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }

    let threads = session.threads();
    println!(
        "{}: {} model, batch {}, {threads} thread{}, {}",
        a.model.display(),
        if model.is_quantized() { "quantized" } else { "f32" },
        a.batch,
        if threads == 1 { "" } else { "s" },
        session.kernels().describe()
    );
    println!(
        "evaluation: median {:.2} ms (min {:.2}, max {:.2}, {} runs), {per_image:.2} ms per image, {:.3} G MAC, {gmacs:.1} G MAC/s",
        r.eval.median,
        r.eval.min,
        r.eval.max,
        a.runs,
        r.macs as f64 / 1e9
    );
    if let Some(s) = r.step_ms {
        println!("sampling: DDIM {} steps, {s:.2} ms per step, {:.2} ms per image-step", a.steps, s / a.batch as f64);
    }
    println!(
        "memory: peak RSS {:.1} MiB = mapped weights {:.1} MiB + arena {:.1} MiB + prepared weights {:.1} MiB + rest {:.1} MiB; file {}",
        mib(m.peak_rss),
        mib(m.mapped_resident),
        mib(m.arena),
        mib(m.prepared),
        mib(m.rest()),
        bytes(m.file)
    );
    println!("kernels per op:");
    for (op, v) in &variants {
        println!("  {op:<22} {v}");
    }
    if let Some(p) = &r.profile {
        println!("profile (mean of {} evaluations):", a.runs);
        println!("  {:<40} {:<22} {:>9} {:>8} {:>9}", "node", "op", "ms", "%", "G MAC/s");
        let total: f64 = p.iter().sum();
        for (s, ms) in r.steps.iter().zip(p) {
            let g = if s.macs > 0 { format!("{:.1}", rate(s.macs, *ms)) } else { String::new() };
            println!("  {:<40} {:<22} {ms:>9.3} {:>7.1}% {g:>9}", s.node, s.op, 100.0 * ms / total);
        }
        let mut kinds: Vec<(&str, f64, u64)> = Vec::new();
        for (s, ms) in r.steps.iter().zip(p) {
            match kinds.iter_mut().find(|k| k.0 == s.op) {
                Some(k) => {
                    k.1 += ms;
                    k.2 += s.macs;
                }
                None => kinds.push((s.op, *ms, s.macs)),
            }
        }
        kinds.sort_by(|a, b| b.1.total_cmp(&a.1));
        println!("  by op:");
        for (op, ms, macs) in kinds {
            let g = if macs > 0 { format!("{:.1} G MAC/s", rate(macs, ms)) } else { String::new() };
            println!("    {op:<22} {ms:>9.3} ms {:>6.1}%  {g}", 100.0 * ms / total);
        }
    }
    Ok(())
}
