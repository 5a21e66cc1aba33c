//! The dimensions and constants of a Llama-family model.

use crate::error::{Error, Result};
use std::path::Path;

/// The largest value accepted for any one dimension. It keeps every size
/// computed from a header well inside `u64` and rejects garbage early.
const MAX_DIM: usize = 1 << 20;

/// What the forward pass needs to know about a model (also the `config`
/// object of a tinyllm file's header).
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
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(Error::format(
                path,
                format!("rope_theta = {} is invalid", self.rope_theta),
            ));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps >= 0.0) {
            return Err(Error::format(
                path,
                format!("norm_eps = {} is invalid", self.norm_eps),
            ));
        }
        Ok(())
    }
}
