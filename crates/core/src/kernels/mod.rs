//! Compute kernels, in three tiers.
//!
//! - [`reference`]: plain scalar loops in f64, the oracle of the tests;
//! - `Portable`: the same kernels as the SIMD tiers, over an 8-lane array
//!   type that the compiler vectorises for the baseline target;
//! - SIMD: AVX2+FMA and AVX-512 on x86-64, NEON on aarch64.
//!
//! The portable and SIMD tiers share one source (`generic.rs`, written over
//! the `Simd` trait); each tier is that source compiled inside functions that
//! enable its target features. [`Kernels::best`] detects the CPU's features
//! once and keeps the table of the best tier, so one binary runs at full speed,
//! and correctly, on any machine of its architecture.

mod generic;
pub mod reference;
mod simd;

use std::sync::OnceLock;

/// An instruction set the kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust, vectorised by the compiler for the baseline target.
    Portable,
    /// x86-64 AVX2 with FMA.
    Avx2,
    /// x86-64 AVX-512 Foundation.
    Avx512,
    /// aarch64 NEON.
    Neon,
}

impl Isa {
    /// Every tier, slowest first.
    pub const ALL: [Isa; 4] = [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Neon];

    /// The name used in `TINYLLM_ISA` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// Parses a name as printed by [`Isa::name`].
    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|isa| isa.name() == name)
    }

    /// Whether this CPU can run the tier.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

type MatmulF32 = unsafe fn(*const f32, usize, usize, *const f32, usize, usize, *mut f32, usize);
type MatmulQ8 = unsafe fn(
    *const i8,
    *const f32,
    usize,
    usize,
    usize,
    *const i8,
    *const f32,
    usize,
    *mut f32,
    usize,
);
type QuantizeQ8 = unsafe fn(*const f32, usize, usize, *mut i8, *mut f32);
type Attend =
    unsafe fn(*const f32, usize, *const f32, *const f32, usize, usize, f32, *mut f32, *mut f32);
type RmsNorm = unsafe fn(*const f32, *const f32, usize, f32, *mut f32);
type SiluMul = unsafe fn(*mut f32, *const f32, usize);
type Softmax = unsafe fn(*mut f32, usize);

/// The kernels of one tier, as function pointers.
///
/// The safe methods check every extent before calling the kernel; the
/// `_into` variants take a raw output pointer so that several threads can
/// fill disjoint columns of one output matrix.
#[derive(Debug)]
pub struct Kernels {
    isa: Isa,
    matmul_f32: MatmulF32,
    matmul_q8: MatmulQ8,
    quantize_q8: QuantizeQ8,
    attend: Attend,
    rmsnorm: RmsNorm,
    silu_mul: SiluMul,
    softmax: Softmax,
}

/// Defines a module holding one tier's kernel table: the generic kernels
/// instantiated for `$simd`, inside functions compiled with `$attr`.
macro_rules! tier {
    ($module:ident, $isa:expr, $simd:ty, tile = ($r:literal, $c:literal), $(#[$attr:meta])*) => {
        mod $module {
            #![allow(clippy::too_many_arguments)]
            use super::generic;
            use super::Isa;
            #[allow(unused_imports)]
            use super::simd::*;

            $(#[$attr])*
            unsafe fn matmul_f32(
                w: *const f32, rows: usize, k: usize, x: *const f32, ldx: usize,
                n_tok: usize, out: *mut f32, ldo: usize,
            ) {
                // SAFETY: forwarded contract (see `generic::matmul_f32`).
                unsafe { generic::matmul_f32::<$simd, $r, $c>(w, rows, k, x, ldx, n_tok, out, ldo) }
            }
            $(#[$attr])*
            unsafe fn matmul_q8(
                wq: *const i8, ws: *const f32, rows: usize, k: usize, gs: usize,
                xq: *const i8, xs: *const f32, n_tok: usize, out: *mut f32, ldo: usize,
            ) {
                // SAFETY: forwarded contract (see `generic::matmul_q8`).
                unsafe { generic::matmul_q8(wq, ws, rows, k, gs, xq, xs, n_tok, out, ldo) }
            }
            $(#[$attr])*
            unsafe fn quantize_q8(x: *const f32, n: usize, gs: usize, q: *mut i8, s: *mut f32) {
                // SAFETY: forwarded contract (see `generic::quantize_q8`).
                unsafe { generic::quantize_q8(x, n, gs, q, s) }
            }
            $(#[$attr])*
            unsafe fn attend(
                q: *const f32, head_dim: usize, keys: *const f32, values: *const f32,
                stride: usize, n_pos: usize, scale: f32, scores: *mut f32, out: *mut f32,
            ) {
                // SAFETY: forwarded contract (see `generic::attend`).
                unsafe {
                    generic::attend::<$simd>(q, head_dim, keys, values, stride, n_pos, scale, scores, out)
                }
            }
            $(#[$attr])*
            unsafe fn rmsnorm(x: *const f32, w: *const f32, n: usize, eps: f32, out: *mut f32) {
                // SAFETY: forwarded contract (see `generic::rmsnorm`).
                unsafe { generic::rmsnorm::<$simd>(x, w, n, eps, out) }
            }
            $(#[$attr])*
            unsafe fn silu_mul(a: *mut f32, b: *const f32, n: usize) {
                // SAFETY: forwarded contract (see `generic::silu_mul`).
                unsafe { generic::silu_mul(a, b, n) }
            }
            $(#[$attr])*
            unsafe fn softmax(x: *mut f32, n: usize) {
                // SAFETY: forwarded contract (see `generic::softmax`).
                unsafe { generic::softmax::<$simd>(x, n) }
            }

            pub(super) static KERNELS: super::Kernels = super::Kernels {
                isa: $isa,
                matmul_f32,
                matmul_q8,
                quantize_q8,
                attend,
                rmsnorm,
                silu_mul,
                softmax,
            };
        }
    };
}

tier!(portable, Isa::Portable, Portable, tile = (2, 2),);
#[cfg(target_arch = "x86_64")]
tier!(avx2, Isa::Avx2, Avx2, tile = (3, 3), #[target_feature(enable = "avx2,fma")]);
#[cfg(target_arch = "x86_64")]
tier!(avx512, Isa::Avx512, Avx512, tile = (4, 4), #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]);
#[cfg(target_arch = "aarch64")]
tier!(neon, Isa::Neon, Neon, tile = (4, 4), #[target_feature(enable = "neon")]);

impl Kernels {
    /// The kernel table of `isa`, if this CPU supports it.
    pub fn for_isa(isa: Isa) -> Option<&'static Kernels> {
        if !isa.is_available() {
            return None;
        }
        match isa {
            Isa::Portable => Some(&portable::KERNELS),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Some(&avx2::KERNELS),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Some(&avx512::KERNELS),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => Some(&neon::KERNELS),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The fastest tier this CPU supports, detected once.
    ///
    /// The environment variable `TINYLLM_ISA` (`portable`, `avx2`, `avx512`,
    /// `neon`) selects a slower tier instead, for testing; a tier the CPU
    /// lacks is ignored.
    pub fn best() -> &'static Kernels {
        static BEST: OnceLock<&'static Kernels> = OnceLock::new();
        BEST.get_or_init(|| {
            let forced = std::env::var("TINYLLM_ISA")
                .ok()
                .and_then(|n| Isa::from_name(&n));
            forced
                .and_then(Kernels::for_isa)
                .or_else(|| Isa::ALL.into_iter().rev().find_map(Kernels::for_isa))
                .expect("the portable tier is always available")
        })
    }

    /// The tier of this table.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// `out[t * ldo + r] = sum_j w[r * k + j] * x[t * ldx + j]` for
    /// `r < w.len() / k` and `t < n_tok`.
    ///
    /// # Safety
    ///
    /// `out` must be valid for writes at every `t * ldo + r` above, and no
    /// other thread may access those elements during the call.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn matmul_f32_into(
        &self,
        w: &[f32],
        k: usize,
        x: &[f32],
        ldx: usize,
        n_tok: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        let rows = w.len() / k;
        assert!(w.len() == rows * k && ldx >= k && ldo >= rows);
        assert!(n_tok == 0 || x.len() >= (n_tok - 1) * ldx + k);
        // SAFETY: `w` and `x` extents checked above; `out` is the caller's.
        unsafe { (self.matmul_f32)(w.as_ptr(), rows, k, x.as_ptr(), ldx, n_tok, out, ldo) }
    }

    /// `out (n_tok, rows) = x (n_tok, k) @ w (rows, k)^T`, all contiguous.
    pub fn matmul_f32(&self, w: &[f32], k: usize, x: &[f32], n_tok: usize, out: &mut [f32]) {
        let rows = w.len() / k;
        assert_eq!(x.len(), n_tok * k);
        assert_eq!(out.len(), n_tok * rows);
        // SAFETY: `out` holds exactly `n_tok * rows` elements and is borrowed mutably.
        unsafe { self.matmul_f32_into(w, k, x, k, n_tok, out.as_mut_ptr(), rows) }
    }

    /// The group-quantized product: `out[t * ldo + r] = sum_g
    /// dot(wq[r, g], xq[t, g]) * ws[r, g] * xs[t, g]` over the `k / gs`
    /// groups of row `r`, for `r < wq.len() / k` and `t < n_tok`.
    ///
    /// # Safety
    ///
    /// As for [`Kernels::matmul_f32_into`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn matmul_q8_into(
        &self,
        wq: &[i8],
        ws: &[f32],
        k: usize,
        gs: usize,
        xq: &[i8],
        xs: &[f32],
        n_tok: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        let rows = wq.len() / k;
        assert!(gs > 0 && k.is_multiple_of(gs) && wq.len() == rows * k && ldo >= rows);
        assert!(ws.len() == rows * (k / gs));
        assert!(xq.len() >= n_tok * k && xs.len() >= n_tok * (k / gs));
        // SAFETY: input extents checked above; `out` is the caller's.
        unsafe {
            (self.matmul_q8)(
                wq.as_ptr(),
                ws.as_ptr(),
                rows,
                k,
                gs,
                xq.as_ptr(),
                xs.as_ptr(),
                n_tok,
                out,
                ldo,
            )
        }
    }

    /// Quantizes `x` in groups of `gs` into int8 values `q` and scales `s`.
    pub fn quantize_q8(&self, x: &[f32], gs: usize, q: &mut [i8], s: &mut [f32]) {
        assert!(gs > 0 && x.len().is_multiple_of(gs));
        assert!(q.len() == x.len() && s.len() == x.len() / gs);
        // SAFETY: extents checked above.
        unsafe { (self.quantize_q8)(x.as_ptr(), x.len(), gs, q.as_mut_ptr(), s.as_mut_ptr()) }
    }

    /// Attention of one query head over the first `n_pos` positions of one
    /// KV head: position `p`'s key is `keys[p * stride..][..q.len()]`, its
    /// value likewise in `values`. `scores` is scratch of at least `n_pos`.
    #[allow(clippy::too_many_arguments)]
    pub fn attend(
        &self,
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        stride: usize,
        n_pos: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let hd = q.len();
        assert!(n_pos >= 1 && out.len() == hd && scores.len() >= n_pos && stride >= hd);
        let need = (n_pos - 1) * stride + hd;
        assert!(keys.len() >= need && values.len() >= need);
        // SAFETY: extents checked above.
        unsafe {
            (self.attend)(
                q.as_ptr(),
                hd,
                keys.as_ptr(),
                values.as_ptr(),
                stride,
                n_pos,
                scale,
                scores.as_mut_ptr(),
                out.as_mut_ptr(),
            )
        }
    }

    /// `out = w * x / sqrt(mean(x^2) + eps)`.
    pub fn rmsnorm(&self, x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
        assert!(x.len() == w.len() && x.len() == out.len());
        // SAFETY: extents checked above.
        unsafe { (self.rmsnorm)(x.as_ptr(), w.as_ptr(), x.len(), eps, out.as_mut_ptr()) }
    }

    /// `a = silu(a) * b`, element-wise.
    pub fn silu_mul(&self, a: &mut [f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        // SAFETY: extents checked above.
        unsafe { (self.silu_mul)(a.as_mut_ptr(), b.as_ptr(), a.len()) }
    }

    /// Softmax in place (an empty slice is left alone).
    pub fn softmax(&self, x: &mut [f32]) {
        if !x.is_empty() {
            // SAFETY: `x` is a valid, non-empty slice.
            unsafe { (self.softmax)(x.as_mut_ptr(), x.len()) }
        }
    }
}
