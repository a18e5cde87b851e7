//! The element-wise ops (activations, `Add`, `Mul`) on candle tensors, and the activations by the
//! runtime's kernels.

use candle_core::Tensor;
use edadm_format::graph::{GeluApprox, Op};

use super::super::{Env, Net};
use super::kernel_output;
use crate::error::Result;

/// The node's output.
pub(in crate::net) fn forward(net: &Net, ni: usize, x: Tensor, env: &Env) -> Result<Tensor> {
    let node = &net.graph.nodes[ni];
    Ok(match &node.op {
        Op::Silu => x.silu()?,
        Op::Relu => x.relu()?,
        Op::Sigmoid => (x.neg()?.exp()? + 1.0)?.recip()?,
        Op::Gelu(GeluApprox::Erf) => x.gelu_erf()?,
        Op::Gelu(GeluApprox::Tanh) => x.gelu()?,
        Op::Add | Op::Mul => {
            let b = net.get(env, node.inputs[1], ni)?;
            let b = if b.dims() == x.dims() {
                b
            } else {
                let mut shape = b.dims().to_vec();
                shape.resize(x.rank(), 1);
                b.reshape(shape)?
            };
            if matches!(node.op, Op::Add) { x.broadcast_add(&b)? } else { x.broadcast_mul(&b)? }
        }
        _ => unreachable!("{} is not element-wise", node.op.name()),
    })
}

/// An activation computed by the runtime's kernel, so that the fake-quant forward shares its
/// rounding; `None` for the binary ops.
pub(in crate::net) fn by_kernels(
    net: &Net,
    ni: usize,
    x: &Tensor,
    k: &edadm_kernels::Kernels,
) -> Result<Option<Tensor>> {
    let Some(a) = edadm_runtime::convert::activation(&net.graph.nodes[ni].op) else { return Ok(None) };
    Ok(Some(kernel_output(x, |xs, y| edadm_kernels::ops::act::apply_to(k, a, xs, y))?))
}
