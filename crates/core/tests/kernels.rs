//! Every kernel tier against the scalar reference, over awkward shapes.
//!
//! Runs without the test harness, on the main thread only, so that it also
//! runs under qemu-user for aarch64 (see `../shared/tools/aarch64-check.sh`).

use tinyllm_core::kernels::{Isa, Kernels, reference};

/// f32 sums in another order: each result may differ from the f64 reference
/// by this fraction of `sum_j |a_j * b_j|` (about 80 f32 epsilons, several
/// times the rounding a k <= 2048 sum accumulates in 8- or 16-lane chunks).
const TOL_F32_SUM: f64 = 1e-5;
/// Element-wise results (norm, gate, softmax, attention output): relative to
/// the magnitude of the result.
const TOL_ELEMENTWISE: f64 = 1e-5;

/// A small deterministic generator of test values.
struct Gen(u64);
impl Gen {
    fn f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

struct Check {
    failures: usize,
    checks: usize,
}

impl Check {
    fn close(&mut self, what: &str, got: f32, want: f32, scale: f64, tol: f64) {
        self.checks += 1;
        let err = (got as f64 - want as f64).abs();
        let allowed = tol * scale.max(1e-30);
        if err.is_nan() || err > allowed {
            self.failures += 1;
            if self.failures < 20 {
                eprintln!(
                    "FAIL {what}: got {got}, want {want} (error {err:e}, allowed {:e})",
                    tol * scale
                );
            }
        }
    }
    fn equal<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, got: T, want: T) {
        self.checks += 1;
        if got != want {
            self.failures += 1;
            eprintln!("FAIL {what}: got {got:?}, want {want:?}");
        }
    }
}

const SHAPES: [(usize, usize, usize); 10] = [
    // (rows, k, tokens)
    (1, 1, 1),
    (3, 5, 2),
    (4, 16, 4),
    (17, 33, 5),
    (8, 64, 1),
    (37, 172, 7),
    (5, 255, 3),
    (64, 257, 9),
    (130, 768, 4),
    (9, 2048, 1),
];

fn matmul_f32(k: &Kernels, c: &mut Check, g: &mut Gen) {
    for (rows, kk, n) in SHAPES {
        let w = g.vec(rows * kk);
        let x = g.vec(n * kk);
        let want = reference::matmul_f32(&w, kk, &x, n);
        let mut got = vec![f32::NAN; n * rows];
        k.matmul_f32(&w, kk, &x, n, &mut got);
        for t in 0..n {
            for r in 0..rows {
                let mag: f64 = (0..kk)
                    .map(|j| (w[r * kk + j] * x[t * kk + j]).abs() as f64)
                    .sum();
                let what = format!("{:?} matmul_f32 {rows}x{kk} by {n}: [{t},{r}]", k.isa());
                c.close(
                    &what,
                    got[t * rows + r],
                    want[t * rows + r],
                    mag,
                    TOL_F32_SUM,
                );
            }
        }
        // Strided input and output: x rows of k + 3, output rows of rows + 2.
        let (ldx, ldo) = (kk + 3, rows + 2);
        let mut xs = vec![0.0; n * ldx];
        for t in 0..n {
            xs[t * ldx..t * ldx + kk].copy_from_slice(&x[t * kk..(t + 1) * kk]);
        }
        let mut out = vec![-7.0f32; n * ldo];
        // SAFETY: `out` holds n rows of ldo >= rows.
        unsafe { k.matmul_f32_into(&w, kk, &xs, ldx, n, out.as_mut_ptr(), ldo) };
        for t in 0..n {
            for r in 0..rows {
                c.equal("strided matmul_f32", out[t * ldo + r], got[t * rows + r]);
            }
            c.equal(
                "strided matmul_f32 leaves padding",
                out[t * ldo + rows],
                -7.0,
            );
        }
    }
}

fn q8(k: &Kernels, c: &mut Check, g: &mut Gen) {
    for (rows, kk, n) in SHAPES {
        for gs in [1, 2, 4, 32, 64] {
            if kk % gs != 0 {
                continue;
            }
            let mut w = g.vec(rows * kk);
            let mut x = g.vec(n * kk);
            // An all-zero group must quantize to scale 0, not NaN.
            w[..gs].fill(0.0);
            x[..gs].fill(0.0);
            let (wq, ws) = reference::quantize_q8(&w, gs);
            let (xq_want, xs_want) = reference::quantize_q8(&x, gs);
            let mut xq = vec![0i8; n * kk];
            let mut xs = vec![0f32; n * kk / gs];
            k.quantize_q8(&x, gs, &mut xq, &mut xs);
            c.equal(
                &format!("{:?} quantize_q8 values gs={gs}", k.isa()),
                &xq,
                &xq_want,
            );
            c.equal(
                &format!("{:?} quantize_q8 scales gs={gs}", k.isa()),
                &xs,
                &xs_want,
            );

            let want = reference::matmul_q8(&wq, &ws, kk, gs, &xq, &xs, n);
            let mut got = vec![f32::NAN; n * rows];
            // SAFETY: `got` holds n rows of `rows`.
            unsafe { k.matmul_q8_into(&wq, &ws, kk, gs, &xq, &xs, n, got.as_mut_ptr(), rows) };
            let ng = kk / gs;
            for t in 0..n {
                for r in 0..rows {
                    let mag: f64 = (0..ng)
                        .map(|gi| {
                            let i: i64 = (0..gs)
                                .map(|j| {
                                    (wq[r * kk + gi * gs + j] as i64
                                        * xq[t * kk + gi * gs + j] as i64)
                                        .abs()
                                })
                                .sum();
                            i as f64 * ws[r * ng + gi] as f64 * xs[t * ng + gi] as f64
                        })
                        .sum();
                    let what = format!(
                        "{:?} matmul_q8 {rows}x{kk} gs={gs} by {n}: [{t},{r}]",
                        k.isa()
                    );
                    c.close(
                        &what,
                        got[t * rows + r],
                        want[t * rows + r],
                        mag,
                        TOL_F32_SUM,
                    );
                }
            }
        }
    }
}

fn elementwise(k: &Kernels, c: &mut Check, g: &mut Gen) {
    let isa = k.isa();
    for n in [1, 2, 7, 8, 15, 16, 17, 64, 172, 1000] {
        let x: Vec<f32> = g.vec(n).iter().map(|v| v * 4.0).collect();
        let w = g.vec(n);
        let mut out = vec![0.0; n];
        k.rmsnorm(&x, &w, 1e-5, &mut out);
        for (i, (&got, &want)) in out
            .iter()
            .zip(&reference::rmsnorm(&x, &w, 1e-5))
            .enumerate()
        {
            c.close(
                &format!("{isa:?} rmsnorm n={n} [{i}]"),
                got,
                want,
                want.abs() as f64 + 1e-6,
                TOL_ELEMENTWISE,
            );
        }

        let b = g.vec(n);
        let mut a = x.clone();
        k.silu_mul(&mut a, &b);
        for (i, (&got, &want)) in a.iter().zip(&reference::silu_mul(&x, &b)).enumerate() {
            c.close(
                &format!("{isa:?} silu_mul n={n} [{i}]"),
                got,
                want,
                want.abs() as f64 + 1e-6,
                TOL_ELEMENTWISE,
            );
        }

        let mut s = x.clone();
        k.softmax(&mut s);
        for (i, (&got, &want)) in s.iter().zip(&reference::softmax(&x)).enumerate() {
            c.close(
                &format!("{isa:?} softmax n={n} [{i}]"),
                got,
                want,
                want as f64,
                TOL_ELEMENTWISE,
            );
        }
    }
}

fn attention(k: &Kernels, c: &mut Check, g: &mut Gen) {
    let isa = k.isa();
    for (hd, n_pos, stride) in [
        (2, 1, 2),
        (8, 5, 32),
        (16, 33, 16),
        (64, 100, 256),
        (128, 7, 130),
        (6, 300, 6),
    ] {
        let q = g.vec(hd);
        let keys = g.vec(n_pos * stride);
        let values = g.vec(n_pos * stride);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut scores = vec![0.0; n_pos + 3];
        let mut out = vec![0.0; hd];
        k.attend(
            &q,
            &keys,
            &values,
            stride,
            n_pos,
            scale,
            &mut scores,
            &mut out,
        );
        let want = reference::attend(&q, &keys, &values, stride, n_pos, scale);
        // The output is a convex combination of values in [-1, 1].
        for (i, (&got, &w)) in out.iter().zip(&want).enumerate() {
            c.close(
                &format!("{isa:?} attend hd={hd} n={n_pos} [{i}]"),
                got,
                w,
                1.0,
                TOL_ELEMENTWISE,
            );
        }
    }
}

fn main() {
    let mut c = Check {
        failures: 0,
        checks: 0,
    };
    let mut tiers = 0;
    for isa in Isa::ALL {
        let Some(k) = Kernels::for_isa(isa) else {
            println!("{:>8}: not supported by this CPU, skipped", isa.name());
            continue;
        };
        tiers += 1;
        let before = c.failures;
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        matmul_f32(k, &mut c, &mut g);
        q8(k, &mut c, &mut g);
        elementwise(k, &mut c, &mut g);
        attention(k, &mut c, &mut g);
        let status = if c.failures == before { "ok" } else { "FAILED" };
        println!("{:>8}: {status}", isa.name());
    }
    println!(
        "kernels: {} checks over {tiers} tiers, {} failures",
        c.checks, c.failures
    );
    if c.failures > 0 || tiers < 2 {
        std::process::exit(1);
    }
}
