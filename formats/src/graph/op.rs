//! Operations of the graph IR and their attributes. Semantics are normative in
//! `docs/FORMAT.md` §5.4; each variant's doc gives the short version.

use super::TensorId;

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

/// The GELU variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GeluApprox {
    /// `x·Φ(x)` with the exact error function.
    Erf,
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    Tanh,
}

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

/// Order of the two halves of a sinusoidal embedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SinusoidOrder {
    /// `[sin(t·f), cos(t·f)]` (DDPM / pytorch_diffusion).
    SinCos,
    /// `[cos(t·f), sin(t·f)]` (openaimodel / LDM / SD).
    CosSin,
}

/// Denominator `d` of the frequencies `f_i = exp(−ln(max_period)·i/d)`, `i = 0..half`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FreqDenominator {
    /// `d = half − 1` (DDPM).
    HalfMinusOne,
    /// `d = half` (openaimodel).
    Half,
}

/// Attributes of [`Op::TimestepEmbedding`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TimestepEmbedding {
    /// `half = dim/2` frequencies; an odd `dim` gets a trailing zero column.
    Sinusoidal {
        /// Output width.
        dim: u32,
        /// Order of the halves.
        order: SinusoidOrder,
        /// Frequency denominator.
        denominator: FreqDenominator,
        /// Usually 10000.
        max_period: f32,
    },
    /// Row `t` of a stored table `[T, dim]`; `t` must be an integer in `[0, T)`.
    Table {
        /// Output width.
        dim: u32,
        /// The table.
        table: TensorId,
    },
}

impl TimestepEmbedding {
    /// Output width.
    pub fn dim(&self) -> u32 {
        match *self {
            TimestepEmbedding::Sinusoidal { dim, .. } | TimestepEmbedding::Table { dim, .. } => dim,
        }
    }
}

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

impl Op {
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
