//! `llama`: Llama 2, Llama 3/3.1/3.2 (with `rope_scaling` of type `llama3`),
//! TinyLlama, SmolLM and the many models trained in Llama's shape.

use super::HfConfig;
use crate::config::Config;
use crate::error::Result;
use serde_json::Value;

/// Reads a `llama` config. Llama's optional `attention_bias` also puts a
/// bias on the output projection, which the engine does not have.
pub fn config(hf: &HfConfig<'_>) -> Result<Config> {
    hf.require("attention_bias", &Value::from(false))?;
    hf.llama_like()
}
