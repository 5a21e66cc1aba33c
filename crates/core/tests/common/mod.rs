//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::PathBuf;
use tinyllm_core::{GenerateConfig, SamplerConfig};

/// The shared test data: `$TINYLLM_SHARED_MODELS`, else `../shared/models`
/// beside the checkout.
pub fn models_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("TINYLLM_SHARED_MODELS") {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models")
}

pub fn model_path(name: &str) -> PathBuf {
    models_dir().join(name)
}

/// A fresh directory for one test's files.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tinyllm-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a llama2.c legacy model of small random weights (tied classifier)
/// with the given `[dim, hidden_dim, n_layers, n_heads, n_kv_heads,
/// vocab_size, seq_len]`, and returns its path.
pub fn write_random_model(dir: &std::path::Path, dims: [usize; 7]) -> PathBuf {
    let [dim, hidden, layers, heads, kv_heads, vocab, seq] = dims;
    let head_dim = dim / heads;
    let kv = kv_heads * head_dim;
    let floats = vocab * dim
        + layers * (2 * dim + dim * dim * 2 + 2 * dim * kv + 3 * dim * hidden)
        + dim
        + seq * head_dim;
    let mut bytes = Vec::with_capacity(28 + 4 * floats);
    for v in dims {
        bytes.extend((v as i32).to_le_bytes());
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..floats {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let x = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2;
        bytes.extend(x.to_le_bytes());
    }
    let path = dir.join(format!(
        "random-{}.bin",
        dims.map(|d| d.to_string()).join("-")
    ));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Greedy decoding of up to `max_tokens`, ending at `stop_ids`.
pub fn greedy(max_tokens: usize, stop_ids: &[u32]) -> GenerateConfig {
    GenerateConfig {
        max_tokens,
        sampler: SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        },
        stop: vec![],
        stop_ids: stop_ids.to_vec(),
        logprobs: None,
    }
}
