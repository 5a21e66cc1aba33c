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

use super::{FileKind, ModelFile};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use crate::weights::{DType, LayerDesc, MatrixDesc, VectorDesc, Weights, cast};
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
    /// `tokenizer.scores` (f32, `vocab_size`).
    #[serde(rename = "type")]
    pub kind: String,
    pub bos_id: u32,
    pub eos_id: u32,
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
    if header.architecture != "llama" {
        return Err(bad(format!(
            "unknown architecture '{}' (this build runs 'llama')",
            header.architecture
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

    // The model's tensors, by name and shape.
    let mut used = 0;
    let mut take = |name: &str, shape: &[usize]| -> Result<&TensorInfo> {
        let t = by_name
            .get(name)
            .ok_or_else(|| bad(format!("tensor '{name}' is missing")))?;
        if t.shape != shape {
            return Err(bad(format!(
                "tensor '{name}' has shape {:?}, expected {shape:?}",
                t.shape
            )));
        }
        used += 1;
        Ok(*t)
    };
    let vector = |t: &TensorInfo| -> Result<VectorDesc> {
        if t.dtype != "f32" {
            return Err(bad(format!(
                "tensor '{}' must be f32, not {}",
                t.name, t.dtype
            )));
        }
        Ok(VectorDesc {
            len: t.shape[0],
            offset: data_start + t.offset,
        })
    };
    let matrix = |t: &TensorInfo| -> Result<MatrixDesc> {
        let dtype = DType::from_name(&t.dtype).ok_or_else(|| {
            bad(format!(
                "tensor '{}' has dtype {}, not a weight type",
                t.name, t.dtype
            ))
        })?;
        Ok(MatrixDesc {
            rows: t.shape[0],
            cols: t.shape[1],
            dtype,
            offset: data_start + t.offset,
            scales_offset: 0,
        })
    };
    let c = &config;
    let (d, q, kv, h, v) = (c.dim, c.q_dim(), c.kv_dim(), c.hidden_dim, c.vocab_size);
    let embedding = matrix(take("token_embd", &[v, d])?)?;
    let final_norm = vector(take("output_norm", &[d])?)?;
    let classifier = if by_name.contains_key("output") {
        matrix(take("output", &[v, d])?)?
    } else {
        embedding.clone()
    };
    let mut layers = Vec::with_capacity(c.n_layers);
    for i in 0..c.n_layers {
        let mut m =
            |suffix: &str, shape: &[usize]| matrix(take(&format!("blk.{i}.{suffix}"), shape)?);
        let (wq, wk, wv, wo) = (
            m("attn_q", &[q, d])?,
            m("attn_k", &[kv, d])?,
            m("attn_v", &[kv, d])?,
            m("attn_output", &[d, q])?,
        );
        let (w1, w2, w3) = (
            m("ffn_gate", &[h, d])?,
            m("ffn_down", &[d, h])?,
            m("ffn_up", &[h, d])?,
        );
        layers.push(LayerDesc {
            attn_norm: vector(take(&format!("blk.{i}.attn_norm"), &[d])?)?,
            ffn_norm: vector(take(&format!("blk.{i}.ffn_norm"), &[d])?)?,
            wq,
            wk,
            wv,
            wo,
            w1,
            w2,
            w3,
        });
    }

    let tokenizer = match &header.tokenizer {
        None => None,
        Some(info) if info.kind == "llama2c" => {
            let pieces = take(
                "tokenizer.pieces",
                &[by_name.get("tokenizer.pieces").map_or(0, |t| t.shape[0])],
            )?;
            let offsets = take("tokenizer.offsets", &[v + 1])?;
            let scores = take("tokenizer.scores", &[v])?;
            if (
                pieces.dtype.as_str(),
                offsets.dtype.as_str(),
                scores.dtype.as_str(),
            ) != ("u8", "u32", "f32")
            {
                return Err(bad("the tokenizer tensors must be u8, u32 and f32".into()));
            }
            let blob: &[u8] = cast(&map[data_start + pieces.offset..], pieces.nbytes);
            let offs: &[u32] = cast(&map[data_start + offsets.offset..], v + 1);
            let scores: &[f32] = cast(&map[data_start + scores.offset..], v);
            let mut list = Vec::with_capacity(v);
            for (i, w) in offs.windows(2).enumerate() {
                let (a, b) = (w[0] as usize, w[1] as usize);
                if a > b || b > blob.len() {
                    return Err(bad(format!(
                        "tokenizer.offsets is not increasing at token {i}"
                    )));
                }
                list.push(blob[a..b].to_vec());
            }
            Some(Tokenizer::from_pieces(list, scores.to_vec()))
        }
        Some(info) => return Err(bad(format!("unknown tokenizer type '{}'", info.kind))),
    };
    if used != header.tensors.len() {
        let known: Vec<&str> = header.tensors.iter().map(|t| t.name.as_str()).collect();
        let extra = known
            .iter()
            .find(|n| !is_model_tensor(n, c.n_layers))
            .copied()
            .unwrap_or("?");
        return Err(bad(format!("unexpected tensor '{extra}'")));
    }

    Ok(ModelFile {
        kind: FileKind::Tinyllm,
        config,
        weights: Weights::new(map, embedding, layers, final_norm, classifier),
        tokenizer,
        header: Some(header),
    })
}

/// Whether `name` is one of the tensors a Llama model file holds.
fn is_model_tensor(name: &str, n_layers: usize) -> bool {
    const LAYER: [&str; 9] = [
        "attn_norm",
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_norm",
        "ffn_gate",
        "ffn_down",
        "ffn_up",
    ];
    match name {
        "token_embd" | "output_norm" | "output" | "tokenizer.pieces" | "tokenizer.offsets"
        | "tokenizer.scores" => true,
        _ => name
            .strip_prefix("blk.")
            .and_then(|rest| rest.split_once('.'))
            .is_some_and(|(i, t)| {
                i.parse::<usize>().is_ok_and(|i| i < n_layers) && LAYER.contains(&t)
            }),
    }
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
