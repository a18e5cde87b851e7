//! Lowering of graph nodes to steps, one file per op family (the format's [`OpFamily`]): each
//! holds its ops' shape rules, their lowering (f32 and integer) and their multiply-accumulates.
//! The steps are what a backend executes (`session.rs` for the CPU); fusion of neighbouring steps
//! is `fuse.rs`, arena layout `layout.rs`.

use edadm_format::graph::OpFamily;

use super::*;

mod attention;
mod embed;
mod norm;
mod pointwise;
mod shape;
mod weighted;

/// What lowering one node needs.
#[derive(Clone, Copy)]
pub(super) struct Cx<'a, 'm> {
    pub(super) model: &'m Model,
    pub(super) k: &'a Kernels,
    /// The node's index and the node.
    pub(super) ni: usize,
    pub(super) node: &'m Node,
    /// The shapes of its inputs.
    pub(super) ins: &'a [&'a Vec<usize>],
    /// Threads of the session's pool.
    pub(super) threads: usize,
}

impl<'m> Cx<'_, 'm> {
    /// Value id of input `i`.
    pub(super) fn v(&self, i: usize) -> u32 {
        self.node.inputs[i].0
    }

    /// An optional f32 parameter of the node.
    pub(super) fn opt(&self, t: Option<TensorId>) -> Option<Floats<'m>> {
        t.map(|t| floats(self.model, t))
    }
}

/// A lowered node: its step, output shape and scratch floats.
pub(super) type Lowered<'m> = Result<(Step<'m>, Vec<usize>, usize)>;

/// Node `ni`'s step, output shape and scratch floats.
pub(super) fn build_step<'a, 'm>(
    model: &'m Model,
    k: &'a Kernels,
    ni: usize,
    ins: &'a [&'a Vec<usize>],
    threads: usize,
) -> Lowered<'m> {
    let node = &model.graph().nodes[ni];
    let cx = Cx { model, k, ni, node, ins, threads };
    match (&node.quant, node.op.family()) {
        (None, OpFamily::Weighted) => weighted::build(&cx),
        (None, OpFamily::Norm) => norm::build(&cx),
        (None, OpFamily::Pointwise) => pointwise::build(&cx),
        (None, OpFamily::Shape) => shape::build(&cx),
        (None, OpFamily::Embed) => embed::build(&cx),
        (None, OpFamily::Attention) => attention::build(&cx),
        (Some(NodeQuant::Weight(wq)), OpFamily::Weighted) => weighted::build_quant(&cx, wq),
        (Some(NodeQuant::Attention(aq)), OpFamily::Attention) => attention::build_quant(&cx, aq),
        (Some(_), _) => Err(unsupported(node, "a quantization record that does not fit the op")),
    }
}

/// Multiply-accumulates of one step (weighted ops and attention products; 0 for the rest).
pub(crate) fn step_macs(node: &Node, shapes: &[Vec<usize>], inputs: &[u32], out: u32) -> u64 {
    let numel = |v: u32| shapes[v as usize].iter().product::<usize>() as u64;
    match node.op.family() {
        OpFamily::Weighted => weighted::macs(&node.op, numel, inputs[0], out),
        OpFamily::Attention => attention::macs(shapes, inputs),
        _ => 0,
    }
}

/// Activation quantizer `slot` of node `ni`, one per time-step group.
pub(super) fn kqs(model: &Model, ni: usize, slot: u32) -> Vec<ActQ> {
    model
        .graph()
        .act_quants(ni, slot)
        .expect("validated: every quantizer has its groups")
        .iter()
        .map(crate::convert::act_q)
        .collect()
}
