//! Facts about the machine the engine measures for itself.

use crate::pool::ThreadPool;
use std::time::Instant;

// ---------------------------------------------------------------------------
// The memory read ceiling
// ---------------------------------------------------------------------------

/// One cache line of the buffer [`read_bandwidth`] streams.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u64; 8]);

/// Lines each thread takes at a time: 4 MiB, long enough that the start of
/// a stream (where the hardware prefetcher has not caught up yet) costs
/// nothing, short enough that a thread that joins late still gets an equal
/// share (the chunks are handed out as threads ask, see
/// [`ThreadPool::for_chunks`]).
const READ_CHUNK_LINES: usize = 64 * 1024;

/// How far ahead of the loads the software prefetches run: 64 lines
/// (4 KiB, a page).
const PREFETCH_LINES: usize = 64;

/// The memory read bandwidth, in bytes per second, that `pool`'s threads
/// reach streaming a buffer of `bytes` (at least one chunk per thread; see
/// [`read_buffer_bytes`] for a size that defeats the caches): the best of
/// `reps` passes. Decoding reads every weight once per token, so this is the
/// ceiling its tokens/s times bytes per token can approach, and the figure
/// the benchmarks divide by.
///
/// The reads do nothing else: each line is loaded and folded into a
/// register with one XOR, so the figure is the memory system's and not a
/// kernel's. (It used to time the f32 product, an FMA per four bytes: that
/// read about 20% less than these loads on an Intel Xeon, 4-40% over ten
/// alternating passes, and on a Zen 4 less than llama.cpp's f16 decoding
/// streams.) Choices, each measured on the
/// Xeon (2 cores) against the alternatives in one run:
/// - 512-bit loads where AVX-512 runs (about 1.1x the 256-bit ones), four
///   lines per iteration into four registers, so no load waits on another;
/// - a prefetch into every cache level a page ahead of the loads (the
///   hardware prefetchers stop at page boundaries): about 3% over plain
///   loads, never below. `prefetchnta` halved the rate (its lines bypass
///   L2, where the streamer would have met them), and non-temporal loads
///   (`vmovntdqa`) are ordinary loads on write-back memory: no faster;
/// - every thread of the pool, on chunks of 4 MiB handed out as threads
///   ask, so a thread that starts late does not leave the other idle;
/// - a buffer of at least 1 GiB and 4x the last-level cache (see
///   [`read_buffer_bytes`]), so no pass finds the data in a cache.
pub fn read_bandwidth(pool: &ThreadPool, bytes: usize, reps: usize) -> f64 {
    let lines = (bytes / 64).max(pool.n_threads() * READ_CHUNK_LINES);
    // Written once, so every page is backed by memory of its own (untouched
    // pages of a zeroed allocation all map the one zero page, which stays
    // in cache).
    let data = vec![Line([0x0101_0101_0101_0101; 8]); lines];
    let mut best = 0.0f64;
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        pool.for_chunks(lines, READ_CHUNK_LINES, |_, range| {
            std::hint::black_box(read_lines(&data[range]));
        });
        best = best.max((lines * 64) as f64 / start.elapsed().as_secs_f64());
    }
    best
}

/// A buffer size for [`read_bandwidth`] that no cache holds: four times the
/// last-level cache, at least 1 GiB and at most 4 GiB.
pub fn read_buffer_bytes() -> usize {
    let llc = (1..=4).rev().find_map(cache_bytes).unwrap_or(0);
    llc.saturating_mul(4).clamp(1 << 30, 4 << 30)
}

/// The bytes of one cache of `level` (1 for L1 data, 2, 3...) as Linux
/// describes it for CPU 0, or None where it does not.
pub fn cache_bytes(level: usize) -> Option<usize> {
    let dir = "/sys/devices/system/cpu/cpu0/cache";
    (0..8).find_map(|i| {
        let read = |f: &str| std::fs::read_to_string(format!("{dir}/index{i}/{f}")).ok();
        let kind = read("type")?;
        if read("level")?.trim().parse::<usize>().ok()? != level || kind.trim() == "Instruction" {
            return None;
        }
        let size = read("size")?;
        let size = size.trim();
        let (n, unit) = size.split_at(size.find(|c: char| !c.is_ascii_digit())?);
        let n: usize = n.parse().ok()?;
        match unit {
            "K" => Some(n << 10),
            "M" => Some(n << 20),
            "G" => Some(n << 30),
            _ => None,
        }
    })
}

/// Reads every line of `lines` once, with the widest loads this CPU has,
/// and returns the XOR of all their words (so that no load can be left
/// out).
fn read_lines(lines: &[Line]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { read_lines_avx512(lines) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { read_lines_avx2(lines) };
        }
    }
    // Elsewhere the compiler vectorises this (NEON's 128-bit loads on
    // aarch64), with one accumulator per word of a line.
    let mut acc = [0u64; 8];
    for l in lines {
        for (a, w) in acc.iter_mut().zip(&l.0) {
            *a ^= w;
        }
    }
    acc.iter().fold(0, |a, w| a ^ w)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn read_lines_avx512(lines: &[Line]) -> u64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_si512(); 4];
    let quads = lines.chunks_exact(4);
    let tail = quads.remainder();
    for quad in quads {
        let p = quad.as_ptr();
        for (j, a) in acc.iter_mut().enumerate() {
            // A prefetch never faults, so it may run past the buffer.
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_LINES + j).cast());
            // SAFETY: line `j` of the quad is in `lines` and 64-byte aligned.
            *a = _mm512_xor_si512(*a, unsafe { _mm512_load_si512(p.add(j).cast()) });
        }
    }
    for l in tail {
        // SAFETY: `l` is a 64-byte aligned line.
        acc[0] = _mm512_xor_si512(acc[0], unsafe {
            _mm512_load_si512((l as *const Line).cast())
        });
    }
    let x = _mm512_xor_si512(
        _mm512_xor_si512(acc[0], acc[1]),
        _mm512_xor_si512(acc[2], acc[3]),
    );
    // SAFETY: any 64 bytes are eight u64.
    let w: [u64; 8] = unsafe { std::mem::transmute(x) };
    w.iter().fold(0, |a, v| a ^ v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn read_lines_avx2(lines: &[Line]) -> u64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_si256(); 4];
    let pairs = lines.chunks_exact(2);
    let tail = pairs.remainder();
    for pair in pairs {
        let p: *const __m256i = pair.as_ptr().cast();
        for (j, a) in acc.iter_mut().enumerate() {
            if j % 2 == 0 {
                // A prefetch never faults, so it may run past the buffer.
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2 * PREFETCH_LINES + j).cast());
            }
            // SAFETY: half `j` of the pair of lines is in `lines`, 32-byte aligned.
            *a = _mm256_xor_si256(*a, unsafe { _mm256_load_si256(p.add(j)) });
        }
    }
    for l in tail {
        let p: *const __m256i = (l as *const Line).cast();
        // SAFETY: both halves of the line are in `lines`, 32-byte aligned.
        let (lo, hi) = unsafe { (_mm256_load_si256(p), _mm256_load_si256(p.add(1))) };
        acc[0] = _mm256_xor_si256(acc[0], _mm256_xor_si256(lo, hi));
    }
    let x = _mm256_xor_si256(
        _mm256_xor_si256(acc[0], acc[1]),
        _mm256_xor_si256(acc[2], acc[3]),
    );
    // SAFETY: any 32 bytes are four u64.
    let w: [u64; 4] = unsafe { std::mem::transmute(x) };
    w.iter().fold(0, |a, v| a ^ v)
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
    fn read_bandwidth_reads_a_small_buffer() {
        let pool = crate::pool::ThreadPool::new(2);
        assert!(super::read_bandwidth(&pool, 1 << 20, 1) > 0.0);
        // Every word of every line counts, whatever the length's remainder.
        for n in [0, 1, 5, 8, 1000] {
            let lines: Vec<super::Line> = (0..n as u64)
                .map(|i| super::Line(std::array::from_fn(|j| (i * 8 + j as u64) * 0x9e37_79b9)))
                .collect();
            let want = (0..8 * n as u64).fold(0, |a, v| a ^ (v * 0x9e37_79b9));
            assert_eq!(super::read_lines(&lines), want, "{n} lines");
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                let got = unsafe { super::read_lines_avx2(&lines) };
                assert_eq!(got, want, "{n} lines, AVX2");
            }
        }
    }

    #[test]
    fn physical_cores_are_at_least_one_and_at_most_the_logical_cpus() {
        let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cores = super::physical_cores();
        assert!((1..=logical).contains(&cores), "{cores} of {logical}");
    }
}
