//! Every kernel tier against the scalar reference, over awkward shapes.
//!
//! Runs without the test harness, on the main thread only, so that it also
//! runs under qemu-user for aarch64 (see `../shared/tools/aarch64-check.sh`).

use half::{bf16, f16};
use tinyllm_core::kernels::{Isa, KQuantBlocks, Kernels, QuantBlocks, QuantGroups, reference};
use tinyllm_core::quant::{
    self, Block, BlockQ3K, BlockQ4_0, BlockQ4_0x4, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1,
    BlockQ5K, BlockQ6K, BlockQ8_0, BlockQ8_0x4, BlockQ8Act, QK, QK_K, SuperBlock,
};

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
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        std::array::from_fn(|_| ((self.f32() + 1.0) * 128.0) as u8)
    }
    /// An f16 scale between about 0.001 and 0.03 (as in real k-quant files).
    fn scale(&mut self) -> half::f16 {
        f16::from_f32(0.001 + 0.015 * (self.f32() + 1.0))
    }
}

/// Super-blocks of random bits with sane scales, and, as every tenth
/// block, the extremes: the largest values, scales and mins.
trait RandomBlock: KQuantBlocks {
    fn random(g: &mut Gen, extreme: bool) -> Self;
}

impl RandomBlock for BlockQ4K {
    fn random(g: &mut Gen, extreme: bool) -> Self {
        let mut b = BlockQ4K {
            d: g.scale(),
            dmin: g.scale(),
            scales: g.bytes(),
            qs: g.bytes(),
        };
        if extreme {
            (b.scales, b.qs) = ([0xFF; 12], [0xFF; QK_K / 2]);
        }
        b
    }
}

impl RandomBlock for BlockQ6K {
    fn random(g: &mut Gen, extreme: bool) -> Self {
        let mut b = BlockQ6K {
            ql: g.bytes(),
            qh: g.bytes(),
            scales: g.bytes::<16>().map(|v| v as i8),
            d: g.scale(),
        };
        if extreme {
            // Every value -32, every scale -128: the largest products.
            (b.ql, b.qh, b.scales) = ([0; QK_K / 2], [0; QK_K / 4], [-128; 16]);
        }
        b
    }
}

impl RandomBlock for BlockQ5K {
    fn random(g: &mut Gen, extreme: bool) -> Self {
        let mut b = BlockQ5K {
            d: g.scale(),
            dmin: g.scale(),
            scales: g.bytes(),
            qh: g.bytes(),
            qs: g.bytes(),
        };
        if extreme {
            // Every value 31, every scale and min 63.
            (b.scales, b.qh, b.qs) = ([0xFF; 12], [0xFF; QK_K / 8], [0xFF; QK_K / 2]);
        }
        b
    }
}

impl RandomBlock for BlockQ3K {
    fn random(g: &mut Gen, extreme: bool) -> Self {
        let mut b = BlockQ3K {
            hmask: g.bytes(),
            qs: g.bytes(),
            scales: g.bytes(),
            d: g.scale(),
        };
        if extreme {
            // Every value -4, every scale -32: the largest products.
            (b.hmask, b.qs, b.scales) = ([0; QK_K / 8], [0; QK_K / 4], [0; 12]);
        }
        b
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
    /// A product's `(n, rows)` outputs against the reference's, each within
    /// `TOL_F32_SUM` of its sum of term magnitudes `mag(t, r)`.
    fn product(
        &mut self,
        what: &str,
        got: &[f32],
        want: &[f32],
        rows: usize,
        n: usize,
        mag: impl Fn(usize, usize) -> f64,
    ) {
        for t in 0..n {
            for r in 0..rows {
                let (g, w) = (got[t * rows + r], want[t * rows + r]);
                self.close(&format!("{what}: [{t},{r}]"), g, w, mag(t, r), TOL_F32_SUM);
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

const SHAPES: [(usize, usize, usize); 12] = [
    // (rows, k, tokens); the last two run the float panels (many tokens):
    // whole strips and leftover rows, several column blocks with a tail,
    // whole token tiles, tiles of four and single tokens.
    (100, 300, 23),
    (50, 530, 13),
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
        let what = format!("{:?} matmul_f32 {rows}x{kk} by {n}", k.isa());
        c.product(&what, &got, &want, rows, n, |t, r| {
            (0..kk)
                .map(|j| (w[r * kk + j] * x[t * kk + j]).abs() as f64)
                .sum()
        });
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

fn float_weights(k: &Kernels, c: &mut Check, g: &mut Gen) {
    for (rows, kk, n) in SHAPES {
        let w32 = g.vec(rows * kk);
        let x = g.vec(n * kk);
        let w16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
        let wb16: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
        let mut got16 = vec![f32::NAN; n * rows];
        let mut gotb16 = vec![f32::NAN; n * rows];
        // SAFETY: the outputs hold n rows of `rows`.
        unsafe {
            k.matmul_f16_into(&w16, kk, &x, kk, n, got16.as_mut_ptr(), rows);
            k.matmul_bf16_into(&wb16, kk, &x, kk, n, gotb16.as_mut_ptr(), rows);
        }
        let cases = [
            (
                "f16",
                reference::matmul_float(&w16, kk, &x, n, f16::to_f32),
                got16,
            ),
            (
                "bf16",
                reference::matmul_float(&wb16, kk, &x, n, bf16::to_f32),
                gotb16,
            ),
        ];
        for (name, want, got) in cases {
            let what = format!("{:?} matmul_{name} {rows}x{kk} by {n}", k.isa());
            // 1.01: the weights rounded to 16 bits may be a little larger.
            c.product(&what, &got, &want, rows, n, |t, r| {
                let m: f64 = (0..kk)
                    .map(|j| (w32[r * kk + j] * x[t * kk + j]).abs() as f64)
                    .sum();
                m * 1.01
            });
        }
    }
}

/// `(rows, blocks per row, tokens)`: tiles and their leftovers.
const QUANT_SHAPES: [(usize, usize, usize); 9] = [
    (1, 1, 1),
    (12, 6, 14),
    (3, 2, 2),
    (4, 8, 4),
    (17, 5, 5),
    (64, 24, 1),
    (37, 64, 7),
    (130, 24, 9),
    (5, 128, 3),
];

/// The scale of a quantized dot product's rounding: `sum_j |x_j| (|w_j| +
/// |offset|)`, since the kernels add each block's offset apart from its values.
fn magnitude<W: Block>(w: &[W], x: &[BlockQ8Act]) -> f64 {
    let mut m = 0.0;
    for (wb, xb) in w.iter().zip(x) {
        let wv = wb.dequantize();
        for (j, &v) in wv.iter().enumerate() {
            let xj = (xb.d * xb.qs[j] as f32).abs() as f64;
            m += xj * (v.abs() + wb.offset().abs()) as f64;
        }
    }
    m
}

fn quantized_type<W: QuantBlocks>(name: &str, k: &Kernels, c: &mut Check, g: &mut Gen) {
    for (rows, nb, n) in QUANT_SHAPES {
        // Rows with different scales and, for the offset types, a bias.
        let mut w32 = g.vec(rows * nb * QK);
        for (r, row) in w32.chunks_mut(nb * QK).enumerate() {
            let (scale, bias) = (0.5 + r as f32 % 3.0, if r % 4 == 1 { 0.7 } else { 0.0 });
            row.iter_mut().for_each(|v| *v = *v * scale + bias);
        }
        let w: Vec<W> = quant::quantize_row(&w32);
        let x32 = g.vec(n * nb * QK);
        let mut x = vec![quant::quantize_act(&[0.0; QK]); n * nb];
        k.quantize_act(&x32, &mut x);
        let want_x: Vec<BlockQ8Act> = x32
            .chunks_exact(QK)
            .map(|b| quant::quantize_act(b.try_into().unwrap()))
            .collect();
        c.equal(&format!("{:?} quantize_act", k.isa()), &x, &want_x);

        let want = reference::matmul_quant(&w, nb, &x, n);
        let mut got = vec![f32::NAN; n * rows];
        // SAFETY: `got` holds n rows of `rows`.
        unsafe { k.matmul_quant_into(&w, nb, &x, n, got.as_mut_ptr(), rows) };
        let what = format!("{:?} matmul_{name} {rows}x{nb} blocks by {n}", k.isa());
        c.product(&what, &got, &want, rows, n, |t, r| {
            magnitude(&w[r * nb..(r + 1) * nb], &x[t * nb..(t + 1) * nb])
        });
    }
}

fn interleaved_type<G: QuantGroups>(name: &str, k: &Kernels, c: &mut Check, g: &mut Gen)
where
    G::Row: QuantBlocks,
{
    for (rows, nb, n) in QUANT_SHAPES {
        let rows = rows.next_multiple_of(4);
        let w32 = g.vec(rows * nb * QK);
        let plain: Vec<G::Row> = quant::quantize_row(&w32);
        let groups: Vec<G> = plain
            .chunks(4 * nb)
            .flat_map(|four| quant::interleave::<G>(four, nb))
            .collect();
        let x32 = g.vec(n * nb * QK);
        let mut x = vec![quant::quantize_act(&[0.0; QK]); n * nb];
        k.quantize_act(&x32, &mut x);
        let want = reference::matmul_quant(&plain, nb, &x, n);
        let mut got = vec![f32::NAN; n * rows];
        // SAFETY: `got` holds n rows of `rows`.
        unsafe { k.matmul_quant4_into(&groups, nb, &x, n, got.as_mut_ptr(), rows) };
        let what = format!("{:?} matmul_{name} {rows}x{nb} blocks by {n}", k.isa());
        c.product(&what, &got, &want, rows, n, |t, r| {
            magnitude(&plain[r * nb..(r + 1) * nb], &x[t * nb..(t + 1) * nb])
        });
    }
}

/// `(rows, super-blocks per row, tokens)`: tiles and their leftovers, one
/// token to nine.
const KQUANT_SHAPES: [(usize, usize, usize); 9] = [
    (1, 1, 1),
    (3, 2, 2),
    (5, 1, 9),
    (4, 16, 4),
    (17, 3, 5),
    (37, 4, 7),
    (64, 8, 1),
    (130, 2, 8),
    (9, 3, 3),
];

/// As [`magnitude`], for super-blocks against their eight activation blocks.
fn magnitude_k<W: SuperBlock>(w: &[W], x: &[BlockQ8Act]) -> f64 {
    let mut m = 0.0;
    for (b, wb) in w.iter().enumerate() {
        let (wv, off) = (wb.dequantize(), wb.offsets());
        for (v, &wj) in wv.iter().enumerate() {
            let xb = &x[b * (QK_K / QK) + v / QK];
            let xj = (xb.d * xb.qs[v % QK] as f32).abs() as f64;
            m += xj * (wj.abs() + off[v / QK].abs()) as f64;
        }
    }
    m
}

fn kquant_type<W: RandomBlock>(name: &str, k: &Kernels, c: &mut Check, g: &mut Gen) {
    for (rows, nsb, n) in KQUANT_SHAPES {
        let w: Vec<W> = (0..rows * nsb).map(|i| W::random(g, i % 10 == 3)).collect();
        let nb = nsb * QK_K / QK;
        let mut x32 = g.vec(n * nb * QK);
        // One activation block at full scale: values of +-127.
        x32[..QK].iter_mut().for_each(|v| *v = v.signum());
        let mut x = vec![quant::quantize_act(&[0.0; QK]); n * nb];
        k.quantize_act(&x32, &mut x);
        let want = reference::matmul_kquant(&w, nsb, &x, n);
        let mut got = vec![f32::NAN; n * rows];
        // SAFETY: `got` holds n rows of `rows`.
        unsafe { k.matmul_kquant_into(&w, nsb, &x, n, got.as_mut_ptr(), rows) };
        let what = format!(
            "{:?} matmul_{name} {rows}x{nsb} super-blocks by {n}",
            k.isa()
        );
        c.product(&what, &got, &want, rows, n, |t, r| {
            magnitude_k(&w[r * nsb..(r + 1) * nsb], &x[t * nb..(t + 1) * nb])
        });
    }
}

fn quantized(k: &Kernels, c: &mut Check, g: &mut Gen) {
    quantized_type::<BlockQ8_0>("q8_0", k, c, g);
    quantized_type::<BlockQ4_0>("q4_0", k, c, g);
    quantized_type::<BlockQ4_1>("q4_1", k, c, g);
    quantized_type::<BlockQ5_0>("q5_0", k, c, g);
    quantized_type::<BlockQ5_1>("q5_1", k, c, g);
    interleaved_type::<BlockQ8_0x4>("q8_0x4", k, c, g);
    interleaved_type::<BlockQ4_0x4>("q4_0x4", k, c, g);
    kquant_type::<BlockQ4K>("q4_k", k, c, g);
    kquant_type::<BlockQ6K>("q6_k", k, c, g);
    kquant_type::<BlockQ5K>("q5_k", k, c, g);
    kquant_type::<BlockQ3K>("q3_k", k, c, g);
}

fn q8g(k: &Kernels, c: &mut Check, g: &mut Gen) {
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
            let (wq, ws) = reference::quantize_q8g(&w, gs);
            let (xq_want, xs_want) = reference::quantize_q8g(&x, gs);
            let mut xq = vec![0i8; n * kk];
            let mut xs = vec![0f32; n * kk / gs];
            k.quantize_q8g(&x, gs, &mut xq, &mut xs);
            c.equal(
                &format!("{:?} quantize_q8g values gs={gs}", k.isa()),
                &xq,
                &xq_want,
            );
            c.equal(
                &format!("{:?} quantize_q8g scales gs={gs}", k.isa()),
                &xs,
                &xs_want,
            );

            let want = reference::matmul_q8g(&wq, &ws, kk, gs, &xq, &xs, n);
            let mut got = vec![f32::NAN; n * rows];
            // SAFETY: `got` holds n rows of `rows`.
            unsafe { k.matmul_q8g_into(&wq, &ws, kk, gs, &xq, &xs, n, got.as_mut_ptr(), rows) };
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
                        "{:?} matmul_q8g {rows}x{kk} gs={gs} by {n}: [{t},{r}]",
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
        let mut x: Vec<f32> = g.vec(n).iter().map(|v| v * 4.0).collect();
        if n >= 16 {
            // Values far out on both sides, where exp must clamp, not overflow.
            x[3] = -100.0;
            x[5] = 95.0;
            x[9] = -1000.0;
        }
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

        let mut a = x.clone();
        k.gelu_tanh_mul(&mut a, &b);
        for (i, (&got, &want)) in a.iter().zip(&reference::gelu_tanh_mul(&x, &b)).enumerate() {
            c.close(
                &format!("{isa:?} gelu_tanh_mul n={n} [{i}]"),
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
    // (rows, positions, head_dim, value row stride): tiles and their tails.
    for (rows, n_pos, hd, ldv) in [
        (1, 1, 2, 2),
        (3, 5, 8, 32),
        (4, 33, 16, 16),
        (8, 100, 64, 256),
        (5, 7, 128, 130),
        (17, 300, 6, 6),
    ] {
        // Probability-like rows, and value rows inside a wider cache row.
        let prob: Vec<f32> = g
            .vec(rows * n_pos)
            .iter()
            .map(|v| v.abs() / n_pos as f32)
            .collect();
        let v = g.vec(n_pos * ldv);
        let mut out = vec![f32::NAN; rows * hd];
        k.attn_pv(&prob, n_pos, rows, n_pos, &v, ldv, hd, &mut out, false);
        let want = reference::attn_pv(&prob, rows, n_pos, &v, ldv, hd);
        // The f16 values (as the cache stores them), added to what `out` holds.
        let v16: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
        let v16_as_f32: Vec<f32> = v16.iter().map(|x| x.to_f32()).collect();
        let mut acc = out.clone();
        k.attn_pv(&prob, n_pos, rows, n_pos, &v16, ldv, hd, &mut acc, true);
        let want16 = reference::attn_pv(&prob, rows, n_pos, &v16_as_f32, ldv, hd);
        for (i, (&got, &w)) in out.iter().zip(&want).enumerate() {
            // Each output is a weighted sum of values in [-1, 1] with weights
            // summing to at most 1.
            c.close(
                &format!("{isa:?} attn_pv {rows}x{n_pos}x{hd} [{i}]"),
                got,
                w,
                1.0,
                TOL_ELEMENTWISE,
            );
            c.close(
                &format!("{isa:?} attn_pv_f16 {rows}x{n_pos}x{hd} [{i}]"),
                acc[i],
                want16[i] + w,
                1.0,
                TOL_ELEMENTWISE,
            );
        }
        // The scores: queries against keys in strided rows (one head of a cache).
        let keys = g.vec(n_pos * ldv);
        let q = g.vec(rows * hd);
        let mut sc = vec![f32::NAN; rows * n_pos];
        // SAFETY: `sc` holds `rows` rows of `n_pos`.
        unsafe {
            k.matmul_f32_strided_into(&keys, ldv, n_pos, hd, &q, hd, rows, sc.as_mut_ptr(), n_pos)
        };
        let dense: Vec<f32> = (0..n_pos)
            .flat_map(|p| keys[p * ldv..p * ldv + hd].to_vec())
            .collect();
        let want = reference::matmul_f32(&dense, hd, &q, rows);
        for (i, (&got, &w)) in sc.iter().zip(&want).enumerate() {
            c.close(
                &format!("{isa:?} strided scores {rows}x{n_pos}x{hd} [{i}]"),
                got,
                w,
                hd as f64,
                TOL_F32_SUM,
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
        float_weights(k, &mut c, &mut g);
        quantized(k, &mut c, &mut g);
        q8g(k, &mut c, &mut g);
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
