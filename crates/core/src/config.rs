//! The dimensions and constants of a Llama-family model.

use crate::error::{Error, Result};
use std::path::Path;

/// The largest value accepted for any one dimension. It keeps every size
/// computed from a header well inside `u64` and rejects garbage early.
const MAX_DIM: usize = 1 << 20;
/// The largest RMSNorm epsilon accepted.
const MAX_NORM_EPS: f32 = 0.1;

/// What the forward pass needs to know about a model (also the `config`
/// object of a tinyllm file's header). The fields after `norm_eps` describe
/// the variations of the Llama block that the supported families use; their
/// defaults are Llama 2's, so a header written before they existed reads
/// as it always did.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Width of the residual stream.
    pub dim: usize,
    /// Width of the feed-forward layer.
    pub hidden_dim: usize,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads (`n_heads` without grouped-query attention).
    pub n_kv_heads: usize,
    /// Number of tokens in the vocabulary.
    pub vocab_size: usize,
    /// The longest context the model was trained for.
    pub seq_len: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Base of the rotary position embedding's frequencies.
    pub rope_theta: f32,
    /// The epsilon inside RMSNorm's square root.
    pub norm_eps: f32,
    /// Which elements of a head rotate together.
    #[serde(default, skip_serializing_if = "is_default")]
    pub rope_style: RopeStyle,
    /// How the rotary frequencies are stretched for long contexts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// Whether the query, key and value projections add a bias (Qwen2).
    #[serde(default, skip_serializing_if = "is_default")]
    pub attn_bias: bool,
    /// Whether each query and key head is RMS-normalised before the
    /// rotation, with gains of `head_dim` (Qwen3).
    #[serde(default, skip_serializing_if = "is_default")]
    pub qk_norm: bool,
    /// Multiplies the token embeddings (Granite's `embedding_multiplier`).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub embedding_scale: f32,
    /// Multiplies each sub-layer's output before it joins the residual
    /// stream (Granite's `residual_multiplier`).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub residual_scale: f32,
    /// The attention scores' scale when it is not `1 / sqrt(head_dim)`
    /// (Granite's `attention_multiplier`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_scale: Option<f32>,
    /// What the logits are divided by (Granite's `logits_scaling`).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub logit_scale: f32,
    /// The layers whose queries and keys are not rotated (SmolLM3's
    /// "NoPE" layers), ascending.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_rope_layers: Vec<usize>,
    /// The feed-forward gate's activation.
    #[serde(default, skip_serializing_if = "is_default")]
    pub activation: Activation,
    /// Added to every RMSNorm's gains as they are loaded: Gemma scales by
    /// `1 + w` (its GGUF files hold `1 + w` already, and say 0).
    #[serde(default, skip_serializing_if = "is_default")]
    pub norm_offset: f32,
    /// Whether each sub-layer's output is RMS-normalised again before it
    /// joins the residual stream (Gemma 2 and 3, OLMo 2:
    /// `post_attention_norm`, `post_ffw_norm`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub post_norms: bool,
    /// Whether each sub-layer normalises its input (`attn_norm`,
    /// `ffn_norm`); OLMo 2's read the residual stream as it is.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub pre_norms: bool,
    /// Whether the Q/K norms span all the heads of a token, with gains of
    /// `n_heads * head_dim` and `n_kv_heads * head_dim` (OLMo 2), rather
    /// than each head (`qk_norm`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub qk_norm_whole: bool,
    /// Attention scores `s` become `cap * tanh(s / cap)` (Gemma 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_softcap: Option<f32>,
    /// Logits `l` become `cap * tanh(l / cap)` (Gemma 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_softcap: Option<f32>,
    /// The positions a token sees in the layers of `sliding_layers`: itself
    /// and the `sliding_window - 1` before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// The layers that attend within `sliding_window`, ascending.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sliding_layers: Vec<usize>,
    /// The rotary base of the sliding layers, which then use no
    /// `rope_scaling` (Gemma 3: 10,000 there, 1,000,000 with linear
    /// scaling on the global layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_rope_theta: Option<f32>,
    /// The leading values of each head that rotate, when not all do
    /// (Phi-4-mini's `partial_rotary_factor`, a GGUF
    /// `rope.dimension_count` below the head size); the rest pass through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotary_dim: Option<usize>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn one() -> f32 {
    1.0
}

fn is_one(v: &f32) -> bool {
    *v == 1.0
}

fn yes() -> bool {
    true
}

fn is_true(v: &bool) -> bool {
    *v
}

/// The pairing of rotary embeddings. The same weights need the layout they
/// were trained with; converters permute Q and K rows between the two.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RopeStyle {
    /// Elements `(2j, 2j + 1)` of a head rotate together (Meta's original
    /// code, llama2.c, llama.cpp's GGUF Llama files).
    #[default]
    Interleaved,
    /// Elements `(j, j + head_dim / 2)` rotate together (Hugging Face's
    /// `rotate_half`; GPT-NeoX).
    Half,
}

/// The activation of the feed-forward gate: `act(x @ gate^T) * (x @ up^T)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x * sigmoid(x)` (SwiGLU: Llama, Mistral, Qwen, ...).
    #[default]
    Silu,
    /// GELU by its tanh approximation, `0.5 x (1 + tanh(sqrt(2/pi) (x +
    /// 0.044715 x^3)))` (GeGLU: Gemma's `gelu_pytorch_tanh`).
    GeluTanh,
}

/// A rescaling of the rotary frequencies.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RopeScaling {
    /// Every frequency divided by `factor` (positions interpolated).
    Linear { factor: f32 },
    /// Llama 3.1's: low frequencies divided by `factor`, high ones kept,
    /// a smooth blend between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
    /// LongRoPE (Phi-3's 128k models, Phi-3.5, Phi-4-mini): pair `j`'s
    /// frequency divided by `long_factor[j]` when the context is longer
    /// than `original_max_position_embeddings`, else by `short_factor[j]`
    /// (llama.cpp's rule: one set for a whole context, so every cached key
    /// turns as the queries do; transformers switches by the length of each
    /// call instead). `attention_factor` multiplies cos and sin (so only the
    /// values that rotate, when not all do).
    LongRope {
        short_factor: Vec<f32>,
        long_factor: Vec<f32>,
        original_max_position_embeddings: usize,
        attention_factor: f32,
    },
    /// YaRN (OLMo 3, gpt-oss, Qwen's long-context settings): with `L` the
    /// original context, pairs that turn fewer than `beta_slow` times over
    /// `L` positions are interpolated (`f / factor`), pairs that turn more
    /// than `beta_fast` times are kept, and a linear ramp over the pair
    /// index blends between (its ends rounded outwards when `truncate`);
    /// `attention_factor` multiplies cos and sin.
    Yarn {
        factor: f32,
        original_max_position_embeddings: usize,
        beta_fast: f32,
        beta_slow: f32,
        truncate: bool,
        attention_factor: f32,
    },
}

/// YaRN's default `attention_factor` for an extension by `factor`:
/// `0.1 ln(factor) + 1` (1 when it does not extend), or with `mscale` and
/// `mscale_all_dim` given, the ratio of those two such terms.
pub fn yarn_magnitude(factor: f64, mscale: Option<f64>, mscale_all_dim: Option<f64>) -> f32 {
    let m = |scale: f64| {
        if factor <= 1.0 {
            1.0
        } else {
            0.1 * scale * factor.ln() + 1.0
        }
    };
    match (mscale, mscale_all_dim) {
        (Some(a), Some(b)) if a != 0.0 && b != 0.0 => (m(a) / m(b)) as f32,
        _ => m(1.0) as f32,
    }
}

/// What LongRoPE multiplies cos and sin by when a context of `original`
/// positions is extended to `context`: `sqrt(1 + ln(s) / ln(original))` for
/// the extension `s = context / original`, 1 when it does not extend.
pub fn longrope_magnitude(context: usize, original: usize) -> f32 {
    let s = context as f64 / original as f64;
    if s <= 1.0 {
        1.0
    } else {
        (1.0 + s.ln() / (original as f64).ln()).sqrt() as f32
    }
}

impl Default for Config {
    /// Llama 2's constants around zero dimensions: a base for `..` updates.
    fn default() -> Self {
        Config {
            dim: 0,
            hidden_dim: 0,
            n_layers: 0,
            n_heads: 0,
            n_kv_heads: 0,
            vocab_size: 0,
            seq_len: 0,
            head_dim: 0,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
            rope_style: RopeStyle::Interleaved,
            rope_scaling: None,
            attn_bias: false,
            qk_norm: false,
            embedding_scale: 1.0,
            residual_scale: 1.0,
            attention_scale: None,
            logit_scale: 1.0,
            no_rope_layers: Vec::new(),
            activation: Activation::Silu,
            norm_offset: 0.0,
            post_norms: false,
            pre_norms: true,
            qk_norm_whole: false,
            attn_softcap: None,
            final_softcap: None,
            sliding_window: None,
            sliding_layers: Vec::new(),
            local_rope_theta: None,
            rotary_dim: None,
        }
    }
}

impl Config {
    /// Width of all query heads together, `n_heads * head_dim`.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of all key (or value) heads together, `n_kv_heads * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// YaRN's ramp over the pair index: the pairs (as fractions) where it
    /// starts and ends, transformers' `find_correction_range` (ends rounded
    /// outwards when `truncate`, kept within the pairs, apart by at least
    /// 0.001).
    fn yarn_ramp(&self) -> Option<(f32, f32)> {
        let Some(RopeScaling::Yarn {
            original_max_position_embeddings: old,
            beta_fast,
            beta_slow,
            truncate,
            ..
        }) = self.rope_scaling
        else {
            return None;
        };
        let (dim, base) = (self.rotary_dims() as f64, self.rope_theta as f64);
        // The pair that turns `turns` times over the original context.
        let pair = |turns: f64| {
            dim * (old as f64 / (turns * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
        };
        let (mut low, mut high) = (pair(beta_fast as f64), pair(beta_slow as f64));
        if truncate {
            (low, high) = (low.floor(), high.ceil());
        }
        let (low, mut high) = (low.max(0.0) as f32, high.min(dim - 1.0) as f32);
        if low == high {
            high += 0.001;
        }
        Some((low, high))
    }

    /// What the rotary cos and sin are multiplied by (LongRoPE's
    /// `attention_factor`; else 1).
    pub fn rope_magnitude(&self) -> f32 {
        match &self.rope_scaling {
            Some(RopeScaling::LongRope {
                attention_factor, ..
            })
            | Some(RopeScaling::Yarn {
                attention_factor, ..
            }) => *attention_factor,
            _ => 1.0,
        }
    }

    /// The leading values of each head that rotate: `rotary_dim`, else all.
    pub fn rotary_dims(&self) -> usize {
        self.rotary_dim.unwrap_or(self.head_dim)
    }

    /// Whether layer `l` rotates its queries and keys.
    pub fn rotates(&self, l: usize) -> bool {
        self.no_rope_layers.binary_search(&l).is_err()
    }

    /// The window layer `l` attends within, if it is a sliding layer.
    pub fn window(&self, l: usize) -> Option<usize> {
        self.sliding_window
            .filter(|_| self.sliding_layers.binary_search(&l).is_ok())
    }

    /// Whether layer `l` rotates by the local base
    /// ([`Config::local_rope_frequencies`]) rather than the global one.
    pub fn local_rope(&self, l: usize) -> bool {
        self.local_rope_theta.is_some() && self.sliding_layers.binary_search(&l).is_ok()
    }

    /// The rotary frequencies of the sliding layers when they have a base of
    /// their own (`local_rope_theta`), unscaled.
    pub fn local_rope_frequencies(&self) -> Option<Vec<f32>> {
        let theta = self.local_rope_theta?;
        let local = Config {
            rope_theta: theta,
            rope_scaling: None,
            ..self.clone()
        };
        Some(local.rope_frequencies(None, 0))
    }

    /// The lengths of the Q and K norms' gains (`qk_norm`).
    pub fn qk_norm_widths(&self) -> (usize, usize) {
        if self.qk_norm_whole {
            (self.q_dim(), self.kv_dim())
        } else {
            (self.head_dim, self.head_dim)
        }
    }

    /// What the attention scores `q . k` are multiplied by.
    pub fn attn_scale(&self) -> f32 {
        self.attention_scale
            .unwrap_or_else(|| 1.0 / (self.head_dim as f32).sqrt())
    }

    /// The rotary frequency of each pair `j` of a head, `theta^(-2j /
    /// head_dim)` rescaled as `rope_scaling` says for sequences of up to
    /// `context` positions, then divided by `factors[j]` if given (Llama 3.1
    /// GGUF files store such factors). Computed in f32 as Hugging Face and
    /// llama2.c do.
    pub fn rope_frequencies(&self, factors: Option<&[f32]>, context: usize) -> Vec<f32> {
        let rot = self.rotary_dims();
        let yarn_ramp = self.yarn_ramp();
        (0..rot / 2)
            .map(|j| {
                let f = 1.0 / self.rope_theta.powf((2 * j) as f32 / rot as f32);
                let f = match &self.rope_scaling {
                    None => f,
                    Some(RopeScaling::Linear { factor }) => f / factor,
                    Some(RopeScaling::LongRope {
                        short_factor,
                        long_factor,
                        original_max_position_embeddings: old,
                        ..
                    }) => {
                        let long = context > *old;
                        f / if long {
                            long_factor[j]
                        } else {
                            short_factor[j]
                        }
                    }
                    Some(RopeScaling::Yarn { factor, .. }) => {
                        // (the ramp's share of the kept frequency, as
                        // transformers computes it: in f32 over the pair
                        // index, from ends found in f64)
                        let (low, high) = yarn_ramp.expect("a YaRN scaling");
                        let ramp = ((j as f32 - low) / (high - low)).clamp(0.0, 1.0);
                        let kept = 1.0 - ramp;
                        f / factor * (1.0 - kept) + f * kept
                    }
                    &Some(RopeScaling::Llama3 {
                        factor,
                        low_freq_factor: low,
                        high_freq_factor: high,
                        original_max_position_embeddings: old,
                    }) => {
                        let old = old as f32;
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < old / high {
                            f
                        } else if wavelen > old / low {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    }
                };
                f / factors.map_or(1.0, |v| v[j])
            })
            .collect()
    }

    /// Checks that the dimensions describe a model the engine can run;
    /// `path` names the file they came from in the error.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let fields = [
            ("dim", self.dim),
            ("hidden_dim", self.hidden_dim),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("vocab_size", self.vocab_size),
            ("seq_len", self.seq_len),
            ("head_dim", self.head_dim),
        ];
        for (name, value) in fields {
            if value == 0 || value > MAX_DIM {
                return Err(Error::format(
                    path,
                    format!("{name} = {value} is out of range (1..={MAX_DIM})"),
                ));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(Error::format(
                path,
                format!(
                    "n_heads = {} is not a multiple of n_kv_heads = {}",
                    self.n_heads, self.n_kv_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::format(
                path,
                format!(
                    "head_dim = {} is odd; rotary embeddings rotate pairs",
                    self.head_dim
                ),
            ));
        }
        // Rotary frequencies are theta^(-2j/head_dim): a base of 1 or less
        // would not make them fall from pair to pair (models use 1e4..1e7).
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(Error::format(
                path,
                format!(
                    "rope_theta = {} is invalid; the rotary base must be above 1",
                    self.rope_theta
                ),
            ));
        }
        if let Some(rot) = self.rotary_dim
            && (rot == 0 || rot % 2 == 1 || rot > self.head_dim)
        {
            return Err(Error::format(
                path,
                format!(
                    "rotary_dim = {rot} is invalid: an even number of values up to the head \
                     size {}",
                    self.head_dim
                ),
            ));
        }
        match self.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) if !(factor.is_finite() && factor > 0.0) => {
                return Err(Error::format(
                    path,
                    format!("rope_scaling factor = {factor} is invalid"),
                ));
            }
            Some(RopeScaling::Linear { .. }) => {}
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let ok = factor.is_finite()
                    && factor > 0.0
                    && low_freq_factor > 0.0
                    && high_freq_factor > low_freq_factor
                    && original_max_position_embeddings > 0;
                if !ok {
                    return Err(Error::format(
                        path,
                        format!("llama3 rope_scaling {:?} is invalid", self.rope_scaling),
                    ));
                }
            }
            Some(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                ..
            }) => {
                let positive = |v: f32| v.is_finite() && v > 0.0;
                let ok = [factor, beta_fast, beta_slow, attention_factor]
                    .into_iter()
                    .all(positive)
                    && original_max_position_embeddings > 0;
                if !ok {
                    return Err(Error::format(
                        path,
                        format!("yarn rope_scaling {:?} is invalid", self.rope_scaling),
                    ));
                }
            }
            Some(RopeScaling::LongRope {
                ref short_factor,
                ref long_factor,
                original_max_position_embeddings,
                attention_factor,
            }) => {
                if !(attention_factor.is_finite() && attention_factor > 0.0) {
                    return Err(Error::format(
                        path,
                        format!("longrope attention_factor = {attention_factor} is invalid"),
                    ));
                }
                let half = self.rotary_dims() / 2;
                for (name, f) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                    if f.len() != half || !f.iter().all(|v| v.is_finite() && *v > 0.0) {
                        return Err(Error::format(
                            path,
                            format!(
                                "longrope {name} must hold {half} positive numbers (one per \
                                 rotary pair of a head), not {f:?}"
                            ),
                        ));
                    }
                }
                if original_max_position_embeddings == 0 {
                    return Err(Error::format(
                        path,
                        "longrope original_max_position_embeddings is 0".to_string(),
                    ));
                }
            }
        }
        for (name, layers) in [
            ("no_rope_layers", &self.no_rope_layers),
            ("sliding_layers", &self.sliding_layers),
        ] {
            if !layers.is_sorted_by(|a, b| a < b)
                || layers.last().is_some_and(|&l| l >= self.n_layers)
            {
                return Err(Error::format(
                    path,
                    format!(
                        "{name} = {layers:?} is not an ascending list of layers below {}",
                        self.n_layers
                    ),
                ));
            }
        }
        if !self.pre_norms && !self.post_norms {
            return Err(Error::format(
                path,
                "a block without pre_norms needs post_norms (nothing would be normalised)",
            ));
        }
        if self.qk_norm_whole && !self.qk_norm {
            return Err(Error::format(path, "qk_norm_whole needs qk_norm"));
        }
        if self.sliding_window == Some(0) {
            return Err(Error::format(path, "sliding_window = 0 is invalid"));
        }
        if let Some(t) = self.local_rope_theta
            && !(t.is_finite() && t > 1.0)
        {
            return Err(Error::format(
                path,
                format!("local_rope_theta = {t} is invalid; the rotary base must be above 1"),
            ));
        }
        let caps = [
            ("attn_softcap", self.attn_softcap),
            ("final_softcap", self.final_softcap),
        ];
        for (name, v) in caps {
            if let Some(v) = v
                && !(v.is_finite() && v > 0.0)
            {
                return Err(Error::format(
                    path,
                    format!("{name} = {v} is invalid; it must be a positive number"),
                ));
            }
        }
        if !(self.norm_offset.is_finite() && self.norm_offset.abs() <= 1.0) {
            return Err(Error::format(
                path,
                format!("norm_offset = {} is invalid (0 or 1)", self.norm_offset),
            ));
        }
        let scales = [
            ("embedding_scale", self.embedding_scale),
            ("residual_scale", self.residual_scale),
            ("attention_scale", self.attn_scale()),
            ("logit_scale", self.logit_scale),
        ];
        for (name, v) in scales {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::format(
                    path,
                    format!("{name} = {v} is invalid; it must be a positive number"),
                ));
            }
        }
        // RMSNorm's epsilon only guards against dividing by zero (models use
        // 1e-5 or 1e-6); a large one would silently flatten every activation.
        if !(self.norm_eps.is_finite() && (0.0..=MAX_NORM_EPS).contains(&self.norm_eps)) {
            return Err(Error::format(
                path,
                format!(
                    "norm_eps = {} is invalid; the norm epsilon must be in 0..={MAX_NORM_EPS}",
                    self.norm_eps
                ),
            ));
        }
        Ok(())
    }
}
