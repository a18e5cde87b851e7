//! Quantization records: what a quantized node needs to run in integers
//! (METHOD.md §4.3, `docs/FORMAT.md` §5.5).

use super::TensorId;

/// An affine activation quantizer: `q = clamp(round_half_even(x / delta) + zero_point, 0,
/// 2^bits − 1)`, dequantized as `(q − zero_point) · delta`. One per tensor, shared by all
/// timesteps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActQuant {
    /// Step Δ; finite and positive.
    pub delta: f32,
    /// Zero-point, below `2^bits`.
    pub zero_point: u8,
    /// Bits, 1 to 8.
    pub bits: u8,
}

/// The quantization record of a node.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeQuant {
    /// For `Conv2d`, `ConvTranspose2d` and `Linear`: integer weights, per-output-channel
    /// scales and the input quantizer(s).
    Weight(WeightQuant),
    /// For `Attention`: quantizers of q, k, v and the softmax probabilities.
    Attention(AttentionQuant),
}

/// Integer weights of a conv or linear node. The node's `weight` tensor holds signed
/// integers (`i8` for 8 bits, packed `i4` for 4 bits) in the op's weight layout; the
/// dequantized weight of output channel `c` in group `g` is `w_int · groups[g].weight_scales[c]`.
///
/// The input channels are split into consecutive groups; group `g` covers
/// `[groups[g].channel_start, groups[g+1].channel_start)` (the last one up to the input
/// channel count). One group is the normal case; two is Q-Diffusion's split skip conv on
/// `concat([h, skip])`. Each group has its own weight scales and its own input quantizer,
/// and the node's output is the f32 sum of the groups' partial results plus the bias.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightQuant {
    /// 4 or 8.
    pub weight_bits: u8,
    /// The input-channel groups (1 to 8), in channel order, the first starting at 0.
    pub groups: Vec<QuantGroup>,
}

/// One input-channel group of a [`WeightQuant`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantGroup {
    /// First input channel of the group.
    pub channel_start: u32,
    /// Per-output-channel weight steps, f32 `[out]`.
    pub weight_scales: TensorId,
    /// The quantizer of this group's input; `None` when the input stays f32 (the network's
    /// output conv). Either every group of a record has one or none has.
    pub input: Option<ActQuant>,
}

/// The activation quantizers of an attention node (METHOD.md §2.6).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionQuant {
    /// Quantizer of q (after the scale when it is placed before quantization).
    pub q: ActQuant,
    /// Quantizer of k (likewise).
    pub k: ActQuant,
    /// Quantizer of v.
    pub v: ActQuant,
    /// Quantizer of the softmax probabilities (usually unsigned, zero-point 0).
    pub prob: ActQuant,
}

/// Time-step-aware activation quantization (format minor 1, `docs/FORMAT.md` §5.5a): the
/// activation quantizers hold one (Δ, zero-point) per group of timesteps. A network evaluation at
/// timestep `t` uses group `#{e ∈ edges : e ≤ t}` for every quantizer, so group 0 holds the
/// smallest timesteps (the end of sampling). Group 0's quantizers are the nodes' records; this
/// table holds groups `1..G` of every activation quantizer of the graph.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct StepGroups {
    /// The `G − 1` edges, finite and strictly increasing (1 to [`crate::limits::MAX_STEP_GROUPS`]` − 1`).
    pub edges: Vec<f32>,
    /// One entry per activation quantizer of the graph.
    pub entries: Vec<StepEntry>,
}

/// The quantizers of groups `1..G` of one activation quantizer.
#[derive(Clone, Debug, PartialEq)]
pub struct StepEntry {
    /// The node.
    pub node: u32,
    /// Which of its quantizers: the input group of a weighted node, or q, k, v, probabilities
    /// (0 to 3) of an attention node.
    pub slot: u32,
    /// Groups `1..G`, `G − 1` quantizers with the bits of the record's.
    pub acts: Vec<ActQuant>,
}

impl StepGroups {
    /// Number of groups `G`.
    pub fn groups(&self) -> usize {
        self.edges.len() + 1
    }

    /// The group of timestep `t` (group 0 for NaN).
    pub fn group_of(&self, t: f32) -> usize {
        self.edges.partition_point(|&e| e <= t)
    }
}

impl NodeQuant {
    /// The activation quantizer in `slot` (see [`StepEntry::slot`]), group 0.
    pub fn act(&self, slot: u32) -> Option<ActQuant> {
        match self {
            NodeQuant::Weight(w) => w.groups.get(slot as usize).and_then(|g| g.input),
            NodeQuant::Attention(a) => [a.q, a.k, a.v, a.prob].get(slot as usize).copied(),
        }
    }

    /// Slots with an activation quantizer.
    pub fn act_slots(&self) -> Vec<u32> {
        match self {
            NodeQuant::Weight(w) => {
                (0..w.groups.len() as u32).filter(|&g| w.groups[g as usize].input.is_some()).collect()
            }
            NodeQuant::Attention(_) => vec![0, 1, 2, 3],
        }
    }
}
