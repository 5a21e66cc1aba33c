//! The one error type of the engine.
//!
//! Every failure a user can cause (a missing or malformed file, a prompt that
//! does not fit, a bad argument) is a variant here, so the Python bindings can
//! map each to the exception a Python user expects in one place.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system could not open or map a file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A model or tokenizer file is truncated, corrupt or of an unknown kind.
    #[error("{}: {reason}", path.display())]
    Format { path: PathBuf, reason: String },

    /// The prompt (plus what must follow it) does not fit the context window.
    #[error("{tokens} tokens do not fit the context of {context} tokens")]
    ContextLength { tokens: usize, context: usize },

    /// An argument is out of its valid range.
    #[error("{0}")]
    InvalidArgument(String),
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A [`Error::Format`] for `path`.
    pub fn format(path: &Path, reason: impl Into<String>) -> Self {
        Error::Format {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
