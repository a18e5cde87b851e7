//! AVX-512F f32 GEMM microkernel, 12×32: 24 zmm accumulators, two B vectors per k, A
//! broadcast from memory (folded into `vfmadd231ps zmm, zmm, [mem]{1to16}`).

use std::arch::x86_64::*;

use crate::gemm::SgemmKernel;

const MR: usize = 12;
const KC: usize = 256;
const PANEL: [usize; KC] = crate::gemm::panel_offsets::<NR, KC>();
const NR: usize = 32;

pub(crate) const SGEMM_AVX512: SgemmKernel =
    SgemmKernel { name: "avx512_sgemm_12x32", mr: MR, nr: NR, kc: KC, ukr: avx512_sgemm_12x32, panel_offsets: &PANEL };

/// # Safety
/// The [`crate::gemm::SgemmUkr`] contract, and the CPU supports AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn avx512_sgemm_12x32(
    k: usize,
    a: *const f32,
    b: *const f32,
    b_offs: *const usize,
    c: *mut f32,
    ldc: usize,
    bias: *const f32,
    acc: bool,
) {
    // SAFETY: pointer extents per the SgemmUkr contract; AVX-512F checked by dispatch.
    unsafe {
        let mut c0 = [_mm512_setzero_ps(); MR];
        let mut c1 = [_mm512_setzero_ps(); MR];
        let mut ap = a;
        for kk in 0..k {
            let bp = b.add(*b_offs.add(kk));
            let b0 = _mm512_loadu_ps(bp);
            let b1 = _mm512_loadu_ps(bp.add(16));
            for i in 0..MR {
                let av = _mm512_set1_ps(*ap.add(i));
                c0[i] = _mm512_fmadd_ps(av, b0, c0[i]);
                c1[i] = _mm512_fmadd_ps(av, b1, c1[i]);
            }
            ap = ap.add(MR);
        }
        for i in 0..MR {
            let (mut r0, mut r1) = (c0[i], c1[i]);
            if !bias.is_null() {
                let bv = _mm512_set1_ps(*bias.add(i));
                r0 = _mm512_add_ps(r0, bv);
                r1 = _mm512_add_ps(r1, bv);
            }
            let p = c.add(i * ldc);
            if acc {
                r0 = _mm512_add_ps(r0, _mm512_loadu_ps(p));
                r1 = _mm512_add_ps(r1, _mm512_loadu_ps(p.add(16)));
            }
            _mm512_storeu_ps(p, r0);
            _mm512_storeu_ps(p.add(16), r1);
        }
    }
}
