//! The thread pool's hand-off: one empty job on 2 threads, back to back (the cost every op of a
//! plan pays before its own work), and a worker woken from sleep. Compare with the per-op times
//! of `edadm bench --profile`: an op of a few microseconds should not be split.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use edadm_kernels::pool::{Parallel, Pool};

fn handoff(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool_handoff");
    let pool = Pool::new(2).expect("threads");
    g.bench_function("empty_job_2_threads", |b| {
        b.iter(|| {
            pool.run(&|i| {
                std::hint::black_box(i);
            })
        })
    });
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    g.bench_function("empty_job_after_1ms_idle", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                std::thread::sleep(Duration::from_millis(1));
                let s = std::time::Instant::now();
                pool.run(&|i| {
                    std::hint::black_box(i);
                });
                total += s.elapsed();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, handoff);
criterion_main!(benches);
