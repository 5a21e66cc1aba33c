//! Model families, one file each, named after Hugging Face's `model_type`.
//!
//! Every family runs on the one Llama forward pass (`crate::forward`); a
//! family's file says how its `config.json` maps onto [`Config`], which
//! variations of the block it uses, what its GGUF files hold beyond the
//! shared keys, and which of its Hugging Face tensor names differ from the
//! shared ones here ([`Family`]).

pub mod gemma2;
pub mod gemma3;
pub mod granite;
pub mod llama;
pub mod mistral;
pub mod olmo2;
pub mod olmo3;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
pub mod smollm3;

use crate::config::{
    Activation, Config, RopeScaling, RopeStyle, longrope_magnitude, yarn_magnitude,
};
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// Reads a family's `config.json` into a [`Config`].
pub type ReadConfig = fn(&HfConfig<'_>) -> Result<Config>;

/// Per-block tensor names, tinyllm's and Hugging Face's.
pub type LayerNames = &'static [(&'static str, &'static str)];

/// What the loaders know of a family.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    /// Hugging Face's `model_type` (also the architecture of tinyllm files).
    pub model_type: &'static str,
    /// Reads its `config.json`.
    pub config: ReadConfig,
    /// Its block's Hugging Face tensor names that differ from (or are
    /// missing in) the shared [`LAYER_NAMES`]; they are looked up first.
    pub layer_names: LayerNames,
}

const fn family(model_type: &'static str, config: ReadConfig) -> Family {
    Family {
        model_type,
        config,
        layer_names: &[],
    }
}

/// The families by `model_type`.
pub const FAMILIES: [Family; 11] = [
    gemma2::FAMILY,
    gemma3::FAMILY,
    family("granite", granite::config),
    family("llama", llama::config),
    family("mistral", mistral::config),
    olmo2::FAMILY,
    olmo3::FAMILY,
    phi3::FAMILY,
    family("qwen2", qwen2::config),
    family("qwen3", qwen3::config),
    family("smollm3", smollm3::config),
];

/// The family called `model_type`.
pub fn find(model_type: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.model_type == model_type)
}

/// The families' names, for messages.
pub fn names() -> String {
    let names: Vec<&str> = FAMILIES.iter().map(|f| f.model_type).collect();
    names.join(", ")
}

/// A GGUF file's number `{arch}.{key}`, if the file has it.
pub type GgufNumber<'a> = &'a dyn Fn(&str) -> Result<Option<f64>>;

/// Reads what a family keeps in GGUF metadata beyond the keys every
/// family shares.
pub type ReadGguf = fn(GgufNumber<'_>, &mut Config) -> Result<()>;

/// A GGUF architecture (llama.cpp's name) the engine reads.
#[derive(Clone, Copy, Debug)]
pub struct GgufFamily {
    /// `general.architecture`, and the prefix of its keys.
    pub arch: &'static str,
    /// The family it is (a [`Family::model_type`]).
    pub family: &'static str,
    /// The rotary layout llama.cpp stores its Q/K rows in: it permutes
    /// Llama-like rows into pairs (2j, 2j+1) and keeps the others as trained.
    pub rope_style: RopeStyle,
    /// Reads its own keys.
    pub read: ReadGguf,
}

const fn gguf(
    arch: &'static str,
    family: &'static str,
    rope_style: RopeStyle,
    read: ReadGguf,
) -> GgufFamily {
    GgufFamily {
        arch,
        family,
        rope_style,
        read,
    }
}

/// The GGUF architectures the engine reads.
pub const GGUF_FAMILIES: [GgufFamily; 9] = [
    gguf("gemma2", "gemma2", RopeStyle::Half, gemma2::gguf),
    gguf("gemma3", "gemma3_text", RopeStyle::Half, gemma3::gguf),
    gguf("granite", "granite", RopeStyle::Interleaved, granite::gguf),
    gguf("llama", "llama", RopeStyle::Interleaved, no_gguf_keys),
    gguf("olmo2", "olmo2", RopeStyle::Half, olmo2::gguf),
    gguf("phi3", "phi3", RopeStyle::Half, phi3::gguf),
    gguf("qwen2", "qwen2", RopeStyle::Half, no_gguf_keys),
    gguf("qwen3", "qwen3", RopeStyle::Half, no_gguf_keys),
    gguf("smollm3", "smollm3", RopeStyle::Interleaved, smollm3::gguf),
];

fn no_gguf_keys(_: GgufNumber<'_>, _: &mut Config) -> Result<()> {
    Ok(())
}

/// Whether `name` is a family (or tinyllm architecture) the engine runs.
pub fn is_known(name: &str) -> bool {
    find(name).is_some()
}

/// Reads a Hugging Face `config.json` (already parsed) into a [`Config`];
/// `path` names the file in errors.
pub fn config_from_hf(json: &Value, path: &Path) -> Result<(String, Config)> {
    let hf = HfConfig { json, path };
    let model_type = hf.str("model_type")?;
    if let Some(w) = WRAPPERS.iter().find(|w| w.model_type == model_type) {
        return config_from_hf(&w.text_config(&hf)?, path);
    }
    let Some(family) = find(model_type) else {
        return Err(hf.bad(format!(
            "unknown model_type '{model_type}' (supported: {})",
            names()
        )));
    };
    let config = (family.config)(&hf)?;
    config.validate(path)?;
    Ok((model_type.to_string(), config))
}

/// A checkpoint that wraps a language model of a family with more (Gemma 3's
/// image-text models: a vision tower and a projector beside the language
/// model, whose settings are the config's `text_config`). The engine runs
/// the language model; [`tinyllm_name`] reads its tensors under their
/// wrapped names and leaves the rest.
#[derive(Clone, Copy, Debug)]
pub struct Wrapper {
    /// The checkpoint's `model_type`.
    pub model_type: &'static str,
    /// The language model's family.
    pub text: &'static str,
    /// The language model's settings that `text_config` may leave out, as
    /// transformers' config class of the family defaults them.
    pub defaults: fn() -> Value,
    /// Whether the classifier is tied when the config does not say.
    pub tied: bool,
}

/// The wrappers the engine reads.
pub const WRAPPERS: [Wrapper; 1] = [gemma3::WRAPPER];

impl Wrapper {
    /// The language model's config: the defaults, then `text_config` over
    /// them, under the family's `model_type`.
    fn text_config(&self, hf: &HfConfig<'_>) -> Result<Value> {
        let Some(Value::Object(text)) = hf.get("text_config") else {
            return Err(hf.bad(format!(
                "'text_config' is missing or not an object (a '{}' checkpoint keeps its \
                 language model's settings there)",
                self.model_type
            )));
        };
        let mut merged = (self.defaults)();
        let map = merged.as_object_mut().expect("defaults are an object");
        map.extend(text.iter().map(|(k, v)| (k.clone(), v.clone())));
        map.insert("model_type".into(), self.text.into());
        Ok(merged)
    }
}

/// Whether a Hugging Face config ties the classifier to the embeddings
/// (`tie_word_embeddings`; a wrapper's, else its `text_config`'s, else the
/// wrapper's default; false for a plain config that does not say).
pub fn tied_classifier(json: &Value) -> bool {
    let flag = |v: &Value| v.get("tie_word_embeddings").and_then(Value::as_bool);
    let wrapper = json
        .get("model_type")
        .and_then(Value::as_str)
        .and_then(|t| WRAPPERS.iter().find(|w| w.model_type == t));
    match wrapper {
        None => flag(json).unwrap_or(false),
        Some(w) => flag(json)
            .or_else(|| json.get("text_config").and_then(flag))
            .unwrap_or(w.tied),
    }
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
            activation: self.activation()?,
            ..Config::default()
        })
    }

    /// The feed-forward's activation: `hidden_activation` (Gemma's key) or
    /// `hidden_act`, "silu" by default.
    fn activation(&self) -> Result<Activation> {
        let key = ["hidden_activation", "hidden_act"]
            .into_iter()
            .find(|k| self.get(k).is_some());
        let Some(key) = key else {
            return Ok(Activation::Silu);
        };
        match self.str(key)? {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_tanh" => Ok(Activation::GeluTanh),
            other => Err(self.bad(format!(
                "'{key}' = \"{other}\" is not supported (silu, gelu_pytorch_tanh)"
            ))),
        }
    }

    /// A soft cap: a positive number, or none when absent or null.
    pub fn softcap(&self, key: &str) -> Result<Option<f32>> {
        if self.get(key).is_none() {
            return Ok(None);
        }
        self.positive_or(key, 0.0).map(Some)
    }

    /// A positive integer, or none when absent or null.
    pub fn positive_int(&self, key: &str) -> Result<Option<usize>> {
        if self.get(key).is_none() {
            return Ok(None);
        }
        match self.int(key)? {
            0 => Err(self.bad(format!("'{key}' is 0"))),
            v => Ok(Some(v)),
        }
    }

    /// The sliding layers by `layer_types` ("sliding_attention" or
    /// "full_attention" for each of the `n_layers`), if the key is there.
    pub fn layer_types(&self, n_layers: usize) -> Result<Option<Vec<usize>>> {
        let Some(v) = self.get("layer_types") else {
            return Ok(None);
        };
        let types: Option<Vec<&str>> = v
            .as_array()
            .and_then(|a| a.iter().map(Value::as_str).collect());
        let bad = || {
            self.bad(format!(
                "'layer_types' must give \"sliding_attention\" or \"full_attention\" \
                 for each of the {n_layers} layers"
            ))
        };
        let types = types.filter(|t| t.len() == n_layers).ok_or_else(bad)?;
        let mut sliding = Vec::new();
        for (l, t) in types.iter().enumerate() {
            match *t {
                "sliding_attention" => sliding.push(l),
                "full_attention" => {}
                _ => return Err(bad()),
            }
        }
        Ok(Some(sliding))
    }

    /// transformers 5's `rope_parameters` with an object per layer type
    /// (Gemma 3): each one's base, if given, and scaling, for the
    /// "full_attention" and the "sliding_attention" layers.
    #[allow(clippy::type_complexity)]
    pub fn rope_by_layer_type(
        &self,
    ) -> Result<
        Option<(
            (Option<f32>, Option<RopeScaling>),
            (Option<f32>, Option<RopeScaling>),
        )>,
    > {
        let Some(p) = self.get("rope_parameters") else {
            return Ok(None);
        };
        let (Some(full), Some(sliding)) = (p.get("full_attention"), p.get("sliding_attention"))
        else {
            return Ok(None);
        };
        let read = |s: &Value, what: &str| -> Result<(Option<f32>, Option<RopeScaling>)> {
            let theta = match s.get("rope_theta") {
                None => None,
                Some(v) => Some(v.as_f64().ok_or_else(|| {
                    self.bad(format!("rope_parameters.{what}.rope_theta is not a number"))
                })? as f32),
            };
            Ok((theta, self.scaling_of(s)?))
        };
        Ok(Some((
            read(full, "full_attention")?,
            read(sliding, "sliding_attention")?,
        )))
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
        self.scaling_of(s)
    }

    /// One rotary-scaling object (`rope_type` or `type`, and its numbers).
    fn scaling_of(&self, s: &Value) -> Result<Option<RopeScaling>> {
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
            "yarn" => {
                let original = match s.get("original_max_position_embeddings") {
                    Some(v) => v.as_u64().map(|v| v as usize).ok_or_else(|| {
                        self.bad(
                            "rope_scaling.original_max_position_embeddings is not an integer"
                                .into(),
                        )
                    })?,
                    None => self.int_or(
                        "original_max_position_embeddings",
                        self.int("max_position_embeddings")?,
                    )?,
                };
                let opt = |key: &str| s.get(key).and_then(Value::as_f64).filter(|v| *v != 0.0);
                let factor = match opt("factor") {
                    Some(f) => f,
                    None => self.int("max_position_embeddings")? as f64 / original as f64,
                };
                let attention_factor = match opt("attention_factor") {
                    Some(a) => a as f32,
                    None => yarn_magnitude(factor, opt("mscale"), opt("mscale_all_dim")),
                };
                Some(RopeScaling::Yarn {
                    factor: factor as f32,
                    original_max_position_embeddings: original,
                    beta_fast: opt("beta_fast").unwrap_or(32.0) as f32,
                    beta_slow: opt("beta_slow").unwrap_or(1.0) as f32,
                    truncate: s.get("truncate").and_then(Value::as_bool).unwrap_or(true),
                    attention_factor,
                })
            }
            "longrope" => {
                let factors = |key: &str| -> Result<Vec<f32>> {
                    s.get(key)
                        .and_then(Value::as_array)
                        .and_then(|a| a.iter().map(|v| v.as_f64().map(|v| v as f32)).collect())
                        .ok_or_else(|| {
                            self.bad(format!(
                                "rope_scaling.{key} is missing or not a list of numbers"
                            ))
                        })
                };
                let original = self.longrope_original(s)?;
                Some(RopeScaling::LongRope {
                    short_factor: factors("short_factor")?,
                    long_factor: factors("long_factor")?,
                    original_max_position_embeddings: original,
                    attention_factor: self.longrope_attention_factor(s, original)?,
                })
            }
            other => {
                return Err(self.bad(format!(
                    "rope_scaling type '{other}' is not supported (default, linear, llama3, longrope, \
                     yarn)"
                )));
            }
        })
    }

    /// LongRoPE's pretrained context: the config's
    /// `original_max_position_embeddings` (Phi-3 keeps it there), else the
    /// scaling object's, else `max_position_embeddings`.
    fn longrope_original(&self, s: &Value) -> Result<usize> {
        if self.get("original_max_position_embeddings").is_some() {
            return self.int("original_max_position_embeddings");
        }
        match s.get("original_max_position_embeddings") {
            Some(v) => v.as_u64().map(|v| v as usize).ok_or_else(|| {
                self.bad("rope_scaling.original_max_position_embeddings is not an integer".into())
            }),
            None => self.int("max_position_embeddings"),
        }
    }

    /// What LongRoPE multiplies cos and sin by, as transformers computes
    /// it: the scaling's `attention_factor`, else `sqrt(1 + ln(s) /
    /// ln(original))` for the extension `s` (the context over the original
    /// one when the config keeps the original apart, else the scaling's
    /// `factor`), 1 when it does not extend.
    fn longrope_attention_factor(&self, s: &Value, original: usize) -> Result<f32> {
        if let Some(v) = s.get("attention_factor").filter(|v| !v.is_null()) {
            return v
                .as_f64()
                .filter(|v| v.is_finite() && *v > 0.0)
                .map(|v| v as f32)
                .ok_or_else(|| {
                    self.bad("rope_scaling.attention_factor is not a positive number".into())
                });
        }
        if self.get("original_max_position_embeddings").is_some() {
            let context = self.int("max_position_embeddings")?;
            return Ok(longrope_magnitude(context, original));
        }
        let factor = s.get("factor").and_then(Value::as_f64).unwrap_or(1.0);
        Ok(if factor <= 1.0 {
            1.0
        } else {
            (1.0 + factor.ln() / (original as f64).ln()).sqrt() as f32
        })
    }

    /// Qwen's sliding window, when `use_sliding_window` is true: of
    /// `sliding_window` positions (4096 by default), on the layers
    /// `layer_types` lists or else from `max_window_layers` (28 by default)
    /// on, as transformers lays them out.
    pub fn qwen_window(&self, c: &mut Config) -> Result<()> {
        if !self.bool_or("use_sliding_window", false)? {
            return Ok(());
        }
        c.sliding_window = Some(self.positive_int("sliding_window")?.unwrap_or(4096));
        c.sliding_layers = match self.layer_types(c.n_layers)? {
            Some(layers) => layers,
            None => (self.int_or("max_window_layers", 28)?..c.n_layers).collect(),
        };
        Ok(())
    }
}

/// tinyllm's name of a Hugging Face tensor name of `family`, or None for
/// tensors that carry nothing the engine needs (precomputed rotary tables).
pub fn tinyllm_name(hf: &str, family: &Family) -> Option<String> {
    // A wrapper's language model, under either of transformers' layouts;
    // its vision tower and projector are not part of it.
    for (wrapped, plain) in [
        ("language_model.model.", "model."),
        ("model.language_model.", "model."),
        ("language_model.lm_head.", "lm_head."),
    ] {
        if let Some(rest) = hf.strip_prefix(wrapped) {
            return tinyllm_name(&format!("{plain}{rest}"), family);
        }
    }
    let outside = ["vision_tower.", "multi_modal_projector."];
    if outside
        .iter()
        .any(|p| hf.starts_with(p) || hf.strip_prefix("model.").is_some_and(|r| r.starts_with(p)))
    {
        return None;
    }
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
        let mut names = family.layer_names.iter().chain(LAYER_NAMES.iter());
        if let Some((ours, _)) = names.find(|(_, theirs)| *theirs == rest) {
            return Some(format!("blk.{i}.{ours}"));
        }
    }
    Some(hf.to_string())
}

/// Hugging Face's name of a tinyllm tensor name of `family` (for messages).
pub fn hf_name(ours: &str, family: &Family) -> String {
    match ours {
        "token_embd" => return "model.embed_tokens.weight".into(),
        "output_norm" => return "model.norm.weight".into(),
        "output" => return "lm_head.weight".into(),
        _ => {}
    }
    if let Some((i, rest)) = ours.strip_prefix("blk.").and_then(|r| r.split_once('.'))
        && let Some((_, theirs)) =
            (family.layer_names.iter().chain(LAYER_NAMES.iter())).find(|(o, _)| *o == rest)
    {
        return format!("model.layers.{i}.{theirs}");
    }
    ours.to_string()
}

/// Per-block tensors: tinyllm's name, Hugging Face's.
pub const LAYER_NAMES: [(&str, &str); 14] = [
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
