//! The argument structs of the kernels, as `kernels/metal/common.h` defines
//! them: the same fields in the same order, `#[repr(C)]`, with the sizes
//! both sides assert. Change both together.

use crate::weights::DType;

/// A struct that can be handed to a kernel as bytes.
///
/// # Safety
///
/// `#[repr(C)]`, every field plain data, and no padding bytes.
pub unsafe trait Args: Copy {
    fn bytes(&self) -> &[u8] {
        // SAFETY: the trait's contract: plain data with no padding.
        unsafe { std::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>()) }
    }
}

/// `MatvecArgs`: `out[t, r] (+)= W[r] . in[t]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MatvecArgs {
    /// One of the `W_` codes ([`weight_code`]).
    pub r#type: u32,
    pub rows: u32,
    pub cols: u32,
    pub tokens: u32,
    pub ld_in: u32,
    pub ld_out: u32,
    /// 1: add the product to the output.
    pub accumulate: u32,
    pub pad: u32,
}

/// `RowArgs`: the row-wise kernels (norms, rotary, biases, SwiGLU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RowArgs {
    pub tokens: u32,
    pub width: u32,
    pub ld: u32,
    pub eps: f32,
    pub heads: u32,
    pub head_dim: u32,
    /// 0: pairs `(2j, 2j + 1)`; 1: `(j, j + head_dim / 2)`.
    pub style: u32,
    /// 1: `rmsnorm` reads the rows listed in its index buffer.
    pub gather: u32,
    /// rope: the leading values of each head that rotate.
    pub rotary: u32,
}

/// `KvArgs`: the cache's layout and one layer's attention.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KvArgs {
    pub tokens: u32,
    pub layer: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub q_heads: u32,
    /// Positions a token attends to at most (0: all).
    pub window: u32,
    pub row_bytes: u32,
    /// 0: f32, 1: f16.
    pub kv_type: u32,
    pub page_bytes: u64,
    pub scale: f32,
    pub ld_q: u32,
    /// `attention`'s cut ([`super::attention::AttentionPlan`]): positions
    /// per tile, query heads per threadgroup, position ranges and their
    /// length.
    pub tile: u32,
    pub group_heads: u32,
    pub splits: u32,
    pub split_len: u32,
    /// Scores `s` become `softcap * tanh(s / softcap)` (0: as they are).
    pub softcap: f32,
}

/// `TokenInfo`: a token's position and where its sequence's page list
/// starts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenInfo {
    pub pos: u32,
    pub pages: u32,
}

// The sizes `common.h` asserts too.
const _: () = assert!(size_of::<MatvecArgs>() == 32);
const _: () = assert!(size_of::<RowArgs>() == 36);
const _: () = assert!(size_of::<KvArgs>() == 72);
const _: () = assert!(size_of::<TokenInfo>() == 8);

// SAFETY: each is #[repr(C)] of 4- and 8-byte fields laid out without
// padding (the sizes above are the sums of the fields).
unsafe impl Args for MatvecArgs {}
// SAFETY: as above.
unsafe impl Args for RowArgs {}
// SAFETY: as above.
unsafe impl Args for KvArgs {}
// SAFETY: as above.
unsafe impl Args for TokenInfo {}

/// The `W_` code of a weight type in `common.h`, or None for a type with no
/// GPU kernel.
pub fn weight_code(d: DType) -> Option<u32> {
    Some(match d {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
        DType::Q8_0 => 3,
        DType::Q4_0 => 4,
        DType::Q4_1 => 5,
        DType::Q4_0x4 => 6,
        DType::Q8_0x4 => 7,
        DType::Q4K => 8,
        DType::Q6K => 9,
        // No Metal kernel (yet): `device="auto"` runs these on the CPU.
        DType::Q5_0 | DType::Q5_1 | DType::Q3K | DType::Q5K | DType::Q8Group { .. } => return None,
    })
}

/// A slice of plain values as bytes.
pub fn slice_bytes<T: Args>(v: &[T]) -> &[u8] {
    // SAFETY: `Args` values are plain data without padding.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header's `#define W_...` codes and `static_assert` sizes are
    /// the ones this file uses.
    #[test]
    fn header_agrees() {
        let h = super::super::source::HEADER.1;
        let define = |name: &str| -> u32 {
            let line = h
                .lines()
                .find(|l| l.starts_with(&format!("#define {name} ")))
                .unwrap_or_else(|| panic!("{name} not in common.h"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        let types = [
            ("W_F32", DType::F32),
            ("W_F16", DType::F16),
            ("W_BF16", DType::BF16),
            ("W_Q8_0", DType::Q8_0),
            ("W_Q4_0", DType::Q4_0),
            ("W_Q4_1", DType::Q4_1),
            ("W_Q4_0X4", DType::Q4_0x4),
            ("W_Q8_0X4", DType::Q8_0x4),
            ("W_Q4_K", DType::Q4K),
            ("W_Q6_K", DType::Q6K),
        ];
        for (name, d) in types {
            assert_eq!(Some(define(name)), weight_code(d), "{name}");
        }
        assert_eq!(define("PAGE") as usize, crate::kv_cache::PAGE);
        for (name, size) in [
            ("MatvecArgs", size_of::<MatvecArgs>()),
            ("RowArgs", size_of::<RowArgs>()),
            ("KvArgs", size_of::<KvArgs>()),
            ("TokenInfo", size_of::<TokenInfo>()),
        ] {
            let assert = format!("static_assert(sizeof({name}) == {size}, \"{name}\");");
            assert!(h.contains(&assert), "common.h lacks {assert}");
        }
    }
}
