//! The interpreter's ops, one file per op family (the format's `OpFamily`): each computes its
//! ops on candle tensors with the runtime's semantics (`docs/FORMAT.md` §5.4), and where the
//! runtime has a kernel for it, by that kernel (`by_kernels`), so that the fake-quant forward
//! shares its rounding.

pub(super) mod attention;
pub(super) mod embed;
pub(super) mod norm;
pub(super) mod pointwise;
pub(super) mod shape;
pub(super) mod weighted;

use candle_core::Tensor;

use super::to_vec;
use crate::error::Result;

/// `f` run on `x`'s values into an output of `x`'s shape (an op computed by the runtime's kernel).
fn kernel_output(x: &Tensor, f: impl FnOnce(&[f32], &mut [f32])) -> Result<Tensor> {
    let xs = to_vec(x)?;
    let mut y = vec![0f32; xs.len()];
    f(&xs, &mut y);
    Ok(Tensor::from_vec(y, x.shape(), x.device())?)
}
