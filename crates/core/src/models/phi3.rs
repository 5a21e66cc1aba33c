//! `phi3`: Microsoft's Phi-3 (mini, small-free, medium) and Phi-3.5-mini.
//! Llama's block with the query, key and value projections stored as one
//! matrix (`qkv_proj`, rows q, then k, then v), and the gate and up
//! projections as one (`gate_up_proj`, gate rows first). The loader
//! splits them into row ranges of the mapped matrix, so the engine sees
//! Llama's seven projections and nothing is copied. Phi-3 attends within
//! `sliding_window` positions on every layer (as Hugging Face's
//! implementation does; llama.cpp ignores the window).
//!
//! The 128k-context models (Phi-3-mini-128k, Phi-3.5-mini, Phi-4-mini) scale
//! their rotary frequencies by LongRoPE (`RopeScaling::LongRope`); Phi-4-mini
//! rotates the first 3/4 of each head (`partial_rotary_factor`).

use super::{Family, GgufNumber, HfConfig, LayerNames};
use crate::config::Config;
use crate::error::Result;

pub const FAMILY: Family = Family {
    model_type: "phi3",
    config,
    layer_names: LAYER_NAMES,
};

/// The fused tensors, under the names the table splits (see
/// `format::table`), then the parts each one holds, so that a message
/// about a part names the tensor in the checkpoint.
const LAYER_NAMES: LayerNames = &[
    ("attn_qkv", QKV),
    ("ffn_gate_up", GATE_UP),
    ("attn_q", QKV),
    ("attn_k", QKV),
    ("attn_v", QKV),
    ("ffn_gate", GATE_UP),
    ("ffn_up", GATE_UP),
];
const QKV: &str = "self_attn.qkv_proj.weight";
const GATE_UP: &str = "mlp.gate_up_proj.weight";

/// Reads a `phi3` config.
pub fn config(hf: &HfConfig<'_>) -> Result<Config> {
    hf.require("attention_bias", &false.into())?;
    let mut c = hf.llama_like()?;
    let part = hf.float_or("partial_rotary_factor", 1.0)?;
    if !(part > 0.0 && part <= 1.0) {
        return Err(hf.bad(format!("'partial_rotary_factor' = {part} is not in (0, 1]")));
    }
    if part < 1.0 {
        // (transformers: int(head_dim * partial_rotary_factor))
        c.rotary_dim = Some((c.head_dim as f64 * part as f64) as usize);
    }
    if let Some(w) = hf.positive_int("sliding_window")? {
        window_everywhere(&mut c, w);
    }
    Ok(c)
}

fn window_everywhere(c: &mut Config, w: usize) {
    c.sliding_window = Some(w);
    c.sliding_layers = (0..c.n_layers).collect();
}

/// A `phi3` GGUF file: its sliding window, if it has one.
pub fn gguf(num: GgufNumber<'_>, c: &mut Config) -> Result<()> {
    if let Some(w) = num("attention.sliding_window")?
        && w >= 1.0
    {
        window_everywhere(c, w as usize);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::models::config_from_hf;
    use std::path::Path;

    /// Phi-3-mini-4k-instruct's config.json as published (its keys and
    /// values).
    fn mini_4k() -> serde_json::Value {
        serde_json::json!({
            "architectures": ["Phi3ForCausalLM"], "attention_bias": false,
            "attention_dropout": 0.0, "bos_token_id": 1, "embd_pdrop": 0.0,
            "eos_token_id": 32000, "hidden_act": "silu", "hidden_size": 3072,
            "initializer_range": 0.02, "intermediate_size": 8192,
            "max_position_embeddings": 4096, "model_type": "phi3",
            "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
            "original_max_position_embeddings": 4096, "pad_token_id": 32000,
            "resid_pdrop": 0.0, "rms_norm_eps": 1e-05, "rope_scaling": null,
            "rope_theta": 10000.0, "sliding_window": 2047, "tie_word_embeddings": false,
            "torch_dtype": "bfloat16", "use_cache": true, "vocab_size": 32064
        })
    }

    #[test]
    fn phi3_mini_config() {
        let (family, c) = config_from_hf(&mini_4k(), Path::new("config.json")).unwrap();
        assert_eq!(family, "phi3");
        assert_eq!(
            (c.dim, c.hidden_dim, c.head_dim, c.vocab_size),
            (3072, 8192, 96, 32064)
        );
        assert_eq!((c.sliding_window, c.sliding_layers.len()), (Some(2047), 32));
        assert_eq!((c.rope_theta, c.norm_eps), (1e4, 1e-5));
    }

    #[test]
    fn phi3_5_mini_longrope() {
        // Phi-3.5-mini-instruct: a 131072-token context over 4096 trained,
        // 48 factors (head_dim 96) of each kind (shortened here).
        let mut j = mini_4k();
        j["max_position_embeddings"] = 131072.into();
        let short: Vec<f64> = (0..48).map(|i| 1.0 + i as f64 / 100.0).collect();
        let long: Vec<f64> = (0..48).map(|i| 1.0 + i as f64).collect();
        j["rope_scaling"] = serde_json::json!({"type": "longrope",
            "long_factor": long, "short_factor": short});
        let c = config_from_hf(&j, Path::new("config.json")).unwrap().1;
        // sqrt(1 + ln(32) / ln(4096)) on cos and sin
        let m = (1.0 + 32f32.ln() / 4096f32.ln()).sqrt();
        assert!((c.rope_magnitude() - m).abs() < 1e-6);
        assert_eq!(c.attn_scale(), 1.0 / 96f32.sqrt());
        let base = Config {
            rope_scaling: None,
            ..c.clone()
        }
        .rope_frequencies(None, 0);
        // short factors up to the trained context, long ones past it
        for (context, factors) in [(4096, &short), (4097, &long)] {
            let f = c.rope_frequencies(None, context);
            for ((f, b), s) in f.iter().zip(&base).zip(factors) {
                assert!((f * *s as f32 - b).abs() <= 1e-6 * b, "{context}");
            }
        }
        // a factor list of the wrong length is named
        j["rope_scaling"]["short_factor"] = serde_json::json!([1.0, 2.0]);
        let err = config_from_hf(&j, Path::new("config.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("short_factor must hold 48"), "{err}");
    }

    #[test]
    fn partial_rotary_factor() {
        let mut j = mini_4k();
        j["partial_rotary_factor"] = 0.75.into();
        let c = config_from_hf(&j, Path::new("config.json")).unwrap().1;
        assert_eq!(
            (c.rotary_dims(), c.rope_frequencies(None, 0).len()),
            (72, 36)
        );
        j["partial_rotary_factor"] = 1.5.into();
        let err = config_from_hf(&j, Path::new("config.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("partial_rotary_factor"), "{err}");
    }
}
