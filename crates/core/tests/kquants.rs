//! tinyllm's GGUF blocks (the k-quants, and the 5-bit blocks of 32) against
//! the values llama.cpp's own Python package (`gguf.quants.dequantize`)
//! gives the same bytes, recorded by `tools/make_kquant_fixtures.py` in
//! `fixtures/kquants.json`.

use tinyllm_core::quant::{
    self, Block, BlockQ3K, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, QK, QK_K, SuperBlock,
};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The fixture's blocks of `name` (read straight from their bytes, as a
/// memory-mapped file would be), each standing for `per_block` values, and
/// their expected values.
fn fixture<B: Copy>(name: &str, per_block: usize) -> (Vec<B>, Vec<f32>) {
    let size = std::mem::size_of::<B>();
    let text = include_str!("fixtures/kquants.json");
    let all: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
    let case = &all[name];
    assert_eq!(case["block_bytes"].as_u64(), Some(size as u64));
    let bytes = hex(case["blocks"].as_str().expect("blocks"));
    let values: Vec<f32> = hex(case["values"].as_str().expect("values"))
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    assert_eq!(bytes.len() % size, 0);
    let blocks: Vec<B> = bytes
        .chunks_exact(size)
        // SAFETY: the block types are `#[repr(C)]` plain bytes and f16s,
        // valid for any bits; the chunk holds exactly one block.
        .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<B>()) })
        .collect();
    assert_eq!(values.len(), blocks.len() * per_block);
    (blocks, values)
}

/// The row `dequantize` makes of the fixture's blocks, against its values.
fn check<B: Copy>(name: &str, per_block: usize, dequantize: fn(&[B], &mut [f32])) {
    let (blocks, want) = fixture::<B>(name, per_block);
    assert!(blocks.len() >= 20, "{name}: too few blocks");
    let mut row = vec![0.0f32; blocks.len() * per_block];
    dequantize(&blocks, &mut row);
    for (i, (&got, &w)) in row.iter().zip(&want).enumerate() {
        // Bit for bit: both compute (d * scale) * q - dmin * min (k-quants),
        // d * q (+ m) (q5_0, q5_1) in f32.
        assert!(
            got.to_bits() == w.to_bits(),
            "{name} block {} value {}: got {got}, want {w}",
            i / per_block,
            i % per_block
        );
    }
}

fn check_k<B: SuperBlock>(name: &str) {
    check::<B>(name, QK_K, quant::dequantize_row_k);
}

fn check_32<B: Block>(name: &str) {
    check::<B>(name, QK, quant::dequantize_row);
}

#[test]
fn q4_k_dequantizes_as_gguf_does() {
    check_k::<BlockQ4K>("q4_k");
}

#[test]
fn q6_k_dequantizes_as_gguf_does() {
    check_k::<BlockQ6K>("q6_k");
}

#[test]
fn q5_k_dequantizes_as_gguf_does() {
    check_k::<BlockQ5K>("q5_k");
}

#[test]
fn q3_k_dequantizes_as_gguf_does() {
    check_k::<BlockQ3K>("q3_k");
}

#[test]
fn q5_0_dequantizes_as_gguf_does() {
    check_32::<BlockQ5_0>("q5_0");
}

#[test]
fn q5_1_dequantizes_as_gguf_does() {
    check_32::<BlockQ5_1>("q5_1");
}

#[test]
fn q4_k_and_q5_k_offsets_are_what_every_value_of_a_sub_block_shares() {
    // Value j of sub-block i is scale_i * q_j + offset_i, so the offset is
    // the sub-block's value at q = 0.
    let (blocks, _) = fixture::<BlockQ4K>("q4_k", QK_K);
    for mut b in blocks {
        b.qs = [0; QK_K / 2];
        let v = b.dequantize();
        for (i, o) in b.offsets().iter().enumerate() {
            assert!(v[32 * i..32 * i + 32].iter().all(|x| x == o));
        }
    }
    let (blocks, _) = fixture::<BlockQ5K>("q5_k", QK_K);
    for mut b in blocks {
        (b.qs, b.qh) = ([0; QK_K / 2], [0; QK_K / 8]);
        let v = b.dequantize();
        for (i, o) in b.offsets().iter().enumerate() {
            assert!(v[32 * i..32 * i + 32].iter().all(|x| x == o));
        }
    }
}

#[test]
fn q5_offsets_are_the_value_of_q_zero() {
    // The kernels add a block's offset apart from d * q.
    let (blocks, _) = fixture::<BlockQ5_0>("q5_0", QK);
    for mut b in blocks {
        (b.qs, b.qh) = ([0; QK / 2], [0; 4]);
        assert!(b.dequantize().iter().all(|&x| x == b.offset()));
    }
    let (blocks, _) = fixture::<BlockQ5_1>("q5_1", QK);
    for mut b in blocks {
        (b.qs, b.qh) = ([0; QK / 2], [0; 4]);
        assert!(b.dequantize().iter().all(|&x| x == b.offset()));
    }
}

#[test]
fn gguf_files_of_the_newer_types_load_as_them_and_stay_off_the_gpu() {
    // llama-quantize --pure files (tools/make_kquant_gguf.py): every matrix
    // of the one type. The GPU has no kernel for these, so `supports` says
    // no and `device="auto"` keeps them on the CPU.
    use tinyllm_core::weights::DType;
    use tinyllm_core::{KvType, Model};
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf");
    for (name, dtype) in [
        ("kquant-q5_k.gguf", DType::Q5K),
        ("kquant-q3_k.gguf", DType::Q3K),
        ("kquant-q5_0.gguf", DType::Q5_0),
    ] {
        let model = Model::open(fixtures.join(name)).unwrap();
        let w = &model.weights;
        let all = w.layers.iter().flat_map(|l| l.matrices().map(|(_, m)| m));
        for m in all.chain([&w.embedding, &w.classifier]) {
            assert_eq!(m.dtype, dtype, "{name}");
        }
        for kv in [KvType::F16, KvType::F32] {
            let err = tinyllm_core::gpu::device::supports(&model, kv).unwrap_err();
            assert!(err.to_string().contains("no GPU kernel"), "{name}: {err}");
        }
    }
}
