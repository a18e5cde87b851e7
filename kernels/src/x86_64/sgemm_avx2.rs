//! AVX2+FMA f32 GEMM microkernel, 6×16: 12 ymm accumulators, two B vectors per k, A
//! broadcast.

use std::arch::x86_64::*;

use crate::gemm::SgemmKernel;

const MR: usize = 6;
const KC: usize = 512;
const PANEL: [usize; KC] = crate::gemm::panel_offsets::<NR, KC>();
const NR: usize = 16;

pub(crate) const SGEMM_AVX2: SgemmKernel =
    SgemmKernel { name: "avx2_sgemm_6x16", mr: MR, nr: NR, kc: KC, ukr: avx2_sgemm_6x16, panel_offsets: &PANEL };

/// # Safety
/// The [`crate::gemm::SgemmUkr`] contract, and the CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_sgemm_6x16(
    k: usize,
    a: *const f32,
    b: *const f32,
    b_offs: *const usize,
    c: *mut f32,
    ldc: usize,
    bias: *const f32,
    acc: bool,
) {
    // SAFETY: pointer extents per the SgemmUkr contract; AVX2/FMA checked by dispatch.
    unsafe {
        let mut c0 = [_mm256_setzero_ps(); MR];
        let mut c1 = [_mm256_setzero_ps(); MR];
        let mut ap = a;
        for kk in 0..k {
            let bp = b.add(*b_offs.add(kk));
            let b0 = _mm256_loadu_ps(bp);
            let b1 = _mm256_loadu_ps(bp.add(8));
            for i in 0..MR {
                let av = _mm256_broadcast_ss(&*ap.add(i));
                c0[i] = _mm256_fmadd_ps(av, b0, c0[i]);
                c1[i] = _mm256_fmadd_ps(av, b1, c1[i]);
            }
            ap = ap.add(MR);
        }
        for i in 0..MR {
            let (mut r0, mut r1) = (c0[i], c1[i]);
            if !bias.is_null() {
                let bv = _mm256_broadcast_ss(&*bias.add(i));
                r0 = _mm256_add_ps(r0, bv);
                r1 = _mm256_add_ps(r1, bv);
            }
            let p = c.add(i * ldc);
            if acc {
                r0 = _mm256_add_ps(r0, _mm256_loadu_ps(p));
                r1 = _mm256_add_ps(r1, _mm256_loadu_ps(p.add(8)));
            }
            _mm256_storeu_ps(p, r0);
            _mm256_storeu_ps(p.add(8), r1);
        }
    }
}
