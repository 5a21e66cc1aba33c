//! Decoding a token allocates nothing: the forward pass, the thread pool and
//! the sampler work in buffers sized when the session was made.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tinyllm_core::cpu::CpuDevice;
use tinyllm_core::forward::{self, Plan, Want};
use tinyllm_core::kv_cache::{KvType, PAGE, PageAllocator, SeqKv};
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
    let config = SamplerConfig {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.9,
        repeat_penalty: 1.1,
        ..Default::default()
    };
    for threads in [1, 2, 3] {
        let opts = SessionOptions {
            n_threads: Some(threads),
            ..Default::default()
        };
        let mut session = Session::new(model.clone(), &opts).unwrap();
        let mut sampler = Sampler::new(config.clone(), model.config.vocab_size).unwrap();
        let mut history = Vec::with_capacity(512);
        // A first run fills the cache's pages; the counted run reuses them.
        for count in [false, true] {
            session.reset();
            history.clear();
            history.push(1u32);
            session.feed(&[1]).unwrap();
            for i in 0..210 {
                COUNTING.store(count && i >= 10, Ordering::SeqCst);
                let token = sampler.sample(session.logits(), &history);
                history.push(token);
                session.feed(&[token]).unwrap();
            }
            COUNTING.store(false, Ordering::SeqCst);
        }
        let n = ALLOCATIONS.swap(0, Ordering::SeqCst);
        println!("no_alloc: {threads} thread(s): {n} allocations in 200 decoding steps");
        if n != 0 {
            std::process::exit(1);
        }
    }

    // Four sequences decoding together, one forward pass per step.
    for threads in [1, 2] {
        let mut dev = CpuDevice::new(model.clone(), threads, 64, 512, KvType::F16).unwrap();
        let vocab = model.config.vocab_size;
        let mut pages = PageAllocator::new(4 * 512 / PAGE);
        let mut seqs: Vec<SeqKv> = (0..4).map(|_| SeqKv::default()).collect();
        let mut samplers: Vec<Sampler> = (0..4)
            .map(|i| {
                let c = SamplerConfig {
                    seed: i,
                    ..config.clone()
                };
                Sampler::new(c, vocab).unwrap()
            })
            .collect();
        let mut histories: Vec<Vec<u32>> = (0..4).map(|_| Vec::with_capacity(512)).collect();
        let mut plan = Plan::default();
        let mut out = vec![0.0f32; 4 * vocab];
        for count in [false, true] {
            for (s, h) in seqs.iter_mut().zip(&mut histories) {
                s.clear(&mut pages);
                h.clear();
            }
            // Prompts of different lengths, then 200 tokens each.
            for step in 0..201 {
                COUNTING.store(count && step >= 10, Ordering::SeqCst);
                plan.clear();
                for (i, (s, h)) in seqs.iter_mut().zip(&histories).enumerate() {
                    const PROMPT: [u32; 5] = [1, 2, 3, 4, 5];
                    let tokens: &[u32] = if step == 0 {
                        &PROMPT[..=i]
                    } else {
                        &h[h.len() - 1..]
                    };
                    assert!(s.reserve(&mut pages, tokens.len()));
                    plan.push(&s.pages, s.len, tokens, Want::Last);
                }
                forward::forward(
                    &model.config,
                    &model.weights,
                    &mut dev,
                    &plan,
                    &mut out,
                    &mut [],
                );
                for (i, ((s, h), e)) in seqs
                    .iter_mut()
                    .zip(&mut histories)
                    .zip(&plan.entries)
                    .enumerate()
                {
                    s.len += e.tokens.len();
                    let t = samplers[i].sample(&out[i * vocab..(i + 1) * vocab], h);
                    h.push(t);
                }
            }
            COUNTING.store(false, Ordering::SeqCst);
        }
        let n = ALLOCATIONS.swap(0, Ordering::SeqCst);
        println!("no_alloc: {threads} thread(s), 4 sequences: {n} allocations in 190 steps");
        if n != 0 {
            std::process::exit(1);
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
