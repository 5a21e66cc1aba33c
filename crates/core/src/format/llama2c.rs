//! Karpathy's llama2.c model files, in all three layouts.
//!
//! - **Legacy** (`run.c`): seven little-endian i32 header fields
//!   `dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len`
//!   (a negative `vocab_size` means the classifier is stored apart from the
//!   embeddings), then f32 tensors: embeddings, attention norms, wq, wk, wv,
//!   wo, ffn norms, w1, w2, w3 (each stacked over layers), the final norm,
//!   two unused RoPE tables of `seq_len * head_dim / 2` floats each, and the
//!   classifier when untied.
//! - **Version 1** (`export.py`): magic `0x616b3432` ("ak42"), version 1, the
//!   seven fields, a shared-classifier byte, zeros to 256 bytes; then f32:
//!   attention norms, ffn norms, final norm, embeddings, wq, wk, wv, wo, w1,
//!   w2, w3 (stacked over layers), and the classifier when untied.
//! - **Version 2** (`export.py`, read by `runq.c`): as version 1 but with the
//!   group size as an i32 right after the shared-classifier byte (offset
//!   37); after the header the three norms in f32, then every matrix in the
//!   version-1 order as int8 values followed by one f32 scale per group.

use super::{FileKind, ModelFile, Reader};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::weights::{DType, LayerDesc, MatrixDesc, VectorDesc, Weights, WeightsParts, cast};
use memmap2::Mmap;
use std::path::Path;

/// `"ak42"` read as a little-endian u32.
pub const MAGIC: u32 = 0x616b_3432;
/// Bytes of the legacy header.
pub const LEGACY_HEADER: usize = 28;
/// Bytes of the version 1 and 2 headers.
pub const VERSIONED_HEADER: usize = 256;

/// Opens a llama2.c file of any layout.
pub(crate) fn open(path: &Path, map: Mmap) -> Result<ModelFile> {
    let mut r = Reader::new(path, &map);
    let versioned = map.len() >= 4 && r.u32("the header")? == MAGIC;
    let (kind, config, untied, dtype) = if versioned {
        let kind = match r.i32("the version")? {
            1 => FileKind::Llama2cV1,
            2 => FileKind::Llama2cV2,
            v => {
                return Err(Error::format(
                    path,
                    format!("llama2.c file version {v} is unknown (versions 1 and 2 are)"),
                ));
            }
        };
        let (config, _) = read_fields(&mut r, path)?;
        let untied = r.u8("the shared-classifier flag")? == 0;
        let dtype = if kind == FileKind::Llama2cV2 {
            let gs = r.i32("the group size")?;
            if gs <= 0 || gs > 1 << 16 {
                return Err(Error::format(
                    path,
                    format!("group size {gs} is out of range"),
                ));
            }
            DType::Q8Group {
                group_size: gs as usize,
            }
        } else {
            DType::F32
        };
        (kind, config, untied, dtype)
    } else {
        let mut r = Reader::new(path, &map);
        let (config, untied) = read_fields(&mut r, path)?;
        (FileKind::Llama2cLegacy, config, untied, DType::F32)
    };
    let data_start = if versioned {
        VERSIONED_HEADER
    } else {
        LEGACY_HEADER
    };
    if map.len() < data_start {
        return Err(Error::format(
            path,
            format!(
                "truncated: the {} header needs {data_start} bytes but the file is {} bytes",
                kind.describe(),
                map.len()
            ),
        ));
    }

    let mut layout = Layout::new(path, data_start, map.len());
    let weights = if versioned {
        layout_versioned(&mut layout, &config, untied, dtype)?
    } else {
        layout_legacy(&mut layout, &config, untied)?
    };
    if layout.end != map.len() {
        let how = if map.len() < layout.end {
            "truncated"
        } else {
            "has trailing bytes"
        };
        return Err(Error::format(
            path,
            format!(
                "{how}: a {} model with dim={}, hidden_dim={}, n_layers={}, n_heads={}, \
                 n_kv_heads={}, vocab_size={}, seq_len={} is {} bytes but the file is {} bytes",
                kind.describe(),
                config.dim,
                config.hidden_dim,
                config.n_layers,
                config.n_heads,
                config.n_kv_heads,
                config.vocab_size,
                config.seq_len,
                layout.end,
                map.len()
            ),
        ));
    }
    // Norm gains move into the weights' vector buffer (checked extents above).
    let (embedding, mut layers, final_norm, classifier) = weights;
    let mut vectors = Vec::new();
    let mut copy = |d: &VectorDesc, name: String| {
        let offset = vectors.len();
        let values = cast::<f32>(&map[d.offset..], d.len);
        if let Some(i) = values.iter().position(|x| !x.is_finite()) {
            return Err(Error::format(
                path,
                format!(
                    "{name} holds a non-finite value ({}) at index {i}",
                    values[i]
                ),
            ));
        }
        vectors.extend_from_slice(values);
        Ok(VectorDesc { len: d.len, offset })
    };
    for (i, l) in layers.iter_mut().enumerate() {
        for (norm, what) in [
            (&mut l.attn_norm, "attention"),
            (&mut l.ffn_norm, "feed-forward"),
        ] {
            let d = norm.as_ref().expect("llama2.c blocks have pre-norms");
            *norm = Some(copy(d, format!("the {what} norm of layer {i}"))?);
        }
    }
    let final_norm = copy(&final_norm, "the final norm".into())?;
    let weights = Weights::new(WeightsParts {
        maps: vec![map],
        vectors,
        embedding,
        layers,
        final_norm,
        classifier,
        rope_factors: None,
    });
    weights.check_finite(path)?;
    Ok(ModelFile {
        kind,
        family: "llama".into(),
        config,
        weights,
        tokenizer: None,
        header: None,
    })
}

/// Reads the seven dimension fields; returns the config and whether the
/// (legacy) vocabulary size was negative.
fn read_fields(r: &mut Reader<'_>, path: &Path) -> Result<(Config, bool)> {
    let names = [
        "dim",
        "hidden_dim",
        "n_layers",
        "n_heads",
        "n_kv_heads",
        "vocab_size",
        "seq_len",
    ];
    let mut v = [0i64; 7];
    for (slot, name) in v.iter_mut().zip(names) {
        *slot = r.i32(name)? as i64;
    }
    let untied = v[5] < 0;
    v[5] = v[5].abs();
    for (value, name) in v.iter().zip(names) {
        if *value <= 0 {
            return Err(Error::format(
                path,
                format!("not a llama2.c model: header field {name} = {value} must be positive"),
            ));
        }
    }
    let [
        dim,
        hidden_dim,
        n_layers,
        n_heads,
        n_kv_heads,
        vocab_size,
        seq_len,
    ] = v.map(|x| x as usize);
    if dim % n_heads != 0 {
        return Err(Error::format(
            path,
            format!("not a llama2.c model: dim = {dim} is not a multiple of n_heads = {n_heads}"),
        ));
    }
    let config = Config {
        dim,
        hidden_dim,
        n_layers,
        n_heads,
        n_kv_heads,
        vocab_size,
        seq_len,
        head_dim: dim / n_heads,
        ..Config::default()
    };
    config.validate(path)?;
    Ok((config, untied))
}

type Tensors = (MatrixDesc, Vec<LayerDesc>, VectorDesc, MatrixDesc);

/// Hands out consecutive extents of the file, with overflow checks.
///
/// Once the extents pass the end of the file (`limit`), the stacks stop
/// collecting descriptors and only count bytes: a header that claims a
/// million layers costs no memory before its "truncated" error.
struct Layout<'a> {
    path: &'a Path,
    end: usize,
    limit: usize,
}

impl<'a> Layout<'a> {
    fn new(path: &'a Path, start: usize, limit: usize) -> Self {
        Layout {
            path,
            end: start,
            limit,
        }
    }

    fn bytes(&mut self, n: Option<usize>) -> Result<usize> {
        let start = self.end;
        self.end = n
            .and_then(|n| start.checked_add(n))
            .ok_or_else(|| Error::format(self.path, "tensor sizes overflow"))?;
        Ok(start)
    }

    fn vector(&mut self, len: usize) -> Result<VectorDesc> {
        Ok(VectorDesc {
            len,
            offset: self.bytes(len.checked_mul(4))?,
        })
    }

    fn matrix(&mut self, rows: usize, cols: usize, dtype: DType) -> Result<MatrixDesc> {
        let Some(bytes) = dtype.matrix_bytes(rows, cols) else {
            let reason = match dtype {
                DType::Q8Group { group_size } if !cols.is_multiple_of(group_size) => {
                    format!("group size {group_size} does not divide a row of {cols} values")
                }
                _ => "tensor sizes overflow".to_string(),
            };
            return Err(Error::format(self.path, reason));
        };
        let (offset, scales_offset) = match dtype {
            DType::Q8Group { group_size } => {
                let n = rows * cols;
                let offset = self.bytes(Some(n))?;
                if !self.end.is_multiple_of(4) {
                    return Err(Error::format(
                        self.path,
                        format!(
                            "group size {group_size} leaves the f32 scales unaligned; not supported"
                        ),
                    ));
                }
                (offset, self.bytes(Some(bytes - n))?)
            }
            _ => (self.bytes(Some(bytes))?, 0),
        };
        Ok(MatrixDesc {
            rows,
            cols,
            dtype,
            file: 0,
            offset,
            scales_offset,
        })
    }

    /// One matrix of each layer, laid out one after another.
    fn stacked(
        &mut self,
        n_layers: usize,
        rows: usize,
        cols: usize,
        dtype: DType,
    ) -> Result<Vec<MatrixDesc>> {
        let mut out = Vec::new();
        for _ in 0..n_layers {
            let m = self.matrix(rows, cols, dtype)?;
            if self.end <= self.limit {
                out.push(m);
            }
        }
        Ok(out)
    }

    fn stacked_vectors(&mut self, n_layers: usize, len: usize) -> Result<Vec<VectorDesc>> {
        let mut out = Vec::new();
        for _ in 0..n_layers {
            let v = self.vector(len)?;
            if self.end <= self.limit {
                out.push(v);
            }
        }
        Ok(out)
    }
}

fn layout_legacy(l: &mut Layout<'_>, c: &Config, untied: bool) -> Result<Tensors> {
    let f = DType::F32;
    let (nl, dim, hid, q, kv) = (c.n_layers, c.dim, c.hidden_dim, c.q_dim(), c.kv_dim());
    let embedding = l.matrix(c.vocab_size, dim, f)?;
    let attn_norm = l.stacked_vectors(nl, dim)?;
    let wq = l.stacked(nl, q, dim, f)?;
    let wk = l.stacked(nl, kv, dim, f)?;
    let wv = l.stacked(nl, kv, dim, f)?;
    let wo = l.stacked(nl, dim, q, f)?;
    let ffn_norm = l.stacked_vectors(nl, dim)?;
    let w1 = l.stacked(nl, hid, dim, f)?;
    let w2 = l.stacked(nl, dim, hid, f)?;
    let w3 = l.stacked(nl, hid, dim, f)?;
    let final_norm = l.vector(dim)?;
    // Two RoPE tables that old exports carry and nothing reads.
    l.vector(
        c.seq_len
            .checked_mul(c.head_dim)
            .map_or(usize::MAX, |n| n / 2),
    )?;
    l.vector(
        c.seq_len
            .checked_mul(c.head_dim)
            .map_or(usize::MAX, |n| n / 2),
    )?;
    let classifier = if untied {
        l.matrix(c.vocab_size, dim, f)?
    } else {
        embedding.clone()
    };
    let layers = assemble(attn_norm, wq, wk, wv, wo, ffn_norm, w1, w2, w3);
    Ok((embedding, layers, final_norm, classifier))
}

fn layout_versioned(l: &mut Layout<'_>, c: &Config, untied: bool, dt: DType) -> Result<Tensors> {
    let (nl, dim, hid, q, kv) = (c.n_layers, c.dim, c.hidden_dim, c.q_dim(), c.kv_dim());
    let attn_norm = l.stacked_vectors(nl, dim)?;
    let ffn_norm = l.stacked_vectors(nl, dim)?;
    let final_norm = l.vector(dim)?;
    let embedding = l.matrix(c.vocab_size, dim, dt)?;
    let wq = l.stacked(nl, q, dim, dt)?;
    let wk = l.stacked(nl, kv, dim, dt)?;
    let wv = l.stacked(nl, kv, dim, dt)?;
    let wo = l.stacked(nl, dim, q, dt)?;
    let w1 = l.stacked(nl, hid, dim, dt)?;
    let w2 = l.stacked(nl, dim, hid, dt)?;
    let w3 = l.stacked(nl, hid, dim, dt)?;
    let classifier = if untied {
        l.matrix(c.vocab_size, dim, dt)?
    } else {
        embedding.clone()
    };
    let layers = assemble(attn_norm, wq, wk, wv, wo, ffn_norm, w1, w2, w3);
    Ok((embedding, layers, final_norm, classifier))
}

/// Zips the per-kind stacks into one descriptor per layer (as many as the
/// shortest stack holds: all of them unless the file is truncated).
#[allow(clippy::too_many_arguments)]
fn assemble(
    attn_norm: Vec<VectorDesc>,
    wq: Vec<MatrixDesc>,
    wk: Vec<MatrixDesc>,
    wv: Vec<MatrixDesc>,
    wo: Vec<MatrixDesc>,
    ffn_norm: Vec<VectorDesc>,
    w1: Vec<MatrixDesc>,
    w2: Vec<MatrixDesc>,
    w3: Vec<MatrixDesc>,
) -> Vec<LayerDesc> {
    let n = [&wq, &wk, &wv, &wo, &w1, &w2, &w3]
        .iter()
        .map(|m| m.len())
        .chain([attn_norm.len(), ffn_norm.len()])
        .min()
        .unwrap_or(0);
    (0..n)
        .map(|i| LayerDesc {
            attn_norm: Some(attn_norm[i].clone()),
            wq: wq[i].clone(),
            wk: wk[i].clone(),
            wv: wv[i].clone(),
            wo: wo[i].clone(),
            ffn_norm: Some(ffn_norm[i].clone()),
            w1: w1[i].clone(),
            w2: w2[i].clone(),
            w3: w3[i].clone(),
            q_bias: None,
            k_bias: None,
            v_bias: None,
            q_norm: None,
            k_norm: None,
            post_attn_norm: None,
            post_ffn_norm: None,
        })
        .collect()
}
