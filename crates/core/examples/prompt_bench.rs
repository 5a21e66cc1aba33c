//! Times the matrix-matrix products that prompt processing runs, single
//! threaded, per weight type and kernel tier: GFLOP/s (two per
//! multiply-add). A development tool for the kernels (the end-to-end speed is
//! measured in `benches/`).
//!
//!     cargo run --release -p tinyllm-core --example prompt_bench [ROWS [K [TOKENS]]]
//!
//! `ISA=avx512 DTYPE=f16 REPS=500` times one case, many times (for a
//! profiler). The defaults, 96 rows of 2048 against 128 tokens, are one thread's chunk
//! of a TinyLlama-1.1B projection during a prompt.

use half::{bf16, f16};
use std::time::Instant;
use tinyllm_core::kernels::{Isa, Kernels};
use tinyllm_core::quant::{self, BlockQ4_0, BlockQ4_0x4, BlockQ8_0, BlockQ8_0x4, QK};

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .map_or(default, |a| a.parse().expect("a number"))
}

fn main() {
    let (rows, k, n) = (arg(1, 96), arg(2, 2048), arg(3, 128));
    let nb = k / QK;
    let w32: Vec<f32> = (0..rows * k)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let w16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
    let wb16: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
    let ldx = arg(4, k);
    let x32: Vec<f32> = (0..n * ldx)
        .map(|i| ((i * 31) % 100) as f32 / 50.0 - 1.0)
        .collect();
    let q8: Vec<BlockQ8_0> = quant::quantize_row(&w32);
    let q4: Vec<BlockQ4_0> = quant::quantize_row(&w32);
    let q8x: Vec<BlockQ8_0x4> = q8
        .chunks(4 * nb)
        .flat_map(|g| quant::interleave(g, nb))
        .collect();
    let q4x: Vec<BlockQ4_0x4> = q4
        .chunks(4 * nb)
        .flat_map(|g| quant::interleave(g, nb))
        .collect();
    let mut out = vec![0f32; rows * n];
    let flops = 2.0 * (rows * k * n) as f64;
    for isa in Isa::ALL {
        let Some(kern) = Kernels::for_isa(isa) else {
            continue;
        };
        if std::env::var("ISA").is_ok_and(|only| only != isa.name()) {
            continue;
        }
        let mut xa = vec![quant::quantize_act(&[0.0; QK]); nb * n];
        kern.quantize_act(&x32[..n * k], &mut xa);
        let o = out.as_mut_ptr();
        // `out` holds `n` rows of `rows` outputs, written by one call at a time.
        let cases: [(&str, &dyn Fn()); 6] = [
            // SAFETY: see above.
            ("f32", &|| unsafe {
                kern.matmul_f32_into(&w32, k, &x32, ldx, n, o, rows)
            }),
            // SAFETY: see above.
            ("f16", &|| unsafe {
                kern.matmul_f16_into(&w16, k, &x32, ldx, n, o, rows)
            }),
            // SAFETY: see above.
            ("bf16", &|| unsafe {
                kern.matmul_bf16_into(&wb16, k, &x32, k, n, o, rows)
            }),
            // SAFETY: see above.
            ("q8_0", &|| unsafe {
                kern.matmul_quant_into(&q8, nb, &xa, n, o, rows)
            }),
            // SAFETY: see above.
            ("q8_0x4", &|| unsafe {
                kern.matmul_quant4_into(&q8x, nb, &xa, n, o, rows)
            }),
            // SAFETY: see above.
            ("q4_0x4", &|| unsafe {
                kern.matmul_quant4_into(&q4x, nb, &xa, n, o, rows)
            }),
        ];
        for (name, run) in cases {
            if std::env::var("DTYPE").is_ok_and(|only| only != name) {
                continue;
            }
            run();
            let mut best = f64::MAX;
            for _ in 0..std::env::var("REPS").map_or(5, |r| r.parse().expect("REPS")) {
                let start = Instant::now();
                run();
                best = best.min(start.elapsed().as_secs_f64());
            }
            println!(
                "{:>12} {name:>7}: {:.1} GFLOP/s",
                isa.name(),
                flops / best / 1e9
            );
        }
    }
}
