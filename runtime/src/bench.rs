//! Measuring a session: latency per evaluation (median, min, max), per sampling step, time per
//! step of the plan, and the process's peak memory split by owner. `edadm bench` prints what
//! [`measure`] returns; keeping the measurement here lets the runtime's own tests (on every
//! target, aarch64 under qemu included) exercise it.

use std::path::Path;
use std::time::Instant;

use crate::error::Result;
use crate::sampler::{Sampler, SamplerConfig, SamplerKind, Skip, noise};
use crate::session::{Session, StepInfo};

/// What to measure.
#[derive(Clone, Copy, Debug)]
pub struct BenchOptions {
    /// Timed evaluations after one warm-up evaluation (at least 1).
    pub runs: usize,
    /// Steps of a timed DDIM (η 0) sampling run; 0 skips it.
    pub steps: usize,
    /// Also time every step of the plan over `runs` further evaluations.
    pub profile: bool,
}

/// Median, minimum and maximum of a set of timings, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    /// Median.
    pub median: f64,
    /// Fastest.
    pub min: f64,
    /// Slowest.
    pub max: f64,
}

impl Timing {
    /// Of `v` (not empty; sorted in place).
    pub fn of(v: &mut [f64]) -> Timing {
        assert!(!v.is_empty(), "no timings");
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) };
        Timing { median, min: v[0], max: v[n - 1] }
    }
}

/// Peak memory of the process and what it is made of, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUse {
    /// Peak resident set (`VmHWM`), 0 where the OS does not say.
    pub peak_rss: u64,
    /// Resident pages of the model file's mapping now.
    pub mapped_resident: u64,
    /// The session's arena.
    pub arena: u64,
    /// Weights converted or packed at plan time.
    pub prepared: u64,
    /// The file's size.
    pub file: u64,
}

impl MemoryUse {
    /// What the peak holds beyond the mapped weights, the arena and the prepared weights (the
    /// program, its stack and heap, the sampler's buffers).
    pub fn rest(&self) -> u64 {
        self.peak_rss.saturating_sub(self.mapped_resident + self.arena + self.prepared)
    }
}

/// What [`measure`] found.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// One network evaluation, ms.
    pub eval: Timing,
    /// One sampling step (the sampler's arithmetic included), ms; `None` when not measured.
    pub step_ms: Option<f64>,
    /// The plan's steps.
    pub steps: Vec<StepInfo>,
    /// Mean ms of each plan step (with [`BenchOptions::profile`]).
    pub profile: Option<Vec<f64>>,
    /// Multiply-accumulates per evaluation.
    pub macs: u64,
    /// Memory.
    pub memory: MemoryUse,
}

/// Measures `session` (the model mapped from `model_path`, for its resident pages).
pub fn measure(session: &mut Session<'_>, model_path: Option<&Path>, opts: &BenchOptions) -> Result<BenchReport> {
    let batch = session.batch();
    let len = session.sample_len();
    let mut x = vec![0f32; len];
    noise::initial_noise(0, 0, &mut x, batch);
    // A timestep in the middle of the model's schedule (1000 training steps: 500).
    let mid = session.model().schedule().map_or(0, |s| s.len() / 2);
    let t = vec![mid as f32; batch];
    // Warm-up: fault in the arena, settle the clocks.
    session.run(&x, &t)?;
    let mut evals = Vec::with_capacity(opts.runs.max(1));
    for _ in 0..opts.runs.max(1) {
        let t0 = Instant::now();
        session.run(&x, &t)?;
        evals.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let eval = Timing::of(&mut evals);

    let mut step_ms = None;
    if opts.steps > 0 {
        let schedule = session.model().schedule()?;
        let cfg = SamplerConfig {
            kind: SamplerKind::Ddim,
            steps: opts.steps,
            skip: Skip::Uniform,
            eta: 0.0,
            clip_x0: None,
            seed: 0,
            first_image: 0,
        };
        let mut sampler = Sampler::new(&schedule, cfg, batch, len)?;
        noise::initial_noise(0, 0, &mut x, batch);
        let t0 = Instant::now();
        sampler.run(session, &mut x, &mut |_, _| {})?;
        step_ms = Some(t0.elapsed().as_secs_f64() * 1e3 / sampler.num_steps() as f64);
    }

    let steps = session.steps();
    let profile = if opts.profile {
        let mut nanos = vec![0u64; session.num_steps()];
        for _ in 0..opts.runs.max(1) {
            session.run_profiled(&x, &t, &mut nanos)?;
        }
        Some(nanos.iter().map(|&ns| ns as f64 / opts.runs.max(1) as f64 / 1e6).collect())
    } else {
        None
    };
    let mem = session.memory();
    let memory = MemoryUse {
        peak_rss: status_bytes("VmHWM:").unwrap_or(0),
        mapped_resident: model_path.and_then(mapped_resident).unwrap_or(0),
        arena: mem.arena_bytes as u64,
        prepared: mem.prepared_bytes as u64,
        file: mem.file_bytes as u64,
    };
    let macs = steps.iter().map(|s| s.macs).sum();
    Ok(BenchReport { eval, step_ms, steps, profile, macs, memory })
}

/// A `kB` line of `/proc/self/status`, in bytes (Linux).
fn status_bytes(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Resident bytes of this process's mappings of `path` (`/proc/self/smaps`, Linux).
fn mapped_resident(path: &Path) -> Option<u64> {
    let canon = std::fs::canonicalize(path).ok()?;
    let want = canon.to_string_lossy();
    let s = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut total = 0u64;
    let mut inside = false;
    for line in s.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            inside = line.ends_with(want.as_ref());
        } else if inside && let Some(v) = line.strip_prefix("Rss:") {
            total += v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()? * 1024;
        }
    }
    Some(total)
}
