//! Planning a session: shapes of every value for the requested batch and size, one executable
//! step per node with its weights prepared (converted to f32, packed for the GEMM), and one arena
//! in which every value and every step's scratch has a fixed place, assigned by liveness.

use std::borrow::Cow;

use edadm_format::DType;
use edadm_format::graph::{
    AttentionLayout, FreqDenominator, GeluApprox, InputKind, LayerNormAxes, Node, Op, Pad, SinusoidOrder, TensorId,
    TimestepEmbedding, ValueId,
};
use edadm_format::graph::{NodeQuant, WeightQuant};
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

/// A place in the arena, in floats. Offsets are multiples of 16 (64 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) off: usize,
    pub(crate) len: usize,
}

impl Slot {
    pub(crate) fn end(&self) -> usize {
        self.off + self.len
    }
}

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
}

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
    match v.dtype {
        DType::F32 => match v.as_f32() {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => {
                Cow::Owned(v.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
            }
        },
        DType::F16 => {
            Cow::Owned(v.data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect())
        }
        // Validation allows only f32/f16 for unquantized parameters.
        other => unreachable!("unquantized parameter with dtype {other}"),
    }
}

fn owned_len(f: &Floats<'_>) -> usize {
    match f {
        Cow::Borrowed(_) => 0,
        Cow::Owned(v) => v.len() * 4,
    }
}

fn act_of(op: &Op) -> Option<Activation> {
    Some(match op {
        Op::Silu => Activation::Silu,
        Op::Relu => Activation::Relu,
        Op::Sigmoid => Activation::Sigmoid,
        Op::Gelu(GeluApprox::Erf) => Activation::GeluErf,
        Op::Gelu(GeluApprox::Tanh) => Activation::GeluTanh,
        _ => return None,
    })
}

/// Which values must outlive their last use.
pub(crate) struct PlanRequest<'a> {
    pub(crate) batch: usize,
    /// Threads of the session's pool (scratch is per thread where a kernel splits work).
    pub(crate) threads: usize,
    pub(crate) height: usize,
    pub(crate) width: usize,
    pub(crate) keep: &'a [ValueId],
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
            let (step, out_shape, scratch) = match &node.quant {
                None => build_step(model, k, node, &ins, req.threads)?,
                Some(q) => build_quant_step(model, k, ni, q, &ins, req.threads)?,
            };
            shapes[node.output.0 as usize] = out_shape;
            // Weights of convolutions and linear layers are packed (or dequantized and packed)
            // now; the mapped copy is not read again.
            if let (Some(w), Op::Conv2d(_) | Op::Linear(_) | Op::ConvTranspose2d(_)) = (node.op.weight(), &node.op) {
                model.release_pages(w);
            }
            let inputs = node.inputs.iter().map(|v| v.0).collect();
            steps.push(Planned { node: ni, inputs, out: node.output.0, step });
            scratch_len.push(scratch);
        }
        fuse_norm_activation(&mut steps, &mut scratch_len, g, req.keep);
        let mut slot_len: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
        fuse_norm_quantize(&mut steps, &mut scratch_len, &mut slot_len, g, req.keep);
        let prepared = steps.iter().map(|p| step_prepared_bytes(&p.step)).sum();

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
        let (offsets, arena_len) = assign_offsets(&items);
        let slots = (0..nv).map(|v| Slot { off: offsets[v], len: items[v].0 }).collect();
        let scratch = (0..steps.len()).map(|s| Slot { off: offsets[nv + s], len: items[nv + s].0 }).collect();
        Ok(Plan { steps, scratch, slots, shapes, arena_len, prepared_bytes: prepared })
    }
}

/// Fuses a GroupNorm with the activation that is the only reader of its output (the SiLU of
/// every DDPM block): one pass instead of two, one buffer less.
fn fuse_norm_activation(
    steps: &mut Vec<Planned<'_>>,
    scratch: &mut Vec<usize>,
    g: &edadm_format::Graph,
    keep: &[ValueId],
) {
    let readers = reader_counts(steps, g, keep);
    let mut i = 0;
    while i + 1 < steps.len() {
        let fusable = matches!(steps[i].step, Step::GroupNorm { act: Activation::None, .. })
            && readers[steps[i].out as usize] == 1
            && matches!(steps[i + 1].step, Step::Act { x, .. } if x == steps[i].out);
        if fusable {
            let next = steps.remove(i + 1);
            scratch.remove(i + 1);
            if let (Step::GroupNorm { act, .. }, Step::Act { act: a, .. }) = (&mut steps[i].step, &next.step) {
                *act = *a;
            }
            steps[i].out = next.out;
        }
        i += 1;
    }
}

/// Multiply-accumulates of one step (weighted ops and attention products; 0 for the rest).
pub(crate) fn step_macs(node: &Node, shapes: &[Vec<usize>], inputs: &[u32], out: u32) -> u64 {
    let numel = |v: u32| shapes[v as usize].iter().product::<usize>() as u64;
    match &node.op {
        Op::Conv2d(c) => {
            numel(out) * u64::from(c.in_channels / c.groups) * u64::from(c.kernel[0]) * u64::from(c.kernel[1])
        }
        Op::ConvTranspose2d(c) => {
            numel(inputs[0]) * u64::from(c.out_channels) * u64::from(c.kernel[0]) * u64::from(c.kernel[1])
        }
        Op::Linear(l) => numel(out) * u64::from(l.in_features),
        Op::Attention(_) => {
            // Q·Kᵀ and P·V: 2 · N · queries · keys · channels; spatial [N, C, H, W] or tokens
            // [N, T, D].
            let (q, k) = (&shapes[inputs[0] as usize], &shapes[inputs[1] as usize]);
            let (n, qt, kt, c) = match (q.as_slice(), k.as_slice()) {
                ([n, c, h, w], [_, _, kh, kw]) => (*n, h * w, kh * kw, *c),
                ([n, t, d], [_, kt, _]) => (*n, *t, *kt, *d),
                _ => return 0,
            };
            2 * (n * qt * kt * c) as u64
        }
        _ => 0,
    }
}

/// What a step runs on: the microkernel of its GEMM, or the SIMD tier of its element-wise code.
pub(crate) fn step_variant(s: &Step<'_>, k: &Kernels) -> (&'static str, String) {
    let simd = k.simd_name();
    match s {
        Step::Conv { .. } => ("conv f32", k.sgemm().name.to_string()),
        Step::ConvT { .. } => ("conv_transpose f32", k.sgemm().name.to_string()),
        Step::Linear { .. } => ("linear f32", k.sgemm().name.to_string()),
        Step::GroupNorm { act: Activation::None, .. } => ("group_norm", simd.into()),
        Step::GroupNorm { .. } => ("group_norm+act", simd.into()),
        Step::GroupNormQ { .. } => ("group_norm+quantize", simd.into()),
        Step::LayerNormChw { .. } | Step::LayerNormChannel { .. } => ("layer_norm", simd.into()),
        Step::Act { .. } => ("activation", simd.into()),
        Step::Binary { .. } => ("add/mul", simd.into()),
        Step::Concat { .. } => ("concat", "copy".into()),
        Step::Pad { .. } => ("pad", "copy".into()),
        Step::Upsample { .. } => ("upsample", "copy".into()),
        Step::AvgPool { .. } => ("avg_pool", "scalar".into()),
        Step::Sinusoid { .. } | Step::Table { .. } => ("timestep embedding", "scalar".into()),
        Step::Attention { .. } => ("attention f32", format!("{} + {simd} softmax", k.sgemm().name)),
        Step::QConv { plan, groups, pre, .. } => (
            "conv u8×i8",
            format!(
                "{} ({}{}{})",
                k.qgemm().name,
                if *pre { "quantized by the norm, " } else { "" },
                if plan.is_direct() { "in place" } else { "gathered" },
                if groups.len() > 1 { format!(", {} input groups", groups.len()) } else { String::new() }
            ),
        ),
        Step::QConvT { .. } => ("conv_transpose u8×i8", k.qgemm().name.to_string()),
        Step::QAttention { .. } => ("attention u8×i8", format!("{} + {simd} softmax", k.qgemm().name)),
    }
}

/// Values read by more than one step, kept, or output: they must stay f32.
fn reader_counts(steps: &[Planned<'_>], g: &edadm_format::Graph, keep: &[ValueId]) -> Vec<usize> {
    let mut readers = vec![0usize; g.num_values as usize];
    for p in steps {
        for &v in &p.inputs {
            readers[v as usize] += 1;
        }
    }
    for o in &g.outputs {
        readers[o.value.0 as usize] += 1;
    }
    for v in keep {
        if let Some(r) = readers.get_mut(v.0 as usize) {
            *r += 1;
        }
    }
    readers
}

/// Fuses a GroupNorm (+ activation) with the quantization of the integer conv that is its only
/// reader (the conv1/conv2 of every residual block): the norm writes u8 in the conv's input
/// layout, the conv skips its quantization pass, the f32 tensor between them disappears. The
/// bytes are those of the separate norm and quantization (kernels' tests).
fn fuse_norm_quantize(
    steps: &mut [Planned<'_>],
    scratch: &mut [usize],
    slot_len: &mut [usize],
    g: &edadm_format::Graph,
    keep: &[ValueId],
) {
    let readers = reader_counts(steps, g, keep);
    for i in 0..steps.len() {
        let out = steps[i].out;
        if readers[out as usize] != 1 || !matches!(steps[i].step, Step::GroupNorm { .. }) {
            continue;
        }
        let Some(j) = (i + 1..steps.len()).find(|&j| steps[j].inputs.contains(&out)) else { continue };
        let (q, layout) = match &mut steps[j].step {
            Step::QConv { x, pre, groups, .. } if *x == out && groups.len() == 1 && !*pre => {
                *pre = true;
                (groups[0].q.clone(), groups[0].layout)
            }
            _ => continue,
        };
        let taken = std::mem::replace(&mut steps[i].step, Step::Act { x: 0, act: Activation::None });
        if let Step::GroupNorm { x, groups, eps, gamma, beta, act, .. } = taken {
            steps[i].step = Step::GroupNormQ { x, groups, eps, gamma, beta, act, q, layout };
        }
        let words = layout.len().div_ceil(4);
        slot_len[out as usize] = words;
        scratch[j] -= words;
    }
}

fn step_prepared_bytes(s: &Step<'_>) -> usize {
    let opt = |f: &Option<Floats<'_>>| f.as_ref().map_or(0, owned_len);
    match s {
        Step::Conv { parts, bias, .. } => parts.iter().map(|p| p.plan.packed_bytes()).sum::<usize>() + opt(bias),
        Step::ConvT { w, bias, .. } | Step::Linear { w, bias, .. } => w.len() * 4 + opt(bias),
        Step::GroupNorm { gamma, beta, .. }
        | Step::GroupNormQ { gamma, beta, .. }
        | Step::LayerNormChw { gamma, beta, .. }
        | Step::LayerNormChannel { gamma, beta, .. } => opt(gamma) + opt(beta),
        Step::Table { table, .. } => owned_len(table),
        Step::QConv { plan, bias, groups, .. } => {
            plan.packed_bytes() + opt(bias) + groups.iter().flat_map(|g| &g.scale).map(|s| s.len() * 4).sum::<usize>()
        }
        Step::QConvT { plan, bias, scale, .. } => {
            plan.packed_bytes() + opt(bias) + scale.iter().map(|s| s.len() * 4).sum::<usize>()
        }
        _ => 0,
    }
}

/// Greedy placement by size (largest first): each item goes to the lowest 16-aligned offset
/// free of every placed item whose lifetime `[first, last]` intersects its own.
fn assign_offsets(items: &[(usize, usize, usize)]) -> (Vec<usize>, usize) {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(items[i].0), i));
    let mut offsets = vec![0usize; items.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut total = 0usize;
    for i in order {
        let (len, f, l) = items[i];
        if len == 0 {
            continue;
        }
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| items[j].1 <= l && f <= items[j].2)
            .map(|&j| (offsets[j], offsets[j] + items[j].0))
            .collect();
        busy.sort_unstable();
        let mut off = 0usize;
        for (s, e) in busy {
            if off + len <= s {
                break;
            }
            off = off.max(e.next_multiple_of(16));
        }
        offsets[i] = off;
        total = total.max(off + len);
        placed.push(i);
    }
    (offsets, total.next_multiple_of(16))
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

/// One node's step, output shape and scratch need.
fn build_step<'m>(
    model: &'m Model,
    k: &Kernels,
    node: &Node,
    ins: &[&Vec<usize>],
    threads: usize,
) -> Result<(Step<'m>, Vec<usize>, usize)> {
    let v = |i: usize| node.inputs[i].0;
    let opt = |t: Option<TensorId>| t.map(|t| floats(model, t));
    Ok(match &node.op {
        Op::Conv2d(c) => return build_f32_weighted(model, k, node, ins, &floats(model, c.weight), threads),
        Op::ConvTranspose2d(c) => {
            let [n, ci, h, w] = rank4(node, ins[0], "ConvTranspose2d input")?;
            check_channels(node, ci, c.in_channels)?;
            let geom = ConvTransposeGeom {
                cin: ci,
                cout: c.out_channels as usize,
                h,
                w,
                kernel: c.kernel.map(|x| x as usize),
                stride: c.stride.map(|x| x as usize),
                padding: c.padding.map(|x| x as usize),
                output_padding: c.output_padding.map(|x| x as usize),
            };
            let [oh, ow] = geom.out_hw().ok_or_else(|| shape_err(node, "the padding removes the whole output"))?;
            let wf = floats(model, c.weight);
            let w = conv::pack_conv_transpose2d_weights(k, &wf, &geom);
            let scratch = conv::conv_transpose2d_scratch_len(k, &geom);
            (Step::ConvT { x: v(0), n, geom, w, bias: opt(c.bias) }, vec![n, geom.cout, oh, ow], scratch)
        }
        Op::Linear(l) => return build_f32_weighted(model, k, node, ins, &floats(model, l.weight), threads),
        Op::GroupNorm(gn) => {
            let [n, c, h, w] = rank4(node, ins[0], "GroupNorm input")?;
            check_channels(node, c, gn.channels)?;
            let step = Step::GroupNorm {
                x: v(0),
                n,
                c,
                hw: h * w,
                groups: gn.groups as usize,
                eps: gn.eps,
                gamma: opt(gn.weight),
                beta: opt(gn.bias),
                act: Activation::None,
            };
            (step, ins[0].clone(), 0)
        }
        Op::LayerNorm(ln) => match ln.axes {
            LayerNormAxes::ChannelSpatial => {
                let [n, c, h, w] = rank4(node, ins[0], "LayerNorm input")?;
                check_channels(node, c, ln.channels)?;
                if let Some(t) = ln.weight.or(ln.bias) {
                    let want = model.file().tensor(t).expect("validated").shape;
                    if want != [c as u64, h as u64, w as u64] {
                        return Err(shape_err(
                            node,
                            format!(
                                "LayerNorm over (C, H, W) has parameters {want:?}, the input is [{c}, {h}, {w}]: this model runs at one size only"
                            ),
                        ));
                    }
                }
                let step = Step::LayerNormChw {
                    x: v(0),
                    n,
                    len: c * h * w,
                    eps: ln.eps,
                    gamma: opt(ln.weight),
                    beta: opt(ln.bias),
                };
                (step, ins[0].clone(), 0)
            }
            LayerNormAxes::Channel => {
                let s = ins[0];
                let (n, c, positions, channels_last) = match s.as_slice() {
                    [n, c, h, w] => (*n, *c, h * w, false),
                    [n, l, c] => (*n, *c, *l, true),
                    [n, c] => (*n, *c, 1, true),
                    _ => return Err(shape_err(node, format!("LayerNorm of shape {s:?}"))),
                };
                check_channels(node, c, ln.channels)?;
                let step = Step::LayerNormChannel {
                    x: v(0),
                    n,
                    c,
                    positions,
                    channels_last,
                    eps: ln.eps,
                    gamma: opt(ln.weight),
                    beta: opt(ln.bias),
                };
                (step, s.clone(), 0)
            }
        },
        Op::Silu | Op::Relu | Op::Sigmoid | Op::Gelu(_) => {
            let act = act_of(&node.op).expect("activation op");
            (Step::Act { x: v(0), act }, ins[0].clone(), 0)
        }
        Op::Add | Op::Mul => {
            let (a, b) = (ins[0], ins[1]);
            let op = if matches!(node.op, Op::Add) { Binary::Add } else { Binary::Mul };
            let total: usize = a.iter().product();
            let (n, c, inner) = if a == b {
                (1, 1, total)
            } else if a.len() >= 3 && b.len() == 2 && a[..2] == b[..] {
                (a[0], a[1], a[2..].iter().product())
            } else {
                return Err(shape_err(node, format!("cannot combine shapes {a:?} and {b:?}")));
            };
            (Step::Binary { op, a: v(0), b: v(1), n, c, inner }, a.clone(), 0)
        }
        Op::Concat { axis } => {
            let axis = *axis as usize;
            let first = ins[0];
            if axis >= first.len() {
                return Err(shape_err(node, format!("concat axis {axis} of a rank-{} tensor", first.len())));
            }
            let mut out = first.clone();
            out[axis] = 0;
            let outer: usize = first[..axis].iter().product();
            let mut parts = Vec::new();
            let mut off = 0;
            for (i, s) in ins.iter().enumerate() {
                if s.len() != first.len() || s.iter().enumerate().any(|(d, &x)| d != axis && x != first[d]) {
                    return Err(shape_err(node, format!("cannot concatenate {first:?} and {s:?} along axis {axis}")));
                }
                let inner: usize = s[axis..].iter().product();
                parts.push((v(i), inner, off));
                off += inner;
                out[axis] += s[axis];
            }
            (Step::Concat { parts, total: off, outer }, out, 0)
        }
        Op::Pad(p) => {
            let [n, c, h, w] = rank4(node, ins[0], "Pad input")?;
            let (pad, value) = match p {
                Pad::Fixed { padding, value } => {
                    ([padding.top, padding.bottom, padding.left, padding.right].map(|x| x as usize), *value)
                }
                Pad::MatchSpatial => {
                    let [_, _, rh, rw] = rank4(node, ins[1], "Pad reference")?;
                    if rh < h || rw < w {
                        return Err(shape_err(node, format!("cannot pad {h}x{w} down to {rh}x{rw}")));
                    }
                    let (dh, dw) = (rh - h, rw - w);
                    ([dh / 2, dh - dh / 2, dw / 2, dw - dw / 2], 0.0)
                }
            };
            let (oh, ow) = (h + pad[0] + pad[1], w + pad[2] + pad[3]);
            (Step::Pad { x: v(0), planes: n * c, h, w, pad, value }, vec![n, c, oh, ow], 0)
        }
        Op::UpsampleNearest { scale } => {
            let [n, c, h, w] = rank4(node, ins[0], "UpsampleNearest input")?;
            let s = *scale as usize;
            (Step::Upsample { x: v(0), planes: n * c, h, w, s }, vec![n, c, h * s, w * s], 0)
        }
        Op::AvgPool2d(p) => {
            let [n, c, h, w] = rank4(node, ins[0], "AvgPool2d input")?;
            let (kernel, stride) = (p.kernel.map(|x| x as usize), p.stride.map(|x| x as usize));
            if kernel[0] > h || kernel[1] > w {
                return Err(shape_err(node, format!("a {kernel:?} window does not fit a {h}x{w} input")));
            }
            let (oh, ow) = ((h - kernel[0]) / stride[0] + 1, (w - kernel[1]) / stride[1] + 1);
            (Step::AvgPool { x: v(0), planes: n * c, h, w, kernel, stride }, vec![n, c, oh, ow], 0)
        }
        Op::TimestepEmbedding(te) => {
            let [n] = <[usize; 1]>::try_from(ins[0].as_slice())
                .map_err(|_| shape_err(node, format!("the timestep must be [N], got {:?}", ins[0])))?;
            let dim = te.dim() as usize;
            let step = match *te {
                TimestepEmbedding::Sinusoidal { order, denominator, max_period, .. } => Step::Sinusoid {
                    t: v(0),
                    dim,
                    order: match order {
                        SinusoidOrder::SinCos => KSinOrder::SinCos,
                        SinusoidOrder::CosSin => KSinOrder::CosSin,
                    },
                    half_minus_one: denominator == FreqDenominator::HalfMinusOne,
                    max_period,
                },
                TimestepEmbedding::Table { table, .. } => {
                    let rows = model.file().tensor(table).expect("validated").shape[0] as usize;
                    Step::Table { t: v(0), dim, rows, table: floats(model, table) }
                }
            };
            (step, vec![n, dim], 0)
        }
        Op::Attention(a) => {
            if a.layout != AttentionLayout::Spatial {
                return Err(unsupported(node, "attention over token sequences"));
            }
            let [n, c, h, w] = rank4(node, ins[0], "Attention q")?;
            check_channels(node, c, a.channels)?;
            if ins[1] != ins[0] || ins[2] != ins[0] {
                return Err(shape_err(node, format!("q, k, v shapes differ: {:?} {:?} {:?}", ins[0], ins[1], ins[2])));
            }
            let shape = AttentionShape { n, channels: c, heads: a.heads as usize, tokens: h * w, scale: a.scale };
            let scratch = shape.scratch_len_threads(k, threads);
            (Step::Attention { q: v(0), k: v(1), v: v(2), shape }, ins[0].clone(), scratch)
        }
    })
}

/// The integer weights of a quantized node, unpacked to one i8 per element.
fn int_weights<'m>(model: &'m Model, t: TensorId) -> Cow<'m, [i8]> {
    let v = model.file().tensor(t).expect("validated tensor reference");
    match v.dtype {
        DType::I8 => Cow::Borrowed(v.as_i8().expect("validated i8")),
        DType::I4 => {
            let mut out = vec![0i8; v.numel() as usize];
            edadm_kernels::qgemm::unpack_i4(v.data, &mut out);
            Cow::Owned(out)
        }
        other => unreachable!("quantized weight with dtype {other}"),
    }
}

fn kq(a: &edadm_format::graph::ActQuant) -> ActQ {
    ActQ { delta: a.delta, zero_point: a.zero_point, bits: a.bits }
}

/// Activation quantizer `slot` of node `ni`, one per time-step group.
fn kqs(model: &Model, ni: usize, slot: u32) -> Vec<ActQ> {
    model.graph().act_quants(ni, slot).expect("validated: every quantizer has its groups").iter().map(kq).collect()
}

/// Per group `[start, end)`, its weight scales.
fn quant_groups<'m>(model: &'m Model, w: &WeightQuant, cin: usize) -> Vec<(usize, usize, Floats<'m>)> {
    (0..w.groups.len())
        .map(|g| {
            let end = w.groups.get(g + 1).map_or(cin, |n| n.channel_start as usize);
            (w.groups[g].channel_start as usize, end, floats(model, w.groups[g].weight_scales))
        })
        .collect()
}

/// A quantized node's step (METHOD.md §4.3). A weighted node whose input stays f32 (the output
/// conv) runs in f32 on its dequantized weights.
fn build_quant_step<'m>(
    model: &'m Model,
    k: &Kernels,
    ni: usize,
    q: &NodeQuant,
    ins: &[&Vec<usize>],
    threads: usize,
) -> Result<(Step<'m>, Vec<usize>, usize)> {
    let node = &model.graph().nodes[ni];
    let v = |i: usize| node.inputs[i].0;
    let opt = |t: Option<TensorId>| t.map(|t| floats(model, t));
    match (q, &node.op) {
        (NodeQuant::Attention(aq), Op::Attention(a)) => {
            if a.layout != AttentionLayout::Spatial {
                return Err(unsupported(node, "quantized attention over token sequences"));
            }
            let [n, c, h, w] = rank4(node, ins[0], "Attention q")?;
            check_channels(node, c, a.channels)?;
            if ins[1] != ins[0] || ins[2] != ins[0] {
                return Err(shape_err(node, format!("q, k, v shapes differ: {:?} {:?} {:?}", ins[0], ins[1], ins[2])));
            }
            if [aq.q, aq.k, aq.v, aq.prob].iter().any(|x| x.bits != 8) {
                return Err(unsupported(node, "attention quantizers other than 8-bit"));
            }
            let qa = QAttention {
                n,
                channels: c,
                heads: a.heads as usize,
                tokens: h * w,
                scale: a.scale,
                scale_before: a.scale_placement == edadm_format::graph::ScalePlacement::BeforeQuantization,
                q: kq(&aq.q),
                k: kq(&aq.k),
                v: kq(&aq.v),
                p: kq(&aq.prob),
                key_tile: 256,
            };
            let scratch = qa.scratch_len_threads(k, threads);
            let [qs, ks, vs, ps] = [0, 1, 2, 3].map(|slot| kqs(model, ni, slot));
            let per_group =
                (0..qs.len()).map(|sg| QAttention { q: qs[sg], k: ks[sg], v: vs[sg], p: ps[sg], ..qa }).collect();
            Ok((Step::QAttention { q: v(0), k: v(1), v: v(2), a: per_group }, ins[0].clone(), scratch))
        }
        (NodeQuant::Weight(wq), op) => {
            let weight = op.weight().expect("validated: weighted op");
            let ints = int_weights(model, weight);
            if wq.groups[0].input.is_none() {
                // f32 input × dequantized weights.
                let (out_ch, per) = match op {
                    Op::Conv2d(c) => (c.out_channels as usize, ints.len() / c.out_channels as usize),
                    Op::Linear(l) => (l.out_features as usize, l.in_features as usize),
                    Op::ConvTranspose2d(_) => {
                        return Err(unsupported(node, "a transposed convolution with an unquantized input"));
                    }
                    _ => unreachable!("weighted op"),
                };
                let cin_row = match op {
                    Op::Conv2d(c) => (c.in_channels / c.groups) as usize,
                    _ => per,
                };
                let kk = per / cin_row.max(1);
                let groups = quant_groups(model, wq, cin_row);
                let mut wf = vec![0f32; ints.len()];
                for o in 0..out_ch {
                    for (s0, e0, sc) in &groups {
                        for i in s0 * kk..e0 * kk {
                            wf[o * per + i] = f32::from(ints[o * per + i]) * sc[o];
                        }
                    }
                }
                return build_f32_weighted(model, k, node, ins, &wf, threads);
            }
            if wq.groups.iter().any(|g| g.input.is_some_and(|a| a.bits != 8)) {
                return Err(unsupported(node, "input quantizers other than 8-bit"));
            }
            match op {
                Op::Conv2d(c) => {
                    let [n, ci, h, w] = rank4(node, ins[0], "Conv2d input")?;
                    check_channels(node, ci, c.in_channels)?;
                    if c.groups != 1 || c.dilation != [1, 1] {
                        return Err(unsupported(node, "a quantized grouped or dilated convolution"));
                    }
                    let geom = QConvGeom {
                        n,
                        cin: ci,
                        cout: c.out_channels as usize,
                        h,
                        w,
                        kernel: c.kernel.map(|x| x as usize),
                        stride: c.stride.map(|x| x as usize),
                        pad: [c.padding.top, c.padding.bottom, c.padding.left, c.padding.right].map(|x| x as usize),
                    };
                    qconv_step(k, ni, v(0), geom, &ints, model, wq, opt(c.bias), threads)
                }
                Op::Linear(l) => {
                    let s = ins[0];
                    if s.len() != 2 || s[1] != l.in_features as usize {
                        return Err(unsupported(
                            node,
                            format!("a quantized Linear over {s:?} (only [N, {}] is supported)", l.in_features),
                        ));
                    }
                    let geom = QConvGeom {
                        n: s[0],
                        cin: s[1],
                        cout: l.out_features as usize,
                        h: 1,
                        w: 1,
                        kernel: [1, 1],
                        stride: [1, 1],
                        pad: [0; 4],
                    };
                    let (step, _, scratch) = qconv_step(k, ni, v(0), geom, &ints, model, wq, opt(l.bias), threads)?;
                    Ok((step, vec![s[0], l.out_features as usize], scratch))
                }
                Op::ConvTranspose2d(c) => {
                    let [n, ci, h, w] = rank4(node, ins[0], "ConvTranspose2d input")?;
                    check_channels(node, ci, c.in_channels)?;
                    if wq.groups.len() != 1 {
                        return Err(unsupported(node, "a split transposed convolution"));
                    }
                    let geom = ConvTransposeGeom {
                        cin: ci,
                        cout: c.out_channels as usize,
                        h,
                        w,
                        kernel: c.kernel.map(|x| x as usize),
                        stride: c.stride.map(|x| x as usize),
                        padding: c.padding.map(|x| x as usize),
                        output_padding: c.output_padding.map(|x| x as usize),
                    };
                    let plan = qconv::QConvTranspose2dPlan::new(k, n, geom, &ints)
                        .ok_or_else(|| shape_err(node, "the transposed convolution has no output"))?;
                    let [oh, ow] = plan.out_hw();
                    let aq = kqs(model, ni, 0);
                    let sc = floats(model, wq.groups[0].weight_scales);
                    let scale = aq.iter().map(|a| sc.iter().map(|&d| d * a.delta).collect()).collect();
                    let scratch = plan.scratch_len(k) + plan.input_layout().len().div_ceil(4);
                    let step = Step::QConvT { x: v(0), plan, q: aq, scale, bias: opt(c.bias) };
                    Ok((step, vec![n, geom.cout, oh, ow], scratch))
                }
                _ => unreachable!("weighted op"),
            }
        }
        (NodeQuant::Attention(_), _) => Err(unsupported(node, "a quantization record that does not fit the op")),
    }
}

#[allow(clippy::too_many_arguments)]
fn qconv_step<'m>(
    k: &Kernels,
    ni: usize,
    x: u32,
    geom: QConvGeom,
    ints: &[i8],
    model: &'m Model,
    wq: &WeightQuant,
    bias: Option<Floats<'m>>,
    threads: usize,
) -> Result<(Step<'m>, Vec<usize>, usize)> {
    let node = &model.graph().nodes[ni];
    let groups = quant_groups(model, wq, geom.cin);
    let splits: Vec<usize> = groups.iter().map(|g| g.0).collect();
    let plan = qconv::QConv2dPlan::new(k, geom, ints, &splits).ok_or_else(|| {
        shape_err(node, format!("a {:?} kernel does not fit a {}x{} input", geom.kernel, geom.h, geom.w))
    })?;
    let [oh, ow] = plan.out_hw();
    let layouts: Vec<C4> = plan.input_layouts().copied().collect();
    let steps: Vec<QGroupStep> = groups
        .iter()
        .zip(layouts)
        .enumerate()
        .map(|(gi, ((s0, _, sc), layout))| {
            let q = kqs(model, ni, gi as u32);
            let scale = q.iter().map(|a| sc.iter().map(|&d| d * a.delta).collect()).collect();
            QGroupStep { ch0: *s0, q, scale, layout }
        })
        .collect();
    let scratch =
        plan.scratch_len_threads(k, threads) + steps.iter().map(|g| g.layout.len().div_ceil(4)).sum::<usize>();
    let step = Step::QConv { x, pre: false, cin: geom.cin, plan, groups: steps, bias };
    Ok((step, vec![geom.n, geom.cout, oh, ow], scratch))
}

/// A conv or linear node run in f32 with the weights `wf` (the file's, or dequantized ones for a
/// quantized node whose input stays f32).
fn build_f32_weighted<'m>(
    model: &'m Model,
    k: &Kernels,
    node: &Node,
    ins: &[&Vec<usize>],
    wf: &[f32],
    threads: usize,
) -> Result<(Step<'m>, Vec<usize>, usize)> {
    let v = |i: usize| node.inputs[i].0;
    let opt = |t: Option<TensorId>| t.map(|t| floats(model, t));
    match &node.op {
        Op::Conv2d(c) => {
            let [n, ci, h, w] = rank4(node, ins[0], "Conv2d input")?;
            check_channels(node, ci, c.in_channels)?;
            let geom = ConvGeom {
                c: (c.in_channels / c.groups) as usize,
                h,
                w,
                kernel: c.kernel.map(|x| x as usize),
                stride: c.stride.map(|x| x as usize),
                dilation: c.dilation.map(|x| x as usize),
                pad: [c.padding.top, c.padding.bottom, c.padding.left, c.padding.right].map(|x| x as usize),
                pad_value: 0.0,
            };
            let (cout, groups) = (c.out_channels as usize, c.groups as usize);
            // One part per thread, in whole GEMM row panels (one part for grouped convs).
            let nparts = if groups == 1 { threads.min(cout.div_ceil(k.sgemm().mr)).max(1) } else { 1 };
            let per_row = wf.len() / cout;
            let mut parts = Vec::with_capacity(nparts);
            let mut scratch = 0;
            for t in 0..nparts {
                let (r0, r1) = edadm_kernels::pool::split(cout, nparts, t, k.sgemm().mr);
                let rows = if groups == 1 { r1 - r0 } else { cout };
                let Some(plan) = conv::Conv2dPlan::new(k, geom, groups, rows, &wf[r0 * per_row..(r0 + rows) * per_row])
                else {
                    return Err(shape_err(node, format!("a {:?} kernel does not fit a {h}x{w} input", c.kernel)));
                };
                let len = plan.scratch_len(k).next_multiple_of(16);
                parts.push(ConvPart { r0, r1: r0 + rows, plan, scratch });
                scratch += len;
            }
            let [oh, ow] = parts[0].plan.out_hw();
            Ok((Step::Conv { x: v(0), n, cout, parts, bias: opt(c.bias) }, vec![n, cout, oh, ow], scratch))
        }
        Op::Linear(l) => {
            let s = ins[0];
            let (&last, lead) = s.split_last().ok_or_else(|| shape_err(node, "Linear of a scalar"))?;
            if lead.is_empty() || last != l.in_features as usize {
                return Err(shape_err(node, format!("Linear expects [.., {}], got {s:?}", l.in_features)));
            }
            let rows: usize = lead.iter().product();
            let (inf, outf) = (l.in_features as usize, l.out_features as usize);
            let mut wbuf = edadm_kernels::AlignedF32::zeros(k.sgemm().packed_a_len(outf, inf));
            edadm_kernels::gemm::pack_a(edadm_kernels::gemm::MatRef::row_major(wf, outf, inf), k.sgemm().mr, &mut wbuf);
            let mut out = lead.to_vec();
            out.push(outf);
            Ok((Step::Linear { x: v(0), rows, inf, outf, w: wbuf, bias: opt(l.bias) }, out, k.sgemm().scratch_len()))
        }
        _ => Err(unsupported(node, "an unquantized input on this op")),
    }
}

#[cfg(test)]
mod tests {
    use super::assign_offsets;

    #[test]
    fn offsets_never_overlap_for_intersecting_lifetimes() {
        let items = vec![(100, 0, 2), (50, 1, 3), (70, 3, 5), (10, 0, 5), (0, 0, 5), (33, 4, 4), (100, 5, 6)];
        let (off, total) = assign_offsets(&items);
        for i in 0..items.len() {
            assert_eq!(off[i] % 16, 0);
            assert!(off[i] + items[i].0 <= total);
            for j in 0..i {
                let live = items[i].1 <= items[j].2 && items[j].1 <= items[i].2;
                let disjoint = off[i] + items[i].0 <= off[j] || off[j] + items[j].0 <= off[i];
                assert!(!live || disjoint || items[i].0 == 0 || items[j].0 == 0, "{i} and {j} overlap");
            }
        }
        // Reuse: 7 items but far less than their sum.
        assert!(total < items.iter().map(|x| x.0.next_multiple_of(16)).sum::<usize>());
    }
}
