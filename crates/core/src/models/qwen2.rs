//! `qwen2`: Qwen1.5, Qwen2 and Qwen2.5: Llama's block with biases on the
//! query, key and value projections.

use super::HfConfig;
use crate::config::Config;
use crate::error::Result;

/// Reads a `qwen2` config, with its sliding window if it uses one (see
/// [`HfConfig::qwen_window`]).
pub fn config(hf: &HfConfig<'_>) -> Result<Config> {
    let mut c = hf.llama_like()?;
    c.attn_bias = true;
    hf.qwen_window(&mut c)?;
    Ok(c)
}
