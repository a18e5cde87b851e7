//! AVX2 u8×i8 microkernel, 6×8, exact without VNNI: activations are widened to i16
//! (`vpmovzxbw`, four positions × four channels per ymm) and multiplied by i16 weights with
//! `vpmaddwd`, whose i32 pair sums cannot overflow (|255·128·2| < 2³¹) — unlike `vpmaddubsw`,
//! which saturates at i16. Each position keeps two partial sums (channels 0–1, 2–3) that one
//! `vphaddd` + `vpermq` combine per tile.

use std::arch::x86_64::*;

use crate::qgemm::{AFormat, MAX_KG, QTile, QgemmKernel, q_panel_offsets};

const MR: usize = 6;
const NR: usize = 8;
static PANEL: [usize; MAX_KG] = q_panel_offsets::<NR>();

pub(crate) const QGEMM_AVX2: QgemmKernel = QgemmKernel {
    name: "avx2_qgemm_6x8",
    mr: MR,
    nr: NR,
    a_format: AFormat::I16x4,
    b_offset: 0,
    ukr: avx2_qgemm_6x8,
    panel_offsets: &PANEL,
    narrow: None,
    // Gathering into the packed blocks measured as fast as the in-place read at 32×32 (12 %
    // extra columns) on one thread and 8–35 % faster on the 16×16 (batch 8: 25 %) and 8×8
    // layers (kernels/README.md); on 2 threads each thread gathers its own blocks, so where it
    // only ties the in-place read stays.
    direct_limit: 115,
};

/// # Safety
/// The [`crate::qgemm::QgemmUkr`] contract, and the CPU supports AVX2.
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_qgemm_6x8(
    kg: usize,
    a: *const u8,
    b: *const u8,
    b_offs: *const usize,
    c: *mut f32,
    ldc: usize,
    tile: *const QTile,
    accumulate: bool,
) {
    // SAFETY: pointer extents per the QgemmUkr contract; AVX2 checked by dispatch.
    unsafe {
        let mut acc = [[_mm256_setzero_si256(); 2]; MR];
        let mut ap = a;
        for g in 0..kg {
            let bp = b.add(*b_offs.add(g));
            let lo = _mm256_cvtepu8_epi16(_mm_loadu_si128(bp.cast()));
            let hi = _mm256_cvtepu8_epi16(_mm_loadu_si128(bp.add(16).cast()));
            for (i, row) in acc.iter_mut().enumerate() {
                let w = _mm256_set1_epi64x(ap.add(8 * i).cast::<i64>().read_unaligned());
                row[0] = _mm256_add_epi32(row[0], _mm256_madd_epi16(lo, w));
                row[1] = _mm256_add_epi32(row[1], _mm256_madd_epi16(hi, w));
            }
            ap = ap.add(8 * MR);
        }
        // [p0 p1 p4 p5 | p2 p3 p6 p7] → positions 0..8 in order, then the shared epilogue.
        let mut rows = [[_mm256_setzero_si256(); 1]; MR];
        for (r, a) in rows.iter_mut().zip(&acc) {
            r[0] = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(a[0], a[1]));
        }
        super::store_rows_ymm(&rows, c, ldc, tile, accumulate);
    }
}
