//! `mistral`: Mistral 7B and its descendants: Llama's block; v0.1 attends
//! within a sliding window of 4096 positions.

use super::HfConfig;
use crate::config::Config;
use crate::error::Result;

/// Reads a `mistral` config; a sliding window caps the context (see
/// [`HfConfig::cap_at_window`]).
pub fn config(hf: &HfConfig<'_>) -> Result<Config> {
    let mut c = hf.llama_like()?;
    hf.cap_at_window(&mut c, "sliding_window")?;
    Ok(c)
}
