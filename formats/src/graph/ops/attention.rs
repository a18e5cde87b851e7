//! Scaled dot-product attention — `Attention` (q, k, v; spatial or token layout): attributes,
//! attribute record (`docs/FORMAT.md` §5.3) and validation rules, including its quantization
//! record (q, k, v and the probabilities).

use super::super::codec::code;
use super::super::validate::{MAX_CHANNELS, act_quant, bad, finite_positive, positive};
use super::super::{Node, NodeQuant, Op};
use crate::codec::{Cursor, Encoder};
use crate::error::{FormatError, GraphProblem};

/// Where the attention logit scale is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScalePlacement {
    /// `softmax(scale · q̂ᵀk̂)`: quantize q and k unscaled, scale the product (DDPM AttnBlock,
    /// CrossAttention).
    AfterProduct,
    /// `softmax((√scale·q)^ᵀ(√scale·k))`: q and k are multiplied by `√scale` before they are
    /// quantized (LDM legacy attention, `ch^−¼` on each side).
    BeforeQuantization,
}

/// Memory layout of attention operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttentionLayout {
    /// q, k, v and the output are `[N, C, H, W]`; the `H·W` positions are the tokens.
    Spatial,
    /// q is `[N, Lq, C]`, k and v `[N, Lk, C]`, the output `[N, Lq, C]`.
    Tokens,
}

/// Attributes of [`Op::Attention`]. Head `h` uses channels `[h·C/heads, (h+1)·C/heads)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attention {
    /// Channels of q, k and v.
    pub channels: u32,
    /// Heads; divides `channels`.
    pub heads: u32,
    /// The logit scale, usually `(C/heads)^−½`.
    pub scale: f32,
    /// Where the scale applies.
    pub scale_placement: ScalePlacement,
    /// Operand layout.
    pub layout: AttentionLayout,
}

pub(super) fn encode(e: &mut Encoder, op: &Op) {
    if let Op::Attention(a) = op {
        e.u32(a.channels);
        e.u32(a.heads);
        e.f32(a.scale);
        e.u32(match a.scale_placement {
            ScalePlacement::AfterProduct => 0,
            ScalePlacement::BeforeQuantization => 1,
        });
        e.u32(match a.layout {
            AttentionLayout::Spatial => 0,
            AttentionLayout::Tokens => 1,
        });
    }
}

pub(super) fn decode(c: &mut Cursor<'_>, op_code: u16) -> Option<Result<Op, FormatError>> {
    let op = || -> Result<Op, FormatError> {
        Ok(Op::Attention(Attention {
            channels: c.u32()?,
            heads: c.u32()?,
            scale: c.f32()?,
            scale_placement: match code(c, "attention scale placement", 1)? {
                0 => ScalePlacement::AfterProduct,
                _ => ScalePlacement::BeforeQuantization,
            },
            layout: match code(c, "attention layout", 1)? {
                0 => AttentionLayout::Spatial,
                _ => AttentionLayout::Tokens,
            },
        }))
    };
    (op_code == 16).then(op)
}

pub(super) fn check(n: &Node) -> Result<(), GraphProblem> {
    let name = n.op.name();
    let Op::Attention(a) = &n.op else { return Ok(()) };
    positive(name, "channels", a.channels, MAX_CHANNELS)?;
    positive(name, "heads", a.heads, MAX_CHANNELS)?;
    if !a.channels.is_multiple_of(a.heads) {
        return Err(bad(name, "heads", a.heads, "must divide the channel count"));
    }
    finite_positive(name, "scale", a.scale)?;
    match &n.quant {
        None => Ok(()),
        Some(NodeQuant::Attention(q)) => {
            for (which, x) in [("q", &q.q), ("k", &q.k), ("v", &q.v), ("prob", &q.prob)] {
                act_quant(which, x)?;
            }
            Ok(())
        }
        Some(NodeQuant::Weight(_)) => Err(GraphProblem::Quant("a weight record on an Attention node".into())),
    }
}

/// Three inputs: q, k, v.
pub(super) fn arity(_op: &Op, n: usize) -> (bool, &'static str) {
    (n == 3, "3 (q, k, v)")
}
