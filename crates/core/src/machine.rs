//! Facts about the machine the engine measures for itself.

use crate::kernels::Kernels;
use crate::pool::ThreadPool;
use crate::quant::{
    self, Block, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8Act, Interleaved, QK, QK_K,
};
use crate::weights::DType;
use half::{bf16, f16};
use std::time::{Duration, Instant};

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
#[cfg(target_arch = "x86_64")]
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

// ---------------------------------------------------------------------------
// The decode kernels with their weights in cache
// ---------------------------------------------------------------------------

/// Every weight type whose decode product the CPU runs, in the order of
/// `weights::DType` (llama2.c's groups with its usual group size, 64).
pub const KERNEL_TYPES: [DType; 15] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0x4,
    DType::Q4_0x4,
    DType::Q3K,
    DType::Q4K,
    DType::Q5K,
    DType::Q6K,
    DType::Q8Group { group_size: 64 },
];

/// What [`kernel_rate`] measured.
#[derive(Clone, Copy, Debug)]
pub struct KernelRate {
    /// The matrix: `rows` of `cols` weights.
    pub rows: usize,
    pub cols: usize,
    /// Bytes of weights (scales included) each product reads.
    pub bytes: usize,
    /// Those bytes over the fastest product's time.
    pub bytes_per_second: f64,
    /// The largest difference between an output and the f64 sum of the
    /// values the stored weights and the kernel's input stand for, over the
    /// root mean square of those sums: about 1e-6 from f32 rounding; a
    /// wrong kernel is off by about 1.
    pub error: f64,
}

/// One timed call: the product into `out`, one output per row.
type Run = Box<dyn Fn(&Kernels, &mut [f32])>;

/// A float type's product (`Kernels::matmul_f32_into` and its siblings).
type FloatProduct<T> = unsafe fn(&Kernels, &[T], usize, &[f32], usize, usize, *mut f32, usize);

/// A decode product ready to time: the weights in the layout the engine
/// keeps, the input in the form the type's kernel takes, and the values
/// both stand for.
struct Product {
    bytes: usize,
    run: Run,
    weights: Vec<f32>,
    input: Vec<f32>,
}

/// Times the decode product (one token: matrix times vector) of a `dtype`
/// matrix of about `bytes` (rows of `cols` weights, `cols` rounded up to a
/// multiple of 256) with `kernels`, on the calling thread alone, for about
/// `seconds`. A matrix that small stays in cache from one product to the
/// next, so the rate is what the kernel's instructions allow, not memory:
/// set beside [`read_bandwidth`] on one thread, it says whether the kernel
/// or memory limits decoding. The activations are quantized once, outside
/// the timing (decoding quantizes a vector once for several matrices).
pub fn kernel_rate(
    kernels: &Kernels,
    dtype: DType,
    bytes: usize,
    cols: usize,
    seconds: f64,
) -> KernelRate {
    let cols = cols.max(1).next_multiple_of(QK_K);
    let row_bytes = dtype
        .matrix_bytes(4, cols)
        .expect("a whole number of blocks")
        / 4;
    let rows = (bytes / row_bytes).max(4).next_multiple_of(4);
    let p = product(kernels, dtype, rows, cols);
    let mut out = vec![0.0f32; rows];

    (p.run)(kernels, &mut out);
    let want: Vec<f64> = p
        .weights
        .chunks_exact(cols)
        .map(|w| {
            w.iter()
                .zip(&p.input)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum()
        })
        .collect();
    let rms = (want.iter().map(|v| v * v).sum::<f64>() / rows as f64).sqrt();
    let worst = out
        .iter()
        .zip(&want)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(
            0.0f64,
            |m, e| if e.is_nan() { f64::INFINITY } else { m.max(e) },
        );

    // Warm the caches (and the core's clock), then time batches long
    // enough for the clock's resolution; the fastest batch counts (the
    // others lost time to interruptions).
    let budget = Duration::from_secs_f64(seconds.max(1e-3));
    let start = Instant::now();
    let mut calls = 0u32;
    while calls < 3 || start.elapsed() < budget / 10 {
        (p.run)(kernels, &mut out);
        calls += 1;
    }
    let per_call = start.elapsed().as_secs_f64() / calls as f64;
    let batch = ((budget.as_secs_f64() / 10.0 / per_call) as u32).max(1);
    let mut best = f64::INFINITY;
    for _ in 0..9 {
        let t = Instant::now();
        for _ in 0..batch {
            (p.run)(kernels, &mut out);
        }
        best = best.min(t.elapsed().as_secs_f64() / batch as f64);
    }
    std::hint::black_box(&out);
    KernelRate {
        rows,
        cols,
        bytes: p.bytes,
        bytes_per_second: p.bytes as f64 / best,
        error: worst / rms.max(f64::MIN_POSITIVE),
    }
}

/// Values in [-1, 1) from a xorshift generator, the same for every run.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// The `rows x cols` decode product of `dtype`, with values of its own.
fn product(kernels: &Kernels, dtype: DType, rows: usize, cols: usize) -> Product {
    let w = values(rows * cols, 0x9e37_79b9_7f4a_7c15);
    let x = values(cols, 0x2545_f491_4f6c_dd1d);
    let nb = cols / QK;
    // The activation blocks the quantized kernels take, and their values.
    let mut acts = vec![quant::quantize_act(&[0.0; QK]); nb];
    kernels.quantize_act(&x, &mut acts);
    let act_values: Vec<f32> = acts
        .iter()
        .flat_map(|a| a.qs.map(|q| a.d * q as f32))
        .collect();

    fn floats<T: Copy + Send + Sync + 'static>(
        w: &[f32],
        x: Vec<f32>,
        to: fn(f32) -> T,
        from: fn(T) -> f32,
        run: FloatProduct<T>,
    ) -> Product {
        let stored: Vec<T> = w.iter().map(|&v| to(v)).collect();
        let weights = stored.iter().map(|&v| from(v)).collect();
        let cols = x.len();
        let input = x.clone();
        Product {
            bytes: std::mem::size_of_val(stored.as_slice()),
            // SAFETY: `out` is the caller's `&mut` of one output per row.
            run: Box::new(move |k, out| unsafe {
                run(k, &stored, cols, &x, cols, 1, out.as_mut_ptr(), out.len())
            }),
            weights,
            input,
        }
    }
    fn blocks<B: Block + crate::kernels::QuantBlocks>(
        w: &[f32],
        acts: Vec<BlockQ8Act>,
        input: Vec<f32>,
    ) -> Product {
        let stored: Vec<B> = quant::quantize_row(w);
        let mut weights = vec![0.0; w.len()];
        quant::dequantize_row(&stored, &mut weights);
        let nb = acts.len();
        Product {
            bytes: std::mem::size_of_val(stored.as_slice()),
            // SAFETY: `out` is the caller's `&mut` of one output per row.
            run: Box::new(move |k, out| unsafe {
                k.matmul_quant_into(&stored, nb, &acts, 1, out.as_mut_ptr(), out.len())
            }),
            weights,
            input,
        }
    }
    fn groups<I: Interleaved + crate::kernels::QuantGroups>(
        w: &[f32],
        acts: Vec<BlockQ8Act>,
        input: Vec<f32>,
    ) -> Product {
        let nb = acts.len();
        let plain: Vec<I::Row> = quant::quantize_row(w);
        let mut weights = vec![0.0; w.len()];
        quant::dequantize_row(&plain, &mut weights);
        let stored: Vec<I> = plain
            .chunks_exact(4 * nb)
            .flat_map(|four| quant::interleave::<I>(four, nb))
            .collect();
        Product {
            bytes: std::mem::size_of_val(stored.as_slice()),
            // SAFETY: `out` is the caller's `&mut` of one output per row.
            run: Box::new(move |k, out| unsafe {
                k.matmul_quant4_into(&stored, nb, &acts, 1, out.as_mut_ptr(), out.len())
            }),
            weights,
            input,
        }
    }
    fn super_blocks<B: quant::SuperBlock + crate::kernels::KQuantBlocks>(
        stored: Vec<B>,
        acts: Vec<BlockQ8Act>,
        input: Vec<f32>,
    ) -> Product {
        let mut weights = vec![0.0; stored.len() * QK_K];
        quant::dequantize_row_k(&stored, &mut weights);
        let nsb = acts.len() / (QK_K / QK);
        Product {
            bytes: std::mem::size_of_val(stored.as_slice()),
            // SAFETY: `out` is the caller's `&mut` of one output per row.
            run: Box::new(move |k, out| unsafe {
                k.matmul_kquant_into(&stored, nsb, &acts, 1, out.as_mut_ptr(), out.len())
            }),
            weights,
            input,
        }
    }
    // k-quant blocks of arbitrary bits with small scales (tinyllm has no
    // k-quant quantizer; the speed does not depend on the values).
    let bits = |i: usize| (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    let scale = |i: usize| f16::from_f32(0.002 + 0.01 * (bits(i) as f32 / 255.0));
    let nsb = rows * cols / QK_K;

    match dtype {
        DType::F32 => floats(&w, x, |v| v, |v| v, Kernels::matmul_f32_into),
        DType::F16 => floats(&w, x, f16::from_f32, f16::to_f32, Kernels::matmul_f16_into),
        DType::BF16 => floats(
            &w,
            x,
            bf16::from_f32,
            bf16::to_f32,
            Kernels::matmul_bf16_into,
        ),
        DType::Q8_0 => blocks::<quant::BlockQ8_0>(&w, acts, act_values),
        DType::Q4_0 => blocks::<quant::BlockQ4_0>(&w, acts, act_values),
        DType::Q4_1 => blocks::<quant::BlockQ4_1>(&w, acts, act_values),
        DType::Q5_0 => blocks::<quant::BlockQ5_0>(&w, acts, act_values),
        DType::Q5_1 => blocks::<quant::BlockQ5_1>(&w, acts, act_values),
        DType::Q8_0x4 => groups::<quant::BlockQ8_0x4>(&w, acts, act_values),
        DType::Q4_0x4 => groups::<quant::BlockQ4_0x4>(&w, acts, act_values),
        DType::Q3K => {
            let stored = (0..nsb)
                .map(|i| BlockQ3K {
                    hmask: std::array::from_fn(|j| bits(i * 110 + j)),
                    qs: std::array::from_fn(|j| bits(i * 110 + 32 + j)),
                    scales: std::array::from_fn(|j| bits(i * 110 + 96 + j)),
                    d: scale(i),
                })
                .collect();
            super_blocks::<BlockQ3K>(stored, acts, act_values)
        }
        DType::Q4K => {
            let stored = (0..nsb)
                .map(|i| BlockQ4K {
                    d: scale(i),
                    dmin: scale(i + 1),
                    scales: std::array::from_fn(|j| bits(i * 144 + j)),
                    qs: std::array::from_fn(|j| bits(i * 144 + 12 + j)),
                })
                .collect();
            super_blocks::<BlockQ4K>(stored, acts, act_values)
        }
        DType::Q5K => {
            let stored = (0..nsb)
                .map(|i| BlockQ5K {
                    d: scale(i),
                    dmin: scale(i + 1),
                    scales: std::array::from_fn(|j| bits(i * 176 + j)),
                    qh: std::array::from_fn(|j| bits(i * 176 + 12 + j)),
                    qs: std::array::from_fn(|j| bits(i * 176 + 44 + j)),
                })
                .collect();
            super_blocks::<BlockQ5K>(stored, acts, act_values)
        }
        DType::Q6K => {
            let stored = (0..nsb)
                .map(|i| BlockQ6K {
                    ql: std::array::from_fn(|j| bits(i * 210 + j)),
                    qh: std::array::from_fn(|j| bits(i * 210 + 128 + j)),
                    scales: std::array::from_fn(|j| bits(i * 210 + 192 + j) as i8),
                    d: scale(i),
                })
                .collect();
            super_blocks::<BlockQ6K>(stored, acts, act_values)
        }
        DType::Q8Group { group_size: gs } => {
            let (mut wq, mut ws) = (vec![0i8; w.len()], vec![0.0f32; w.len() / gs]);
            kernels.quantize_q8g(&w, gs, &mut wq, &mut ws);
            let (mut xq, mut xs) = (vec![0i8; cols], vec![0.0f32; cols / gs]);
            kernels.quantize_q8g(&x, gs, &mut xq, &mut xs);
            let at = |q: &[i8], s: &[f32], j: usize| q[j] as f32 * s[j / gs];
            let weights = (0..w.len()).map(|j| at(&wq, &ws, j)).collect();
            let input = (0..cols).map(|j| at(&xq, &xs, j)).collect();
            Product {
                bytes: wq.len() + 4 * ws.len(),
                // SAFETY: `out` is the caller's `&mut` of one output per row.
                run: Box::new(move |k, out| unsafe {
                    k.matmul_q8g_into(&wq, &ws, cols, gs, &xq, &xs, 1, out.as_mut_ptr(), out.len())
                }),
                weights,
                input,
            }
        }
    }
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
    use crate::kernels::{Isa, Kernels};

    #[test]
    fn every_kernel_rate_is_positive_and_its_product_right_on_every_tier() {
        for kernels in Isa::ALL.into_iter().filter_map(Kernels::for_isa) {
            for dtype in super::KERNEL_TYPES {
                let r = super::kernel_rate(kernels, dtype, 16 << 10, 512, 1e-3);
                let what = format!("{} {}", kernels.isa().name(), dtype.name());
                assert!(r.bytes_per_second > 0.0, "{what}");
                assert_eq!(
                    r.bytes,
                    dtype.matrix_bytes(r.rows, r.cols).unwrap(),
                    "{what}"
                );
                // f32 rounding of 512-term sums: well under 1e-5 of the
                // outputs' size; a wrong kernel is off by about 1.
                assert!(r.error < 1e-5, "{what}: error {}", r.error);
            }
        }
    }

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
