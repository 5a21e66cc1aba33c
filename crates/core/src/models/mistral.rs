//! `mistral`: Mistral 7B and its descendants: Llama's block; v0.1 attends
//! within a sliding window of 4096 positions on every layer.

use super::HfConfig;
use crate::config::Config;
use crate::error::Result;

/// Reads a `mistral` config: a `sliding_window`, if given, applies to every
/// layer.
pub fn config(hf: &HfConfig<'_>) -> Result<Config> {
    let mut c = hf.llama_like()?;
    if let Some(w) = hf.positive_int("sliding_window")? {
        c.sliding_window = Some(w);
        c.sliding_layers = (0..c.n_layers).collect();
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use crate::models::config_from_hf;
    use std::path::Path;

    #[test]
    fn windows_of_mistral_and_qwen() {
        let mut j = serde_json::json!({
            "model_type": "mistral", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 4, "num_attention_heads": 4, "vocab_size": 256,
            "max_position_embeddings": 32768, "sliding_window": 4096,
        });
        let read = |j: &serde_json::Value| config_from_hf(j, Path::new("config.json")).unwrap().1;
        let c = read(&j);
        assert_eq!((c.seq_len, c.sliding_window), (32768, Some(4096)));
        assert_eq!(c.sliding_layers, [0, 1, 2, 3]);
        j["sliding_window"] = serde_json::Value::Null;
        assert!(read(&j).sliding_layers.is_empty());
        // Qwen: only with use_sliding_window, from max_window_layers on
        j["model_type"] = "qwen2".into();
        j["sliding_window"] = 100.into();
        j["max_window_layers"] = 1.into();
        assert_eq!(read(&j).sliding_window, None);
        j["use_sliding_window"] = true.into();
        let c = read(&j);
        assert_eq!(
            (c.sliding_window, c.sliding_layers),
            (Some(100), vec![1, 2, 3])
        );
        j["model_type"] = "qwen3".into();
        j["layer_types"] = serde_json::json!([
            "sliding_attention",
            "full_attention",
            "full_attention",
            "sliding_attention"
        ]);
        assert_eq!(read(&j).sliding_layers, [0, 3]);
    }
}
