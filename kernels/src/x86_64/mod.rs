//! x86-64 variants: AVX2+FMA and AVX-512F. Reachable only through the dispatch table, which is
//! built after the CPU features are detected.

mod sgemm_avx2;
mod sgemm_avx512;

pub(crate) use sgemm_avx2::SGEMM_AVX2;
pub(crate) use sgemm_avx512::SGEMM_AVX512;
