//! Model families, one file each, named after Hugging Face's `model_type`.
//!
//! Every family runs on the one Llama forward pass (`crate::forward`); a
//! family's file says how its `config.json` maps onto [`Config`] and which
//! variations of the block it uses. The Hugging Face tensor names, shared by
//! all of them, map onto tinyllm's names here.

pub mod granite;
pub mod llama;
pub mod mistral;
pub mod qwen2;
pub mod qwen3;
pub mod smollm3;

use crate::config::{Config, RopeScaling, RopeStyle};
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// Reads a family's `config.json` into a [`Config`].
pub type ReadConfig = fn(&HfConfig<'_>) -> Result<Config>;

/// The families by `model_type`, with the function reading their configs.
pub const FAMILIES: [(&str, ReadConfig); 6] = [
    ("granite", granite::config),
    ("llama", llama::config),
    ("mistral", mistral::config),
    ("qwen2", qwen2::config),
    ("qwen3", qwen3::config),
    ("smollm3", smollm3::config),
];

/// A GGUF file's number `{arch}.{key}`, if the file has it.
pub type GgufNumber<'a> = &'a dyn Fn(&str) -> Result<Option<f64>>;

/// Reads what a family keeps in GGUF metadata beyond the keys every
/// family shares.
pub type ReadGguf = fn(GgufNumber<'_>, &mut Config) -> Result<()>;

/// The GGUF architectures (llama.cpp's names): the rotary layout llama.cpp
/// stores their Q/K rows in, and their own keys. llama.cpp permutes
/// Llama-like rows into pairs (2j, 2j+1) and keeps Qwen's as trained.
pub const GGUF_FAMILIES: [(&str, RopeStyle, ReadGguf); 5] = [
    ("granite", RopeStyle::Interleaved, granite::gguf),
    ("llama", RopeStyle::Interleaved, no_gguf_keys),
    ("qwen2", RopeStyle::Half, no_gguf_keys),
    ("qwen3", RopeStyle::Half, no_gguf_keys),
    ("smollm3", RopeStyle::Interleaved, smollm3::gguf),
];

fn no_gguf_keys(_: GgufNumber<'_>, _: &mut Config) -> Result<()> {
    Ok(())
}

/// Whether `name` is a family (or tinyllm architecture) the engine runs.
pub fn is_known(name: &str) -> bool {
    FAMILIES.iter().any(|(n, _)| *n == name)
}

/// Reads a Hugging Face `config.json` (already parsed) into a [`Config`];
/// `path` names the file in errors.
pub fn config_from_hf(json: &Value, path: &Path) -> Result<(String, Config)> {
    let hf = HfConfig { json, path };
    let model_type = hf.str("model_type")?;
    let Some((_, read)) = FAMILIES.iter().find(|(n, _)| *n == model_type) else {
        let known: Vec<&str> = FAMILIES.iter().map(|(n, _)| *n).collect();
        return Err(hf.bad(format!(
            "unknown model_type '{model_type}' (supported: {})",
            known.join(", ")
        )));
    };
    let config = read(&hf)?;
    config.validate(path)?;
    Ok((model_type.to_string(), config))
}

/// A `config.json` being read, with its path for errors.
#[derive(Debug)]
pub struct HfConfig<'a> {
    json: &'a Value,
    path: &'a Path,
}

impl HfConfig<'_> {
    pub fn bad(&self, reason: String) -> Error {
        Error::format(self.path, reason)
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.json.get(key).filter(|v| !v.is_null())
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        self.get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| self.bad(format!("'{key}' is missing or not a string")))
    }

    pub fn int(&self, key: &str) -> Result<usize> {
        self.get(key)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| self.bad(format!("'{key}' is missing or not a non-negative integer")))
    }

    pub fn int_or(&self, key: &str, default: usize) -> Result<usize> {
        if self.get(key).is_some() {
            self.int(key)
        } else {
            Ok(default)
        }
    }

    pub fn float_or(&self, key: &str, default: f64) -> Result<f32> {
        match self.get(key) {
            None => Ok(default as f32),
            Some(v) => v
                .as_f64()
                .map(|v| v as f32)
                .ok_or_else(|| self.bad(format!("'{key}' is not a number"))),
        }
    }

    /// A list of non-negative integers, if the key is there.
    pub fn int_list(&self, key: &str) -> Result<Option<Vec<usize>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_array()
            .and_then(|a| {
                a.iter()
                    .map(|x| x.as_u64().map(|x| x as usize))
                    .collect::<Option<Vec<_>>>()
            })
            .map(Some)
            .ok_or_else(|| self.bad(format!("'{key}' is not a list of non-negative integers")))
    }

    /// A positive number (a multiplier or divisor), or `default`.
    pub fn positive_or(&self, key: &str, default: f64) -> Result<f32> {
        let v = self.float_or(key, default)?;
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(self.bad(format!("'{key}' = {v} is not a positive number")))
        }
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.bad(format!("'{key}' is not true or false"))),
        }
    }

    /// Fails unless `key` is absent or `expected`: a feature the engine
    /// does not implement must not be silently ignored.
    pub fn require(&self, key: &str, expected: &Value) -> Result<()> {
        match self.get(key) {
            Some(v) if v != expected => {
                Err(self.bad(format!("'{key}' = {v} is not supported (only {expected})")))
            }
            _ => Ok(()),
        }
    }

    /// The dimensions every family shares, in Hugging Face's layout
    /// (`rotate_half` rotary pairs).
    pub fn llama_like(&self) -> Result<Config> {
        self.require("hidden_act", &Value::from("silu"))?;
        self.require("mlp_bias", &Value::from(false))?;
        let dim = self.int("hidden_size")?;
        let n_heads = self.int("num_attention_heads")?;
        if n_heads == 0 {
            return Err(self.bad("'num_attention_heads' is 0".into()));
        }
        Ok(Config {
            dim,
            hidden_dim: self.int("intermediate_size")?,
            n_layers: self.int("num_hidden_layers")?,
            n_heads,
            n_kv_heads: self.int_or("num_key_value_heads", n_heads)?,
            vocab_size: self.int("vocab_size")?,
            seq_len: self.int("max_position_embeddings")?,
            head_dim: self.int_or("head_dim", dim / n_heads)?,
            rope_theta: self.rope_theta()?,
            norm_eps: self.float_or("rms_norm_eps", 1e-6)?,
            rope_style: RopeStyle::Half,
            rope_scaling: self.rope_scaling()?,
            ..Config::default()
        })
    }

    /// `rope_theta`: at the top level, or (transformers 5) in `rope_parameters`.
    fn rope_theta(&self) -> Result<f32> {
        match self
            .get("rope_parameters")
            .and_then(|p| p.get("rope_theta"))
        {
            Some(v) => v
                .as_f64()
                .map(|v| v as f32)
                .ok_or_else(|| self.bad("rope_parameters.rope_theta is not a number".into())),
            None => self.float_or("rope_theta", 10000.0),
        }
    }

    /// `rope_scaling` (or transformers 5's `rope_parameters`): absent,
    /// "default", "linear" or "llama3".
    fn rope_scaling(&self) -> Result<Option<RopeScaling>> {
        let Some(s) = self
            .get("rope_parameters")
            .or_else(|| self.get("rope_scaling"))
        else {
            return Ok(None);
        };
        let kind = s
            .get("rope_type")
            .or_else(|| s.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let num = |key: &str| -> Result<f64> {
            s.get(key)
                .and_then(Value::as_f64)
                .ok_or_else(|| self.bad(format!("rope_scaling.{key} is missing or not a number")))
        };
        Ok(match kind {
            "default" => None,
            "linear" => Some(RopeScaling::Linear {
                factor: num("factor")? as f32,
            }),
            "llama3" => Some(RopeScaling::Llama3 {
                factor: num("factor")? as f32,
                low_freq_factor: num("low_freq_factor")? as f32,
                high_freq_factor: num("high_freq_factor")? as f32,
                original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
            }),
            other => {
                return Err(self.bad(format!(
                    "rope_scaling type '{other}' is not supported (default, linear, llama3)"
                )));
            }
        })
    }

    /// Caps the context at the attention window, if the model has one: the
    /// engine attends to every cached position, which equals sliding-window
    /// attention only while the sequence fits in the window.
    pub fn cap_at_window(&self, config: &mut Config, key: &str) -> Result<()> {
        if let Some(w) = self.get(key) {
            let w = w
                .as_u64()
                .ok_or_else(|| self.bad(format!("'{key}' is not an integer")))?
                as usize;
            config.seq_len = config.seq_len.min(w.max(1));
        }
        Ok(())
    }
}

/// tinyllm's name of a Hugging Face tensor name, or None for tensors that
/// carry nothing the engine needs (precomputed rotary tables).
pub fn tinyllm_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd".into()),
        "model.norm.weight" => return Some("output_norm".into()),
        "lm_head.weight" => return Some("output".into()),
        _ => {}
    }
    if let Some((i, rest)) = hf
        .strip_prefix("model.layers.")
        .and_then(|r| r.split_once('.'))
        && i.parse::<usize>().is_ok()
    {
        if rest.ends_with("rotary_emb.inv_freq") {
            return None;
        }
        if let Some((ours, _)) = LAYER_NAMES.iter().find(|(_, theirs)| *theirs == rest) {
            return Some(format!("blk.{i}.{ours}"));
        }
    }
    Some(hf.to_string())
}

/// Hugging Face's name of a tinyllm tensor name (for messages).
pub fn hf_name(ours: &str) -> String {
    match ours {
        "token_embd" => return "model.embed_tokens.weight".into(),
        "output_norm" => return "model.norm.weight".into(),
        "output" => return "lm_head.weight".into(),
        _ => {}
    }
    if let Some((i, rest)) = ours.strip_prefix("blk.").and_then(|r| r.split_once('.'))
        && let Some((_, theirs)) = LAYER_NAMES.iter().find(|(o, _)| *o == rest)
    {
        return format!("model.layers.{i}.{theirs}");
    }
    ours.to_string()
}

/// Per-block tensors: tinyllm's name, Hugging Face's.
const LAYER_NAMES: [(&str, &str); 14] = [
    ("attn_norm", "input_layernorm.weight"),
    ("attn_q", "self_attn.q_proj.weight"),
    ("attn_k", "self_attn.k_proj.weight"),
    ("attn_v", "self_attn.v_proj.weight"),
    ("attn_output", "self_attn.o_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_q_norm", "self_attn.q_norm.weight"),
    ("attn_k_norm", "self_attn.k_norm.weight"),
    ("ffn_norm", "post_attention_layernorm.weight"),
    ("ffn_gate", "mlp.gate_proj.weight"),
    ("ffn_up", "mlp.up_proj.weight"),
    ("ffn_down", "mlp.down_proj.weight"),
];
