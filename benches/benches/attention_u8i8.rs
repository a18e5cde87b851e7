//! Integer attention throughput on the UNets' attention shapes: fmnist-ddpm (64 channels at
//! 16×16, one head) at batch 1 and 8, CIFAR-10 DDPM (256 channels at 16×16) at batch 1 and 8,
//! on one thread and on two. Throughput in MACs of the two products (criterion's "elements").
//!
//! Group: `attention_u8i8/{tier}_t{threads}/{model}_b{batch}`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use edadm_kernels::ops::qattention::{QAttention, qattention_par};
use edadm_kernels::ops::quant::ActQ;
use edadm_kernels::pool::Pool;
use edadm_kernels::{Kernels, Tier};

fn bench_attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention_u8i8");
    g.sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    let pool = Pool::new(2).expect("threads");
    for &tier in Tier::compiled() {
        if tier == Tier::Reference {
            continue;
        }
        let Some(k) = Kernels::for_tier(tier) else {
            println!("skipped: {} (this CPU lacks it)", tier.name());
            continue;
        };
        for (model, channels) in [("fmnist", 64usize), ("cifar10", 256)] {
            for n in [1usize, 8] {
                let q = |delta: f32, zero_point: u8| ActQ { delta, zero_point, bits: 8 };
                let a = QAttention {
                    n,
                    channels,
                    heads: 1,
                    tokens: 256,
                    scale: 1.0 / (channels as f32).sqrt(),
                    scale_before: false,
                    q: q(0.03, 120),
                    k: q(0.03, 131),
                    v: q(0.02, 127),
                    p: q(1.0 / 255.0, 0),
                    key_tile: 256,
                };
                let len = n * channels * 256;
                let x = |s: usize| -> Vec<f32> { (0..len).map(|i| ((i * s + 11) % 97) as f32 * 0.05 - 2.4).collect() };
                let (qx, kx, vx) = (x(7), x(13), x(29));
                let mut out = vec![0f32; len];
                g.throughput(Throughput::Elements((2 * n * 256 * 256 * channels) as u64));
                for threads in [1usize, 2] {
                    let mut scratch = vec![0f32; a.scratch_len_threads(&k, threads)];
                    let id = BenchmarkId::new(format!("{}_t{threads}", tier.name()), format!("{model}_b{n}"));
                    g.bench_function(id, |b| {
                        b.iter(|| {
                            if threads == 1 {
                                qattention_par(
                                    &k,
                                    &a,
                                    &qx,
                                    &kx,
                                    &vx,
                                    &mut out,
                                    &mut scratch,
                                    &edadm_kernels::pool::Serial,
                                )
                            } else {
                                qattention_par(&k, &a, &qx, &kx, &vx, &mut out, &mut scratch, &pool)
                            }
                        })
                    });
                }
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench_attention);
criterion_main!(benches);
