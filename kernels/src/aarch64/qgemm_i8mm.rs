//! NEON int8 matrix-multiply u8×i8 microkernel (Armv8.6 i8mm: Neoverse V1/N2, Cortex-A710…),
//! 8×8: `smmla` multiplies two positions × 8 K by two output channels × 8 K into a 2×2 block.
//! Pairs of k-groups of the channel-interleaved B are zipped into 8-K rows; an odd last k-group
//! is zipped with zeros (its weights are zero-padded). 16 accumulators, transposed into rows at
//! the end. `smmla` is issued with `asm!` because its intrinsic is not stable.

use std::arch::aarch64::*;
use std::arch::asm;

use crate::qgemm::{AFormat, MAX_KG, QTile, QgemmKernel, q_panel_offsets};

const MR: usize = 8;
const NR: usize = 8;
static PANEL: [usize; MAX_KG] = q_panel_offsets::<NR>();

pub(crate) const QGEMM_I8MM: QgemmKernel = QgemmKernel {
    name: "i8mm_qgemm_8x8",
    mr: MR,
    nr: NR,
    a_format: AFormat::I8x8,
    b_offset: 128,
    ukr: i8mm_qgemm_8x8,
    panel_offsets: &PANEL,
    narrow: None,
    direct_limit: 130,
};

/// # Safety
/// The [`crate::qgemm::QgemmUkr`] contract, and the CPU supports NEON and i8mm.
#[target_feature(enable = "neon,i8mm")]
unsafe fn i8mm_qgemm_8x8(
    kg: usize,
    a: *const u8,
    b: *const u8,
    b_offs: *const usize,
    c: *mut f32,
    ldc: usize,
    tile: *const QTile,
    accumulate: bool,
) {
    // SAFETY: pointer extents per the QgemmUkr contract; features checked by dispatch. Each
    // `smmla` reads and writes only the named registers.
    unsafe {
        // acc[pp][rp]: positions 2pp, 2pp+1 × output channels 2rp, 2rp+1.
        let mut acc = [[vdupq_n_s32(0); 4]; 4];
        let flip = vdupq_n_u8(0x80);
        let load = |g: usize| {
            let bp = b.add(*b_offs.add(g));
            (
                vreinterpretq_u32_u8(veorq_u8(vld1q_u8(bp), flip)),
                vreinterpretq_u32_u8(veorq_u8(vld1q_u8(bp.add(16)), flip)),
            )
        };
        let mut ap = a;
        let mut g = 0;
        while g < kg {
            let (x0, x1) = load(g);
            let (y0, y1) = if g + 1 < kg { load(g + 1) } else { (vdupq_n_u32(0), vdupq_n_u32(0)) };
            // [p0: 8K][p1: 8K], [p2][p3], [p4][p5], [p6][p7].
            let bv = [
                vreinterpretq_u8_u32(vzip1q_u32(x0, y0)),
                vreinterpretq_u8_u32(vzip2q_u32(x0, y0)),
                vreinterpretq_u8_u32(vzip1q_u32(x1, y1)),
                vreinterpretq_u8_u32(vzip2q_u32(x1, y1)),
            ];
            let wv = [vld1q_u8(ap), vld1q_u8(ap.add(16)), vld1q_u8(ap.add(32)), vld1q_u8(ap.add(48))];
            for (accp, &bp) in acc.iter_mut().zip(&bv) {
                for (a2, &w) in accp.iter_mut().zip(&wv) {
                    asm!(
                        "smmla {acc:v}.4s, {b:v}.16b, {w:v}.16b",
                        acc = inout(vreg) *a2,
                        b = in(vreg) bp,
                        w = in(vreg) w,
                        options(pure, nomem, nostack)
                    );
                }
            }
            ap = ap.add(8 * MR);
            g += 2;
        }
        let mut out = [[0i32; NR]; MR];
        for (pp, accp) in acc.iter().enumerate() {
            for (rp, &v) in accp.iter().enumerate() {
                let mut l = [0i32; 4];
                vst1q_s32(l.as_mut_ptr(), v);
                out[2 * rp][2 * pp] = l[0];
                out[2 * rp + 1][2 * pp] = l[1];
                out[2 * rp][2 * pp + 1] = l[2];
                out[2 * rp + 1][2 * pp + 1] = l[3];
            }
        }
        let t = &*tile;
        for (i, row) in out.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let p = c.add(i * ldc + j);
                *p = crate::reference::qgemm_epilogue(v, i, t, accumulate.then(|| *p));
            }
        }
    }
}
