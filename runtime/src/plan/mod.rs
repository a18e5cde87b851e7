//! Planning a session: shapes of every value for the requested batch and size, one executable
//! step per node with its weights prepared (converted to f32, packed for the GEMM), and one arena
//! in which every value and every step's scratch has a fixed place, assigned by liveness.

use std::borrow::Cow;

use edadm_format::DType;
use edadm_format::graph::{
    AttentionLayout, InputKind, LayerNormAxes, Node, Op, Pad, TensorId, TimestepEmbedding, ValueId,
};
use edadm_format::graph::{AttentionQuant, NodeQuant, WeightQuant};
use edadm_kernels::Kernels;
use edadm_kernels::gemm::ConvGeom;
use edadm_kernels::ops::act::Activation;
use edadm_kernels::ops::attention::AttentionShape;
use edadm_kernels::ops::conv::{self, ConvTransposeGeom};
use edadm_kernels::ops::elementwise::{Binary, SinusoidOrder as KSinOrder};
use edadm_kernels::ops::qattention::QAttention;
use edadm_kernels::ops::qconv::{self, QConvGeom};
use edadm_kernels::ops::quant::{ActQ, C4};

use crate::error::{Result, RuntimeError};
use crate::model::Model;

mod fuse;
mod layout;
mod ops;
mod report;

pub(crate) use ops::step_macs;
pub(crate) use report::step_variant;

pub(crate) use crate::arena::Slot;

/// Packed weights, or a parameter vector read in place from the file when it is f32 and aligned.
pub(crate) type Floats<'m> = Cow<'m, [f32]>;

/// One executable step. Values are referred to by id; their slots live in [`Plan::slots`].
#[derive(Debug)]
pub(crate) enum Step<'m> {
    /// An f32 convolution, its output channels split into one part per thread (one part for
    /// grouped convolutions).
    Conv {
        x: u32,
        n: usize,
        cout: usize,
        parts: Vec<ConvPart>,
        bias: Option<Floats<'m>>,
    },
    ConvT {
        x: u32,
        n: usize,
        geom: ConvTransposeGeom,
        w: edadm_kernels::AlignedF32,
        bias: Option<Floats<'m>>,
    },
    Linear {
        x: u32,
        rows: usize,
        inf: usize,
        outf: usize,
        w: edadm_kernels::AlignedF32,
        bias: Option<Floats<'m>>,
    },
    GroupNorm {
        x: u32,
        n: usize,
        c: usize,
        hw: usize,
        groups: usize,
        eps: f32,
        gamma: Option<Floats<'m>>,
        beta: Option<Floats<'m>>,
        act: Activation,
    },
    /// A GroupNorm (+ activation) whose only reader is an integer conv: it writes that conv's
    /// quantized input (u8 in the conv's layout) straight into its output slot.
    GroupNormQ {
        x: u32,
        groups: usize,
        eps: f32,
        gamma: Option<Floats<'m>>,
        beta: Option<Floats<'m>>,
        act: Activation,
        /// Per time-step group.
        q: Vec<ActQ>,
        layout: C4,
    },
    LayerNormChw {
        x: u32,
        n: usize,
        len: usize,
        eps: f32,
        gamma: Option<Floats<'m>>,
        beta: Option<Floats<'m>>,
    },
    LayerNormChannel {
        x: u32,
        n: usize,
        c: usize,
        positions: usize,
        channels_last: bool,
        eps: f32,
        gamma: Option<Floats<'m>>,
        beta: Option<Floats<'m>>,
    },
    Act {
        x: u32,
        act: Activation,
    },
    Binary {
        op: Binary,
        a: u32,
        b: u32,
        n: usize,
        c: usize,
        inner: usize,
    },
    Concat {
        parts: Vec<(u32, usize, usize)>,
        total: usize,
        outer: usize,
    },
    Pad {
        x: u32,
        planes: usize,
        h: usize,
        w: usize,
        pad: [usize; 4],
        value: f32,
    },
    Upsample {
        x: u32,
        planes: usize,
        h: usize,
        w: usize,
        s: usize,
    },
    AvgPool {
        x: u32,
        planes: usize,
        h: usize,
        w: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
    },
    Sinusoid {
        t: u32,
        dim: usize,
        order: KSinOrder,
        half_minus_one: bool,
        max_period: f32,
    },
    Table {
        t: u32,
        dim: usize,
        rows: usize,
        table: Floats<'m>,
    },
    Attention {
        q: u32,
        k: u32,
        v: u32,
        shape: AttentionShape,
    },
    /// An integer conv (or linear as a 1×1 conv over `[rows, in, 1, 1]`): every input group
    /// quantized into its own buffer in scratch, then one exact u8×i8 convolution.
    QConv {
        x: u32,
        /// `x` already holds the quantized input (a [`Step::GroupNormQ`] wrote it).
        pre: bool,
        cin: usize,
        plan: qconv::QConv2dPlan,
        groups: Vec<QGroupStep>,
        bias: Option<Floats<'m>>,
        /// A value added to the output in the pass that writes it (an `Add` fused into the
        /// conv, see `fuse::conv_add`): the whole tensor (`true`) or `[N, cout]` broadcast.
        add: Option<(u32, bool)>,
        /// `x` is the input before a nearest-neighbour upsampling by this factor, fused into the
        /// quantization (see `fuse::upsample_quantize`); 1: none.
        upsample: usize,
    },
    QConvT {
        x: u32,
        plan: qconv::QConvTranspose2dPlan,
        /// Per time-step group: the quantizer and `Δa·Δw[c]`.
        q: Vec<ActQ>,
        scale: Vec<Vec<f32>>,
        bias: Option<Floats<'m>>,
    },
    QAttention {
        q: u32,
        k: u32,
        v: u32,
        /// Per time-step group.
        a: Vec<QAttention>,
    },
}

/// Output channels `r0..r1` of a [`Step::Conv`], with their own packed weights and scratch.
#[derive(Debug)]
pub(crate) struct ConvPart {
    pub(crate) r0: usize,
    pub(crate) r1: usize,
    pub(crate) plan: conv::Conv2dPlan,
    /// Offset of its scratch in the step's scratch.
    pub(crate) scratch: usize,
}

/// One input-channel group of a [`Step::QConv`].
#[derive(Debug)]
pub(crate) struct QGroupStep {
    /// First channel.
    pub(crate) ch0: usize,
    /// Its quantizer, per time-step group.
    pub(crate) q: Vec<ActQ>,
    /// `Δa·Δw[c]` per output channel, per time-step group.
    pub(crate) scale: Vec<Vec<f32>>,
    /// Its layout (the plan's).
    pub(crate) layout: C4,
}

/// A step with the values it reads and writes.
#[derive(Debug)]
pub(crate) struct Planned<'m> {
    /// The node it executes (for a fused pair, the first).
    pub(crate) node: usize,
    /// Values read.
    pub(crate) inputs: Vec<u32>,
    /// Value written.
    pub(crate) out: u32,
    /// What to do.
    pub(crate) step: Step<'m>,
    /// Too little work to share: runs on the calling thread (see [`SERIAL_MACS`]).
    pub(crate) serial: bool,
}

/// Steps with fewer multiply-accumulates than this (weighted ops, attention), or fewer output
/// elements than [`SERIAL_ELEMENTS`] (the rest), run on the calling thread alone: handing a job
/// to the pool's workers costs a few microseconds (`cargo bench --bench pool`), more than
/// splitting such a step saves. Every kernel computes the same bytes for any split, so this
/// changes only the time.
pub(crate) const SERIAL_MACS: u64 = 1 << 18;
/// See [`SERIAL_MACS`].
pub(crate) const SERIAL_ELEMENTS: usize = 1 << 13;

/// The plan of a session.
#[derive(Debug)]
pub(crate) struct Plan<'m> {
    /// Steps in execution order.
    pub(crate) steps: Vec<Planned<'m>>,
    /// Scratch of each step (empty slot when none).
    pub(crate) scratch: Vec<Slot>,
    /// Slot of every value.
    pub(crate) slots: Vec<Slot>,
    /// Shape of every value.
    pub(crate) shapes: Vec<Vec<usize>>,
    /// Arena length in floats.
    pub(crate) arena_len: usize,
    /// Bytes of weights converted or packed at plan time.
    pub(crate) prepared_bytes: usize,
}

fn shape_err(node: &Node, detail: impl Into<String>) -> RuntimeError {
    RuntimeError::Shape { node: node.name.clone(), detail: detail.into() }
}

fn unsupported(node: &Node, what: impl Into<String>) -> RuntimeError {
    RuntimeError::Unsupported { node: node.name.clone(), what: what.into() }
}

/// The f32 contents of a tensor: borrowed from the file when it is f32 and aligned in memory,
/// else converted.
pub(crate) fn floats<'m>(model: &'m Model, t: TensorId) -> Floats<'m> {
    let v = model.file().tensor(t).expect("validated tensor reference");
    match v.as_f32() {
        Ok(s) if v.dtype == DType::F32 => Cow::Borrowed(s),
        // Validation allows only f32/f16 for unquantized parameters.
        _ => Cow::Owned(v.to_f32_vec().unwrap_or_else(|| unreachable!("unquantized parameter with dtype {}", v.dtype))),
    }
}

fn owned_len(f: &Floats<'_>) -> usize {
    match f {
        Cow::Borrowed(_) => 0,
        Cow::Owned(v) => v.len() * 4,
    }
}

/// Which values must outlive their last use.
pub(crate) struct PlanRequest<'a> {
    pub(crate) batch: usize,
    /// Threads of the session's pool (scratch is per thread where a kernel splits work).
    pub(crate) threads: usize,
    pub(crate) height: usize,
    pub(crate) width: usize,
    pub(crate) keep: &'a [ValueId],
    /// Split even the small steps ([`SERIAL_MACS`]).
    pub(crate) split_small_steps: bool,
}

impl<'m> Plan<'m> {
    pub(crate) fn build(model: &'m Model, k: &Kernels, req: &PlanRequest<'_>) -> Result<Plan<'m>> {
        let g = model.graph();
        let n = req.batch;
        if n == 0 || req.height == 0 || req.width == 0 {
            return Err(RuntimeError::Session(format!(
                "batch {n} and size {}x{} must all be at least 1",
                req.height, req.width
            )));
        }
        let nv = g.num_values as usize;
        let mut shapes: Vec<Vec<usize>> = vec![Vec::new(); nv];
        for i in &g.inputs {
            shapes[i.value.0 as usize] = match i.kind {
                InputKind::Sample { channels, .. } => vec![n, channels as usize, req.height, req.width],
                InputKind::Timestep => vec![n],
                InputKind::Context { tokens, dim } => vec![n, tokens as usize, dim as usize],
            };
        }
        let mut steps: Vec<Planned<'m>> = Vec::with_capacity(g.nodes.len());
        let mut scratch_len = Vec::with_capacity(g.nodes.len());
        for (ni, node) in g.nodes.iter().enumerate() {
            let ins: Vec<&Vec<usize>> = node.inputs.iter().map(|v| &shapes[v.0 as usize]).collect();
            let (step, out_shape, scratch) = ops::build_step(model, k, ni, &ins, req.threads)?;
            shapes[node.output.0 as usize] = out_shape;
            // Weights of convolutions and linear layers are packed (or dequantized and packed)
            // now; the mapped copy is not read again.
            if let (Some(w), Op::Conv2d(_) | Op::Linear(_) | Op::ConvTranspose2d(_)) = (node.op.weight(), &node.op) {
                model.release_pages(w);
            }
            let inputs = node.inputs.iter().map(|v| v.0).collect();
            steps.push(Planned { node: ni, inputs, out: node.output.0, step, serial: false });
            scratch_len.push(scratch);
        }
        fuse::norm_activation(&mut steps, &mut scratch_len, g, req.keep);
        let mut slot_len: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
        fuse::norm_quantize(&mut steps, &mut scratch_len, &mut slot_len, g, req.keep);
        fuse::conv_add(&mut steps, &mut scratch_len, &mut slot_len, &shapes, g, req.keep);
        fuse::upsample_quantize(&mut steps, &mut scratch_len, &mut slot_len, g, req.keep);
        let prepared = steps.iter().map(|p| report::step_prepared_bytes(&p.step)).sum();
        for p in &mut steps {
            let macs = step_macs(&g.nodes[p.node], &shapes, &p.inputs, p.out);
            let elements: usize = shapes[p.out as usize].iter().product();
            p.serial = !req.split_small_steps && if macs > 0 { macs < SERIAL_MACS } else { elements < SERIAL_ELEMENTS };
        }

        // Liveness: a value lives from the step that defines it (inputs: before step 0) to its
        // last reader; graph outputs and kept values to the end.
        let end = steps.len();
        let mut first = vec![0usize; nv];
        let mut last = vec![0usize; nv];
        for (si, p) in steps.iter().enumerate() {
            first[p.out as usize] = si;
            last[p.out as usize] = si;
            for &v in &p.inputs {
                last[v as usize] = last[v as usize].max(si);
            }
        }
        for o in &g.outputs {
            last[o.value.0 as usize] = end;
        }
        for v in req.keep {
            if let Some(l) = last.get_mut(v.0 as usize) {
                *l = end;
            }
        }
        let mut items: Vec<(usize, usize, usize)> = (0..nv).map(|v| (slot_len[v], first[v], last[v])).collect();
        items.extend(scratch_len.iter().enumerate().map(|(si, &len)| (len, si, si)));
        let (offsets, arena_len) = layout::assign_offsets(&items);
        let slots = (0..nv).map(|v| Slot { off: offsets[v], len: items[v].0 }).collect();
        let scratch = (0..steps.len()).map(|s| Slot { off: offsets[nv + s], len: items[nv + s].0 }).collect();
        Ok(Plan { steps, scratch, slots, shapes, arena_len, prepared_bytes: prepared })
    }
}

fn rank4(node: &Node, s: &[usize], what: &str) -> Result<[usize; 4]> {
    <[usize; 4]>::try_from(s).map_err(|_| shape_err(node, format!("{what} must be [N, C, H, W], got {s:?}")))
}

fn check_channels(node: &Node, got: usize, want: u32) -> Result<()> {
    if got != want as usize {
        return Err(shape_err(node, format!("input has {got} channels, the node expects {want}")));
    }
    Ok(())
}
