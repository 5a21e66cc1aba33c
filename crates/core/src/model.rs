//! A model: its configuration and weights, opened from a file.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::format::{self, FileKind};
use crate::weights::Weights;
use std::path::{Path, PathBuf};

/// An opened model file. Immutable; share it between sessions with `Arc`.
#[derive(Debug)]
pub struct Model {
    pub config: Config,
    pub weights: Weights,
    pub kind: FileKind,
    pub path: PathBuf,
}

impl Model {
    /// Opens the model file at `path`, recognising its kind by content.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = format::open(path)?;
        Ok(Model {
            config: file.config,
            weights: file.weights,
            kind: file.kind,
            path: path.to_path_buf(),
        })
    }

    /// Checks that a tokenizer read from `path` with `vocab_size` tokens fits
    /// this model.
    pub fn check_tokenizer(&self, path: &Path, vocab_size: usize) -> Result<()> {
        if vocab_size != self.config.vocab_size {
            return Err(Error::format(
                path,
                format!(
                    "the tokenizer has {vocab_size} tokens but the model {} has a vocabulary of {}",
                    self.path.display(),
                    self.config.vocab_size
                ),
            ));
        }
        Ok(())
    }
}
