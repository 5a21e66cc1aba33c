//! `phi3`: Microsoft's Phi-3 (mini, small-free, medium) and Phi-3.5-mini.
//! Llama's block with the query, key and value projections stored as one
//! matrix (`qkv_proj`, rows q, then k, then v), and the gate and up
//! projections as one (`gate_up_proj`, gate rows first). The loader
//! splits them into row ranges of the mapped matrix, so the engine sees
//! Llama's seven projections and nothing is copied. Phi-3 attends within
//! `sliding_window` positions on every layer (as Hugging Face's
//! implementation does; llama.cpp ignores the window).
//!
//! Not read yet: `longrope` scaling (the 128k-context models) and a
//! `partial_rotary_factor` below 1 (Phi-4-mini); both are refused by name.

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
    let part = hf.float_or("partial_rotary_factor", 1.0)?;
    if part != 1.0 {
        return Err(hf.bad(format!(
            "'partial_rotary_factor' = {part}: rotating part of each head is not supported"
        )));
    }
    hf.require("attention_bias", &false.into())?;
    let mut c = hf.llama_like()?;
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
    fn what_phi3_cannot_run_is_named() {
        let err = |j: &serde_json::Value| {
            config_from_hf(j, Path::new("config.json"))
                .unwrap_err()
                .to_string()
        };
        let mut j = mini_4k();
        j["partial_rotary_factor"] = 0.75.into();
        assert!(err(&j).contains("partial_rotary_factor"), "{}", err(&j));
        let mut j = mini_4k();
        j["rope_scaling"] = serde_json::json!({"type": "longrope",
            "long_factor": [1.0], "short_factor": [1.0]});
        assert!(err(&j).contains("longrope"), "{}", err(&j));
    }
}
