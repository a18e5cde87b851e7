//! Packing the `A` operand (weights, or attention's run-time operands) into the microkernels'
//! formats, with the row sums the zero-point correction needs.

use super::{AFormat, QgemmKernel};
use crate::AlignedF32;

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

    /// A borrowed view for [`qgemm`](super::qgemm).
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
