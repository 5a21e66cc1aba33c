//! `qwen2`: Qwen1.5, Qwen2 and Qwen2.5: Llama's block with biases on the
//! query, key and value projections.

use super::HfConfig;
use crate::config::Config;
use crate::error::Result;

/// Reads a `qwen2` config. With `use_sliding_window` the window caps the
/// context (see [`HfConfig::cap_at_window`]).
pub fn config(hf: &HfConfig<'_>) -> Result<Config> {
    let mut c = hf.llama_like()?;
    c.attn_bias = true;
    if hf.bool_or("use_sliding_window", false)? {
        hf.cap_at_window(&mut c, "sliding_window")?;
    }
    Ok(c)
}
