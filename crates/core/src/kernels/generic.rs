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
use crate::quant::{
    BlockQ3K, BlockQ4_0, BlockQ4_0x4, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K,
    BlockQ6K, BlockQ8_0, BlockQ8_0x4, BlockQ8Act, QK, QK_K,
};

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

/// `e^x` lane by lane, to about 2 ulp: `x = n ln 2 + r` with `|r| <= ln 2 / 2`,
/// `e^r` by its Taylor polynomial to degree 7, scaled by `2^n`. Inputs are
/// clamped to the range where the result is a normal float (and e^-inf
/// comes out as about 1e-38, not 0).
#[inline(always)]
pub(super) unsafe fn exp<S: Simd>(x: S::F) -> S::F {
    // SAFETY: plain lane arithmetic on the tier the caller runs on.
    unsafe {
        let x = S::min(S::max(x, S::splat(-87.3)), S::splat(88.7));
        let n = S::round(S::mul(x, S::splat(std::f32::consts::LOG2_E)));
        // r = x - n ln 2, with ln 2 split in two for precision
        let r = S::mul_add(n, S::splat(-0.693_145_75), x);
        let r = S::mul_add(n, S::splat(-1.428_606_8e-6), r);
        let mut p = S::splat(1.0 / 5040.0);
        for c in [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ] {
            p = S::mul_add(p, r, S::splat(c));
        }
        S::mul(p, S::pow2i(n))
    }
}

/// Softmax of `n` floats in place (`n >= 1`).
#[inline(always)]
pub(super) unsafe fn softmax<S: Simd>(x: *mut f32, n: usize) {
    // SAFETY: `x` holds `n` floats (caller); whole vectors stay below `n`.
    unsafe {
        let m = max::<S>(x, n);
        let nv = n - n % S::LANES;
        let vm = S::splat(m);
        let mut acc = S::zero();
        let mut i = 0;
        while i < nv {
            let e = exp::<S>(S::sub(S::load(x.add(i)), vm));
            S::store(x.add(i), e);
            acc = S::add(acc, e);
            i += S::LANES;
        }
        let mut sum = S::sum(acc);
        while i < n {
            let e = (*x.add(i) - m).exp();
            *x.add(i) = e;
            sum += e;
            i += 1;
        }
        let inv = 1.0 / sum;
        let vinv = S::splat(inv);
        let mut i = 0;
        while i < nv {
            S::store(x.add(i), S::mul(S::load(x.add(i)), vinv));
            i += S::LANES;
        }
        while i < n {
            *x.add(i) *= inv;
            i += 1;
        }
    }
}

/// The SwiGLU gate: `a[i] = silu(a[i]) * b[i]` over `n` floats, where
/// `silu(v) = v / (1 + e^-v)`.
#[inline(always)]
pub(super) unsafe fn silu_mul<S: Simd>(a: *mut f32, b: *const f32, n: usize) {
    // SAFETY: `a` and `b` hold `n` floats (caller); whole vectors stay below `n`.
    unsafe {
        let nv = n - n % S::LANES;
        let one = S::splat(1.0);
        let mut i = 0;
        while i < nv {
            let v = S::load(a.add(i));
            let e = exp::<S>(S::sub(S::zero(), v));
            let g = S::div(v, S::add(one, e));
            S::store(a.add(i), S::mul(g, S::load(b.add(i))));
            i += S::LANES;
        }
        while i < n {
            let v = *a.add(i);
            *a.add(i) = v * (1.0 / (1.0 + (-v).exp())) * *b.add(i);
            i += 1;
        }
    }
}

/// The GeGLU gate: `a[i] = gelu(a[i]) * b[i]` over `n` floats, GELU by its
/// tanh approximation: `0.5 v (1 + tanh(u))` with `u = sqrt(2 / pi) (v +
/// 0.044715 v^3)`, which is `v / (1 + e^(-2u))`.
#[inline(always)]
pub(super) unsafe fn gelu_tanh_mul<S: Simd>(a: *mut f32, b: *const f32, n: usize) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    // SAFETY: `a` and `b` hold `n` floats (caller); whole vectors stay below `n`.
    unsafe {
        let nv = n - n % S::LANES;
        let one = S::splat(1.0);
        let (c1, c3) = (S::splat(-2.0 * SQRT_2_OVER_PI), S::splat(0.044_715));
        let mut i = 0;
        while i < nv {
            let v = S::load(a.add(i));
            // -2u = -2 sqrt(2 / pi) (v + 0.044715 v^3)
            let m2u = S::mul(c1, S::mul_add(S::mul(c3, v), S::mul(v, v), v));
            let g = S::div(v, S::add(one, exp::<S>(m2u)));
            S::store(a.add(i), S::mul(g, S::load(b.add(i))));
            i += S::LANES;
        }
        while i < n {
            // (the same form: 1 + tanh(u) loses digits where tanh(u) nears -1)
            let v = *a.add(i);
            let m2u = -2.0 * SQRT_2_OVER_PI * (v + 0.044_715 * v * v * v);
            *a.add(i) = v / (1.0 + m2u.exp()) * *b.add(i);
            i += 1;
        }
    }
}

// ---------------------------------------------------------------------------
// Attention: the probabilities times the values
// ---------------------------------------------------------------------------

/// `out[r] = sum_p prob[r, p] * v[p]` (plus `out[r]` if `acc`) for `R`
/// rows, over `NV` vectors of columns from `c0`: each value vector is loaded
/// (and converted from `W`) once for all `R` rows.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn pv_tile<S: Simd, W: FloatWeight, const R: usize, const NV: usize>(
    prob: *const f32,
    ldp: usize,
    n_pos: usize,
    v: *const W,
    ldv: usize,
    c0: usize,
    out: *mut f32,
    ldo: usize,
    acc_in: bool,
) {
    // SAFETY: `prob` has `R` rows of `n_pos` (`ldp` apart), `v` has `n_pos`
    // rows (`ldv` apart) reaching column `c0 + NV * LANES`, `out` has `R`
    // rows (`ldo` apart) as wide (caller).
    unsafe {
        let mut acc = [[S::zero(); NV]; R];
        if acc_in {
            for (r, acc_r) in acc.iter_mut().enumerate() {
                for (k, a) in acc_r.iter_mut().enumerate() {
                    *a = S::load(out.add(r * ldo + c0 + k * S::LANES));
                }
            }
        }
        for pos in 0..n_pos {
            let row = v.add(pos * ldv + c0);
            let mut vv = [S::zero(); NV];
            for (k, x) in vv.iter_mut().enumerate() {
                *x = W::load::<S>(row.add(k * S::LANES));
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let pr = S::splat(*prob.add(r * ldp + pos));
                for (a, &x) in acc_r.iter_mut().zip(&vv) {
                    *a = S::mul_add(pr, x, *a);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (k, &a) in acc_r.iter().enumerate() {
                S::store(out.add(r * ldo + c0 + k * S::LANES), a);
            }
        }
    }
}

/// `out (rows, hd) = prob (rows, n_pos) @ v (n_pos, hd)`, added to `out`
/// if `acc`: attention's weighted sum of values (of type `W`). `prob` rows
/// are `ldp` apart, value rows `ldv` apart, output rows `hd` apart; rows
/// come `R` at a time.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn attn_pv<S: Simd, W: FloatWeight, const R: usize>(
    prob: *const f32,
    ldp: usize,
    rows: usize,
    n_pos: usize,
    v: *const W,
    ldv: usize,
    hd: usize,
    out: *mut f32,
    acc: bool,
) {
    // SAFETY: the extents are the caller's promise; every tile stays inside.
    unsafe {
        let hv = hd - hd % S::LANES;
        let mut r = 0;
        while r < rows {
            let tr = if r + R <= rows { R } else { 1 };
            let (pr, or) = (prob.add(r * ldp), out.add(r * hd));
            let mut c0 = 0;
            while c0 < hv {
                let wide = c0 + 4 * S::LANES <= hv;
                match (tr == R, wide) {
                    (true, true) => pv_tile::<S, W, R, 4>(pr, ldp, n_pos, v, ldv, c0, or, hd, acc),
                    (true, false) => pv_tile::<S, W, R, 1>(pr, ldp, n_pos, v, ldv, c0, or, hd, acc),
                    (false, true) => pv_tile::<S, W, 1, 4>(pr, ldp, n_pos, v, ldv, c0, or, hd, acc),
                    (false, false) => {
                        pv_tile::<S, W, 1, 1>(pr, ldp, n_pos, v, ldv, c0, or, hd, acc)
                    }
                }
                c0 += if wide { 4 * S::LANES } else { S::LANES };
            }
            for rr in 0..tr {
                for c in hv..hd {
                    let mut sum = if acc { *or.add(rr * hd + c) } else { 0.0 };
                    for pos in 0..n_pos {
                        sum += *pr.add(rr * ldp + pos) * (*v.add(pos * ldv + c)).to_f32();
                    }
                    *or.add(rr * hd + c) = sum;
                }
            }
            r += tr;
        }
    }
}

// ---------------------------------------------------------------------------
// Float matrix products (f32, f16 and bf16 weights, f32 activations)
// ---------------------------------------------------------------------------

/// The tokens of the next tile when `left` remain: `C`, 2 or 1 (see [`tiles`]).
#[inline(always)]
fn tile_tokens<const C: usize>(left: usize) -> usize {
    match left {
        _ if left >= C => C,
        2.. => 2,
        _ => 1,
    }
}

/// Calls `$tile::<rows, tokens>($args)` with the tile sizes [`tiles`] gave:
/// `$tr` rows (`$r` or 1) by `$tc` tokens (`$c`, 2 or 1).
macro_rules! dispatch_tile {
    ($tile:ident::<$($p:ty),*>, $r:ident, $c:ident, $tr:expr, $tc:expr, ($($arg:expr),*)) => {
        match ($tr == $r, $tc) {
            (true, tc) if tc == $c => $tile::<$($p,)* $r, $c>($($arg),*),
            (true, 2) => $tile::<$($p,)* $r, 2>($($arg),*),
            (true, _) => $tile::<$($p,)* $r, 1>($($arg),*),
            (false, tc) if tc == $c => $tile::<$($p,)* 1, $c>($($arg),*),
            (false, 2) => $tile::<$($p,)* 1, 2>($($arg),*),
            (false, _) => $tile::<$($p,)* 1, 1>($($arg),*),
        }
    };
}

/// A weight element the float products read: loaded `LANES` at a time as
/// f32, or one at a time for the tails.
pub(super) trait FloatWeight: Copy {
    unsafe fn load<S: Simd>(p: *const Self) -> S::F;
    fn to_f32(self) -> f32;
}

impl FloatWeight for f32 {
    #[inline(always)]
    unsafe fn load<S: Simd>(p: *const f32) -> S::F {
        // SAFETY: the caller guarantees LANES values at `p`.
        unsafe { S::load(p) }
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl FloatWeight for half::f16 {
    #[inline(always)]
    unsafe fn load<S: Simd>(p: *const half::f16) -> S::F {
        // SAFETY: as above; f16 is a transparent u16.
        unsafe { S::load_f16(p.cast()) }
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

impl FloatWeight for half::bf16 {
    #[inline(always)]
    unsafe fn load<S: Simd>(p: *const half::bf16) -> S::F {
        // SAFETY: as above; bf16 is a transparent u16.
        unsafe { S::load_bf16(p.cast()) }
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

/// One register tile: `R` weight rows (`ldw` apart) against `C` tokens,
/// over all of `k`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile_float<S: Simd, W: FloatWeight, const R: usize, const C: usize>(
    w: *const W,
    ldw: usize,
    k: usize,
    x: *const f32,
    ldx: usize,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: `w` holds `R` rows of `ldw >= k`, `x` holds `C` rows of
    // `ldx >= k`, `out` has `C` rows of `ldo >= R` (caller).
    unsafe {
        let kv = k - k % S::LANES;
        let mut acc = [[S::zero(); C]; R];
        // Each row is prefetched `ahead` values on, past its end into the
        // same row of the next tile (rows shorter than the distance would
        // otherwise prefetch rows this tile is reading), once a cache line.
        let ahead = PREFETCH_BYTES / size_of::<W>();
        let line = (64 / size_of::<W>()).max(S::LANES);
        let mut i = 0;
        while i < kv {
            let mut xv = [S::zero(); C];
            for (c, v) in xv.iter_mut().enumerate() {
                *v = S::load(x.add(c * ldx + i));
            }
            let (j, fetch) = (i + ahead, i % line == 0);
            for (r, acc_r) in acc.iter_mut().enumerate() {
                if fetch {
                    let at = if j < k {
                        r * ldw + j
                    } else {
                        (r + R) * ldw + j - k
                    };
                    S::prefetch(w.wrapping_add(at).cast());
                }
                let wv = W::load::<S>(w.add(r * ldw + i));
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
                    s += (*w.add(r * ldw + j)).to_f32() * *x.add(c * ldx + j);
                }
                *out.add(c * ldo + r) = s;
            }
        }
    }
}

/// `out[t, r] = sum_j w[r, j] * x[t, j]` for `r < rows`, `t < n_tok`, with
/// weight rows `ldw` apart, tiled `R` rows by `C` tokens.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn matmul_float<
    S: Simd,
    W: FloatWeight,
    const R: usize,
    const C: usize,
    const PV: usize,
    const PC: usize,
>(
    w: *const W,
    ldw: usize,
    rows: usize,
    k: usize,
    x: *const f32,
    ldx: usize,
    n_tok: usize,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: every tile stays inside `rows x k` of `w`, `n_tok x ldx` of
    // `x` and `n_tok x ldo` of `out` (caller's extents); the panel product
    // covers the first rows and the tiles the rest.
    unsafe {
        let done = if n_tok >= PC {
            matmul_float_panel::<S, W, PV, PC>(w, ldw, rows, k, x, ldx, n_tok, out, ldo)
        } else {
            0
        };
        let (w, rows, out) = (w.add(done * ldw), rows - done, out.add(done));
        tiles::<R, C>(rows, n_tok, |r, t, tr, tc| {
            let (wr, xt, o) = (w.add(r * ldw), x.add(t * ldx), out.add(t * ldo + r));
            dispatch_tile!(
                tile_float::<S, W>,
                R,
                C,
                tr,
                tc,
                (wr, ldw, k, xt, ldx, o, ldo)
            )
        });
    }
}

/// The floats one packed panel holds: 16 KiB, which stays in L1 with the
/// tokens' slices of the block beside it.
const PANEL_FLOATS: usize = 4096;

/// A packed panel: a block of columns of a strip of weight rows, in f32,
/// column-major (`p[kk * rows + r]`), so that one vector load gives one
/// column's value for `LANES` consecutive rows.
#[repr(C, align(64))]
struct Panel([f32; PANEL_FLOATS]);

/// The columns of a panel of `rw` rows: as many as fit, a multiple of 16.
const fn panel_kc(rw: usize) -> usize {
    PANEL_FLOATS / rw / 16 * 16
}

/// Packs columns `k0..k0 + kb` of the `rw` rows at `w` (`ldw` apart) into
/// `p`, converted to f32 and transposed (see [`Panel`]): `LANES` rows at a
/// time are converted into a square block and transposed into place.
#[inline(always)]
unsafe fn pack_panel<S: Simd, W: FloatWeight>(
    w: *const W,
    ldw: usize,
    rw: usize,
    k0: usize,
    kb: usize,
    p: *mut f32,
) {
    // SAFETY: `w` holds `rw` rows of `ldw >= k0 + kb` values and `p` holds
    // `kb * rw` floats (caller); `block` holds LANES x LANES <= 16 x 16.
    unsafe {
        let l = S::LANES;
        let kv = kb - kb % l;
        let mut block = [0.0f32; 256];
        let b = block.as_mut_ptr();
        for g in (0..rw).step_by(l) {
            let rows = w.add(g * ldw + k0);
            // Two blocks ahead: the rows are read in short runs, one per
            // block, which the hardware prefetchers follow poorly.
            for i in 0..l {
                S::prefetch(rows.wrapping_add(i * ldw + 2 * kb).cast());
            }
            let mut kk = 0;
            while kk < kv {
                for i in 0..l {
                    S::store(b.add(i * l), W::load::<S>(rows.add(i * ldw + kk)));
                }
                S::transpose(b, l, p.add(kk * rw + g), rw);
                kk += l;
            }
            for kk in kv..kb {
                for i in 0..l {
                    *p.add(kk * rw + g + i) = (*rows.add(i * ldw + kk)).to_f32();
                }
            }
        }
    }
}

/// One register tile of the panel product: the panel's `RV * LANES` rows
/// against `C` tokens over the panel's `kb` columns, each token value
/// broadcast against a column of the panel. Adds to `out` unless `first`.
/// Prefetches the same columns of the tokens at `next` (the next tile's).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn panel_tile<S: Simd, const RV: usize, const C: usize>(
    p: *const f32,
    kb: usize,
    x: *const f32,
    next: *const f32,
    ldx: usize,
    out: *mut f32,
    ldo: usize,
    first: bool,
) {
    // SAFETY: `p` holds `kb` columns of `RV * LANES` rows, `x` holds `C`
    // rows of at least `kb` values (`ldx` apart), `out` has `C` rows of at
    // least `RV * LANES` (`ldo` apart) (caller).
    unsafe {
        let rw = RV * S::LANES;
        let mut acc = [[S::zero(); C]; RV];
        if !first {
            for (v, acc_v) in acc.iter_mut().enumerate() {
                for (c, a) in acc_v.iter_mut().enumerate() {
                    *a = S::load(out.add(c * ldo + v * S::LANES));
                }
            }
        }
        // Each token's row offset, computed once and hidden from the
        // optimiser, which otherwise rebuilds them in every column as a
        // chain of additions (a third more instructions in the inner loop).
        let mut offs = [0usize; C];
        for (c, o) in offs.iter_mut().enumerate() {
            *o = c * ldx;
        }
        let offs = core::hint::black_box(offs);
        // A cache line of each token at a time, fetching the same line of
        // the next tile's tokens meanwhile.
        let mut k1 = 0;
        while k1 < kb {
            for c in 0..C {
                S::prefetch(next.wrapping_add(c * ldx + k1).cast());
            }
            for kk in k1..(k1 + 16).min(kb) {
                let mut wv = [S::zero(); RV];
                for (v, wv_v) in wv.iter_mut().enumerate() {
                    *wv_v = S::load(p.add(kk * rw + v * S::LANES));
                }
                for (c, &o) in offs.iter().enumerate() {
                    let xb = S::splat(*x.add(kk + o));
                    for (acc_v, &w_v) in acc.iter_mut().zip(&wv) {
                        acc_v[c] = S::mul_add(w_v, xb, acc_v[c]);
                    }
                }
            }
            k1 += 16;
        }
        for (v, acc_v) in acc.iter().enumerate() {
            for (c, &a) in acc_v.iter().enumerate() {
                S::store(out.add(c * ldo + v * S::LANES), a);
            }
        }
    }
}

/// The float product for many tokens. Each block of `panel_kc` columns of
/// each strip of `RV * LANES` weight rows is converted to f32 and packed
/// once ([`pack_panel`]); then every token passes over the panel in
/// register tiles of `C` tokens ([`panel_tile`]) whose weight vectors come
/// from L1 and whose token values are broadcasts, so the inner loop is
/// nearly all multiply-adds. The rows of a tile's tokens share L1 sets when
/// `ldx` is a multiple of 1024 floats and then evict each other: callers
/// pass rows `4 * ldx` bytes apart that are an odd multiple of 64 (see
/// [`super::padded_ld`]). Returns the rows it covered (whole strips); the
/// caller computes the rest.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn matmul_float_panel<S: Simd, W: FloatWeight, const RV: usize, const C: usize>(
    w: *const W,
    ldw: usize,
    rows: usize,
    k: usize,
    x: *const f32,
    ldx: usize,
    n_tok: usize,
    out: *mut f32,
    ldo: usize,
) -> usize {
    const { assert!(C >= 4) };
    let rw = RV * S::LANES;
    let kc = panel_kc(rw);
    assert!(kc >= 16 && S::LANES <= 16);
    let strips = rows / rw;
    let mut panel = Panel([0.0; PANEL_FLOATS]);
    let p = panel.0.as_mut_ptr();
    // SAFETY: strips cover rows `< rows`, blocks columns `< k`, tiles tokens
    // `< n_tok` (caller's extents); the panel holds `kc * rw` floats.
    unsafe {
        for s in 0..strips {
            let (ws, os) = (w.add(s * rw * ldw), out.add(s * rw));
            let mut k0 = 0;
            while k0 < k {
                let kb = kc.min(k - k0);
                pack_panel::<S, W>(ws, ldw, rw, k0, kb, p);
                let first = k0 == 0;
                // The next tile's tokens (wrapping to the first ones, which
                // the next block starts with).
                let tile = |t: usize, c: usize| {
                    let next = if t + 2 * c <= n_tok { t + c } else { 0 };
                    let xn = x.wrapping_add(next * ldx + k0 + if next == 0 { kb } else { 0 });
                    (x.add(t * ldx + k0), xn, os.add(t * ldo))
                };
                let mut t = 0;
                while t + C <= n_tok {
                    let (xt, xn, ot) = tile(t, C);
                    panel_tile::<S, RV, C>(p, kb, xt, xn, ldx, ot, ldo, first);
                    t += C;
                }
                while t + 4 <= n_tok {
                    let (xt, xn, ot) = tile(t, 4);
                    panel_tile::<S, RV, 4>(p, kb, xt, xn, ldx, ot, ldo, first);
                    t += 4;
                }
                while t < n_tok {
                    let (xt, xn, ot) = tile(t, 1);
                    panel_tile::<S, RV, 1>(p, kb, xt, xn, ldx, ot, ldo, first);
                    t += 1;
                }
                k0 += kb;
            }
        }
    }
    strips * rw
}

/// Walks a `rows x n_tok` output in tiles of `R x C`, the leftover rows one
/// at a time and the leftover tokens two, then one, at a time: calls
/// `f(row, token, tile_rows, tile_tokens)` with tile sizes `R` or 1 and `C`,
/// 2 or 1 (a batch of 7 sequences is a tile of 4, one of 2 and one of 1, not
/// a tile of 4 and three of 1).
#[inline(always)]
fn tiles<const R: usize, const C: usize>(
    rows: usize,
    n_tok: usize,
    mut f: impl FnMut(usize, usize, usize, usize),
) {
    let mut r = 0;
    while r < rows {
        let tr = if r + R <= rows { R } else { 1 };
        let mut t = 0;
        while t < n_tok {
            let tc = tile_tokens::<C>(n_tok - t);
            f(r, t, tr, tc);
            t += tc;
        }
        r += tr;
    }
}

// ---------------------------------------------------------------------------
// Quantized matrix products: weight blocks (see `quant`) against activations
// quantized into `BlockQ8Act`, each block's product an integer sum.
// ---------------------------------------------------------------------------

/// How a weight block type feeds the integer kernels: its 32 values as
/// bytes `v`, a scale `d` and, for the 4- and 5-bit types, an offset `o`, so
/// that value `j` is `d * v[j] + o` (with `v` unsigned and below 32) or, for
/// `OFFSET == false`, `d * v[j]` (with `v` signed).
pub(super) trait QuantWeight: Copy {
    const OFFSET: bool;
    unsafe fn values<S: Simd>(b: *const Self) -> S::B32;
    unsafe fn scale_offset<S: Simd>(b: *const Self) -> (f32, f32);
}

impl QuantWeight for BlockQ8_0 {
    const OFFSET: bool = false;
    #[inline(always)]
    unsafe fn values<S: Simd>(b: *const Self) -> S::B32 {
        // SAFETY: `b` points at a block (caller).
        unsafe { S::load_b32((*b).qs.as_ptr().cast()) }
    }
    #[inline(always)]
    unsafe fn scale_offset<S: Simd>(b: *const Self) -> (f32, f32) {
        // SAFETY: as above.
        unsafe { (S::f16_to_f32((*b).d.to_bits()), 0.0) }
    }
}

impl QuantWeight for BlockQ4_0 {
    const OFFSET: bool = true;
    #[inline(always)]
    unsafe fn values<S: Simd>(b: *const Self) -> S::B32 {
        // SAFETY: as above.
        unsafe { S::unpack_nibbles((*b).qs.as_ptr()) }
    }
    #[inline(always)]
    unsafe fn scale_offset<S: Simd>(b: *const Self) -> (f32, f32) {
        // SAFETY: as above.
        let d = unsafe { S::f16_to_f32((*b).d.to_bits()) };
        (d, -8.0 * d)
    }
}

impl QuantWeight for BlockQ4_1 {
    const OFFSET: bool = true;
    #[inline(always)]
    unsafe fn values<S: Simd>(b: *const Self) -> S::B32 {
        // SAFETY: as above.
        unsafe { S::unpack_nibbles((*b).qs.as_ptr()) }
    }
    #[inline(always)]
    unsafe fn scale_offset<S: Simd>(b: *const Self) -> (f32, f32) {
        // SAFETY: as above.
        unsafe {
            (
                S::f16_to_f32((*b).d.to_bits()),
                S::f16_to_f32((*b).m.to_bits()),
            )
        }
    }
}

impl QuantWeight for BlockQ5_0 {
    const OFFSET: bool = true;
    #[inline(always)]
    unsafe fn values<S: Simd>(b: *const Self) -> S::B32 {
        // SAFETY: `b` points at a block (caller).
        unsafe { S::unpack_q5((*b).qs.as_ptr(), u32::from_le_bytes((*b).qh)) }
    }
    #[inline(always)]
    unsafe fn scale_offset<S: Simd>(b: *const Self) -> (f32, f32) {
        // SAFETY: as above.
        let d = unsafe { S::f16_to_f32((*b).d.to_bits()) };
        (d, -16.0 * d)
    }
}

impl QuantWeight for BlockQ5_1 {
    const OFFSET: bool = true;
    #[inline(always)]
    unsafe fn values<S: Simd>(b: *const Self) -> S::B32 {
        // SAFETY: `b` points at a block (caller).
        unsafe { S::unpack_q5((*b).qs.as_ptr(), u32::from_le_bytes((*b).qh)) }
    }
    #[inline(always)]
    unsafe fn scale_offset<S: Simd>(b: *const Self) -> (f32, f32) {
        // SAFETY: as above.
        unsafe {
            (
                S::f16_to_f32((*b).d.to_bits()),
                S::f16_to_f32((*b).m.to_bits()),
            )
        }
    }
}

/// How far ahead of their use the products prefetch weights. Measured on
/// 2-core AVX-512: without it, int8 and 4-bit decoding reach only about half
/// the memory bandwidth; 4 KiB ahead beat 256 B to 2 KiB in a kernel alone,
/// and 8 KiB beat 4 and 16 KiB decoding a 1.1B-shaped q4 model (35 against
/// 33 and 34 tokens/s).
const PREFETCH_BYTES: usize = 8192;

/// One register tile of a quantized product: `R` rows of `nb` weight blocks
/// against `C` tokens of `nb` activation blocks.
///
/// `sum_j (d v_j + o) (dx q_j) = d dx sum_j v_j q_j + o (dx sum_j q_j)`: the
/// first term is an integer dot product per block, the second uses the
/// activation block's `s = dx * sum_j q_j`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile_quant<S: Simd, W: QuantWeight, const R: usize, const C: usize>(
    w: *const W,
    nb: usize,
    x: *const BlockQ8Act,
    ldx: usize,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: `w` holds `R` rows of `nb` blocks, `x` holds `C` rows of
    // `ldx >= nb` blocks, `out` has `C` rows of `ldo >= R` (caller).
    unsafe {
        let mut acc = [[S::acc_zero(); C]; R];
        let mut offsets = [[0.0f32; C]; R];
        for b in 0..nb {
            let xb: [*const BlockQ8Act; C] = std::array::from_fn(|c| x.add(c * ldx + b));
            let xv = xb.map(|p| S::load_b32((*p).qs.as_ptr().cast()));
            let xd = xb.map(|p| (*p).d);
            let xs = xb.map(|p| (*p).s);
            for r in 0..R {
                let wb = w.add(r * nb + b);
                // Ask for the weights a few hundred bytes ahead of their use
                // (a hint: the address may be past the row, never read).
                S::prefetch(wb.cast::<u8>().wrapping_add(PREFETCH_BYTES));
                let v = W::values::<S>(wb);
                let (d, o) = W::scale_offset::<S>(wb);
                for c in 0..C {
                    if W::OFFSET {
                        acc[r][c] = S::acc_add(acc[r][c], S::dot_u4_i8(v, xv[c]), d * xd[c]);
                        offsets[r][c] += o * xs[c];
                    } else {
                        acc[r][c] = S::acc_add(acc[r][c], S::dot_i8_i8(v, xv[c]), d * xd[c]);
                    }
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                *out.add(c * ldo + r) = S::acc_sum(acc[r][c]) + offsets[r][c];
            }
        }
    }
}

/// `out[t, r] = sum over blocks of w[r] . x[t]` for `r < rows`, `t < n_tok`:
/// `w` is `(rows, nb)` blocks, `x` is `(n_tok, ldx)` activation blocks.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn matmul_quant<S: Simd, W: QuantWeight, const R: usize, const C: usize>(
    w: *const W,
    rows: usize,
    nb: usize,
    x: *const BlockQ8Act,
    ldx: usize,
    n_tok: usize,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: every tile stays inside the extents the arguments describe.
    unsafe {
        tiles::<R, C>(rows, n_tok, |r, t, tr, tc| {
            let (wr, xt, o) = (w.add(r * nb), x.add(t * ldx), out.add(t * ldo + r));
            dispatch_tile!(tile_quant::<S, W>, R, C, tr, tc, (wr, nb, xt, ldx, o, ldo))
        });
    }
}

// ---------------------------------------------------------------------------
// k-quant products: super-blocks of 256 weights (eight sub-blocks of 32)
// against the same activation blocks of 32, one per sub-block.
// ---------------------------------------------------------------------------

/// Sub-blocks per super-block, and activation blocks per super-block.
const SUBS: usize = QK_K / QK;

/// How a k-quant super-block feeds the integer kernels: per sub-block `i`,
/// byte values `v` and an integer dot product with the activations whose
/// result times `scale(i)`, plus `offset(i)` times the activations' sum,
/// is the sub-block's product.
pub(super) trait KQuantWeight: Copy {
    /// The super-block's scales, decoded once per row and super-block.
    type Scales: Copy;
    /// Whether the sub-blocks have offsets.
    const OFFSETS: bool;
    unsafe fn scales<S: Simd>(b: *const Self) -> Self::Scales;
    /// The values of sub-block `i`, and what their dot product needs (`s`:
    /// the super-block's scales).
    unsafe fn values<S: Simd>(b: *const Self, i: usize, s: &Self::Scales) -> (S::B32, S::H);
    unsafe fn dot<S: Simd>(v: S::B32, h: S::H, x: S::B32) -> S::I;
    fn scale(s: &Self::Scales, i: usize) -> f32;
    fn offset(s: &Self::Scales, i: usize) -> f32;
}

/// The scales of q4_k and q5_k sub-blocks: `d * sc[i]`, and the offsets
/// `-dmin * m[i]`.
#[inline(always)]
unsafe fn k4_scales<S: Simd>(
    d: half::f16,
    dmin: half::f16,
    (sc, m): ([u8; SUBS], [u8; SUBS]),
) -> ([f32; SUBS], [f32; SUBS]) {
    // SAFETY: converts two values; the tier's instructions are there (caller).
    let (d, dmin) = unsafe { (S::f16_to_f32(d.to_bits()), S::f16_to_f32(dmin.to_bits())) };
    let mut out = ([0.0; SUBS], [0.0; SUBS]);
    for i in 0..SUBS {
        out.0[i] = d * sc[i] as f32;
        out.1[i] = -(dmin * m[i] as f32);
    }
    out
}

impl KQuantWeight for BlockQ4K {
    /// `d * sc[i]` and `-dmin * m[i]`.
    type Scales = ([f32; SUBS], [f32; SUBS]);
    const OFFSETS: bool = true;
    #[inline(always)]
    unsafe fn scales<S: Simd>(b: *const Self) -> Self::Scales {
        // SAFETY: `b` points at a super-block (caller).
        unsafe { k4_scales::<S>((*b).d, (*b).dmin, (*b).scales_mins()) }
    }
    #[inline(always)]
    unsafe fn values<S: Simd>(b: *const Self, i: usize, _: &Self::Scales) -> (S::B32, S::H) {
        // SAFETY: as above; sub-blocks 2p and 2p + 1 share bytes 32p..32p + 32.
        unsafe {
            let p = (*b).qs.as_ptr().add(QK * (i / 2));
            let v = if i.is_multiple_of(2) {
                S::low_nibbles(p)
            } else {
                S::high_nibbles(p)
            };
            (v, S::halves(1, 1))
        }
    }
    #[inline(always)]
    unsafe fn dot<S: Simd>(v: S::B32, _: S::H, x: S::B32) -> S::I {
        // SAFETY: the tier's own operation on values below 16.
        unsafe { S::dot_u4_i8(v, x) }
    }
    #[inline(always)]
    fn scale(s: &Self::Scales, i: usize) -> f32 {
        s.0[i]
    }
    #[inline(always)]
    fn offset(s: &Self::Scales, i: usize) -> f32 {
        s.1[i]
    }
}

impl KQuantWeight for BlockQ6K {
    type Scales = f32;
    const OFFSETS: bool = false;
    #[inline(always)]
    unsafe fn scales<S: Simd>(b: *const Self) -> f32 {
        // SAFETY: `b` points at a super-block (caller).
        unsafe { S::f16_to_f32((*b).d.to_bits()) }
    }
    #[inline(always)]
    unsafe fn values<S: Simd>(b: *const Self, i: usize, _: &f32) -> (S::B32, S::H) {
        // Sub-block i = 4h + k: nibble k / 2 of ql[64h + 32 (k % 2)..][..32],
        // bits 2k.. of qh[32h..][..32]; scales 2i and 2i + 1 (see BlockQ6K).
        let (h, k) = (i / 4, i % 4);
        // SAFETY: as above; every offset is inside the block.
        unsafe {
            let b = &*b;
            let ql = b.ql.as_ptr().add(64 * h + QK * (k % 2));
            let qh = b.qh.as_ptr().add(QK * h);
            let v = S::q6_values(ql, qh, 4 * (k as u32 / 2), 2 * k as u32);
            (v, S::halves(b.scales[2 * i], b.scales[2 * i + 1]))
        }
    }
    #[inline(always)]
    unsafe fn dot<S: Simd>(v: S::B32, h: S::H, x: S::B32) -> S::I {
        // SAFETY: the tier's own operation; |v| <= 32.
        unsafe { S::dot_i8_i8_halves(v, x, h) }
    }
    #[inline(always)]
    fn scale(s: &f32, _: usize) -> f32 {
        *s
    }
    #[inline(always)]
    fn offset(_: &f32, _: usize) -> f32 {
        0.0
    }
}

impl KQuantWeight for BlockQ5K {
    /// `d * sc[i]` and `-dmin * m[i]`, as for q4_k.
    type Scales = ([f32; SUBS], [f32; SUBS]);
    const OFFSETS: bool = true;
    #[inline(always)]
    unsafe fn scales<S: Simd>(b: *const Self) -> Self::Scales {
        // SAFETY: `b` points at a super-block (caller).
        unsafe { k4_scales::<S>((*b).d, (*b).dmin, (*b).scales_mins()) }
    }
    #[inline(always)]
    unsafe fn values<S: Simd>(b: *const Self, i: usize, _: &Self::Scales) -> (S::B32, S::H) {
        // SAFETY: as above. The nibbles as q4_k's (sub-blocks 2p and 2p + 1
        // share bytes 32p..32p + 32 of qs), bit i of each byte of qh.
        unsafe {
            let p = (*b).qs.as_ptr().add(QK * (i / 2));
            let v = S::q5k_values(p, (*b).qh.as_ptr(), 4 * (i as u32 % 2), i as u32);
            (v, S::halves(1, 1))
        }
    }
    #[inline(always)]
    unsafe fn dot<S: Simd>(v: S::B32, _: S::H, x: S::B32) -> S::I {
        // SAFETY: the tier's own operation on values below 32.
        unsafe { S::dot_u4_i8(v, x) }
    }
    #[inline(always)]
    fn scale(s: &Self::Scales, i: usize) -> f32 {
        s.0[i]
    }
    #[inline(always)]
    fn offset(s: &Self::Scales, i: usize) -> f32 {
        s.1[i]
    }
}

impl KQuantWeight for BlockQ3K {
    /// `d` and the sixteen scales (less 32).
    type Scales = (f32, [i8; QK_K / 16]);
    const OFFSETS: bool = false;
    #[inline(always)]
    unsafe fn scales<S: Simd>(b: *const Self) -> Self::Scales {
        // SAFETY: `b` points at a super-block (caller).
        unsafe { (S::f16_to_f32((*b).d.to_bits()), (*b).scales()) }
    }
    #[inline(always)]
    unsafe fn values<S: Simd>(b: *const Self, i: usize, s: &Self::Scales) -> (S::B32, S::H) {
        // Sub-block i = 4h + k: bits 2k.. of qs[32h..][..32], bit i of
        // hmask[..32]; scales 2i and 2i + 1 (see BlockQ3K).
        let (h, k) = (i / 4, i % 4);
        // SAFETY: as above; every offset is inside the block.
        unsafe {
            let qs = (*b).qs.as_ptr().add(QK * h);
            let v = S::q3k_values(qs, (*b).hmask.as_ptr(), 2 * k as u32, i as u32);
            (v, S::halves(s.1[2 * i], s.1[2 * i + 1]))
        }
    }
    #[inline(always)]
    unsafe fn dot<S: Simd>(v: S::B32, h: S::H, x: S::B32) -> S::I {
        // SAFETY: the tier's own operation; |v| <= 4.
        unsafe { S::dot_i8_i8_halves(v, x, h) }
    }
    #[inline(always)]
    fn scale(s: &Self::Scales, _: usize) -> f32 {
        s.0
    }
    #[inline(always)]
    fn offset(_: &Self::Scales, _: usize) -> f32 {
        0.0
    }
}

/// One register tile of a k-quant product: `R` rows of `nsb` super-blocks
/// against `C` tokens of `8 * nsb` activation blocks.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile_kquant<S: Simd, W: KQuantWeight, const R: usize, const C: usize>(
    w: *const W,
    nsb: usize,
    x: *const BlockQ8Act,
    ldx: usize,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: `w` holds `R` rows of `nsb` super-blocks, `x` holds `C` rows
    // of `ldx >= 8 * nsb` blocks, `out` has `C` rows of `ldo >= R` (caller).
    unsafe {
        let mut acc = [[S::acc_zero(); C]; R];
        let mut offsets = [[0.0f32; C]; R];
        for b in 0..nsb {
            let mut scales = [W::scales::<S>(w.add(b)); R];
            for (r, s) in scales.iter_mut().enumerate().skip(1) {
                *s = W::scales::<S>(w.add(r * nsb + b));
            }
            // Unrolled (a macro, not a closure: a closure would be compiled
            // without the tier's target features), so that each sub-block's
            // offsets and shifts are constants.
            macro_rules! sub_block {
                ($i:literal) => {{
                    let i: usize = $i;
                    let first = &*x.add(b * SUBS + i);
                    let mut xv = [S::load_b32(first.qs.as_ptr().cast()); C];
                    let (mut xd, mut xs) = ([first.d; C], [first.s; C]);
                    for c in 1..C {
                        let xb = &*x.add(c * ldx + b * SUBS + i);
                        xv[c] = S::load_b32(xb.qs.as_ptr().cast());
                        (xd[c], xs[c]) = (xb.d, xb.s);
                    }
                    for r in 0..R {
                        let wb = w.add(r * nsb + b);
                        // One prefetch per sub-block covers the block's lines.
                        let ahead = PREFETCH_BYTES + i * std::mem::size_of::<W>() / SUBS;
                        S::prefetch(wb.cast::<u8>().wrapping_add(ahead));
                        let (v, h) = W::values::<S>(wb, i, &scales[r]);
                        let (d, o) = (W::scale(&scales[r], i), W::offset(&scales[r], i));
                        for c in 0..C {
                            acc[r][c] = S::acc_add(acc[r][c], W::dot::<S>(v, h, xv[c]), d * xd[c]);
                            if W::OFFSETS {
                                offsets[r][c] += o * xs[c];
                            }
                        }
                    }
                }};
            }
            sub_block!(0);
            sub_block!(1);
            sub_block!(2);
            sub_block!(3);
            sub_block!(4);
            sub_block!(5);
            sub_block!(6);
            sub_block!(7);
        }
        for r in 0..R {
            for c in 0..C {
                *out.add(c * ldo + r) = S::acc_sum(acc[r][c]) + offsets[r][c];
            }
        }
    }
}

/// `out[t, r] = w[r] . x[t]` for `r < rows`, `t < n_tok`: `w` is `(rows,
/// nsb)` super-blocks, `x` is `(n_tok, ldx)` activation blocks, eight per
/// super-block.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn matmul_kquant<S: Simd, W: KQuantWeight, const R: usize, const C: usize>(
    w: *const W,
    rows: usize,
    nsb: usize,
    x: *const BlockQ8Act,
    ldx: usize,
    n_tok: usize,
    out: *mut f32,
    ldo: usize,
) {
    // (The walk of `tiles`, written out: its closure, with the large
    // unrolled tiles in it, would not be inlined into the tier's function.)
    // SAFETY: every tile stays inside the extents the arguments describe.
    unsafe {
        let mut r = 0;
        while r < rows {
            let tr = if r + R <= rows { R } else { 1 };
            let mut t = 0;
            while t < n_tok {
                let tc = tile_tokens::<C>(n_tok - t);
                let (wr, xt, o) = (w.add(r * nsb), x.add(t * ldx), out.add(t * ldo + r));
                dispatch_tile!(
                    tile_kquant::<S, W>,
                    R,
                    C,
                    tr,
                    tc,
                    (wr, nsb, xt, ldx, o, ldo)
                );
                t += tc;
            }
            r += tr;
        }
    }
}

/// How an interleaved group of four rows' blocks loads for [`Simd::dot4`].
pub(super) trait QuantWeight4: Copy {
    unsafe fn load<S: Simd>(b: *const Self) -> S::W4;
}

impl QuantWeight4 for BlockQ4_0x4 {
    #[inline(always)]
    unsafe fn load<S: Simd>(b: *const Self) -> S::W4 {
        // SAFETY: `b` points at a group (caller).
        unsafe { S::load_q4_0x4(b) }
    }
}

impl QuantWeight4 for BlockQ8_0x4 {
    #[inline(always)]
    unsafe fn load<S: Simd>(b: *const Self) -> S::W4 {
        // SAFETY: as above.
        unsafe { S::load_q8_0x4(b) }
    }
}

/// One register tile of a four-row product: `C` tokens of `nb` activation
/// blocks against four rows whose block `b`, in [`Simd::dot4`]'s form,
/// `load(b)` gives (and prefetches ahead for).
#[inline(always)]
unsafe fn tile4<S: Simd, const C: usize>(
    nb: usize,
    load: impl Fn(usize) -> S::W4,
    x: *const BlockQ8Act,
    ldx: usize,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: `x` holds `C` rows of `ldx >= nb` blocks, `out` has `C` rows
    // of `ldo >= 4` (caller).
    unsafe {
        let mut acc = [S::acc4_zero(); C];
        for b in 0..nb {
            let wv = load(b);
            for (c, a) in acc.iter_mut().enumerate() {
                *a = S::dot4(*a, wv, x.add(c * ldx + b));
            }
        }
        for (c, &a) in acc.iter().enumerate() {
            for (r, v) in S::acc4_sums(a).into_iter().enumerate() {
                *out.add(c * ldo + r) = v;
            }
        }
    }
}

/// [`tile4`] over an interleaved group: `w` holds `nb` group blocks.
#[inline(always)]
unsafe fn tile_quant4<S: Simd, W: QuantWeight4, const C: usize>(
    w: *const W,
    nb: usize,
    x: *const BlockQ8Act,
    ldx: usize,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: `w` holds `nb` groups; the rest as for `tile4` (caller).
    let load = |b: usize| unsafe {
        let wb = w.add(b);
        for line in (0..std::mem::size_of::<W>()).step_by(64) {
            S::prefetch(wb.cast::<u8>().wrapping_add(PREFETCH_BYTES + line));
        }
        W::load::<S>(wb)
    };
    // SAFETY: as above.
    unsafe { tile4::<S, C>(nb, load, x, ldx, out, ldo) }
}

/// `out[t, r] = w[r] . x[t]` for the `4 * groups` rows of `w`, stored as
/// `groups` rows of `nb` interleaved group blocks.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn matmul_quant4<S: Simd, W: QuantWeight4, const C: usize>(
    w: *const W,
    groups: usize,
    nb: usize,
    x: *const BlockQ8Act,
    ldx: usize,
    n_tok: usize,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: every tile stays inside the extents the arguments describe.
    unsafe {
        for g in 0..groups {
            let (wg, og) = (w.add(g * nb), out.add(4 * g));
            let mut t = 0;
            while t + C <= n_tok {
                tile_quant4::<S, W, C>(wg, nb, x.add(t * ldx), ldx, og.add(t * ldo), ldo);
                t += C;
            }
            // The leftover tokens in tiles of 4, 2 and 1.
            while C > 4 && t + 4 <= n_tok {
                tile_quant4::<S, W, 4>(wg, nb, x.add(t * ldx), ldx, og.add(t * ldo), ldo);
                t += 4;
            }
            while t + 2 <= n_tok {
                tile_quant4::<S, W, 2>(wg, nb, x.add(t * ldx), ldx, og.add(t * ldo), ldo);
                t += 2;
            }
            if t < n_tok {
                tile_quant4::<S, W, 1>(wg, nb, x.add(t * ldx), ldx, og.add(t * ldo), ldo);
            }
        }
    }
}

/// 1.5 * 2^23: a float of magnitude below 2^22 plus this is rounded to an
/// integer, in the low bits of the sum's mantissa.
const ROUNDING_BIAS: f32 = 12_582_912.0;

/// Quantizes `nb * 32` activations into blocks (see `quant::quantize_act`).
#[inline(always)]
pub(super) unsafe fn quantize_act<S: Simd>(x: *const f32, nb: usize, out: *mut BlockQ8Act) {
    // SAFETY: `x` holds `nb * 32` floats and `out` `nb` blocks (caller).
    // (Plain indexed loops, no closures: they vectorise in the tier's
    // target-feature context; `round_ties_even` is one instruction. The
    // largest magnitude takes vector maxima: a loop of `f32::max` stays
    // scalar, since it must skip NaNs.)
    unsafe {
        for b in 0..nb {
            let xb = &*x.add(b * QK).cast::<[f32; QK]>();
            let mut m = S::zero();
            for i in (0..QK).step_by(S::LANES) {
                let v = S::load(xb.as_ptr().add(i));
                m = S::max(m, S::max(v, S::sub(S::zero(), v)));
            }
            let amax = S::max_lane(m);
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let o = &mut *out.add(b);
            let mut isum = 0i32;
            // |v * id| <= 127: adding 1.5 * 2^23 rounds it to an integer
            // (ties to even) held in the low bits, whose low byte is the
            // value as i8. (`round_ties_even() as i8` gives the same but
            // saturates element by element, which stays scalar.)
            for (q, &v) in o.qs.iter_mut().zip(xb) {
                *q = ((v * id) + ROUNDING_BIAS).to_bits() as i8;
                isum += *q as i32;
            }
            o.d = d;
            o.s = d * isum as f32;
            o.isum = isum;
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
pub(super) unsafe fn quantize_q8g(x: *const f32, n: usize, gs: usize, q: *mut i8, s: *mut f32) {
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
pub(super) unsafe fn matmul_q8g(
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
