//! The vector operations the kernels are written against, one implementation
//! per instruction set.
//!
//! Each kernel in this crate is written once, generically over [`Simd`], and
//! compiled once per instruction set inside a function that enables that
//! set's target features (see `kernels::mod`). Every method here is
//! `#[inline(always)]`, so after inlining the intrinsics sit in a function
//! compiled for their instruction set and become single instructions.
//!
//! Each method is one or a few intrinsics whose only requirement is the
//! trait's safety contract (the CPU has the instruction set; pointers cover
//! what the method reads or writes), so the module allows unsafe operations
//! in its unsafe functions.

#![allow(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use crate::quant::{BlockQ4_0x4, BlockQ8_0x4, BlockQ8Act};

/// Vectors of f32 values, and the integer block operations of the quantized
/// kernels.
///
/// # Safety
///
/// The methods are `unsafe` because they are only sound where the CPU
/// supports the implementing instruction set, and because the loads and
/// stores go through raw pointers that must cover what they touch.
pub(crate) trait Simd: Copy {
    /// How many f32 values one vector holds.
    const LANES: usize;
    /// The vector type.
    type F: Copy;
    /// An accumulator of block products (a few f32 lanes).
    type Acc: Copy;
    /// The 32 bytes of one quantized block, in a register.
    type B32: Copy;
    /// The i32 partial sums of one block's dot product.
    type I: Copy;

    unsafe fn zero() -> Self::F;
    unsafe fn splat(x: f32) -> Self::F;
    /// Loads `LANES` floats from `p` (no alignment needed).
    unsafe fn load(p: *const f32) -> Self::F;
    /// Loads `LANES` IEEE half floats from `p` as f32.
    unsafe fn load_f16(p: *const u16) -> Self::F;
    /// Loads `LANES` bfloat16 values from `p` as f32.
    unsafe fn load_bf16(p: *const u16) -> Self::F;
    /// Stores `LANES` floats to `p` (no alignment needed).
    unsafe fn store(p: *mut f32, v: Self::F);
    unsafe fn mul(a: Self::F, b: Self::F) -> Self::F;
    /// `a * b + c`, fused where the instruction set has it.
    unsafe fn mul_add(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    unsafe fn max(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn min(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn add(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn sub(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn div(a: Self::F, b: Self::F) -> Self::F;
    /// Each lane rounded to the nearest integer (ties to even).
    unsafe fn round(a: Self::F) -> Self::F;
    /// `2^n` for lanes `n` holding integers in `-126..=127`.
    unsafe fn pow2i(n: Self::F) -> Self::F;
    /// The sum of the lanes.
    unsafe fn sum(v: Self::F) -> f32;
    /// The largest lane.
    unsafe fn max_lane(v: Self::F) -> f32;

    /// One IEEE half float as f32.
    unsafe fn f16_to_f32(h: u16) -> f32;

    unsafe fn acc_zero() -> Self::Acc;
    /// The sum of an accumulator's lanes.
    unsafe fn acc_sum(a: Self::Acc) -> f32;
    /// Loads 32 bytes.
    unsafe fn load_b32(p: *const u8) -> Self::B32;
    /// The 32 four-bit values of `qs` (16 bytes: low nibbles are values
    /// 0..16, high nibbles 16..32) as bytes.
    unsafe fn unpack_nibbles(qs: *const u8) -> Self::B32;
    /// `sum_j u[j] * x[j]` for unsigned `u` below 32 (the 4- and 5-bit
    /// types) and signed `x`.
    unsafe fn dot_u4_i8(u: Self::B32, x: Self::B32) -> Self::I;
    /// `sum_j w[j] * x[j]` for signed `w` and `x` (`x` not -128).
    unsafe fn dot_i8_i8(w: Self::B32, x: Self::B32) -> Self::I;
    /// `acc + dot * scale`.
    unsafe fn acc_add(acc: Self::Acc, dot: Self::I, scale: f32) -> Self::Acc;
    /// Asks for the cache line at `p` to be loaded (a hint; never faults).
    unsafe fn prefetch(p: *const u8);

    /// The low nibbles of the 32 bytes at `p`, as bytes (q4_k's even
    /// sub-blocks).
    unsafe fn low_nibbles(p: *const u8) -> Self::B32;
    /// The high nibbles of the 32 bytes at `p`, as bytes (q4_k's odd
    /// sub-blocks).
    unsafe fn high_nibbles(p: *const u8) -> Self::B32;
    /// 32 six-bit values of q6_k, less 32, as signed bytes: value `j` is
    /// `((ql[j] >> nib_shift) & 15 | ((qh[j] >> hi_shift) & 3) << 4) - 32`
    /// (`nib_shift` is 0 or 4, `hi_shift` 0, 2, 4 or 6).
    unsafe fn q6_values(ql: *const u8, qh: *const u8, nib_shift: u32, hi_shift: u32) -> Self::B32;
    /// The 32 five-bit values of a q5_0 or q5_1 block as bytes: the
    /// nibbles of `qs` as [`Simd::unpack_nibbles`] gives them, with bit `j`
    /// of `qh` as bit 4 of value `j`.
    unsafe fn unpack_q5(qs: *const u8, qh: u32) -> Self::B32;
    /// 32 five-bit values of q5_k as bytes: value `j` is
    /// `((ql[j] >> nib_shift) & 15) | ((qh[j] >> bit) & 1) << 4` (`nib_shift`
    /// is 0 or 4, `bit` 0..8).
    unsafe fn q5k_values(ql: *const u8, qh: *const u8, nib_shift: u32, bit: u32) -> Self::B32;
    /// 32 three-bit values of q3_k, less 4, as signed bytes: value `j` is
    /// `(((qs[j] >> shift) & 3) | ((hm[j] >> bit) & 1) << 2) - 4` (`shift` is
    /// 0, 2, 4 or 6, `bit` 0..8).
    unsafe fn q3k_values(qs: *const u8, hm: *const u8, shift: u32, bit: u32) -> Self::B32;
    /// Integer scales of the two halves (16 values each) of a block.
    type H: Copy;
    unsafe fn halves(lo: i8, hi: i8) -> Self::H;
    /// `sum_j w[j] * x[j] * s[j / 16]` for signed `w` with `|w| <= 32` and
    /// signed `x` (not -128) (q6_k's and q3_k's values).
    unsafe fn dot_i8_i8_halves(w: Self::B32, x: Self::B32, s: Self::H) -> Self::I;

    /// A group of four rows' blocks (see `quant::BlockQ4_0x4`), loaded for
    /// [`Simd::dot4`].
    type W4: Copy;
    /// Four rows' running sums.
    type Acc4: Copy;
    unsafe fn acc4_zero() -> Self::Acc4;
    /// The four rows' sums.
    unsafe fn acc4_sums(a: Self::Acc4) -> [f32; 4];
    unsafe fn load_q4_0x4(b: *const BlockQ4_0x4) -> Self::W4;
    unsafe fn load_q8_0x4(b: *const BlockQ8_0x4) -> Self::W4;
    /// `acc[r] + (w[r] . x) * dw[r] * dx` for the four rows `r`.
    unsafe fn dot4(acc: Self::Acc4, w: Self::W4, x: *const BlockQ8Act) -> Self::Acc4;

    /// Transposes a `LANES x LANES` block, `dst[j * ldd + i] =
    /// src[i * lds + j]` (the float panels' packing): element by element
    /// unless a set has a shuffle network for it.
    #[inline(always)]
    unsafe fn transpose(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
        for i in 0..Self::LANES {
            for j in 0..Self::LANES {
                *dst.add(j * ldd + i) = *src.add(i * lds + j);
            }
        }
    }
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
    type Acc = f32;
    type B32 = [i8; 32];
    type I = i32;

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
        p.cast::<[f32; PL]>().read_unaligned()
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> Self::F {
        let h = p.cast::<[u16; PL]>().read_unaligned();
        h.map(|b| half::f16::from_bits(b).to_f32())
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> Self::F {
        let h = p.cast::<[u16; PL]>().read_unaligned();
        h.map(|b| f32::from_bits((b as u32) << 16))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::F) {
        p.cast::<[f32; PL]>().write_unaligned(v)
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
    unsafe fn min(a: Self::F, b: Self::F) -> Self::F {
        std::array::from_fn(|i| if a[i] < b[i] { a[i] } else { b[i] })
    }
    #[inline(always)]
    unsafe fn add(a: Self::F, b: Self::F) -> Self::F {
        std::array::from_fn(|i| a[i] + b[i])
    }
    #[inline(always)]
    unsafe fn sub(a: Self::F, b: Self::F) -> Self::F {
        std::array::from_fn(|i| a[i] - b[i])
    }
    #[inline(always)]
    unsafe fn div(a: Self::F, b: Self::F) -> Self::F {
        std::array::from_fn(|i| a[i] / b[i])
    }
    #[inline(always)]
    unsafe fn round(a: Self::F) -> Self::F {
        a.map(f32::round_ties_even)
    }
    #[inline(always)]
    unsafe fn pow2i(n: Self::F) -> Self::F {
        n.map(|v| f32::from_bits(((v as i32 + 127) as u32) << 23))
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
    #[inline(always)]
    unsafe fn f16_to_f32(h: u16) -> f32 {
        half::f16::from_bits(h).to_f32()
    }
    #[inline(always)]
    unsafe fn acc_zero() -> f32 {
        0.0
    }
    #[inline(always)]
    unsafe fn acc_sum(a: f32) -> f32 {
        a
    }
    #[inline(always)]
    unsafe fn load_b32(p: *const u8) -> [i8; 32] {
        p.cast::<[i8; 32]>().read_unaligned()
    }
    #[inline(always)]
    unsafe fn unpack_nibbles(qs: *const u8) -> [i8; 32] {
        let b = qs.cast::<[u8; 16]>().read_unaligned();
        std::array::from_fn(|j| {
            if j < 16 {
                (b[j] & 15) as i8
            } else {
                (b[j - 16] >> 4) as i8
            }
        })
    }
    #[inline(always)]
    unsafe fn dot_u4_i8(u: [i8; 32], x: [i8; 32]) -> i32 {
        u.iter().zip(&x).map(|(&a, &b)| a as i32 * b as i32).sum()
    }
    #[inline(always)]
    unsafe fn dot_i8_i8(w: [i8; 32], x: [i8; 32]) -> i32 {
        w.iter().zip(&x).map(|(&a, &b)| a as i32 * b as i32).sum()
    }
    #[inline(always)]
    unsafe fn acc_add(acc: f32, dot: i32, scale: f32) -> f32 {
        acc + dot as f32 * scale
    }
    #[inline(always)]
    unsafe fn prefetch(_: *const u8) {}
    #[inline(always)]
    unsafe fn low_nibbles(p: *const u8) -> [i8; 32] {
        p.cast::<[u8; 32]>()
            .read_unaligned()
            .map(|b| (b & 15) as i8)
    }
    #[inline(always)]
    unsafe fn high_nibbles(p: *const u8) -> [i8; 32] {
        p.cast::<[u8; 32]>()
            .read_unaligned()
            .map(|b| (b >> 4) as i8)
    }
    #[inline(always)]
    unsafe fn q6_values(ql: *const u8, qh: *const u8, nib_shift: u32, hi_shift: u32) -> [i8; 32] {
        let (l, h) = (
            ql.cast::<[u8; 32]>().read_unaligned(),
            qh.cast::<[u8; 32]>().read_unaligned(),
        );
        std::array::from_fn(|j| {
            let q = ((l[j] >> nib_shift) & 15) | (((h[j] >> hi_shift) & 3) << 4);
            q as i8 - 32
        })
    }
    #[inline(always)]
    unsafe fn unpack_q5(qs: *const u8, qh: u32) -> [i8; 32] {
        let low = Self::unpack_nibbles(qs);
        std::array::from_fn(|j| low[j] | ((((qh >> j) & 1) as i8) << 4))
    }
    #[inline(always)]
    unsafe fn q5k_values(ql: *const u8, qh: *const u8, nib_shift: u32, bit: u32) -> [i8; 32] {
        let (l, h) = (
            ql.cast::<[u8; 32]>().read_unaligned(),
            qh.cast::<[u8; 32]>().read_unaligned(),
        );
        std::array::from_fn(|j| (((l[j] >> nib_shift) & 15) | (((h[j] >> bit) & 1) << 4)) as i8)
    }
    #[inline(always)]
    unsafe fn q3k_values(qs: *const u8, hm: *const u8, shift: u32, bit: u32) -> [i8; 32] {
        let (l, h) = (
            qs.cast::<[u8; 32]>().read_unaligned(),
            hm.cast::<[u8; 32]>().read_unaligned(),
        );
        std::array::from_fn(|j| {
            let q = ((l[j] >> shift) & 3) | (((h[j] >> bit) & 1) << 2);
            q as i8 - 4
        })
    }
    type H = [i32; 2];
    #[inline(always)]
    unsafe fn halves(lo: i8, hi: i8) -> [i32; 2] {
        [lo as i32, hi as i32]
    }
    #[inline(always)]
    unsafe fn dot_i8_i8_halves(w: [i8; 32], x: [i8; 32], s: [i32; 2]) -> i32 {
        let half = |h: usize| -> i32 {
            (16 * h..16 * h + 16)
                .map(|j| w[j] as i32 * x[j] as i32)
                .sum()
        };
        half(0) * s[0] + half(1) * s[1]
    }

    /// Signed values and scales of the four rows.
    type W4 = ([[i8; 32]; 4], [f32; 4]);
    type Acc4 = [f32; 4];

    #[inline(always)]
    unsafe fn acc4_zero() -> [f32; 4] {
        [0.0; 4]
    }
    #[inline(always)]
    unsafe fn acc4_sums(a: [f32; 4]) -> [f32; 4] {
        a
    }
    #[inline(always)]
    unsafe fn load_q4_0x4(b: *const BlockQ4_0x4) -> Self::W4 {
        let b = &*b;
        let v = std::array::from_fn(|r| {
            let u = Self::unpack_nibbles(b.qs[r].as_ptr());
            u.map(|q| q - 8)
        });
        (v, b.d.map(|d| d.to_f32()))
    }
    #[inline(always)]
    unsafe fn load_q8_0x4(b: *const BlockQ8_0x4) -> Self::W4 {
        let b = &*b;
        let v = std::array::from_fn(|r| std::array::from_fn(|j| b.qs[j / 16][r][j % 16]));
        (v, b.d.map(|d| d.to_f32()))
    }
    #[inline(always)]
    unsafe fn dot4(acc: [f32; 4], w: Self::W4, x: *const BlockQ8Act) -> [f32; 4] {
        let x = &*x;
        std::array::from_fn(|r| {
            let dot: i32 = w.0[r]
                .iter()
                .zip(&x.qs)
                .map(|(&a, &b)| a as i32 * b as i32)
                .sum();
            acc[r] + dot as f32 * (w.1[r] * x.d)
        })
    }
}

// ---------------------------------------------------------------------------
// x86-64: AVX2 with FMA and F16C (8 lanes), AVX-512 with VNNI (16 lanes).
// Quantized blocks are 32 bytes: one ymm register in both.
// ---------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Simd;
    use crate::quant::{BlockQ4_0x4, BlockQ8_0x4, BlockQ8Act};
    use std::arch::x86_64::*;

    /// Four rows' blocks in a zmm pair: values 0..16 of row `r` in 128-bit
    /// lane `r` of `lo`, values 16..32 in `hi`, unsigned (`value + bias`);
    /// the row scales repeated over each lane.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct W4x16 {
        lo: __m512i,
        hi: __m512i,
        scale: __m512,
        /// `bias * scale` in the first lane of each row, zero elsewhere: the
        /// offset's share, `bias * d * sum(x)`, is a float product
        /// against the activations' `s`.
        offset: __m512,
    }

    /// Four rows' blocks as two pairs of rows in ymm registers: signed
    /// values `w`, their magnitudes `a`, `[pair][lo or hi]`.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct W4x8 {
        w: [[__m256i; 2]; 2],
        a: [[__m256i; 2]; 2],
        scale: [__m256; 2],
    }

    #[inline(always)]
    unsafe fn scales4(d: *const half::f16) -> __m128 {
        _mm_cvtph_ps(_mm_loadl_epi64(d.cast()))
    }

    /// AVX2 + FMA + F16C.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Avx2;

    /// AVX-512 (F, BW, VL, VNNI).
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Avx512;

    #[inline(always)]
    unsafe fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    #[inline(always)]
    unsafe fn unpack_nibbles(qs: *const u8) -> __m256i {
        let v = _mm_loadu_si128(qs.cast());
        let mask = _mm_set1_epi8(15);
        let lo = _mm_and_si128(v, mask);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), mask);
        _mm256_set_m128i(hi, lo)
    }

    #[inline(always)]
    unsafe fn f16_to_f32(h: u16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
    }

    /// 32 bytes, 0xFF where bit `j` of `bits` is set and 0 elsewhere (AVX2):
    /// each byte takes the byte of `bits` that holds its bit, then tests it.
    #[inline(always)]
    unsafe fn bits_to_bytes(bits: u32) -> __m256i {
        let which = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        );
        let spread = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), which);
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit)
    }

    /// The 32 bytes at `p`, each shifted right by `n` (0..8) (16-bit shifts:
    /// the bits they carry across bytes land above the bits kept).
    #[inline(always)]
    unsafe fn load_shifted(p: *const u8, n: u32) -> __m256i {
        _mm256_srl_epi16(_mm256_loadu_si256(p.cast()), _mm_cvtsi32_si128(n as i32))
    }

    /// The block operations the two x86 tiers share.
    macro_rules! x86_blocks {
        () => {
            type Acc = __m256;
            type B32 = __m256i;
            type I = __m256i;

            #[inline(always)]
            unsafe fn f16_to_f32(h: u16) -> f32 {
                f16_to_f32(h)
            }
            #[inline(always)]
            unsafe fn acc_zero() -> __m256 {
                _mm256_setzero_ps()
            }
            #[inline(always)]
            unsafe fn acc_sum(a: __m256) -> f32 {
                hsum256(a)
            }
            #[inline(always)]
            unsafe fn load_b32(p: *const u8) -> __m256i {
                _mm256_loadu_si256(p.cast())
            }
            #[inline(always)]
            unsafe fn unpack_nibbles(qs: *const u8) -> __m256i {
                unpack_nibbles(qs)
            }
            #[inline(always)]
            unsafe fn acc_add(acc: __m256, dot: __m256i, scale: f32) -> __m256 {
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(scale), acc)
            }
            #[inline(always)]
            unsafe fn prefetch(p: *const u8) {
                _mm_prefetch::<_MM_HINT_T0>(p.cast())
            }
            #[inline(always)]
            unsafe fn low_nibbles(p: *const u8) -> __m256i {
                _mm256_and_si256(_mm256_loadu_si256(p.cast()), _mm256_set1_epi8(15))
            }
            #[inline(always)]
            unsafe fn high_nibbles(p: *const u8) -> __m256i {
                let v = _mm256_srli_epi16::<4>(_mm256_loadu_si256(p.cast()));
                _mm256_and_si256(v, _mm256_set1_epi8(15))
            }
            #[inline(always)]
            unsafe fn q6_values(
                ql: *const u8,
                qh: *const u8,
                nib_shift: u32,
                hi_shift: u32,
            ) -> __m256i {
                // 16-bit shifts: the bits they carry across bytes are masked off.
                let l = _mm256_srl_epi16(
                    _mm256_loadu_si256(ql.cast()),
                    _mm_cvtsi32_si128(nib_shift as i32),
                );
                let h = _mm256_srl_epi16(
                    _mm256_loadu_si256(qh.cast()),
                    _mm_cvtsi32_si128(hi_shift as i32),
                );
                let v = _mm256_or_si256(
                    _mm256_and_si256(l, _mm256_set1_epi8(15)),
                    _mm256_and_si256(_mm256_slli_epi16::<4>(h), _mm256_set1_epi8(0x30)),
                );
                _mm256_sub_epi8(v, _mm256_set1_epi8(32))
            }
            type H = __m256i;
            #[inline(always)]
            unsafe fn halves(lo: i8, hi: i8) -> __m256i {
                _mm256_set_m128i(_mm_set1_epi16(hi as i16), _mm_set1_epi16(lo as i16))
            }
            #[inline(always)]
            unsafe fn dot_i8_i8_halves(w: __m256i, x: __m256i, s: __m256i) -> __m256i {
                // |w| <= 32: each pair of products fits an i16 (8128), and
                // times a scale (up to 128) an i32.
                let p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
                _mm256_madd_epi16(p, s)
            }
        };
    }

    impl Simd for Avx2 {
        const LANES: usize = 8;
        type F = __m256;
        x86_blocks!();

        #[inline(always)]
        unsafe fn transpose(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
            // Closures would not inherit the target features: plain loops.
            let mut r = [_mm256_setzero_ps(); 8];
            for (i, v) in r.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(src.add(i * lds));
            }
            // Pairs of rows interleaved, then pairs of pairs: each 128-bit
            // half of u[4g + c] is column c (or c + 4) of rows 4g..4g+4.
            let mut t = [_mm256_setzero_ps(); 8];
            for p in 0..4 {
                t[2 * p] = _mm256_unpacklo_ps(r[2 * p], r[2 * p + 1]);
                t[2 * p + 1] = _mm256_unpackhi_ps(r[2 * p], r[2 * p + 1]);
            }
            let mut u = [_mm256_setzero_ps(); 8];
            for g in 0..2 {
                for h in 0..2 {
                    let (a, b) = (t[4 * g + h], t[4 * g + 2 + h]);
                    u[4 * g + 2 * h] = _mm256_shuffle_ps::<0x44>(a, b);
                    u[4 * g + 2 * h + 1] = _mm256_shuffle_ps::<0xee>(a, b);
                }
            }
            for c in 0..4 {
                let (lo, hi) = (u[c], u[4 + c]);
                _mm256_storeu_ps(dst.add(c * ldd), _mm256_permute2f128_ps::<0x20>(lo, hi));
                _mm256_storeu_ps(
                    dst.add((c + 4) * ldd),
                    _mm256_permute2f128_ps::<0x31>(lo, hi),
                );
            }
        }

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
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn load_f16(p: *const u16) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const u16) -> __m256 {
            let w = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w))
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            _mm256_storeu_ps(p, v)
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
        unsafe fn min(a: __m256, b: __m256) -> __m256 {
            _mm256_min_ps(a, b)
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: __m256, b: __m256) -> __m256 {
            _mm256_sub_ps(a, b)
        }
        #[inline(always)]
        unsafe fn div(a: __m256, b: __m256) -> __m256 {
            _mm256_div_ps(a, b)
        }
        #[inline(always)]
        unsafe fn round(a: __m256) -> __m256 {
            _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a)
        }
        #[inline(always)]
        unsafe fn pow2i(n: __m256) -> __m256 {
            let e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e))
        }
        #[inline(always)]
        unsafe fn sum(v: __m256) -> f32 {
            hsum256(v)
        }
        #[inline(always)]
        unsafe fn max_lane(v: __m256) -> f32 {
            let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_max_ss(s, _mm_shuffle_ps::<0b01>(s, s));
            _mm_cvtss_f32(s)
        }
        #[inline(always)]
        unsafe fn dot_u4_i8(u: __m256i, x: __m256i) -> __m256i {
            // u < 32, so the pairwise i16 sums (2 * 31 * 128 at most) cannot
            // saturate.
            _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1))
        }
        #[inline(always)]
        unsafe fn dot_i8_i8(w: __m256i, x: __m256i) -> __m256i {
            // |w| * (x with w's sign): 2 * 128 * 127 fits an i16.
            let p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
            _mm256_madd_epi16(p, _mm256_set1_epi16(1))
        }

        #[inline(always)]
        unsafe fn unpack_q5(qs: *const u8, qh: u32) -> __m256i {
            let high = _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(16));
            _mm256_or_si256(unpack_nibbles(qs), high)
        }
        #[inline(always)]
        unsafe fn q5k_values(ql: *const u8, qh: *const u8, nib_shift: u32, bit: u32) -> __m256i {
            // The wanted bit of qh at bit 0 of its byte, then at bit 4.
            let h = _mm256_slli_epi16::<4>(load_shifted(qh, bit));
            _mm256_or_si256(
                _mm256_and_si256(load_shifted(ql, nib_shift), _mm256_set1_epi8(15)),
                _mm256_and_si256(h, _mm256_set1_epi8(16)),
            )
        }
        #[inline(always)]
        unsafe fn q3k_values(qs: *const u8, hm: *const u8, shift: u32, bit: u32) -> __m256i {
            let h = _mm256_slli_epi16::<2>(load_shifted(hm, bit));
            let v = _mm256_or_si256(
                _mm256_and_si256(load_shifted(qs, shift), _mm256_set1_epi8(3)),
                _mm256_and_si256(h, _mm256_set1_epi8(4)),
            );
            _mm256_sub_epi8(v, _mm256_set1_epi8(4))
        }

        type W4 = W4x8;
        type Acc4 = [__m256; 2];

        #[inline(always)]
        unsafe fn acc4_zero() -> [__m256; 2] {
            [_mm256_setzero_ps(); 2]
        }
        #[inline(always)]
        unsafe fn acc4_sums(a: [__m256; 2]) -> [f32; 4] {
            // Each 128-bit half holds one row's four partial sums.
            let h = _mm256_hadd_ps(a[0], a[1]); // r0 r0 r2 r2 | r1 r1 r3 r3
            let h = _mm256_hadd_ps(h, h); // r0 r2 r0 r2 | r1 r3 r1 r3
            let mut out = [0.0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), h);
            [out[0], out[4], out[1], out[5]]
        }
        // (Closures and `array::map` are avoided in these: they would be
        // compiled without the tier's target features and not inlined.)
        #[inline(always)]
        unsafe fn load_q4_0x4(b: *const BlockQ4_0x4) -> W4x8 {
            let m = _mm256_set1_epi8(15);
            let eight = _mm256_set1_epi8(8);
            let v0 = _mm256_loadu_si256((*b).qs[0].as_ptr().cast());
            let v1 = _mm256_loadu_si256((*b).qs[2].as_ptr().cast());
            let lo0 = _mm256_sub_epi8(_mm256_and_si256(v0, m), eight);
            let hi0 = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16::<4>(v0), m), eight);
            let lo1 = _mm256_sub_epi8(_mm256_and_si256(v1, m), eight);
            let hi1 = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16::<4>(v1), m), eight);
            w4x8([[lo0, hi0], [lo1, hi1]], scales4((*b).d.as_ptr()))
        }
        #[inline(always)]
        unsafe fn load_q8_0x4(b: *const BlockQ8_0x4) -> W4x8 {
            let q = &(*b).qs;
            let lo0 = _mm256_loadu_si256(q[0][0].as_ptr().cast());
            let lo1 = _mm256_loadu_si256(q[0][2].as_ptr().cast());
            let hi0 = _mm256_loadu_si256(q[1][0].as_ptr().cast());
            let hi1 = _mm256_loadu_si256(q[1][2].as_ptr().cast());
            w4x8([[lo0, hi0], [lo1, hi1]], scales4((*b).d.as_ptr()))
        }
        #[inline(always)]
        unsafe fn dot4(acc: [__m256; 2], w: W4x8, x: *const BlockQ8Act) -> [__m256; 2] {
            let q = (*x).qs.as_ptr();
            let xlo = _mm256_broadcastsi128_si256(_mm_loadu_si128(q.cast()));
            let xhi = _mm256_broadcastsi128_si256(_mm_loadu_si128(q.add(16).cast()));
            let dx = _mm256_set1_ps((*x).d);
            [
                pair_dot(acc[0], &w, 0, xlo, xhi, dx),
                pair_dot(acc[1], &w, 1, xlo, xhi, dx),
            ]
        }
    }

    /// The W4x8 of these signed values and row scales.
    #[inline(always)]
    unsafe fn w4x8(w: [[__m256i; 2]; 2], d: __m128) -> W4x8 {
        let abs = |v: __m256i| _mm256_sign_epi8(v, v);
        W4x8 {
            a: [[abs(w[0][0]), abs(w[0][1])], [abs(w[1][0]), abs(w[1][1])]],
            w,
            scale: pair_scales(d),
        }
    }

    /// Rows `2p` and `2p + 1` of a W4x8 against `x`, added to `acc`.
    #[inline(always)]
    unsafe fn pair_dot(
        acc: __m256,
        w: &W4x8,
        p: usize,
        xlo: __m256i,
        xhi: __m256i,
        dx: __m256,
    ) -> __m256 {
        let ones = _mm256_set1_epi16(1);
        let lo = _mm256_maddubs_epi16(w.a[p][0], _mm256_sign_epi8(xlo, w.w[p][0]));
        let hi = _mm256_maddubs_epi16(w.a[p][1], _mm256_sign_epi8(xhi, w.w[p][1]));
        // Widen each half to i32 before adding: two i16 sums could overflow.
        let dot = _mm256_add_epi32(_mm256_madd_epi16(lo, ones), _mm256_madd_epi16(hi, ones));
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(w.scale[p], dx), acc)
    }

    /// Row scales `[d0 d1 d2 d3]` as `[d0 x4 | d1 x4]` and `[d2 x4 | d3 x4]`.
    #[inline(always)]
    unsafe fn pair_scales(d: __m128) -> [__m256; 2] {
        let d = _mm256_castps128_ps256(d);
        [
            _mm256_permutevar8x32_ps(d, _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1)),
            _mm256_permutevar8x32_ps(d, _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3)),
        ]
    }

    impl Simd for Avx512 {
        const LANES: usize = 16;
        type F = __m512;
        x86_blocks!();

        #[inline(always)]
        unsafe fn transpose(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
            // Closures would not inherit the target features: plain loops.
            let mut r = [_mm512_setzero_ps(); 16];
            for (i, v) in r.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(src.add(i * lds));
            }
            // Rows interleaved in pairs, then in fours: each 128-bit lane of
            // u[4g + c] is column c, c + 4, c + 8 or c + 12 of rows 4g..4g+4.
            let mut t = [_mm512_setzero_ps(); 16];
            for p in 0..8 {
                t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
                t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
            }
            let mut u = [_mm512_setzero_ps(); 16];
            for g in 0..4 {
                for h in 0..2 {
                    let (a, b) = (t[4 * g + h], t[4 * g + 2 + h]);
                    u[4 * g + 2 * h] = _mm512_shuffle_ps::<0x44>(a, b);
                    u[4 * g + 2 * h + 1] = _mm512_shuffle_ps::<0xee>(a, b);
                }
            }
            // Then the 128-bit lanes: column c's four quarters gathered
            // from the four groups of rows.
            for c in 0..4 {
                let v0 = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
                let v1 = _mm512_shuffle_f32x4::<0xdd>(u[c], u[4 + c]);
                let v2 = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
                let v3 = _mm512_shuffle_f32x4::<0xdd>(u[8 + c], u[12 + c]);
                _mm512_storeu_ps(dst.add(c * ldd), _mm512_shuffle_f32x4::<0x88>(v0, v2));
                _mm512_storeu_ps(dst.add((c + 8) * ldd), _mm512_shuffle_f32x4::<0xdd>(v0, v2));
                _mm512_storeu_ps(dst.add((c + 4) * ldd), _mm512_shuffle_f32x4::<0x88>(v1, v3));
                _mm512_storeu_ps(
                    dst.add((c + 12) * ldd),
                    _mm512_shuffle_f32x4::<0xdd>(v1, v3),
                );
            }
        }

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
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn load_f16(p: *const u16) -> __m512 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const u16) -> __m512 {
            let w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()));
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w))
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            _mm512_storeu_ps(p, v)
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
        unsafe fn min(a: __m512, b: __m512) -> __m512 {
            _mm512_min_ps(a, b)
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: __m512, b: __m512) -> __m512 {
            _mm512_sub_ps(a, b)
        }
        #[inline(always)]
        unsafe fn div(a: __m512, b: __m512) -> __m512 {
            _mm512_div_ps(a, b)
        }
        #[inline(always)]
        unsafe fn round(a: __m512) -> __m512 {
            _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a)
        }
        #[inline(always)]
        unsafe fn pow2i(n: __m512) -> __m512 {
            let e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
            _mm512_castsi512_ps(_mm512_slli_epi32::<23>(e))
        }
        #[inline(always)]
        unsafe fn sum(v: __m512) -> f32 {
            _mm512_reduce_add_ps(v)
        }
        #[inline(always)]
        unsafe fn max_lane(v: __m512) -> f32 {
            _mm512_reduce_max_ps(v)
        }
        #[inline(always)]
        unsafe fn dot_u4_i8(u: __m256i, x: __m256i) -> __m256i {
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, x)
        }
        #[inline(always)]
        unsafe fn dot_i8_i8(w: __m256i, x: __m256i) -> __m256i {
            _mm256_dpbusd_epi32(
                _mm256_setzero_si256(),
                _mm256_sign_epi8(w, w),
                _mm256_sign_epi8(x, w),
            )
        }

        // The 5- and 3-bit values with AVX-512BW's byte masks: a set bit of
        // the mask selects the bytes the fifth (or third) bit changes.
        #[inline(always)]
        unsafe fn unpack_q5(qs: *const u8, qh: u32) -> __m256i {
            let low = unpack_nibbles(qs);
            _mm256_mask_add_epi8(low, qh, low, _mm256_set1_epi8(16))
        }
        #[inline(always)]
        unsafe fn q5k_values(ql: *const u8, qh: *const u8, nib_shift: u32, bit: u32) -> __m256i {
            let low = _mm256_and_si256(load_shifted(ql, nib_shift), _mm256_set1_epi8(15));
            let bit = _mm256_set1_epi8((1u8 << bit) as i8);
            let high = _mm256_test_epi8_mask(_mm256_loadu_si256(qh.cast()), bit);
            _mm256_mask_add_epi8(low, high, low, _mm256_set1_epi8(16))
        }
        #[inline(always)]
        unsafe fn q3k_values(qs: *const u8, hm: *const u8, shift: u32, bit: u32) -> __m256i {
            // q - 4 where the high bit is clear, q where it is set.
            let low = _mm256_and_si256(load_shifted(qs, shift), _mm256_set1_epi8(3));
            let bit = _mm256_set1_epi8((1u8 << bit) as i8);
            let clear = _mm256_testn_epi8_mask(_mm256_loadu_si256(hm.cast()), bit);
            _mm256_mask_sub_epi8(low, clear, low, _mm256_set1_epi8(4))
        }

        type W4 = W4x16;
        /// The products, and the offsets apart (two accumulators, so that
        /// one token's chain of dependent additions stays one deep).
        type Acc4 = [__m512; 2];

        #[inline(always)]
        unsafe fn acc4_zero() -> [__m512; 2] {
            [_mm512_setzero_ps(); 2]
        }
        #[inline(always)]
        unsafe fn acc4_sums(a: [__m512; 2]) -> [f32; 4] {
            // Sum the four lanes of each 128-bit lane (one row each).
            let a = _mm512_add_ps(a[0], a[1]);
            let t = _mm512_add_ps(a, _mm512_shuffle_ps::<0b10_11_00_01>(a, a));
            let t = _mm512_add_ps(t, _mm512_shuffle_ps::<0b01_00_11_10>(t, t));
            let mut out = [0.0f32; 16];
            _mm512_storeu_ps(out.as_mut_ptr(), t);
            [out[0], out[4], out[8], out[12]]
        }
        #[inline(always)]
        unsafe fn load_q4_0x4(b: *const BlockQ4_0x4) -> W4x16 {
            let v = _mm512_loadu_si512((*b).qs.as_ptr().cast());
            let m = _mm512_set1_epi8(15);
            let scale = lane_scales(scales4((*b).d.as_ptr()));
            W4x16 {
                lo: _mm512_and_si512(v, m),
                hi: _mm512_and_si512(_mm512_srli_epi16::<4>(v), m),
                scale,
                offset: row_offsets(scale, -8.0),
            }
        }
        #[inline(always)]
        unsafe fn load_q8_0x4(b: *const BlockQ8_0x4) -> W4x16 {
            // w + 128 as unsigned bytes, for vpdpbusd; the offset takes 128 back.
            let flip = _mm512_set1_epi8(-128);
            let scale = lane_scales(scales4((*b).d.as_ptr()));
            W4x16 {
                lo: _mm512_xor_si512(_mm512_loadu_si512((*b).qs[0].as_ptr().cast()), flip),
                hi: _mm512_xor_si512(_mm512_loadu_si512((*b).qs[1].as_ptr().cast()), flip),
                scale,
                offset: row_offsets(scale, -128.0),
            }
        }
        #[inline(always)]
        unsafe fn dot4(acc: [__m512; 2], w: W4x16, x: *const BlockQ8Act) -> [__m512; 2] {
            let q = (*x).qs.as_ptr();
            let xlo = _mm512_broadcast_i32x4(_mm_loadu_si128(q.cast()));
            let xhi = _mm512_broadcast_i32x4(_mm_loadu_si128(q.add(16).cast()));
            // sum((u + bias) x) d_w d_x = sum(u x) d_w d_x + bias d_w s_x.
            let zero = _mm512_setzero_si512();
            let dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, w.lo, xlo), w.hi, xhi);
            let scale = _mm512_mul_ps(w.scale, _mm512_set1_ps((*x).d));
            [
                _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[0]),
                _mm512_fmadd_ps(w.offset, _mm512_set1_ps((*x).s), acc[1]),
            ]
        }
    }

    /// `bias * scale` in the first lane of each row's four, zero in the rest.
    #[inline(always)]
    unsafe fn row_offsets(scale: __m512, bias: f32) -> __m512 {
        _mm512_maskz_mul_ps(0x1111, scale, _mm512_set1_ps(bias))
    }

    /// Row scales `[d0 d1 d2 d3]` repeated over the four 128-bit lanes.
    #[inline(always)]
    unsafe fn lane_scales(d: __m128) -> __m512 {
        let idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(d))
    }
}

// ---------------------------------------------------------------------------
// aarch64: NEON (4 lanes), part of the baseline of every aarch64 target, and
// the same with the dot-product instructions (`sdot`), which Rust offers as
// a target feature but not yet as an intrinsic, so it is written in `asm!`.
// ---------------------------------------------------------------------------

#[cfg(target_arch = "aarch64")]
pub(crate) use arm::{Neon, NeonDot};

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::Simd;
    use crate::quant::{BlockQ4_0x4, BlockQ8_0x4, BlockQ8Act};
    use std::arch::aarch64::*;

    /// Four rows' blocks: signed values `[row][lo or hi]` and row scales.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct W4Neon {
        w: [[int8x16_t; 2]; 4],
        scale: float32x4_t,
    }

    /// `acc + [sum(d0) sum(d1) sum(d2) sum(d3)] * scale`.
    #[inline(always)]
    unsafe fn add_rows(acc: float32x4_t, d: [int32x4_t; 4], scale: float32x4_t) -> float32x4_t {
        let s = vpaddq_s32(vpaddq_s32(d[0], d[1]), vpaddq_s32(d[2], d[3]));
        vfmaq_f32(acc, vcvtq_f32_s32(s), scale)
    }

    /// NEON (Advanced SIMD).
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Neon;

    /// NEON with the dot-product extension.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct NeonDot;

    /// Four f16 values (in a 64-bit register) widened to f32.
    #[inline(always)]
    unsafe fn f16x4_to_f32(h: uint16x4_t) -> float32x4_t {
        let out: float32x4_t;
        core::arch::asm!(
            "fcvtl {out:v}.4s, {h:v}.4h",
            out = lateout(vreg) out,
            h = in(vreg) h,
            options(pure, nomem, nostack)
        );
        out
    }

    /// `sum_j a[j] * b[j]` over 16 signed bytes, as 4 i32 lanes, without
    /// the dot-product instructions.
    #[inline(always)]
    unsafe fn dot16_widening(a: int8x16_t, b: int8x16_t) -> int32x4_t {
        let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
        let hi = vmull_high_s8(a, b);
        vpadalq_s16(vpaddlq_s16(lo), hi)
    }

    /// `acc + sum_j a[j] * b[j]` over 16 signed bytes, with `sdot`.
    #[inline(always)]
    unsafe fn dot16_sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        let mut acc = acc;
        // The directive lets the assembler take `sdot` in any function; it
        // only runs in the neon-dotprod tier, chosen after detection.
        core::arch::asm!(
            ".arch_extension dotprod",
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack)
        );
        acc
    }

    /// Sixteen values of `Simd::q6_values`, the shifts given as negative
    /// counts.
    #[inline(always)]
    unsafe fn q6_half(l: uint8x16_t, h: uint8x16_t, ns: int8x16_t, hs: int8x16_t) -> int8x16_t {
        let lo = vandq_u8(vshlq_u8(l, ns), vdupq_n_u8(15));
        let hi = vshlq_n_u8::<4>(vandq_u8(vshlq_u8(h, hs), vdupq_n_u8(3)));
        vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(lo, hi)), vdupq_n_s8(32))
    }

    /// Sixteen values of `Simd::q5k_values`: the nibble, and 16 where the
    /// byte of `h` has a bit of `bit` set.
    #[inline(always)]
    unsafe fn q5_half(l: uint8x16_t, h: uint8x16_t, ns: int8x16_t, bit: uint8x16_t) -> int8x16_t {
        let lo = vandq_u8(vshlq_u8(l, ns), vdupq_n_u8(15));
        let hi = vandq_u8(vtstq_u8(h, bit), vdupq_n_u8(16));
        vreinterpretq_s8_u8(vorrq_u8(lo, hi))
    }

    /// Sixteen values of `Simd::q3k_values`: two bits, 4 where the byte of
    /// `h` has a bit of `bit` set, less 4.
    #[inline(always)]
    unsafe fn q3_half(l: uint8x16_t, h: uint8x16_t, ls: int8x16_t, bit: uint8x16_t) -> int8x16_t {
        let lo = vandq_u8(vshlq_u8(l, ls), vdupq_n_u8(3));
        let hi = vandq_u8(vtstq_u8(h, bit), vdupq_n_u8(4));
        vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(lo, hi)), vdupq_n_s8(4))
    }

    /// 16 in byte `j` (0..32) where bit `j` of `bits` is set, else 0, as
    /// bytes 0..16 and 16..32: each byte looks up the byte of `bits` that
    /// holds its bit, then tests it.
    #[inline(always)]
    unsafe fn bits_to_sixteens(bits: u32) -> (uint8x16_t, uint8x16_t) {
        const WHICH: [u8; 32] = [
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        ];
        const BIT: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
        let table = vreinterpretq_u8_u32(vdupq_n_u32(bits));
        let which = vld1q_u8_x2(WHICH.as_ptr());
        let bit = vld1q_u8(BIT.as_ptr());
        let sixteen = vdupq_n_u8(16);
        (
            vandq_u8(vtstq_u8(vqtbl1q_u8(table, which.0), bit), sixteen),
            vandq_u8(vtstq_u8(vqtbl1q_u8(table, which.1), bit), sixteen),
        )
    }

    /// The operations both NEON tiers share.
    macro_rules! neon_common {
        () => {
            const LANES: usize = 4;
            type F = float32x4_t;
            type Acc = float32x4_t;
            type B32 = int8x16x2_t;
            type I = int32x4_t;

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
                vld1q_f32(p)
            }
            #[inline(always)]
            unsafe fn load_f16(p: *const u16) -> float32x4_t {
                f16x4_to_f32(vld1_u16(p))
            }
            #[inline(always)]
            unsafe fn load_bf16(p: *const u16) -> float32x4_t {
                vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p)))
            }
            #[inline(always)]
            unsafe fn store(p: *mut f32, v: float32x4_t) {
                vst1q_f32(p, v)
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
            unsafe fn min(a: float32x4_t, b: float32x4_t) -> float32x4_t {
                vminq_f32(a, b)
            }
            #[inline(always)]
            unsafe fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
                vaddq_f32(a, b)
            }
            #[inline(always)]
            unsafe fn sub(a: float32x4_t, b: float32x4_t) -> float32x4_t {
                vsubq_f32(a, b)
            }
            #[inline(always)]
            unsafe fn div(a: float32x4_t, b: float32x4_t) -> float32x4_t {
                vdivq_f32(a, b)
            }
            #[inline(always)]
            unsafe fn round(a: float32x4_t) -> float32x4_t {
                vrndnq_f32(a)
            }
            #[inline(always)]
            unsafe fn pow2i(n: float32x4_t) -> float32x4_t {
                let e = vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127));
                vreinterpretq_f32_s32(vshlq_n_s32::<23>(e))
            }
            #[inline(always)]
            unsafe fn sum(v: float32x4_t) -> f32 {
                vaddvq_f32(v)
            }
            #[inline(always)]
            unsafe fn max_lane(v: float32x4_t) -> f32 {
                vmaxvq_f32(v)
            }
            #[inline(always)]
            unsafe fn f16_to_f32(h: u16) -> f32 {
                vgetq_lane_f32::<0>(f16x4_to_f32(vdup_n_u16(h)))
            }
            #[inline(always)]
            unsafe fn acc_zero() -> float32x4_t {
                vdupq_n_f32(0.0)
            }
            #[inline(always)]
            unsafe fn acc_sum(a: float32x4_t) -> f32 {
                vaddvq_f32(a)
            }
            #[inline(always)]
            unsafe fn load_b32(p: *const u8) -> int8x16x2_t {
                vld1q_s8_x2(p.cast())
            }
            #[inline(always)]
            unsafe fn unpack_nibbles(qs: *const u8) -> int8x16x2_t {
                let v = vld1q_u8(qs);
                let lo = vandq_u8(v, vdupq_n_u8(15));
                let hi = vshrq_n_u8::<4>(v);
                int8x16x2_t(vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi))
            }
            #[inline(always)]
            unsafe fn acc_add(acc: float32x4_t, dot: int32x4_t, scale: f32) -> float32x4_t {
                vfmaq_n_f32(acc, vcvtq_f32_s32(dot), scale)
            }
            #[inline(always)]
            unsafe fn prefetch(p: *const u8) {
                core::arch::asm!("prfm pldl1keep, [{p}]", p = in(reg) p, options(nostack, readonly, preserves_flags));
            }
            #[inline(always)]
            unsafe fn low_nibbles(p: *const u8) -> int8x16x2_t {
                let v = vld1q_u8_x2(p);
                let m = vdupq_n_u8(15);
                int8x16x2_t(
                    vreinterpretq_s8_u8(vandq_u8(v.0, m)),
                    vreinterpretq_s8_u8(vandq_u8(v.1, m)),
                )
            }
            #[inline(always)]
            unsafe fn high_nibbles(p: *const u8) -> int8x16x2_t {
                let v = vld1q_u8_x2(p);
                int8x16x2_t(
                    vreinterpretq_s8_u8(vshrq_n_u8::<4>(v.0)),
                    vreinterpretq_s8_u8(vshrq_n_u8::<4>(v.1)),
                )
            }
            #[inline(always)]
            unsafe fn q6_values(
                ql: *const u8,
                qh: *const u8,
                nib_shift: u32,
                hi_shift: u32,
            ) -> int8x16x2_t {
                let (l, h) = (vld1q_u8_x2(ql), vld1q_u8_x2(qh));
                // A shift left by a negative count shifts right.
                let (ns, hs) = (vdupq_n_s8(-(nib_shift as i8)), vdupq_n_s8(-(hi_shift as i8)));
                int8x16x2_t(q6_half(l.0, h.0, ns, hs), q6_half(l.1, h.1, ns, hs))
            }
            #[inline(always)]
            unsafe fn unpack_q5(qs: *const u8, qh: u32) -> int8x16x2_t {
                let v = vld1q_u8(qs);
                let (lo, hi) = (vandq_u8(v, vdupq_n_u8(15)), vshrq_n_u8::<4>(v));
                let (blo, bhi) = bits_to_sixteens(qh);
                int8x16x2_t(
                    vreinterpretq_s8_u8(vorrq_u8(lo, blo)),
                    vreinterpretq_s8_u8(vorrq_u8(hi, bhi)),
                )
            }
            #[inline(always)]
            unsafe fn q5k_values(
                ql: *const u8,
                qh: *const u8,
                nib_shift: u32,
                bit: u32,
            ) -> int8x16x2_t {
                let (l, h) = (vld1q_u8_x2(ql), vld1q_u8_x2(qh));
                let (ns, b) = (vdupq_n_s8(-(nib_shift as i8)), vdupq_n_u8(1 << bit));
                int8x16x2_t(q5_half(l.0, h.0, ns, b), q5_half(l.1, h.1, ns, b))
            }
            #[inline(always)]
            unsafe fn q3k_values(
                qs: *const u8,
                hm: *const u8,
                shift: u32,
                bit: u32,
            ) -> int8x16x2_t {
                let (l, h) = (vld1q_u8_x2(qs), vld1q_u8_x2(hm));
                let (ls, b) = (vdupq_n_s8(-(shift as i8)), vdupq_n_u8(1 << bit));
                int8x16x2_t(q3_half(l.0, h.0, ls, b), q3_half(l.1, h.1, ls, b))
            }
            type H = [i32; 2];
            #[inline(always)]
            unsafe fn halves(lo: i8, hi: i8) -> [i32; 2] {
                [lo as i32, hi as i32]
            }

            type W4 = W4Neon;
            type Acc4 = float32x4_t;

            #[inline(always)]
            unsafe fn acc4_zero() -> float32x4_t {
                vdupq_n_f32(0.0)
            }
            #[inline(always)]
            unsafe fn acc4_sums(a: float32x4_t) -> [f32; 4] {
                let mut out = [0.0f32; 4];
                vst1q_f32(out.as_mut_ptr(), a);
                out
            }
            #[inline(always)]
            unsafe fn load_q4_0x4(b: *const BlockQ4_0x4) -> W4Neon {
                let eight = vdupq_n_s8(8);
                let row = |r: usize| {
                    let v = vld1q_u8((*b).qs[r].as_ptr());
                    let lo = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(15)));
                    let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(v));
                    [vsubq_s8(lo, eight), vsubq_s8(hi, eight)]
                };
                W4Neon {
                    w: [row(0), row(1), row(2), row(3)],
                    scale: f16x4_to_f32(vld1_u16((*b).d.as_ptr().cast())),
                }
            }
            #[inline(always)]
            unsafe fn load_q8_0x4(b: *const BlockQ8_0x4) -> W4Neon {
                let row = |r: usize| [vld1q_s8((*b).qs[0][r].as_ptr()), vld1q_s8((*b).qs[1][r].as_ptr())];
                W4Neon {
                    w: [row(0), row(1), row(2), row(3)],
                    scale: f16x4_to_f32(vld1_u16((*b).d.as_ptr().cast())),
                }
            }
        };
    }

    impl Simd for Neon {
        neon_common!();

        #[inline(always)]
        unsafe fn dot_u4_i8(u: int8x16x2_t, x: int8x16x2_t) -> int32x4_t {
            // u < 16 is also a valid signed byte.
            vaddq_s32(dot16_widening(u.0, x.0), dot16_widening(u.1, x.1))
        }
        #[inline(always)]
        unsafe fn dot_i8_i8(w: int8x16x2_t, x: int8x16x2_t) -> int32x4_t {
            vaddq_s32(dot16_widening(w.0, x.0), dot16_widening(w.1, x.1))
        }
        #[inline(always)]
        unsafe fn dot_i8_i8_halves(w: int8x16x2_t, x: int8x16x2_t, s: [i32; 2]) -> int32x4_t {
            let lo = vmulq_n_s32(dot16_widening(w.0, x.0), s[0]);
            vmlaq_n_s32(lo, dot16_widening(w.1, x.1), s[1])
        }
        #[inline(always)]
        unsafe fn dot4(acc: float32x4_t, w: W4Neon, x: *const BlockQ8Act) -> float32x4_t {
            let (xlo, xhi) = (
                vld1q_s8((*x).qs.as_ptr()),
                vld1q_s8((*x).qs.as_ptr().add(16)),
            );
            let row = |r: usize| {
                vaddq_s32(
                    dot16_widening(w.w[r][0], xlo),
                    dot16_widening(w.w[r][1], xhi),
                )
            };
            add_rows(
                acc,
                [row(0), row(1), row(2), row(3)],
                vmulq_n_f32(w.scale, (*x).d),
            )
        }
    }

    impl Simd for NeonDot {
        neon_common!();

        #[inline(always)]
        unsafe fn dot_u4_i8(u: int8x16x2_t, x: int8x16x2_t) -> int32x4_t {
            dot16_sdot(dot16_sdot(vdupq_n_s32(0), u.0, x.0), u.1, x.1)
        }
        #[inline(always)]
        unsafe fn dot_i8_i8(w: int8x16x2_t, x: int8x16x2_t) -> int32x4_t {
            dot16_sdot(dot16_sdot(vdupq_n_s32(0), w.0, x.0), w.1, x.1)
        }
        #[inline(always)]
        unsafe fn dot_i8_i8_halves(w: int8x16x2_t, x: int8x16x2_t, s: [i32; 2]) -> int32x4_t {
            let z = vdupq_n_s32(0);
            let lo = vmulq_n_s32(dot16_sdot(z, w.0, x.0), s[0]);
            vmlaq_n_s32(lo, dot16_sdot(z, w.1, x.1), s[1])
        }
        #[inline(always)]
        unsafe fn dot4(acc: float32x4_t, w: W4Neon, x: *const BlockQ8Act) -> float32x4_t {
            let (xlo, xhi) = (
                vld1q_s8((*x).qs.as_ptr()),
                vld1q_s8((*x).qs.as_ptr().add(16)),
            );
            let z = vdupq_n_s32(0);
            let d0 = dot16_sdot(dot16_sdot(z, w.w[0][0], xlo), w.w[0][1], xhi);
            let d1 = dot16_sdot(dot16_sdot(z, w.w[1][0], xlo), w.w[1][1], xhi);
            let d2 = dot16_sdot(dot16_sdot(z, w.w[2][0], xlo), w.w[2][1], xhi);
            let d3 = dot16_sdot(dot16_sdot(z, w.w[3][0], xlo), w.w[3][1], xhi);
            add_rows(acc, [d0, d1, d2, d3], vmulq_n_f32(w.scale, (*x).d))
        }
    }
}
