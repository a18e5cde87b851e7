//! AVX2 u8×i8 microkernels for weights in `[−64, 63]` (7-bit and 4-bit quantized layers), 4×16
//! and 4×8 on the same panels: `vpmaddubsw` multiplies 32 activation bytes by the broadcast
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
