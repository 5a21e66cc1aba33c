//! `granite`: IBM Granite 3 (dense): Llama's block with four scalar
//! multipliers: on the token embeddings, on the attention scores (in place
//! of `1 / sqrt(head_dim)`), on each sub-layer's output before it joins the
//! residual stream, and a divisor of the logits.

use super::{GgufNumber, HfConfig};
use crate::config::Config;
use crate::error::Result;
use serde_json::Value;

/// Reads a `granite` config.
pub fn config(hf: &HfConfig<'_>) -> Result<Config> {
    hf.require("attention_bias", &Value::from(false))?;
    let mut c = hf.llama_like()?;
    c.embedding_scale = hf.positive_or("embedding_multiplier", 1.0)?;
    c.residual_scale = hf.positive_or("residual_multiplier", 1.0)?;
    c.attention_scale = Some(hf.positive_or("attention_multiplier", 1.0)?);
    c.logit_scale = hf.positive_or("logits_scaling", 1.0)?;
    Ok(c)
}

/// Reads the multipliers of a `granite` GGUF file. An attention scale of 0
/// (or none) means `1 / sqrt(head_dim)`, as llama.cpp reads it.
pub fn gguf(number: GgufNumber<'_>, c: &mut Config) -> Result<()> {
    let or_one = |v: Option<f64>| v.unwrap_or(1.0) as f32;
    c.embedding_scale = or_one(number("embedding_scale")?);
    c.residual_scale = or_one(number("residual_scale")?);
    c.logit_scale = or_one(number("logit_scale")?);
    c.attention_scale = number("attention.scale")?
        .filter(|&v| v != 0.0)
        .map(|v| v as f32);
    Ok(())
}
