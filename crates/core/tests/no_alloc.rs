//! Decoding a token allocates nothing: the forward pass, the thread pool and
//! the sampler work in buffers sized when the session was made.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tinyllm_core::{Model, Sampler, SamplerConfig, Session, SessionOptions};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    // Big enough that every product is split across the threads.
    let dir = common::temp_dir("no-alloc");
    let path = common::write_random_model(&dir, [256, 512, 3, 8, 4, 1000, 512]);
    let model = Arc::new(Model::open(&path).unwrap());
    for threads in [1, 2, 3] {
        let opts = SessionOptions {
            n_threads: Some(threads),
            ..Default::default()
        };
        let mut session = Session::new(model.clone(), &opts).unwrap();
        let config = SamplerConfig {
            temperature: 0.9,
            top_k: 40,
            top_p: 0.9,
            repeat_penalty: 1.1,
            ..Default::default()
        };
        let mut sampler = Sampler::new(config, model.config.vocab_size).unwrap();
        let mut history = Vec::with_capacity(512);
        history.push(1u32);
        session.feed(&[1]).unwrap();
        let mut step = |count: bool| {
            COUNTING.store(count, Ordering::SeqCst);
            let token = sampler.sample(session.logits(), &history);
            history.push(token);
            session.feed(&[token]).unwrap();
        };
        // Warm up (the workers' first regions), then count 200 steps, all
        // inside the cache's first growth step of 256 positions.
        for _ in 0..10 {
            step(false);
        }
        for _ in 0..200 {
            step(true);
        }
        COUNTING.store(false, Ordering::SeqCst);
        let n = ALLOCATIONS.swap(0, Ordering::SeqCst);
        println!("no_alloc: {threads} thread(s): {n} allocations in 200 decoding steps");
        if n != 0 {
            std::process::exit(1);
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
