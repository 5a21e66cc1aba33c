//! Facts about the machine the engine measures for itself.

use crate::kernels::Kernels;
use crate::pool::ThreadPool;
use std::time::Instant;

/// The memory read bandwidth, in bytes per second, that the f32 matrix
/// product reaches streaming `bytes` of weights on `pool`'s threads: the
/// best of `reps` passes over a buffer much larger than the caches. This is
/// the ceiling decoding can approach (every weight is read once per token).
pub fn read_bandwidth(pool: &ThreadPool, bytes: usize, reps: usize) -> f64 {
    const K: usize = 16 * 1024; // floats per product: 64 KiB, one cache-sized row
    let kernels = Kernels::best();
    let rows = (bytes / 4 / K).max(pool.n_threads());
    let data = vec![1.0f32; rows * K]; // written once, so every page is mapped
    let ones = vec![1.0f32; K];
    let mut best = 0.0f64;
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        pool.for_chunks(rows, 16, |_, range| {
            let w = &data[range.start * K..range.end * K];
            let mut out = vec![0.0f32; range.len()];
            kernels.matmul_f32(w, K, &ones, 1, &mut out);
            std::hint::black_box(&out);
        });
        best = best.max((rows * K * 4) as f64 / start.elapsed().as_secs_f64());
    }
    best
}
