//! Scalar reference kernels: the simplest correct loops, accumulating in f64.
//!
//! They define what every tier must compute and are the oracle the kernel
//! tests compare each tier against. Nothing on a hot path calls them.

use crate::quant::{Block, BlockQ8Act, QK, QK_K, SuperBlock};

/// `out (n_tok, rows) = x (n_tok, k) @ w (rows, k)^T`.
pub fn matmul_f32(w: &[f32], k: usize, x: &[f32], n_tok: usize) -> Vec<f32> {
    let rows = w.len() / k;
    let mut out = vec![0.0; n_tok * rows];
    for t in 0..n_tok {
        for r in 0..rows {
            let s: f64 = (0..k)
                .map(|j| w[r * k + j] as f64 * x[t * k + j] as f64)
                .sum();
            out[t * rows + r] = s as f32;
        }
    }
    out
}

/// `out (n_tok, rows) = x (n_tok, k) @ w (rows, k)^T` for weights of any
/// float type (given as f32 values).
pub fn matmul_float<W: Copy>(
    w: &[W],
    k: usize,
    x: &[f32],
    n_tok: usize,
    to_f32: impl Fn(W) -> f32,
) -> Vec<f32> {
    let wf: Vec<f32> = w.iter().map(|&v| to_f32(v)).collect();
    matmul_f32(&wf, k, x, n_tok)
}

/// The quantized product: dequantized weight blocks against dequantized
/// activation blocks, summed in f64. `w` is `(rows, nb)` blocks, `x` is
/// `(n_tok, nb)` activation blocks.
pub fn matmul_quant<W: Block>(w: &[W], nb: usize, x: &[BlockQ8Act], n_tok: usize) -> Vec<f32> {
    let rows = w.len() / nb;
    let mut out = vec![0.0; n_tok * rows];
    for t in 0..n_tok {
        for r in 0..rows {
            let mut s = 0.0f64;
            for b in 0..nb {
                let (wv, xb) = (w[r * nb + b].dequantize(), &x[t * nb + b]);
                for (j, &v) in wv.iter().enumerate() {
                    s += v as f64 * (xb.d as f64 * xb.qs[j] as f64);
                }
            }
            out[t * rows + r] = s as f32;
        }
    }
    out
}

/// The k-quant product: dequantized super-blocks against dequantized
/// activation blocks (eight per super-block), summed in f64. `w` is `(rows,
/// nsb)` super-blocks, `x` is `(n_tok, 8 * nsb)` activation blocks.
pub fn matmul_kquant<W: SuperBlock>(
    w: &[W],
    nsb: usize,
    x: &[BlockQ8Act],
    n_tok: usize,
) -> Vec<f32> {
    let rows = w.len() / nsb;
    let nb = nsb * (QK_K / QK);
    let mut out = vec![0.0; n_tok * rows];
    for t in 0..n_tok {
        for r in 0..rows {
            let mut s = 0.0f64;
            for b in 0..nsb {
                let wv = w[r * nsb + b].dequantize();
                for (v, &wj) in wv.iter().enumerate() {
                    let xb = &x[t * nb + b * (QK_K / QK) + v / QK];
                    s += wj as f64 * (xb.d as f64 * xb.qs[v % QK] as f64);
                }
            }
            out[t * rows + r] = s as f32;
        }
    }
    out
}

/// Group quantization: per group of `gs`, scale = max|x| / 127 and
/// q = round half away from zero of x / scale (0 for an all-zero group).
pub fn quantize_q8g(x: &[f32], gs: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = vec![0i8; x.len()];
    let mut s = vec![0.0f32; x.len() / gs];
    for (g, group) in x.chunks_exact(gs).enumerate() {
        let amax = group.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        s[g] = scale;
        for (j, &v) in group.iter().enumerate() {
            q[g * gs + j] = if scale > 0.0 {
                (v / scale).round() as i8
            } else {
                0
            };
        }
    }
    (q, s)
}

/// The group-quantized product with exact integer group sums.
pub fn matmul_q8g(
    wq: &[i8],
    ws: &[f32],
    k: usize,
    gs: usize,
    xq: &[i8],
    xs: &[f32],
    n_tok: usize,
) -> Vec<f32> {
    let rows = wq.len() / k;
    let ng = k / gs;
    let mut out = vec![0.0; n_tok * rows];
    for t in 0..n_tok {
        for r in 0..rows {
            let mut s = 0.0f64;
            for g in 0..ng {
                let i: i64 = (0..gs)
                    .map(|j| wq[r * k + g * gs + j] as i64 * xq[t * k + g * gs + j] as i64)
                    .sum();
                s += i as f64 * ws[r * ng + g] as f64 * xs[t * ng + g] as f64;
            }
            out[t * rows + r] = s as f32;
        }
    }
    out
}

/// Softmax of a slice.
pub fn softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let e: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| (v / sum) as f32).collect()
}

/// `prob (rows, n_pos) @ v (n_pos, hd)` with `v` rows `ldv` apart.
pub fn attn_pv(
    prob: &[f32],
    rows: usize,
    n_pos: usize,
    v: &[f32],
    ldv: usize,
    hd: usize,
) -> Vec<f32> {
    let mut out = vec![0.0; rows * hd];
    for r in 0..rows {
        for c in 0..hd {
            let s: f64 = (0..n_pos)
                .map(|p| prob[r * n_pos + p] as f64 * v[p * ldv + c] as f64)
                .sum();
            out[r * hd + c] = s as f32;
        }
    }
    out
}

/// RMSNorm: `w * x / sqrt(mean(x^2) + eps)`.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps as f64).sqrt();
    x.iter()
        .zip(w)
        .map(|(&v, &g)| (g as f64 * v as f64 * inv) as f32)
        .collect()
}

/// `gelu(a) * b`, element-wise, GELU by its tanh approximation (in f64).
pub fn gelu_tanh_mul(a: &[f32], b: &[f32]) -> Vec<f32> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let x = x as f64;
            (0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh()) * y as f64) as f32
        })
        .collect()
}

/// `silu(a) * b`, element-wise.
pub fn silu_mul(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let x = x as f64;
            (x / (1.0 + (-x).exp()) * y as f64) as f32
        })
        .collect()
}
