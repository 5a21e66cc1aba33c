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

use crate::quant::{
    BlockQ3K, BlockQ4_0, BlockQ4_0x4, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K,
    BlockQ6K, BlockQ8_0, BlockQ8_0x4, BlockQ8Act, QK, QK_K,
};
use half::{bf16, f16};
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
    /// aarch64 NEON with the dot-product instructions (`sdot`).
    NeonDot,
}

impl Isa {
    /// Every tier, slowest first.
    pub const ALL: [Isa; 5] = [
        Isa::Portable,
        Isa::Avx2,
        Isa::Avx512,
        Isa::Neon,
        Isa::NeonDot,
    ];

    /// The name used in `TINYLLM_ISA` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
            Isa::NeonDot => "neon-dotprod",
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
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => true,
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDot => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

type MatmulFloat<W> =
    unsafe fn(*const W, usize, usize, usize, *const f32, usize, usize, *mut f32, usize);
type MatmulQuant<W> =
    unsafe fn(*const W, usize, usize, *const BlockQ8Act, usize, usize, *mut f32, usize);
type QuantizeAct = unsafe fn(*const f32, usize, *mut BlockQ8Act);
type MatmulQuant4<W> =
    unsafe fn(*const W, usize, usize, *const BlockQ8Act, usize, usize, *mut f32, usize);
type MatmulQ8g = unsafe fn(
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
type QuantizeQ8g = unsafe fn(*const f32, usize, usize, *mut i8, *mut f32);
type AttnPv<W> = unsafe fn(*const f32, usize, usize, usize, *const W, usize, usize, *mut f32, bool);
type RmsNorm = unsafe fn(*const f32, *const f32, usize, f32, *mut f32);
type SiluMul = unsafe fn(*mut f32, *const f32, usize);
type Softmax = unsafe fn(*mut f32, usize);

/// The kernels of one tier, as function pointers: a product per weight
/// type (which one a type takes is in `weights::WeightType`), the
/// quantizers of the activations, and the element-wise steps.
///
/// The safe methods check every extent before calling the kernel; the
/// `_into` variants take a raw output pointer so that several threads can
/// fill disjoint columns of one output matrix.
#[derive(Debug)]
pub struct Kernels {
    isa: Isa,
    matmul_f32: MatmulFloat<f32>,
    matmul_f16: MatmulFloat<f16>,
    matmul_bf16: MatmulFloat<bf16>,
    matmul_q8_0: MatmulQuant<BlockQ8_0>,
    matmul_q4_0: MatmulQuant<BlockQ4_0>,
    matmul_q4_1: MatmulQuant<BlockQ4_1>,
    matmul_q5_0: MatmulQuant<BlockQ5_0>,
    matmul_q5_1: MatmulQuant<BlockQ5_1>,
    matmul_q4_0x4: MatmulQuant4<BlockQ4_0x4>,
    matmul_q8_0x4: MatmulQuant4<BlockQ8_0x4>,
    matmul_q4k: MatmulQuant<BlockQ4K>,
    matmul_q6k: MatmulQuant<BlockQ6K>,
    matmul_q5k: MatmulQuant<BlockQ5K>,
    matmul_q3k: MatmulQuant<BlockQ3K>,
    quantize_act: QuantizeAct,
    matmul_q8g: MatmulQ8g,
    quantize_q8g: QuantizeQ8g,
    attn_pv: AttnPv<f32>,
    attn_pv_f16: AttnPv<f16>,
    rmsnorm: RmsNorm,
    silu_mul: SiluMul,
    gelu_tanh_mul: SiluMul,
    softmax: Softmax,
}

/// Defines a module holding one tier's kernel table: the generic kernels
/// instantiated for `$simd`, inside functions compiled with `$attr`, with
/// register tiles of `$r` weight rows by `$c` tokens (`$c4` tokens for the
/// interleaved types; `$fr` by `$fc` for float weights, where converting a
/// weight vector costs an instruction that more tokens share), and float
/// panels of `$pv` vectors of rows by `$pc` tokens for `$pc` tokens or more
/// (see `generic::matmul_float_panel`).
macro_rules! tier {
    ($module:ident, $isa:expr, $simd:ty, tile = ($r:literal, $c:literal, $c4:literal), ftile = ($fr:literal, $fc:literal), ptile = ($pv:literal, $pc:literal), $(#[$attr:meta])*) => {
        mod $module {
            #![allow(clippy::too_many_arguments)]
            use super::generic;
            use super::Isa;
            use crate::quant::{
                BlockQ3K, BlockQ4_0, BlockQ4_0x4, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1,
                BlockQ5K, BlockQ6K, BlockQ8_0, BlockQ8_0x4, BlockQ8Act,
            };
            use half::{bf16, f16};
            #[allow(unused_imports)]
            use super::simd::*;

            $(#[$attr])*
            unsafe fn matmul_float<W: generic::FloatWeight>(
                w: *const W, ldw: usize, rows: usize, k: usize, x: *const f32, ldx: usize,
                n_tok: usize, out: *mut f32, ldo: usize,
            ) {
                // SAFETY: forwarded contract (see `generic::matmul_float`).
                unsafe { generic::matmul_float::<$simd, W, $fr, $fc, $pv, $pc>(w, ldw, rows, k, x, ldx, n_tok, out, ldo) }
            }
            $(#[$attr])*
            unsafe fn matmul_quant<W: generic::QuantWeight>(
                w: *const W, rows: usize, nb: usize, x: *const BlockQ8Act, ldx: usize,
                n_tok: usize, out: *mut f32, ldo: usize,
            ) {
                // SAFETY: forwarded contract (see `generic::matmul_quant`).
                unsafe { generic::matmul_quant::<$simd, W, $r, $c>(w, rows, nb, x, ldx, n_tok, out, ldo) }
            }
            $(#[$attr])*
            unsafe fn matmul_quant4<W: generic::QuantWeight4>(
                w: *const W, groups: usize, nb: usize, x: *const BlockQ8Act, ldx: usize,
                n_tok: usize, out: *mut f32, ldo: usize,
            ) {
                // SAFETY: forwarded contract (see `generic::matmul_quant4`).
                unsafe { generic::matmul_quant4::<$simd, W, $c4>(w, groups, nb, x, ldx, n_tok, out, ldo) }
            }
            $(#[$attr])*
            unsafe fn matmul_kquant<W: generic::KQuantWeight>(
                w: *const W, rows: usize, nsb: usize, x: *const BlockQ8Act, ldx: usize,
                n_tok: usize, out: *mut f32, ldo: usize,
            ) {
                // SAFETY: forwarded contract (see `generic::matmul_kquant`).
                unsafe { generic::matmul_kquant::<$simd, W, $r, $c>(w, rows, nsb, x, ldx, n_tok, out, ldo) }
            }
            $(#[$attr])*
            unsafe fn quantize_act(x: *const f32, nb: usize, out: *mut BlockQ8Act) {
                // SAFETY: forwarded contract (see `generic::quantize_act`).
                unsafe { generic::quantize_act::<$simd>(x, nb, out) }
            }
            $(#[$attr])*
            unsafe fn matmul_q8g(
                wq: *const i8, ws: *const f32, rows: usize, k: usize, gs: usize,
                xq: *const i8, xs: *const f32, n_tok: usize, out: *mut f32, ldo: usize,
            ) {
                // SAFETY: forwarded contract (see `generic::matmul_q8g`).
                unsafe { generic::matmul_q8g(wq, ws, rows, k, gs, xq, xs, n_tok, out, ldo) }
            }
            $(#[$attr])*
            unsafe fn quantize_q8g(x: *const f32, n: usize, gs: usize, q: *mut i8, s: *mut f32) {
                // SAFETY: forwarded contract (see `generic::quantize_q8g`).
                unsafe { generic::quantize_q8g(x, n, gs, q, s) }
            }
            $(#[$attr])*
            unsafe fn attn_pv<W: generic::FloatWeight>(
                prob: *const f32, ldp: usize, rows: usize, n_pos: usize, v: *const W,
                ldv: usize, hd: usize, out: *mut f32, acc: bool,
            ) {
                // SAFETY: forwarded contract (see `generic::attn_pv`).
                unsafe { generic::attn_pv::<$simd, W, $c>(prob, ldp, rows, n_pos, v, ldv, hd, out, acc) }
            }
            $(#[$attr])*
            unsafe fn rmsnorm(x: *const f32, w: *const f32, n: usize, eps: f32, out: *mut f32) {
                // SAFETY: forwarded contract (see `generic::rmsnorm`).
                unsafe { generic::rmsnorm::<$simd>(x, w, n, eps, out) }
            }
            $(#[$attr])*
            unsafe fn silu_mul(a: *mut f32, b: *const f32, n: usize) {
                // SAFETY: forwarded contract (see `generic::silu_mul`).
                unsafe { generic::silu_mul::<$simd>(a, b, n) }
            }
            $(#[$attr])*
            unsafe fn gelu_tanh_mul(a: *mut f32, b: *const f32, n: usize) {
                // SAFETY: forwarded contract (see `generic::gelu_tanh_mul`).
                unsafe { generic::gelu_tanh_mul::<$simd>(a, b, n) }
            }
            $(#[$attr])*
            unsafe fn softmax(x: *mut f32, n: usize) {
                // SAFETY: forwarded contract (see `generic::softmax`).
                unsafe { generic::softmax::<$simd>(x, n) }
            }

            pub(super) static KERNELS: super::Kernels = super::Kernels {
                isa: $isa,
                matmul_f32: matmul_float::<f32>,
                matmul_f16: matmul_float::<f16>,
                matmul_bf16: matmul_float::<bf16>,
                matmul_q8_0: matmul_quant::<BlockQ8_0>,
                matmul_q4_0: matmul_quant::<BlockQ4_0>,
                matmul_q4_1: matmul_quant::<BlockQ4_1>,
                matmul_q5_0: matmul_quant::<BlockQ5_0>,
                matmul_q5_1: matmul_quant::<BlockQ5_1>,
                matmul_q4_0x4: matmul_quant4::<BlockQ4_0x4>,
                matmul_q8_0x4: matmul_quant4::<BlockQ8_0x4>,
                matmul_q4k: matmul_kquant::<BlockQ4K>,
                matmul_q6k: matmul_kquant::<BlockQ6K>,
                matmul_q5k: matmul_kquant::<BlockQ5K>,
                matmul_q3k: matmul_kquant::<BlockQ3K>,
                quantize_act,
                matmul_q8g,
                quantize_q8g,
                attn_pv: attn_pv::<f32>,
                attn_pv_f16: attn_pv::<f16>,
                rmsnorm,
                silu_mul,
                gelu_tanh_mul,
                softmax,
            };
        }
    };
}

tier!(
    portable,
    Isa::Portable,
    Portable,
    tile = (2, 2, 2),
    ftile = (2, 2),
    ptile = (2, 4),
);
#[cfg(target_arch = "x86_64")]
tier!(avx2, Isa::Avx2, Avx2, tile = (3, 3, 2), ftile = (3, 3), ptile = (2, 6), #[target_feature(enable = "avx2,fma,f16c")]);
#[cfg(target_arch = "x86_64")]
tier!(
    avx512,
    Isa::Avx512,
    Avx512,
    tile = (4, 4, 8),
    ftile = (6, 4),
    ptile = (3, 8),
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
);
#[cfg(target_arch = "aarch64")]
tier!(neon, Isa::Neon, Neon, tile = (4, 4, 4), ftile = (4, 4), ptile = (4, 6), #[target_feature(enable = "neon")]);
#[cfg(target_arch = "aarch64")]
tier!(neon_dot, Isa::NeonDot, NeonDot, tile = (4, 4, 4), ftile = (4, 4), ptile = (4, 6), #[target_feature(enable = "neon,dotprod")]);

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
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDot => Some(&neon_dot::KERNELS),
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
        let rows = check_float(w.len(), k, x.len(), ldx, n_tok, ldo);
        // SAFETY: `w` and `x` extents checked; `out` is the caller's.
        unsafe { (self.matmul_f32)(w.as_ptr(), k, rows, k, x.as_ptr(), ldx, n_tok, out, ldo) }
    }

    /// `out (n_tok, rows) = x (n_tok, k) @ w (rows, k)^T`, all contiguous.
    pub fn matmul_f32(&self, w: &[f32], k: usize, x: &[f32], n_tok: usize, out: &mut [f32]) {
        let rows = w.len() / k;
        assert_eq!(x.len(), n_tok * k);
        assert_eq!(out.len(), n_tok * rows);
        // SAFETY: `out` holds exactly `n_tok * rows` elements and is borrowed mutably.
        unsafe { self.matmul_f32_into(w, k, x, k, n_tok, out.as_mut_ptr(), rows) }
    }

    /// Like [`Kernels::matmul_f32_into`], for f16 weights.
    ///
    /// # Safety
    ///
    /// As for [`Kernels::matmul_f32_into`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn matmul_f16_into(
        &self,
        w: &[f16],
        k: usize,
        x: &[f32],
        ldx: usize,
        n_tok: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        let rows = check_float(w.len(), k, x.len(), ldx, n_tok, ldo);
        // SAFETY: input extents checked; `out` is the caller's.
        unsafe { (self.matmul_f16)(w.as_ptr(), k, rows, k, x.as_ptr(), ldx, n_tok, out, ldo) }
    }

    /// Like [`Kernels::matmul_f32_into`], for bf16 weights.
    ///
    /// # Safety
    ///
    /// As for [`Kernels::matmul_f32_into`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn matmul_bf16_into(
        &self,
        w: &[bf16],
        k: usize,
        x: &[f32],
        ldx: usize,
        n_tok: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        let rows = check_float(w.len(), k, x.len(), ldx, n_tok, ldo);
        // SAFETY: input extents checked; `out` is the caller's.
        unsafe { (self.matmul_bf16)(w.as_ptr(), k, rows, k, x.as_ptr(), ldx, n_tok, out, ldo) }
    }

    /// `out[t * ldo + r] = w[r] . x[t]` for quantized weights: `w` holds rows
    /// of `nb` blocks, `x` holds `n_tok` rows of `nb` activation blocks
    /// (see [`Kernels::quantize_act`]).
    ///
    /// # Safety
    ///
    /// As for [`Kernels::matmul_f32_into`].
    pub unsafe fn matmul_quant_into<W: QuantBlocks>(
        &self,
        w: &[W],
        nb: usize,
        x: &[BlockQ8Act],
        n_tok: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        let rows = w.len() / nb;
        assert!(nb > 0 && w.len() == rows * nb && ldo >= rows && x.len() >= n_tok * nb);
        // SAFETY: input extents checked above; `out` is the caller's.
        unsafe { (W::kernel(self))(w.as_ptr(), rows, nb, x.as_ptr(), nb, n_tok, out, ldo) }
    }

    /// `out[t * ldo + r] = w[r] . x[t]` for weights in interleaved groups of
    /// four rows: `w` holds `rows / 4` rows of `nb` groups.
    ///
    /// # Safety
    ///
    /// As for [`Kernels::matmul_f32_into`].
    pub unsafe fn matmul_quant4_into<W: QuantGroups>(
        &self,
        w: &[W],
        nb: usize,
        x: &[BlockQ8Act],
        n_tok: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        let groups = w.len() / nb;
        assert!(nb > 0 && w.len() == groups * nb && ldo >= 4 * groups && x.len() >= n_tok * nb);
        // SAFETY: input extents checked above; `out` is the caller's.
        unsafe { (W::kernel(self))(w.as_ptr(), groups, nb, x.as_ptr(), nb, n_tok, out, ldo) }
    }

    /// `out[t * ldo + r] = w[r] . x[t]` for k-quant weights: `w` holds rows
    /// of `nsb` super-blocks, `x` holds `n_tok` rows of `8 * nsb` activation
    /// blocks (see [`Kernels::quantize_act`]).
    ///
    /// # Safety
    ///
    /// As for [`Kernels::matmul_f32_into`].
    pub unsafe fn matmul_kquant_into<W: KQuantBlocks>(
        &self,
        w: &[W],
        nsb: usize,
        x: &[BlockQ8Act],
        n_tok: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        let rows = w.len() / nsb.max(1);
        let nb = nsb * (QK_K / QK);
        assert!(nsb > 0 && w.len() == rows * nsb && ldo >= rows && x.len() >= n_tok * nb);
        // SAFETY: input extents checked above; `out` is the caller's.
        unsafe { (W::kernel(self))(w.as_ptr(), rows, nsb, x.as_ptr(), nb, n_tok, out, ldo) }
    }

    /// Quantizes `x` (a multiple of 32 long) into activation blocks.
    pub fn quantize_act(&self, x: &[f32], out: &mut [BlockQ8Act]) {
        assert!(x.len() == out.len() * QK);
        // SAFETY: extents checked above.
        unsafe { (self.quantize_act)(x.as_ptr(), out.len(), out.as_mut_ptr()) }
    }

    /// The group-quantized product: `out[t * ldo + r] = sum_g
    /// dot(wq[r, g], xq[t, g]) * ws[r, g] * xs[t, g]` over the `k / gs`
    /// groups of row `r`, for `r < wq.len() / k` and `t < n_tok`.
    ///
    /// # Safety
    ///
    /// As for [`Kernels::matmul_f32_into`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn matmul_q8g_into(
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
            (self.matmul_q8g)(
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
    pub fn quantize_q8g(&self, x: &[f32], gs: usize, q: &mut [i8], s: &mut [f32]) {
        assert!(gs > 0 && x.len().is_multiple_of(gs));
        assert!(q.len() == x.len() && s.len() == x.len() / gs);
        // SAFETY: extents checked above.
        unsafe { (self.quantize_q8g)(x.as_ptr(), x.len(), gs, q.as_mut_ptr(), s.as_mut_ptr()) }
    }

    /// `out[t * ldo + r] = w[r * ldw..][..k] . x[t * ldx..][..k]` for
    /// `r < rows`, `t < n_tok`: the f32 product with weight rows `ldw` apart
    /// (attention's scores against the keys of one head in the cache).
    ///
    /// # Safety
    ///
    /// As for [`Kernels::matmul_f32_into`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn matmul_f32_strided_into(
        &self,
        w: &[f32],
        ldw: usize,
        rows: usize,
        k: usize,
        x: &[f32],
        ldx: usize,
        n_tok: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        assert!(ldw >= k && ldx >= k && ldo >= rows);
        assert!(rows == 0 || w.len() >= (rows - 1) * ldw + k);
        assert!(n_tok == 0 || x.len() >= (n_tok - 1) * ldx + k);
        // SAFETY: input extents checked above; `out` is the caller's.
        unsafe { (self.matmul_f32)(w.as_ptr(), ldw, rows, k, x.as_ptr(), ldx, n_tok, out, ldo) }
    }

    /// `out (rows, hd) = prob (rows, n_pos) @ v (n_pos, hd)`, or `+=` if
    /// `acc`, with `prob` rows `ldp` apart and value rows `ldv` apart (one
    /// head of the cache, f32 or f16): attention's weighted sum of values.
    #[allow(clippy::too_many_arguments)]
    pub fn attn_pv<W: AttnValues>(
        &self,
        prob: &[f32],
        ldp: usize,
        rows: usize,
        n_pos: usize,
        v: &[W],
        ldv: usize,
        hd: usize,
        out: &mut [f32],
        acc: bool,
    ) {
        assert!(ldp >= n_pos && ldv >= hd && out.len() >= rows * hd);
        assert!(rows == 0 || prob.len() >= (rows - 1) * ldp + n_pos);
        assert!(n_pos == 0 || v.len() >= (n_pos - 1) * ldv + hd);
        // SAFETY: extents checked above.
        unsafe {
            (W::kernel(self))(
                prob.as_ptr(),
                ldp,
                rows,
                n_pos,
                v.as_ptr(),
                ldv,
                hd,
                out.as_mut_ptr(),
                acc,
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

    /// `a = gelu(a) * b`, element-wise, GELU by its tanh approximation.
    pub fn gelu_tanh_mul(&self, a: &mut [f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        // SAFETY: extents checked above.
        unsafe { (self.gelu_tanh_mul)(a.as_mut_ptr(), b.as_ptr(), a.len()) }
    }

    /// Softmax in place (an empty slice is left alone).
    pub fn softmax(&self, x: &mut [f32]) {
        if !x.is_empty() {
            // SAFETY: `x` is a valid, non-empty slice.
            unsafe { (self.softmax)(x.as_mut_ptr(), x.len()) }
        }
    }
}

/// The row stride (in floats) for `n`-float activation rows that the float
/// products read fastest when many tokens share a product: at least `n`, a
/// multiple of 16 floats, and an odd multiple of 64 bytes, so that the rows
/// of a register tile fall in different L1 sets.
pub fn padded_ld(n: usize) -> usize {
    let ld = n.next_multiple_of(16);
    if (ld / 16).is_multiple_of(2) {
        ld + 16
    } else {
        ld
    }
}

/// Checks the extents of a float product and returns its number of rows.
fn check_float(
    w_len: usize,
    k: usize,
    x_len: usize,
    ldx: usize,
    n_tok: usize,
    ldo: usize,
) -> usize {
    let rows = w_len / k;
    assert!(w_len == rows * k && ldx >= k && ldo >= rows);
    assert!(n_tok == 0 || x_len >= (n_tok - 1) * ldx + k);
    rows
}

/// The quantized block types, each with its kernel in a table.
pub trait QuantBlocks: crate::quant::Block {
    #[doc(hidden)]
    fn kernel(k: &Kernels) -> MatmulQuant<Self>;
}

/// The value types of the KV cache that attention reads directly, each with
/// its kernel in a table.
pub trait AttnValues: Copy {
    #[doc(hidden)]
    fn kernel(k: &Kernels) -> AttnPv<Self>;
}

impl AttnValues for f32 {
    fn kernel(k: &Kernels) -> AttnPv<Self> {
        k.attn_pv
    }
}

impl AttnValues for f16 {
    fn kernel(k: &Kernels) -> AttnPv<Self> {
        k.attn_pv_f16
    }
}

/// The interleaved group types, each with its kernel in a table.
pub trait QuantGroups: crate::quant::Interleaved {
    #[doc(hidden)]
    fn kernel(k: &Kernels) -> MatmulQuant4<Self>;
}

/// The k-quant super-block types, each with its kernel in a table.
pub trait KQuantBlocks: crate::quant::SuperBlock {
    #[doc(hidden)]
    fn kernel(k: &Kernels) -> MatmulQuant<Self>;
}

/// Which field of a tier's table holds each block type's product (the rest
/// of what describes a weight type is in `weights::WeightType`).
macro_rules! kernel_of {
    ($($family:ident for $t:ty => $field:ident,)*) => {
        $(
            impl $family for $t {
                fn kernel(k: &Kernels) -> MatmulQuant<Self> {
                    k.$field
                }
            }
        )*
    };
}

kernel_of! {
    QuantBlocks for BlockQ8_0 => matmul_q8_0,
    QuantBlocks for BlockQ4_0 => matmul_q4_0,
    QuantBlocks for BlockQ4_1 => matmul_q4_1,
    QuantBlocks for BlockQ5_0 => matmul_q5_0,
    QuantBlocks for BlockQ5_1 => matmul_q5_1,
    QuantGroups for BlockQ4_0x4 => matmul_q4_0x4,
    QuantGroups for BlockQ8_0x4 => matmul_q8_0x4,
    KQuantBlocks for BlockQ4K => matmul_q4k,
    KQuantBlocks for BlockQ6K => matmul_q6k,
    KQuantBlocks for BlockQ5K => matmul_q5k,
    KQuantBlocks for BlockQ3K => matmul_q3k,
}
