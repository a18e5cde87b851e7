//! The graph IR: a static dataflow graph that importers build and every interpreter (the f32
//! engine, the integer runtime, the quantizer's differentiable interpreter) reads.
//!
//! Plain data, no math. Values are SSA: each [`ValueId`] is defined exactly once, by a graph
//! input or by one node's output, and nodes are stored in a topological (forward) order. Shapes
//! of intermediate values are not stored; interpreters infer them from the input size chosen
//! at plan time. Tensor layouts are `[N, C, H, W]` for images, `[N, F]` for vectors and
//! `[N, L, C]` for token sequences.

mod codec;
mod op;
mod ops;
mod quant;
mod validate;

pub use op::{Op, OpFamily, Padding};
pub use ops::{
    Attention, AttentionLayout, AvgPool2d, Conv2d, ConvTranspose2d, FreqDenominator, GeluApprox, GroupNorm, LayerNorm,
    LayerNormAxes, Linear, Pad, ScalePlacement, SinusoidOrder, TimestepEmbedding,
};
pub use quant::{ActQuant, AttentionQuant, NodeQuant, QuantGroup, StepEntry, StepGroups, WeightQuant};

pub(crate) use codec::{decode_graph, encode_graph};
pub(crate) use validate::{TensorMeta, validate_graph};

/// Identifies a value (an edge of the graph).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

/// Identifies a tensor: its index in the file's tensor table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub u32);

/// Identifies a reconstruction unit: its index in [`Graph::units`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitId(pub u32);

/// A whole model graph.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Graph {
    /// Number of values; ids are `0..num_values`, each defined exactly once.
    pub num_values: u32,
    /// The graph inputs, each defining one value.
    pub inputs: Vec<GraphInput>,
    /// The graph outputs.
    pub outputs: Vec<GraphOutput>,
    /// Reconstruction units in forward order (METHOD.md §3.1).
    pub units: Vec<Unit>,
    /// Nodes in topological order.
    pub nodes: Vec<Node>,
    /// Time-step groups of the activation quantizers (format minor 1); `None`: one quantizer
    /// per tensor for every timestep.
    pub step_groups: Option<StepGroups>,
}

impl Graph {
    /// The value defined by the input of the given kind, if the graph has one.
    pub fn input(&self, kind: InputKindTag) -> Option<&GraphInput> {
        self.inputs.iter().find(|i| i.kind.tag() == kind)
    }

    /// Number of time-step groups (1 without a table).
    pub fn num_step_groups(&self) -> usize {
        self.step_groups.as_ref().map_or(1, StepGroups::groups)
    }

    /// Activation quantizer `slot` of node `node` for every time-step group (one entry without
    /// a table); `None` when the node has no such quantizer. Assumes a validated graph.
    pub fn act_quants(&self, node: usize, slot: u32) -> Option<Vec<ActQuant>> {
        let base = self.nodes.get(node)?.quant.as_ref()?.act(slot)?;
        let mut v = vec![base];
        if let Some(s) = &self.step_groups {
            let e = s.entries.iter().find(|e| e.node as usize == node && e.slot == slot)?;
            v.extend_from_slice(&e.acts);
        }
        Some(v)
    }
}

/// A graph input.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphInput {
    /// The value it defines.
    pub value: ValueId,
    /// What it is.
    pub kind: InputKind,
}

/// What a graph input is. Each kind occurs at most once; `Sample` exactly once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InputKind {
    /// `x`: the noisy sample, f32 `[N, channels, H, W]`; `height`/`width` give the size the
    /// model was trained at.
    Sample {
        /// Channels.
        channels: u32,
        /// Native height.
        height: u32,
        /// Native width.
        width: u32,
    },
    /// `t`: the timestep, f32 `[N]`, exactly as the network receives it (for DDPM-style models
    /// the integer step index as a float).
    Timestep,
    /// `context`: conditioning tokens, f32 `[N, tokens, dim]`.
    Context {
        /// Tokens.
        tokens: u32,
        /// Width of each token.
        dim: u32,
    },
}

/// The kind of an [`InputKind`] without its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InputKindTag {
    /// See [`InputKind::Sample`].
    Sample,
    /// See [`InputKind::Timestep`].
    Timestep,
    /// See [`InputKind::Context`].
    Context,
}

impl InputKind {
    /// The kind without data.
    pub fn tag(&self) -> InputKindTag {
        match self {
            InputKind::Sample { .. } => InputKindTag::Sample,
            InputKind::Timestep => InputKindTag::Timestep,
            InputKind::Context { .. } => InputKindTag::Context,
        }
    }

    /// Conventional name: `x`, `t` or `context`.
    pub fn name(&self) -> &'static str {
        match self {
            InputKind::Sample { .. } => "x",
            InputKind::Timestep => "t",
            InputKind::Context { .. } => "context",
        }
    }
}

/// A graph output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GraphOutput {
    /// The value it returns.
    pub value: ValueId,
    /// What the network predicts.
    pub prediction: Prediction,
}

/// What a diffusion network's output means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Prediction {
    /// The noise ε.
    Epsilon,
    /// The velocity v = √ᾱ·ε − √(1−ᾱ)·x₀.
    V,
    /// The clean sample x₀.
    X0,
}

impl Prediction {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Prediction::Epsilon => "epsilon",
            Prediction::V => "v",
            Prediction::X0 => "x0",
        }
    }
}

/// A reconstruction unit: the granularity at which FBR/BRECQ reconstructs (METHOD.md §3.1).
#[derive(Clone, Debug, PartialEq)]
pub struct Unit {
    /// Name (the module path of the block or layer, e.g. `down.1.attn.0`).
    pub name: String,
    /// What kind of unit.
    pub kind: UnitKind,
}

/// Kinds of reconstruction unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnitKind {
    /// A single quantized layer outside any block (loss: output MSE only).
    Layer,
    /// A residual block (conv–norm–conv with timestep projection and skip).
    ResBlock,
    /// A self-attention block.
    AttentionBlock,
    /// A transformer block (self-attention, cross-attention, feed-forward).
    TransformerBlock,
}

impl UnitKind {
    /// Name for display.
    pub fn name(self) -> &'static str {
        match self {
            UnitKind::Layer => "layer",
            UnitKind::ResBlock => "resblock",
            UnitKind::AttentionBlock => "attention",
            UnitKind::TransformerBlock => "transformer",
        }
    }
}

/// One operation of the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Unique name, by convention the source module path (`down.0.block.1.conv2`).
    pub name: String,
    /// The operation, its attributes and its weight references.
    pub op: Op,
    /// Input values, in the order the op defines.
    pub inputs: Vec<ValueId>,
    /// The value this node defines.
    pub output: ValueId,
    /// The reconstruction unit this node belongs to; `None` for glue between units
    /// (concatenations of skips, the timestep sinusoid, ...). Unit ids are non-decreasing
    /// along the node list.
    pub unit: Option<UnitId>,
    /// The quantization record, for quantized files.
    pub quant: Option<NodeQuant>,
}
