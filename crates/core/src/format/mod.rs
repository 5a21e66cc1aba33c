//! Model files: recognising them by content and mapping their weights.
//!
//! Each file kind has a module that reads its header into a [`Config`],
//! lays out its tensors as descriptors, and checks every extent against the
//! file's length before anything reads a weight.

pub mod gguf;
pub mod llama2c;
pub mod safetensors;
pub mod table;
pub mod tinyllm;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use crate::weights::Weights;
use memmap2::Mmap;
use std::fs::File;
use std::path::Path;

/// The kinds of model file the engine reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// llama2.c's original layout: a 7-int header, then f32 weights.
    Llama2cLegacy,
    /// llama2.c's `export.py` version 1: 256-byte header, f32 weights.
    Llama2cV1,
    /// llama2.c's `export.py` version 2: 256-byte header, int8 groups.
    Llama2cV2,
    /// tinyllm's own format (`docs/FORMAT.md`).
    Tinyllm,
    /// llama.cpp's GGUF.
    Gguf,
    /// A Hugging Face directory: `config.json` and safetensors files.
    HuggingFace,
}

impl FileKind {
    /// A short human-readable name.
    pub fn describe(self) -> &'static str {
        match self {
            FileKind::Llama2cLegacy => "llama2.c (legacy, f32)",
            FileKind::Llama2cV1 => "llama2.c version 1 (f32)",
            FileKind::Llama2cV2 => "llama2.c version 2 (int8 groups)",
            FileKind::Tinyllm => "tinyllm",
            FileKind::Gguf => "GGUF",
            FileKind::HuggingFace => "Hugging Face (safetensors)",
        }
    }
}

/// A model file, opened and checked.
#[derive(Debug)]
pub struct ModelFile {
    pub kind: FileKind,
    /// The model family (a Hugging Face `model_type`; see `models`).
    pub family: String,
    pub config: Config,
    pub weights: Weights,
    /// The tokenizer the file carries, if any.
    pub tokenizer: Option<Tokenizer>,
    /// A tinyllm file's header.
    pub header: Option<tinyllm::Header>,
}

/// Opens `path`, recognises its kind by content and maps its weights: a
/// directory with a `config.json` is a Hugging Face model; a file is told
/// by its first bytes.
pub fn open(path: &Path) -> Result<ModelFile> {
    let mut file = open_as_stored(path)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    file.weights.interleave_plain(threads);
    Ok(file)
}

/// [`open`] without rearranging any matrix: the weights as the file holds
/// them.
pub fn open_as_stored(path: &Path) -> Result<ModelFile> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        if safetensors::is_model_dir(path) {
            return safetensors::open_dir(path);
        }
        return Err(Error::io(
            &path.join("config.json"),
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "a model directory needs a config.json (Hugging Face layout)",
            ),
        ));
    }
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    if meta.len() == 0 {
        return Err(Error::format(path, "the file is empty"));
    }
    // SAFETY: the mapping is read-only. Like every memory-mapped reader, we
    // rely on the file not being truncated or rewritten while it is open.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let head = &map[..map.len().min(8)];
    if head.starts_with(gguf::MAGIC) {
        return gguf::open(path, map);
    }
    if head.starts_with(tinyllm::MAGIC) {
        return tinyllm::open(path, map);
    }
    llama2c::open(path, map)
}

/// Little-endian reads from a byte slice, with the file's path for errors.
pub(crate) struct Reader<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(path: &'a Path, bytes: &'a [u8]) -> Self {
        Reader {
            path,
            bytes,
            pos: 0,
        }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn path(&self) -> &'a Path {
        self.path
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    pub(crate) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        match self.bytes.get(self.pos..self.pos.saturating_add(n)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(Error::format(
                self.path,
                format!(
                    "truncated: {what} needs {n} bytes at offset {} but the file is {} bytes",
                    self.pos,
                    self.bytes.len()
                ),
            )),
        }
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    pub(crate) fn i32(&mut self, what: &str) -> Result<i32> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    pub(crate) fn f32(&mut self, what: &str) -> Result<f32> {
        let b = self.take(4, what)?;
        Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}
