//! Times one matrix-vector product per weight type and kernel tier, single
//! threaded: the nanoseconds per 32 weights and the GB/s of weights it
//! streams. (K must be a multiple of 256 for the k-quants.) A development tool for the kernels (the end-to-end
//! speed is measured in `benches/`).
//!
//!     cargo run --release -p tinyllm-core --example kernel_bench [ROWS [K]]
//!
//! With the default 2048 rows of 768 the weights stay in cache (compute
//! cost); with 262144 rows they stream from memory.

use half::f16;
use std::time::Instant;
use tinyllm_core::kernels::{Isa, Kernels};
use tinyllm_core::quant::{
    self, BlockQ4_0, BlockQ4_0x4, BlockQ4K, BlockQ6K, BlockQ8_0, BlockQ8_0x4, QK, QK_K,
};

fn main() {
    let rows: usize = std::env::args()
        .nth(1)
        .map_or(2048, |a| a.parse().expect("ROWS"));
    let k: usize = std::env::args()
        .nth(2)
        .map_or(768, |a| a.parse().expect("K"));
    let nb = k / QK;
    let w32: Vec<f32> = (0..rows * k)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let x32: Vec<f32> = (0..k)
        .map(|i| ((i * 31) % 100) as f32 / 50.0 - 1.0)
        .collect();
    let w16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
    let q4: Vec<BlockQ4_0> = quant::quantize_row(&w32);
    let q8: Vec<BlockQ8_0> = quant::quantize_row(&w32);
    let q4x: Vec<BlockQ4_0x4> = q4
        .chunks(4 * nb)
        .flat_map(|g| quant::interleave(g, nb))
        .collect();
    let q8x: Vec<BlockQ8_0x4> = q8
        .chunks(4 * nb)
        .flat_map(|g| quant::interleave(g, nb))
        .collect();
    // k-quant blocks of arbitrary bits (tinyllm has no k-quant quantizer;
    // the speed does not depend on the values).
    let byte = |i: usize| (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    let nsb = k / QK_K;
    let q4k: Vec<BlockQ4K> = (0..rows * nsb)
        .map(|i| BlockQ4K {
            d: f16::from_f32(0.01),
            dmin: f16::from_f32(0.01),
            scales: std::array::from_fn(|j| byte(i * 144 + j)),
            qs: std::array::from_fn(|j| byte(i * 144 + 12 + j)),
        })
        .collect();
    let q6k: Vec<BlockQ6K> = (0..rows * nsb)
        .map(|i| BlockQ6K {
            ql: std::array::from_fn(|j| byte(i * 210 + j)),
            qh: std::array::from_fn(|j| byte(i * 210 + 128 + j)),
            scales: std::array::from_fn(|j| byte(i * 210 + 192 + j) as i8),
            d: f16::from_f32(0.01),
        })
        .collect();
    let mut out = vec![0f32; rows];
    for isa in Isa::ALL {
        let Some(kern) = Kernels::for_isa(isa) else {
            continue;
        };
        let mut xa = vec![quant::quantize_act(&[0.0; QK]); nb];
        kern.quantize_act(&x32, &mut xa);
        let o = out.as_mut_ptr();
        // `out` holds one row of `rows` outputs, written by one call at a time.
        let cases: [(&str, f64, &dyn Fn()); 8] = [
            // SAFETY: see above.
            ("f32", 128.0, &|| unsafe {
                kern.matmul_f32_into(&w32, k, &x32, k, 1, o, rows)
            }),
            // SAFETY: see above.
            ("f16", 64.0, &|| unsafe {
                kern.matmul_f16_into(&w16, k, &x32, k, 1, o, rows)
            }),
            // SAFETY: see above.
            ("q8_0", 34.0, &|| unsafe {
                kern.matmul_quant_into(&q8, nb, &xa, 1, o, rows)
            }),
            // SAFETY: see above.
            ("q4_0", 18.0, &|| unsafe {
                kern.matmul_quant_into(&q4, nb, &xa, 1, o, rows)
            }),
            // SAFETY: see above.
            ("q8_0x4", 34.0, &|| unsafe {
                kern.matmul_quant4_into(&q8x, nb, &xa, 1, o, rows)
            }),
            // SAFETY: see above.
            ("q4_0x4", 18.0, &|| unsafe {
                kern.matmul_quant4_into(&q4x, nb, &xa, 1, o, rows)
            }),
            // SAFETY: see above.
            ("q4_k", 144.0 / 8.0, &|| unsafe {
                kern.matmul_kquant_into(&q4k, nsb, &xa, 1, o, rows)
            }),
            // SAFETY: see above.
            ("q6_k", 210.0 / 8.0, &|| unsafe {
                kern.matmul_kquant_into(&q6k, nsb, &xa, 1, o, rows)
            }),
        ];
        for (name, block_bytes, run) in cases {
            for _ in 0..5 {
                run();
            }
            let reps = (4096 * 2048 / rows).max(3);
            let start = Instant::now();
            for _ in 0..reps {
                run();
            }
            let ns = start.elapsed().as_nanos() as f64 / reps as f64 / (rows * nb) as f64;
            println!(
                "{:>12} {name:>7}: {ns:.2} ns/block, {:.1} GB/s",
                isa.name(),
                block_bytes / ns
            );
        }
    }
}
