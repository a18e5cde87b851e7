//! NEON f32 GEMM microkernel, 8×12: 24 q-register accumulators, three B vectors per k, A as
//! two q registers used lane by lane (`fmla v.4s, v.4s, v.s[lane]`).

use std::arch::aarch64::*;

use crate::gemm::SgemmKernel;

const MR: usize = 8;
const KC: usize = 256;
const PANEL: [usize; KC] = crate::gemm::panel_offsets::<NR, KC>();
const NR: usize = 12;

pub(crate) const SGEMM_NEON: SgemmKernel =
    SgemmKernel { name: "neon_sgemm_8x12", mr: MR, nr: NR, kc: KC, ukr: neon_sgemm_8x12, panel_offsets: &PANEL };

macro_rules! fma_row {
    ($acc:ident, $row:expr, $b:ident, $a:ident, $lane:literal) => {
        $acc[$row][0] = vfmaq_laneq_f32::<$lane>($acc[$row][0], $b[0], $a);
        $acc[$row][1] = vfmaq_laneq_f32::<$lane>($acc[$row][1], $b[1], $a);
        $acc[$row][2] = vfmaq_laneq_f32::<$lane>($acc[$row][2], $b[2], $a);
    };
}

/// # Safety
/// The [`crate::gemm::SgemmUkr`] contract, and the CPU supports NEON.
#[target_feature(enable = "neon")]
unsafe fn neon_sgemm_8x12(
    k: usize,
    a: *const f32,
    b: *const f32,
    b_offs: *const usize,
    c: *mut f32,
    ldc: usize,
    bias: *const f32,
    acc: bool,
) {
    // SAFETY: pointer extents per the SgemmUkr contract; NEON checked by dispatch.
    unsafe {
        let mut t = [[vdupq_n_f32(0.0); 3]; MR];
        let mut ap = a;
        for kk in 0..k {
            let bp = b.add(*b_offs.add(kk));
            let bv = [vld1q_f32(bp), vld1q_f32(bp.add(4)), vld1q_f32(bp.add(8))];
            let a0 = vld1q_f32(ap);
            let a1 = vld1q_f32(ap.add(4));
            fma_row!(t, 0, bv, a0, 0);
            fma_row!(t, 1, bv, a0, 1);
            fma_row!(t, 2, bv, a0, 2);
            fma_row!(t, 3, bv, a0, 3);
            fma_row!(t, 4, bv, a1, 0);
            fma_row!(t, 5, bv, a1, 1);
            fma_row!(t, 6, bv, a1, 2);
            fma_row!(t, 7, bv, a1, 3);
            ap = ap.add(MR);
        }
        for (i, row) in t.iter().enumerate() {
            let bi = if bias.is_null() { vdupq_n_f32(0.0) } else { vdupq_n_f32(*bias.add(i)) };
            let p = c.add(i * ldc);
            for (q, &v) in row.iter().enumerate() {
                let mut r = vaddq_f32(v, bi);
                if acc {
                    r = vaddq_f32(r, vld1q_f32(p.add(4 * q)));
                }
                vst1q_f32(p.add(4 * q), r);
            }
        }
    }
}
