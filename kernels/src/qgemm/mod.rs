//! u8×i8 → i32 matrix multiplication with an f32 epilogue: the integer core of every quantized
//! convolution, linear layer and attention product (METHOD.md §4.3).
//!
//! `C[i, j] = scale[i]·f32(Σ_k A[i, k]·B[k, j] − corr[i]) + bias[i]` (optionally added to `C`),
//! `A` the signed 8-bit weights, `B` unsigned 8-bit activations, the sum exact in i32.
//!
//! **Layouts.** `K` runs in groups of four ("k-groups"). `B` is read in place: k-group `g` of
//! column `j` is the four bytes at `b[offs[g] + 4j ..]` — the channel-interleaved activation
//! layout `[C/4][positions][4]` makes every k-group of a stride-1 convolution such a run (see
//! `ops::qconv`). `A` is packed once at plan time in the format of the tier's microkernel.
//!
//! **Exactness.** There is no blocking over `K`: each output is one i32 sum, converted once
//! (round to nearest), multiplied by `scale`, then `bias` and the old value added, in that order
//! and without fused multiply-add on every tier — so all tiers give bit-identical outputs.
//! Tiers whose instructions need signed operands (NEON) compute with `b − 128`; they report
//! `b_offset = 128` and the zero-point correction absorbs it.

use crate::AlignedF32;

/// How the weights are packed for a microkernel (`MR` rows per panel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AFormat {
    /// `[panel][kg][MR][4]` i8.
    I8x4,
    /// `[panel][kg][MR][4]` i16 (weights widened for `vpmaddwd`).
    I16x4,
    /// `[panel][kg/2][MR/2][2][8]` i8: pairs of rows × 8 consecutive K (`smmla`); an odd last
    /// k-group is padded with zero weights.
    I8x8,
}

/// Per-row epilogue parameters of one tile (rows past `MR` unused).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct QTile {
    /// `Δa·Δw[row]`.
    pub scale: [f32; 16],
    /// `(zp − b_offset)·Σ_k w[row, k]`.
    pub corr: [i32; 16],
    /// Bias (0 when none).
    pub bias: [f32; 16],
    /// Write `acc − corr` as i32 bit patterns (added as i32 when accumulating) instead of the
    /// f32 epilogue: for products whose corrections depend on the column (attention).
    pub raw: bool,
}

/// A microkernel: for `i < MR`, `j < NR`,
/// `acc = Σ_{g<kg} Σ_{t<4} a(g, i, t)·(b[b_offs[g] + 4j + t] − b_offset)` (exact i32) and
/// `c[i·ldc + j] = (tile.scale[i]·f32(acc − tile.corr[i]) + tile.bias[i]) + (accumulate ? c : 0)`,
/// or with `tile.raw` the i32 `(acc − tile.corr[i]) + (accumulate ? c : 0)` stored as its bits.
///
/// # Safety
/// `a` holds the packed panel (`kg` k-groups in the kernel's [`AFormat`]), `b_offs` `kg`
/// offsets with `4·NR` readable bytes at each `b + b_offs[g]`, `tile` is valid, and `c` is
/// readable and writable at every `i·ldc + j`.
pub type QgemmUkr = unsafe fn(
    kg: usize,
    a: *const u8,
    b: *const u8,
    b_offs: *const usize,
    c: *mut f32,
    ldc: usize,
    tile: *const QTile,
    accumulate: bool,
);

/// A u8×i8 microkernel with its shape.
#[derive(Clone, Copy, Debug)]
pub struct QgemmKernel {
    /// Name for reports, e.g. `avx512vnni_qgemm_8x48`.
    pub name: &'static str,
    /// Rows of the tile (weights' output channels).
    pub mr: usize,
    /// Columns of the tile (positions).
    pub nr: usize,
    /// Packing of `A`.
    pub a_format: AFormat,
    /// 0 when the kernel multiplies `b` as unsigned, 128 when it uses `b − 128`.
    pub b_offset: i32,
    /// The microkernel.
    pub ukr: QgemmUkr,
    /// `g·4·NR` for `g <` [`MAX_KG`]: the k-group offsets of a packed panel.
    pub panel_offsets: &'static [usize; MAX_KG],
    /// A narrower microkernel on the same packed `A`, for the columns past the last full
    /// `NR` panel (wide tiles would compute up to `NR − 1` wasted columns: a 4×4 image at
    /// batch 1 fills a third of a 48-wide tile).
    pub narrow: Option<Narrow>,
    /// A stride-1 convolution reads its k-groups in place (computing the padded grid's extra
    /// columns between rows and images) while those are at most this many per 100 output
    /// columns, and gathers them into the packed blocks beyond: 100 gathers every spatial
    /// convolution. Measured per tier (kernels/README.md).
    pub direct_limit: usize,
}

/// A microkernel of `nr` columns sharing its parent's `MR` and `A` format.
#[derive(Clone, Copy, Debug)]
pub struct Narrow {
    /// Columns of its tile.
    pub nr: usize,
    /// The microkernel (the [`QgemmUkr`] contract with `NR = nr`).
    pub ukr: QgemmUkr,
}

/// Most k-groups a [`qgemm`] may have (K ≤ 32768; Stable Diffusion's widest 3×3 convolution has
/// K = 23040).
pub const MAX_KG: usize = 8192;

/// `[0, 4·NR, 8·NR, …]` for [`QgemmKernel::panel_offsets`].
pub const fn q_panel_offsets<const NR: usize>() -> [usize; MAX_KG] {
    let mut t = [0; MAX_KG];
    let mut i = 0;
    while i < MAX_KG {
        t[i] = i * 4 * NR;
        i += 1;
    }
    t
}

/// Unpacks 4-bit weights (the `.edq` `i4` dtype: two's complement nibbles, element `2i` in the
/// low nibble of byte `i`, `2i + 1` in the high one) into `out.len()` i8 values.
///
/// 4-bit weights are unpacked once, at plan time, into the tier's i8 panels: against two
/// AVX-512 VNNI microkernels that unpack nibble panels in registers, the unpacked panels were
/// faster on every CIFAR-10 UNet shape (benches `int4_weights`, kernels/README.md).
pub fn unpack_i4(packed: &[u8], out: &mut [i8]) {
    assert_eq!(packed.len(), out.len().div_ceil(2), "i4: {} bytes cannot hold {} elements", packed.len(), out.len());
    for (pair, &b) in out.chunks_mut(2).zip(packed) {
        // Shift the nibble to the top and back: an arithmetic shift sign-extends it.
        pair[0] = ((b << 4) as i8) >> 4;
        if let Some(hi) = pair.get_mut(1) {
            *hi = (b as i8) >> 4;
        }
    }
}

/// Bytes of `A` packed for `kern` (`m` rows, `kg` k-groups).
pub fn packed_q_len(kern: &QgemmKernel, m: usize, kg: usize) -> usize {
    let panels = m.div_ceil(kern.mr);
    match kern.a_format {
        AFormat::I8x4 => panels * kg * kern.mr * 4,
        AFormat::I16x4 => panels * kg * kern.mr * 8,
        AFormat::I8x8 => panels * kg.div_ceil(2) * kern.mr * 8,
    }
}

/// Packs `m` rows of `kg` k-groups for `kern` into `out` (`packed_q_len` bytes), element
/// `(r, k)` read by `at`, and writes the row sums `Σ_k at(r, k)` into `sums`. Allocation-free:
/// attention packs its run-time operands with it.
pub fn pack_q_into(
    kern: &QgemmKernel,
    m: usize,
    kg: usize,
    at: impl Fn(usize, usize) -> i8,
    out: &mut [u8],
    sums: &mut [i32],
) {
    let mr = kern.mr;
    assert_eq!(out.len(), packed_q_len(kern, m, kg), "packed A length");
    assert!(sums.len() >= m, "row sums");
    let sums = &mut sums[..m];
    sums.fill(0);
    if kg == 0 {
        return;
    }
    // One pass, rows past `m` zero, the row sums accumulated alongside (attention packs its
    // operands per head and query tile with this: no per-byte closure or branch on the format).
    match kern.a_format {
        AFormat::I8x4 | AFormat::I16x4 => {
            let width = if kern.a_format == AFormat::I16x4 { 2 } else { 1 };
            for (pi, panel) in out.chunks_exact_mut(kg * mr * 4 * width).enumerate() {
                for (g, block) in panel.chunks_exact_mut(mr * 4 * width).enumerate() {
                    for (i, cell) in block.chunks_exact_mut(4 * width).enumerate() {
                        let r = pi * mr + i;
                        if r >= m {
                            cell.fill(0);
                            continue;
                        }
                        let k = 4 * g;
                        let v = [at(r, k), at(r, k + 1), at(r, k + 2), at(r, k + 3)];
                        sums[r] += v.iter().map(|&x| i32::from(x)).sum::<i32>();
                        if width == 2 {
                            for (o, x) in cell.chunks_exact_mut(2).zip(v) {
                                o.copy_from_slice(&i16::from(x).to_le_bytes());
                            }
                        } else {
                            for (o, x) in cell.iter_mut().zip(v) {
                                *o = x as u8;
                            }
                        }
                    }
                }
            }
        }
        AFormat::I8x8 => {
            let mut o = 0;
            for p in 0..m.div_ceil(mr) {
                for g2 in 0..kg.div_ceil(2) {
                    for pair in 0..mr / 2 {
                        for r in [p * mr + pair * 2, p * mr + pair * 2 + 1] {
                            for t in 0..8 {
                                let k = g2 * 8 + t;
                                let v = if r < m && k < kg * 4 { at(r, k) } else { 0 };
                                if r < m {
                                    sums[r] += i32::from(v);
                                }
                                out[o] = v as u8;
                                o += 1;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Where element `(i, k)` of row panel `p` lands in `kern`'s packed A (an element index; bytes
/// are this times [`a_width`]), for `kg` k-groups.
#[inline(always)]
fn a_index(kern: &QgemmKernel, kg: usize, p: usize, i: usize, k: usize) -> usize {
    let mr = kern.mr;
    match kern.a_format {
        AFormat::I8x4 | AFormat::I16x4 => ((p * kg + k / 4) * mr + i) * 4 + k % 4,
        AFormat::I8x8 => ((p * kg.div_ceil(2) + k / 8) * (mr / 2) + i / 2) * 16 + (i % 2) * 8 + k % 8,
    }
}

/// Bytes per packed element.
fn a_width(kern: &QgemmKernel) -> usize {
    if kern.a_format == AFormat::I16x4 { 2 } else { 1 }
}

/// Packs `A[r][k] = src[r·rs + k·ks] − 128` for `r < m`, `k < kvalid` (zero elsewhere, up to
/// `kg` k-groups) from unsigned bytes — attention's quantized q, k and v, row-major (`ks = 1`)
/// or channel-major (`rs = 1`) — with the row sums, in one pass without per-element calls.
#[allow(clippy::too_many_arguments)]
pub fn pack_q_u8(
    kern: &QgemmKernel,
    m: usize,
    kg: usize,
    src: &[u8],
    rs: usize,
    ks: usize,
    kvalid: usize,
    out: &mut [u8],
    sums: &mut [i32],
) {
    assert_eq!(out.len(), packed_q_len(kern, m, kg), "packed A length");
    assert!(sums.len() >= m && kvalid <= kg * 4, "row sums");
    if m == 0 || kvalid == 0 {
        out.fill(0);
        sums[..m].fill(0);
        return;
    }
    assert!((m - 1) * rs + (kvalid - 1) * ks < src.len(), "packed A source too short");
    out.fill(0);
    sums[..m].fill(0);
    let x4 = rs == 1 || ks == 1;
    match kern.a_format {
        AFormat::I16x4 if x4 => pack_u8_x4::<2>(kern.mr, m, kg, src, rs, ks, kvalid, out, sums),
        AFormat::I8x4 if x4 => pack_u8_x4::<1>(kern.mr, m, kg, src, rs, ks, kvalid, out, sums),
        _ => {
            let w = a_width(kern);
            for (p, r0) in (0..m).step_by(kern.mr).enumerate() {
                for i in 0..(m - r0).min(kern.mr) {
                    for k in 0..kvalid {
                        sums[r0 + i] += put_a(out, a_index(kern, kg, p, i, k), w, src[(r0 + i) * rs + k * ks]);
                    }
                }
            }
        }
    }
}

/// Writes `b − 128` as packed element `at` (`w` bytes wide) and returns it.
#[inline(always)]
fn put_a(out: &mut [u8], at: usize, w: usize, b: u8) -> i32 {
    let v = i16::from(b) - 128;
    if w == 2 {
        out[at * 2..at * 2 + 2].copy_from_slice(&v.to_le_bytes());
    } else {
        out[at] = v as i8 as u8;
    }
    i32::from(v)
}

/// [`pack_q_u8`] for the `[panel][kg][MR][4]` formats (`W` bytes per element), row-major
/// (`ks = 1`: four consecutive bytes per k-group of a row) or else channel-major (`rs = 1`: the
/// rows of a panel consecutive for each k) sources; `out` and `sums` zeroed by the caller.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pack_u8_x4<const W: usize>(
    mr: usize,
    m: usize,
    kg: usize,
    src: &[u8],
    rs: usize,
    ks: usize,
    kvalid: usize,
    out: &mut [u8],
    sums: &mut [i32],
) {
    let put = |out: &mut [u8], at: usize, b: u8| put_a(out, at, W, b);
    for (p, r0) in (0..m).step_by(mr).enumerate() {
        let rows = (m - r0).min(mr);
        let panel = p * kg * mr * 4;
        if ks == 1 {
            for i in 0..rows {
                let row = &src[(r0 + i) * rs..(r0 + i) * rs + kvalid];
                let mut sum = 0;
                for (k, &b) in row.iter().enumerate() {
                    sum += put(out, panel + (k / 4 * mr + i) * 4 + k % 4, b);
                }
                sums[r0 + i] = sum;
            }
        } else {
            for k in 0..kvalid {
                let col = &src[k * ks + r0..k * ks + r0 + rows];
                let base = panel + k / 4 * mr * 4 + k % 4;
                for (i, &b) in col.iter().enumerate() {
                    sums[r0 + i] += put(out, base + i * 4, b);
                }
            }
        }
    }
}

/// Packed weights borrowed from anywhere (a [`PackedQ`], or scratch filled by
/// [`pack_q_into`]).
#[derive(Clone, Copy, Debug)]
pub struct PackedQRef<'a> {
    /// The packed bytes.
    pub data: &'a [u8],
    /// Row sums.
    pub sums: &'a [i32],
    /// Rows.
    pub m: usize,
    /// K-groups.
    pub kg: usize,
}

impl<'a> PackedQRef<'a> {
    /// Row panels `p0..p1` (rows `p0·MR ..`), for splitting a product between threads.
    pub fn panels(&self, kern: &QgemmKernel, p0: usize, p1: usize) -> PackedQRef<'a> {
        let per = packed_q_len(kern, kern.mr, self.kg);
        let (r0, r1) = ((p0 * kern.mr).min(self.m), (p1 * kern.mr).min(self.m));
        PackedQRef {
            data: &self.data[p0 * per..p0 * per + (r1 - r0).div_ceil(kern.mr) * per],
            sums: &self.sums[r0..r1],
            m: r1 - r0,
            kg: self.kg,
        }
    }
}

/// Weights packed for one [`QgemmKernel`], with their row sums.
#[derive(Clone, Debug)]
pub struct PackedQ {
    data: AlignedF32,
    bytes: usize,
    m: usize,
    kg: usize,
    sums: Vec<i32>,
}

impl PackedQ {
    /// Packs `w`, row-major `m × 4·kg` i8 (K in k-groups), for `kern`.
    pub fn new(kern: &QgemmKernel, w: &[i8], m: usize, kg: usize) -> PackedQ {
        assert_eq!(w.len(), m * kg * 4, "weights must be m × 4·kg");
        let n = packed_q_len(kern, m, kg);
        let mut data = AlignedF32::zeros(n.div_ceil(4));
        let mut sums = vec![0i32; m];
        pack_q_into(
            kern,
            m,
            kg,
            |r, k| w[r * kg * 4 + k],
            &mut bytemuck::cast_slice_mut::<f32, u8>(&mut data)[..n],
            &mut sums,
        );
        PackedQ { data, bytes: n, m, kg, sums }
    }

    /// A borrowed view for [`qgemm`].
    pub fn view(&self) -> PackedQRef<'_> {
        PackedQRef {
            data: &bytemuck::cast_slice::<f32, u8>(&self.data)[..self.bytes],
            sums: &self.sums,
            m: self.m,
            kg: self.kg,
        }
    }

    /// Rows.
    pub fn m(&self) -> usize {
        self.m
    }

    /// K-groups.
    pub fn kg(&self) -> usize {
        self.kg
    }

    /// `Σ_k w[row, k]` of every row.
    pub fn sums(&self) -> &[i32] {
        &self.sums
    }

    /// Bytes of packed weights.
    pub fn packed_bytes(&self) -> usize {
        self.bytes
    }
}

/// The epilogue of one [`qgemm`]: `C = scale·(acc − zp_term) + bias`, or the raw i32
/// `acc − zp_term` (stored as bits in the f32 buffer) when `scale` is `None`.
#[derive(Clone, Copy, Debug)]
pub struct QEpilogue<'a> {
    /// `Δa·Δw[row]` per row; `None` for raw i32 output.
    pub scale: Option<&'a [f32]>,
    /// Zero-point of the activations `B`.
    pub zero_point: i32,
    /// Bias per row.
    pub bias: Option<&'a [f32]>,
    /// Add into `C` instead of overwriting it.
    pub accumulate: bool,
}

/// Scratch (f32 elements) [`qgemm`] needs for `kg` k-groups: one packed block of `B`
/// ([`pack_tiles`] column tiles) and a tile.
pub fn qgemm_scratch_len(kern: &QgemmKernel, kg: usize) -> usize {
    // `pack_tiles · 4·kg·NR` never exceeds this bound, which grows with `kg` (callers size one
    // scratch for their largest product).
    PACK_BUDGET.max(4 * kg * kern.nr).div_ceil(4) + 16 * kern.nr
}

/// Column tiles of `B` packed together: as many as fit [`PACK_BUDGET`], at least one.
fn pack_tiles(kern: &QgemmKernel, kg: usize) -> usize {
    (PACK_BUDGET / (4 * kg * kern.nr).max(1)).max(1)
}

/// `C[i, j] (+)= scale[i]·(Σ_k A[i, k]·B[k, j] − zp·Σ_k A[i, k]) + bias[i]` for `n` columns,
/// k-group `g` of column `j` at `b[offs[g] + 4j ..]`. `C` is row-major (`c.cs == 1`). Column
/// blocks are packed into `scratch` first (zeros past `n`), so no read runs past `offs[g] + 4n`.
pub fn qgemm(
    kern: &QgemmKernel,
    a: PackedQRef<'_>,
    b: &[u8],
    offs: &[usize],
    n: usize,
    c: crate::gemm::MatMut<'_>,
    ep: &QEpilogue<'_>,
    scratch: &mut [f32],
) {
    assert_eq!(offs.len(), a.kg, "one offset per k-group");
    if a.m > 0 && n > 0 {
        assert!(offs.iter().all(|&o| o + 4 * n <= b.len()), "a k-group of B runs past its buffer");
    }
    qgemm_from(kern, a, Src::Offsets(b, offs), n, c, ep, scratch);
}

/// Columns that are whole output rows of a stride-1 convolution read in place: compact column
/// `j` (row `r = j / len`, image `r / per_img`, row `r % per_img` in it) is padded-grid column
/// `(r / per_img)·img_stride + (r % per_img)·row_stride + j % len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowMap {
    /// Columns per row (the output width); a multiple of the kernel's NR.
    pub len: usize,
    /// Rows per image.
    pub per_img: usize,
    /// Padded-grid columns from one row to the next.
    pub row_stride: usize,
    /// Padded-grid columns from one image to the next.
    pub img_stride: usize,
}

impl RowMap {
    /// The padded-grid column of compact column `j`.
    pub fn padded(&self, j: usize) -> usize {
        let r = j / self.len;
        (r / self.per_img) * self.img_stride + (r % self.per_img) * self.row_stride + j % self.len
    }
}

/// [`qgemm`] over the `n` compact columns of `rows` (a multiple of its row length): B is read
/// in place at the padded-grid column [`RowMap::padded`] — no column between rows or images is
/// computed, and no tile straddles two rows (`rows.len` is a multiple of NR).
#[allow(clippy::too_many_arguments)]
pub fn qgemm_rows(
    kern: &QgemmKernel,
    a: PackedQRef<'_>,
    b: &[u8],
    offs: &[usize],
    rows: RowMap,
    n: usize,
    c: crate::gemm::MatMut<'_>,
    ep: &QEpilogue<'_>,
    scratch: &mut [f32],
) {
    assert_eq!(offs.len(), a.kg, "one offset per k-group");
    assert!(
        rows.len > 0 && rows.len.is_multiple_of(kern.nr) && n.is_multiple_of(rows.len),
        "whole rows of whole tiles"
    );
    if a.m > 0 && n > 0 {
        let last = rows.padded(n - 1) + 1;
        assert!(offs.iter().all(|&o| o + 4 * last <= b.len()), "a k-group of B runs past its buffer");
    }
    qgemm_from(kern, a, Src::Rows(b, offs, rows), n, c, ep, scratch);
}

/// Fills columns `jb..je` of every k-group of a [`qgemm_gathered`] product into a packed block:
/// the 4 bytes of column `j`, k-group `g` go to
/// `block[((j − jb) / NR)·tile_bytes + g·4·NR + 4·((j − jb) % NR)]` (`tile_bytes = 4·kg·NR`).
/// Bytes of a partial last tile past `je` may be left as they are (their columns are computed
/// and dropped).
pub trait GatherB: Sync {
    /// Writes columns `jb..je` of every k-group into `block` (`nr` = the kernel's NR).
    fn fill(&self, jb: usize, je: usize, nr: usize, block: &mut [u8]);
}

/// [`qgemm`] with B gathered by `src` straight into the packed column blocks (an implicit
/// im2col that never materialises the whole gathered matrix); `a.kg` k-groups.
pub fn qgemm_gathered(
    kern: &QgemmKernel,
    a: PackedQRef<'_>,
    src: &dyn GatherB,
    n: usize,
    c: crate::gemm::MatMut<'_>,
    ep: &QEpilogue<'_>,
    scratch: &mut [f32],
) {
    qgemm_from(kern, a, Src::Gather(src), n, c, ep, scratch);
}

/// Where a product reads B.
#[derive(Clone, Copy)]
enum Src<'a> {
    /// k-group `g` of column `j` at `b[offs[g] + 4j ..]`.
    Offsets(&'a [u8], &'a [usize]),
    /// Gathered into the packed blocks.
    Gather(&'a dyn GatherB),
    /// In place, compact columns of whole rows ([`qgemm_rows`]).
    Rows(&'a [u8], &'a [usize], RowMap),
}

fn qgemm_from(
    kern: &QgemmKernel,
    a: PackedQRef<'_>,
    src: Src<'_>,
    n: usize,
    c: crate::gemm::MatMut<'_>,
    ep: &QEpilogue<'_>,
    scratch: &mut [f32],
) {
    let (m, kg, mr, nr) = (a.m, a.kg, kern.mr, kern.nr);
    assert_eq!(a.data.len(), packed_q_len(kern, m, kg), "weights packed for another kernel");
    assert!(a.sums.len() >= m, "row sums");
    assert!(kg <= MAX_KG, "K of {} exceeds the supported {}", 4 * kg, 4 * MAX_KG);
    assert_eq!(c.cs, 1, "qgemm writes row-major C");
    assert!(ep.scale.is_none_or(|s| s.len() >= m) && ep.bias.is_none_or(|b| b.len() >= m), "epilogue shorter than m");
    assert!(scratch.len() >= qgemm_scratch_len(kern, kg), "qgemm scratch too small");
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * c.rs + n <= c.data.len(), "C view out of bounds");
    let tiles = pack_tiles(kern, kg);
    let (packed, tile) = scratch.split_at_mut((tiles * kg * nr * 4).div_ceil(4));
    let packed: &mut [u8] = bytemuck::cast_slice_mut(packed);
    let tile = &mut tile[..16 * nr];
    let off = ep.zero_point - kern.b_offset;
    let mut t = QTile { scale: [0.0; 16], corr: [0; 16], bias: [0.0; 16], raw: ep.scale.is_none() };
    let panel_bytes = packed_q_len(kern, mr, kg);
    let tile_params = |p: usize, t: &mut QTile| {
        let i0 = p * mr;
        let mc = (m - i0).min(mr);
        for i in 0..mr {
            let r = i0 + i;
            t.scale[i] = if i < mc { ep.scale.map_or(1.0, |s| s[r]) } else { 0.0 };
            t.corr[i] = if i < mc { off.wrapping_mul(a.sums[r]) } else { 0 };
            t.bias[i] = if i < mc { ep.bias.map_or(0.0, |b| b[r]) } else { 0.0 };
        }
    };
    // One tile of `w` columns at `j0` (`ukr` for that width); B at `bptr` with offsets `optr`.
    let tile_at = |p: usize,
                   j0: usize,
                   w: usize,
                   ukr: QgemmUkr,
                   bptr: *const u8,
                   optr: *const usize,
                   t: &QTile,
                   c: &mut crate::gemm::MatMut<'_>,
                   tile: &mut [f32]| {
        let (i0, mc, nc) = (p * mr, (m - p * mr).min(mr), (n - j0).min(w));
        let ap = &a.data[p * panel_bytes..(p + 1) * panel_bytes];
        if mc == mr && nc == w {
            let at = i0 * c.rs + j0;
            // SAFETY: the panel holds `kg` k-groups of MR rows; every `bptr + optr[g]` has 4·w
            // readable bytes (in place: j0 + w ≤ n and `offs[g] + 4n ≤ b.len()`, checked; row
            // tiles: the tile lies in one row, at most the last column's `offs[g] + 4·(padded + 1)`;
            // packed: a tile of 4·NR bytes per k-group, a narrow one read at 4·w·s inside it);
            // the tile of C is inside `c.data` (checked above).
            unsafe { ukr(kg, ap.as_ptr(), bptr, optr, c.data.as_mut_ptr().add(at), c.rs, t, ep.accumulate) };
        } else {
            for i in 0..mc {
                for j in 0..nc {
                    tile[i * w + j] = if ep.accumulate { c.data[(i0 + i) * c.rs + j0 + j] } else { 0.0 };
                }
            }
            // SAFETY: as above, writing the local 16×w tile with row stride w (MR ≤ 16).
            unsafe { ukr(kg, ap.as_ptr(), bptr, optr, tile.as_mut_ptr(), w, t, ep.accumulate) };
            for i in 0..mc {
                c.data[(i0 + i) * c.rs + j0..(i0 + i) * c.rs + j0 + nc].copy_from_slice(&tile[i * w..i * w + nc]);
            }
        }
    };
    let mut c = c;
    let panels = m.div_ceil(mr);
    let tile_bytes = kg * 4 * nr;
    let pack_all = match src {
        Src::Offsets(_, offs) => panels >= PACK_MIN_PANELS && pack_policy(offs, n),
        Src::Gather(_) => true,
        Src::Rows(..) => false,
    };
    let pack = |jb: usize, je: usize, packed: &mut [u8]| match src {
        Src::Gather(g) => g.fill(jb, je, nr, &mut packed[..(je - jb).div_ceil(nr) * tile_bytes]),
        Src::Offsets(b, offs) => pack_block(b, offs, jb, je, 4 * nr, tile_bytes, packed),
        Src::Rows(..) => unreachable!("row tiles are whole: nothing to pack"),
    };
    let full = n / nr * nr;
    // Blocks of column tiles whose packed B fits PACK_BUDGET (L2). Where the k-groups read
    // disjoint runs of B (1×1 convolutions, linear layers, attention), B is gathered once per
    // block into contiguous tiles (k-group g of tile s at s·4·kg·NR + g·4·NR, zeros past the
    // last column) that every row panel then sweeps with its weights in L1 — one sequential
    // stream per tile instead of one scattered read per k-group, panel and tile. Where they
    // overlap (the taps of a spatial convolution share their lines) B is read in place and
    // only a partial last tile is packed.
    for jb in (0..n).step_by(tiles * nr) {
        let je = (jb + tiles * nr).min(n);
        let ntiles = (je - jb).div_ceil(nr);
        if pack_all {
            pack(jb, je, packed);
        } else if je > full {
            pack(full, je, packed);
        }
        let packed: &[u8] = packed;
        // Row tiles: the padded column of the block's first tile, then stepped tile by tile
        // (no division per tile: with a short K a tile is only ~100 cycles).
        let row_start = match src {
            Src::Rows(_, _, rows) => Some((rows, rows.padded(jb), jb % rows.len, (jb / rows.len) % rows.per_img)),
            _ => None,
        };
        for p in 0..panels {
            tile_params(p, &mut t);
            let mut row_at = row_start;
            for s in 0..ntiles {
                let j0 = jb + s * nr;
                let bp = if pack_all { packed[s * tile_bytes..].as_ptr() } else { packed.as_ptr() };
                if j0 + nr <= n {
                    let (bp, optr) = match src {
                        Src::Offsets(b, offs) if !pack_all => (b[4 * j0..].as_ptr(), offs.as_ptr()),
                        Src::Rows(b, offs, _) => {
                            let (rows, jp, x, y) = row_at.as_mut().expect("row tiles");
                            debug_assert_eq!(*jp, rows.padded(j0));
                            let at = *jp;
                            // Next tile: along the row, else the next row, else the next image.
                            (*jp, *x) = (*jp + nr, *x + nr);
                            if *x == rows.len {
                                *x = 0;
                                *y += 1;
                                *jp += rows.row_stride - rows.len;
                                if *y == rows.per_img {
                                    *y = 0;
                                    *jp += rows.img_stride - rows.per_img * rows.row_stride;
                                }
                            }
                            (b[4 * at..].as_ptr(), offs.as_ptr())
                        }
                        _ => (bp, kern.panel_offsets.as_ptr()),
                    };
                    tile_at(p, j0, nr, kern.ukr, bp, optr, &t, &mut c, tile);
                    continue;
                }
                // The last, partial tile (packed): narrow tiles read it at 4·w·s'.
                let (w, ukr) = kern.narrow.map_or((nr, kern.ukr), |nw| (nw.nr, nw.ukr));
                for s2 in 0..(n - j0).div_ceil(w) {
                    let bp2 = bp.wrapping_add(4 * w * s2);
                    tile_at(p, j0 + s2 * w, w, ukr, bp2, kern.panel_offsets.as_ptr(), &t, &mut c, tile);
                }
            }
        }
    }
}

/// Whether [`qgemm`] packs B: when no two k-groups' runs of `4n` bytes overlap (checked for the
/// first k-group's run, which every tap of a spatial convolution shares with its neighbours).
fn pack_policy(offs: &[usize], n: usize) -> bool {
    let Some(&o0) = offs.first() else { return false };
    offs.iter().filter(|&&o| o.abs_diff(o0) < 4 * n).count() <= 1
}

/// Copies columns `jb..je` of every k-group (at `b[offs[g] + 4j ..]`) into consecutive tiles of
/// `t = 4·NR` bytes per k-group (`tile_bytes` per tile), zeros past `je`.
fn pack_block(b: &[u8], offs: &[usize], jb: usize, je: usize, t: usize, tile_bytes: usize, packed: &mut [u8]) {
    for (g, &o) in offs.iter().enumerate() {
        for (s, chunk) in b[o + 4 * jb..o + 4 * je].chunks(t).enumerate() {
            let at = s * tile_bytes + g * t;
            packed[at..at + chunk.len()].copy_from_slice(chunk);
            packed[at + chunk.len()..at + t].fill(0);
        }
    }
}

/// Row panels a product needs before packing B pays for its copy (fewer panels sweep each
/// packed block too few times: fmnist-ddpm's 32- and 64-channel layers, split over 2 threads,
/// measured slower packed).
const PACK_MIN_PANELS: usize = 8;

/// Bytes of packed `B` per column block of [`qgemm`] (half of a 512 KB L2).
const PACK_BUDGET: usize = 256 << 10;

#[cfg(test)]
mod tests;
