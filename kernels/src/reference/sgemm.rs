//! The scalar f32 GEMM microkernel: the specification every SIMD microkernel is tested against.

use crate::gemm::SgemmKernel;

const MR: usize = 4;
const KC: usize = 256;
const PANEL: [usize; KC] = crate::gemm::panel_offsets::<NR, KC>();
const NR: usize = 8;

/// The reference microkernel table entry (4×8 tile, deliberately not square so that a
/// transposition bug cannot hide).
pub const SGEMM_REF: SgemmKernel =
    SgemmKernel { name: "ref_sgemm_4x8", mr: MR, nr: NR, kc: KC, ukr: ref_sgemm_4x8, panel_offsets: &PANEL };

/// `c[i·ldc + j] = ((Σ_k a[k·MR+i]·b[b_offs[k] + j]) + bias[i]) + (acc ? c[i·ldc+j] : 0)`.
///
/// # Safety
/// The [`crate::gemm::SgemmUkr`] contract.
unsafe fn ref_sgemm_4x8(
    k: usize,
    a: *const f32,
    b: *const f32,
    b_offs: *const usize,
    c: *mut f32,
    ldc: usize,
    bias: *const f32,
    acc: bool,
) {
    // SAFETY: the caller guarantees these extents (SgemmUkr contract).
    let (a, offs) = unsafe { (std::slice::from_raw_parts(a, k * MR), std::slice::from_raw_parts(b_offs, k)) };
    let mut t = [[0f32; NR]; MR];
    for (kk, &off) in offs.iter().enumerate() {
        // SAFETY: row kk of B is NR readable floats at b + b_offs[kk] (SgemmUkr contract).
        let brow = unsafe { std::slice::from_raw_parts(b.add(off), NR) };
        for (i, row) in t.iter_mut().enumerate() {
            let av = a[kk * MR + i];
            for (j, x) in row.iter_mut().enumerate() {
                *x += av * brow[j];
            }
        }
    }
    for (i, row) in t.iter().enumerate() {
        // SAFETY: bias is null or holds MR floats (SgemmUkr contract).
        let bi = if bias.is_null() { 0.0 } else { unsafe { *bias.add(i) } };
        // SAFETY: row i of the tile (NR floats at c + i·ldc) is readable and writable.
        let out = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), NR) };
        for (o, &x) in out.iter_mut().zip(row) {
            *o = (x + bi) + if acc { *o } else { 0.0 };
        }
    }
}
