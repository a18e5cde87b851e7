//! A session: a model planned for one batch size and image size, with its arena. Running it
//! performs no heap allocation.

use edadm_format::graph::{InputKindTag, ValueId};
use edadm_kernels::gemm::{BSrc, MatMut, MatRef, sgemm};
use edadm_kernels::ops::act::Activation;
use edadm_kernels::ops::attention::attention_spatial;
use edadm_kernels::ops::qconv::{self, QInput, QOutput};
use edadm_kernels::ops::{conv, elementwise as ew, norm, qattention, quant};
use edadm_kernels::{AlignedF32, Kernels, Tier};

use crate::arena::split;
use crate::error::{Result, RuntimeError};
use crate::model::Model;
use crate::plan::{Plan, PlanRequest, Slot, Step};

/// What to plan a session for.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Images per evaluation.
    pub batch: usize,
    /// Image height; `None` for the model's native height.
    pub height: Option<usize>,
    /// Image width; `None` for the model's native width.
    pub width: Option<usize>,
    /// Values to keep readable after a run (for inspecting intermediate feature maps).
    pub keep: Vec<ValueId>,
    /// Kernel tier; `None` for `EDADM_KERNELS` or the best this CPU has.
    pub tier: Option<Tier>,
}

impl SessionOptions {
    /// A batch at the model's native size, best kernels.
    pub fn batch(batch: usize) -> Self {
        SessionOptions { batch, height: None, width: None, keep: Vec::new(), tier: None }
    }
}

/// Memory a session holds beyond the mapped file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryReport {
    /// The arena: every activation and every kernel's scratch.
    pub arena_bytes: usize,
    /// Weights converted to f32 or packed for the kernels at plan time.
    pub prepared_bytes: usize,
    /// The model file (mapped, or held in memory).
    pub file_bytes: usize,
}

/// A planned model, ready to evaluate.
#[derive(Debug)]
pub struct Session<'m> {
    model: &'m Model,
    kernels: Kernels,
    plan: Plan<'m>,
    arena: AlignedF32,
    batch: usize,
    height: usize,
    width: usize,
    x: Slot,
    t: Option<Slot>,
    out: Slot,
}

impl<'m> Session<'m> {
    /// Plans `model` for `opts`: infers every shape, prepares the weights, lays out the arena
    /// and allocates it once.
    pub fn new(model: &'m Model, opts: &SessionOptions) -> Result<Session<'m>> {
        let kernels = match opts.tier {
            Some(t) => Kernels::for_tier(t).ok_or(edadm_kernels::DispatchError::Unavailable(t.name()))?,
            None => edadm_kernels::select()?,
        };
        let [_, nh, nw] = model.sample_shape();
        let (height, width) = (opts.height.unwrap_or(nh), opts.width.unwrap_or(nw));
        let req = PlanRequest { batch: opts.batch, height, width, keep: &opts.keep };
        let plan = Plan::build(model, &kernels, &req)?;
        let g = model.graph();
        let slot = |k| g.input(k).map(|i| plan.slots[i.value.0 as usize]);
        let x = slot(InputKindTag::Sample).expect("validated: the graph has a sample input");
        let t = slot(InputKindTag::Timestep);
        let out = plan.slots[model.output().value.0 as usize];
        let arena = AlignedF32::zeros(plan.arena_len);
        Ok(Session { model, kernels, plan, arena, batch: opts.batch, height, width, x, t, out })
    }

    /// The model.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// Images per evaluation.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// `[channels, height, width]` of one sample.
    pub fn sample_shape(&self) -> [usize; 3] {
        [self.model.sample_shape()[0], self.height, self.width]
    }

    /// Floats of one batch of samples (the length of `x` and of the output).
    pub fn sample_len(&self) -> usize {
        self.x.len
    }

    /// The kernels in use.
    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// Memory held by the session.
    pub fn memory(&self) -> MemoryReport {
        MemoryReport {
            arena_bytes: self.arena.len() * 4,
            prepared_bytes: self.plan.prepared_bytes,
            file_bytes: self.model.file().bytes().len(),
        }
    }

    /// Shape of a value for this session.
    pub fn value_shape(&self, v: ValueId) -> Option<&[usize]> {
        self.plan.shapes.get(v.0 as usize).map(Vec::as_slice)
    }

    /// The contents of a value after [`Session::run`]; meaningful for the graph output and for
    /// values listed in [`SessionOptions::keep`] (others may have been overwritten).
    pub fn value(&self, v: ValueId) -> Option<&[f32]> {
        let s = *self.plan.slots.get(v.0 as usize)?;
        Some(&self.arena[s.off..s.end()])
    }

    /// The network output of the last run, `[N, C, H, W]`.
    pub fn output(&self) -> &[f32] {
        &self.arena[self.out.off..self.out.end()]
    }

    /// One network evaluation: `x` is `[N, C, H, W]`, `t` is `[N]`. Returns the output.
    pub fn run(&mut self, x: &[f32], t: &[f32]) -> Result<&[f32]> {
        if x.len() != self.x.len {
            return Err(RuntimeError::Input(format!("x has {} floats, the session expects {}", x.len(), self.x.len)));
        }
        self.arena[self.x.off..self.x.end()].copy_from_slice(x);
        match self.t {
            Some(s) => {
                if t.len() != self.batch {
                    return Err(RuntimeError::Input(format!("t has {} values for a batch of {}", t.len(), self.batch)));
                }
                self.arena[s.off..s.end()].copy_from_slice(t);
            }
            None if !t.is_empty() => return Err(RuntimeError::Input("this model takes no timestep".into())),
            None => {}
        }
        for si in 0..self.plan.steps.len() {
            self.exec(si)?;
        }
        Ok(self.output())
    }

    fn exec(&mut self, si: usize) -> Result<()> {
        let planned = &self.plan.steps[si];
        let ni = planned.node;
        let slots = &self.plan.slots;
        let s = |v: u32| slots[v as usize];
        let k = &self.kernels;
        let (r, y, scratch) = split(&mut self.arena, s(planned.out), self.plan.scratch[si]);
        match &planned.step {
            Step::Conv { x, n, plan, bias } => conv::conv2d(k, plan, r.get(s(*x)), *n, bias.as_deref(), y, scratch),
            Step::ConvT { x, n, geom, w, bias, .. } => {
                conv::conv_transpose2d(k, r.get(s(*x)), *n, geom, w, bias.as_deref(), y, scratch)
            }
            Step::Linear { x, rows, inf, outf, w, bias, .. } => {
                // yᵀ[out, rows] = W[out, in] · xᵀ[in, rows].
                sgemm(
                    k.sgemm(),
                    *outf,
                    w,
                    BSrc::Mat(MatRef { data: r.get(s(*x)), rows: *inf, cols: *rows, rs: 1, cs: *inf }),
                    MatMut { data: y, rs: 1, cs: *outf },
                    bias.as_deref(),
                    false,
                    scratch,
                )
            }
            Step::GroupNorm { x, n, c, hw, groups, eps, gamma, beta, act, .. } => norm::group_norm(
                k,
                r.get(s(*x)),
                *n,
                *c,
                *hw,
                *groups,
                *eps,
                gamma.as_deref(),
                beta.as_deref(),
                *act,
                y,
            ),
            Step::LayerNormChw { x, n, len, eps, gamma, beta, .. } => norm::layer_norm_chw(
                k,
                r.get(s(*x)),
                *n,
                *len,
                *eps,
                gamma.as_deref(),
                beta.as_deref(),
                Activation::None,
                y,
            ),
            Step::LayerNormChannel { x, n, c, positions, channels_last, eps, gamma, beta, .. } => {
                norm::layer_norm_channel(
                    r.get(s(*x)),
                    *n,
                    *c,
                    *positions,
                    *channels_last,
                    *eps,
                    gamma.as_deref(),
                    beta.as_deref(),
                    y,
                )
            }
            Step::Act { x, act, .. } => edadm_kernels::ops::act::apply_to(k, *act, r.get(s(*x)), y),
            Step::Binary { op, a, b, n, c, inner, .. } => {
                ew::binary(k, *op, r.get(s(*a)), r.get(s(*b)), *n, *c, *inner, y)
            }
            Step::Concat { parts, total, outer, .. } => {
                for &(v, inner, off) in parts {
                    ew::concat_part(r.get(s(v)), inner, off, *total, *outer, y);
                }
            }
            Step::Pad { x, planes, h, w, pad, value, .. } => ew::pad(r.get(s(*x)), *planes, *h, *w, *pad, *value, y),
            Step::Upsample { x, planes, h, w, s: f, .. } => ew::upsample_nearest(r.get(s(*x)), *planes, *h, *w, *f, y),
            Step::AvgPool { x, planes, h, w, kernel, stride, .. } => {
                ew::avg_pool2d(r.get(s(*x)), *planes, *h, *w, *kernel, *stride, y)
            }
            Step::Sinusoid { t, dim, order, half_minus_one, max_period, .. } => {
                ew::timestep_sinusoid(r.get(s(*t)), *dim, *order, *half_minus_one, *max_period, y)
            }
            Step::Table { t, dim, rows, table, .. } => {
                for (row, &tv) in y.chunks_exact_mut(*dim).zip(r.get(s(*t))) {
                    if tv.fract() != 0.0 || tv < 0.0 || tv >= *rows as f32 {
                        return Err(RuntimeError::Input(format!(
                            "timestep {tv} is not an integer in [0, {rows}) as node {:?}'s embedding table needs",
                            self.model.graph().nodes[ni].name
                        )));
                    }
                    let i = tv as usize;
                    row.copy_from_slice(&table[i * dim..(i + 1) * dim]);
                }
            }
            Step::Attention { q, k: kk, v, shape, .. } => {
                attention_spatial(k, shape, r.get(s(*q)), r.get(s(*kk)), r.get(s(*v)), y, scratch)
            }
            Step::QConv { x, cin, plan, groups, bias } => {
                let xs = r.get(s(*x));
                let bytes: usize = groups.iter().map(|g| g.layout.len().div_ceil(4)).sum();
                let (qbuf, scratch) = scratch.split_at_mut(bytes);
                let mut qbytes: &mut [u8] = bytemuck::cast_slice_mut(qbuf);
                // At most 8 groups (format limit): no allocation.
                let mut qin = [QInput { data: &[], zero_point: 0, scale: &[] }; 8];
                for (gi, g) in groups.iter().enumerate() {
                    let (mine, rest) = std::mem::take(&mut qbytes).split_at_mut(g.layout.len().div_ceil(4) * 4);
                    qbytes = rest;
                    let mine = &mut mine[..g.layout.len()];
                    quant::quantize_c4(k, xs, *cin, g.ch0, Activation::None, g.q, &g.layout, mine);
                    qin[gi] = QInput { data: mine, zero_point: g.q.zero_point, scale: &g.scale };
                }
                qconv::qconv2d(k, plan, &qin[..groups.len()], bias.as_deref(), QOutput::F32(y), scratch)
            }
            Step::QConvT { x, plan, q, scale, bias } => {
                let layout = *plan.input_layout();
                let (qbuf, scratch) = scratch.split_at_mut(layout.len().div_ceil(4));
                let qbytes: &mut [u8] = &mut bytemuck::cast_slice_mut(qbuf)[..layout.len()];
                quant::quantize_c4(k, r.get(s(*x)), layout.c, 0, Activation::None, *q, &layout, qbytes);
                let input = QInput { data: qbytes, zero_point: q.zero_point, scale };
                qconv::qconv_transpose2d(k, plan, input, bias.as_deref(), QOutput::F32(y), scratch)
            }
            Step::QAttention { q, k: kk, v, a } => {
                qattention::qattention(k, a, r.get(s(*q)), r.get(s(*kk)), r.get(s(*v)), y, scratch)
            }
        }
        Ok(())
    }
}
