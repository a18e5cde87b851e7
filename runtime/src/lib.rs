#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

// Module map (no cycles; docs/ARCHITECTURE.md):
//   error ← arena (Slot, step buffers) ← plan (steps, shapes, fusion, layout) → model (mmap +
//   validated graph) → sampler::schedule; session (executes steps; impl Denoiser) → plan,
//   arena, model, sampler::Denoiser; sampler (loops over dyn Denoiser) → error; bench → session,
//   sampler. Inside plan: ops/<family>.rs lowers each op family (the format's OpFamily) to
//   steps, fuse.rs rewrites step pairs, layout.rs places values and scratch in the arena,
//   report.rs names variants for reports.

mod arena;
pub mod bench;
pub mod convert;
mod error;
mod model;
mod plan;
pub mod sampler;
mod session;

pub use error::{Result, RuntimeError};
pub use model::{Model, ModelBytes};
pub use session::{Device, MemoryReport, Session, SessionOptions, StepInfo, default_memory_limit, human_bytes};

/// Makes glibc keep freed memory for reuse instead of returning every large block to the OS.
/// For the host-side tools built on candle (quantization, training), which allocate a fresh
/// buffer for every op's output: with glibc's defaults each one of more than 128 KiB is a new
/// zeroed mapping, and page faults took a third of a training step (`edadm train`, fmnist-ddpm,
/// batch 64: 7.3 → 6.1 s per step with this). A session never needs it: it allocates once.
/// Call once, early; no effect off glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters, to values within glibc's documented
    // ranges; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}
