//! The scalar u8×i8 GEMM microkernel and the epilogue every tier reproduces bit for bit.

use crate::qgemm::{AFormat, MAX_KG, QTile, QgemmKernel, q_panel_offsets};

const MR: usize = 4;
const NR: usize = 8;
static PANEL: [usize; MAX_KG] = q_panel_offsets::<NR>();

/// The reference table entry (4×8, unsigned B).
pub const QGEMM_REF: QgemmKernel = QgemmKernel {
    name: "ref_qgemm_4x8",
    mr: MR,
    nr: NR,
    a_format: AFormat::I8x4,
    b_offset: 0,
    ukr: ref_qgemm_4x8,
    panel_offsets: &PANEL,
    narrow: None,
    direct_limit: 130,
};

/// The epilogue of one output: `(scale·f32(acc − corr) + bias) + old`, in this order, no fused
/// multiply-add. SIMD tiers perform the same operations lane by lane.
#[inline(always)]
pub(crate) fn epilogue(acc: i32, row: usize, t: &QTile, old: Option<f32>) -> f32 {
    let d = acc.wrapping_sub(t.corr[row]);
    if t.raw {
        return f32::from_bits(old.map_or(d, |o| (o.to_bits() as i32).wrapping_add(d)) as u32);
    }
    let v = t.scale[row] * d as f32 + t.bias[row];
    match old {
        Some(o) => v + o,
        None => v,
    }
}

/// # Safety
/// The [`crate::qgemm::QgemmUkr`] contract.
unsafe fn ref_qgemm_4x8(
    kg: usize,
    a: *const u8,
    b: *const u8,
    b_offs: *const usize,
    c: *mut f32,
    ldc: usize,
    tile: *const QTile,
    accumulate: bool,
) {
    // SAFETY: extents per the QgemmUkr contract.
    let (a, offs, t) = unsafe {
        (std::slice::from_raw_parts(a.cast::<i8>(), kg * MR * 4), std::slice::from_raw_parts(b_offs, kg), &*tile)
    };
    let mut acc = [[0i32; NR]; MR];
    for (g, &o) in offs.iter().enumerate() {
        // SAFETY: 4·NR readable bytes at b + offs[g] (QgemmUkr contract).
        let brow = unsafe { std::slice::from_raw_parts(b.add(o), 4 * NR) };
        for (i, row) in acc.iter_mut().enumerate() {
            let w = &a[(g * MR + i) * 4..(g * MR + i) * 4 + 4];
            for (j, x) in row.iter_mut().enumerate() {
                for q in 0..4 {
                    *x = x.wrapping_add(i32::from(w[q]) * i32::from(brow[4 * j + q]));
                }
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        // SAFETY: row i of the tile (NR floats at c + i·ldc) is readable and writable.
        let out = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), NR) };
        for (o, &x) in out.iter_mut().zip(row) {
            *o = epilogue(x, i, t, accumulate.then_some(*o));
        }
    }
}
