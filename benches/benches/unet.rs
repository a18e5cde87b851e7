//! One UNet evaluation of the CIFAR-10 DDPM architecture (35.7 M parameters, 32×32) and of
//! fmnist-ddpm, f32 vs W8A8 vs W7A8 vs W4A8 of the same graph, at batch 1 and 8, on 1 and 2 threads.
//! Throughput is in images.
//!
//! The models are files: `benches/tools/unet_models.sh DIR` writes them (random weights of the
//! real shapes — speed depends on shapes only — quantized with `--recon none`); point
//! `EDADM_BENCH_MODELS` at DIR. Without it the bench prints a `skipped:` line.
//!
//! Groups: `unet/{model}-{f32|w8a8|w7a8|w4a8}/b{batch}_t{threads}`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use edadm_runtime::{Model, Session, SessionOptions};

fn bench_unet(c: &mut Criterion) {
    let Some(dir) = std::env::var_os("EDADM_BENCH_MODELS").map(std::path::PathBuf::from) else {
        println!("skipped: set EDADM_BENCH_MODELS to the folder benches/tools/unet_models.sh wrote");
        return;
    };
    let mut g = c.benchmark_group("unet");
    g.sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3));
    for arch in ["cifar10", "fmnist"] {
        for kind in ["f32", "w8a8", "w7a8", "w4a8"] {
            let path = dir.join(format!("{arch}-{kind}.edq"));
            let Ok(model) = Model::open(&path) else {
                println!("skipped: {} (missing)", path.display());
                continue;
            };
            for batch in [1usize, 8] {
                for threads in [1usize, 2] {
                    let opts = SessionOptions { threads, ..SessionOptions::batch(batch) };
                    let mut s = Session::new(&model, &opts).unwrap();
                    let x: Vec<f32> = (0..s.sample_len()).map(|i| ((i * 7919) % 2000) as f32 / 1000.0 - 1.0).collect();
                    let t = vec![500f32; batch];
                    g.throughput(Throughput::Elements(batch as u64));
                    let id = BenchmarkId::new(format!("{arch}-{kind}"), format!("b{batch}_t{threads}"));
                    g.bench_function(id, |b| b.iter(|| s.run(&x, &t).unwrap()[0]));
                }
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench_unet);
criterion_main!(benches);
