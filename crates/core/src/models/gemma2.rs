//! `gemma2`: Google's Gemma 2. Llama's block with GeGLU, RMSNorm gains of
//! `1 + w`, token embeddings scaled by `sqrt(hidden_size)`, a second norm
//! after each sub-layer, attention scores scaled by `query_pre_attn_scalar`
//! and soft-capped, soft-capped logits, and sliding-window attention on
//! every other layer (the first, third, ...).
//!
//! Hugging Face's `post_attention_layernorm` is a post-norm here, not the
//! feed-forward's pre-norm (`pre_feedforward_layernorm`).

use super::{Family, GgufNumber, HfConfig, LayerNames};
use crate::config::{Activation, Config};
use crate::error::Result;
use serde_json::Value;

pub const FAMILY: Family = Family {
    model_type: "gemma2",
    config,
    layer_names: LAYER_NAMES,
};

/// Gemma's block tensors whose names mean something else in Llama's.
pub const LAYER_NAMES: LayerNames = &[
    ("post_attention_norm", "post_attention_layernorm.weight"),
    ("ffn_norm", "pre_feedforward_layernorm.weight"),
    ("post_ffw_norm", "post_feedforward_layernorm.weight"),
];

/// Gemma 2 alternates: a sliding layer, then a global one.
const SLIDING_PATTERN: usize = 2;
/// Gemma 2's window when a GGUF file does not give one.
const GGUF_WINDOW: usize = 4096;

/// Reads a `gemma2` config.
pub fn config(hf: &HfConfig<'_>) -> Result<Config> {
    let mut c = gemma_like(hf, SLIDING_PATTERN)?;
    c.attn_softcap = hf.softcap("attn_logit_softcapping")?;
    c.final_softcap = hf.softcap("final_logit_softcapping")?;
    Ok(c)
}

/// What Gemma 2 and 3 share: `sliding_pattern` is the default of
/// `sliding_window_pattern` (each `n`-th layer global, the rest sliding)
/// when `layer_types` does not list the layers.
pub fn gemma_like(hf: &HfConfig<'_>, sliding_pattern: usize) -> Result<Config> {
    hf.require("attention_bias", &Value::from(false))?;
    hf.require("use_bidirectional_attention", &Value::from(false))?;
    let mut c = hf.llama_like()?;
    c.embedding_scale = (c.dim as f32).sqrt();
    c.norm_offset = 1.0;
    c.post_norms = true;
    let scalar = hf.positive_or("query_pre_attn_scalar", c.head_dim as f64)?;
    c.attention_scale = Some(1.0 / scalar.sqrt());
    c.sliding_window = hf.positive_int("sliding_window")?;
    c.sliding_layers = match hf.layer_types(c.n_layers)? {
        Some(types) => types,
        None => {
            let every = hf.int_or("sliding_window_pattern", sliding_pattern)?;
            sliding_every(c.n_layers, every)
        }
    };
    Ok(c)
}

/// The sliding layers when each `every`-th is global, as llama.cpp and
/// transformers lay them out (`every == 0`: all are sliding).
pub fn sliding_every(n_layers: usize, every: usize) -> Vec<usize> {
    (0..n_layers)
        .filter(|l| every == 0 || (l + 1) % every != 0)
        .collect()
}

/// The shared part of Gemma GGUF files: llama.cpp has folded the `1 +` into
/// the norms, scales the embeddings by `sqrt(n_embd)`, and scales attention
/// by `1 / sqrt(head_dim)` except in the 27B models (by layer count), which
/// use `n_embd / n_head`.
pub fn gemma_gguf(
    number: GgufNumber<'_>,
    c: &mut Config,
    pattern: usize,
    layers_27b: usize,
    final_softcap: f64,
) -> Result<()> {
    c.embedding_scale = (c.dim as f32).sqrt();
    c.post_norms = true;
    c.activation = Activation::GeluTanh;
    let scalar = if c.n_layers == layers_27b {
        c.dim / c.n_heads
    } else {
        c.head_dim
    };
    c.attention_scale = Some(1.0 / (scalar as f32).sqrt());
    let every = number("attention.sliding_window_pattern")?.map_or(pattern, |v| v as usize);
    c.sliding_layers = sliding_every(c.n_layers, every);
    c.final_softcap = positive(number("final_logit_softcapping")?.unwrap_or(final_softcap));
    Ok(())
}

/// A soft cap of a GGUF file: 0 means none.
fn positive(v: f64) -> Option<f32> {
    (v > 0.0).then_some(v as f32)
}

/// A `gemma2` GGUF file.
pub fn gguf(number: GgufNumber<'_>, c: &mut Config) -> Result<()> {
    // llama.cpp's defaults: both caps on (50 and 30), a window of 4096.
    gemma_gguf(number, c, SLIDING_PATTERN, 46, 30.0)?;
    c.sliding_window =
        Some(number("attention.sliding_window")?.map_or(GGUF_WINDOW, |v| v as usize));
    c.attn_softcap = positive(number("attn_logit_softcapping")?.unwrap_or(50.0));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::config_from_hf;
    use std::path::Path;

    /// Gemma 2 2B's config.json as published (its keys and values).
    fn gemma2_2b() -> serde_json::Value {
        serde_json::json!({
            "architectures": ["Gemma2ForCausalLM"], "attention_bias": false,
            "attn_logit_softcapping": 50.0, "bos_token_id": 2,
            "cache_implementation": "hybrid", "eos_token_id": [1, 107],
            "final_logit_softcapping": 30.0, "head_dim": 256,
            "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
            "hidden_size": 2304, "initializer_range": 0.02, "intermediate_size": 9216,
            "max_position_embeddings": 8192, "model_type": "gemma2",
            "num_attention_heads": 8, "num_hidden_layers": 26, "num_key_value_heads": 4,
            "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
            "rope_theta": 10000.0, "sliding_window": 4096, "torch_dtype": "float32",
            "vocab_size": 256000
        })
    }

    #[test]
    fn gemma2_2b_config() {
        let (family, c) = config_from_hf(&gemma2_2b(), Path::new("config.json")).unwrap();
        assert_eq!(family, "gemma2");
        assert_eq!(c.activation, Activation::GeluTanh);
        assert_eq!(c.embedding_scale, 48.0);
        assert_eq!(c.attn_scale(), 1.0 / 16.0);
        assert_eq!((c.attn_softcap, c.final_softcap), (Some(50.0), Some(30.0)));
        assert_eq!(c.sliding_window, Some(4096));
        assert_eq!(c.sliding_layers, (0..26).step_by(2).collect::<Vec<_>>());
        assert_eq!((c.window(0), c.window(1)), (Some(4096), None));
        assert!(c.post_norms && c.norm_offset == 1.0 && c.local_rope_theta.is_none());
    }

    #[test]
    fn layer_types_win_over_the_pattern_and_bad_ones_are_named() {
        let mut j = gemma2_2b();
        j["num_hidden_layers"] = 3.into();
        j["layer_types"] =
            serde_json::json!(["full_attention", "sliding_attention", "sliding_attention"]);
        let (_, c) = config_from_hf(&j, Path::new("config.json")).unwrap();
        assert_eq!(c.sliding_layers, [1, 2]);
        j["layer_types"] = serde_json::json!(["full_attention", "chunked_attention", "x"]);
        let e = config_from_hf(&j, Path::new("config.json")).unwrap_err();
        assert!(e.to_string().contains("layer_types"), "{e}");
        let mut j = gemma2_2b();
        j["hidden_activation"] = "relu".into();
        let e = config_from_hf(&j, Path::new("config.json")).unwrap_err();
        assert!(e.to_string().contains("hidden_activation"), "{e}");
    }

    #[test]
    fn gguf_27b_scales_by_width_over_heads() {
        let mut c = Config {
            dim: 4608,
            n_heads: 32,
            head_dim: 128,
            n_layers: 46,
            ..Config::default()
        };
        gguf(&|_| Ok(None), &mut c).unwrap();
        assert_eq!(c.attn_scale(), 1.0 / 12.0);
        assert_eq!(c.sliding_window, Some(4096));
        assert_eq!((c.attn_softcap, c.final_softcap), (Some(50.0), Some(30.0)));
        assert!(c.window(0).is_some() && c.window(1).is_none());
    }
}
