//! The normalisations — `GroupNorm`, `LayerNorm`: attributes, attribute records
//! (`docs/FORMAT.md` §5.3) and validation rules.

use super::super::codec::{code, opt_tensor};
use super::super::validate::{Ctx, FLOAT, MAX_CHANNELS, bad, finite_nonneg, no_quant, positive};
use super::super::{Node, Op, TensorId};
use crate::codec::{Cursor, Encoder};
use crate::error::{FormatError, GraphProblem};

/// Attributes of [`Op::GroupNorm`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupNorm {
    /// Number of groups; divides `channels`.
    pub groups: u32,
    /// Channels.
    pub channels: u32,
    /// Added to the variance.
    pub eps: f32,
    /// Per-channel scale `[C]`.
    pub weight: Option<TensorId>,
    /// Per-channel shift `[C]`.
    pub bias: Option<TensorId>,
}

/// Which axes [`Op::LayerNorm`] normalises over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerNormAxes {
    /// Over the channel axis at each position: the last axis of `[N, L, C]` or `[N, F]`,
    /// axis 1 of `[N, C, H, W]`. Affine parameters `[C]`.
    Channel,
    /// Over C, H and W jointly of `[N, C, H, W]` (`nn.LayerNorm((C, H, W))`). Affine
    /// parameters `[C, H, W]`.
    ChannelSpatial,
}

/// Attributes of [`Op::LayerNorm`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerNorm {
    /// The normalised axes.
    pub axes: LayerNormAxes,
    /// Channels.
    pub channels: u32,
    /// Added to the variance.
    pub eps: f32,
    /// Scale (shape per `axes`).
    pub weight: Option<TensorId>,
    /// Shift (shape per `axes`).
    pub bias: Option<TensorId>,
}

pub(super) fn encode(e: &mut Encoder, op: &Op) {
    let ot = |t: Option<TensorId>| t.map(|t| t.0);
    match op {
        Op::GroupNorm(g) => {
            e.u32(g.groups);
            e.u32(g.channels);
            e.f32(g.eps);
            e.opt_u32(ot(g.weight));
            e.opt_u32(ot(g.bias));
        }
        Op::LayerNorm(l) => {
            e.u32(match l.axes {
                LayerNormAxes::Channel => 0,
                LayerNormAxes::ChannelSpatial => 1,
            });
            e.u32(l.channels);
            e.f32(l.eps);
            e.opt_u32(ot(l.weight));
            e.opt_u32(ot(l.bias));
        }
        _ => {}
    }
}

pub(super) fn decode(c: &mut Cursor<'_>, op_code: u16) -> Option<Result<Op, FormatError>> {
    let op = || -> Result<Op, FormatError> {
        Ok(match op_code {
            3 => Op::GroupNorm(GroupNorm {
                groups: c.u32()?,
                channels: c.u32()?,
                eps: c.f32()?,
                weight: opt_tensor(c)?,
                bias: opt_tensor(c)?,
            }),
            _ => Op::LayerNorm(LayerNorm {
                axes: match code(c, "layer-norm axes", 1)? {
                    0 => LayerNormAxes::Channel,
                    _ => LayerNormAxes::ChannelSpatial,
                },
                channels: c.u32()?,
                eps: c.f32()?,
                weight: opt_tensor(c)?,
                bias: opt_tensor(c)?,
            }),
        })
    };
    (3..=4).contains(&op_code).then(op)
}

pub(super) fn check(cx: &Ctx<'_>, n: &Node) -> Result<(), GraphProblem> {
    let name = n.op.name();
    match &n.op {
        Op::GroupNorm(gn) => {
            positive(name, "channels", gn.channels, MAX_CHANNELS)?;
            positive(name, "groups", gn.groups, MAX_CHANNELS)?;
            if !gn.channels.is_multiple_of(gn.groups) {
                return Err(bad(name, "groups", gn.groups, "must divide the channel count"));
            }
            finite_nonneg(name, "eps", gn.eps)?;
            let shape = [u64::from(gn.channels)];
            for (role, t) in [("weight", gn.weight), ("bias", gn.bias)] {
                if let Some(t) = t {
                    cx.tensor(role, t, FLOAT, "f32 or f16", Some(&shape))?;
                }
            }
            no_quant(n)
        }
        Op::LayerNorm(ln) => {
            positive(name, "channels", ln.channels, MAX_CHANNELS)?;
            finite_nonneg(name, "eps", ln.eps)?;
            let mut first: Option<Vec<u64>> = None;
            for (role, t) in [("weight", ln.weight), ("bias", ln.bias)] {
                let Some(t) = t else { continue };
                let m = match ln.axes {
                    LayerNormAxes::Channel => {
                        cx.tensor(role, t, FLOAT, "f32 or f16", Some(&[u64::from(ln.channels)]))?
                    }
                    LayerNormAxes::ChannelSpatial => {
                        let m = cx.tensor(role, t, FLOAT, "f32 or f16", None)?;
                        if m.shape.len() != 3 || m.shape[0] != u64::from(ln.channels) || m.shape.contains(&0) {
                            return Err(GraphProblem::TensorShape {
                                role,
                                tensor: t.0,
                                found: m.shape.to_vec(),
                                expected: vec![u64::from(ln.channels), 0, 0],
                            });
                        }
                        m
                    }
                };
                match &first {
                    Some(s) if s.as_slice() != m.shape => {
                        return Err(GraphProblem::TensorShape {
                            role,
                            tensor: t.0,
                            found: m.shape.to_vec(),
                            expected: s.clone(),
                        });
                    }
                    _ => first = Some(m.shape.to_vec()),
                }
            }
            no_quant(n)
        }
        _ => Ok(()),
    }
}
