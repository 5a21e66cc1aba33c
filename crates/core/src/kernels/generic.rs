//! The kernels, written once against [`Simd`] and instantiated per
//! instruction set by `kernels::isa`.
//!
//! Layout conventions (all row-major):
//! - a weight matrix `w` is `(rows, k)`: one output feature per row;
//! - activations `x` are `(n_tok, ldx)`, token `t`'s vector at `x + t * ldx`;
//! - outputs are `(n_tok, ldo)`, written at `out + t * ldo + row`, so a
//!   caller can point `out` into a wider matrix (or the KV cache) and let
//!   threads fill disjoint column ranges.
//!
//! Every function is `unsafe`: the caller guarantees that the pointers cover
//! the extents the arguments describe, and that the CPU supports `S`.

use super::simd::Simd;

// ---------------------------------------------------------------------------
// Small vector helpers
// ---------------------------------------------------------------------------

/// `sum_i a[i] * b[i]` over `n` floats.
#[inline(always)]
pub(super) unsafe fn dot<S: Simd>(a: *const f32, b: *const f32, n: usize) -> f32 {
    // SAFETY: `a` and `b` hold `n` floats (caller); every access is below `n`.
    unsafe {
        let nv = n - n % S::LANES;
        let mut acc = S::zero();
        let mut i = 0;
        while i < nv {
            acc = S::mul_add(S::load(a.add(i)), S::load(b.add(i)), acc);
            i += S::LANES;
        }
        let mut s = S::sum(acc);
        while i < n {
            s += *a.add(i) * *b.add(i);
            i += 1;
        }
        s
    }
}

/// `y[i] += alpha * x[i]` over `n` floats.
#[inline(always)]
pub(super) unsafe fn axpy<S: Simd>(alpha: f32, x: *const f32, y: *mut f32, n: usize) {
    // SAFETY: `x` and `y` hold `n` floats (caller); every access is below `n`.
    unsafe {
        let nv = n - n % S::LANES;
        let a = S::splat(alpha);
        let mut i = 0;
        while i < nv {
            S::store(
                y.add(i),
                S::mul_add(a, S::load(x.add(i)), S::load(y.add(i))),
            );
            i += S::LANES;
        }
        while i < n {
            *y.add(i) += alpha * *x.add(i);
            i += 1;
        }
    }
}

/// The largest of `n` floats (`n >= 1`).
#[inline(always)]
unsafe fn max<S: Simd>(x: *const f32, n: usize) -> f32 {
    // SAFETY: `x` holds `n` floats (caller).
    unsafe {
        let nv = n - n % S::LANES;
        let mut m = f32::NEG_INFINITY;
        if nv > 0 {
            let mut acc = S::load(x);
            let mut i = S::LANES;
            while i < nv {
                acc = S::max(acc, S::load(x.add(i)));
                i += S::LANES;
            }
            m = S::max_lane(acc);
        }
        for i in nv..n {
            m = m.max(*x.add(i));
        }
        m
    }
}

// ---------------------------------------------------------------------------
// Element-wise layers
// ---------------------------------------------------------------------------

/// RMSNorm of one vector: `out[i] = w[i] * (x[i] / sqrt(mean(x^2) + eps))`.
#[inline(always)]
pub(super) unsafe fn rmsnorm<S: Simd>(
    x: *const f32,
    w: *const f32,
    n: usize,
    eps: f32,
    out: *mut f32,
) {
    // SAFETY: `x`, `w` and `out` hold `n` floats (caller).
    unsafe {
        let ss = dot::<S>(x, x, n) / n as f32 + eps;
        let inv = 1.0 / ss.sqrt();
        let nv = n - n % S::LANES;
        let vinv = S::splat(inv);
        let mut i = 0;
        while i < nv {
            let v = S::mul(S::load(w.add(i)), S::mul(vinv, S::load(x.add(i))));
            S::store(out.add(i), v);
            i += S::LANES;
        }
        while i < n {
            *out.add(i) = *w.add(i) * (inv * *x.add(i));
            i += 1;
        }
    }
}

/// Softmax of `n` floats in place (`n >= 1`).
#[inline(always)]
pub(super) unsafe fn softmax<S: Simd>(x: *mut f32, n: usize) {
    // SAFETY: `x` holds `n` floats (caller).
    unsafe {
        let m = max::<S>(x, n);
        let mut sum = 0.0f32;
        for i in 0..n {
            let e = (*x.add(i) - m).exp();
            *x.add(i) = e;
            sum += e;
        }
        let inv = 1.0 / sum;
        for i in 0..n {
            *x.add(i) *= inv;
        }
    }
}

/// The SwiGLU gate: `a[i] = silu(a[i]) * b[i]` over `n` floats.
#[inline(always)]
pub(super) unsafe fn silu_mul(a: *mut f32, b: *const f32, n: usize) {
    // SAFETY: `a` and `b` hold `n` floats (caller).
    unsafe {
        for i in 0..n {
            let v = *a.add(i);
            *a.add(i) = v * (1.0 / (1.0 + (-v).exp())) * *b.add(i);
        }
    }
}

// ---------------------------------------------------------------------------
// Attention for one query head
// ---------------------------------------------------------------------------

/// Scaled dot-product attention of one query vector over `n_pos` cached
/// positions of one KV head.
///
/// - `q`: `(head_dim,)`
/// - `keys`, `values`: position `p`'s vector at `keys + p * stride`
///   (`stride` = the cache's row length, `kv_dim`)
/// - `scores`: scratch, `(n_pos,)`
/// - `out`: `(head_dim,)`, overwritten
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn attend<S: Simd>(
    q: *const f32,
    head_dim: usize,
    keys: *const f32,
    values: *const f32,
    stride: usize,
    n_pos: usize,
    scale: f32,
    scores: *mut f32,
    out: *mut f32,
) {
    // SAFETY: the extents are the caller's promise, restated in the doc.
    unsafe {
        for p in 0..n_pos {
            *scores.add(p) = dot::<S>(q, keys.add(p * stride), head_dim) * scale;
        }
        softmax::<S>(scores, n_pos);
        std::ptr::write_bytes(out, 0, head_dim);
        for p in 0..n_pos {
            axpy::<S>(*scores.add(p), values.add(p * stride), out, head_dim);
        }
    }
}

// ---------------------------------------------------------------------------
// f32 matrix products
// ---------------------------------------------------------------------------

/// One register tile: `R` weight rows against `C` tokens, over all of `k`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile_f32<S: Simd, const R: usize, const C: usize>(
    w: *const f32,
    k: usize,
    x: *const f32,
    ldx: usize,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: `w` holds `R` rows of `k`, `x` holds `C` rows of `ldx >= k`,
    // `out` has `C` rows of `ldo >= R` (caller).
    unsafe {
        let kv = k - k % S::LANES;
        let mut acc = [[S::zero(); C]; R];
        let mut i = 0;
        while i < kv {
            let mut xv = [S::zero(); C];
            for (c, v) in xv.iter_mut().enumerate() {
                *v = S::load(x.add(c * ldx + i));
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let wv = S::load(w.add(r * k + i));
                for (a, &xc) in acc_r.iter_mut().zip(&xv) {
                    *a = S::mul_add(wv, xc, *a);
                }
            }
            i += S::LANES;
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (c, &a) in acc_r.iter().enumerate() {
                let mut s = S::sum(a);
                for j in kv..k {
                    s += *w.add(r * k + j) * *x.add(c * ldx + j);
                }
                *out.add(c * ldo + r) = s;
            }
        }
    }
}

/// `out[t, r] = sum_j w[r, j] * x[t, j]` for `r < rows`, `t < n_tok`,
/// tiled `R` rows by `C` tokens.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn matmul_f32<S: Simd, const R: usize, const C: usize>(
    w: *const f32,
    rows: usize,
    k: usize,
    x: *const f32,
    ldx: usize,
    n_tok: usize,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: every tile stays inside `rows x k` of `w`, `n_tok x ldx` of
    // `x` and `n_tok x ldo` of `out` (caller's extents).
    unsafe {
        let mut r = 0;
        while r + R <= rows {
            let wr = w.add(r * k);
            let mut t = 0;
            while t + C <= n_tok {
                tile_f32::<S, R, C>(wr, k, x.add(t * ldx), ldx, out.add(t * ldo + r), ldo);
                t += C;
            }
            while t < n_tok {
                tile_f32::<S, R, 1>(wr, k, x.add(t * ldx), ldx, out.add(t * ldo + r), ldo);
                t += 1;
            }
            r += R;
        }
        while r < rows {
            let wr = w.add(r * k);
            let mut t = 0;
            while t + C <= n_tok {
                tile_f32::<S, 1, C>(wr, k, x.add(t * ldx), ldx, out.add(t * ldo + r), ldo);
                t += C;
            }
            while t < n_tok {
                tile_f32::<S, 1, 1>(wr, k, x.add(t * ldx), ldx, out.add(t * ldo + r), ldo);
                t += 1;
            }
            r += 1;
        }
    }
}

// ---------------------------------------------------------------------------
// Group-quantized int8 (llama2.c's version 2 files, "Q8_0" with a group size
// given by the file): a tensor's int8 values, then one f32 scale per group.
// Activations are quantized the same way, and each group's dot product is an
// integer sum. The loops are plain; compiled with AVX2/AVX-512/NEON enabled
// they vectorise into widening multiply-adds.
// ---------------------------------------------------------------------------

/// Quantizes `n` floats in groups of `gs`: `s[g] = max|x| / 127`,
/// `q = round(x / s)` (half away from zero). A group of zeros gets scale 0.
#[inline(always)]
pub(super) unsafe fn quantize_q8(x: *const f32, n: usize, gs: usize, q: *mut i8, s: *mut f32) {
    // SAFETY: `x` and `q` hold `n` values and `s` holds `n / gs` (caller).
    unsafe {
        for g in 0..n / gs {
            let xg = std::slice::from_raw_parts(x.add(g * gs), gs);
            let qg = std::slice::from_raw_parts_mut(q.add(g * gs), gs);
            let amax = xg.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = amax / 127.0;
            *s.add(g) = scale;
            for (qv, &xv) in qg.iter_mut().zip(xg) {
                // Divide (not multiply by 1/scale) to round exactly as runq.c.
                *qv = if scale > 0.0 {
                    (xv / scale).round() as i8
                } else {
                    0
                };
            }
        }
    }
}

/// Integer dot product of two int8 vectors of length `n`.
#[inline(always)]
unsafe fn dot_i8(a: *const i8, b: *const i8, n: usize) -> i32 {
    // SAFETY: `a` and `b` hold `n` values (caller).
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(a, n),
            std::slice::from_raw_parts(b, n),
        )
    };
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// `out[t, r] = sum_g dot(wq[r, g], xq[t, g]) * ws[r, g] * xs[t, g]`, with
/// `k / gs` groups per row. `xq` is `(n_tok, k)`, `xs` is `(n_tok, k / gs)`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn matmul_q8(
    wq: *const i8,
    ws: *const f32,
    rows: usize,
    k: usize,
    gs: usize,
    xq: *const i8,
    xs: *const f32,
    n_tok: usize,
    out: *mut f32,
    ldo: usize,
) {
    let ng = k / gs;
    // SAFETY: every access stays inside the extents the arguments describe.
    unsafe {
        for r in 0..rows {
            for t in 0..n_tok {
                let mut val = 0.0f32;
                for g in 0..ng {
                    let ival = dot_i8(wq.add(r * k + g * gs), xq.add(t * k + g * gs), gs);
                    val += ival as f32 * *ws.add(r * ng + g) * *xs.add(t * ng + g);
                }
                *out.add(t * ldo + r) = val;
            }
        }
    }
}
