use std::time::Instant;
use tinyllm_core::kernels::{Isa, Kernels};
use tinyllm_core::quant::{self, BlockQ4_0, BlockQ4_0x4, BlockQ8_0, BlockQ8_0x4, BlockQ8Act, QK};

fn main() {
    let (rows, k) = (
        std::env::args().nth(1).map_or(2048, |a| a.parse().unwrap()),
        768usize,
    );
    let nb = k / QK;
    let w32: Vec<f32> = (0..rows * k)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let x32: Vec<f32> = (0..k)
        .map(|i| ((i * 31) % 100) as f32 / 50.0 - 1.0)
        .collect();
    let q4: Vec<BlockQ4_0> = quant::quantize_row(&w32);
    let q8: Vec<BlockQ8_0> = quant::quantize_row(&w32);
    let q4x: Vec<BlockQ4_0x4> = q4
        .chunks(4 * nb)
        .flat_map(|f| quant::interleave(f, nb))
        .collect();
    let q8x: Vec<BlockQ8_0x4> = q8
        .chunks(4 * nb)
        .flat_map(|f| quant::interleave(f, nb))
        .collect();
    for isa in [Isa::Avx2, Isa::Avx512] {
        let kern = Kernels::for_isa(isa).unwrap();
        let mut xa = vec![quant::quantize_act(&[0.0; QK]); nb];
        kern.quantize_act(&x32, &mut xa);
        let mut out = vec![0f32; rows];
        for (name, f) in [
            (
                "q4_0",
                &(|o: &mut [f32]| unsafe {
                    kern.matmul_quant_into(&q4, nb, &xa, 1, o.as_mut_ptr(), rows)
                }) as &dyn Fn(&mut [f32]),
            ),
            (
                "q8_0",
                &(|o: &mut [f32]| unsafe {
                    kern.matmul_quant_into(&q8, nb, &xa, 1, o.as_mut_ptr(), rows)
                }),
            ),
            (
                "q4_0x4",
                &(|o: &mut [f32]| unsafe {
                    kern.matmul_quant4_into(&q4x, nb, &xa, 1, o.as_mut_ptr(), rows)
                }),
            ),
            (
                "q8_0x4",
                &(|o: &mut [f32]| unsafe {
                    kern.matmul_quant4_into(&q8x, nb, &xa, 1, o.as_mut_ptr(), rows)
                }),
            ),
            (
                "f32",
                &(|o: &mut [f32]| unsafe {
                    kern.matmul_f32_into(&w32, k, &x32, k, 1, o.as_mut_ptr(), rows)
                }),
            ),
        ] {
            for _ in 0..20 {
                f(&mut out);
            }
            let reps = 400;
            let t = Instant::now();
            for _ in 0..reps {
                f(&mut out);
            }
            let ns = t.elapsed().as_nanos() as f64 / reps as f64;
            println!(
                "{:?} {name}: {:.2} ns/block ({:.1} us per matvec)",
                isa,
                ns / (rows * nb) as f64,
                ns / 1000.0
            );
        }
        let _ = BlockQ8Act::clone(&xa[0]);
    }
}
