//! The vector operations the kernels are written against, one implementation
//! per instruction set.
//!
//! Each kernel in this crate is written once, generically over [`Simd`], and
//! compiled once per instruction set inside a function that enables that
//! set's target features (see `kernels::isa`). Every method here is
//! `#[inline(always)]`, so after inlining the intrinsics sit in a function
//! compiled for their instruction set and become single instructions.
//!
//! Each method is one intrinsic whose only requirement is the trait's safety
//! contract (the CPU has the instruction set; pointers cover `LANES` floats),
//! so the module allows unsafe operations in its unsafe functions.

#![allow(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

/// A vector of `LANES` f32 values and the operations the kernels need.
///
/// # Safety
///
/// The methods are `unsafe` because they are only sound where the CPU
/// supports the implementing instruction set, and because `load`/`store`
/// read or write `LANES` floats through a raw pointer.
pub(crate) trait Simd: Copy {
    /// How many f32 values one vector holds.
    const LANES: usize;
    /// The vector type.
    type F: Copy;

    unsafe fn zero() -> Self::F;
    unsafe fn splat(x: f32) -> Self::F;
    /// Loads `LANES` floats from `p` (no alignment needed).
    unsafe fn load(p: *const f32) -> Self::F;
    /// Stores `LANES` floats to `p` (no alignment needed).
    unsafe fn store(p: *mut f32, v: Self::F);
    unsafe fn mul(a: Self::F, b: Self::F) -> Self::F;
    /// `a * b + c`, fused where the instruction set has it.
    unsafe fn mul_add(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    unsafe fn max(a: Self::F, b: Self::F) -> Self::F;
    /// The sum of the lanes.
    unsafe fn sum(v: Self::F) -> f32;
    /// The largest lane.
    unsafe fn max_lane(v: Self::F) -> f32;
}

// ---------------------------------------------------------------------------
// Portable: eight lanes in a plain array. LLVM turns the lane loops into the
// baseline vector instructions of the target (SSE2 on x86-64, NEON on
// aarch64); the multiply and add stay separate operations.
// ---------------------------------------------------------------------------

/// The portable instruction set: plain Rust, vectorised by the compiler.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Portable;

const PL: usize = 8;

impl Simd for Portable {
    const LANES: usize = PL;
    type F = [f32; PL];

    #[inline(always)]
    unsafe fn zero() -> Self::F {
        [0.0; PL]
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self::F {
        [x; PL]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::F {
        // SAFETY: the caller guarantees `PL` readable floats at `p`.
        unsafe { p.cast::<[f32; PL]>().read_unaligned() }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::F) {
        // SAFETY: the caller guarantees `PL` writable floats at `p`.
        unsafe { p.cast::<[f32; PL]>().write_unaligned(v) }
    }
    #[inline(always)]
    unsafe fn mul(a: Self::F, b: Self::F) -> Self::F {
        std::array::from_fn(|i| a[i] * b[i])
    }
    #[inline(always)]
    unsafe fn mul_add(a: Self::F, b: Self::F, c: Self::F) -> Self::F {
        std::array::from_fn(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    unsafe fn max(a: Self::F, b: Self::F) -> Self::F {
        std::array::from_fn(|i| if a[i] > b[i] { a[i] } else { b[i] })
    }
    #[inline(always)]
    unsafe fn sum(v: Self::F) -> f32 {
        let h: [f32; 4] = std::array::from_fn(|i| v[i] + v[i + 4]);
        (h[0] + h[2]) + (h[1] + h[3])
    }
    #[inline(always)]
    unsafe fn max_lane(v: Self::F) -> f32 {
        v.into_iter().fold(f32::NEG_INFINITY, f32::max)
    }
}

// ---------------------------------------------------------------------------
// x86-64: AVX2 with FMA (8 lanes) and AVX-512F (16 lanes).
// ---------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Simd;
    use std::arch::x86_64::*;

    /// AVX2 + FMA.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Avx2;

    impl Simd for Avx2 {
        const LANES: usize = 8;
        type F = __m256;

        #[inline(always)]
        unsafe fn zero() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            // SAFETY: the caller guarantees 8 readable floats at `p`.
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            // SAFETY: the caller guarantees 8 writable floats at `p`.
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            _mm256_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul_add(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            _mm256_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn sum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
            _mm_cvtss_f32(s)
        }
        #[inline(always)]
        unsafe fn max_lane(v: __m256) -> f32 {
            let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_max_ss(s, _mm_shuffle_ps::<0b01>(s, s));
            _mm_cvtss_f32(s)
        }
    }

    /// AVX-512 Foundation.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Avx512;

    impl Simd for Avx512 {
        const LANES: usize = 16;
        type F = __m512;

        #[inline(always)]
        unsafe fn zero() -> __m512 {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            // SAFETY: the caller guarantees 16 readable floats at `p`.
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            // SAFETY: the caller guarantees 16 writable floats at `p`.
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            _mm512_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul_add(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            _mm512_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn sum(v: __m512) -> f32 {
            _mm512_reduce_add_ps(v)
        }
        #[inline(always)]
        unsafe fn max_lane(v: __m512) -> f32 {
            _mm512_reduce_max_ps(v)
        }
    }
}

// ---------------------------------------------------------------------------
// aarch64: NEON (4 lanes), part of the baseline of every aarch64 target.
// ---------------------------------------------------------------------------

#[cfg(target_arch = "aarch64")]
pub(crate) use arm::Neon;

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::Simd;
    use std::arch::aarch64::*;

    /// NEON (Advanced SIMD).
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Neon;

    impl Simd for Neon {
        const LANES: usize = 4;
        type F = float32x4_t;

        #[inline(always)]
        unsafe fn zero() -> float32x4_t {
            vdupq_n_f32(0.0)
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> float32x4_t {
            vdupq_n_f32(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> float32x4_t {
            // SAFETY: the caller guarantees 4 readable floats at `p`.
            unsafe { vld1q_f32(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: float32x4_t) {
            // SAFETY: the caller guarantees 4 writable floats at `p`.
            unsafe { vst1q_f32(p, v) }
        }
        #[inline(always)]
        unsafe fn mul(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vmulq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn mul_add(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
            vfmaq_f32(c, a, b)
        }
        #[inline(always)]
        unsafe fn max(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vmaxq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn sum(v: float32x4_t) -> f32 {
            vaddvq_f32(v)
        }
        #[inline(always)]
        unsafe fn max_lane(v: float32x4_t) -> f32 {
            vmaxvq_f32(v)
        }
    }
}
