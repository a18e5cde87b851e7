//! Safe scalar code, always compiled: the specification of every kernel.

mod qgemm;
mod sgemm;

// The scalar epilogue: the i8mm kernel (aarch64) and the tests use it.
pub use qgemm::QGEMM_REF;
#[cfg_attr(not(any(test, target_arch = "aarch64")), allow(unused_imports))]
pub(crate) use qgemm::epilogue as qgemm_epilogue;
pub use sgemm::SGEMM_REF;
