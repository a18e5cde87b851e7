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

mod pack;

pub use pack::{PackedQ, PackedQRef, pack_q_into, pack_q_u8, packed_q_len, unpack_i4};

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
/// (`pack_tiles` column tiles) and a tile.
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
