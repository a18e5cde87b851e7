//! NEON u8×i8 microkernel for cores without the dot-product extension (Cortex-A53/A72), 4×8:
//! activations turned signed (`b ^ 0x80` = `b − 128`), `smull` of eight i8 pairs into i16
//! (|product| ≤ 2¹⁴, exact) and `sadalp` adding adjacent pairs into i32 (exact), two partial
//! sums per position combined by `addp` at the end.

use std::arch::aarch64::*;

use crate::qgemm::{AFormat, MAX_KG, QTile, QgemmKernel, q_panel_offsets};

const MR: usize = 4;
const NR: usize = 8;
static PANEL: [usize; MAX_KG] = q_panel_offsets::<NR>();

pub(crate) const QGEMM_NEON: QgemmKernel = QgemmKernel {
    name: "neon_qgemm_4x8",
    mr: MR,
    nr: NR,
    a_format: AFormat::I8x4,
    b_offset: 128,
    ukr: neon_qgemm_4x8,
    panel_offsets: &PANEL,
    narrow: None,
    direct_limit: 130,
};

/// The shared vector epilogue of the NEON kernels: `(scale·f32(acc − corr) + bias) + old`.
///
/// # Safety
/// `c` is readable and writable for four floats; the CPU supports NEON.
#[inline(always)]
pub(super) unsafe fn store4(v: int32x4_t, i: usize, t: &QTile, c: *mut f32, accumulate: bool) {
    // SAFETY: per the function contract.
    unsafe {
        let d = vsubq_s32(v, vdupq_n_s32(t.corr[i]));
        if t.raw {
            let d = if accumulate { vaddq_s32(d, vld1q_s32(c.cast())) } else { d };
            vst1q_s32(c.cast(), d);
            return;
        }
        let x = vcvtq_f32_s32(d);
        let mut y = vaddq_f32(vmulq_f32(vdupq_n_f32(t.scale[i]), x), vdupq_n_f32(t.bias[i]));
        if accumulate {
            y = vaddq_f32(y, vld1q_f32(c));
        }
        vst1q_f32(c, y);
    }
}

/// # Safety
/// The [`crate::qgemm::QgemmUkr`] contract, and the CPU supports NEON.
#[target_feature(enable = "neon")]
unsafe fn neon_qgemm_4x8(
    kg: usize,
    a: *const u8,
    b: *const u8,
    b_offs: *const usize,
    c: *mut f32,
    ldc: usize,
    tile: *const QTile,
    accumulate: bool,
) {
    // SAFETY: pointer extents per the QgemmUkr contract; NEON checked by dispatch.
    unsafe {
        let mut acc = [[vdupq_n_s32(0); 4]; MR];
        let flip = vdupq_n_u8(0x80);
        let mut ap = a;
        for g in 0..kg {
            let bp = b.add(*b_offs.add(g));
            let b0 = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(bp), flip));
            let b1 = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(bp.add(16)), flip));
            let w = vld1q_s32(ap.cast());
            let rows = [
                vreinterpretq_s8_s32(vdupq_laneq_s32::<0>(w)),
                vreinterpretq_s8_s32(vdupq_laneq_s32::<1>(w)),
                vreinterpretq_s8_s32(vdupq_laneq_s32::<2>(w)),
                vreinterpretq_s8_s32(vdupq_laneq_s32::<3>(w)),
            ];
            for (row, &wi) in acc.iter_mut().zip(&rows) {
                row[0] = vpadalq_s16(row[0], vmull_s8(vget_low_s8(b0), vget_low_s8(wi)));
                row[1] = vpadalq_s16(row[1], vmull_high_s8(b0, wi));
                row[2] = vpadalq_s16(row[2], vmull_s8(vget_low_s8(b1), vget_low_s8(wi)));
                row[3] = vpadalq_s16(row[3], vmull_high_s8(b1, wi));
            }
            ap = ap.add(4 * MR);
        }
        let t = &*tile;
        for (i, row) in acc.iter().enumerate() {
            store4(vpaddq_s32(row[0], row[1]), i, t, c.add(i * ldc), accumulate);
            store4(vpaddq_s32(row[2], row[3]), i, t, c.add(i * ldc + 4), accumulate);
        }
    }
}
