//! A session: a model planned for one batch size and image size, with its arena. Running it
//! performs no heap allocation.

use edadm_format::graph::{InputKindTag, ValueId};
use edadm_kernels::gemm::{BSrc, MatMut, MatRef, sgemm};
use edadm_kernels::ops::act::Activation;
use edadm_kernels::ops::attention::attention_spatial_par;
use edadm_kernels::ops::qconv::{self, Addend, QInput, QOutput};
use edadm_kernels::ops::{conv, elementwise as ew, norm, qattention, quant};
use edadm_kernels::pool::{self, Parallel, Pool, SharedMut};
use edadm_kernels::{AlignedF32, Kernels, Tier};

use crate::arena::{Reader, split};
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
    /// Threads that run each evaluation (the caller's and `threads − 1` workers of the
    /// session's pool). Results do not depend on it.
    pub threads: usize,
    /// Split every step between the threads, even those too small to gain from it (which
    /// otherwise run on the calling thread alone): for tests that the split changes no bit.
    pub split_small_steps: bool,
    /// Where the steps run.
    pub device: Device,
    /// Most bytes the session may hold beyond the mapped file (its arena and its prepared
    /// weights), checked after planning and before the arena is allocated; `None` for
    /// [`default_memory_limit`].
    pub max_memory: Option<usize>,
}

/// The memory limit of a session when none is given: three quarters of the machine's physical
/// memory (Linux: `MemTotal` of `/proc/meminfo`; 16 GiB where that cannot be read), and on Unix
/// at most three quarters of the process's address-space limit (`RLIMIT_AS`) when one is set.
pub fn default_memory_limit() -> usize {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        usize::try_from(kib.checked_mul(1024)?).ok()
    });
    let limit = total.map_or(16 << 30, |t| t / 4 * 3);
    #[cfg(unix)]
    {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut r) } == 0 && r.rlim_cur != libc::RLIM_INFINITY {
            return limit.min(usize::try_from(r.rlim_cur / 4 * 3).unwrap_or(usize::MAX));
        }
    }
    limit
}

/// `bytes` for people: `1.5 GiB`, `96.0 MiB`, `512 B`.
pub fn human_bytes(bytes: usize) -> String {
    let b = bytes as f64;
    match bytes {
        b_ if b_ >= 1 << 30 => format!("{:.1} GiB", b / (1u64 << 30) as f64),
        b_ if b_ >= 1 << 20 => format!("{:.1} MiB", b / (1u64 << 20) as f64),
        b_ if b_ >= 1 << 10 => format!("{:.1} KiB", b / 1024.0),
        _ => format!("{bytes} B"),
    }
}

/// Most images per evaluation a session plans for.
pub const MAX_BATCH: usize = 65_536;
/// Longest image side a session plans for.
pub const MAX_SIDE: usize = 16_384;
/// Most threads one session runs on.
pub const MAX_THREADS: usize = 1024;

/// Where a session's steps run: the backend seam. The CPU backend (this crate's executor over
/// `edadm-kernels`) is the only one built today; `Cuda` is refused with
/// [`RuntimeError::BackendUnavailable`] until a CUDA backend lands behind the `cuda` feature.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// The CPU kernels, tier chosen at run time.
    #[default]
    Cpu,
    /// An NVIDIA GPU (by CUDA ordinal).
    Cuda(u32),
}

impl Device {
    /// Parses `cpu`, `cuda` (ordinal 0) or `cuda:N`.
    pub fn parse(s: &str) -> Option<Device> {
        match s {
            "cpu" => Some(Device::Cpu),
            "cuda" => Some(Device::Cuda(0)),
            _ => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(Device::Cuda),
        }
    }
}

impl SessionOptions {
    /// A batch at the model's native size, best kernels.
    pub fn batch(batch: usize) -> Self {
        SessionOptions {
            batch,
            height: None,
            width: None,
            keep: Vec::new(),
            tier: None,
            threads: 1,
            split_small_steps: false,
            device: Device::Cpu,
            max_memory: None,
        }
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

/// What one step of a session's plan runs (for profiles and reports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepInfo {
    /// The graph node (the first of a fused pair).
    pub node: String,
    /// What the step computes, e.g. `conv u8×i8`, `group_norm+act`.
    pub op: &'static str,
    /// The kernel variant it runs on, e.g. `avx512vnni_qgemm_8x48 (in place)`.
    pub variant: String,
    /// Multiply-accumulates per evaluation (0 for ops without products).
    pub macs: u64,
}

/// A planned model, ready to evaluate.
#[derive(Debug)]
pub struct Session<'m> {
    model: &'m Model,
    kernels: Kernels,
    pool: Pool,
    plan: Plan<'m>,
    arena: AlignedF32,
    batch: usize,
    height: usize,
    width: usize,
    x: Slot,
    t: Option<Slot>,
    out: Slot,
    /// The time-step group of the current run (0 without a time-step table).
    group: usize,
}

impl<'m> Session<'m> {
    /// Plans `model` for `opts`: infers every shape, prepares the weights, lays out the arena
    /// and allocates it once.
    pub fn new(model: &'m Model, opts: &SessionOptions) -> Result<Session<'m>> {
        if let Device::Cuda(_) = opts.device {
            return Err(RuntimeError::BackendUnavailable {
                backend: "cuda",
                reason: "this build has no CUDA backend (none exists yet; run with --device cpu)".into(),
            });
        }
        let kernels = match opts.tier {
            Some(t) => Kernels::for_tier(t).ok_or(edadm_kernels::DispatchError::Unavailable(t.name()))?,
            None => edadm_kernels::select()?,
        };
        let [_, nh, nw] = model.sample_shape();
        let (height, width) = (opts.height.unwrap_or(nh), opts.width.unwrap_or(nw));
        if opts.threads == 0 || opts.threads > MAX_THREADS {
            return Err(RuntimeError::Session(format!("{} threads: 1 to {MAX_THREADS} per session", opts.threads)));
        }
        // Bounds before any size is computed from them (the planner's arithmetic then stays far
        // from overflow; the arena's own size is what it is).
        if opts.batch == 0 || opts.batch > MAX_BATCH {
            return Err(RuntimeError::Session(format!("batch {}: 1 to {MAX_BATCH} images per evaluation", opts.batch)));
        }
        if height == 0 || width == 0 || height > MAX_SIDE || width > MAX_SIDE {
            return Err(RuntimeError::Session(format!("{height}×{width} images: each side 1 to {MAX_SIDE}")));
        }
        let req = PlanRequest {
            batch: opts.batch,
            threads: opts.threads,
            height,
            width,
            keep: &opts.keep,
            split_small_steps: opts.split_small_steps,
        };
        let plan = Plan::build(model, &kernels, &req)?;
        let g = model.graph();
        let slot = |k| g.input(k).map(|i| plan.slots[i.value.0 as usize]);
        let x = slot(InputKindTag::Sample).expect("validated: the graph has a sample input");
        let t = slot(InputKindTag::Timestep);
        let out = plan.slots[model.output().value.0 as usize];
        let limit = opts.max_memory.unwrap_or_else(default_memory_limit);
        let arena_bytes = plan.arena_len.checked_mul(4);
        match arena_bytes.and_then(|a| a.checked_add(plan.prepared_bytes)) {
            Some(need) if need <= limit => {}
            need => {
                return Err(RuntimeError::Session(format!(
                    "batch {} at {height}×{width} needs {} ({} of activations, {} of prepared weights); \
                     the memory limit is {} (--max-memory)",
                    opts.batch,
                    need.map_or_else(|| "more than the address space".into(), human_bytes),
                    arena_bytes.map_or_else(|| "more than the address space".into(), human_bytes),
                    human_bytes(plan.prepared_bytes),
                    human_bytes(limit)
                )));
            }
        }
        let arena = AlignedF32::try_zeros(plan.arena_len).ok_or_else(|| {
            RuntimeError::Session(format!(
                "batch {} at {height}×{width}: cannot allocate its {} arena",
                opts.batch,
                human_bytes(plan.arena_len * 4)
            ))
        })?;
        let pool = Pool::new(opts.threads)
            .map_err(|e| RuntimeError::Session(format!("cannot start {} worker threads: {e}", opts.threads - 1)))?;
        Ok(Session { model, kernels, pool, plan, arena, batch: opts.batch, height, width, x, t, out, group: 0 })
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

    /// Threads each evaluation runs on.
    pub fn threads(&self) -> usize {
        self.pool.threads()
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

    /// The steps of one evaluation, in execution order.
    pub fn steps(&self) -> Vec<StepInfo> {
        let g = self.model.graph();
        self.plan
            .steps
            .iter()
            .map(|p| {
                let node = &g.nodes[p.node];
                let (op, variant) = crate::plan::step_variant(&p.step, &self.kernels);
                let macs = crate::plan::step_macs(node, &self.plan.shapes, &p.inputs, node.output.0);
                StepInfo { node: node.name.clone(), op, variant, macs }
            })
            .collect()
    }

    /// Number of steps of one evaluation (the length [`Session::run_profiled`] fills).
    pub fn num_steps(&self) -> usize {
        self.plan.steps.len()
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
        self.load(x, t)?;
        for si in 0..self.plan.steps.len() {
            self.exec(si)?;
        }
        Ok(self.output())
    }

    /// [`Session::run`], adding each step's wall time in nanoseconds to `nanos` (one entry per
    /// step, [`Session::num_steps`] long).
    pub fn run_profiled(&mut self, x: &[f32], t: &[f32], nanos: &mut [u64]) -> Result<&[f32]> {
        if nanos.len() != self.plan.steps.len() {
            return Err(RuntimeError::Input(format!(
                "{} step timers for {} steps",
                nanos.len(),
                self.plan.steps.len()
            )));
        }
        self.load(x, t)?;
        for (si, slot) in nanos.iter_mut().enumerate() {
            let t0 = std::time::Instant::now();
            self.exec(si)?;
            *slot += t0.elapsed().as_nanos() as u64;
        }
        Ok(self.output())
    }

    fn load(&mut self, x: &[f32], t: &[f32]) -> Result<()> {
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
                if let Some(sg) = &self.model.graph().step_groups {
                    let group = sg.group_of(t[0]);
                    if let Some(other) = t.iter().find(|&&v| sg.group_of(v) != group) {
                        return Err(RuntimeError::Input(format!(
                            "t = {} and t = {other} fall in different time-step groups of this model's \
                             activation quantizers; run them in separate batches",
                            t[0]
                        )));
                    }
                    self.group = group;
                }
            }
            None if !t.is_empty() => return Err(RuntimeError::Input("this model takes no timestep".into())),
            None => {}
        }
        Ok(())
    }

    fn exec(&mut self, si: usize) -> Result<()> {
        let planned = &self.plan.steps[si];
        let ni = planned.node;
        let slots = &self.plan.slots;
        let s = |v: u32| slots[v as usize];
        let k = &self.kernels;
        let pool: &dyn Parallel = if planned.serial { &pool::Serial } else { &self.pool };
        let sg = self.group;
        let (r, y, scratch) = split(&mut self.arena, s(planned.out), self.plan.scratch[si]);
        match &planned.step {
            Step::Conv { x, n, cout, parts, bias } => {
                let (xs, n, cout) = (r.get(s(*x)), *n, *cout);
                let (in_img, ohw) = (xs.len() / n, y.len() / (n * cout));
                let (ys, ss) = (SharedMut::new(y), SharedMut::new(scratch));
                let threads = pool.threads();
                pool.run(&|t| {
                    let (p0, p1) = pool::split(parts.len(), threads, t, 1);
                    for p in &parts[p0..p1] {
                        // SAFETY: parts have disjoint scratch and output-channel ranges.
                        let sc = unsafe { ss.part(p.scratch, p.scratch + p.plan.scratch_len(k)) };
                        let b = bias.as_deref().map(|b| &b[p.r0..p.r1]);
                        for img in 0..n {
                            // SAFETY: as above (rows r0..r1 of image img).
                            let yi = unsafe { ys.part((img * cout + p.r0) * ohw, (img * cout + p.r1) * ohw) };
                            conv::conv2d(k, &p.plan, &xs[img * in_img..(img + 1) * in_img], 1, b, yi, sc);
                        }
                    }
                });
            }
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
            Step::GroupNorm { x, n, c, hw, groups, eps, gamma, beta, act, .. } => norm::group_norm_par(
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
                pool,
            ),
            Step::GroupNormQ { x, groups, eps, gamma, beta, act, q, layout } => {
                let bytes: &mut [u8] = bytemuck::cast_slice_mut(y);
                quant::group_norm_quantize_c4_par(
                    k,
                    r.get(s(*x)),
                    *groups,
                    *eps,
                    gamma.as_deref(),
                    beta.as_deref(),
                    *act,
                    q[sg],
                    layout,
                    &mut bytes[..layout.len()],
                    pool,
                )
            }
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
                ew::binary_par(k, *op, r.get(s(*a)), r.get(s(*b)), *n, *c, *inner, y, pool)
            }
            Step::Concat { parts, total, outer, .. } => {
                let part = |i: usize| {
                    let (v, inner, off) = parts[i];
                    (r.get(s(v)), inner, off)
                };
                ew::concat_par(parts.len(), &part, *total, *outer, y, pool)
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
                attention_spatial_par(k, shape, r.get(s(*q)), r.get(s(*kk)), r.get(s(*v)), y, scratch, pool)
            }
            Step::QConv { x, pre: true, plan, groups, bias, add, .. } => {
                let g = &groups[0];
                let bytes: &[u8] = bytemuck::cast_slice(r.get(s(*x)));
                let qin =
                    [QInput { data: &bytes[..g.layout.len()], zero_point: g.q[sg].zero_point, scale: &g.scale[sg] }];
                qconv::qconv2d_par(k, plan, &qin, bias.as_deref(), conv_out(y, *add, &r, slots), scratch, pool)
            }
            Step::QConv { x, cin, plan, groups, bias, add, upsample, .. } => {
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
                    if *upsample > 1 {
                        quant::quantize_c4_upsampled_par(k, xs, *cin, g.ch0, *upsample, g.q[sg], &g.layout, mine, pool);
                    } else {
                        quant::quantize_c4_par(k, xs, *cin, g.ch0, Activation::None, g.q[sg], &g.layout, mine, pool);
                    }
                    qin[gi] = QInput { data: mine, zero_point: g.q[sg].zero_point, scale: &g.scale[sg] };
                }
                qconv::qconv2d_par(
                    k,
                    plan,
                    &qin[..groups.len()],
                    bias.as_deref(),
                    conv_out(y, *add, &r, slots),
                    scratch,
                    pool,
                )
            }
            Step::QConvT { x, plan, q, scale, bias } => {
                let layout = *plan.input_layout();
                let (qbuf, scratch) = scratch.split_at_mut(layout.len().div_ceil(4));
                let qbytes: &mut [u8] = &mut bytemuck::cast_slice_mut(qbuf)[..layout.len()];
                quant::quantize_c4_par(k, r.get(s(*x)), layout.c, 0, Activation::None, q[sg], &layout, qbytes, pool);
                let input = QInput { data: qbytes, zero_point: q[sg].zero_point, scale: &scale[sg] };
                qconv::qconv_transpose2d(k, plan, input, bias.as_deref(), QOutput::F32(y), scratch)
            }
            Step::QAttention { q, k: kk, v, a } => {
                qattention::qattention_par(k, &a[sg], r.get(s(*q)), r.get(s(*kk)), r.get(s(*v)), y, scratch, pool)
            }
        }
        Ok(())
    }
}

/// An integer conv's output, with the value fused into it (`plan::fuse::conv_add`) added.
fn conv_out<'a>(y: &'a mut [f32], add: Option<(u32, bool)>, r: &Reader<'a>, slots: &[Slot]) -> QOutput<'a> {
    match add {
        None => QOutput::F32(y),
        Some((v, true)) => QOutput::F32Add(y, Addend::Full(r.get(slots[v as usize]))),
        Some((v, false)) => QOutput::F32Add(y, Addend::PerChannel(r.get(slots[v as usize]))),
    }
}

impl crate::sampler::Denoiser for Session<'_> {
    fn batch(&self) -> usize {
        Session::batch(self)
    }
    fn sample_len(&self) -> usize {
        Session::sample_len(self)
    }
    fn prediction(&self) -> edadm_format::graph::Prediction {
        self.model().prediction()
    }
    fn eval(&mut self, x: &[f32], t: &[f32], out: &mut [f32]) -> Result<()> {
        out.copy_from_slice(self.run(x, t)?);
        Ok(())
    }
}
