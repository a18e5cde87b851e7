//! 4-bit weights: unpack once at plan time, or keep them packed and unpack in registers?
//!
//! The product unpacks at plan time (the weights become the i8 panels of the tier's
//! microkernel). This benchmark keeps the measured alternative reproducible: two AVX-512 VNNI
//! 8×48 microkernels that read panels of packed nibbles (two k-groups per 32 bytes: the low
//! nibbles hold k-group `2p`, the high nibbles `2p + 1`), sign-extend them with one `vpshufb`
//! per 32 weights and broadcast each row's 4 weights either
//! - `inreg_permute`: with `vpermd` from the unpacked register, or
//! - `inreg_spill`: by storing the unpacked 64 bytes to the stack and broadcasting from there
//!   (load ports instead of shuffle ports),
//!
//! against `plan_unpack`: the product's i8 microkernel on the unpacked weights. All three run
//! through the product's GEMM driver (`qgemm`, same blocking) and are checked bit for bit
//! against each other before timing. Group `gemm_i4/{variant}/{M}x{N}x{K}`.

use criterion::{Criterion, criterion_group, criterion_main};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use criterion::{BenchmarkId, Criterion, Throughput};
    use edadm_kernels::gemm::MatMut;
    use edadm_kernels::qgemm::{
        AFormat, MAX_KG, PackedQ, PackedQRef, QEpilogue, QTile, QgemmKernel, QgemmUkr, packed_q_len, qgemm,
        qgemm_scratch_len,
    };
    use edadm_kernels::{Kernels, Tier};

    const MR: usize = 8;
    const NR: usize = 48;

    /// Sign-extends the nibbles `0..16` to i8: `vpshufb` table.
    #[inline(always)]
    unsafe fn lut() -> __m256i {
        // SAFETY: callers run on CPUs with AVX-512 VNNI and pass extents per the QgemmUkr contract.
        unsafe {
            _mm256_setr_epi8(
                0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3,
                -2, -1,
            )
        }
    }

    /// The two k-groups `[MR][4]` i8 of one 32-byte pair of packed nibbles.
    #[inline(always)]
    unsafe fn unpack(ap: *const u8, lut: __m256i, mask: __m256i) -> (__m256i, __m256i) {
        // SAFETY: callers run on CPUs with AVX-512 VNNI and pass extents per the QgemmUkr contract.
        unsafe {
            let v = _mm256_loadu_si256(ap.cast());
            let lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, mask));
            let hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), mask));
            (lo, hi)
        }
    }

    /// 24 `vpdpbusd` of one k-group: `w(i)` gives row i's broadcast weights.
    #[inline(always)]
    unsafe fn kgroup(acc: &mut [[__m512i; 3]; MR], bp: *const u8, w: impl Fn(usize) -> __m512i) {
        // SAFETY: callers run on CPUs with AVX-512 VNNI and pass extents per the QgemmUkr contract.
        unsafe {
            let b0 = _mm512_loadu_si512(bp.cast());
            let b1 = _mm512_loadu_si512(bp.add(64).cast());
            let b2 = _mm512_loadu_si512(bp.add(128).cast());
            for (i, row) in acc.iter_mut().enumerate() {
                let wi = w(i);
                row[0] = _mm512_dpbusd_epi32(row[0], b0, wi);
                row[1] = _mm512_dpbusd_epi32(row[1], b1, wi);
                row[2] = _mm512_dpbusd_epi32(row[2], b2, wi);
            }
        }
    }

    /// The product's epilogue (f32 mode only).
    #[inline(always)]
    unsafe fn store(acc: &[[__m512i; 3]; MR], c: *mut f32, ldc: usize, t: &QTile, accumulate: bool) {
        // SAFETY: callers run on CPUs with AVX-512 VNNI and pass extents per the QgemmUkr contract.
        unsafe {
            for (i, row) in acc.iter().enumerate() {
                let (scale, corr, bias) =
                    (_mm512_set1_ps(t.scale[i]), _mm512_set1_epi32(t.corr[i]), _mm512_set1_ps(t.bias[i]));
                for (q, &v) in row.iter().enumerate() {
                    let p = c.add(i * ldc + 16 * q);
                    let mut y =
                        _mm512_add_ps(_mm512_mul_ps(scale, _mm512_cvtepi32_ps(_mm512_sub_epi32(v, corr))), bias);
                    if accumulate {
                        y = _mm512_add_ps(y, _mm512_loadu_ps(p));
                    }
                    _mm512_storeu_ps(p, y);
                }
            }
        }
    }

    /// # Safety
    /// The `QgemmUkr` contract with nibble panels; AVX-512 VNNI present.
    #[target_feature(enable = "avx512f,avx512vnni,avx2")]
    unsafe fn inreg_permute(
        kg: usize,
        a: *const u8,
        b: *const u8,
        offs: *const usize,
        c: *mut f32,
        ldc: usize,
        t: *const QTile,
        accumulate: bool,
    ) {
        // SAFETY: callers run on CPUs with AVX-512 VNNI and pass extents per the QgemmUkr contract.
        unsafe {
            let (lut, mask) = (lut(), _mm256_set1_epi8(0x0F));
            let idx: [__m512i; MR] = std::array::from_fn(|i| _mm512_set1_epi32(i as i32));
            let mut acc = [[_mm512_setzero_si512(); 3]; MR];
            for p in 0..kg.div_ceil(2) {
                let (lo, hi) = unpack(a.add(32 * p), lut, mask);
                let (lo, hi) = (_mm512_castsi256_si512(lo), _mm512_castsi256_si512(hi));
                kgroup(&mut acc, b.add(*offs.add(2 * p)), |i| _mm512_permutexvar_epi32(idx[i], lo));
                if 2 * p + 1 < kg {
                    kgroup(&mut acc, b.add(*offs.add(2 * p + 1)), |i| _mm512_permutexvar_epi32(idx[i], hi));
                }
            }
            store(&acc, c, ldc, &*t, accumulate);
        }
    }

    /// # Safety
    /// As [`inreg_permute`].
    #[target_feature(enable = "avx512f,avx512vnni,avx2")]
    unsafe fn inreg_spill(
        kg: usize,
        a: *const u8,
        b: *const u8,
        offs: *const usize,
        c: *mut f32,
        ldc: usize,
        t: *const QTile,
        accumulate: bool,
    ) {
        // SAFETY: callers run on CPUs with AVX-512 VNNI and pass extents per the QgemmUkr contract.
        unsafe {
            let (lut, mask) = (lut(), _mm256_set1_epi8(0x0F));
            let mut buf = [_mm256_setzero_si256(); 2];
            let mut acc = [[_mm512_setzero_si512(); 3]; MR];
            for p in 0..kg.div_ceil(2) {
                let (lo, hi) = unpack(a.add(32 * p), lut, mask);
                _mm256_store_si256(&mut buf[0], lo);
                _mm256_store_si256(&mut buf[1], hi);
                let w = buf.as_ptr().cast::<i32>();
                kgroup(&mut acc, b.add(*offs.add(2 * p)), |i| _mm512_set1_epi32(w.add(i).read()));
                if 2 * p + 1 < kg {
                    kgroup(&mut acc, b.add(*offs.add(2 * p + 1)), |i| _mm512_set1_epi32(w.add(MR + i).read()));
                }
            }
            store(&acc, c, ldc, &*t, accumulate);
        }
    }

    static PANEL: [usize; MAX_KG] = edadm_kernels::qgemm::q_panel_offsets::<NR>();

    /// A driver-compatible kernel: declared `I8x4` so `qgemm` strides panels by `kg·MR·4`
    /// bytes; the nibbles fill the first half of each panel.
    fn kernel(name: &'static str, ukr: QgemmUkr) -> QgemmKernel {
        QgemmKernel {
            name,
            mr: MR,
            nr: NR,
            a_format: AFormat::I8x4,
            b_offset: 0,
            ukr,
            panel_offsets: &PANEL,
            narrow: None,
            direct_limit: 130,
        }
    }

    /// Packs row-major `m × 4kg` i4 values (in i8) as nibble panels, panel stride `kg·MR·4`.
    fn pack_nibbles(w: &[i8], m: usize, kg: usize, kern: &QgemmKernel) -> Vec<u8> {
        let mut out = vec![0u8; packed_q_len(kern, m, kg)];
        let stride = kg * MR * 4;
        let at =
            |r: usize, g: usize, t: usize| if r < m && g < kg { (w[r * kg * 4 + g * 4 + t] as u8) & 0x0F } else { 0 };
        for p in 0..m.div_ceil(MR) {
            for pair in 0..kg.div_ceil(2) {
                for i in 0..MR {
                    for t in 0..4 {
                        let r = p * MR + i;
                        out[p * stride + (pair * MR + i) * 4 + t] = at(r, 2 * pair, t) | at(r, 2 * pair + 1, t) << 4;
                    }
                }
            }
        }
        out
    }

    pub fn bench(c: &mut Criterion) {
        let Some(k) = Kernels::for_tier(Tier::Avx512Vnni) else {
            println!("skipped: gemm_i4 needs AVX-512 VNNI");
            return;
        };
        let mut g = c.benchmark_group("gemm_i4");
        g.sample_size(10)
            .warm_up_time(std::time::Duration::from_millis(500))
            .measurement_time(std::time::Duration::from_secs(2));
        let plan = *k.qgemm();
        let variants = [kernel("inreg_permute", inreg_permute), kernel("inreg_spill", inreg_spill)];
        // 32×32 b1, 16×16 b1 and b8, 8×8 b1, 4×4 b1 of the CIFAR-10 UNet (M = cout, N =
        // positions, K = 9·cin).
        for (m, n, kk) in
            [(128usize, 1024usize, 1152usize), (256, 256, 2304), (256, 2048, 2304), (256, 64, 2304), (256, 16, 2304)]
        {
            let kg = kk / 4;
            let w: Vec<i8> = (0..m * kk).map(|i| ((i * 37 + i / 7) % 16) as i8 - 8).collect();
            let b: Vec<u8> = (0..kg * n * 4).map(|i| (i * 13 % 251) as u8).collect();
            let offs: Vec<usize> = (0..kg).map(|g| g * n * 4).collect();
            let scale: Vec<f32> = (0..m).map(|i| 1e-3 * (1 + i % 3) as f32).collect();
            let ep = QEpilogue { scale: Some(&scale), zero_point: 117, bias: None, accumulate: false };
            let mut s = vec![0f32; qgemm_scratch_len(&plan, kg)];
            let unpacked = PackedQ::new(&plan, &w, m, kg);
            let nibbles = pack_nibbles(&w, m, kg, &variants[0]);
            let nref = PackedQRef { data: &nibbles, sums: unpacked.sums(), m, kg };
            let mut want = vec![0f32; m * n];
            qgemm(&plan, unpacked.view(), &b, &offs, n, MatMut { data: &mut want, rs: n, cs: 1 }, &ep, &mut s);
            for v in &variants {
                let mut got = vec![f32::NAN; m * n];
                qgemm(v, nref, &b, &offs, n, MatMut { data: &mut got, rs: n, cs: 1 }, &ep, &mut s);
                assert!(
                    got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{} differs from the i8 kernel",
                    v.name
                );
            }
            let mut out = vec![0f32; m * n];
            g.throughput(Throughput::Elements((m * n * kk) as u64));
            let id = format!("{m}x{n}x{kk}");
            g.bench_function(BenchmarkId::new("plan_unpack", &id), |bch| {
                bch.iter(|| {
                    qgemm(&plan, unpacked.view(), &b, &offs, n, MatMut { data: &mut out, rs: n, cs: 1 }, &ep, &mut s)
                })
            });
            for v in &variants {
                g.bench_function(BenchmarkId::new(v.name, &id), |bch| {
                    bch.iter(|| qgemm(v, nref, &b, &offs, n, MatMut { data: &mut out, rs: n, cs: 1 }, &ep, &mut s))
                });
            }
        }
        g.finish();
    }
}

fn bench(c: &mut Criterion) {
    #[cfg(target_arch = "x86_64")]
    x86::bench(c);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = c;
        println!("skipped: gemm_i4 is an x86-64 AVX-512 VNNI experiment");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
