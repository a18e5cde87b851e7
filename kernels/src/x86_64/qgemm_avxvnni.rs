//! AVX-VNNI (VEX, 256-bit) u8×i8 microkernel, 4×24: with sixteen ymm registers, 12
//! accumulators, three B loads and one weight broadcast per row.

use std::arch::x86_64::*;

use crate::qgemm::{AFormat, MAX_KG, QTile, QgemmKernel, q_panel_offsets};

const MR: usize = 4;
const NR: usize = 24;
static PANEL: [usize; MAX_KG] = q_panel_offsets::<NR>();

pub(crate) const QGEMM_AVXVNNI: QgemmKernel = QgemmKernel {
    name: "avxvnni_qgemm_4x24",
    mr: MR,
    nr: NR,
    a_format: AFormat::I8x4,
    b_offset: 0,
    ukr: avxvnni_qgemm_4x24,
    panel_offsets: &PANEL,
    narrow: None,
    direct_limit: 130,
};

/// # Safety
/// The [`crate::qgemm::QgemmUkr`] contract, and the CPU supports AVX2 and AVX-VNNI.
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn avxvnni_qgemm_4x24(
    kg: usize,
    a: *const u8,
    b: *const u8,
    b_offs: *const usize,
    c: *mut f32,
    ldc: usize,
    tile: *const QTile,
    accumulate: bool,
) {
    // SAFETY: pointer extents per the QgemmUkr contract; features checked by dispatch.
    unsafe {
        let mut acc = [[_mm256_setzero_si256(); 3]; MR];
        let mut ap = a;
        for g in 0..kg {
            let bp = b.add(*b_offs.add(g));
            let b0 = _mm256_loadu_si256(bp.cast());
            let b1 = _mm256_loadu_si256(bp.add(32).cast());
            let b2 = _mm256_loadu_si256(bp.add(64).cast());
            for (i, row) in acc.iter_mut().enumerate() {
                let w = _mm256_set1_epi32(ap.add(4 * i).cast::<i32>().read_unaligned());
                row[0] = _mm256_dpbusd_avx_epi32(row[0], b0, w);
                row[1] = _mm256_dpbusd_avx_epi32(row[1], b1, w);
                row[2] = _mm256_dpbusd_avx_epi32(row[2], b2, w);
            }
            ap = ap.add(4 * MR);
        }
        super::store_rows_ymm(&acc, c, ldc, tile, accumulate);
    }
}
