//! The weighted ops — `Conv2d`, `ConvTranspose2d`, `Linear`: attributes, attribute records
//! (`docs/FORMAT.md` §5.3) and validation rules, including their weight quantization records.

use super::super::codec::{opt_tensor, pair, tensor};
use super::super::validate::{
    Ctx, MAX_CHANNELS, bad, bias, bounded, pair_positive, positive, weight_dtypes, weight_quant,
};
use super::super::{Node, Op, Padding, TensorId};
use crate::codec::{Cursor, Encoder};
use crate::error::{FormatError, GraphProblem};

/// Attributes of [`Op::Conv2d`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2d {
    /// Input channels.
    pub in_channels: u32,
    /// Output channels.
    pub out_channels: u32,
    /// Kernel `[height, width]`.
    pub kernel: [u32; 2],
    /// Stride `[height, width]`.
    pub stride: [u32; 2],
    /// Padding of the input.
    pub padding: Padding,
    /// Dilation `[height, width]`.
    pub dilation: [u32; 2],
    /// Groups; divides both channel counts.
    pub groups: u32,
    /// Weight `[out, in/groups, kh, kw]`.
    pub weight: TensorId,
    /// Bias `[out]`.
    pub bias: Option<TensorId>,
}

/// Attributes of [`Op::ConvTranspose2d`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvTranspose2d {
    /// Input channels.
    pub in_channels: u32,
    /// Output channels.
    pub out_channels: u32,
    /// Kernel `[height, width]`.
    pub kernel: [u32; 2],
    /// Stride `[height, width]`.
    pub stride: [u32; 2],
    /// Implicit padding removed from both sides of the output, `[height, width]`.
    pub padding: [u32; 2],
    /// Extra rows/columns added to the bottom/right of the output, `[height, width]`.
    pub output_padding: [u32; 2],
    /// Weight `[in, out, kh, kw]` (PyTorch layout).
    pub weight: TensorId,
    /// Bias `[out]`.
    pub bias: Option<TensorId>,
}

/// Attributes of [`Op::Linear`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Linear {
    /// Input features.
    pub in_features: u32,
    /// Output features.
    pub out_features: u32,
    /// Weight `[out, in]`.
    pub weight: TensorId,
    /// Bias `[out]`.
    pub bias: Option<TensorId>,
}

pub(super) fn encode(e: &mut Encoder, op: &Op) {
    let t = |t: TensorId| t.0;
    let ot = |t: Option<TensorId>| t.map(|t| t.0);
    match op {
        Op::Conv2d(c) => {
            for v in [c.in_channels, c.out_channels, c.kernel[0], c.kernel[1], c.stride[0], c.stride[1]] {
                e.u32(v);
            }
            for v in [c.padding.top, c.padding.bottom, c.padding.left, c.padding.right] {
                e.u32(v);
            }
            for v in [c.dilation[0], c.dilation[1], c.groups, t(c.weight)] {
                e.u32(v);
            }
            e.opt_u32(ot(c.bias));
        }
        Op::ConvTranspose2d(c) => {
            for v in [c.in_channels, c.out_channels, c.kernel[0], c.kernel[1], c.stride[0], c.stride[1]] {
                e.u32(v);
            }
            for v in [c.padding[0], c.padding[1], c.output_padding[0], c.output_padding[1], t(c.weight)] {
                e.u32(v);
            }
            e.opt_u32(ot(c.bias));
        }
        Op::Linear(l) => {
            e.u32(l.in_features);
            e.u32(l.out_features);
            e.u32(t(l.weight));
            e.opt_u32(ot(l.bias));
        }
        _ => {}
    }
}

pub(super) fn decode(c: &mut Cursor<'_>, code: u16) -> Option<Result<Op, FormatError>> {
    let op = || -> Result<Op, FormatError> {
        Ok(match code {
            0 => Op::Conv2d(Conv2d {
                in_channels: c.u32()?,
                out_channels: c.u32()?,
                kernel: pair(c)?,
                stride: pair(c)?,
                padding: Padding { top: c.u32()?, bottom: c.u32()?, left: c.u32()?, right: c.u32()? },
                dilation: pair(c)?,
                groups: c.u32()?,
                weight: tensor(c)?,
                bias: opt_tensor(c)?,
            }),
            1 => Op::ConvTranspose2d(ConvTranspose2d {
                in_channels: c.u32()?,
                out_channels: c.u32()?,
                kernel: pair(c)?,
                stride: pair(c)?,
                padding: pair(c)?,
                output_padding: pair(c)?,
                weight: tensor(c)?,
                bias: opt_tensor(c)?,
            }),
            _ => Op::Linear(Linear {
                in_features: c.u32()?,
                out_features: c.u32()?,
                weight: tensor(c)?,
                bias: opt_tensor(c)?,
            }),
        })
    };
    (code <= 2).then(op)
}

pub(super) fn check(cx: &Ctx<'_>, n: &Node) -> Result<(), GraphProblem> {
    let name = n.op.name();
    match &n.op {
        Op::Conv2d(c) => {
            positive(name, "in_channels", c.in_channels, MAX_CHANNELS)?;
            positive(name, "out_channels", c.out_channels, MAX_CHANNELS)?;
            pair_positive(name, "kernel", c.kernel)?;
            pair_positive(name, "stride", c.stride)?;
            pair_positive(name, "dilation", c.dilation)?;
            for p in [c.padding.top, c.padding.bottom, c.padding.left, c.padding.right] {
                bounded(name, "padding", p)?;
            }
            positive(name, "groups", c.groups, MAX_CHANNELS)?;
            if !c.in_channels.is_multiple_of(c.groups) || !c.out_channels.is_multiple_of(c.groups) {
                return Err(bad(name, "groups", c.groups, "must divide both channel counts"));
            }
            let (dt, names) = weight_dtypes(n)?;
            let shape = [c.out_channels, c.in_channels / c.groups, c.kernel[0], c.kernel[1]].map(u64::from);
            cx.tensor("weight", c.weight, dt, names, Some(&shape))?;
            bias(cx, c.bias, c.out_channels)?;
            weight_quant(cx, n, c.in_channels, c.out_channels, c.groups)
        }
        Op::ConvTranspose2d(c) => {
            positive(name, "in_channels", c.in_channels, MAX_CHANNELS)?;
            positive(name, "out_channels", c.out_channels, MAX_CHANNELS)?;
            pair_positive(name, "kernel", c.kernel)?;
            pair_positive(name, "stride", c.stride)?;
            for (p, op) in c.padding.into_iter().zip(c.output_padding) {
                bounded(name, "padding", p)?;
                bounded(name, "output_padding", op)?;
            }
            for d in 0..2 {
                if c.output_padding[d] >= c.stride[d] {
                    return Err(bad(name, "output_padding", c.output_padding[d], "must be smaller than the stride"));
                }
            }
            let (dt, names) = weight_dtypes(n)?;
            let shape = [c.in_channels, c.out_channels, c.kernel[0], c.kernel[1]].map(u64::from);
            cx.tensor("weight", c.weight, dt, names, Some(&shape))?;
            bias(cx, c.bias, c.out_channels)?;
            weight_quant(cx, n, c.in_channels, c.out_channels, 1)
        }
        Op::Linear(l) => {
            positive(name, "in_features", l.in_features, MAX_CHANNELS)?;
            positive(name, "out_features", l.out_features, MAX_CHANNELS)?;
            let (dt, names) = weight_dtypes(n)?;
            let shape = [u64::from(l.out_features), u64::from(l.in_features)];
            cx.tensor("weight", l.weight, dt, names, Some(&shape))?;
            bias(cx, l.bias, l.out_features)?;
            weight_quant(cx, n, l.in_features, l.out_features, 1)
        }
        _ => Ok(()),
    }
}
