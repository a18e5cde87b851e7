//! Operations of the graph IR: the [`Op`] enum with its codes and names. Semantics are
//! normative in `docs/FORMAT.md` §5.4; each variant's doc gives the short version. The
//! attribute types, records and rules of each op family are in `ops/`.

use super::TensorId;
use super::ops::{
    Attention, AvgPool2d, Conv2d, ConvTranspose2d, GeluApprox, GroupNorm, LayerNorm, Linear, Pad, TimestepEmbedding,
};

/// Four-sided spatial padding, in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Padding {
    /// Rows added above.
    pub top: u32,
    /// Rows added below.
    pub bottom: u32,
    /// Columns added on the left.
    pub left: u32,
    /// Columns added on the right.
    pub right: u32,
}

impl Padding {
    /// The same padding on all four sides.
    pub const fn uniform(p: u32) -> Self {
        Padding { top: p, bottom: p, left: p, right: p }
    }
}

/// An operation with its attributes.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// 2-D convolution (cross-correlation as in PyTorch). Input `[N, Cin, H, W]`.
    /// Padding contributes real zeros; a quantized input pads with its zero-point.
    Conv2d(Conv2d),
    /// 2-D transposed convolution, PyTorch semantics. Input `[N, Cin, H, W]`.
    ConvTranspose2d(ConvTranspose2d),
    /// `y = x·Wᵀ + b` over the last axis of `[N, F]` or `[N, L, F]`.
    Linear(Linear),
    /// Group normalisation over (C/groups, H, W) of `[N, C, H, W]`, biased variance.
    GroupNorm(GroupNorm),
    /// Layer normalisation, biased variance.
    LayerNorm(LayerNorm),
    /// `x · sigmoid(x)`.
    Silu,
    /// `max(x, 0)`.
    Relu,
    /// Gaussian error linear unit.
    Gelu(GeluApprox),
    /// `1 / (1 + exp(−x))`.
    Sigmoid,
    /// `a + b`; `b` may also be `[N, C]` added to every position of `a = [N, C, H, W]`.
    Add,
    /// `a · b`, broadcasting as [`Op::Add`].
    Mul,
    /// Concatenation of all inputs along `axis` (1 = channels).
    Concat {
        /// The axis.
        axis: u32,
    },
    /// Spatial padding with a constant.
    Pad(Pad),
    /// Nearest-neighbour upsampling by an integer factor in both spatial dimensions.
    UpsampleNearest {
        /// The factor.
        scale: u32,
    },
    /// Average pooling without padding.
    AvgPool2d(AvgPool2d),
    /// Embeds the timestep `t` `[N]` into `[N, dim]`.
    TimestepEmbedding(TimestepEmbedding),
    /// Scaled dot-product attention with softmax over keys. Inputs q, k, v.
    Attention(Attention),
}

/// The op families. Each crate keeps one file per family for what it does with the ops (the
/// format: attributes, records and rules in `graph/ops/`; the runtime: lowering to steps; the
/// quantizer: the candle form), and dispatches on [`Op::family`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpFamily {
    /// `Conv2d`, `ConvTranspose2d`, `Linear`: the ops with a weight (and a weight quantization
    /// record).
    Weighted,
    /// `GroupNorm`, `LayerNorm`.
    Norm,
    /// The activations and the binary `Add`, `Mul`.
    Pointwise,
    /// `Concat`, `Pad`, `UpsampleNearest`, `AvgPool2d`.
    Shape,
    /// `TimestepEmbedding`.
    Embed,
    /// `Attention` (and its quantization record).
    Attention,
}

impl Op {
    /// The op's family (the build fails here until a new variant picks one).
    pub fn family(&self) -> OpFamily {
        match self {
            Op::Conv2d(_) | Op::ConvTranspose2d(_) | Op::Linear(_) => OpFamily::Weighted,
            Op::GroupNorm(_) | Op::LayerNorm(_) => OpFamily::Norm,
            Op::Silu | Op::Relu | Op::Gelu(_) | Op::Sigmoid | Op::Add | Op::Mul => OpFamily::Pointwise,
            Op::Concat { .. } | Op::Pad(_) | Op::UpsampleNearest { .. } | Op::AvgPool2d(_) => OpFamily::Shape,
            Op::TimestepEmbedding(_) => OpFamily::Embed,
            Op::Attention(_) => OpFamily::Attention,
        }
    }

    /// The on-disk op code (`docs/FORMAT.md` §5.4).
    pub fn code(&self) -> u16 {
        match self {
            Op::Conv2d(_) => 0,
            Op::ConvTranspose2d(_) => 1,
            Op::Linear(_) => 2,
            Op::GroupNorm(_) => 3,
            Op::LayerNorm(_) => 4,
            Op::Silu => 5,
            Op::Relu => 6,
            Op::Gelu(_) => 7,
            Op::Sigmoid => 8,
            Op::Add => 9,
            Op::Mul => 10,
            Op::Concat { .. } => 11,
            Op::Pad(_) => 12,
            Op::UpsampleNearest { .. } => 13,
            Op::AvgPool2d(_) => 14,
            Op::TimestepEmbedding(_) => 15,
            Op::Attention(_) => 16,
        }
    }

    /// The op's name as printed by tools.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv2d(_) => "Conv2d",
            Op::ConvTranspose2d(_) => "ConvTranspose2d",
            Op::Linear(_) => "Linear",
            Op::GroupNorm(_) => "GroupNorm",
            Op::LayerNorm(_) => "LayerNorm",
            Op::Silu => "SiLU",
            Op::Relu => "ReLU",
            Op::Gelu(_) => "GELU",
            Op::Sigmoid => "Sigmoid",
            Op::Add => "Add",
            Op::Mul => "Mul",
            Op::Concat { .. } => "Concat",
            Op::Pad(_) => "Pad",
            Op::UpsampleNearest { .. } => "UpsampleNearest",
            Op::AvgPool2d(_) => "AvgPool2d",
            Op::TimestepEmbedding(_) => "TimestepEmbedding",
            Op::Attention(_) => "Attention",
        }
    }

    /// Whether the op has a weight that a [`super::WeightQuant`] record can quantize.
    pub fn is_weighted(&self) -> bool {
        matches!(self, Op::Conv2d(_) | Op::ConvTranspose2d(_) | Op::Linear(_))
    }

    /// The main weight tensor of a weighted op.
    pub fn weight(&self) -> Option<TensorId> {
        match self {
            Op::Conv2d(c) => Some(c.weight),
            Op::ConvTranspose2d(c) => Some(c.weight),
            Op::Linear(l) => Some(l.weight),
            _ => None,
        }
    }

    /// Every tensor the op's attributes refer to, with its role.
    pub fn tensor_refs(&self) -> Vec<(&'static str, TensorId)> {
        let mut v = Vec::new();
        let mut push = |role, t: Option<TensorId>| {
            if let Some(t) = t {
                v.push((role, t));
            }
        };
        match self {
            Op::Conv2d(c) => {
                push("weight", Some(c.weight));
                push("bias", c.bias);
            }
            Op::ConvTranspose2d(c) => {
                push("weight", Some(c.weight));
                push("bias", c.bias);
            }
            Op::Linear(l) => {
                push("weight", Some(l.weight));
                push("bias", l.bias);
            }
            Op::GroupNorm(g) => {
                push("weight", g.weight);
                push("bias", g.bias);
            }
            Op::LayerNorm(l) => {
                push("weight", l.weight);
                push("bias", l.bias);
            }
            Op::TimestepEmbedding(TimestepEmbedding::Table { table, .. }) => push("table", Some(*table)),
            _ => {}
        }
        v
    }
}
