//! Safe scalar code, always compiled: the specification of every kernel.

mod sgemm;

pub use sgemm::SGEMM_REF;
