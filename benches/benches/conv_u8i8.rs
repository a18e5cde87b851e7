//! Integer convolution and GEMM throughput per kernel tier on the layer shapes of the CIFAR-10
//! DDPM UNet (METHOD.md §5.1: 128 channels at 32×32, 256 at 16×16, 8×8 and 4×4), batch 1 and
//! 8, with the f32 convolution of the same shape beside it. Throughput is in MACs (criterion's
//! "elements"). The scalar reference runs at batch 1 only. Tiers with a kernel for weights in
//! `[−64, 63]` (AVX2, AVX-512F: `vpmaddubsw`) run again with 7-bit weights as `{tier}_w7`, and
//! with 4-bit weights (`[−8, 7]`, i16 accumulation) as `{tier}_w4`.
//!
//! Groups: `conv_u8i8/{variant}/{layer}_b{batch}`, `conv_f32/{variant}/{layer}_b{batch}`,
//! `gemm_u8i8/{variant}/{M}x{N}x{K}`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use edadm_kernels::gemm::{ConvGeom, MatMut};
use edadm_kernels::ops::act::Activation;
use edadm_kernels::ops::conv::{Conv2dPlan, conv2d};
use edadm_kernels::ops::qconv::{QConv2dPlan, QConvGeom, QInput, QOutput, qconv2d};
use edadm_kernels::ops::quant::{ActQ, quantize_c4};
use edadm_kernels::qgemm::{PackedQ, QEpilogue, qgemm, qgemm_scratch_len};
use edadm_kernels::{Kernels, Tier};

/// (name, cin, cout, h = w, kernel, stride, pad)
type Layer = (&'static str, usize, usize, usize, usize, usize, [usize; 4]);

const LAYERS: &[Layer] = &[
    ("conv_in_3to128_32x32", 3, 128, 32, 3, 1, [1, 1, 1, 1]),
    ("conv3x3_128_32x32", 128, 128, 32, 3, 1, [1, 1, 1, 1]),
    ("conv3x3_128to256_16x16", 128, 256, 16, 3, 1, [1, 1, 1, 1]),
    ("conv3x3_256_16x16", 256, 256, 16, 3, 1, [1, 1, 1, 1]),
    ("conv3x3_384to256_16x16", 384, 256, 16, 3, 1, [1, 1, 1, 1]),
    ("conv3x3_256_8x8", 256, 256, 8, 3, 1, [1, 1, 1, 1]),
    ("conv3x3_256_4x4", 256, 256, 4, 3, 1, [1, 1, 1, 1]),
    ("down3x3s2_128_32x32", 128, 128, 32, 3, 2, [0, 1, 0, 1]),
    ("skip1x1_384to256_16x16", 384, 256, 16, 1, 1, [0, 0, 0, 0]),
];

fn bench_convs(c: &mut Criterion) {
    let mut g = c.benchmark_group("conv_u8i8");
    g.sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    for &tier in Tier::compiled() {
        let Some(k) = Kernels::for_tier(tier) else {
            println!("skipped: {} (this CPU lacks it)", tier.name());
            continue;
        };
        let variants: &[(&str, usize)] = match k.qgemm_variants().len() {
            1 => &[("", 255)],
            2 => &[("", 255), ("_w7", 128)],
            _ => &[("", 255), ("_w7", 128), ("_w4", 16)],
        };
        for &(suffix, span) in variants {
            for &(name, cin, cout, hw, ks, stride, pad) in LAYERS {
                for n in [1usize, 8] {
                    if tier == Tier::Reference && n > 1 {
                        continue;
                    }
                    let geom = QConvGeom { n, cin, cout, h: hw, w: hw, kernel: [ks, ks], stride: [stride; 2], pad };
                    let [oh, ow] = geom.out_hw().unwrap();
                    let w: Vec<i8> =
                        (0..cout * cin * ks * ks).map(|i| ((i * 7 % span) as i32 - span as i32 / 2) as i8).collect();
                    let plan = QConv2dPlan::new(&k, geom, &w, &[0]).unwrap();
                    let layout = *plan.input_layouts().next().unwrap();
                    let x: Vec<f32> = (0..n * cin * hw * hw).map(|i| (i % 97) as f32 * 0.02 - 1.0).collect();
                    let q = ActQ { delta: 0.01, zero_point: 128, bits: 8 };
                    let mut qx = vec![0u8; layout.len()];
                    quantize_c4(&k, &x, cin, 0, Activation::None, q, &layout, &mut qx);
                    let scale = vec![1e-4f32; cout];
                    let mut y = vec![0f32; n * cout * oh * ow];
                    let mut scratch = vec![0f32; plan.scratch_len(&k)];
                    let macs = (n * cout * cin * ks * ks * oh * ow) as u64;
                    g.throughput(Throughput::Elements(macs));
                    let id = BenchmarkId::new(format!("{}{suffix}", tier.name()), format!("{name}_b{n}"));
                    g.bench_with_input(id, &(), |bch, _| {
                        bch.iter(|| {
                            let inp = [QInput { data: &qx, zero_point: 128, scale: &scale }];
                            qconv2d(&k, &plan, &inp, None, QOutput::F32(&mut y), &mut scratch)
                        })
                    });
                }
            }
        }
    }
    g.finish();

    // The f32 path of the same shapes, per f32 variant.
    let mut g = c.benchmark_group("conv_f32");
    g.sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    for tier in [Tier::Avx2, Tier::Avx512, Tier::Neon] {
        let Some(k) = Kernels::for_tier(tier) else { continue };
        for &(name, cin, cout, hw, ks, stride, pad) in LAYERS {
            for n in [1usize, 8] {
                let geom = ConvGeom {
                    c: cin,
                    h: hw,
                    w: hw,
                    kernel: [ks, ks],
                    stride: [stride; 2],
                    dilation: [1, 1],
                    pad,
                    pad_value: 0.0,
                };
                let (oh, ow) = (geom.out_h().unwrap(), geom.out_w().unwrap());
                let w: Vec<f32> = (0..cout * geom.k()).map(|i| (i % 89) as f32 * 0.001).collect();
                let plan = Conv2dPlan::new(&k, geom, 1, cout, &w).unwrap();
                let x: Vec<f32> = (0..n * cin * hw * hw).map(|i| (i % 97) as f32 * 0.01).collect();
                let mut y = vec![0f32; n * cout * oh * ow];
                let mut scratch = vec![0f32; plan.scratch_len(&k)];
                g.throughput(Throughput::Elements((n * cout * geom.k() * oh * ow) as u64));
                g.bench_with_input(BenchmarkId::new(tier.name(), format!("{name}_b{n}")), &(), |bch, _| {
                    bch.iter(|| conv2d(&k, &plan, &x, n, None, &mut y, &mut scratch))
                });
            }
        }
    }
    g.finish();
}

fn bench_gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm_u8i8");
    g.sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    for &tier in Tier::compiled() {
        let Some(k) = Kernels::for_tier(tier) else { continue };
        for (kern, [lo, hi]) in k.qgemm_variants() {
            let suffix = match lo {
                i8::MIN => "",
                -64 => "_w7",
                _ => "_w4",
            };
            for (m, n, kk) in [(128usize, 1024usize, 1152usize), (256, 256, 2304), (256, 512, 2304), (256, 64, 2304)] {
                if tier == Tier::Reference && m * n * kk > 200_000_000 {
                    continue;
                }
                let kg = kk / 4;
                let span = i32::from(hi) - i32::from(lo) + 1;
                let w: Vec<i8> = (0..m * kk).map(|i| (i32::from(lo) + (i % 251) as i32 % span) as i8).collect();
                let b: Vec<u8> = (0..kg * n * 4).map(|i| (i % 253) as u8).collect();
                let offs: Vec<usize> = (0..kg).map(|g| g * n * 4).collect();
                let p = PackedQ::new(kern, &w, m, kg);
                let scale = vec![1e-3f32; m];
                let mut out = vec![0f32; m * n];
                let mut s = vec![0f32; qgemm_scratch_len(kern, kg)];
                let ep = QEpilogue { scale: Some(&scale), zero_point: 128, bias: None, accumulate: false };
                g.throughput(Throughput::Elements((m * n * kk) as u64));
                let id = BenchmarkId::new(format!("{}{suffix}", tier.name()), format!("{m}x{n}x{kk}"));
                g.bench_with_input(id, &(), |bch, _| {
                    bch.iter(|| {
                        qgemm(kern, p.view(), &b, &offs, n, MatMut { data: &mut out, rs: n, cs: 1 }, &ep, &mut s)
                    })
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench_convs, bench_gemm);
criterion_main!(benches);
