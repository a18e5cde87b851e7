//! AVX-512 VNNI u8×i8 microkernels, 8×48: 24 zmm accumulators, three 64-byte B loads (16
//! positions × 4 channels each) and eight 4-byte weight broadcasts per k-group, 24 `vpdpbusd`;
//! and 8×16 on the same panels for the columns past the last 48-wide panel.

use std::arch::x86_64::*;

use crate::qgemm::{AFormat, MAX_KG, Narrow, QTile, QgemmKernel, q_panel_offsets};

const MR: usize = 8;
const NR: usize = 48;
static PANEL: [usize; MAX_KG] = q_panel_offsets::<NR>();

pub(crate) const QGEMM_AVX512VNNI: QgemmKernel = QgemmKernel {
    name: "avx512vnni_qgemm_8x48",
    mr: MR,
    nr: NR,
    a_format: AFormat::I8x4,
    b_offset: 0,
    ukr: avx512vnni_qgemm::<3>,
    panel_offsets: &PANEL,
    narrow: Some(Narrow { nr: 16, ukr: avx512vnni_qgemm::<1> }),
    direct_limit: 130,
};

/// # Safety
/// The [`crate::qgemm::QgemmUkr`] contract with `NR = 16·NQ`, and the CPU supports AVX-512F
/// and AVX-512 VNNI.
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn avx512vnni_qgemm<const NQ: usize>(
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
        let mut acc = [[_mm512_setzero_si512(); NQ]; MR];
        let mut ap = a;
        for g in 0..kg {
            let bp = b.add(*b_offs.add(g));
            let bv: [__m512i; NQ] = std::array::from_fn(|q| _mm512_loadu_si512(bp.add(64 * q).cast()));
            for (i, row) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_epi32(ap.add(4 * i).cast::<i32>().read_unaligned());
                for (r, &bq) in row.iter_mut().zip(&bv) {
                    *r = _mm512_dpbusd_epi32(*r, bq, w);
                }
            }
            ap = ap.add(4 * MR);
        }
        let t = &*tile;
        for (i, row) in acc.iter().enumerate() {
            let (scale, corr, bias) =
                (_mm512_set1_ps(t.scale[i]), _mm512_set1_epi32(t.corr[i]), _mm512_set1_ps(t.bias[i]));
            for (q, &v) in row.iter().enumerate() {
                let p = c.add(i * ldc + 16 * q);
                let d = _mm512_sub_epi32(v, corr);
                if t.raw {
                    let d = if accumulate { _mm512_add_epi32(d, _mm512_loadu_si512(p.cast())) } else { d };
                    _mm512_storeu_si512(p.cast(), d);
                    continue;
                }
                let mut y = _mm512_add_ps(_mm512_mul_ps(scale, _mm512_cvtepi32_ps(d)), bias);
                if accumulate {
                    y = _mm512_add_ps(y, _mm512_loadu_ps(p));
                }
                _mm512_storeu_ps(p, y);
            }
        }
    }
}
