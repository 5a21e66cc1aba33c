//! A small fork-join thread pool tuned for the forward pass.
//!
//! Decoding one token runs a few parallel regions per layer, each a few tens
//! of microseconds long, so what matters is the cost of starting and joining
//! a region. The workers spin on an epoch counter for a short while after
//! each region (a new one usually follows within microseconds) and only then
//! sleep on a condition variable; the calling thread works too.
//!
//! Work inside a region is handed out in chunks from an atomic counter, and a
//! worker *joins* a region only if it is still open: when the caller has
//! taken the last chunk it closes the region and waits just for the workers
//! that joined. A worker the OS has descheduled (the machine is shared) so
//! never holds a region up; the others do its share.

use std::cell::UnsafeCell;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_micros(500);

/// Set in `Shared::state` once the current region takes no more workers.
const CLOSED: usize = 1 << (usize::BITS - 1);

/// The job of the current region, with its lifetime erased: the region is
/// not closed and left before every worker that joined it has finished.
type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Written by the caller while the region is closed and empty; read by
    /// workers after they join.
    job: UnsafeCell<Option<Job>>,
    /// Bumped once per region; idle workers wait for it to change.
    epoch: AtomicU64,
    /// Workers inside the current region, plus `CLOSED` once it is closed.
    state: AtomicUsize,
    /// Workers asleep on `wake` (or about to be).
    sleepers: AtomicUsize,
    /// Workers that have started running.
    started: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only while `state` is `CLOSED` with no worker
// inside, and read only by a worker that joined (incremented `state` while
// it was open); the atomics order those accesses.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw job pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

/// A fixed set of threads that run closures together.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises regions started from different threads on one pool.
    running: Mutex<()>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("n_threads", &self.n_threads())
            .finish()
    }
}

/// The pools in use, by thread count (see [`ThreadPool::shared`]).
static POOLS: Mutex<Vec<Weak<ThreadPool>>> = Mutex::new(Vec::new());

impl ThreadPool {
    /// The process's pool of `n_threads` threads, made on first use and
    /// shared by every model that asks for that many: several models in
    /// one process take turns on one set of workers (regions from different
    /// threads are serialised), instead of each keeping its own set
    /// spinning against the others. The pool ends with its last user.
    pub fn shared(n_threads: usize) -> Arc<ThreadPool> {
        let n_threads = n_threads.max(1);
        let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|p| p.strong_count() > 0);
        if let Some(pool) = pools
            .iter()
            .filter_map(Weak::upgrade)
            .find(|p| p.n_threads() == n_threads)
        {
            return pool;
        }
        let pool = Arc::new(ThreadPool::new(n_threads));
        pools.push(Arc::downgrade(&pool));
        pool
    }

    /// A pool of `n_threads` threads in all, the caller's included
    /// (so `n_threads - 1` are spawned). `n_threads` of 0 counts as 1.
    pub fn new(n_threads: usize) -> Self {
        let shared = Arc::new(Shared {
            job: UnsafeCell::new(None),
            epoch: AtomicU64::new(0),
            state: AtomicUsize::new(CLOSED),
            sleepers: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..n_threads.max(1))
            .map(|index| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("tinyllm-{index}"))
                    .spawn(move || worker(&shared, index))
                    .expect("spawning a worker thread")
            })
            .collect::<Vec<_>>();
        // Wait until every worker runs, so the pool is ready (and a thread's
        // start-up work never lands in the first regions).
        while shared.started.load(Ordering::Acquire) < workers.len() {
            std::thread::yield_now();
        }
        ThreadPool {
            shared,
            workers,
            running: Mutex::new(()),
        }
    }

    /// The number of threads that may work on each region.
    pub fn n_threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Splits `0..n` into chunks of `chunk` and runs `f(thread, range)` for
    /// each exactly once, handing chunks out dynamically to the calling
    /// thread and whichever workers join; `thread` (below `n_threads()`)
    /// identifies the thread running the chunk, for per-thread scratch.
    /// Returns when every chunk is done. A panic in `f` is re-raised here.
    pub fn for_chunks<F: Fn(usize, Range<usize>) + Sync>(&self, n: usize, chunk: usize, f: F) {
        let chunk = chunk.max(1);
        if self.workers.is_empty() || n <= chunk {
            if n > 0 {
                f(0, 0..n);
            }
            return;
        }
        let next = AtomicUsize::new(0);
        self.region(|thread| {
            loop {
                let start = next.fetch_add(chunk, Ordering::Relaxed);
                if start >= n {
                    break;
                }
                f(thread, start..(start + chunk).min(n));
            }
        });
    }

    /// Runs `f(0)` on the calling thread and `f(i)` on each worker `i` that
    /// joins before `f(0)` returns; returns when all of those have finished.
    fn region<F: Fn(usize) + Sync>(&self, f: F) {
        let _serial = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let shared = &*self.shared;
        let job: &(dyn Fn(usize) + Sync) = &f;
        // SAFETY: erases the borrow's lifetime; `Close` below keeps this frame
        // (and so `f`) alive until no worker is inside the region.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(job) };
        // SAFETY: the region is closed and empty (the last one was left), so
        // no worker reads `job` now.
        unsafe { *shared.job.get() = Some(job) };
        shared.state.store(0, Ordering::SeqCst);
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }

        /// Closes the region and waits for the workers inside, even if
        /// `f(0)` unwinds, so `f` outlives them.
        struct Close<'a>(&'a Shared);
        impl Drop for Close<'_> {
            fn drop(&mut self) {
                self.0.state.fetch_or(CLOSED, Ordering::SeqCst);
                let start = Instant::now();
                let mut spins = 0u32;
                while self.0.state.load(Ordering::Acquire) != CLOSED {
                    spins = spins.wrapping_add(1);
                    if spins.is_multiple_of(64) && start.elapsed() > SPIN {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
        }
        let close = Close(shared);
        f(0);
        drop(close);
        if shared.panicked.swap(false, Ordering::SeqCst) {
            resume_unwind(Box::new("a tinyllm worker thread panicked"));
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let _guard = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(shared: &Shared, index: usize) {
    shared.started.fetch_add(1, Ordering::Release);
    let mut seen = 0u64;
    loop {
        // Wait for a new region: spin first, then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        while shared.epoch.load(Ordering::Acquire) == seen {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && start.elapsed() > SPIN {
                let mut guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
                shared.sleepers.fetch_add(1, Ordering::SeqCst);
                while shared.epoch.load(Ordering::SeqCst) == seen {
                    guard = shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                shared.sleepers.fetch_sub(1, Ordering::SeqCst);
                break;
            }
            std::hint::spin_loop();
        }
        seen = shared.epoch.load(Ordering::Acquire);
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        // Join the region unless the caller has already closed it.
        let mut state = shared.state.load(Ordering::Acquire);
        let joined = loop {
            if state & CLOSED != 0 {
                break false;
            }
            match shared.state.compare_exchange_weak(
                state,
                state + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break true,
                Err(now) => state = now,
            }
        };
        if !joined {
            continue;
        }
        // SAFETY: we are inside an open region, so the caller has stored its
        // job and will not leave before we do.
        let job = unsafe { (*shared.job.get()).expect("a job is set before a region opens") };
        // SAFETY: see above; the pointee outlives this call.
        let result = catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(index) }));
        if result.is_err() {
            shared.panicked.store(true, Ordering::SeqCst);
        }
        shared.state.fetch_sub(1, Ordering::Release);
    }
}

/// A raw pointer that the threads of a region may share, each using a
/// disjoint part of what it points to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SyncPtr<T>(pub(crate) *mut T);

impl<T> SyncPtr<T> {
    /// The pointer. (A method, so closures capture the `Sync` wrapper.)
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

// SAFETY: users only write disjoint elements from different threads.
unsafe impl<T> Send for SyncPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SyncPtr<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_short_regions_each_cover_their_range() {
        for n in [1, 2, 3, 8] {
            let pool = ThreadPool::new(n);
            for round in 0..2000 {
                let len = 1 + round % 50;
                let seen: Vec<AtomicUsize> = (0..len).map(|_| AtomicUsize::new(0)).collect();
                pool.for_chunks(len, 1, |thread, r| {
                    assert!(thread < n);
                    for i in r {
                        seen[i].fetch_add(1, Ordering::Relaxed);
                    }
                });
                assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn chunks_cover_the_range_once() {
        let pool = ThreadPool::new(3);
        for (n, chunk) in [(0, 4), (1, 4), (10, 3), (1000, 7), (64, 64)] {
            let seen: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.for_chunks(n, chunk, |_, r| {
                for i in r {
                    seen[i].fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn workers_wake_after_sleeping() {
        let pool = ThreadPool::new(2);
        std::thread::sleep(SPIN * 4);
        // A region long enough that the sleeping worker wakes and joins.
        let threads: Vec<AtomicUsize> = (0..2).map(|_| AtomicUsize::new(0)).collect();
        pool.for_chunks(200, 1, |thread, _| {
            threads[thread].fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(1));
        });
        assert!(threads[1].load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn a_worker_panic_reaches_the_caller_and_the_pool_survives() {
        let pool = ThreadPool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.for_chunks(100, 1, |_, r| {
                if r.start == 50 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        pool.for_chunks(10, 1, |_, _| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 10);
    }
}
