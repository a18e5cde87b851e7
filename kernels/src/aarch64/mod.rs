//! aarch64 variants: Advanced SIMD (NEON), the dot-product extension and the int8 matrix
//! multiply extension. Reachable only through the dispatch table.

mod qgemm_dotprod;
mod qgemm_i8mm;
mod qgemm_neon;
mod sgemm_neon;

pub(crate) use qgemm_dotprod::QGEMM_DOTPROD;
pub(crate) use qgemm_i8mm::QGEMM_I8MM;
pub(crate) use qgemm_neon::QGEMM_NEON;
pub(crate) use sgemm_neon::SGEMM_NEON;
