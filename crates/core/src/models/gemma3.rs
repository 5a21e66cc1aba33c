//! `gemma3_text`: Google's Gemma 3 language models (Gemma 3 1B, and the text
//! part of the larger ones). Gemma 2's block (see `gemma2`) with per-head
//! Q/K norms, no soft caps by default, five sliding layers to each global
//! one, and two rotary bases: 10,000 on the sliding layers, 1,000,000 with
//! the scaling on the global ones.

use super::gemma2::{LAYER_NAMES, gemma_gguf, gemma_like};
use super::{Family, GgufNumber, HfConfig, Wrapper};
use crate::config::Config;
use crate::error::Result;
use serde_json::Value;

pub const FAMILY: Family = Family {
    model_type: "gemma3_text",
    config,
    layer_names: LAYER_NAMES,
};

/// Gemma 3 4B, 12B and 27B: image-text checkpoints (`gemma3`) whose
/// language model is a `gemma3_text` one.
pub const WRAPPER: Wrapper = Wrapper {
    model_type: "gemma3",
    text: "gemma3_text",
    defaults: text_defaults,
    tied: true,
};

/// What transformers' `Gemma3TextConfig` gives the keys a `text_config`
/// leaves out (the published ones leave out most).
fn text_defaults() -> Value {
    serde_json::json!({
        "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216,
        "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
        "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-6,
        "query_pre_attn_scalar": 256, "sliding_window": 4096,
    })
}

/// Five sliding layers, then a global one.
const SLIDING_PATTERN: usize = 6;
/// The rotary base of the sliding layers when a file does not say.
const LOCAL_THETA: f64 = 10000.0;
/// The rotary base of the global layers when a file does not say.
const GLOBAL_THETA: f64 = 1_000_000.0;

/// Reads a `gemma3_text` config, in either form of the rotary settings:
/// transformers 5's `rope_parameters` with one object per layer type, or
/// the published files' `rope_theta`, `rope_scaling` (global layers) and
/// `rope_local_base_freq`.
pub fn config(hf: &HfConfig<'_>) -> Result<Config> {
    let mut c = gemma_like(hf, SLIDING_PATTERN)?;
    c.qk_norm = true;
    c.attn_softcap = hf.softcap("attn_logit_softcapping")?;
    c.final_softcap = hf.softcap("final_logit_softcapping")?;
    match hf.rope_by_layer_type()? {
        Some((global, local)) => {
            (c.rope_theta, c.rope_scaling) = (global.0.unwrap_or(GLOBAL_THETA as f32), global.1);
            if local.1.is_some() {
                return Err(hf.bad(
                    "rope_parameters.sliding_attention: scaling on the sliding layers is not supported"
                        .into(),
                ));
            }
            c.local_rope_theta = Some(local.0.unwrap_or(LOCAL_THETA as f32));
        }
        None => {
            c.rope_theta = hf.float_or("rope_theta", GLOBAL_THETA)?;
            c.local_rope_theta = Some(hf.float_or("rope_local_base_freq", LOCAL_THETA)?);
        }
    }
    Ok(c)
}

/// A `gemma3` GGUF file (llama.cpp's name): a window, if the file gives
/// one, over each layer but every sixth, whose rotary base is
/// `rope.freq_base_swa` (10,000 by default).
pub fn gguf(number: GgufNumber<'_>, c: &mut Config) -> Result<()> {
    gemma_gguf(number, c, SLIDING_PATTERN, 62, 0.0)?;
    c.qk_norm = true;
    match number("attention.sliding_window")? {
        Some(w) if w > 0.0 => {
            c.sliding_window = Some(w as usize);
            c.local_rope_theta = Some(number("rope.freq_base_swa")?.unwrap_or(LOCAL_THETA) as f32);
        }
        _ => c.sliding_layers.clear(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Activation, RopeScaling};
    use crate::models::config_from_hf;
    use std::path::Path;

    /// Gemma 3 1B's text config as published (its keys and values), with
    /// 12 layers instead of 26 and the 4B's rotary scaling.
    fn published() -> serde_json::Value {
        serde_json::json!({
            "architectures": ["Gemma3ForCausalLM"], "attention_bias": false,
            "attn_logit_softcapping": null, "bos_token_id": 2, "eos_token_id": [1, 106],
            "final_logit_softcapping": null, "head_dim": 256,
            "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152,
            "intermediate_size": 6912, "max_position_embeddings": 32768,
            "model_type": "gemma3_text", "num_attention_heads": 4,
            "num_hidden_layers": 12, "num_key_value_heads": 1, "pad_token_id": 0,
            "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
            "rope_local_base_freq": 10000, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6,
            "vocab_size": 262144
        })
    }

    #[test]
    fn image_text_checkpoints_give_their_language_model() {
        // gemma-3-4b-it's config.json as published: most of the language
        // model's settings are Gemma3TextConfig's defaults.
        let j = serde_json::json!({
            "architectures": ["Gemma3ForConditionalGeneration"],
            "boi_token_index": 255999, "eoi_token_index": 256000, "eos_token_id": [1, 106],
            "image_token_index": 262144, "initializer_range": 0.02,
            "mm_tokens_per_image": 256, "model_type": "gemma3",
            "text_config": {
                "hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                "sliding_window": 1024
            },
            "torch_dtype": "bfloat16",
            "vision_config": {"hidden_size": 1152, "image_size": 896,
                "intermediate_size": 4304, "model_type": "siglip_vision_model",
                "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14,
                "vision_use_head": false}
        });
        let (family, c) = config_from_hf(&j, Path::new("config.json")).unwrap();
        assert_eq!(family, "gemma3_text");
        assert_eq!((c.dim, c.hidden_dim, c.n_layers), (2560, 10240, 34));
        assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (8, 4, 256));
        assert_eq!(
            (c.vocab_size, c.seq_len, c.sliding_window),
            (262208, 131072, Some(1024))
        );
        assert_eq!((c.rope_theta, c.local_rope_theta), (1e6, Some(1e4)));
        assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 8.0 }));
        assert_eq!(c.attn_scale(), 1.0 / 16.0);
        assert!(crate::models::tied_classifier(&j));
        // a wrapper without its text model's settings is named
        let err = config_from_hf(&serde_json::json!({"model_type": "gemma3"}), Path::new("c"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("text_config"), "{err}");
    }

    #[test]
    fn published_config() {
        let (_, c) = config_from_hf(&published(), Path::new("config.json")).unwrap();
        assert_eq!(c.activation, Activation::GeluTanh);
        assert!(c.qk_norm && c.post_norms && c.attn_softcap.is_none() && c.final_softcap.is_none());
        assert_eq!(c.sliding_window, Some(512));
        assert_eq!(c.sliding_layers, [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]);
        assert_eq!((c.rope_theta, c.local_rope_theta), (1e6, Some(1e4)));
        assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 8.0 }));
        assert!(c.local_rope(0) && !c.local_rope(5));
        // The local frequencies are unscaled, of their own base.
        let local = c.local_rope_frequencies().unwrap();
        assert_eq!(local[1], 1.0 / 10000f32.powf(2.0 / 256.0));
        assert_eq!(
            c.rope_frequencies(None, 0)[1],
            1.0 / 1e6f32.powf(2.0 / 256.0) / 8.0
        );
    }

    #[test]
    fn transformers_5_rope_parameters() {
        let mut j = published();
        let o = j.as_object_mut().unwrap();
        for k in [
            "rope_local_base_freq",
            "rope_scaling",
            "rope_theta",
            "sliding_window_pattern",
        ] {
            o.remove(k);
        }
        o.insert(
            "rope_parameters".into(),
            serde_json::json!({
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 500000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 20000.0}
            }),
        );
        o.insert(
            "layer_types".into(),
            serde_json::json!(
                (0..12)
                    .map(|l| if l % 3 == 2 {
                        "full_attention"
                    } else {
                        "sliding_attention"
                    })
                    .collect::<Vec<_>>()
            ),
        );
        let (_, c) = config_from_hf(&j, Path::new("config.json")).unwrap();
        assert_eq!((c.rope_theta, c.local_rope_theta), (5e5, Some(2e4)));
        assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 4.0 }));
        assert_eq!(c.sliding_layers, [0, 1, 3, 4, 6, 7, 9, 10]);
        j["rope_parameters"]["sliding_attention"] =
            serde_json::json!({"rope_type": "linear", "factor": 2.0});
        let e = config_from_hf(&j, Path::new("config.json")).unwrap_err();
        assert!(e.to_string().contains("sliding_attention"), "{e}");
    }

    #[test]
    fn gguf_defaults_follow_llama_cpp() {
        let mut c = Config {
            dim: 1152,
            n_heads: 4,
            head_dim: 256,
            n_layers: 26,
            ..Config::default()
        };
        let window = |k: &str| Ok((k == "attention.sliding_window").then_some(512.0));
        gguf(&window, &mut c).unwrap();
        assert_eq!(
            (c.sliding_window, c.local_rope_theta),
            (Some(512), Some(1e4))
        );
        assert_eq!(c.sliding_layers.len(), 26 - 4);
        assert!(c.final_softcap.is_none() && c.attn_softcap.is_none());
        assert_eq!(c.attn_scale(), 1.0 / 16.0);
        let mut c = Config {
            n_layers: 26,
            dim: 1152,
            n_heads: 4,
            head_dim: 256,
            ..Config::default()
        };
        gguf(&|_| Ok(None), &mut c).unwrap();
        assert!(c.sliding_layers.is_empty() && c.local_rope_theta.is_none());
    }
}
