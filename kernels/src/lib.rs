#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod buffer;
mod dispatch;
pub mod gemm;
pub mod ops;
pub mod pool;
pub mod qgemm;
mod reference;
mod simd;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86_64;

pub use buffer::AlignedF32;
pub use dispatch::{DispatchError, Kernels, Tier, kernels, reference, select};
