//! Every Metal kernel of `kernels/metal/`, run by the emulator, against
//! the CPU's reference arithmetic (`kernels::reference`, the weight types'
//! own dequantization, float64 sums), over awkward shapes: rows that are not
//! a multiple of a threadgroup's, one token and more tokens than a product
//! takes at once, heads wider than a SIMD group, cache pages out of order.
//!
//! Each check runs with the lanes, SIMD groups and threadgroups in three
//! orders and threadgroup memory poisoned with NaN, so that a missing
//! barrier or a reduction that depends on the order fails.
//!
//! Tolerances are named: Metal compiles with fast math, so results are
//! compared to float64 sums within bounds, never bit for bit.

use tinyllm_core::gpu::attention::AttentionPlan;
use tinyllm_core::gpu::layout::{Args, KvArgs, MatvecArgs, RowArgs, TokenInfo, slice_bytes};
use tinyllm_core::gpu::{Arg, Gpu, Grid, source};
use tinyllm_core::kernels::reference;
use tinyllm_core::kv_cache::PAGE;
use tinyllm_core::quant::{
    self, Block, BlockQ4_0, BlockQ4_0x4, BlockQ4_1, BlockQ4K, BlockQ6K, BlockQ8_0, BlockQ8_0x4, QK,
    QK_K, SuperBlock,
};
use tinyllm_metal_emu::{Emulator, Options, Order};

/// A product's error bound, relative to `sum |w * x|` over its terms
/// (float32 sums of up to a few thousand terms in another order).
const PRODUCT_TOL: f64 = 2e-6;
/// Element-wise kernels (norms, rotary, SwiGLU), relative to the value's
/// size: fast `rsqrt`, `exp` and `sin`/`cos` of the host.
const ELEMENT_TOL: f64 = 2e-5;
/// Attention outputs, relative to the largest value a head attends to.
const ATTENTION_TOL: f64 = 1e-5;

const ORDERS: [Order; 3] = [Order::Forward, Order::Reverse, Order::Random(0x5eed)];

// ---------------------------------------------------------------------------
// The rig: an emulated GPU with the kernels compiled
// ---------------------------------------------------------------------------

struct Rig {
    gpu: Emulator,
    lib: <Emulator as Gpu>::Library,
}

type Buffer = <Emulator as Gpu>::Buffer;

impl Rig {
    fn new(order: Order) -> Rig {
        let gpu = Emulator::with_options(Options {
            order,
            ..Options::default()
        });
        let lib = gpu
            .compile(&source::library())
            .expect("the kernels compile");
        Rig { gpu, lib }
    }

    fn upload<T: Copy>(&self, v: &[T]) -> Buffer {
        let bytes = std::mem::size_of_val(v).max(4);
        let b = self.gpu.buffer(bytes).unwrap();
        // SAFETY: the buffer is new and at least as long; nothing runs.
        unsafe {
            std::ptr::copy_nonoverlapping(
                v.as_ptr().cast::<u8>(),
                self.gpu.contents(&b),
                std::mem::size_of_val(v),
            )
        };
        b
    }

    fn read<T: Copy + Default>(&self, b: &Buffer, n: usize) -> Vec<T> {
        let mut out = vec![T::default(); n];
        // SAFETY: the callers read what they allocated; the work has run.
        unsafe {
            std::ptr::copy_nonoverlapping(self.gpu.contents(b).cast::<T>(), out.as_mut_ptr(), n)
        };
        out
    }

    fn run(&mut self, kernel: &str, args: &[Arg<'_, Buffer>], grid: Grid) {
        let p = self.gpu.pipeline(&self.lib, kernel).unwrap();
        self.gpu.dispatch(&p, args, grid);
        self.gpu.run().unwrap_or_else(|e| panic!("{kernel}: {e}"));
    }
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }

    fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }
}

fn as_bytes<T: Copy>(v: &[T]) -> Vec<u8> {
    // SAFETY: the block and float types are plain data without padding.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
        .to_vec()
}

// ---------------------------------------------------------------------------
// Products
// ---------------------------------------------------------------------------

/// A matrix of weight type `code` as the files store it, and the values its
/// type's own dequantization gives (rows, cols).
struct Weights {
    name: &'static str,
    code: u32,
    bytes: Vec<u8>,
    values: Vec<f32>,
}

fn plain<B: Block>(rng: &mut Rng, rows: usize, cols: usize) -> (Vec<B>, Vec<f32>) {
    let mut blocks = Vec::new();
    let mut values = Vec::new();
    for _ in 0..rows {
        let row = rng.vec(cols);
        let q = quant::quantize_row::<B>(&row);
        for b in &q {
            values.extend_from_slice(&b.dequantize());
        }
        blocks.extend(q);
    }
    (blocks, values)
}

fn grouped<I: quant::Interleaved>(rows: &[I::Row], nr: usize, nb: usize) -> Vec<I> {
    (0..nr / 4)
        .flat_map(|g| quant::interleave::<I>(&rows[g * 4 * nb..(g + 1) * 4 * nb], nb))
        .collect()
}

/// Random k-quant blocks whose f16 scales are small and finite.
fn k_blocks<B: SuperBlock>(rng: &mut Rng, rows: usize, cols: usize, scales: &[usize]) -> Weights {
    let mut bytes: Vec<u8> = (0..rows * cols / QK_K * B::BYTES)
        .map(|_| rng.byte())
        .collect();
    for block in bytes.chunks_exact_mut(B::BYTES) {
        for &at in scales {
            let d = half::f16::from_f32(rng.f() * 0.01);
            block[at..at + 2].copy_from_slice(&d.to_le_bytes());
        }
    }
    let mut values = Vec::new();
    for c in bytes.chunks_exact(B::BYTES) {
        // SAFETY: the k-quant blocks are plain bytes and f16s, valid for
        // any bits (the scales were made finite above).
        let b: B = unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<B>()) };
        values.extend_from_slice(&b.dequantize());
    }
    Weights {
        name: "",
        code: 0,
        bytes,
        values,
    }
}

/// Every weight type the GPU takes, `rows` by `cols` (rows a multiple of
/// 4 for the interleaved types, cols of 256 for the k-quants).
fn every_type(rng: &mut Rng, rows: usize, cols: usize) -> Vec<Weights> {
    let mut all = Vec::new();
    let f = rng.vec(rows * cols);
    all.push(Weights {
        name: "f32",
        code: 0,
        bytes: as_bytes(&f),
        values: f.clone(),
    });
    let h: Vec<half::f16> = f.iter().map(|&v| half::f16::from_f32(v)).collect();
    all.push(Weights {
        name: "f16",
        code: 1,
        bytes: as_bytes(&h),
        values: h.iter().map(|v| v.to_f32()).collect(),
    });
    let b: Vec<half::bf16> = f.iter().map(|&v| half::bf16::from_f32(v)).collect();
    all.push(Weights {
        name: "bf16",
        code: 2,
        bytes: as_bytes(&b),
        values: b.iter().map(|v| v.to_f32()).collect(),
    });
    if !cols.is_multiple_of(QK) {
        return all;
    }
    let nb = cols / QK;
    let (q8, v8) = plain::<BlockQ8_0>(rng, rows, cols);
    let (q4, v4) = plain::<BlockQ4_0>(rng, rows, cols);
    let (q41, v41) = plain::<BlockQ4_1>(rng, rows, cols);
    if rows.is_multiple_of(4) {
        all.push(Weights {
            name: "q4_0x4",
            code: 6,
            bytes: as_bytes(&grouped::<BlockQ4_0x4>(&q4, rows, nb)),
            values: v4.clone(),
        });
        all.push(Weights {
            name: "q8_0x4",
            code: 7,
            bytes: as_bytes(&grouped::<BlockQ8_0x4>(&q8, rows, nb)),
            values: v8.clone(),
        });
    }
    all.push(Weights {
        name: "q8_0",
        code: 3,
        bytes: as_bytes(&q8),
        values: v8,
    });
    all.push(Weights {
        name: "q4_0",
        code: 4,
        bytes: as_bytes(&q4),
        values: v4,
    });
    all.push(Weights {
        name: "q4_1",
        code: 5,
        bytes: as_bytes(&q41),
        values: v41,
    });
    if cols.is_multiple_of(QK_K) {
        // Q4_K: d and dmin at bytes 0 and 2; Q6_K: d at byte 208.
        let mut k4 = k_blocks::<BlockQ4K>(rng, rows, cols, &[0, 2]);
        (k4.name, k4.code) = ("q4_k", 8);
        let mut k6 = k_blocks::<BlockQ6K>(rng, rows, cols, &[208]);
        (k6.name, k6.code) = ("q6_k", 9);
        all.extend([k4, k6]);
    }
    all
}

/// `out[t, r] = w[r] . x[t]` in float64, and `sum |w[r, j] x[t, j]|`.
fn product(w: &[f32], x: &[f32], rows: usize, cols: usize, tokens: usize) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(rows * tokens);
    for t in 0..tokens {
        for r in 0..rows {
            let (mut s, mut a) = (0.0f64, 0.0f64);
            for j in 0..cols {
                let p = w[r * cols + j] as f64 * x[t * cols + j] as f64;
                s += p;
                a += p.abs();
            }
            out.push((s, a));
        }
    }
    out
}

#[test]
fn products_of_every_weight_type_match_float64_sums() {
    // (rows, cols, tokens): one row; rows that do not fill a threadgroup;
    // more tokens than one product takes; a ragged float row (SmolLM's
    // and stories260K's hidden sizes are not multiples of 32); tiles of
    // the prompt kernel cut at both edges. Both kernels take every shape.
    let shapes = [
        (1, 256, 1),
        (36, 256, 1),
        (12, 512, 3),
        (20, 256, 9),
        (8, 768, 17),
        (13, 172, 2),
        (40, 256, 33),
        (33, 172, 40),
    ];
    for order in ORDERS {
        let mut rig = Rig::new(order);
        let mut rng = Rng(0x1234_5678);
        for (rows, cols, tokens) in shapes {
            for w in every_type(&mut rng, rows, cols) {
                let x = rng.vec(tokens * cols);
                let want = product(&w.values, &x, rows, cols, tokens);
                let before = rng.vec(tokens * rows);
                for (kernel, accumulate) in [
                    ("matvec", false),
                    ("matvec", true),
                    ("matmul", false),
                    ("matmul", true),
                ] {
                    let grid = match kernel {
                        "matvec" => Grid {
                            groups: [(rows as u32).div_ceil(8), (tokens as u32).div_ceil(8), 1],
                            threads: [64, 1, 1],
                            shared: 0,
                        },
                        _ => Grid {
                            groups: [(rows as u32).div_ceil(32), (tokens as u32).div_ceil(32), 1],
                            threads: [128, 1, 1],
                            shared: 0,
                        },
                    };
                    let a = MatvecArgs {
                        r#type: w.code,
                        rows: rows as u32,
                        cols: cols as u32,
                        tokens: tokens as u32,
                        ld_in: cols as u32,
                        ld_out: rows as u32,
                        accumulate: u32::from(accumulate),
                        pad: 0,
                    };
                    let (wb, xb, ob) = (rig.upload(&w.bytes), rig.upload(&x), rig.upload(&before));
                    rig.run(
                        kernel,
                        &[
                            Arg::Bytes(a.bytes()),
                            Arg::Buffer(&wb, 0),
                            Arg::Buffer(&xb, 0),
                            Arg::Buffer(&ob, 0),
                        ],
                        grid,
                    );
                    let got: Vec<f32> = rig.read(&ob, tokens * rows);
                    for (i, (&g, &(s, mag))) in got.iter().zip(&want).enumerate() {
                        let s = if accumulate { s + before[i] as f64 } else { s };
                        let tol = PRODUCT_TOL * (mag + before[i].abs() as f64) + 1e-7;
                        assert!(
                            (g as f64 - s).abs() <= tol,
                            "{kernel} {} {rows}x{cols}, {tokens} tokens, {order:?}, \
                             accumulate {accumulate}: out[{}, {}] = {g}, want {s} (tol {tol:e})",
                            w.name,
                            i / rows,
                            i % rows,
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn embedding_rows_are_the_dequantized_rows() {
    let mut rig = Rig::new(Order::Random(3));
    let mut rng = Rng(99);
    let (rows, cols) = (20, 256);
    let tokens: Vec<u32> = vec![19, 0, 7, 7, 12];
    for w in every_type(&mut rng, rows, cols) {
        let a = MatvecArgs {
            r#type: w.code,
            rows: rows as u32,
            cols: cols as u32,
            tokens: tokens.len() as u32,
            ld_in: 0,
            ld_out: cols as u32,
            accumulate: 0,
            pad: 0,
        };
        let (wb, tb) = (rig.upload(&w.bytes), rig.upload(&tokens));
        let ob = rig.upload(&vec![f32::NAN; tokens.len() * cols]);
        rig.run(
            "embed",
            &[
                Arg::Bytes(a.bytes()),
                Arg::Buffer(&wb, 0),
                Arg::Buffer(&tb, 0),
                Arg::Buffer(&ob, 0),
            ],
            Grid::linear(tokens.len() as u32, 32),
        );
        let got: Vec<f32> = rig.read(&ob, tokens.len() * cols);
        for (t, &tok) in tokens.iter().enumerate() {
            let want = &w.values[tok as usize * cols..][..cols];
            let row = &got[t * cols..][..cols];
            for (j, (&g, &v)) in row.iter().zip(want).enumerate() {
                // The same arithmetic in f32 (d * q), so equal up to fused rounding.
                assert!(
                    (g - v).abs() <= 1e-6 * v.abs().max(1e-3),
                    "{}: token {t} value {j}: {g} vs {v}",
                    w.name
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Row-wise kernels
// ---------------------------------------------------------------------------

fn close(got: &[f32], want: &[f32], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let bound = tol * (w.abs() as f64).max(1.0);
        assert!(
            (g as f64 - w as f64).abs() <= bound,
            "{what}[{i}] = {g}, want {w}"
        );
    }
}

#[test]
fn norms_rotary_bias_and_gated_activations_match_the_reference() {
    for order in ORDERS {
        let mut rig = Rig::new(order);
        let mut rng = Rng(7);
        // Widths below, at and above a SIMD group's span, and ragged.
        for (tokens, width, head_dim) in [(1, 64, 8), (5, 72, 24), (3, 288, 48), (2, 1000, 40)] {
            let x = rng.vec(tokens * width);
            let g = rng.vec(width);
            let eps = 1e-5f32;
            let mut a = RowArgs {
                tokens: tokens as u32,
                width: width as u32,
                ld: width as u32,
                eps,
                heads: (width / head_dim) as u32,
                head_dim: head_dim as u32,
                style: 0,
                gather: 0,
                rotary: head_dim as u32,
            };
            // rmsnorm over whole rows
            let (xb, gb, ob) = (
                rig.upload(&x),
                rig.upload(&g),
                rig.upload(&vec![0f32; x.len()]),
            );
            let idx = rig.upload(&[0u32]);
            rig.run(
                "rmsnorm",
                &[
                    Arg::Bytes(a.bytes()),
                    Arg::Buffer(&xb, 0),
                    Arg::Buffer(&gb, 0),
                    Arg::Buffer(&ob, 0),
                    Arg::Buffer(&idx, 0),
                ],
                Grid::linear(tokens as u32, 32),
            );
            let want: Vec<f32> = x
                .chunks(width)
                .flat_map(|r| reference::rmsnorm(r, &g, eps))
                .collect();
            close(&rig.read(&ob, x.len()), &want, ELEMENT_TOL, "rmsnorm");

            // rmsnorm of gathered rows (the rows that want logits)
            let rows: Vec<u32> = (0..tokens as u32).rev().collect();
            let idx = rig.upload(&rows);
            a.gather = 1;
            rig.run(
                "rmsnorm",
                &[
                    Arg::Bytes(a.bytes()),
                    Arg::Buffer(&xb, 0),
                    Arg::Buffer(&gb, 0),
                    Arg::Buffer(&ob, 0),
                    Arg::Buffer(&idx, 0),
                ],
                Grid::linear(tokens as u32, 32),
            );
            let want_g: Vec<f32> = rows
                .iter()
                .flat_map(|&r| want[r as usize * width..][..width].to_vec())
                .collect();
            close(
                &rig.read(&ob, x.len()),
                &want_g,
                ELEMENT_TOL,
                "rmsnorm gather",
            );
            a.gather = 0;

            // norm_heads, in place
            let hg = rng.vec(head_dim);
            let (hb, hgb) = (rig.upload(&x), rig.upload(&hg));
            rig.run(
                "norm_heads",
                &[
                    Arg::Bytes(a.bytes()),
                    Arg::Buffer(&hb, 0),
                    Arg::Buffer(&hgb, 0),
                ],
                Grid {
                    groups: [a.heads, tokens as u32, 1],
                    threads: [32, 1, 1],
                    shared: 0,
                },
            );
            let heads = a.heads as usize * head_dim;
            let mut want_h = x.clone();
            for r in 0..tokens {
                for h in 0..a.heads as usize {
                    let s = r * width + h * head_dim;
                    let n = reference::rmsnorm(&x[s..s + head_dim], &hg, eps);
                    want_h[s..s + head_dim].copy_from_slice(&n);
                }
                // Values past the last whole head stay as they were.
                assert!(heads <= width);
            }
            close(&rig.read(&hb, x.len()), &want_h, ELEMENT_TOL, "norm_heads");

            // rope, both pair layouts, all of each head or its first 3/4
            for rotary in [head_dim, head_dim * 3 / 4] {
                let half = rotary / 2;
                a.rotary = rotary as u32;
                let angles: Vec<f32> = (0..tokens * half)
                    .map(|i| rng.f() * 50.0 + i as f32)
                    .collect();
                let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
                let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
                for style in [0u32, 1] {
                    a.style = style;
                    let (rb, cb, sb) = (rig.upload(&x), rig.upload(&cos), rig.upload(&sin));
                    rig.run(
                        "rope",
                        &[
                            Arg::Bytes(a.bytes()),
                            Arg::Buffer(&rb, 0),
                            Arg::Buffer(&cb, 0),
                            Arg::Buffer(&sb, 0),
                        ],
                        Grid::linear(tokens as u32, 32),
                    );
                    let mut want_r = x.clone();
                    for t in 0..tokens {
                        for h in 0..a.heads as usize {
                            let s = t * width + h * head_dim;
                            for j in 0..half {
                                let (p0, p1) = if style == 0 {
                                    (2 * j, 2 * j + 1)
                                } else {
                                    (j, j + half)
                                };
                                let (c, sn) = (cos[t * half + j] as f64, sin[t * half + j] as f64);
                                let (x0, x1) = (x[s + p0] as f64, x[s + p1] as f64);
                                want_r[s + p0] = (x0 * c - x1 * sn) as f32;
                                want_r[s + p1] = (x0 * sn + x1 * c) as f32;
                            }
                        }
                    }
                    close(&rig.read(&rb, x.len()), &want_r, ELEMENT_TOL, "rope");
                }
            }

            // add_bias and swiglu
            let bias = rng.vec(width);
            let (bb, biasb) = (rig.upload(&x), rig.upload(&bias));
            rig.run(
                "add_bias",
                &[
                    Arg::Bytes(a.bytes()),
                    Arg::Buffer(&bb, 0),
                    Arg::Buffer(&biasb, 0),
                ],
                Grid::linear(tokens as u32, 32),
            );
            let want_b: Vec<f32> = x
                .iter()
                .enumerate()
                .map(|(i, v)| v + bias[i % width])
                .collect();
            close(&rig.read(&bb, x.len()), &want_b, 1e-7, "add_bias");

            // scale: an exact multiple for a power of two, one rounding else
            for factor in [0.25f32, 12.0, 0.22] {
                let sb = rig.upload(&x);
                rig.run(
                    "scale",
                    &[
                        Arg::Bytes(a.bytes()),
                        Arg::Buffer(&sb, 0),
                        Arg::Bytes(&factor.to_le_bytes()),
                    ],
                    Grid::linear(tokens as u32, 32),
                );
                let want: Vec<f32> = x.iter().map(|v| v * factor).collect();
                assert_eq!(rig.read::<f32>(&sb, x.len()), want, "scale {factor}");
            }

            let up = rng.vec(x.len());
            let gate: Vec<f32> = x.iter().map(|v| v * 8.0).collect();
            let (gb2, ub) = (rig.upload(&gate), rig.upload(&up));
            let n = x.len() as u32;
            rig.run(
                "swiglu",
                &[
                    Arg::Bytes(a.bytes()),
                    Arg::Buffer(&gb2, 0),
                    Arg::Buffer(&ub, 0),
                ],
                Grid::linear(n.div_ceil(64), 64),
            );
            close(
                &rig.read(&gb2, x.len()),
                &reference::silu_mul(&gate, &up),
                ELEMENT_TOL,
                "swiglu",
            );

            // geglu: GELU by tanh, in f64 here
            let gb3 = rig.upload(&gate);
            rig.run(
                "geglu",
                &[
                    Arg::Bytes(a.bytes()),
                    Arg::Buffer(&gb3, 0),
                    Arg::Buffer(&ub, 0),
                ],
                Grid::linear(n.div_ceil(64), 64),
            );
            let want: Vec<f32> = gate
                .iter()
                .zip(&up)
                .map(|(&g, &u)| {
                    let g = g as f64;
                    let inner = (2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g * g * g);
                    (0.5 * g * (1.0 + inner.tanh()) * u as f64) as f32
                })
                .collect();
            close(&rig.read(&gb3, x.len()), &want, ELEMENT_TOL, "geglu");

            // add_rmsnorm: acc += rmsnorm(x)
            let acc = rng.vec(x.len());
            let ab = rig.upload(&acc);
            a.gather = 0;
            rig.run(
                "add_rmsnorm",
                &[
                    Arg::Bytes(a.bytes()),
                    Arg::Buffer(&xb, 0),
                    Arg::Buffer(&gb, 0),
                    Arg::Buffer(&ab, 0),
                ],
                Grid::linear(tokens as u32, 32),
            );
            let want: Vec<f32> = x
                .chunks(width)
                .flat_map(|r| reference::rmsnorm(r, &g, eps))
                .zip(&acc)
                .map(|(v, a)| v + a)
                .collect();
            close(&rig.read(&ab, x.len()), &want, ELEMENT_TOL, "add_rmsnorm");
        }
    }
}

// ---------------------------------------------------------------------------
// The KV cache and attention
// ---------------------------------------------------------------------------

/// A cache of `n_pages` pages for `layers` layers, its sequences' page
/// lists, and where each position's rows live.
struct Cache {
    kv_heads: usize,
    head_dim: usize,
    layers: usize,
    f16: bool,
}

impl Cache {
    fn row_bytes(&self) -> usize {
        self.head_dim * if self.f16 { 2 } else { 4 }
    }

    fn page_bytes(&self) -> usize {
        self.layers * 2 * self.kv_heads * PAGE * self.row_bytes()
    }

    /// Byte offset of `pos`'s row of `head` (keys or values) in `layer`.
    fn at(&self, pages: &[u32], layer: usize, values: bool, head: usize, pos: usize) -> usize {
        let page = pages[pos / PAGE] as usize;
        let rows = ((layer * 2 + usize::from(values)) * self.kv_heads + head) * PAGE;
        page * self.page_bytes() + (rows + pos % PAGE) * self.row_bytes()
    }

    fn args(&self, tokens: usize, layer: usize, q_heads: usize, window: usize) -> KvArgs {
        KvArgs {
            tokens: tokens as u32,
            layer: layer as u32,
            kv_heads: self.kv_heads as u32,
            head_dim: self.head_dim as u32,
            q_heads: q_heads as u32,
            window: window as u32,
            row_bytes: self.row_bytes() as u32,
            kv_type: u32::from(self.f16),
            page_bytes: self.page_bytes() as u64,
            scale: 1.0 / (self.head_dim as f32).sqrt(),
            ld_q: (q_heads * self.head_dim) as u32,
            ..KvArgs::default()
        }
    }

    fn read(&self, bytes: &[u8], at: usize, d: usize) -> f32 {
        if self.f16 {
            half::f16::from_le_bytes([bytes[at + 2 * d], bytes[at + 2 * d + 1]]).to_f32()
        } else {
            f32::from_le_bytes(bytes[at + 4 * d..at + 4 * d + 4].try_into().unwrap())
        }
    }
}

/// One attention check: the model's heads, the cache's type and window,
/// how long the first sequence is, how many of its last tokens the pass
/// takes (a prompt chunk, or 1 to decode), and the fewest positions a
/// range of them is split into (`usize::MAX`: never split).
#[derive(Clone, Copy, Debug)]
struct AttCase {
    order: Order,
    f16: bool,
    q_heads: usize,
    kv_heads: usize,
    head_dim: usize,
    window: usize,
    /// Scores capped at this by tanh (0: not capped).
    softcap: f32,
    len: usize,
    chunk: usize,
    min_split: usize,
}

#[test]
fn stored_keys_and_values_land_in_their_pages_and_attention_matches_softmax() {
    for order in ORDERS {
        for f16 in [false, true] {
            for (q_heads, kv_heads, head_dim, window, softcap) in [
                (4, 2, 40, 0, 0.0),
                (2, 2, 8, 0, 0.0),
                (6, 2, 64, 50, 0.0),
                (6, 2, 64, 50, 0.5),
                (40, 2, 16, 0, 0.0),
                (2, 1, 136, 0, 0.0),
            ] {
                attention_case(AttCase {
                    order,
                    f16,
                    q_heads,
                    kv_heads,
                    head_dim,
                    window,
                    softcap,
                    len: 150,
                    chunk: 10,
                    min_split: usize::MAX,
                });
            }
        }
    }
}

#[test]
fn attention_split_into_ranges_merges_to_the_softmax() {
    // Ranges of 32 positions (a tile each), decoding and prompt chunks, a
    // window that leaves some ranges empty for some rows.
    for (chunk, window, order) in [
        (1, 0, Order::Forward),
        (10, 0, Order::Reverse),
        (10, 70, Order::Random(3)),
    ] {
        for (q_heads, kv_heads, head_dim) in [(8, 2, 64), (3, 3, 24)] {
            attention_case(AttCase {
                order,
                f16: true,
                q_heads,
                kv_heads,
                head_dim,
                window,
                softcap: 0.0,
                len: 150,
                chunk,
                min_split: 32,
            });
        }
    }
}

#[test]
fn attention_over_a_long_context_matches_softmax() {
    // 2,100 positions over 33 pages in a scrambled order: the online
    // softmax rescales across 66 tiles, split into ranges (the plan's own
    // choice for so few threadgroups).
    let case = AttCase {
        order: Order::Random(11),
        f16: true,
        q_heads: 8,
        kv_heads: 2,
        head_dim: 64,
        window: 0,
        softcap: 0.0,
        len: 2100,
        chunk: 10,
        min_split: 256,
    };
    attention_case(case);
    attention_case(AttCase {
        order: Order::Forward,
        f16: false,
        q_heads: 4,
        kv_heads: 4,
        head_dim: 128,
        window: 1000,
        chunk: 1,
        ..case
    });
    attention_case(AttCase {
        min_split: usize::MAX,
        ..case
    });
}

fn attention_case(case: AttCase) {
    let AttCase {
        order,
        f16,
        q_heads,
        kv_heads,
        head_dim,
        window,
        softcap,
        len,
        chunk,
        min_split,
    } = case;
    let mut rig = Rig::new(order);
    let mut rng = Rng(42 + head_dim as u64);
    let cache = Cache {
        kv_heads,
        head_dim,
        layers: 2,
        f16,
    };
    let layer = 1;
    // Two sequences: one `len` positions long over pages out of order, one
    // of 3 positions in page 0; the pass stores and attends with the last
    // tokens of each (several tokens of the first, as a prompt chunk would).
    let pages0 = len.div_ceil(PAGE);
    let scrambled = (0..pages0).map(|i| (i * 7 % pages0) as u32 + 1).collect();
    let lists: [Vec<u32>; 2] = [scrambled, vec![0]];
    let lens = [len, 3usize];
    let n_pages = pages0 + 1;
    let mut bytes = vec![0u8; n_pages * cache.page_bytes()];
    // Earlier positions: written by the host in the cache's type.
    let mut keys = [vec![], vec![]];
    let mut vals = [vec![], vec![]];
    for s in 0..2 {
        keys[s] = rng.vec(lens[s] * kv_heads * head_dim);
        vals[s] = rng.vec(lens[s] * kv_heads * head_dim);
        for pos in 0..lens[s] {
            for h in 0..kv_heads {
                for (values, src) in [(false, &keys[s]), (true, &vals[s])] {
                    let at = cache.at(&lists[s], layer, values, h, pos);
                    for d in 0..head_dim {
                        let v = src[(pos * kv_heads + h) * head_dim + d];
                        if f16 {
                            let b = half::f16::from_f32(v).to_le_bytes();
                            bytes[at + 2 * d..at + 2 * d + 2].copy_from_slice(&b);
                        } else {
                            bytes[at + 4 * d..at + 4 * d + 4].copy_from_slice(&v.to_le_bytes());
                        }
                    }
                }
            }
        }
    }
    // The pass's tokens: the last `chunk` positions of sequence 0, 2 of
    // sequence 1; their keys and values go in through store_kv.
    let mut info = Vec::new();
    let mut pages = lists[0].clone();
    pages.extend(&lists[1]);
    for pos in len - chunk..len {
        info.push(TokenInfo {
            pos: pos as u32,
            pages: 0,
        });
    }
    info.push(TokenInfo {
        pos: 2,
        pages: pages0 as u32,
    });
    let n = info.len();
    let kv = kv_heads * head_dim;
    let (mut k_new, mut v_new) = (vec![0f32; n * kv], vec![0f32; n * kv]);
    for (t, i) in info.iter().enumerate() {
        let s = usize::from(i.pages != 0);
        let p = i.pos as usize;
        k_new[t * kv..(t + 1) * kv].copy_from_slice(&keys[s][p * kv..(p + 1) * kv]);
        v_new[t * kv..(t + 1) * kv].copy_from_slice(&vals[s][p * kv..(p + 1) * kv]);
        // Poison the rows store_kv must write.
        for h in 0..kv_heads {
            for values in [false, true] {
                let at = cache.at(&lists[s], layer, values, h, p);
                bytes[at..at + cache.row_bytes()].fill(0xff);
            }
        }
    }
    let cb = rig.upload(&bytes);
    let (ib, pb) = (rig.upload(slice_bytes(&info)), rig.upload(&pages));
    let (kb, vb) = (rig.upload(&k_new), rig.upload(&v_new));
    let a = cache.args(n, layer, q_heads, window);
    rig.run(
        "store_kv",
        &[
            Arg::Bytes(a.bytes()),
            Arg::Buffer(&kb, 0),
            Arg::Buffer(&vb, 0),
            Arg::Buffer(&cb, 0),
            Arg::Buffer(&ib, 0),
            Arg::Buffer(&pb, 0),
        ],
        Grid {
            groups: [n as u32, kv_heads as u32, 1],
            threads: [32, 1, 1],
            shared: 0,
        },
    );
    let stored: Vec<u8> = rig.read(&cb, bytes.len());
    for (t, i) in info.iter().enumerate() {
        let s = usize::from(i.pages != 0);
        for h in 0..kv_heads {
            for (values, src) in [(false, &k_new), (true, &v_new)] {
                let at = cache.at(&lists[s], layer, values, h, i.pos as usize);
                for d in 0..head_dim {
                    let want = src[t * kv + h * head_dim + d];
                    let want = if f16 {
                        half::f16::from_f32(want).to_f32()
                    } else {
                        want
                    };
                    assert_eq!(
                        cache.read(&stored, at, d),
                        want,
                        "store_kv token {t} head {h}"
                    );
                }
            }
        }
    }

    // Attention of every query head of every token.
    let q = rng.vec(n * q_heads * head_dim);
    let (qb, ob) = (rig.upload(&q), rig.upload(&vec![f32::NAN; q.len()]));
    let mut plan = AttentionPlan {
        min_split,
        ..AttentionPlan::default()
    };
    let runs = [(0, chunk, len - chunk), (chunk, 1, 2)];
    plan.plan(runs, q_heads, kv_heads, head_dim, window);
    assert_eq!(
        plan.splits > 1,
        min_split < len,
        "{case:?}: {} ranges of {}",
        plan.splits,
        plan.split_len
    );
    let mut a = a;
    a.softcap = softcap;
    plan.apply(&mut a);
    let bb = rig.upload(&plan.blocks);
    let partial = rig.upload(&vec![f32::NAN; plan.partial_floats.max(1)]);
    rig.run(
        "attention",
        &[
            Arg::Bytes(a.bytes()),
            Arg::Buffer(&qb, 0),
            Arg::Buffer(&cb, 0),
            Arg::Buffer(&ob, 0),
            Arg::Buffer(&ib, 0),
            Arg::Buffer(&pb, 0),
            Arg::Buffer(&bb, 0),
            Arg::Buffer(&partial, 0),
        ],
        plan.grid,
    );
    if plan.splits > 1 {
        rig.run(
            "attention_merge",
            &[
                Arg::Bytes(a.bytes()),
                Arg::Buffer(&partial, 0),
                Arg::Buffer(&ob, 0),
            ],
            plan.merge,
        );
    }
    let got: Vec<f32> = rig.read(&ob, q.len());
    let group = q_heads / kv_heads;
    for (t, i) in info.iter().enumerate() {
        let s = usize::from(i.pages != 0);
        let end = i.pos as usize + 1;
        let first = if window != 0 {
            end.saturating_sub(window)
        } else {
            0
        };
        for h in 0..q_heads {
            let kvh = h / group;
            let qh = &q[(t * q_heads + h) * head_dim..][..head_dim];
            let scores: Vec<f32> = (first..end)
                .map(|p| {
                    let at = cache.at(&lists[s], layer, false, kvh, p);
                    let dot: f64 = (0..head_dim)
                        .map(|d| qh[d] as f64 * cache.read(&stored, at, d) as f64)
                        .sum();
                    let s = dot / (head_dim as f64).sqrt();
                    let cap = softcap as f64;
                    (if cap > 0.0 { cap * (s / cap).tanh() } else { s }) as f32
                })
                .collect();
            let prob = reference::softmax(&scores);
            let mut vmax = 0f64;
            let mut v = Vec::new();
            for p in first..end {
                let at = cache.at(&lists[s], layer, true, kvh, p);
                for d in 0..head_dim {
                    let x = cache.read(&stored, at, d);
                    vmax = vmax.max(x.abs() as f64);
                    v.push(x);
                }
            }
            let want = reference::attn_pv(&prob, 1, end - first, &v, head_dim, head_dim);
            let out = &got[(t * q_heads + h) * head_dim..][..head_dim];
            for d in 0..head_dim {
                assert!(
                    (out[d] as f64 - want[d] as f64).abs() <= ATTENTION_TOL * vmax,
                    "attention {case:?}: token {t} head {h} dim {d}: {} vs {}",
                    out[d],
                    want[d]
                );
            }
        }
    }
}
