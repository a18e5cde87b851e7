//! x86-64 variants: AVX2+FMA, AVX-VNNI, AVX-512F and AVX-512 VNNI. Reachable only through the
//! dispatch table, which is built after the CPU features are detected.

mod qgemm_avx2;
mod qgemm_avx2_w7;
mod qgemm_avx512vnni;
mod qgemm_avxvnni;
mod sgemm_avx2;
mod sgemm_avx512;

pub(crate) use qgemm_avx2::QGEMM_AVX2;
pub(crate) use qgemm_avx2_w7::{QGEMM_AVX2_W4, QGEMM_AVX2_W7};
pub(crate) use qgemm_avx512vnni::QGEMM_AVX512VNNI;
pub(crate) use qgemm_avxvnni::QGEMM_AVXVNNI;
pub(crate) use sgemm_avx2::SGEMM_AVX2;
pub(crate) use sgemm_avx512::SGEMM_AVX512;

use std::arch::x86_64::*;

use crate::qgemm::QTile;

/// The epilogue of the 256-bit microkernels whose accumulators hold 8 consecutive columns of a
/// row each (`acc[i][q]`: row `i`, columns `8q..8q + 8`): `acc − corr`, then either the raw i32
/// or `scale·f32(·) + bias` (`+ c` when accumulating) stored at `c[i·ldc + 8q]` — the
/// [`crate::qgemm::QgemmUkr`] contract's output step.
///
/// # Safety
/// `c` is writable (and, when accumulating, readable) at `i·ldc + 8q .. + 8` for every
/// accumulator, `tile` is valid, and the CPU supports AVX2.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) unsafe fn store_rows_ymm<const NQ: usize>(
    acc: &[[__m256i; NQ]],
    c: *mut f32,
    ldc: usize,
    tile: *const QTile,
    accumulate: bool,
) {
    // SAFETY: extents per the function's contract.
    unsafe {
        let t = &*tile;
        for (i, row) in acc.iter().enumerate() {
            let (scale, corr, bias) =
                (_mm256_set1_ps(t.scale[i]), _mm256_set1_epi32(t.corr[i]), _mm256_set1_ps(t.bias[i]));
            for (q, &v) in row.iter().enumerate() {
                let p = c.add(i * ldc + 8 * q);
                let d = _mm256_sub_epi32(v, corr);
                if t.raw {
                    let d = if accumulate { _mm256_add_epi32(d, _mm256_loadu_si256(p.cast())) } else { d };
                    _mm256_storeu_si256(p.cast(), d);
                    continue;
                }
                let mut y = _mm256_add_ps(_mm256_mul_ps(scale, _mm256_cvtepi32_ps(d)), bias);
                if accumulate {
                    y = _mm256_add_ps(y, _mm256_loadu_ps(p));
                }
                _mm256_storeu_ps(p, y);
            }
        }
    }
}
