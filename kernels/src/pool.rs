//! A fixed pool of worker threads with a static work split, for the runtime's hot loops.
//!
//! [`Pool::run`] calls `f(i)` once for every thread index `i < threads` — index 0 on the
//! calling thread, the others on the pool's workers — and returns when all have returned. The
//! caller splits its work by index ([`split`]), so a run with the same thread count always
//! computes the same partition: results never depend on timing.
//!
//! Dispatching a job allocates nothing (the job is a borrowed closure; workers are woken through
//! an epoch counter, a short spin and a futex-backed condition variable), so the runtime keeps its
//! promise of no heap allocation per sampling step. Workers spin briefly after a job before they
//! sleep: the next op of a network usually follows within microseconds.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Work that can be split across threads.
pub trait Parallel: Sync {
    /// Threads a job runs on.
    fn threads(&self) -> usize;
    /// Calls `f(i)` for every `i < threads()`, concurrently, and returns when all have returned.
    fn run(&self, f: &(dyn Fn(usize) + Sync));
}

/// No threads: `f(0)` on the caller.
#[derive(Clone, Copy, Debug, Default)]
pub struct Serial;

impl Parallel for Serial {
    fn threads(&self) -> usize {
        1
    }

    fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        f(0);
    }
}

/// The part `[start, end)` of `0..total` that thread `i` of `n` takes: contiguous, sizes differ
/// by at most one `align`-sized block, blocks of `align` never split.
pub fn split(total: usize, n: usize, i: usize, align: usize) -> (usize, usize) {
    let align = align.max(1);
    let blocks = total.div_ceil(align);
    let (q, r) = (blocks / n, blocks % n);
    let b0 = i * q + i.min(r);
    let b1 = b0 + q + usize::from(i < r);
    ((b0 * align).min(total), (b1 * align).min(total))
}

/// The job slot: a type-erased pointer to the caller's closure.
#[derive(Clone, Copy)]
struct Job(*const (dyn Fn(usize) + Sync));

// SAFETY: the closure is `Sync` and outlives the job (`Pool::run` waits for every worker).
unsafe impl Send for Job {}

struct Shared {
    /// Incremented for every job; workers run a job when it moves.
    epoch: AtomicUsize,
    /// Workers still running the current job (at start-up: workers not yet running).
    pending: AtomicUsize,
    /// A worker's job panicked.
    panicked: AtomicBool,
    /// Workers asleep on (or about to sleep on) `wake`: a job only wakes them through the
    /// condition variable (a system call) when there is one; between the ops of a network they
    /// are still spinning and see the epoch move by themselves.
    sleepers: AtomicUsize,
    stop: AtomicBool,
    job: Mutex<Option<Job>>,
    wake: Condvar,
}

/// A fixed set of worker threads. Dropping it stops and joins them.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises jobs when the pool is shared between callers.
    busy: Mutex<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({} threads)", self.workers.len() + 1)
    }
}

/// Spins before a worker sleeps (a few tens of microseconds).
const SPINS: usize = 20_000;

impl Pool {
    /// A pool running jobs on `threads` threads: the caller and `threads − 1` workers.
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            job: Mutex::new(None),
            wake: Condvar::new(),
        });
        let mut workers = Vec::new();
        shared.pending.store(threads.max(1) - 1, Ordering::Release);
        for i in 1..threads.max(1) {
            let s = Arc::clone(&shared);
            match std::thread::Builder::new().name(format!("edadm-{i}")).spawn(move || worker(&s, i)) {
                Ok(h) => workers.push(h),
                Err(e) => {
                    // Those started see `stop` and exit (dropping the pool joins them).
                    shared.pending.fetch_sub(threads - i, Ordering::AcqRel);
                    drop(Pool { shared, workers, busy: Mutex::new(()) });
                    return Err(e);
                }
            }
        }
        // Wait until every worker runs its loop: a thread's start-up (its name, thread-locals)
        // allocates, and must not do so later inside a caller's allocation-free region.
        while shared.pending.load(Ordering::Acquire) != 0 {
            std::thread::yield_now();
        }
        Ok(Pool { shared, workers, busy: Mutex::new(()) })
    }
}

fn worker(s: &Shared, index: usize) {
    let mut seen = 0usize;
    s.pending.fetch_sub(1, Ordering::AcqRel);
    loop {
        // Wait for the epoch to move: spin, then sleep.
        let mut spins = 0;
        loop {
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            if s.epoch.load(Ordering::Acquire) != seen {
                break;
            }
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                // Counted before the epoch is checked under the lock: a job that reads no
                // sleeper moved the epoch before this increment (both SeqCst), so the check below
                // sees it and does not wait; one that reads a sleeper notifies.
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                let guard = s.job.lock().unwrap_or_else(|e| e.into_inner());
                let g = s
                    .wake
                    .wait_while(guard, |_| s.epoch.load(Ordering::SeqCst) == seen && !s.stop.load(Ordering::Acquire))
                    .unwrap_or_else(|e| e.into_inner());
                drop(g);
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        }
        seen = s.epoch.load(Ordering::Acquire);
        let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Job(f)) = job {
            // SAFETY: `Pool::run` keeps the closure alive until `pending` reaches 0.
            let f = unsafe { &*f };
            if catch_unwind(AssertUnwindSafe(|| f(index))).is_err() {
                s.panicked.store(true, Ordering::Release);
            }
        }
        s.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Parallel for Pool {
    fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            return f(0);
        }
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        let erased: *const (dyn Fn(usize) + Sync + '_) = f;
        // SAFETY: only the lifetime is erased; the pointer is cleared, and every worker is done
        // with it, before this function returns.
        let erased: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(erased) };
        {
            let mut job = s.job.lock().unwrap_or_else(|e| e.into_inner());
            *job = Some(Job(erased));
            s.pending.store(self.workers.len(), Ordering::Release);
            // Under the job lock: a worker that counted itself a sleeper either checks the epoch
            // after this (and runs the job) or is already waiting (and is notified below).
            s.epoch.fetch_add(1, Ordering::SeqCst);
        }
        if s.sleepers.load(Ordering::SeqCst) != 0 {
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        let mut spins = 0usize;
        while s.pending.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a worker thread of the pool panicked");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _g = self.shared.job.lock().unwrap_or_else(|e| e.into_inner());
        }
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A mutable slice shared by the threads of a job, each writing its own disjoint part.
#[derive(Clone, Copy, Debug)]
pub struct SharedMut<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: access goes through `part`, whose callers promise disjointness.
unsafe impl<T: Send> Send for SharedMut<T> {}
// SAFETY: as above: threads only reach the slice through disjoint `part`s.
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// Shares `s`.
    pub fn new(s: &mut [T]) -> Self {
        SharedMut { ptr: s.as_mut_ptr(), len: s.len() }
    }

    /// Length of the whole slice.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `[start, end)` of the slice.
    ///
    /// # Safety
    /// No other live reference (from this or another thread) may overlap `[start, end)`, and
    /// the slice `SharedMut::new` was given must outlive the result.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn part(&self, start: usize, end: usize) -> &mut [T] {
        assert!(start <= end && end <= self.len, "part {start}..{end} of {}", self.len);
        // SAFETY: in bounds (checked); disjointness and lifetime are the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), end - start) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_everything_once_in_aligned_blocks() {
        for total in [0, 1, 7, 8, 9, 100, 257] {
            for n in 1..5 {
                for align in [1, 4, 8] {
                    let mut next = 0;
                    for i in 0..n {
                        let (a, b) = split(total, n, i, align);
                        assert_eq!(a, next);
                        assert!(a % align == 0 || a == total);
                        next = b;
                    }
                    assert_eq!(next, total);
                }
            }
        }
    }

    #[test]
    fn every_thread_runs_its_index_once_per_job() {
        let pool = Pool::new(3).unwrap();
        let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..1000 {
            pool.run(&|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
        }
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1000));
        let mut v = vec![0u32; 1000];
        let sh = SharedMut::new(&mut v);
        pool.run(&|i| {
            let (a, b) = split(1000, 3, i, 8);
            // SAFETY: split parts are disjoint.
            for x in unsafe { sh.part(a, b) } {
                *x = i as u32 + 1;
            }
        });
        assert!(v.iter().all(|&x| x >= 1));
        assert_eq!(v[0], 1);
        assert_eq!(v[999], 3);
    }

    #[test]
    fn jobs_reach_workers_that_fell_asleep() {
        // Between jobs the workers outlast their spin and sleep on the condition variable: every
        // job must still wake them (a lost wake-up hangs this test).
        let pool = Pool::new(3).unwrap();
        let n = AtomicUsize::new(0);
        for round in 0..20 {
            if round % 4 == 0 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            pool.run(&|_| {
                n.fetch_add(1, Ordering::Relaxed);
            });
        }
        assert_eq!(n.load(Ordering::Relaxed), 60);
    }

    #[test]
    fn a_panicking_worker_is_reported_and_the_pool_survives() {
        let pool = Pool::new(2).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| pool.run(&|i| assert!(i == 0, "worker fails"))));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        pool.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }
}
