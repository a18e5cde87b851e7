//! Integer convolutions (METHOD.md §4.3): u8 activations in the [`C4`] layout × i8 weights →
//! exact i32 → `y = Δa·Δw[c]·(acc − zp·Σw[c]) + bias[c]` in f32.
//!
//! One plan covers a whole batch ([`ConvMode`]): stride-1 convolutions read every k-group
//! `(channel group, kh, kw)` in place from the zero-point-padded input — in tiles of whole
//! output rows where the output width is a multiple of the microkernel's NR, else over the
//! padded width (compacted afterwards) while the padded grid's extra columns stay within the
//! tier's `direct_limit`; the others gather their k-groups straight into the GEMM's packed
//! blocks.
//! A plan may split its input channels into groups (Q-Diffusion's split skip convolution), each quantized
//! with its own step and zero-point into its own buffer and multiplied by its own weight scales;
//! the groups accumulate into one result.

use crate::Kernels;
use crate::gemm::MatMut;
use crate::pool::{Parallel, Serial, SharedMut, split};
use crate::qgemm::{
    GatherB, PackedQ, QEpilogue, QgemmKernel, RowMap, qgemm, qgemm_gathered, qgemm_rows, qgemm_scratch_len,
};

use super::quant::C4;

mod transpose;
pub use transpose::{QConvTranspose2dPlan, qconv_transpose2d};

/// Where an integer convolution puts its result.
#[derive(Debug)]
pub enum QOutput<'a> {
    /// f32 `[N][cout][oh][ow]`.
    F32(&'a mut [f32]),
    /// f32 `[N][cout][oh][ow]` plus `add`, added in the pass that writes the output (a residual
    /// connection or a per-image channel offset fused into the convolution): the same f32 sums
    /// as [`QOutput::F32`] followed by a separate addition.
    F32Add(&'a mut [f32], Addend<'a>),
}

/// What [`QOutput::F32Add`] adds to the convolution's output.
#[derive(Clone, Copy, Debug)]
pub enum Addend<'a> {
    /// A tensor of the output's shape, element by element.
    Full(&'a [f32]),
    /// One value per image and output channel (`[N][cout]`), over all positions.
    PerChannel(&'a [f32]),
}

impl QOutput<'_> {
    /// Checks the output against `[n, c, oh, ow]`.
    fn check(&self, n: usize, c: usize, oh: usize, ow: usize) {
        match self {
            QOutput::F32(y) => assert!(y.len() >= n * c * oh * ow, "integer convolution output too short"),
            QOutput::F32Add(y, add) => {
                assert!(y.len() >= n * c * oh * ow, "integer convolution output too short");
                match add {
                    Addend::Full(a) => assert!(a.len() >= n * c * oh * ow, "added tensor too short"),
                    Addend::PerChannel(a) => assert!(a.len() >= n * c, "added channel values too short"),
                }
            }
        }
    }
}

/// One input-channel group of a [`QConv2dPlan`].
#[derive(Clone, Debug)]
struct QGroup {
    layout: C4,
    packed: PackedQ,
    offs: Vec<usize>,
}

/// Geometry of an integer 2-D convolution (no dilation, no conv groups).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QConvGeom {
    /// Images.
    pub n: usize,
    /// Input channels (all groups).
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel `[h, w]`.
    pub kernel: [usize; 2],
    /// Stride `[h, w]`.
    pub stride: [usize; 2],
    /// Padding `[top, bottom, left, right]`.
    pub pad: [usize; 4],
}

impl QConvGeom {
    /// Output `[h, w]`, or `None` when the kernel does not fit.
    pub fn out_hw(&self) -> Option<[usize; 2]> {
        let oh = (self.h + self.pad[0] + self.pad[1]).checked_sub(self.kernel[0])? / self.stride[0] + 1;
        let ow = (self.w + self.pad[2] + self.pad[3]).checked_sub(self.kernel[1])? / self.stride[1] + 1;
        Some([oh, ow])
    }
}

/// How an integer convolution reads its k-groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvMode {
    /// In place over the padded grid, whole output rows as tiles (stride 1, the output width a
    /// multiple of the kernel's NR): no extra column is computed and nothing is copied.
    Rows,
    /// In place over the padded grid's flat positions, computing the columns between rows and
    /// images too (stride 1, while those are few).
    Direct,
    /// Gathered (an implicit im2col) into the packed column blocks.
    Gathered,
}

/// An integer convolution prepared at plan time.
#[derive(Clone, Debug)]
pub struct QConv2dPlan {
    geom: QConvGeom,
    oh: usize,
    ow: usize,
    groups: Vec<QGroup>,
    /// Columns of the GEMM: flat positions over the padded input (stride 1) or outputs.
    n_cols: usize,
    mode: ConvMode,
    /// The microkernel the weights are packed for ([`Kernels::qgemm_for`]).
    kern: QgemmKernel,
}

impl QConv2dPlan {
    /// Plans the convolution of `geom` with weights `w` (`[cout][cin][kh][kw]`, i8), input
    /// channels split into groups starting at `splits` (`[0]` for one group). `None` if the
    /// kernel does not fit the input.
    pub fn new(k: &Kernels, geom: QConvGeom, w: &[i8], splits: &[usize]) -> Option<QConv2dPlan> {
        let [oh, ow] = geom.out_hw()?;
        let QConvGeom { n, cin, cout, kernel: [kh, kw], stride, pad, .. } = geom;
        assert_eq!(w.len(), cout * cin * kh * kw, "weights must be [cout][cin][kh][kw]");
        assert!(splits.first() == Some(&0) && splits.windows(2).all(|s| s[0] < s[1]) && splits.last() < Some(&cin));
        // Stride 1 reads k-groups in place over the padded grid, computing the columns between
        // rows and images too; gathering the k-groups of the real outputs costs a copy of K
        // bytes per output instead (into the packed blocks, from L2). The limit is the tier's
        // (`QgemmKernel::direct_limit`): on AVX-512 VNNI, with the gather then a separate pass,
        // direct won up to 30 % extra columns (16×16 at batch 8: 25 %, 8×8 at batch 1: 22 %),
        // gathering beyond (8×8 at batch 8: 52 %, 186 vs 140 G MAC/s); on AVX2, gathering into
        // the blocks wins from 15 % extra columns on. Where the in-place read is chosen and the
        // width allows, whole-row tiles (`ConvMode::Rows`) drop the extra columns (one core,
        // AVX2 7-bit kernel: 128 ch 32×32 batch 8 74/69 → 80/76 G MAC/s, 256 ch 16×16 batch 1
        // 77/58 → 84/79); against gathering (16×16 at batch 8) they measured level or slower.
        let (hp, wp) = (geom.h + pad[0] + pad[1], geom.w + pad[2] + pad[3]);
        let direct_cols = if n == 0 { 0 } else { (n - 1) * hp * wp + (oh - 1) * wp + ow };
        let kern = *k.qgemm_for(w);
        let mode = if stride != [1, 1] || direct_cols * 100 > n * oh * ow * kern.direct_limit {
            ConvMode::Gathered
        } else if ow.is_multiple_of(kern.nr) {
            ConvMode::Rows
        } else {
            ConvMode::Direct
        };
        let n_cols = if mode == ConvMode::Direct { direct_cols } else { n * oh * ow };
        let groups = splits
            .iter()
            .enumerate()
            .map(|(gi, &c0)| {
                let c1 = splits.get(gi + 1).copied().unwrap_or(cin);
                let layout = C4 { c: c1 - c0, n, h: geom.h, w: geom.w, pad };
                let cg4 = layout.groups();
                let kg = cg4 * kh * kw;
                // K order (channel group, kh, kw, channel in group); padded channels weigh 0.
                let mut mat = vec![0i8; cout * kg * 4];
                for co in 0..cout {
                    for g in 0..cg4 {
                        for i in 0..kh {
                            for j in 0..kw {
                                for t in 0..4 {
                                    let ci = c0 + 4 * g + t;
                                    if ci < c1 {
                                        mat[co * kg * 4 + ((g * kh + i) * kw + j) * 4 + t] =
                                            w[((co * cin + ci) * kh + i) * kw + j];
                                    }
                                }
                            }
                        }
                    }
                }
                let offs = (0..cg4)
                    .flat_map(|g| (0..kh).flat_map(move |i| (0..kw).map(move |j| (g, i, j))))
                    .enumerate()
                    .map(
                        |(kk, (g, i, j))| {
                            if mode == ConvMode::Gathered { kk * n_cols * 4 } else { layout.word(g, 0, i, j) }
                        },
                    )
                    .collect();
                QGroup { layout, packed: PackedQ::new(&kern, &mat, cout, kg), offs }
            })
            .collect();
        Some(QConv2dPlan { geom, oh, ow, groups, n_cols, mode, kern })
    }

    /// The layout each input group must be quantized into.
    pub fn input_layouts(&self) -> impl Iterator<Item = &C4> {
        self.groups.iter().map(|g| &g.layout)
    }

    /// Output `[h, w]`.
    pub fn out_hw(&self) -> [usize; 2] {
        [self.oh, self.ow]
    }

    /// Whether the k-groups are read in place (stride 1) rather than gathered into scratch.
    pub fn is_direct(&self) -> bool {
        self.mode != ConvMode::Gathered
    }

    /// How the k-groups are read.
    pub fn mode(&self) -> ConvMode {
        self.mode
    }

    /// Bytes of packed weights.
    pub fn packed_bytes(&self) -> usize {
        self.groups.iter().map(|g| g.packed.packed_bytes()).sum()
    }

    /// The microkernel it runs.
    pub fn kernel(&self) -> &QgemmKernel {
        &self.kern
    }

    /// Scratch floats [`qconv2d`] needs.
    pub fn scratch_len(&self, k: &Kernels) -> usize {
        self.scratch_len_threads(k, 1)
    }

    /// Scratch floats [`qconv2d_par`] needs on `threads` threads.
    pub fn scratch_len_threads(&self, _k: &Kernels, threads: usize) -> usize {
        let kg = self.groups.iter().map(|g| g.offs.len()).max().unwrap_or(0);
        qgemm_scratch_len(&self.kern, kg).next_multiple_of(16) * threads.max(1) + self.geom.cout * self.n_cols
    }
}

/// The k-groups of a convolution that is not read in place, gathered block by block straight
/// into [`qgemm_gathered`]'s packed tiles: k-group `(channel group, i, j)` of output position
/// `(b, oy, ox)` is the word at padded `(oy·s + i, ox·s + j)`.
struct ConvGather<'a> {
    l: &'a C4,
    data: &'a [u8],
    kernel: [usize; 2],
    stride: [usize; 2],
    out: [usize; 2],
    kg: usize,
}

impl GatherB for ConvGather<'_> {
    fn fill(&self, jb: usize, je: usize, nr: usize, block: &mut [u8]) {
        let ([kh, kw], [s0, s1], [oh, ow]) = (self.kernel, self.stride, self.out);
        let tile_bytes = 4 * self.kg * nr;
        for g in 0..self.kg {
            let (cg, r) = (g / (kh * kw), g % (kh * kw));
            let (i, j) = (r / kw, r % kw);
            let (mut b, rem) = (jb / (oh * ow), jb % (oh * ow));
            let (mut oy, mut ox) = (rem / ow, rem % ow);
            // Destination: tile `ti`, column `tp` within it.
            let (mut ti, mut tp) = (0, 0);
            let mut col = jb;
            while col < je {
                let run = (ow - ox).min(je - col);
                let row = self.l.word(cg, b, oy * s0 + i, j);
                let mut t = 0;
                while t < run {
                    let src = row + 4 * (ox + t) * s1;
                    let dst = ti * tile_bytes + g * 4 * nr + 4 * tp;
                    // Stride 1: the rest of the row that fits this tile is one contiguous run.
                    let len = if s1 == 1 { (run - t).min(nr - tp) } else { 1 };
                    if len == 1 {
                        let w: [u8; 4] = self.data[src..src + 4].try_into().expect("a word");
                        block[dst..dst + 4].copy_from_slice(&w);
                    } else {
                        block[dst..dst + 4 * len].copy_from_slice(&self.data[src..src + 4 * len]);
                    }
                    t += len;
                    tp += len;
                    if tp == nr {
                        tp = 0;
                        ti += 1;
                    }
                }
                col += run;
                ox += run;
                if ox == ow {
                    ox = 0;
                    oy += 1;
                    if oy == oh {
                        oy = 0;
                        b += 1;
                    }
                }
            }
        }
    }
}

/// One input group of [`qconv2d`]: its quantized buffer, zero-point and per-output-channel
/// `Δa·Δw[c]`.
#[derive(Clone, Copy, Debug)]
pub struct QInput<'a> {
    /// The activations in the group's [`C4`] layout.
    pub data: &'a [u8],
    /// Their zero-point.
    pub zero_point: u8,
    /// `Δa·Δw[c]` for every output channel.
    pub scale: &'a [f32],
}

/// Columns `j0..` of another gather (one thread's share of the columns).
struct Shifted<'a> {
    src: &'a dyn GatherB,
    j0: usize,
}

impl GatherB for Shifted<'_> {
    fn fill(&self, jb: usize, je: usize, nr: usize, block: &mut [u8]) {
        self.src.fill(self.j0 + jb, self.j0 + je, nr, block);
    }
}

/// Gathered convolutions with at least this many columns per thread split the columns between
/// the threads (each gathers only its own; every thread sweeps all rows), fewer split the rows
/// (each thread gathers every column for its rows).
const COLUMN_SPLIT_MIN: usize = 64;

/// `y[b, c] = Σ_groups Δa·Δw[c]·(acc − zp·Σw[c]) + bias[c]` for the whole batch, written to
/// `out` (f32 `[N][cout][oh][ow]`, or requantized).
pub fn qconv2d(
    k: &Kernels,
    plan: &QConv2dPlan,
    inputs: &[QInput<'_>],
    bias: Option<&[f32]>,
    out: QOutput<'_>,
    scratch: &mut [f32],
) {
    qconv2d_par(k, plan, inputs, bias, out, scratch, &Serial);
}

/// [`qconv2d`] on the threads of `par` (scratch: [`QConv2dPlan::scratch_len_threads`]): each
/// thread computes a contiguous range of output-channel panels over all positions (gathered
/// k-groups, when the convolution needs them, are split by k-group first). Every output is the
/// same i32 sum and epilogue whatever the split, so results are bit-identical for any thread
/// count.
pub fn qconv2d_par(
    k: &Kernels,
    plan: &QConv2dPlan,
    inputs: &[QInput<'_>],
    bias: Option<&[f32]>,
    out: QOutput<'_>,
    scratch: &mut [f32],
    par: &dyn Parallel,
) {
    let QConvGeom { n, cout, kernel: [kh, kw], stride, .. } = plan.geom;
    let (oh, ow, cols) = (plan.oh, plan.ow, plan.n_cols);
    assert_eq!(inputs.len(), plan.groups.len(), "one input per channel group");
    out.check(n, cout, oh, ow);
    let threads = par.threads();
    assert!(scratch.len() >= plan.scratch_len_threads(k, threads), "qconv2d scratch too short");
    let kern = &plan.kern;
    let kg_max = plan.groups.iter().map(|g| g.offs.len()).max().unwrap_or(0);
    let per = qgemm_scratch_len(kern, kg_max).next_multiple_of(16);
    let (gemm_scratch, rest) = scratch.split_at_mut(per * threads);
    let flat = &mut rest[..cout * cols];
    for (gi, (g, inp)) in plan.groups.iter().zip(inputs).enumerate() {
        assert_eq!(inp.data.len(), g.layout.len(), "input group {gi} has the wrong layout");
        assert!(inp.scale.len() >= cout, "scale per output channel");
    }
    let panels = cout.div_ceil(kern.mr);
    // Column parts of the threads in the gathered mode, in whole output rows (a compaction run
    // never crosses two parts): none for the in-place modes, or when there are too few columns.
    let split_cols = plan.mode == ConvMode::Gathered && threads > 1 && cols >= COLUMN_SPLIT_MIN * threads;
    let bounds = |t: usize| split(cols, threads, t, ow);
    let column_split = split_cols.then_some(&bounds);
    let gs = SharedMut::new(gemm_scratch);
    let fs = SharedMut::new(flat);
    // Rows (output channels) of thread t.
    let rows = |t: usize| {
        let (p0, p1) = split(panels, threads, t, 1);
        (p0, p1, (p0 * kern.mr).min(cout), (p1 * kern.mr).min(cout))
    };
    // Group gi's product for the rows of thread t, reading its k-groups in place or gathering
    // them into the packed blocks.
    let gemm = |t: usize, gi: usize, gather: Option<&ConvGather<'_>>| {
        let (p0, p1, r0, r1) = rows(t);
        if r0 == r1 {
            return;
        }
        let (g, inp) = (&plan.groups[gi], &inputs[gi]);
        let ep = QEpilogue {
            scale: Some(&inp.scale[r0..r1]),
            zero_point: i32::from(inp.zero_point),
            bias: if gi == 0 { bias.map(|b| &b[r0..r1]) } else { None },
            accumulate: gi > 0,
        };
        // SAFETY: thread t alone uses its scratch part and rows r0..r1 of `flat`.
        let (sc, c) = unsafe { (gs.part(t * per, (t + 1) * per), fs.part(r0 * cols, r1 * cols)) };
        let (a, c) = (g.packed.view().panels(kern, p0, p1), MatMut { data: c, rs: cols, cs: 1 });
        match gather {
            Some(src) => qgemm_gathered(kern, a, src, cols, c, &ep, sc),
            None if plan.mode == ConvMode::Rows => {
                let l = &g.layout;
                let rows = RowMap { len: ow, per_img: oh, row_stride: l.wp(), img_stride: l.hp() * l.wp() };
                qgemm_rows(kern, a, inp.data, &g.offs, rows, cols, c, &ep, sc)
            }
            None => qgemm(kern, a, inp.data, &g.offs, cols, c, &ep, sc),
        }
    };
    // The implicit im2col of input group `g`.
    let gather = |gi: usize| ConvGather {
        l: &plan.groups[gi].layout,
        data: inputs[gi].data,
        kernel: [kh, kw],
        stride,
        out: [oh, ow],
        kg: plan.groups[gi].offs.len(),
    };
    if plan.mode != ConvMode::Gathered {
        par.run(&|t| {
            for gi in 0..inputs.len() {
                gemm(t, gi, None);
            }
        });
    } else if let Some(bounds) = column_split {
        // Each thread gathers and multiplies its own columns for every row, into its own
        // `[cout][columns]` part of `flat` (one copy of K bytes per column in all).
        par.run(&|t| {
            let (j0, j1) = bounds(t);
            if j0 == j1 {
                return;
            }
            // SAFETY: thread t alone uses its scratch part and its part of `flat`.
            let (sc, c) = unsafe { (gs.part(t * per, (t + 1) * per), fs.part(cout * j0, cout * j1)) };
            for (gi, (g, inp)) in plan.groups.iter().zip(inputs).enumerate() {
                let src = gather(gi);
                let ep = QEpilogue {
                    scale: Some(&inp.scale[..cout]),
                    zero_point: i32::from(inp.zero_point),
                    bias: if gi == 0 { bias } else { None },
                    accumulate: gi > 0,
                };
                let a = g.packed.view().panels(kern, 0, panels);
                let c = MatMut { data: &mut c[..], rs: j1 - j0, cs: 1 };
                qgemm_gathered(kern, a, &Shifted { src: &src, j0 }, j1 - j0, c, &ep, sc);
            }
        });
    } else {
        // Every thread gathers the blocks of its own product (a copy of K bytes per column,
        // from L2 into L2) instead of one shared pass writing the whole K × columns matrix.
        par.run(&|t| {
            for gi in 0..inputs.len() {
                gemm(t, gi, Some(&gather(gi)));
            }
        });
    }
    // Compact the flat columns into [N][cout][oh][ow], or requantize them.
    let flat: &[f32] = &rest[..cout * cols];
    let l = &plan.groups[0].layout;
    let (img, row) = if plan.mode == ConvMode::Direct { (l.hp() * l.wp(), l.wp()) } else { (oh * ow, ow) };
    // Where the run of `len` columns from column `j` of row `c` lies in `flat` (the thread's
    // part holding them when the columns were split; runs never cross a part).
    let run = |c: usize, j: usize, len: usize| -> &[f32] {
        match column_split {
            Some(bounds) => {
                let t = (0..threads).find(|&t| bounds(t).1 > j).expect("column inside a part");
                let (j0, j1) = bounds(t);
                &flat[cout * j0 + c * (j1 - j0) + (j - j0)..][..len]
            }
            None => &flat[c * cols + j..][..len],
        }
    };
    let compact = |y: &mut [f32], add: Option<Addend<'_>>| {
        let ys = SharedMut::new(y);
        par.run(&|t| {
            let (_, _, c0, c1) = rows(t);
            for b in 0..n {
                // SAFETY: channel ranges are disjoint between threads.
                let yb = unsafe { ys.part((b * cout + c0) * oh * ow, (b * cout + c1) * oh * ow) };
                for c in c0..c1 {
                    for oy in 0..oh {
                        let dst = &mut yb[((c - c0) * oh + oy) * ow..][..ow];
                        let src = run(c, b * img + oy * row, ow);
                        match add {
                            None => dst.copy_from_slice(src),
                            Some(Addend::Full(a)) => {
                                let a = &a[((b * cout + c) * oh + oy) * ow..][..ow];
                                for ((d, &x), &z) in dst.iter_mut().zip(src).zip(a) {
                                    *d = x + z;
                                }
                            }
                            Some(Addend::PerChannel(a)) => {
                                let z = a[b * cout + c];
                                for (d, &x) in dst.iter_mut().zip(src) {
                                    *d = x + z;
                                }
                            }
                        }
                    }
                }
            }
        });
    };
    match out {
        QOutput::F32(y) => compact(y, None),
        QOutput::F32Add(y, add) => compact(y, Some(add)),
    }
}

#[cfg(test)]
mod tests;
