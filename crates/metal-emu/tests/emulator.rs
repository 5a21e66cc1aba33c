//! The emulator against probe kernels (tests/kernels/): that it computes
//! what Metal computes, and that it catches the bugs it claims to catch.
//! Each check that must catch a bug runs the buggy kernel and shows it is
//! caught, next to the fixed kernel passing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use half::f16;
use tinyllm_core::gpu::{Arg, Gpu, Grid};
use tinyllm_metal_emu::{Buffer, Emulator, Library, Options, Order};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A kernel file as the library would hold it: with a `#line` naming it.
fn source(name: &str, text: &str) -> String {
    format!("#line 1 \"{name}\"\n{text}")
}

fn kernel_file(name: &str) -> &'static str {
    match name {
        "q4_0_matvec.metal" => include_str!("kernels/q4_0_matvec.metal"),
        "matmul.metal" => include_str!("kernels/matmul.metal"),
        "faults.metal" => include_str!("kernels/faults.metal"),
        "features.metal" => include_str!("kernels/features.metal"),
        _ => panic!("no kernel file {name}"),
    }
}

/// The compiled library of a kernel file, compiled once per test process.
fn library(name: &'static str) -> Library {
    type Cells = HashMap<&'static str, Arc<OnceLock<Library>>>;
    static LIBS: Mutex<Option<Cells>> = Mutex::new(None);
    let cell = LIBS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(name)
        .or_default()
        .clone();
    cell.get_or_init(|| {
        Emulator::new()
            .compile(&source(name, kernel_file(name)))
            .unwrap_or_else(|e| panic!("{e}"))
    })
    .clone()
}

fn emulator(order: Order) -> Emulator {
    Emulator::with_options(Options {
        order,
        poison: true,
    })
}

fn upload<T: Copy>(gpu: &Emulator, data: &[T]) -> Buffer {
    let bytes = std::mem::size_of_val(data);
    let buf = gpu.buffer(bytes).unwrap();
    // SAFETY: the buffer has `bytes` bytes, and no work is running.
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr().cast::<u8>(), gpu.contents(&buf), bytes);
    }
    buf
}

fn download<T: Copy + Default>(gpu: &Emulator, buf: &Buffer, n: usize) -> Vec<T> {
    let mut out = vec![T::default(); n];
    // SAFETY: the buffer holds at least n values of T, and no work is running.
    unsafe {
        std::ptr::copy_nonoverlapping(gpu.contents(buf).cast::<T>(), out.as_mut_ptr(), n);
    }
    out
}

fn bytes_of<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is plain data (the argument structs: u32 and f32 fields).
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// A deterministic xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1).
    fn float(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Runs one dispatch; the emulator's error as a string.
fn run_one(
    gpu: &mut Emulator,
    lib: &Library,
    kernel: &str,
    args: &[Arg<'_, Buffer>],
    grid: Grid,
) -> Result<(), String> {
    let p = gpu.pipeline(lib, kernel).map_err(|e| e.to_string())?;
    gpu.dispatch(&p, args, grid);
    gpu.run().map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------
// Arithmetic: q4_0 matvec and simdgroup matmul against float64 references
// ---------------------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy)]
struct MatvecArgs {
    rows: u32,
    cols: u32,
}

/// q4_0 blocks (18 bytes: f16 scale, 16 bytes of nibbles) of a rows x cols
/// matrix, random.
fn q4_0_matrix(rng: &mut Rng, rows: usize, cols: usize) -> Vec<u8> {
    let mut w = Vec::with_capacity(rows * cols / 32 * 18);
    for _ in 0..rows * cols / 32 {
        let d = f16::from_f32(rng.float() * 0.05);
        w.extend_from_slice(&d.to_bits().to_le_bytes());
        for _ in 0..16 {
            w.push(rng.next() as u8);
        }
    }
    w
}

/// y = W x in float64, and the sum of |terms| of each row (for the bound).
fn q4_0_reference(w: &[u8], x: &[f32], rows: usize, cols: usize) -> Vec<(f64, f64)> {
    (0..rows)
        .map(|r| {
            let (mut y, mut mag) = (0.0f64, 0.0f64);
            for b in 0..cols / 32 {
                let blk = &w[(r * cols / 32 + b) * 18..][..18];
                let d = f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f64();
                for i in 0..16 {
                    let q = blk[2 + i];
                    for (v, col) in [((q & 15) as f64 - 8.0, i), ((q >> 4) as f64 - 8.0, i + 16)] {
                        let t = d * v * x[b * 32 + col] as f64;
                        y += t;
                        mag += t.abs();
                    }
                }
            }
            (y, mag)
        })
        .collect()
}

/// Float32 accumulation against float64: a relative error of a few float32
/// epsilons (1.2e-7) per addition, over the sum of |terms|; 1e-5 leaves a
/// margin for rows of 4096 values.
const F32_SUM_TOLERANCE: f64 = 1e-5;

fn check_q4_0_matvec(gpu: &mut Emulator, rows: usize, cols: usize, threads: u32, seed: u64) {
    let mut rng = Rng(seed);
    let w = q4_0_matrix(&mut rng, rows, cols);
    let x: Vec<f32> = (0..cols).map(|_| rng.float()).collect();
    let args = MatvecArgs {
        rows: rows as u32,
        cols: cols as u32,
    };
    let (wb, xb, yb) = (
        upload(gpu, &w),
        upload(gpu, &x),
        gpu.buffer(rows * 4).unwrap(),
    );
    let lib = library("q4_0_matvec.metal");
    let start = Instant::now();
    run_one(
        gpu,
        &lib,
        "q4_0_matvec",
        &[
            Arg::Bytes(bytes_of(&args)),
            Arg::Buffer(&wb, 0),
            Arg::Buffer(&xb, 0),
            Arg::Buffer(&yb, 0),
        ],
        Grid::linear(rows as u32, threads),
    )
    .unwrap();
    let took = start.elapsed();
    let y: Vec<f32> = download(gpu, &yb, rows);
    for (r, (&got, (want, mag))) in y.iter().zip(q4_0_reference(&w, &x, rows, cols)).enumerate() {
        assert!(
            (got as f64 - want).abs() <= F32_SUM_TOLERANCE * mag.max(1e-30),
            "{:?}: row {r}: {got} vs {want}",
            gpu.options().order
        );
    }
    if rows * cols >= 1 << 24 {
        eprintln!("q4_0 matvec {rows}x{cols}: {took:?}");
        assert!(
            took.as_secs_f64() < 2.0,
            "a {rows}x{cols} q4_0 matvec took {took:?}"
        );
    }
}

#[test]
fn q4_0_matvec_matches_a_float64_reference_in_every_order() {
    for order in Order::ALL {
        let mut gpu = emulator(order);
        check_q4_0_matvec(&mut gpu, 7, 256, 64, 1);
        check_q4_0_matvec(&mut gpu, 3, 4096, 96, 2);
        check_q4_0_matvec(&mut gpu, 2, 1024, 1024, 3);
    }
}

#[test]
fn q4_0_matvec_of_4096_by_4096_takes_well_under_a_second() {
    check_q4_0_matvec(&mut Emulator::new(), 4096, 4096, 64, 4);
}

#[repr(C)]
#[derive(Clone, Copy)]
struct MatmulArgs {
    m: u32,
    n: u32,
    k: u32,
}

#[test]
fn simdgroup_matmul_matches_a_float64_reference() {
    let (m, n, k) = (16usize, 24usize, 32usize);
    let mut rng = Rng(5);
    // Values exact in f16, so the f16 kernel's inputs equal the f32 one's.
    let a: Vec<f32> = (0..m * k)
        .map(|_| f16::from_f32(rng.float()).to_f32())
        .collect();
    let b: Vec<f32> = (0..k * n)
        .map(|_| f16::from_f32(rng.float()).to_f32())
        .collect();
    let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
    let want: Vec<f64> = (0..m * n)
        .map(|i| {
            (0..k)
                .map(|j| a[i / n * k + j] as f64 * b[j * n + i % n] as f64)
                .sum()
        })
        .collect();
    let lib = library("matmul.metal");
    let args = MatmulArgs {
        m: m as u32,
        n: n as u32,
        k: k as u32,
    };
    let grid = Grid {
        groups: [(n / 8) as u32, (m / 8) as u32, 1],
        threads: [32, 1, 1],
        shared: 0,
    };
    let a16: Vec<u16> = a.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
    let b16: Vec<u16> = b.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
    for order in Order::ALL {
        let mut gpu = emulator(order);
        for (kernel, ab, bb) in [
            ("matmul8x8_f32", upload(&gpu, &a), upload(&gpu, &b)),
            ("matmul8x8_f16", upload(&gpu, &a16), upload(&gpu, &b16)),
            ("matmul8x8_bt", upload(&gpu, &a), upload(&gpu, &bt)),
        ] {
            let c = gpu.buffer(m * n * 4).unwrap();
            run_one(
                &mut gpu,
                &lib,
                kernel,
                &[
                    Arg::Bytes(bytes_of(&args)),
                    Arg::Buffer(&ab, 0),
                    Arg::Buffer(&bb, 0),
                    Arg::Buffer(&c, 0),
                ],
                grid,
            )
            .unwrap();
            let got: Vec<f32> = download(&gpu, &c, m * n);
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g as f64 - w).abs() < 1e-5,
                    "{kernel}: C[{i}] = {g}, not {w}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Bugs the emulator catches
// ---------------------------------------------------------------------------

/// shift_left with or without its barrier, in one order: whether out is
/// right.
fn shift_left(order: Order, barrier: u32) -> bool {
    let mut gpu = emulator(order);
    let n = 64 * 3;
    let input: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let (inb, outb) = (upload(&gpu, &input), gpu.buffer(n * 4).unwrap());
    run_one(
        &mut gpu,
        &library("faults.metal"),
        "shift_left",
        &[
            Arg::Buffer(&inb, 0),
            Arg::Buffer(&outb, 0),
            Arg::Bytes(&barrier.to_le_bytes()),
        ],
        Grid::linear(3, 64),
    )
    .unwrap();
    let out: Vec<f32> = download(&gpu, &outb, n);
    (0..n).all(|i| {
        out[i]
            == if i % 64 == 63 {
                i as f32
            } else {
                i as f32 + 1.0
            }
    })
}

#[test]
fn a_missing_barrier_is_caught_in_some_order_and_every_order_runs() {
    for order in Order::ALL {
        assert!(
            shift_left(order, 1),
            "{order:?}: the kernel with its barrier"
        );
    }
    let caught: Vec<Order> = Order::ALL
        .into_iter()
        .filter(|&o| !shift_left(o, 0))
        .collect();
    assert!(
        !caught.is_empty(),
        "the missing barrier went unnoticed in every order"
    );
    // Why every order must run: forward catches this one, reverse does not
    // (each thread then reads a neighbour that already wrote).
    assert!(caught.contains(&Order::Forward));
    assert!(!caught.contains(&Order::Reverse));
}

#[test]
fn simd_sum_under_a_lane_dependent_branch_is_reported_with_its_line() {
    let mut gpu = Emulator::new();
    let out = gpu.buffer(32 * 4).unwrap();
    let err = run_one(
        &mut gpu,
        &library("faults.metal"),
        "divergent_sum",
        &[Arg::Buffer(&out, 0)],
        Grid::linear(1, 32),
    )
    .unwrap_err();
    let line = kernel_file("faults.metal")
        .lines()
        .position(|l| l.contains("v = simd_sum(v);"))
        .unwrap()
        + 1;
    assert!(err.contains("kernel divergent_sum"), "{err}");
    assert!(err.contains(&format!("faults.metal:{line}")), "{err}");
    assert!(err.contains("lanes 0-15 wait at simd_sum"), "{err}");
    assert!(err.contains("lanes 16-31 returned"), "{err}");
}

#[test]
fn a_barrier_some_threads_never_reach_is_reported() {
    let mut gpu = Emulator::new();
    let out = gpu.buffer(64 * 4).unwrap();
    let err = run_one(
        &mut gpu,
        &library("faults.metal"),
        "early_return",
        &[Arg::Buffer(&out, 0)],
        Grid::linear(1, 64),
    )
    .unwrap_err();
    assert!(err.contains("threadgroup_barrier"), "{err}");
    assert!(err.contains("threads 32-63 returned"), "{err}");
    assert!(err.contains("faults.metal:"), "{err}");
    // With one SIMD group, every thread reaches it.
    run_one(
        &mut gpu,
        &library("faults.metal"),
        "early_return",
        &[Arg::Buffer(&out, 0)],
        Grid::linear(1, 32),
    )
    .unwrap();
}

#[test]
fn simdgroup_matrix_operands_that_differ_across_lanes_are_reported() {
    let mut gpu = Emulator::new();
    let input = upload(&gpu, &[0.0f32; 128]);
    let out = gpu.buffer(64 * 4).unwrap();
    let err = run_one(
        &mut gpu,
        &library("faults.metal"),
        "matrix_lanes_differ",
        &[Arg::Buffer(&input, 0), Arg::Buffer(&out, 0)],
        Grid::linear(1, 32),
    )
    .unwrap_err();
    assert!(err.contains("simdgroup_load"), "{err}");
    assert!(err.contains("differs between lane 0 and lane 1"), "{err}");
}

/// A reduction kernel (tree_sum or shuffle_sum) down to `last`: its sums
/// of groups of `group` values against float64.
fn reduction_is_right(kernel: &str, group: usize, last: u32) -> bool {
    let mut gpu = Emulator::new();
    let n = group * 4;
    let mut rng = Rng(9);
    let input: Vec<f32> = (0..n).map(|_| rng.float()).collect();
    let (inb, outb) = (upload(&gpu, &input), gpu.buffer(4 * 4).unwrap());
    run_one(
        &mut gpu,
        &library("faults.metal"),
        kernel,
        &[
            Arg::Buffer(&inb, 0),
            Arg::Buffer(&outb, 0),
            Arg::Bytes(&last.to_le_bytes()),
        ],
        Grid::linear(4, group as u32),
    )
    .unwrap();
    let out: Vec<f32> = download(&gpu, &outb, 4);
    out.iter().enumerate().all(|(g, &got)| {
        let chunk = &input[g * group..][..group];
        let want: f64 = chunk.iter().map(|&v| v as f64).sum();
        let mag: f64 = chunk.iter().map(|&v| v.abs() as f64).sum();
        (got as f64 - want).abs() <= F32_SUM_TOLERANCE * mag
    })
}

#[test]
fn a_reduction_missing_a_step_gives_an_answer_the_test_rejects() {
    assert!(reduction_is_right("tree_sum", 64, 1));
    assert!(!reduction_is_right("tree_sum", 64, 2));
    assert!(reduction_is_right("shuffle_sum", 32, 1));
    assert!(!reduction_is_right("shuffle_sum", 32, 2));
}

#[test]
fn an_unguarded_read_of_threadgroup_memory_reads_nan() {
    let mut gpu = Emulator::new();
    let input = upload(&gpu, &[1.0f32; 64]);
    let out = gpu.buffer(64 * 4).unwrap();
    run_one(
        &mut gpu,
        &library("faults.metal"),
        "unguarded_read",
        &[Arg::Buffer(&input, 0), Arg::Buffer(&out, 0)],
        Grid::linear(1, 64),
    )
    .unwrap();
    let got: Vec<f32> = download(&gpu, &out, 64);
    assert!(got[..63].iter().all(|&v| v == 2.0));
    assert!(got[63].is_nan(), "{}", got[63]);
}

#[test]
fn an_access_past_a_buffer_is_an_error_and_the_emulator_goes_on() {
    let mut gpu = Emulator::new();
    let lib = library("faults.metal");
    let out = gpu.buffer(16 * 4).unwrap();
    // 16 floats (a 4 KiB page), then the guard page, which thread 1 writes.
    let err = run_one(
        &mut gpu,
        &lib,
        "write_past_end",
        &[Arg::Buffer(&out, 0), Arg::Bytes(&1024u32.to_le_bytes())],
        Grid::linear(1, 8),
    )
    .unwrap_err();
    assert!(err.contains("kernel write_past_end"), "{err}");
    assert!(err.contains("invalid memory access"), "{err}");
    assert!(err.contains("in thread 1"), "{err}");
    // Within the buffer, the same kernel runs.
    run_one(
        &mut gpu,
        &lib,
        "write_past_end",
        &[Arg::Buffer(&out, 0), Arg::Bytes(&2u32.to_le_bytes())],
        Grid::linear(1, 8),
    )
    .unwrap();
    assert_eq!(download::<f32>(&gpu, &out, 3), [1.0, 0.0, 1.0]);
}

#[test]
fn a_thread_overflowing_its_stack_is_an_error() {
    let mut gpu = Emulator::new();
    let out = gpu.buffer(32 * 4).unwrap();
    let err = run_one(
        &mut gpu,
        &library("faults.metal"),
        "deep_stack",
        &[Arg::Buffer(&out, 0)],
        Grid::linear(1, 32),
    )
    .unwrap_err();
    assert!(err.contains("overflowed its 128 KiB stack"), "{err}");
}

// ---------------------------------------------------------------------------
// Compile-time checks
// ---------------------------------------------------------------------------

const CAST_TRAP: &str = "#include <metal_stdlib>
using namespace metal;
kernel void cast(device const int4 *in [[buffer(0)]], device float4 *out [[buffer(1)]],
                 uint i [[thread_position_in_grid]]) {
    out[i] = (float4)in[i];
}
";

#[test]
fn the_vector_cast_trap_is_linted_and_does_not_compile() {
    let src = source("cast.metal", CAST_TRAP);
    let err = tinyllm_metal_emu::lint(&src).unwrap_err();
    assert!(err.starts_with("cast.metal:5: a cast to float4"), "{err}");
    let err = Emulator::new().compile(&src).unwrap_err().to_string();
    assert!(err.contains("cast.metal:5"), "{err}");
    // The conversion, and a cast between pointers to vectors, are fine.
    let fixed = src.replace(
        "(float4)in[i]",
        "float4(in[i]) + *(device const float4 *)(in + i)",
    );
    tinyllm_metal_emu::lint(&fixed).unwrap();
}

#[test]
fn the_converted_vector_holds_the_values() {
    let fixed = source(
        "cast.metal",
        &CAST_TRAP.replace("(float4)in[i]", "float4(in[i])"),
    );
    let mut gpu = Emulator::new();
    let lib = gpu.compile(&fixed).unwrap();
    let input = upload(&gpu, &[3i32, -1, 7, 0]);
    let out = gpu.buffer(16).unwrap();
    run_one(
        &mut gpu,
        &lib,
        "cast",
        &[Arg::Buffer(&input, 0), Arg::Buffer(&out, 0)],
        Grid::linear(1, 1),
    )
    .unwrap();
    assert_eq!(download::<f32>(&gpu, &out, 4), [3.0, -1.0, 7.0, 0.0]);
}

#[test]
fn a_compile_error_names_the_metal_file_and_line() {
    let src = "#line 1 \"common.h\"\n#include <metal_stdlib>\nusing namespace metal;\n\
               #line 1 \"broken.metal\"\n// one\n// two\n\
               kernel void k(device float *x [[buffer(0)]], uint i [[thread_position_in_grid]]) {\n\
               \x20   x[i] = undeclared + 1.0f;\n}\n";
    let err = Emulator::new().compile(src).unwrap_err().to_string();
    assert!(err.contains("broken.metal:4:"), "{err}");
    assert!(err.contains("undeclared"), "{err}");
    // A double where Metal has float.
    let err = Emulator::new()
        .compile(&src.replace("undeclared + 1.0f", "x[i] * 0.5"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("broken.metal:4:") && err.contains("double"),
        "{err}"
    );
}

#[test]
fn the_project_kernels_compile_and_pass_the_lint() {
    let lib = Emulator::new()
        .compile(&tinyllm_core::gpu::source::library())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(lib.kernels().contains(&"matvec"), "{:?}", lib.kernels());
}

#[test]
fn a_kernel_parameter_without_attribute_is_an_error_with_its_line() {
    let src = source(
        "attr.metal",
        "#include <metal_stdlib>\nusing namespace metal;\n\
         kernel void k(device float *x, uint i [[thread_position_in_grid]]) {}\n",
    );
    let err = Emulator::new().compile(&src).unwrap_err().to_string();
    assert!(err.contains("attr.metal:3:"), "{err}");
}

// ---------------------------------------------------------------------------
// Features
// ---------------------------------------------------------------------------

#[test]
fn built_in_positions() {
    let mut gpu = emulator(Order::Random(3));
    let grid = Grid {
        groups: [2, 3, 2],
        threads: [4, 4, 3],
        shared: 0,
    };
    let (tx, ty, tz) = (8usize, 12usize, 6usize);
    let out = gpu.buffer(tx * ty * tz * 16 * 4).unwrap();
    run_one(
        &mut gpu,
        &library("features.metal"),
        "positions",
        &[Arg::Buffer(&out, 0)],
        grid,
    )
    .unwrap();
    let got: Vec<u32> = download(&gpu, &out, tx * ty * tz * 16);
    for z in 0..tz {
        for y in 0..ty {
            for x in 0..tx {
                let o = &got[((z * ty + y) * tx + x) * 16..][..16];
                let (px, py, pz) = (x % 4, y % 4, z % 3);
                let tiitg = (pz * 4 + py) * 4 + px;
                let want = [
                    x,
                    y,
                    z,
                    px,
                    py,
                    x / 4,
                    y / 4,
                    443,
                    23,
                    tiitg,
                    tiitg % 32,
                    tiitg / 32,
                    32,
                    2,
                    z / 3,
                    7,
                ];
                let want: Vec<u32> = want.iter().map(|&v| v as u32).collect();
                assert_eq!(o, &want[..], "thread ({x}, {y}, {z})");
            }
        }
    }
}

#[test]
fn simd_group_functions() {
    let mut gpu = emulator(Order::Reverse);
    let x: Vec<f32> = (0..32).map(|i| ((i * 7) % 32) as f32 - 10.0).collect();
    let (inb, outb) = (upload(&gpu, &x), gpu.buffer(16 * 32 * 4).unwrap());
    run_one(
        &mut gpu,
        &library("features.metal"),
        "simd_functions",
        &[Arg::Buffer(&inb, 0), Arg::Buffer(&outb, 0)],
        Grid::linear(1, 32),
    )
    .unwrap();
    let got: Vec<f32> = download(&gpu, &outb, 16 * 32);
    let sum: f32 = x.iter().sum();
    for lane in 0..32 {
        let f = |k: usize| got[k * 32 + lane];
        let prefix: f32 = x[..lane].iter().sum();
        let want = [
            sum,
            x.iter().cloned().fold(f32::MIN, f32::max),
            x.iter().cloned().fold(f32::MAX, f32::min),
            prefix,
            prefix + x[lane],
            x[31 - lane],
            if lane + 3 < 32 { x[lane + 3] } else { x[lane] },
            if lane >= 2 { x[lane - 2] } else { x[lane] },
            x[lane ^ 5],
            x[7],
            x[0],
            1.0,
            1.0,
            32.0,
            31.0,
            32.0,
        ];
        for (k, w) in want.iter().enumerate() {
            assert_eq!(f(k), *w, "function {k}, lane {lane}");
        }
    }
}

#[test]
fn vectors_conversions_and_math() {
    let mut gpu = Emulator::new();
    let out = gpu.buffer(16 * 4).unwrap();
    run_one(
        &mut gpu,
        &library("features.metal"),
        "vectors",
        &[Arg::Buffer(&out, 0)],
        Grid::linear(1, 32),
    )
    .unwrap();
    let got: Vec<f32> = download(&gpu, &out, 16);
    let want = [
        -4.0, 11.0, 3.75, 6.0, 127.0, 2.0, 0.0, 3.0, 4.0, 1.0, 2.0, 4.0, 2.25, -2.0, 0.25, 1.0,
    ];
    assert_eq!(got, want);
}

#[test]
fn arguments_bind_by_buffer_index_not_position() {
    let mut gpu = Emulator::new();
    let x = upload(&gpu, &[1.0f32, 2.0, 3.0, 4.0]);
    let y = upload(&gpu, &[10.0f32, 20.0, 30.0, 40.0]);
    let out = gpu.buffer(16).unwrap();
    run_one(
        &mut gpu,
        &library("features.metal"),
        "axpy",
        &[
            Arg::Buffer(&out, 0),
            Arg::Buffer(&y, 0),
            Arg::Buffer(&x, 0),
            Arg::Bytes(&3.0f32.to_le_bytes()),
        ],
        Grid::linear(1, 4),
    )
    .unwrap();
    assert_eq!(download::<f32>(&gpu, &out, 4), [13.0, 26.0, 39.0, 52.0]);
}

#[test]
fn threadgroup_memory_parameter() {
    let mut gpu = emulator(Order::Random(1));
    let input: Vec<f32> = (0..128).map(|i| i as f32).collect();
    let (inb, outb) = (upload(&gpu, &input), gpu.buffer(128 * 4).unwrap());
    let lib = library("features.metal");
    let args = [Arg::Buffer(&inb, 0), Arg::Buffer(&outb, 0)];
    run_one(
        &mut gpu,
        &lib,
        "reverse_tg",
        &args,
        Grid {
            shared: 64 * 4,
            ..Grid::linear(2, 64)
        },
    )
    .unwrap();
    let got: Vec<f32> = download(&gpu, &outb, 128);
    for (i, &g) in got.iter().enumerate() {
        assert_eq!(g, (i / 64 * 64 + 63 - i % 64) as f32);
    }
    let err = run_one(&mut gpu, &lib, "reverse_tg", &args, Grid::linear(2, 64)).unwrap_err();
    assert!(err.contains("[[threadgroup(0)]]"), "{err}");
}

#[test]
fn template_kernels_by_host_name() {
    let mut gpu = Emulator::new();
    let lib = library("features.metal");
    let f = upload(&gpu, &[1.5f32, -2.0]);
    run_one(
        &mut gpu,
        &lib,
        "twice_f32",
        &[Arg::Buffer(&f, 0)],
        Grid::linear(1, 2),
    )
    .unwrap();
    assert_eq!(download::<f32>(&gpu, &f, 2), [3.0, -4.0]);
    let h = upload(&gpu, &[f16::from_f32(0.75).to_bits()]);
    run_one(
        &mut gpu,
        &lib,
        "twice_f16",
        &[Arg::Buffer(&h, 0)],
        Grid::linear(1, 1),
    )
    .unwrap();
    assert_eq!(
        f16::from_bits(download::<u16>(&gpu, &h, 1)[0]).to_f32(),
        1.5
    );
    let err = gpu.pipeline(&lib, "twice").unwrap_err().to_string();
    assert!(err.contains("twice_f32, twice_f16"), "{err}");
}

#[test]
fn kernel_scope_threadgroup_arrays_with_a_partial_simd_group() {
    for order in Order::ALL {
        let mut gpu = emulator(order);
        let input: Vec<f32> = (0..48).map(|i| i as f32).collect();
        let (inb, outb) = (upload(&gpu, &input), gpu.buffer(48 * 4).unwrap());
        run_one(
            &mut gpu,
            &library("features.metal"),
            "rotate",
            &[Arg::Buffer(&inb, 0), Arg::Buffer(&outb, 0)],
            Grid::linear(1, 48),
        )
        .unwrap();
        let got: Vec<f32> = download(&gpu, &outb, 48);
        for (i, &g) in got.iter().enumerate() {
            assert_eq!(g, ((i + 47) % 48) as f32, "{order:?}");
        }
    }
}

#[test]
fn bad_arguments_and_grids_are_errors() {
    let mut gpu = Emulator::new();
    let lib = library("features.metal");
    let x = gpu.buffer(16).unwrap();
    // axpy reads buffers 0 to 3.
    let err = run_one(
        &mut gpu,
        &lib,
        "axpy",
        &[Arg::Buffer(&x, 0)],
        Grid::linear(1, 4),
    )
    .unwrap_err();
    assert!(
        err.contains("[[buffer(1)]]") || err.contains("[[buffer(2)]]"),
        "{err}"
    );
    let err = run_one(
        &mut gpu,
        &lib,
        "axpy",
        &[
            Arg::Buffer(&x, 0),
            Arg::Buffer(&x, 0),
            Arg::Buffer(&x, 0),
            Arg::Bytes(&[0u8; 2]),
        ],
        Grid::linear(1, 4),
    )
    .unwrap_err();
    assert!(err.contains("reference to 4 bytes"), "{err}");
    let err = run_one(
        &mut gpu,
        &lib,
        "twice_f32",
        &[Arg::Buffer(&x, 2)],
        Grid::linear(1, 1),
    )
    .unwrap_err();
    assert!(err.contains("alignment"), "{err}");
    let err = run_one(
        &mut gpu,
        &lib,
        "twice_f32",
        &[Arg::Buffer(&x, 0)],
        Grid::linear(1, 2048),
    )
    .unwrap_err();
    assert!(err.contains("1 to 1024"), "{err}");
}

#[test]
fn parallel_compiles_of_one_source_share_the_cache() {
    // A source no earlier run compiled, so that the threads race.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let src = source(
        "nonce.metal",
        &format!(
            "#include <metal_stdlib>\nusing namespace metal;\n// {nonce}\n\
             kernel void k(device float *x [[buffer(0)]], uint i [[thread_position_in_grid]]) {{\n\
             \x20   x[i] += 1.0f;\n}}\n"
        ),
    );
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let src = src.clone();
            std::thread::spawn(move || {
                let mut gpu = Emulator::new();
                let lib = gpu.compile(&src).unwrap();
                let x = gpu.buffer(4).unwrap();
                run_one(
                    &mut gpu,
                    &lib,
                    "k",
                    &[Arg::Buffer(&x, 0)],
                    Grid::linear(1, 1),
                )
                .unwrap();
                download::<f32>(&gpu, &x, 1)[0]
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 1.0);
    }
}
