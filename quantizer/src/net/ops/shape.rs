//! Data movement (`Concat`, `Pad`, `UpsampleNearest`, `AvgPool2d`) on candle tensors.

use candle_core::Tensor;
use edadm_format::graph::{Op, Pad};

use super::super::{Env, Net};
use crate::error::Result;

/// The node's output.
pub(in crate::net) fn forward(net: &Net, ni: usize, x: Tensor, env: &Env) -> Result<Tensor> {
    let node = &net.graph.nodes[ni];
    Ok(match &node.op {
        Op::Concat { axis } => {
            let parts: Vec<Tensor> = node.inputs.iter().map(|&v| net.get(env, v, ni)).collect::<Result<_>>()?;
            Tensor::cat(&parts, *axis as usize)?
        }
        Op::Pad(pad) => {
            let (_, _, h, w) = x.dims4()?;
            let (pd, value) = match pad {
                Pad::Fixed { padding, value } => {
                    ([padding.top, padding.bottom, padding.left, padding.right].map(|v| v as usize), *value)
                }
                Pad::MatchSpatial => {
                    let (_, _, rh, rw) = net.get(env, node.inputs[1], ni)?.dims4()?;
                    let (dh, dw) = (rh.saturating_sub(h), rw.saturating_sub(w));
                    ([dh / 2, dh - dh / 2, dw / 2, dw - dw / 2], 0.0)
                }
            };
            let shifted = if value == 0.0 { x } else { (x - f64::from(value))? };
            let y = shifted.pad_with_zeros(2, pd[0], pd[1])?.pad_with_zeros(3, pd[2], pd[3])?;
            if value == 0.0 { y } else { (y + f64::from(value))? }
        }
        Op::UpsampleNearest { scale } => {
            let (_, _, h, w) = x.dims4()?;
            let s = *scale as usize;
            x.upsample_nearest2d(h * s, w * s)?
        }
        Op::AvgPool2d(a) => x.avg_pool2d_with_stride(
            (a.kernel[0] as usize, a.kernel[1] as usize),
            (a.stride[0] as usize, a.stride[1] as usize),
        )?,
        _ => unreachable!("{} is not a shape op", node.op.name()),
    })
}
