//! AVX2 u8×i8 microkernels for weights in `[−64, 63]` (7-bit layers; 4×16 and 4×8) and in
//! `[−8, 7]` (4-bit layers; 6×16 and 6×8, eight k-groups summed in i16) on the same panel
//! format: `vpmaddubsw` multiplies 32 activation bytes by the broadcast
//! weights into i16 pair sums, `vpmaddwd` by ones widens them to i32 — the emulation of
//! `vpdpbusd` that ONNX Runtime's AVX2 kernels use, here exact: a pair sum is at most
//! `255·64·2 = 32640 < 2¹⁵`, so `vpmaddubsw` never saturates. On these cores the pair retires
//! about 1.7× the multiply-accumulates per cycle of [`super::QGEMM_AVX2`]'s widened `vpmaddwd`,
//! which stays for 8-bit weights (a full-range pair can reach 65280). The dispatch table picks
//! this kernel per layer ([`crate::Kernels::qgemm_for`]) after checking every weight.

use std::arch::x86_64::*;

use crate::qgemm::{AFormat, MAX_KG, Narrow, QTile, QgemmKernel, q_panel_offsets};

const MR: usize = 4;
const NR: usize = 16;
static PANEL: [usize; MAX_KG] = q_panel_offsets::<NR>();

pub(crate) const QGEMM_AVX2_W7: QgemmKernel = QgemmKernel {
    name: "avx2_qgemm_w7_4x16",
    mr: MR,
    nr: NR,
    a_format: AFormat::I8x4,
    b_offset: 0,
    ukr: avx2_qgemm_w7::<2>,
    panel_offsets: &PANEL,
    narrow: Some(Narrow { nr: 8, ukr: avx2_qgemm_w7::<1> }),
    direct_limit: 115,
};

/// # Safety
/// The [`crate::qgemm::QgemmUkr`] contract with `NR = 8·NQ`, every weight of the panel in
/// `[−64, 63]`, and the CPU supports AVX2.
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_qgemm_w7<const NQ: usize>(
    kg: usize,
    a: *const u8,
    b: *const u8,
    b_offs: *const usize,
    c: *mut f32,
    ldc: usize,
    tile: *const QTile,
    accumulate: bool,
) {
    // SAFETY: pointer extents per the QgemmUkr contract; AVX2 checked by dispatch, the weight
    // range by `Kernels::qgemm_for`.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); NQ]; MR];
        let mut ap = a;
        for g in 0..kg {
            let bp = b.add(*b_offs.add(g));
            let bv: [__m256i; NQ] = std::array::from_fn(|q| _mm256_loadu_si256(bp.add(32 * q).cast()));
            for (i, row) in acc.iter_mut().enumerate() {
                let w = _mm256_set1_epi32(ap.add(4 * i).cast::<i32>().read_unaligned());
                for (r, &bq) in row.iter_mut().zip(&bv) {
                    *r = _mm256_add_epi32(*r, _mm256_madd_epi16(_mm256_maddubs_epi16(bq, w), ones));
                }
            }
            ap = ap.add(4 * MR);
        }
        super::store_rows_ymm(&acc, c, ldc, tile, accumulate);
    }
}

/// k-groups whose `vpmaddubsw` pair sums [`avx2_qgemm_w4`] adds in i16 before widening: with
/// weights in `[−8, 7]` a pair sum is at most `255·8·2 = 4080` in magnitude, and eight of them
/// at most 32640 < 2¹⁵.
const W4_GROUPS: usize = 8;

/// Rows of [`avx2_qgemm_w4`]'s tile: 6 × 2 i16 partials, two B vectors and the broadcast weights
/// fill 15 of the 16 ymm registers (the i32 sums, touched once per [`W4_GROUPS`], live in memory).
const MR4: usize = 6;

pub(crate) const QGEMM_AVX2_W4: QgemmKernel = QgemmKernel {
    name: "avx2_qgemm_w4_6x16",
    mr: MR4,
    ukr: avx2_qgemm_w4::<2>,
    narrow: Some(Narrow { nr: 8, ukr: avx2_qgemm_w4::<1> }),
    ..QGEMM_AVX2_W7
};

/// The 4-bit variant of [`avx2_qgemm_w7`] on the same panels: the `vpmaddubsw` pair sums of up
/// to [`W4_GROUPS`] k-groups accumulate in i16 (`vpaddw`), and one `vpmaddwd` by ones widens
/// them — one widening per 32 k instead of per 4, so about 1.8× fewer multiply-unit µops per
/// MAC. Exact: every partial stays within i16 (see [`W4_GROUPS`]). Kept apart from the 7-bit
/// body on purpose: written as this body with one group, the 7-bit kernel compiled with all its
/// `vpmaddubsw` ahead of the widenings and spilled two registers per k-group.
///
/// # Safety
/// The [`crate::qgemm::QgemmUkr`] contract with `NR = 8·NQ`, every weight of the panel in
/// `[−8, 7]`, and the CPU supports AVX2.
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_qgemm_w4<const NQ: usize>(
    kg: usize,
    a: *const u8,
    b: *const u8,
    b_offs: *const usize,
    c: *mut f32,
    ldc: usize,
    tile: *const QTile,
    accumulate: bool,
) {
    // SAFETY: pointer extents per the QgemmUkr contract; AVX2 checked by dispatch, the weight
    // range by `Kernels::qgemm_for`.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); NQ]; MR4];
        let mut ap = a;
        let mut g0 = 0;
        while g0 < kg {
            let g1 = (g0 + W4_GROUPS).min(kg);
            let mut part = [[_mm256_setzero_si256(); NQ]; MR4];
            for g in g0..g1 {
                let bp = b.add(*b_offs.add(g));
                let bv: [__m256i; NQ] = std::array::from_fn(|q| _mm256_loadu_si256(bp.add(32 * q).cast()));
                for (i, row) in part.iter_mut().enumerate() {
                    let w = _mm256_set1_epi32(ap.add(4 * i).cast::<i32>().read_unaligned());
                    for (p, &bq) in row.iter_mut().zip(&bv) {
                        *p = _mm256_add_epi16(*p, _mm256_maddubs_epi16(bq, w));
                    }
                }
                ap = ap.add(4 * MR4);
            }
            for (row, prow) in acc.iter_mut().zip(&part) {
                for (r, &p) in row.iter_mut().zip(prow) {
                    *r = _mm256_add_epi32(*r, _mm256_madd_epi16(p, ones));
                }
            }
            g0 = g1;
        }
        super::store_rows_ymm(&acc, c, ldc, tile, accumulate);
    }
}
