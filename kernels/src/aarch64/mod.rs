//! aarch64 variants: Advanced SIMD (NEON). Reachable only through the dispatch table.

mod sgemm_neon;

pub(crate) use sgemm_neon::SGEMM_NEON;
