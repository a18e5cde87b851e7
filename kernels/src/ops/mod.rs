//! f32 operators built on the GEMM and on element-wise loops.

pub mod act;
pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod norm;
pub mod qattention;
pub mod qconv;
pub mod quant;
