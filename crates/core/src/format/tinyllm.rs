//! tinyllm's own model files (`docs/FORMAT.md` is the specification).
//!
//! ```text
//! 0   magic "TLLM"
//! 4   u32 version (1)
//! 8   u64 header length N
//! 16  N bytes of JSON: architecture, config, tokenizer, provenance, tensor index
//! ..  zeros up to a multiple of 64: the start of the data
//!     tensors, each at data start + its offset (a multiple of 64)
//! ```
//!
//! The reader checks the whole index against the file before anything reads
//! a weight: every dtype and shape, every size against its dtype and shape,
//! every extent against the file's length, no overlaps, and the file ends
//! where the last tensor does.

use super::table::{TensorRef, TensorTable};
use super::{FileKind, ModelFile};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use crate::weights::{DType, cast};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The first four bytes of every tinyllm file.
pub const MAGIC: &[u8; 4] = b"TLLM";
/// The version this build reads and writes.
pub const VERSION: u32 = 1;
/// Tensor data alignment, in bytes.
pub const ALIGN: usize = 64;
/// The largest JSON header accepted.
const MAX_HEADER: u64 = 256 << 20;

/// The JSON header.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// The model family (`"llama"`).
    pub architecture: String,
    pub config: Config,
    /// How the vocabulary is stored, if the file has one.
    #[serde(default)]
    pub tokenizer: Option<TokenizerInfo>,
    /// A Jinja chat template, if the model has one.
    #[serde(default)]
    pub chat_template: Option<String>,
    /// Where the weights came from (free-form).
    #[serde(default)]
    pub source: serde_json::Value,
    /// How the weights were quantized (free-form).
    #[serde(default)]
    pub quantization: serde_json::Value,
    pub tensors: Vec<TensorInfo>,
}

/// The tokenizer stored in the file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerInfo {
    /// `"llama2c"`: pieces and scores in the tensors `tokenizer.pieces`
    /// (u8), `tokenizer.offsets` (u32, `vocab_size + 1`) and
    /// `tokenizer.scores` (f32, `vocab_size`). `"hf"`: a Hugging Face
    /// `tokenizer.json` in the tensor `tokenizer.json` (u8).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub bos_id: Option<u32>,
    #[serde(default)]
    pub eos_id: Option<u32>,
    /// Whether encoding a prompt starts with BOS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_bos: Option<bool>,
    /// Tokens that end a reply besides `eos_id` (end-of-turn markers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_ids: Vec<u32>,
}

/// One entry of the tensor index.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TensorInfo {
    pub name: String,
    /// `f32`, `f16`, `bf16`, `q8_0`, `q4_0`, `q4_1`, `u8` or `u32`.
    pub dtype: String,
    /// Outermost dimension first; a matrix is `[rows, cols]`.
    pub shape: Vec<usize>,
    /// Bytes from the start of the data; a multiple of 64.
    pub offset: usize,
    pub nbytes: usize,
}

/// The byte size of a tensor of `dtype` and `shape`, if the pair is valid.
pub fn tensor_bytes(dtype: &str, shape: &[usize]) -> Option<usize> {
    let (rows, cols) = match shape {
        [n] => (1, *n),
        [r, c] => (*r, *c),
        _ => return None,
    };
    if rows == 0 || cols == 0 {
        return None;
    }
    match dtype {
        "u8" => rows.checked_mul(cols),
        "u32" => rows.checked_mul(cols)?.checked_mul(4),
        name => DType::from_name(name)?.matrix_bytes(rows, cols),
    }
}

/// Where the tensor data of the tinyllm file `bytes` starts (offsets in
/// the index count from there); None if the preamble is cut short.
pub fn data_start(bytes: &[u8]) -> Option<usize> {
    let n = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some((16usize.checked_add(usize::try_from(n).ok()?)?).next_multiple_of(ALIGN))
}

/// Opens a tinyllm file mapped in `map`.
pub(crate) fn open(path: &Path, map: Mmap) -> Result<ModelFile> {
    let bad = |reason: String| Error::format(path, reason);
    if map.len() < 16 {
        return Err(bad(format!(
            "truncated: {} bytes, shorter than the 16-byte preamble",
            map.len()
        )));
    }
    let version = u32::from_le_bytes(map[4..8].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(bad(format!(
            "tinyllm file version {version}; this build reads version {VERSION}"
        )));
    }
    let header_len = u64::from_le_bytes(map[8..16].try_into().expect("8 bytes"));
    if header_len > MAX_HEADER || 16 + header_len > map.len() as u64 {
        return Err(bad(format!(
            "truncated: the header claims {header_len} bytes but the file is {} bytes",
            map.len()
        )));
    }
    let header_end = 16 + header_len as usize;
    let header: Header = serde_json::from_slice(&map[16..header_end])
        .map_err(|e| bad(format!("the JSON header is invalid: {e}")))?;
    if !crate::models::is_known(&header.architecture) {
        return Err(bad(format!(
            "unknown architecture '{}' (this build runs {})",
            header.architecture,
            crate::models::names()
        )));
    }
    let config = header.config.clone();
    config.validate(path)?;
    if config.head_dim * config.n_heads == 0 {
        return Err(bad("head_dim and n_heads must be positive".into()));
    }

    // The index: sizes, alignment, extents and overlaps.
    let data_start = header_end.next_multiple_of(ALIGN);
    let mut by_name: HashMap<&str, &TensorInfo> = HashMap::new();
    let mut extents = Vec::with_capacity(header.tensors.len());
    for t in &header.tensors {
        let expect = tensor_bytes(&t.dtype, &t.shape).ok_or_else(|| {
            bad(format!(
                "tensor '{}': dtype '{}' with shape {:?} is invalid",
                t.name, t.dtype, t.shape
            ))
        })?;
        if t.nbytes != expect {
            return Err(bad(format!(
                "tensor '{}': {} bytes, but a {} tensor of shape {:?} is {expect}",
                t.name, t.nbytes, t.dtype, t.shape
            )));
        }
        if !t.offset.is_multiple_of(ALIGN) {
            return Err(bad(format!(
                "tensor '{}': offset {} is not a multiple of {ALIGN}",
                t.name, t.offset
            )));
        }
        let end = data_start
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.nbytes))
            .filter(|&e| e <= map.len())
            .ok_or_else(|| {
                bad(format!(
                    "truncated: tensor '{}' ends past the end of the file ({} bytes)",
                    t.name,
                    map.len()
                ))
            })?;
        if by_name.insert(&t.name, t).is_some() {
            return Err(bad(format!("tensor '{}' is listed twice", t.name)));
        }
        extents.push((data_start + t.offset, end, &t.name));
    }
    extents.sort();
    for pair in extents.windows(2) {
        if pair[1].0 < pair[0].1 {
            return Err(bad(format!(
                "tensors '{}' and '{}' overlap",
                pair[0].2, pair[1].2
            )));
        }
    }
    let file_end = extents.last().map_or(data_start, |e| e.1);
    if file_end != map.len() {
        let how = if map.len() < file_end {
            "truncated"
        } else {
            "has trailing bytes"
        };
        return Err(bad(format!(
            "{how}: the tensors end at byte {file_end} but the file is {} bytes",
            map.len()
        )));
    }

    // The tokenizer's tensors, then the model's (checked by the table).
    let blob = |name: &str, dtype: &str| -> Result<&[u8]> {
        let t = by_name
            .get(name)
            .ok_or_else(|| bad(format!("tensor '{name}' is missing")))?;
        if t.dtype != dtype {
            return Err(bad(format!(
                "tensor '{name}' must be {dtype}, not {}",
                t.dtype
            )));
        }
        Ok(&map[data_start + t.offset..data_start + t.offset + t.nbytes])
    };
    let v = config.vocab_size;
    if let Some(info) = &header.tokenizer {
        let ids = [("bos_id", info.bos_id), ("eos_id", info.eos_id)];
        let stops = info.stop_ids.iter().map(|&id| ("stop_ids", Some(id)));
        for (field, id) in ids.into_iter().chain(stops) {
            if let Some(id) = id.filter(|&id| id as usize >= v) {
                return Err(bad(format!(
                    "tokenizer.{field} = {id} is not a token of the {v}-token vocabulary"
                )));
            }
        }
    }
    let tokenizer = match &header.tokenizer {
        None => None,
        Some(info) if info.kind == "llama2c" => {
            let pieces = blob("tokenizer.pieces", "u8")?;
            let offsets = blob("tokenizer.offsets", "u32")?;
            let scores = blob("tokenizer.scores", "f32")?;
            if offsets.len() != 4 * (v + 1) || scores.len() != 4 * v {
                return Err(bad(format!("the tokenizer tensors do not hold {v} tokens")));
            }
            let offs: &[u32] = cast(offsets, v + 1);
            let scores: &[f32] = cast(scores, v);
            let mut list = Vec::with_capacity(v);
            for (i, w) in offs.windows(2).enumerate() {
                let (a, b) = (w[0] as usize, w[1] as usize);
                if a > b || b > pieces.len() {
                    return Err(bad(format!(
                        "tokenizer.offsets is not increasing at token {i}"
                    )));
                }
                list.push(pieces[a..b].to_vec());
            }
            Some(Tokenizer::from_pieces(list, scores.to_vec()))
        }
        Some(info) if info.kind == "hf" => {
            let json = blob("tokenizer.json", "u8")?;
            if std::str::from_utf8(json).is_err() {
                return Err(bad("tensor 'tokenizer.json' is not UTF-8".into()));
            }
            None
        }
        Some(info) => return Err(bad(format!("unknown tokenizer type '{}'", info.kind))),
    };
    let mut table = TensorTable::new(path);
    for t in &header.tensors {
        if t.name.starts_with("tokenizer.") {
            continue;
        }
        let dtype = DType::from_name(&t.dtype).ok_or_else(|| {
            bad(format!(
                "tensor '{}' has dtype {}, not a weight type",
                t.name, t.dtype
            ))
        })?;
        table.insert(
            &t.name,
            TensorRef {
                file: 0,
                dtype,
                shape: t.shape.clone(),
                offset: data_start + t.offset,
            },
        )?;
    }
    let weights = table.into_weights(&config, vec![map])?;

    Ok(ModelFile {
        kind: FileKind::Tinyllm,
        family: header.architecture.clone(),
        config,
        weights,
        tokenizer,
        header: Some(header),
    })
}

/// Writes a tinyllm file: the header first (offsets assigned from the tensor
/// list), then each tensor's bytes in order. The file is written beside its
/// destination and renamed into place when complete.
#[derive(Debug)]
pub struct Writer {
    file: std::io::BufWriter<std::fs::File>,
    tmp: PathBuf,
    dst: PathBuf,
    tensors: Vec<TensorInfo>,
    next: usize,
    written: usize,
}

impl Writer {
    /// Starts the file `dst`: `header.tensors` lists name, dtype and shape
    /// of each tensor (offsets and sizes are filled in here).
    pub fn create(dst: &Path, mut header: Header) -> Result<Self> {
        let mut offset = 0;
        for t in &mut header.tensors {
            t.nbytes = tensor_bytes(&t.dtype, &t.shape).ok_or_else(|| {
                Error::InvalidArgument(format!("tensor '{}': invalid dtype/shape", t.name))
            })?;
            t.offset = offset;
            offset = (offset + t.nbytes).next_multiple_of(ALIGN);
        }
        let json =
            serde_json::to_vec(&header).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let tmp = dst.with_extension("partial");
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = Writer {
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            tmp,
            dst: dst.to_path_buf(),
            tensors: header.tensors,
            next: 0,
            written: 0,
        };
        let mut pre = Vec::with_capacity(16 + json.len() + ALIGN);
        pre.extend_from_slice(MAGIC);
        pre.extend_from_slice(&VERSION.to_le_bytes());
        pre.extend_from_slice(&(json.len() as u64).to_le_bytes());
        pre.extend_from_slice(&json);
        pre.resize(pre.len().next_multiple_of(ALIGN), 0);
        w.put(&pre)?;
        w.written = 0;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io(&self.tmp, e))?;
        self.written += bytes.len();
        Ok(())
    }

    /// Writes the next tensor's bytes (in the order of the header's list).
    pub fn write_tensor(&mut self, bytes: &[u8]) -> Result<()> {
        let t = self
            .tensors
            .get(self.next)
            .ok_or_else(|| Error::InvalidArgument("more tensors than the header lists".into()))?;
        if bytes.len() != t.nbytes {
            return Err(Error::InvalidArgument(format!(
                "tensor '{}' has {} bytes, expected {}",
                t.name,
                bytes.len(),
                t.nbytes
            )));
        }
        let pad = t.offset - self.written;
        self.put(&vec![0u8; pad])?;
        self.put(bytes)?;
        self.next += 1;
        Ok(())
    }

    /// Finishes the file and moves it into place.
    pub fn finish(mut self) -> Result<()> {
        if self.next != self.tensors.len() {
            return Err(Error::InvalidArgument(format!(
                "{} of {} tensors were written",
                self.next,
                self.tensors.len()
            )));
        }
        self.file.flush().map_err(|e| Error::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.dst).map_err(|e| Error::io(&self.dst, e))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.next != self.tensors.len() || self.tmp.exists() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
