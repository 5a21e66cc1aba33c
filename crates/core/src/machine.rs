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

/// The physical cores this process may run on: logical CPUs that share a
/// core (SMT siblings) count once. Decoding is bound by memory and by the
/// vector units, which siblings share, so a second thread per core only
/// adds contention (llama.cpp defaults to physical cores for that reason).
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    linux_cores().map_or(logical, |n| n.clamp(1, logical))
}

/// The distinct (package, core) pairs of the CPUs in this process's
/// affinity mask, from `/proc` and `/sys`; None where they cannot be read.
fn linux_cores() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    let mut cores = std::collections::BTreeSet::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        for cpu in a.parse::<usize>().ok()?..=b.parse::<usize>().ok()? {
            let topology = format!("/sys/devices/system/cpu/cpu{cpu}/topology");
            let read = |f: &str| std::fs::read_to_string(format!("{topology}/{f}")).ok();
            cores.insert((read("physical_package_id")?, read("core_id")?));
        }
    }
    (!cores.is_empty()).then_some(cores.len())
}

#[cfg(test)]
mod tests {
    #[test]
    fn physical_cores_are_at_least_one_and_at_most_the_logical_cpus() {
        let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cores = super::physical_cores();
        assert!((1..=logical).contains(&cores), "{cores} of {logical}");
    }
}
