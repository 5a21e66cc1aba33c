//! Model weights, memory-mapped from the model file.
//!
//! A loader (see `format`) checks every tensor's extent against the file and
//! records it as a descriptor (offsets into the mapping); the forward pass
//! turns descriptors into borrowed views. Nothing is copied: the weights cost
//! address space and page cache, not heap.

use memmap2::Mmap;
use std::ops::Range;

/// How a matrix's elements are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    /// 32-bit floats.
    F32,
    /// llama2.c's group-quantized int8: all int8 values row-major, then one
    /// f32 scale per `group_size` consecutive values.
    Q8Group { group_size: usize },
}

/// Where one matrix lives in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatrixDesc {
    pub rows: usize,
    pub cols: usize,
    pub dtype: DType,
    /// Byte offset of the values.
    pub offset: usize,
    /// Byte offset of the scales (`Q8Group` only).
    pub scales_offset: usize,
}

impl MatrixDesc {
    /// Bytes of values (not counting scales).
    pub fn value_bytes(&self) -> usize {
        match self.dtype {
            DType::F32 => self.rows * self.cols * 4,
            DType::Q8Group { .. } => self.rows * self.cols,
        }
    }

    /// Bytes the matrix occupies in all.
    pub fn bytes(&self) -> usize {
        match self.dtype {
            DType::F32 => self.value_bytes(),
            DType::Q8Group { group_size } => {
                self.value_bytes() + self.rows * self.cols / group_size * 4
            }
        }
    }
}

/// Where one f32 vector (a norm's gains) lives in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VectorDesc {
    pub len: usize,
    pub offset: usize,
}

/// The tensors of one transformer block.
#[derive(Clone, Debug)]
pub struct LayerDesc {
    /// `(dim,)`
    pub attn_norm: VectorDesc,
    /// `(n_heads * head_dim, dim)`
    pub wq: MatrixDesc,
    /// `(n_kv_heads * head_dim, dim)`
    pub wk: MatrixDesc,
    /// `(n_kv_heads * head_dim, dim)`
    pub wv: MatrixDesc,
    /// `(dim, n_heads * head_dim)`
    pub wo: MatrixDesc,
    /// `(dim,)`
    pub ffn_norm: VectorDesc,
    /// `(hidden_dim, dim)`, the gate
    pub w1: MatrixDesc,
    /// `(dim, hidden_dim)`, the down projection
    pub w2: MatrixDesc,
    /// `(hidden_dim, dim)`, the up projection
    pub w3: MatrixDesc,
}

/// Every tensor of a model, as descriptors into one mapped file.
#[derive(Debug)]
pub struct Weights {
    map: Mmap,
    /// `(vocab_size, dim)`
    pub embedding: MatrixDesc,
    pub layers: Vec<LayerDesc>,
    /// `(dim,)`
    pub final_norm: VectorDesc,
    /// `(vocab_size, dim)`; the same descriptor as `embedding` when tied.
    pub classifier: MatrixDesc,
}

/// A borrowed matrix, ready for the kernels.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub rows: usize,
    pub cols: usize,
    pub data: MatData<'a>,
}

/// The elements of a [`MatRef`].
#[derive(Clone, Copy, Debug)]
pub enum MatData<'a> {
    /// `(rows, cols)` floats.
    F32(&'a [f32]),
    /// `(rows, cols)` int8 values and `rows * cols / group_size` scales.
    Q8Group {
        q: &'a [i8],
        s: &'a [f32],
        group_size: usize,
    },
}

impl<'a> MatRef<'a> {
    /// The rows `range` of the matrix.
    pub fn slice_rows(&self, range: Range<usize>) -> MatRef<'a> {
        let (r0, r1, k) = (range.start, range.end, self.cols);
        let data = match self.data {
            MatData::F32(w) => MatData::F32(&w[r0 * k..r1 * k]),
            MatData::Q8Group { q, s, group_size } => MatData::Q8Group {
                q: &q[r0 * k..r1 * k],
                s: &s[r0 * k / group_size..r1 * k / group_size],
                group_size,
            },
        };
        MatRef {
            rows: r1 - r0,
            cols: k,
            data,
        }
    }

    /// Writes row `r` as floats into `out` (`cols` long).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let k = self.cols;
        match self.data {
            MatData::F32(w) => out.copy_from_slice(&w[r * k..(r + 1) * k]),
            MatData::Q8Group { q, s, group_size } => {
                let row = &q[r * k..(r + 1) * k];
                for (j, (o, &v)) in out.iter_mut().zip(row).enumerate() {
                    *o = v as f32 * s[(r * k + j) / group_size];
                }
            }
        }
    }
}

impl Weights {
    /// Wraps a mapping whose descriptors the loader has checked.
    pub(crate) fn new(
        map: Mmap,
        embedding: MatrixDesc,
        layers: Vec<LayerDesc>,
        final_norm: VectorDesc,
        classifier: MatrixDesc,
    ) -> Self {
        Weights {
            map,
            embedding,
            layers,
            final_norm,
            classifier,
        }
    }

    /// The bytes of the whole file.
    pub fn file_bytes(&self) -> &[u8] {
        &self.map
    }

    /// A view of the matrix `d`.
    pub fn matrix(&self, d: &MatrixDesc) -> MatRef<'_> {
        let n = d.rows * d.cols;
        let data = match d.dtype {
            DType::F32 => MatData::F32(f32s(&self.map[d.offset..d.offset + 4 * n])),
            DType::Q8Group { group_size } => MatData::Q8Group {
                q: i8s(&self.map[d.offset..d.offset + n]),
                s: f32s(&self.map[d.scales_offset..d.scales_offset + 4 * (n / group_size)]),
                group_size,
            },
        };
        MatRef {
            rows: d.rows,
            cols: d.cols,
            data,
        }
    }

    /// A view of the vector `d`.
    pub fn vector(&self, d: &VectorDesc) -> &[f32] {
        f32s(&self.map[d.offset..d.offset + 4 * d.len])
    }

    /// Bytes read from the weights to decode one token: every block's
    /// matrices and norms, one embedding row, the final norm and the classifier.
    pub fn bytes_per_token(&self) -> usize {
        let layer: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.w1, &l.w2, &l.w3]
                    .iter()
                    .map(|m| m.bytes())
                    .sum::<usize>()
                    + 4 * (l.attn_norm.len + l.ffn_norm.len)
            })
            .sum();
        let e = &self.embedding;
        layer + e.bytes() / e.rows + 4 * self.final_norm.len + self.classifier.bytes()
    }
}

/// Views little-endian bytes as f32. The loader only hands out 4-aligned
/// offsets into a page-aligned mapping, so misalignment is a bug.
fn f32s(bytes: &[u8]) -> &[f32] {
    // SAFETY: every bit pattern is a valid f32; `align_to` only puts
    // correctly aligned elements in the middle part.
    let (head, mid, tail) = unsafe { bytes.align_to::<f32>() };
    assert!(head.is_empty() && tail.is_empty(), "misaligned f32 tensor");
    mid
}

fn i8s(bytes: &[u8]) -> &[i8] {
    // SAFETY: u8 and i8 have the same size, alignment and valid bit patterns.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<i8>(), bytes.len()) }
}

#[cfg(target_endian = "big")]
compile_error!("tinyllm reads little-endian model files and supports little-endian CPUs only");
