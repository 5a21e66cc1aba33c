//! `olmo2`: AI2's OLMo 2. Llama's block without the norms before each
//! sub-layer: the attention and the feed-forward read the residual stream as
//! it is, and their outputs are RMS-normalised before they join it. The
//! Q/K norms span all the heads of a token at once.
//!
//! Hugging Face's `post_attention_layernorm` is that post-norm here.

use super::{Family, GgufNumber, HfConfig, LayerNames};
use crate::config::Config;
use crate::error::Result;
use serde_json::Value;

pub const FAMILY: Family = Family {
    model_type: "olmo2",
    config,
    layer_names: LAYER_NAMES,
};

pub(super) const LAYER_NAMES: LayerNames = &[
    ("post_attention_norm", "post_attention_layernorm.weight"),
    ("post_ffw_norm", "post_feedforward_layernorm.weight"),
];

/// Reads an `olmo2` config.
pub fn config(hf: &HfConfig<'_>) -> Result<Config> {
    hf.require("attention_bias", &Value::from(false))?;
    let mut c = hf.llama_like()?;
    olmo2_block(&mut c);
    Ok(c)
}

fn olmo2_block(c: &mut Config) {
    c.pre_norms = false;
    c.post_norms = true;
    c.qk_norm = true;
    c.qk_norm_whole = true;
}

/// An `olmo2` GGUF file: the block is all there is to know.
pub fn gguf(_: GgufNumber<'_>, c: &mut Config) -> Result<()> {
    olmo2_block(c);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::models::config_from_hf;
    use std::path::Path;

    #[test]
    fn olmo2_1b_config() {
        // OLMo-2-0425-1B's config.json as published (its keys and values).
        let j = serde_json::json!({
            "architectures": ["Olmo2ForCausalLM"], "attention_bias": false,
            "attention_dropout": 0.0, "eos_token_id": 100257, "hidden_act": "silu",
            "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
            "max_position_embeddings": 4096, "model_type": "olmo2",
            "num_attention_heads": 16, "num_hidden_layers": 16, "num_key_value_heads": 16,
            "pad_token_id": 100277, "rms_norm_eps": 1e-06, "rope_scaling": null,
            "rope_theta": 500000, "tie_word_embeddings": false, "vocab_size": 100352
        });
        let (family, c) = config_from_hf(&j, Path::new("config.json")).unwrap();
        assert_eq!(family, "olmo2");
        assert!(!c.pre_norms && c.post_norms && c.qk_norm && c.qk_norm_whole);
        assert_eq!(c.qk_norm_widths(), (2048, 2048));
        assert_eq!((c.rope_theta, c.norm_eps), (5e5, 1e-6));
    }
}
