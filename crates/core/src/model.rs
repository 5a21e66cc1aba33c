//! A model: its configuration and weights, opened from a file.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::format::{self, FileKind, tinyllm::Header};
use crate::tokenizer::Tokenizer;
use crate::weights::Weights;
use std::path::{Path, PathBuf};

/// An opened model file. Immutable; share it between sessions with `Arc`.
#[derive(Debug)]
pub struct Model {
    /// The model family (a Hugging Face `model_type`).
    pub family: String,
    pub config: Config,
    pub weights: Weights,
    pub kind: FileKind,
    pub path: PathBuf,
    /// The tokenizer the file carries, if any.
    pub tokenizer: Option<Tokenizer>,
    /// A tinyllm file's header (provenance, quantization, tensor index).
    pub header: Option<Header>,
}

impl Model {
    /// Opens the model file at `path`, recognising its kind by content.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Ok(Self::from_file(path, format::open(path)?))
    }

    /// [`Model::open`] with every matrix as the file stores it (none
    /// rearranged for the kernels): for comparisons.
    pub fn open_as_stored(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Ok(Self::from_file(path, format::open_as_stored(path)?))
    }

    fn from_file(path: &Path, file: format::ModelFile) -> Self {
        Model {
            family: file.family,
            config: file.config,
            weights: file.weights,
            kind: file.kind,
            path: path.to_path_buf(),
            tokenizer: file.tokenizer,
            header: file.header,
        }
    }

    /// The model's tokenizer: the file at `explicit` if given; else the one
    /// the model file carries; else a llama2.c `tokenizer.bin` or
    /// `tok{vocab_size}.bin` beside the model. Returns it with the path it
    /// was read from (None when it came from the model file).
    pub fn open_tokenizer(&self, explicit: Option<&Path>) -> Result<(Tokenizer, Option<PathBuf>)> {
        let path = match (explicit, &self.tokenizer) {
            (Some(p), _) => p.to_path_buf(),
            (None, Some(t)) => return Ok((t.clone(), None)),
            (None, None) => {
                let dir = self.path.parent().unwrap_or(Path::new("."));
                let names = [
                    "tokenizer.bin".to_string(),
                    format!("tok{}.bin", self.config.vocab_size),
                ];
                let found = names.iter().map(|n| dir.join(n)).find(|p| p.is_file());
                found.ok_or_else(|| {
                    Error::io(
                        &self.path,
                        std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!(
                                "no tokenizer was given and none was found beside the model \
                                 (looked for {} in {}); pass tokenizer=PATH",
                                names.join(" and "),
                                dir.display()
                            ),
                        ),
                    )
                })?
            }
        };
        let tok = Tokenizer::open(&path)?;
        self.check_tokenizer(&path, tok.vocab_size())?;
        Ok((tok, Some(path)))
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
