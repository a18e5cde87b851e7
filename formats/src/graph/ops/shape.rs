//! The ops that move data without arithmetic on it (or only averaging) — `Concat`, `Pad`,
//! `UpsampleNearest`, `AvgPool2d`: attributes, attribute records (`docs/FORMAT.md` §5.3) and
//! validation rules.

use super::super::codec::{code, pair};
use super::super::validate::{bad, bounded, no_quant, pair_positive, positive};
use super::super::{Node, Op, Padding};
use crate::codec::{Cursor, Encoder};
use crate::error::{FormatError, GraphProblem};

/// Attributes of [`Op::Pad`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pad {
    /// Fixed amounts. One input.
    Fixed {
        /// The padding.
        padding: Padding,
        /// The fill value.
        value: f32,
    },
    /// Zero-pad the first input to the spatial size of the second (which must not be
    /// smaller): `top = ⌊ΔH/2⌋`, `bottom = ΔH − top`, likewise for width. Two inputs.
    MatchSpatial,
}

/// Attributes of [`Op::AvgPool2d`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AvgPool2d {
    /// Window `[height, width]`.
    pub kernel: [u32; 2],
    /// Stride `[height, width]`.
    pub stride: [u32; 2],
}

pub(super) fn encode(e: &mut Encoder, op: &Op) {
    match op {
        Op::Concat { axis } => e.u32(*axis),
        Op::Pad(Pad::Fixed { padding, value }) => {
            e.u32(0);
            for v in [padding.top, padding.bottom, padding.left, padding.right] {
                e.u32(v);
            }
            e.f32(*value);
        }
        Op::Pad(Pad::MatchSpatial) => e.u32(1),
        Op::UpsampleNearest { scale } => e.u32(*scale),
        Op::AvgPool2d(p) => {
            for v in [p.kernel[0], p.kernel[1], p.stride[0], p.stride[1]] {
                e.u32(v);
            }
        }
        _ => {}
    }
}

pub(super) fn decode(c: &mut Cursor<'_>, op_code: u16) -> Option<Result<Op, FormatError>> {
    let op = || -> Result<Op, FormatError> {
        Ok(match op_code {
            11 => Op::Concat { axis: c.u32()? },
            12 => Op::Pad(match code(c, "pad mode", 1)? {
                0 => Pad::Fixed {
                    padding: Padding { top: c.u32()?, bottom: c.u32()?, left: c.u32()?, right: c.u32()? },
                    value: c.f32()?,
                },
                _ => Pad::MatchSpatial,
            }),
            13 => Op::UpsampleNearest { scale: c.u32()? },
            _ => Op::AvgPool2d(AvgPool2d { kernel: pair(c)?, stride: pair(c)? }),
        })
    };
    (11..=14).contains(&op_code).then(op)
}

pub(super) fn check(n: &Node) -> Result<(), GraphProblem> {
    let name = n.op.name();
    match &n.op {
        Op::Concat { axis } if !(1..=3).contains(axis) => {
            return Err(bad(name, "axis", axis, "must be 1, 2 or 3"));
        }
        Op::Pad(Pad::Fixed { padding, value }) => {
            for v in [padding.top, padding.bottom, padding.left, padding.right] {
                bounded(name, "padding", v)?;
            }
            if !value.is_finite() {
                return Err(bad(name, "value", value, "must be finite"));
            }
        }
        Op::UpsampleNearest { scale } => positive(name, "scale", *scale, 1024)?,
        Op::AvgPool2d(p) => {
            pair_positive(name, "kernel", p.kernel)?;
            pair_positive(name, "stride", p.stride)?;
        }
        _ => {}
    }
    no_quant(n)
}

/// `Concat` takes at least two inputs, `Pad` to a reference two, the rest one.
pub(super) fn arity(op: &Op, n: usize) -> (bool, &'static str) {
    match op {
        Op::Concat { .. } => (n >= 2, "at least 2"),
        Op::Pad(Pad::MatchSpatial) => (n == 2, "2 (the input and the reference)"),
        _ => (n == 1, "1"),
    }
}
