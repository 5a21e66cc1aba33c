//! GGUF files (llama.cpp's format): metadata, tensor index, and the Llama
//! models they hold.
//!
//! ```text
//! "GGUF" u32 version (2 or 3) u64 n_tensors u64 n_metadata
//! n_metadata x (string key, u32 type, value)
//! n_tensors  x (string name, u32 n_dims, n_dims x u64 extent, u32 type, u64 offset)
//! zeros up to `general.alignment` (32 by default): the start of the data
//! ```
//!
//! Strings are a u64 length and UTF-8 bytes; arrays a u32 element type, a
//! u64 count and the elements. Extents are listed innermost first, so a
//! matrix of `rows x cols` is `[cols, rows]`. Every length is checked
//! against the bytes left before it is used.

use super::table::{TensorRef, TensorTable};
use super::{FileKind, ModelFile, Reader};
use crate::config::{Config, RopeScaling, longrope_magnitude, yarn_magnitude};
use crate::error::{Error, Result, short};
use crate::models::GGUF_FAMILIES;
use crate::weights::DType;
use memmap2::Mmap;
use std::collections::HashSet;
use std::path::Path;

/// The first four bytes of a GGUF file.
pub const MAGIC: &[u8; 4] = b"GGUF";

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// One entry of the tensor index.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Extents, innermost first (as stored).
    pub dims: Vec<u64>,
    /// ggml's type number.
    pub ggml_type: u32,
    /// Bytes from the start of the data section.
    pub offset: u64,
}

/// A parsed GGUF header.
#[derive(Clone, Debug)]
pub struct Gguf {
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    /// Byte offset of the data section.
    pub data_start: usize,
    /// `general.alignment`: every tensor starts at a multiple of it.
    pub alignment: usize,
}

impl Gguf {
    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// Reads the header of the GGUF file at `path`.
pub fn read(path: &Path) -> Result<Gguf> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: a read-only mapping, read only while the file is open here.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    parse(path, &map)
}

/// The largest count accepted for any list in the header: keeps a corrupt
/// count from reserving absurd memory before the bytes run out.
const MAX_COUNT: u64 = 1 << 28;

/// The longest metadata key or tensor name accepted, in bytes (llama.cpp
/// limits tensor names to 63). A corrupt length is caught here rather than
/// read as a name of many megabytes.
const MAX_NAME: u64 = 1024;

/// Reads the header of the GGUF file `bytes` (the whole file).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Gguf> {
    let bad = |reason: String| Error::format(path, reason);
    let mut r = Reader::new(path, bytes);
    if r.take(4, "the magic")? != MAGIC {
        return Err(bad("not a GGUF file (bad magic)".into()));
    }
    let version = r.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(bad(format!(
            "GGUF version {version}; this build reads versions 2 and 3"
        )));
    }
    let n_tensors = r.u64("the tensor count")?;
    let n_meta = r.u64("the metadata count")?;
    if n_tensors > MAX_COUNT || n_meta > MAX_COUNT {
        return Err(bad(format!(
            "implausible counts: {n_tensors} tensors, {n_meta} metadata entries"
        )));
    }
    // Each entry takes at least 12 bytes (a key length and a type), each
    // tensor at least 24: counts beyond the bytes left are corrupt.
    let left = r.remaining() as u64;
    if n_meta.saturating_mul(12) > left || n_tensors.saturating_mul(24) > left {
        return Err(bad(format!(
            "truncated: {n_tensors} tensors and {n_meta} metadata entries cannot fit in \
             the {left} bytes after the counts"
        )));
    }
    let mut metadata = Vec::with_capacity(n_meta as usize);
    let mut seen = HashSet::new();
    for i in 0..n_meta {
        let key = name(&mut r, &format!("metadata key {i}"))?;
        if !seen.insert(key.clone()) {
            return Err(bad(format!(
                "metadata key '{}' appears twice",
                short(&key, 100)
            )));
        }
        let ty = r.u32(&format!("the type of '{key}'"))?;
        let value = value(&mut r, ty, &key, 0)?;
        metadata.push((key, value));
    }
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = name(&mut r, &format!("the name of tensor {i}"))?;
        let n_dims = r.u32(&format!("the rank of '{name}'"))?;
        if n_dims == 0 || n_dims > 4 {
            return Err(bad(format!("tensor '{name}' has {n_dims} dimensions")));
        }
        let dims = (0..n_dims)
            .map(|_| r.u64(&format!("the shape of '{name}'")))
            .collect::<Result<Vec<_>>>()?;
        let ggml_type = r.u32(&format!("the type of '{name}'"))?;
        let offset = r.u64(&format!("the offset of '{name}'"))?;
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        });
    }
    let gguf = Gguf {
        version,
        metadata,
        tensors,
        data_start: 0,
        alignment: 0,
    };
    let align = match gguf.get("general.alignment") {
        None => 32,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= 1 << 16 => a as usize,
            _ => return Err(bad(format!("general.alignment = {v:?} is invalid"))),
        },
    };
    Ok(Gguf {
        data_start: r.pos().next_multiple_of(align),
        alignment: align,
        ..gguf
    })
}

/// A metadata key or tensor name: a string of at most [`MAX_NAME`] bytes.
fn name(r: &mut Reader<'_>, what: &str) -> Result<String> {
    let at = r.pos();
    let len = r.u64(what)?;
    if len > MAX_NAME {
        return Err(Error::format(
            r.path(),
            format!("{what} at offset {at} claims {len} bytes; names are at most {MAX_NAME} bytes"),
        ));
    }
    let b = r.take(len as usize, what)?;
    Ok(String::from_utf8_lossy(b).into_owned())
}

fn string(r: &mut Reader<'_>, what: &str) -> Result<String> {
    let len = r.u64(what)?;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    let b = r.take(len, what)?;
    // Real files hold the odd token that is not valid UTF-8 (a lone byte of
    // a multi-byte character); keep it readable rather than fail the file.
    Ok(String::from_utf8_lossy(b).into_owned())
}

fn value(r: &mut Reader<'_>, ty: u32, key: &str, depth: usize) -> Result<Value> {
    let what = format!("the value of '{key}'");
    Ok(match ty {
        0 => Value::U8(r.u8(&what)?),
        1 => Value::I8(r.u8(&what)? as i8),
        2 => Value::U16(u16::from_le_bytes(r.take(2, &what)?.try_into().expect("2"))),
        3 => Value::I16(i16::from_le_bytes(r.take(2, &what)?.try_into().expect("2"))),
        4 => Value::U32(r.u32(&what)?),
        5 => Value::I32(r.i32(&what)?),
        6 => Value::F32(r.f32(&what)?),
        7 => Value::Bool(r.u8(&what)? != 0),
        8 => Value::String(string(r, &what)?),
        9 => {
            if depth > 2 {
                return Err(Error::format(
                    r.path(),
                    format!("'{key}' nests arrays too deeply"),
                ));
            }
            let ety = r.u32(&what)?;
            let n = r.u64(&what)?;
            // Every element takes at least one byte: a count larger than the
            // bytes left is corrupt, and caught before allocating.
            if n > (r.remaining() as u64) {
                return Err(Error::format(
                    r.path(),
                    format!(
                        "truncated: '{key}' claims {n} elements but {} bytes are left",
                        r.remaining()
                    ),
                ));
            }
            let mut items = Vec::with_capacity(n as usize);
            for _ in 0..n {
                items.push(value(r, ety, key, depth + 1)?);
            }
            Value::Array(items)
        }
        10 => Value::U64(r.u64(&what)?),
        11 => Value::I64(r.u64(&what)? as i64),
        12 => Value::F64(f64::from_bits(r.u64(&what)?)),
        _ => {
            return Err(Error::format(
                r.path(),
                format!("'{key}' has unknown value type {ty}"),
            ));
        }
    })
}

/// The dtype of ggml's type number, for the types the engine computes with.
fn dtype(ggml_type: u32) -> Option<DType> {
    Some(match ggml_type {
        0 => DType::F32,
        1 => DType::F16,
        2 => DType::Q4_0,
        3 => DType::Q4_1,
        6 => DType::Q5_0,
        7 => DType::Q5_1,
        8 => DType::Q8_0,
        11 => DType::Q3K,
        12 => DType::Q4K,
        13 => DType::Q5K,
        14 => DType::Q6K,
        30 => DType::BF16,
        _ => return None,
    })
}

/// ggml's name of its type number (for messages).
fn ggml_type_name(t: u32) -> String {
    let known = [
        (0, "F32"),
        (1, "F16"),
        (2, "Q4_0"),
        (3, "Q4_1"),
        (6, "Q5_0"),
        (7, "Q5_1"),
        (8, "Q8_0"),
        (10, "Q2_K"),
        (11, "Q3_K"),
        (12, "Q4_K"),
        (13, "Q5_K"),
        (14, "Q6_K"),
        (30, "BF16"),
    ];
    known
        .iter()
        .find(|(n, _)| *n == t)
        .map_or(format!("type {t}"), |(_, s)| s.to_string())
}

/// Opens a GGUF model file mapped in `map`.
pub(crate) fn open(path: &Path, map: Mmap) -> Result<ModelFile> {
    let bad = |reason: String| Error::format(path, reason);
    let g = parse(path, &map)?;
    let arch = g
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("general.architecture is missing".into()))?
        .to_string();
    let Some(family) = GGUF_FAMILIES.iter().find(|f| f.arch == arch) else {
        let known: Vec<&str> = GGUF_FAMILIES.iter().map(|f| f.arch).collect();
        return Err(bad(format!(
            "unsupported architecture '{arch}' (this build runs GGUF {} models)",
            known.join(", ")
        )));
    };
    let has = |name: &str| g.tensors.iter().any(|t| t.name == name);
    let int = |key: &str| -> Result<usize> {
        let k = format!("{arch}.{key}");
        g.get(&k)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| bad(format!("{k} is missing or not an integer")))
    };
    let number = |key: &str| -> Result<Option<f64>> {
        let k = format!("{arch}.{key}");
        match g.get(&k) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| bad(format!("{k} is not a number"))),
        }
    };
    let float =
        |key: &str, default: f64| -> Result<f32> { Ok(number(key)?.unwrap_or(default) as f32) };
    let dim = int("embedding_length")?;
    let n_heads = int("attention.head_count")?;
    let n_kv_heads = int("attention.head_count_kv").unwrap_or(n_heads);
    let head_dim = int("attention.key_length").unwrap_or(dim / n_heads.max(1));
    // The leading values of each head that rotate (checked with the config).
    let rotary_dim = int("rope.dimension_count")
        .ok()
        .filter(|&rot| rot != head_dim);
    let n_vocab_tokens = match g.get("tokenizer.ggml.tokens") {
        Some(Value::Array(a)) => Some(a.len()),
        _ => None,
    };
    let embd = g
        .tensors
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .ok_or_else(|| bad("tensor 'token_embd.weight' is missing".into()))?;
    let vocab_size = match (int("vocab_size"), n_vocab_tokens) {
        (Ok(v), _) => v,
        (Err(_), Some(v)) => v,
        (Err(_), None) => embd.dims.get(1).copied().unwrap_or(0) as usize,
    };
    let mut config = Config {
        dim,
        hidden_dim: int("feed_forward_length")?,
        n_layers: int("block_count")?,
        n_heads,
        n_kv_heads,
        vocab_size,
        seq_len: int("context_length")?,
        head_dim,
        rope_theta: float("rope.freq_base", 10000.0)?,
        norm_eps: float("attention.layer_norm_rms_epsilon", 1e-5)?,
        rope_style: family.rope_style,
        attn_bias: has("blk.0.attn_q.bias"),
        qk_norm: has("blk.0.attn_q_norm.weight"),
        rotary_dim,
        ..Config::default()
    };
    (family.read)(&number, &mut config)?;
    match g
        .get(&format!("{arch}.rope.scaling.type"))
        .and_then(Value::as_str)
    {
        None | Some("none") => {}
        Some("linear") => {
            let factor = number("rope.scaling.factor")?
                .ok_or_else(|| bad(format!("{arch}.rope.scaling.factor is missing")))?;
            config.rope_scaling = Some(RopeScaling::Linear {
                factor: factor as f32,
            });
        }
        Some("yarn") => {
            // llama.cpp's YaRN: the ramp between the pairs that turn
            // yarn_beta_fast and yarn_beta_slow times over the original
            // context, ends rounded outwards, and cos and sin multiplied by
            // yarn_attn_factor * (0.1 ln(factor) + 1): transformers' rule.
            let factor = number("rope.scaling.factor")?
                .ok_or_else(|| bad(format!("{arch}.rope.scaling.factor is missing")))?;
            let original = number("rope.scaling.original_context_length")?
                .map_or(config.seq_len, |v| v as usize);
            let attn = number("rope.scaling.yarn_attn_factor")?.unwrap_or(1.0);
            config.rope_scaling = Some(RopeScaling::Yarn {
                factor: factor as f32,
                original_max_position_embeddings: original,
                beta_fast: number("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0) as f32,
                beta_slow: number("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0) as f32,
                truncate: true,
                attention_factor: attn as f32 * yarn_magnitude(factor, None, None),
            });
        }
        Some(kind) => {
            return Err(bad(format!(
                "rope scaling '{kind}' is not supported for GGUF files (linear and yarn are)"
            )));
        }
    }
    config.validate(path)?;

    let mut table = TensorTable::new(path);
    let file_len = map.len() as u64;
    // llama.cpp writes each tensor's data right after the one before it,
    // padded to the alignment, and reads them so; a tensor whose type or
    // shape was changed no longer fits that layout.
    let mut data_end = 0u64;
    let mut previous: Option<&TensorInfo> = None;
    for t in &g.tensors {
        let dtype = dtype(t.ggml_type).ok_or_else(|| {
            bad(format!(
                "tensor '{}' has ggml type {}, which this build does not run; \
                 convert it with llama.cpp's llama-quantize to Q8_0, Q4_K, Q4_0 or F16",
                t.name,
                ggml_type_name(t.ggml_type)
            ))
        })?;
        if t.dims.iter().skip(2).any(|&d| d != 1) {
            return Err(bad(format!(
                "tensor '{}' has shape {:?}; only vectors and matrices are supported",
                t.name, t.dims
            )));
        }
        let cols = usize::try_from(t.dims[0]).unwrap_or(usize::MAX);
        let rows = match t.dims.get(1) {
            None => 1,
            Some(&r) => usize::try_from(r).unwrap_or(usize::MAX),
        };
        let shape = match t.dims.len() {
            1 => vec![cols],
            _ => vec![rows, cols],
        };
        let nbytes = dtype.matrix_bytes(rows, cols).ok_or_else(|| {
            bad(format!(
                "tensor '{}' of shape {:?} cannot be stored as {}",
                t.name,
                t.dims,
                ggml_type_name(t.ggml_type)
            ))
        })?;
        if t.offset != data_end {
            let after = match previous {
                None => "the data section starts at 0".to_string(),
                Some(p) => format!(
                    "'{}' ({}, shape {:?}) before it ends at {data_end}",
                    p.name,
                    ggml_type_name(p.ggml_type),
                    p.dims
                ),
            };
            return Err(bad(format!(
                "tensor '{}' starts at byte {} of the data but {after}: \
                 the tensors' types or shapes do not match their data",
                t.name, t.offset
            )));
        }
        data_end = t
            .offset
            .checked_add(nbytes as u64)
            .and_then(|e| e.checked_next_multiple_of(g.alignment as u64))
            .ok_or_else(|| bad(format!("tensor '{}' is too large", t.name)))?;
        previous = Some(t);
        let start = (g.data_start as u64)
            .checked_add(t.offset)
            .filter(|&s| s <= file_len)
            .ok_or_else(|| {
                bad(format!(
                    "truncated: tensor '{}' starts past the end of the file",
                    t.name
                ))
            })?;
        let name = t.name.strip_suffix(".weight").unwrap_or(&t.name);
        table.insert(
            name,
            TensorRef {
                file: 0,
                dtype,
                shape,
                offset: start as usize,
            },
        )?;
    }
    if let Some(last) = previous {
        let end = g.data_start as u64 + data_end;
        if file_len > end {
            return Err(bad(format!(
                "has trailing bytes: the tensors end at byte {end} (after '{}') but the file \
                 is {file_len} bytes",
                last.name
            )));
        }
    }
    if table.contains("rope_factors_long") {
        longrope(&mut table, &map, &mut config, &number)?;
        config.validate(path)?;
    }
    let weights = table.into_weights(&config, vec![map])?;
    Ok(ModelFile {
        kind: FileKind::Gguf,
        family: family.family.to_string(),
        config,
        weights,
        tokenizer: None,
        header: None,
    })
}

/// LongRoPE as llama.cpp writes it (Phi-3's 128k models): the factors as the
/// vectors `rope_factors_long` and `rope_factors_short`, the trained context
/// as `rope.scaling.original_context_length` and the magnitude on cos and
/// sin as `rope.scaling.attn_factor` (computed as transformers does when
/// absent).
fn longrope(
    table: &mut TensorTable,
    map: &Mmap,
    c: &mut Config,
    number: &dyn Fn(&str) -> Result<Option<f64>>,
) -> Result<()> {
    let maps = std::slice::from_ref(map);
    let half = c.rotary_dims() / 2;
    let long_factor = table.take_values(maps, "rope_factors_long", half)?;
    let short_factor = table.take_values(maps, "rope_factors_short", half)?;
    let original =
        number("rope.scaling.original_context_length")?.map_or(c.seq_len, |v| v as usize);
    let m = match number("rope.scaling.attn_factor")? {
        Some(m) if m.is_finite() && m > 0.0 => m as f32,
        Some(m) => {
            return Err(Error::format(
                table.path(),
                format!("rope.scaling.attn_factor = {m} is not a positive number"),
            ));
        }
        None => longrope_magnitude(c.seq_len, original.max(1)),
    };
    c.rope_scaling = Some(RopeScaling::LongRope {
        short_factor,
        long_factor,
        original_max_position_embeddings: original,
        attention_factor: m,
    });
    Ok(())
}
