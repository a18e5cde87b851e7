//! NEON dot-product u8×i8 microkernel (Cortex-A76, Raspberry Pi 5), 8×12: `sdot` by lane —
//! each instruction takes four positions × four channels of B and the four weights of one output
//! channel — 24 accumulators, 3 B and 2 weight registers. `sdot` is issued with `asm!` because
//! its intrinsic is not stable.

use std::arch::aarch64::*;
use std::arch::asm;

use super::qgemm_neon::store4;
use crate::qgemm::{AFormat, MAX_KG, QTile, QgemmKernel, q_panel_offsets};

const MR: usize = 8;
const NR: usize = 12;
static PANEL: [usize; MAX_KG] = q_panel_offsets::<NR>();

pub(crate) const QGEMM_DOTPROD: QgemmKernel = QgemmKernel {
    name: "dotprod_qgemm_8x12",
    mr: MR,
    nr: NR,
    a_format: AFormat::I8x4,
    b_offset: 128,
    ukr: dotprod_qgemm_8x12,
    panel_offsets: &PANEL,
    narrow: None,
    direct_limit: 130,
};

macro_rules! sdot {
    ($acc:expr, $b:expr, $w:expr, $lane:literal) => {
        asm!(
            concat!("sdot {acc:v}.4s, {b:v}.16b, {w:v}.4b[", $lane, "]"),
            acc = inout(vreg) $acc,
            b = in(vreg) $b,
            w = in(vreg) $w,
            options(pure, nomem, nostack)
        )
    };
}

macro_rules! row {
    ($acc:ident, $i:expr, $bv:ident, $w:expr, $lane:literal) => {
        sdot!($acc[$i][0], $bv[0], $w, $lane);
        sdot!($acc[$i][1], $bv[1], $w, $lane);
        sdot!($acc[$i][2], $bv[2], $w, $lane);
    };
}

/// # Safety
/// The [`crate::qgemm::QgemmUkr`] contract, and the CPU supports NEON and the dot product.
#[target_feature(enable = "neon,dotprod")]
unsafe fn dotprod_qgemm_8x12(
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
    // `sdot` reads and writes only the named registers.
    unsafe {
        let mut acc = [[vdupq_n_s32(0); 3]; MR];
        let flip = vdupq_n_u8(0x80);
        let mut ap = a;
        for g in 0..kg {
            let bp = b.add(*b_offs.add(g));
            let bv = [
                veorq_u8(vld1q_u8(bp), flip),
                veorq_u8(vld1q_u8(bp.add(16)), flip),
                veorq_u8(vld1q_u8(bp.add(32)), flip),
            ];
            let w0 = vld1q_u8(ap);
            let w1 = vld1q_u8(ap.add(16));
            row!(acc, 0, bv, w0, 0);
            row!(acc, 1, bv, w0, 1);
            row!(acc, 2, bv, w0, 2);
            row!(acc, 3, bv, w0, 3);
            row!(acc, 4, bv, w1, 0);
            row!(acc, 5, bv, w1, 1);
            row!(acc, 6, bv, w1, 2);
            row!(acc, 7, bv, w1, 3);
            ap = ap.add(4 * MR);
        }
        let t = &*tile;
        for (i, row) in acc.iter().enumerate() {
            for (q, &v) in row.iter().enumerate() {
                store4(v, i, t, c.add(i * ldc + 4 * q), accumulate);
            }
        }
    }
}
