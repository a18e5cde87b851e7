//! A sampling run performs no heap allocation, on any thread: a counting global allocator
//! around every sampler, on one and two threads, on a model that uses every f32 op (the format
//! crate's golden `tiny-fp32.edq`) and on a quantized one (`tiny-w4a8.edq`: integer convs,
//! linear, attention).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use edadm_runtime::sampler::{Sampler, SamplerConfig, SamplerKind, Skip, noise};
use edadm_runtime::{Model, Session, SessionOptions};

/// Allocations by every thread of the process (the session's pool workers included).
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

struct Counting;

fn count() {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; counting touches only an
// atomic counter, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's pointer, layout and size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    f();
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

fn golden_model(name: &str) -> Model {
    Model::open(format!("{}/../formats/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// One test in this binary: the counter is process-wide, and the test harness allocates on its
/// own thread whenever another test finishes.
#[test]
fn a_sampling_run_allocates_nothing() {
    the_counter_counts();
    for name in ["tiny-fp32.edq", "tiny-w4a8.edq"] {
        for threads in [1, 2] {
            sampling_allocates_nothing(&golden_model(name), threads);
        }
    }
}

fn sampling_allocates_nothing(model: &Model, threads: usize) {
    let schedule = model.schedule().unwrap();
    for batch in [1, 3] {
        let opts = SessionOptions { threads, ..SessionOptions::batch(batch) };
        let mut session = Session::new(model, &opts).unwrap();
        let len = session.sample_len();
        for (kind, eta, skip) in [
            (SamplerKind::Ddim, 0.0, Skip::Quad),
            (SamplerKind::Ddim, 0.5, Skip::Uniform),
            (SamplerKind::Ddpm, 0.0, Skip::Uniform),
            (SamplerKind::Plms, 0.0, Skip::Uniform),
            (SamplerKind::DpmSolverPP, 0.0, Skip::Quad),
        ] {
            let cfg = SamplerConfig { kind, steps: 5, skip, eta, clip_x0: Some([-1.0, 1.0]), seed: 3, first_image: 0 };
            let mut sampler = Sampler::new(&schedule, cfg, batch, len).unwrap();
            let mut x = vec![0f32; len];
            noise::initial_noise(3, 0, &mut x, batch);
            let mut steps = 0;
            let n = allocations_during(|| {
                sampler.run(&mut session, &mut x, &mut |_, _| steps += 1).unwrap();
            });
            assert_eq!(
                n, 0,
                "{kind:?} (eta {eta}, batch {batch}, {threads} threads) allocated {n} times in {steps} steps"
            );
            assert_eq!(steps, sampler.num_steps());
        }
        // One bare evaluation, too.
        let x = vec![0.1f32; len];
        let t = vec![4.0f32; batch];
        let n = allocations_during(|| {
            session.run(&x, &t).unwrap();
        });
        assert_eq!(n, 0, "Session::run allocated");
    }
}

fn the_counter_counts() {
    let n = allocations_during(|| {
        let v: Vec<u8> = Vec::with_capacity(10);
        std::hint::black_box(v);
    });
    assert_eq!(n, 1);
    // On another thread, too.
    let n = allocations_during(|| {
        std::thread::scope(|s| {
            s.spawn(|| std::hint::black_box(Vec::<u8>::with_capacity(10)));
        });
    });
    assert!(n >= 1);
}
