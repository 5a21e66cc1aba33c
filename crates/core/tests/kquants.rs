//! tinyllm's k-quant blocks against the values llama.cpp's own Python
//! package (`gguf.quants.dequantize`) gives the same bytes, recorded by
//! `tools/make_kquant_fixtures.py` in `fixtures/kquants.json`.

use tinyllm_core::quant::{BlockQ4K, BlockQ6K, QK_K, SuperBlock};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The fixture's blocks of `name` (read straight from their bytes, as a
/// memory-mapped file would be) and their expected values.
fn fixture<B: SuperBlock>(name: &str) -> (Vec<B>, Vec<f32>) {
    let text = include_str!("fixtures/kquants.json");
    let all: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
    let case = &all[name];
    assert_eq!(case["block_bytes"].as_u64(), Some(B::BYTES as u64));
    let bytes = hex(case["blocks"].as_str().expect("blocks"));
    let values: Vec<f32> = hex(case["values"].as_str().expect("values"))
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    assert_eq!(bytes.len() % B::BYTES, 0);
    let blocks: Vec<B> = bytes
        .chunks_exact(B::BYTES)
        // SAFETY: the block types are `#[repr(C)]` plain bytes and f16s,
        // valid for any bits; the chunk holds exactly one block.
        .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<B>()) })
        .collect();
    assert_eq!(values.len(), blocks.len() * QK_K);
    (blocks, values)
}

fn check<B: SuperBlock>(name: &str) {
    let (blocks, want) = fixture::<B>(name);
    assert!(blocks.len() >= 20, "{name}: too few blocks");
    let mut row = vec![0.0f32; blocks.len() * QK_K];
    tinyllm_core::quant::dequantize_row_k(&blocks, &mut row);
    for (i, (&got, &w)) in row.iter().zip(&want).enumerate() {
        // Bit for bit: both compute (d * scale) * q - dmin * min in f32.
        assert!(
            got.to_bits() == w.to_bits(),
            "{name} block {} value {}: got {got}, want {w}",
            i / QK_K,
            i % QK_K
        );
    }
}

#[test]
fn q4_k_dequantizes_as_gguf_does() {
    check::<BlockQ4K>("q4_k");
}

#[test]
fn q6_k_dequantizes_as_gguf_does() {
    check::<BlockQ6K>("q6_k");
}

#[test]
fn q4_k_offsets_are_what_every_value_of_a_sub_block_shares() {
    // Value j of sub-block i is scale_i * q_j + offset_i, so the offset is
    // the sub-block's value at q = 0.
    let (blocks, _) = fixture::<BlockQ4K>("q4_k");
    for mut b in blocks {
        b.qs = [0; QK_K / 2];
        let v = b.dequantize();
        for (i, o) in b.offsets().iter().enumerate() {
            assert!(v[32 * i..32 * i + 32].iter().all(|x| x == o));
        }
    }
}
