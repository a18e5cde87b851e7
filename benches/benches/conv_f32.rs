//! f32 convolution throughput per kernel tier on layer shapes of the CIFAR-10 DDPM UNet
//! (METHOD.md §5.1), batch 1. Throughput is reported in MACs (criterion's "elements").

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use edadm_kernels::gemm::ConvGeom;
use edadm_kernels::ops::conv::{Conv2dPlan, conv2d};
use edadm_kernels::{Kernels, Tier};

/// (name, cin, cout, h = w, kernel, stride, pad)
type Layer = (&'static str, usize, usize, usize, usize, usize, [usize; 4]);

const LAYERS: &[Layer] = &[
    ("conv3x3_32_32x32", 32, 32, 32, 3, 1, [1, 1, 1, 1]),
    ("conv3x3_128_32x32", 128, 128, 32, 3, 1, [1, 1, 1, 1]),
    ("conv3x3_256_16x16", 256, 256, 16, 3, 1, [1, 1, 1, 1]),
    ("conv3x3_256_4x4", 256, 256, 4, 3, 1, [1, 1, 1, 1]),
    ("down3x3s2_128_32x32", 128, 128, 32, 3, 2, [0, 1, 0, 1]),
    ("conv1x1_384to256_16x16", 384, 256, 16, 1, 1, [0, 0, 0, 0]),
];

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("conv_f32");
    g.sample_size(10);
    for &tier in Tier::compiled() {
        let Some(k) = Kernels::for_tier(tier) else {
            println!("skipped: {} (this CPU lacks it)", tier.name());
            continue;
        };
        for &(name, cin, cout, hw, ks, stride, pad) in LAYERS {
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
            let x: Vec<f32> = (0..cin * hw * hw).map(|i| (i % 97) as f32 * 0.01).collect();
            let w: Vec<f32> = (0..cout * geom.k()).map(|i| (i % 89) as f32 * 0.001).collect();
            let plan = Conv2dPlan::new(&k, geom, 1, cout, &w).unwrap();
            let mut y = vec![0f32; cout * oh * ow];
            let mut scratch = vec![0f32; plan.scratch_len(&k)];
            g.throughput(Throughput::Elements((cout * geom.k() * oh * ow) as u64));
            g.bench_with_input(BenchmarkId::new(tier.name(), name), &(), |b, _| {
                b.iter(|| conv2d(&k, &plan, &x, 1, None, &mut y, &mut scratch))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
