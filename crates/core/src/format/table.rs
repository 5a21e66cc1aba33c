//! The one place where named tensors become a model's [`Weights`].
//!
//! Every loader of a named-tensor format (tinyllm, GGUF, safetensors) lists
//! its tensors here under tinyllm's names (`token_embd`, `blk.{i}.attn_q`,
//! ..., as in `docs/FORMAT.md`) with their file, dtype, shape and offset.
//! [`TensorTable::into_weights`] then takes the tensors the configuration
//! needs, checks each shape, extent and alignment, copies the vectors as f32
//! and rejects anything left over.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::weights::{DType, LayerDesc, MatrixDesc, VectorDesc, Weights, WeightsParts, cast};
use half::{bf16, f16};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where one named tensor lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorRef {
    /// Index of the mapped file.
    pub file: usize,
    pub dtype: DType,
    /// Outermost first: `[rows, cols]` or `[len]`.
    pub shape: Vec<usize>,
    /// Byte offset in its file.
    pub offset: usize,
}

/// The tensors of a model by tinyllm name, before they are checked.
#[derive(Debug)]
pub struct TensorTable {
    path: PathBuf,
    tensors: BTreeMap<String, TensorRef>,
}

impl TensorTable {
    /// An empty table for the model at `path` (named in errors).
    pub fn new(path: &Path) -> Self {
        TensorTable {
            path: path.to_path_buf(),
            tensors: BTreeMap::new(),
        }
    }

    /// The model's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn bad(&self, reason: String) -> Error {
        Error::format(&self.path, reason)
    }

    /// Adds a tensor; a name given twice is an error.
    pub fn insert(&mut self, name: &str, t: TensorRef) -> Result<()> {
        if self.tensors.insert(name.to_string(), t).is_some() {
            return Err(self.bad(format!("tensor '{name}' appears twice")));
        }
        Ok(())
    }

    /// Drops `name` from the table, if it is there.
    pub fn remove(&mut self, name: &str) {
        self.tensors.remove(name);
    }

    /// Whether the table holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Takes the tensors `config` needs out of the table, checks them
    /// against `maps` and builds the weights. Tensors left over are an error.
    pub fn into_weights(mut self, config: &Config, maps: Vec<Mmap>) -> Result<Weights> {
        let c = config;
        let (d, q, kv, h, v, hd) = (
            c.dim,
            c.q_dim(),
            c.kv_dim(),
            c.hidden_dim,
            c.vocab_size,
            c.head_dim,
        );
        let mut vectors = Vec::new();
        let embedding = self.matrix(&maps, "token_embd", [v, d])?;
        let classifier = if self.contains("output") {
            self.matrix(&maps, "output", [v, d])?
        } else {
            embedding.clone()
        };
        let final_norm = self.vector(&maps, &mut vectors, "output_norm", d)?;
        let rope_factors = if self.contains("rope_freqs") {
            Some(self.vector(&maps, &mut vectors, "rope_freqs", hd / 2)?)
        } else {
            None
        };
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            self.unfuse(i, c)?;
            let name = |s: &str| format!("blk.{i}.{s}");
            let mut vec =
                |t: &mut Self, s: &str, len: usize| t.vector(&maps, &mut vectors, &name(s), len);
            let (attn_norm, ffn_norm) = if c.pre_norms {
                (
                    Some(vec(&mut self, "attn_norm", d)?),
                    Some(vec(&mut self, "ffn_norm", d)?),
                )
            } else {
                (None, None)
            };
            let (post_attn_norm, post_ffn_norm) = if c.post_norms {
                (
                    Some(vec(&mut self, "post_attention_norm", d)?),
                    Some(vec(&mut self, "post_ffw_norm", d)?),
                )
            } else {
                (None, None)
            };
            let (q_bias, k_bias, v_bias) = if c.attn_bias {
                (
                    Some(vec(&mut self, "attn_q.bias", q)?),
                    Some(vec(&mut self, "attn_k.bias", kv)?),
                    Some(vec(&mut self, "attn_v.bias", kv)?),
                )
            } else {
                (None, None, None)
            };
            let (q_norm, k_norm) = if c.qk_norm {
                let (qn, kn) = c.qk_norm_widths();
                (
                    Some(vec(&mut self, "attn_q_norm", qn)?),
                    Some(vec(&mut self, "attn_k_norm", kn)?),
                )
            } else {
                (None, None)
            };
            layers.push(LayerDesc {
                attn_norm,
                wq: self.matrix(&maps, &name("attn_q"), [q, d])?,
                wk: self.matrix(&maps, &name("attn_k"), [kv, d])?,
                wv: self.matrix(&maps, &name("attn_v"), [kv, d])?,
                wo: self.matrix(&maps, &name("attn_output"), [d, q])?,
                ffn_norm,
                w1: self.matrix(&maps, &name("ffn_gate"), [h, d])?,
                w2: self.matrix(&maps, &name("ffn_down"), [d, h])?,
                w3: self.matrix(&maps, &name("ffn_up"), [h, d])?,
                q_bias,
                k_bias,
                v_bias,
                q_norm,
                k_norm,
                post_attn_norm,
                post_ffn_norm,
            });
        }
        // Gemma's norms scale by `1 + w`: the kernels take the sum.
        let norms = layers.iter().flat_map(LayerDesc::norms);
        for v in norms.chain([&final_norm]) {
            vectors[v.offset..v.offset + v.len]
                .iter_mut()
                .for_each(|g| *g += c.norm_offset);
        }
        if let Some(extra) = self.tensors.keys().next() {
            return Err(self.bad(format!(
                "unexpected tensor '{extra}' (not part of this model's configuration)"
            )));
        }
        let weights = Weights::new(WeightsParts {
            maps,
            vectors,
            embedding,
            layers,
            final_norm,
            classifier,
            rope_factors,
        });
        weights.check_finite(&self.path)?;
        Ok(weights)
    }

    /// Removes the vector `name` and returns its values, for tensors that
    /// are settings rather than weights (LongRoPE's factors in GGUF files).
    pub fn take_values(&mut self, maps: &[Mmap], name: &str, len: usize) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(len);
        self.vector(maps, &mut out, name, len)?;
        Ok(out)
    }

    /// Splits layer `i`'s fused projections into the ones the engine runs,
    /// as row ranges of the same stored matrix (nothing is copied):
    /// `attn_qkv` (Phi-3's `qkv_proj`) into `attn_q`, `attn_k` and `attn_v`;
    /// `ffn_gate_up` (Phi-3's `gate_up_proj`) into `ffn_gate` and `ffn_up`;
    /// and an `ffn_up` twice as tall as the hidden size with no `ffn_gate`
    /// (llama.cpp keeps Phi-3's pair that way) likewise. The gate rows come
    /// first.
    fn unfuse(&mut self, i: usize, c: &Config) -> Result<()> {
        let name = |s: &str| format!("blk.{i}.{s}");
        let (q, kv, h) = (c.q_dim(), c.kv_dim(), c.hidden_dim);
        if self.contains(&name("attn_qkv")) {
            let parts = [
                (name("attn_q"), q),
                (name("attn_k"), kv),
                (name("attn_v"), kv),
            ];
            self.split_rows(&name("attn_qkv"), &parts)?;
        }
        let gate_up = if self.contains(&name("ffn_gate_up")) {
            Some(name("ffn_gate_up"))
        } else {
            let up = name("ffn_up");
            let tall = self
                .tensors
                .get(&up)
                .map(|t| t.shape.first() == Some(&(2 * h)));
            (!self.contains(&name("ffn_gate")) && tall == Some(true)).then_some(up)
        };
        if let Some(fused) = gate_up {
            self.split_rows(&fused, &[(name("ffn_gate"), h), (name("ffn_up"), h)])?;
        }
        Ok(())
    }

    /// Replaces the matrix `fused` by consecutive row ranges of it, named
    /// and sized by `parts`.
    fn split_rows(&mut self, fused: &str, parts: &[(String, usize)]) -> Result<()> {
        let t = self.tensors.remove(fused).expect("the caller saw it");
        let rows: usize = parts.iter().map(|(_, r)| r).sum();
        let &[r, cols] = t.shape.as_slice() else {
            return Err(self.bad(format!(
                "tensor '{fused}' has shape {:?}, expected [{rows}, columns]",
                t.shape
            )));
        };
        if r != rows {
            return Err(self.bad(format!(
                "tensor '{fused}' has shape {:?}, expected [{rows}, {cols}]",
                t.shape
            )));
        }
        let mut offset = t.offset;
        for (part, r) in parts {
            let bytes = t.dtype.matrix_bytes(*r, cols).ok_or_else(|| {
                self.bad(format!(
                    "tensor '{fused}' ({}) cannot be split into parts of {r} rows",
                    t.dtype.name()
                ))
            })?;
            let t = TensorRef {
                shape: vec![*r, cols],
                offset,
                ..t.clone()
            };
            self.insert(part, t)?;
            offset += bytes;
        }
        Ok(())
    }

    /// Removes `name` from the table, checking its shape and extent.
    fn take(&mut self, maps: &[Mmap], name: &str, shape: &[usize]) -> Result<TensorRef> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| self.bad(format!("tensor '{name}' is missing")))?;
        if t.shape != shape {
            return Err(self.bad(format!(
                "tensor '{name}' has shape {:?}, expected {shape:?}",
                t.shape
            )));
        }
        let (rows, cols) = match shape {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            _ => unreachable!("vectors and matrices only"),
        };
        let bytes = t.dtype.matrix_bytes(rows, cols).ok_or_else(|| {
            self.bad(format!(
                "tensor '{name}' of shape {shape:?} cannot be stored as {}",
                t.dtype.name()
            ))
        })?;
        let len = maps.get(t.file).map_or(0, |m| m.len());
        if t.offset.checked_add(bytes).is_none_or(|end| end > len) {
            return Err(self.bad(format!(
                "truncated: tensor '{name}' needs bytes {}..{} but its file is {len} bytes",
                t.offset,
                t.offset.saturating_add(bytes)
            )));
        }
        if !t.offset.is_multiple_of(t.dtype.alignment()) {
            return Err(self.bad(format!(
                "tensor '{name}' starts at byte {}, not aligned for {} values",
                t.offset,
                t.dtype.name()
            )));
        }
        Ok(t)
    }

    fn matrix(&mut self, maps: &[Mmap], name: &str, shape: [usize; 2]) -> Result<MatrixDesc> {
        let t = self.take(maps, name, &shape)?;
        if matches!(t.dtype, DType::Q8Group { .. }) {
            return Err(self.bad(format!("tensor '{name}' has an unsupported dtype")));
        }
        Ok(MatrixDesc {
            rows: shape[0],
            cols: shape[1],
            dtype: t.dtype,
            file: t.file,
            offset: t.offset,
            scales_offset: 0,
        })
    }

    fn vector(
        &mut self,
        maps: &[Mmap],
        out: &mut Vec<f32>,
        name: &str,
        len: usize,
    ) -> Result<VectorDesc> {
        let t = self.take(maps, name, &[len])?;
        let bytes = &maps[t.file][t.offset..];
        let offset = out.len();
        match t.dtype {
            DType::F32 => out.extend_from_slice(cast::<f32>(bytes, len)),
            DType::F16 => out.extend(cast::<f16>(bytes, len).iter().map(|v| v.to_f32())),
            DType::BF16 => out.extend(cast::<bf16>(bytes, len).iter().map(|v| v.to_f32())),
            other => {
                return Err(self.bad(format!(
                    "tensor '{name}' is a vector stored as {}; vectors must be f32, f16 or bf16",
                    other.name()
                )));
            }
        }
        if let Some(bad) = out[offset..].iter().position(|x| !x.is_finite()) {
            return Err(self.bad(format!(
                "tensor '{name}' holds a non-finite value at index {bad}"
            )));
        }
        Ok(VectorDesc { len, offset })
    }
}
