//! Hugging Face model directories: `config.json` and the weights in
//! safetensors files (`model.safetensors`, or shards listed by
//! `model.safetensors.index.json`).
//!
//! A safetensors file is a u64 (little-endian) header length `N`, `N` bytes
//! of JSON mapping each tensor name to its dtype, shape and `data_offsets`
//! (begin and end, relative to the end of the header), then the data. Each
//! file is mapped, not read: a bf16 checkpoint runs from the page cache.

use super::table::{TensorRef, TensorTable};
use super::{FileKind, ModelFile};
use crate::error::{Error, Result};
use crate::models;
use crate::weights::DType;
use memmap2::Mmap;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

/// The largest safetensors header accepted.
const MAX_HEADER: u64 = 100 << 20;

/// Whether `dir` looks like a Hugging Face model directory.
pub fn is_model_dir(dir: &Path) -> bool {
    dir.join("config.json").is_file()
}

/// Opens the model in the Hugging Face directory `dir`.
pub(crate) fn open_dir(dir: &Path) -> Result<ModelFile> {
    let config_path = dir.join("config.json");
    let json = read_json(&config_path)?;
    let (family, config) = models::config_from_hf(&json, &config_path)?;
    let names = models::find(&family).expect("config_from_hf knows the family");
    let tied = models::tied_classifier(&json);

    let files = weight_files(dir)?;
    let mut maps = Vec::with_capacity(files.len());
    let mut table = TensorTable::new(dir);
    for (i, path) in files.iter().enumerate() {
        let map = map_file(path)?;
        for (name, t) in read_header(path, &map)? {
            let Some(ours) = models::tinyllm_name(&name, names) else {
                continue;
            };
            table.insert(&ours, TensorRef { file: i, ..t })?;
        }
        maps.push(map);
    }
    if tied {
        // Some checkpoints store the tied classifier anyway: a copy of the
        // embeddings, which the engine reads instead.
        table.remove("output");
    }
    if !tied && !table.contains("output") {
        return Err(Error::format(
            dir,
            "tensor 'lm_head.weight' is missing (config.json says tie_word_embeddings is false)",
        ));
    }
    let weights = table
        .into_weights(&config, maps)
        .map_err(|e| rename_tensors(e, dir, names))?;
    Ok(ModelFile {
        kind: FileKind::HuggingFace,
        family,
        config,
        weights,
        tokenizer: None,
        header: None,
    })
}

/// Rewrites tinyllm tensor names in an error as Hugging Face's.
fn rename_tensors(e: Error, dir: &Path, family: &models::Family) -> Error {
    match e {
        Error::Format { reason, .. } => {
            let mut out = String::new();
            let mut rest = reason.as_str();
            while let Some(a) = rest.find("tensor '") {
                let start = a + "tensor '".len();
                let Some(len) = rest[start..].find('\'') else {
                    break;
                };
                out.push_str(&rest[..start]);
                out.push_str(&models::hf_name(&rest[start..start + len], family));
                rest = &rest[start + len..];
            }
            out.push_str(rest);
            Error::format(dir, out)
        }
        other => other,
    }
}

/// The safetensors files of the model in `dir`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(Error::io(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "neither model.safetensors nor model.safetensors.index.json is in the directory",
            ),
        ));
    }
    let json = read_json(&index)?;
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::format(&index, "'weight_map' is missing"))?;
    let mut names = BTreeSet::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| Error::format(&index, format!("'{tensor}' maps to a non-string")))?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(Error::format(
                &index,
                format!("shard name '{file}' leaves the model directory"),
            ));
        }
        names.insert(file.to_string());
    }
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// The JSON document in the file `path` (text that is not UTF-8 is a
/// format error, as any other malformed JSON).
fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}

fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: read-only mapping; like every mapped reader we rely on the
    // file not being truncated or rewritten while it is open.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// Reads and checks the header of the safetensors file `path`: each tensor
/// with its extent inside the file (offsets made absolute).
fn read_header(path: &Path, map: &[u8]) -> Result<Vec<(String, TensorRef)>> {
    let bad = |reason: String| Error::format(path, reason);
    if map.len() < 8 {
        return Err(bad(format!(
            "truncated: {} bytes, shorter than the 8-byte header length",
            map.len()
        )));
    }
    let n = u64::from_le_bytes(map[..8].try_into().expect("8 bytes"));
    if n > MAX_HEADER || 8 + n > map.len() as u64 {
        return Err(bad(format!(
            "truncated or corrupt: the header claims {n} bytes but the file is {} bytes",
            map.len()
        )));
    }
    let data_start = 8 + n as usize;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&map[8..data_start])
        .map_err(|e| bad(format!("the JSON header is invalid: {e}")))?;
    let data_len = map.len() - data_start;
    let mut out = Vec::with_capacity(header.len());
    let mut extents = Vec::with_capacity(header.len());
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let field = |key: &str| {
            info.get(key)
                .ok_or_else(|| bad(format!("tensor '{name}' has no '{key}'")))
        };
        let dtype_name = field("dtype")?.as_str().unwrap_or("?");
        let (dtype, size) = match dtype_name {
            "F32" => (DType::F32, 4),
            "F16" => (DType::F16, 2),
            "BF16" => (DType::BF16, 2),
            other => {
                return Err(bad(format!(
                    "tensor '{name}' has dtype {other}; tinyllm reads F32, F16 and BF16 checkpoints"
                )));
            }
        };
        let shape: Vec<usize> = field("shape")?
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .ok_or_else(|| bad(format!("tensor '{name}' has an invalid shape")))?;
        let offsets: Vec<usize> = field("data_offsets")?
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .filter(|v: &Vec<usize>| v.len() == 2)
            .ok_or_else(|| bad(format!("tensor '{name}' has invalid data_offsets")))?;
        let (begin, end) = (offsets[0], offsets[1]);
        let count = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .and_then(|c| c.checked_mul(size));
        if begin > end || end > data_len || count != Some(end - begin) {
            return Err(bad(format!(
                "tensor '{name}': data_offsets {begin}..{end} do not fit a {dtype_name} tensor \
                 of shape {shape:?} in {data_len} bytes of data"
            )));
        }
        extents.push((begin, end, name.clone()));
        out.push((
            name,
            TensorRef {
                file: 0,
                dtype,
                shape,
                offset: data_start + begin,
            },
        ));
    }
    // The format's rule: the tensors cover the data exactly, without holes
    // or overlaps (a changed dtype or shape breaks it).
    extents.sort();
    let mut at = 0;
    for (begin, end, name) in &extents {
        if *begin != at {
            let how = if *begin < at {
                "overlaps the tensor before it"
            } else {
                "leaves a gap"
            };
            return Err(bad(format!(
                "tensor '{name}': data_offsets {begin}..{end} {how} (the data before it ends at {at})"
            )));
        }
        at = *end;
    }
    if at != data_len {
        return Err(bad(format!(
            "has trailing bytes: the tensors end at byte {at} of the data but the data is \
             {data_len} bytes"
        )));
    }
    Ok(out)
}
