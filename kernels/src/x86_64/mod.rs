//! x86-64 variants: AVX2+FMA, AVX-VNNI, AVX-512F and AVX-512 VNNI. Reachable only through the
//! dispatch table, which is built after the CPU features are detected.

mod qgemm_avx2;
mod qgemm_avx2_w7;
mod qgemm_avx512vnni;
mod qgemm_avxvnni;
mod sgemm_avx2;
mod sgemm_avx512;

pub(crate) use qgemm_avx2::QGEMM_AVX2;
pub(crate) use qgemm_avx2_w7::QGEMM_AVX2_W7;
pub(crate) use qgemm_avx512vnni::QGEMM_AVX512VNNI;
pub(crate) use qgemm_avxvnni::QGEMM_AVXVNNI;
pub(crate) use sgemm_avx2::SGEMM_AVX2;
pub(crate) use sgemm_avx512::SGEMM_AVX512;
