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

    /// The forward pass produced a NaN or an infinite logit: the weights
    /// overflow the float range (finite but absurd values) or the file was
    /// changed while mapped.
    #[error(
        "the model computed a NaN or infinite logit ({what}); its weights overflow the float \
         range, so the file is likely corrupt"
    )]
    NonFinite { what: String },

    /// An argument is out of its valid range.
    #[error("{0}")]
    InvalidArgument(String),

    /// The GPU could not compile or run the kernels (Metal's message, or the
    /// emulator's with the kernel and source line of a fault).
    #[error("GPU: {0}")]
    Gpu(String),
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The longest reason a [`Error::Format`] carries, in bytes. Reasons quote
/// names read from the file; a corrupt length can make such a name as long as
/// the file, and a message must stay readable whatever the file holds.
pub const MAX_REASON: usize = 600;

impl Error {
    /// A [`Error::Format`] for `path`, its reason cut to [`MAX_REASON`] bytes.
    pub fn format(path: &Path, reason: impl Into<String>) -> Self {
        Error::Format {
            path: path.to_path_buf(),
            reason: bounded(reason.into(), MAX_REASON),
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

/// `text`, or its first and last parts with a note of how much was cut
/// between them when it is longer than `max` bytes.
pub fn bounded(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let head = floor_char_boundary(&text, max * 2 / 3);
    let tail = ceil_char_boundary(&text, text.len() - max / 4);
    format!(
        "{} [... {} bytes cut ...] {}",
        &text[..head],
        tail - head,
        &text[tail..]
    )
}

/// A name read from a file, quoted in a message: at most `max` bytes of it.
pub fn short(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_string();
    }
    let end = floor_char_boundary(name, max);
    format!("{}... ({} bytes)", &name[..end], name.len())
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reasons_are_cut_in_the_middle() {
        let reason = format!("tensor '{}' is missing", "é".repeat(100_000));
        let Error::Format { reason: cut, .. } = Error::format(Path::new("m.gguf"), reason) else {
            unreachable!()
        };
        assert!(cut.len() <= MAX_REASON + 40, "{} bytes", cut.len());
        assert!(cut.starts_with("tensor 'é") && cut.ends_with("é' is missing"));
        assert!(cut.contains("bytes cut"));
        assert_eq!(short("abcdef", 3), "abc... (6 bytes)");
        assert_eq!(short("abc", 3), "abc");
    }
}
