//! `qwen3`: Qwen3 (dense): Llama's block with an RMSNorm on each query and
//! key head before the rotation, and a head width given apart from the
//! model width.

use super::HfConfig;
use crate::config::Config;
use crate::error::Result;
use serde_json::Value;

/// Reads a `qwen3` config. Its optional `attention_bias` would also bias
/// the output projection, which the engine does not have.
pub fn config(hf: &HfConfig<'_>) -> Result<Config> {
    hf.require("attention_bias", &Value::from(false))?;
    let mut c = hf.llama_like()?;
    c.qk_norm = true;
    hf.qwen_window(&mut c)?;
    Ok(c)
}
