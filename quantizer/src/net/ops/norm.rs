//! The normalisations (`GroupNorm`, `LayerNorm`) on candle tensors, and by the runtime's kernels.

use candle_core::{D, Tensor};
use edadm_format::graph::{LayerNormAxes, Op};
use edadm_kernels::ops::{act::Activation, norm};

use super::super::{Net, NodeParams, to_vec};
use super::kernel_output;
use crate::error::Result;

/// The node's output.
pub(in crate::net) fn forward(net: &Net, ni: usize, x: Tensor) -> Result<Tensor> {
    let node = &net.graph.nodes[ni];
    let p = &net.params[ni];
    Ok(match &node.op {
        Op::GroupNorm(gn) if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 => {
            let c = x.dim(1)?;
            let ones = || Tensor::ones(c, candle_core::DType::F32, x.device());
            let zeros = || Tensor::zeros(c, candle_core::DType::F32, x.device());
            let gamma = match &p.weight {
                Some(t) => t.clone(),
                None => ones()?,
            };
            let beta = match &p.bias {
                Some(t) => t.clone(),
                None => zeros()?,
            };
            crate::norm_op::group_norm(&x, gn.groups as usize, gn.eps, &gamma, &beta)?
        }
        Op::GroupNorm(gn) => {
            let (n, c, h, w) = x.dims4()?;
            let g = gn.groups as usize;
            let xr = x.reshape((n, g, c / g * h * w))?;
            let y = normalise(&xr, 2, gn.eps)?.reshape((n, c, h, w))?;
            affine(y, p, &[1, c, 1, 1])?
        }
        Op::LayerNorm(ln) => match ln.axes {
            LayerNormAxes::ChannelSpatial => {
                let (n, c, h, w) = x.dims4()?;
                let y = normalise(&x.reshape((n, c * h * w))?, 1, ln.eps)?.reshape((n, c, h, w))?;
                affine(y, p, &[1, c, h, w])?
            }
            LayerNormAxes::Channel => match x.rank() {
                4 => {
                    let c = x.dim(1)?;
                    affine(normalise(&x, 1, ln.eps)?, p, &[1, c, 1, 1])?
                }
                _ => {
                    let c = x.dim(D::Minus1)?;
                    let mut shape = vec![1; x.rank()];
                    shape[x.rank() - 1] = c;
                    affine(normalise(&x, x.rank() - 1, ln.eps)?, p, &shape)?
                }
            },
        },
        _ => unreachable!("{} is not a normalisation", node.op.name()),
    })
}

/// Computed by the runtime's kernels, so that the fake-quant forward shares their rounding;
/// `None` where this op has no kernel form here.
pub(in crate::net) fn by_kernels(
    net: &Net,
    ni: usize,
    x: &Tensor,
    k: &edadm_kernels::Kernels,
) -> Result<Option<Tensor>> {
    let p = &net.params[ni];
    let vecs = |t: &Option<Tensor>| t.as_ref().map(to_vec).transpose();
    let (g, b) = (vecs(&p.weight)?, vecs(&p.bias)?);
    let (g, b, none) = (g.as_deref(), b.as_deref(), Activation::None);
    Ok(Some(match &net.graph.nodes[ni].op {
        Op::GroupNorm(gn) => {
            let (n, c, h, w) = x.dims4()?;
            let groups = gn.groups as usize;
            kernel_output(x, |xs, y| norm::group_norm(k, xs, n, c, h * w, groups, gn.eps, g, b, none, y))?
        }
        Op::LayerNorm(ln) if ln.axes == LayerNormAxes::ChannelSpatial => {
            let n = x.dim(0)?;
            kernel_output(x, |xs, y| norm::layer_norm_chw(k, xs, n, xs.len() / n.max(1), ln.eps, g, b, none, y))?
        }
        _ => return Ok(None),
    }))
}

/// `(x − mean) / sqrt(var + eps)` over `dim` (biased variance).
fn normalise(x: &Tensor, dim: usize, eps: f32) -> Result<Tensor> {
    let mean = x.mean_keepdim(dim)?;
    let diff = x.broadcast_sub(&mean)?;
    let var = diff.sqr()?.mean_keepdim(dim)?;
    Ok(diff.broadcast_div(&(var + f64::from(eps))?.sqrt()?)?)
}

fn affine(y: Tensor, p: &NodeParams, shape: &[usize]) -> Result<Tensor> {
    let y = match &p.weight {
        Some(g) => y.broadcast_mul(&g.reshape(shape)?)?,
        None => y,
    };
    Ok(match &p.bias {
        Some(b) => y.broadcast_add(&b.reshape(shape)?)?,
        None => y,
    })
}
