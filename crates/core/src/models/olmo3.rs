//! `olmo3`: AI2's OLMo 3. OLMo 2's block (see `olmo2`) with sliding-window
//! attention on three layers of every four (`layer_types`), whose rotary
//! embeddings are never scaled; the full-attention layers carry the
//! config's rotary scaling (YaRN in the published long-context models).

use super::olmo2;
use super::{Family, HfConfig};
use crate::config::Config;
use crate::error::Result;

pub const FAMILY: Family = Family {
    model_type: "olmo3",
    config,
    layer_names: olmo2::LAYER_NAMES,
};

/// Reads an `olmo3` config: `sliding_window` (4096 by default) over the
/// layers `layer_types` names, or else all but every fourth; the rotary
/// settings as a top-level `rope_theta` and `rope_scaling` (full layers), or
/// transformers 5's `rope_parameters` per layer type.
pub fn config(hf: &HfConfig<'_>) -> Result<Config> {
    let mut c = olmo2::config(hf)?;
    c.sliding_window = Some(hf.positive_int("sliding_window")?.unwrap_or(4096));
    c.sliding_layers = match hf.layer_types(c.n_layers)? {
        Some(layers) => layers,
        None => (0..c.n_layers).filter(|l| (l + 1) % 4 != 0).collect(),
    };
    match hf.rope_by_layer_type()? {
        Some((global, local)) => {
            if local.1.is_some() {
                return Err(hf.bad(
                    "rope_parameters.sliding_attention: scaling on the sliding layers is not supported"
                        .into(),
                ));
            }
            c.rope_theta = global.0.unwrap_or(c.rope_theta);
            c.rope_scaling = global.1;
            c.local_rope_theta = Some(local.0.unwrap_or(c.rope_theta));
        }
        // (olmo2's reader took rope_theta and rope_scaling for the full
        // layers; the sliding ones turn at the same base, unscaled)
        None => c.local_rope_theta = Some(c.rope_theta),
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use crate::config::RopeScaling;
    use crate::models::config_from_hf;
    use std::path::Path;

    #[test]
    fn olmo3_7b_config() {
        // Olmo-3-7B-Instruct's config.json as published (its keys and
        // values; layer_types shortened to 8 layers).
        let mut types = vec!["sliding_attention"; 8];
        types[3] = "full_attention";
        types[7] = "full_attention";
        let j = serde_json::json!({
            "architectures": ["Olmo3ForCausalLM"], "attention_bias": false,
            "attention_dropout": 0.0, "eos_token_id": 100257, "hidden_act": "silu",
            "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 11008,
            "layer_types": types, "max_position_embeddings": 65536, "model_type": "olmo3",
            "num_attention_heads": 32, "num_hidden_layers": 8, "num_key_value_heads": 32,
            "pad_token_id": 100277, "rms_norm_eps": 1e-06,
            "rope_scaling": {"attention_factor": 1.2079441541679836, "beta_fast": 32,
                "beta_slow": 1, "factor": 8.0, "original_max_position_embeddings": 8192,
                "rope_type": "yarn"},
            "rope_theta": 500000, "sliding_window": 4096, "tie_word_embeddings": false,
            "vocab_size": 100278
        });
        let (family, c) = config_from_hf(&j, Path::new("config.json")).unwrap();
        assert_eq!(family, "olmo3");
        assert!(!c.pre_norms && c.post_norms && c.qk_norm_whole);
        assert_eq!(
            (c.sliding_window, c.sliding_layers.clone()),
            (Some(4096), vec![0, 1, 2, 4, 5, 6])
        );
        assert!(c.local_rope(0) && !c.local_rope(3));
        assert_eq!(c.local_rope_theta, Some(5e5));
        let Some(RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            ..
        }) = c.rope_scaling
        else {
            panic!("{:?}", c.rope_scaling)
        };
        assert_eq!((factor, original_max_position_embeddings), (8.0, 8192));
        assert!((c.rope_magnitude() - 1.2079442).abs() < 1e-6);
        // YaRN keeps the fast pairs, interpolates the slow ones
        let (scaled, plain) = (
            c.rope_frequencies(None, 0),
            c.local_rope_frequencies().unwrap(),
        );
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[63] * 8.0 - plain[63]).abs() <= 1e-6 * plain[63]);
        // a scaling that cannot be is named
        let mut j = j;
        j["rope_scaling"]["beta_fast"] = (-32).into();
        let err = config_from_hf(&j, Path::new("config.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("yarn rope_scaling"), "{err}");
    }
}
