//! Model weights, memory-mapped from the model file.
//!
//! A loader (see `format`) checks every tensor's extent against the file and
//! records it as a descriptor (offsets into the mapping); the forward pass
//! turns descriptors into borrowed views. Nothing is copied: the weights cost
//! address space and page cache, not heap.

use crate::quant::{
    Block, BlockQ4_0, BlockQ4_0x4, BlockQ4_1, BlockQ4K, BlockQ6K, BlockQ8_0, BlockQ8_0x4,
    Interleaved, QK, QK_K, SuperBlock,
};
use half::{bf16, f16};
use memmap2::Mmap;
use std::ops::Range;

/// How a matrix's elements are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit floats.
    F32,
    /// IEEE half floats.
    F16,
    /// bfloat16.
    BF16,
    /// 8-bit blocks of 32 with an f16 scale ([`BlockQ8_0`]).
    Q8_0,
    /// 4-bit blocks of 32 with an f16 scale ([`BlockQ4_0`]).
    Q4_0,
    /// 4-bit blocks of 32 with an f16 scale and offset ([`BlockQ4_1`]).
    Q4_1,
    /// [`DType::Q8_0`] blocks of four rows interleaved ([`BlockQ8_0x4`]).
    Q8_0x4,
    /// [`DType::Q4_0`] blocks of four rows interleaved ([`BlockQ4_0x4`]).
    Q4_0x4,
    /// ggml's 4-bit k-quant: super-blocks of 256 ([`BlockQ4K`]). Read from
    /// GGUF files only; tinyllm files do not hold it.
    Q4K,
    /// ggml's 6-bit k-quant: super-blocks of 256 ([`BlockQ6K`]). Read from
    /// GGUF files only.
    Q6K,
    /// llama2.c's group-quantized int8: all int8 values row-major, then one
    /// f32 scale per `group_size` consecutive values.
    Q8Group { group_size: usize },
}

impl DType {
    /// The name used in tinyllm files, on the command line and in reports
    /// (`q4_k`, `q6_k` and `q8_group` only in reports: tinyllm files do not
    /// hold them, see [`DType::from_name`]).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q8_0x4 => "q8_0x4",
            DType::Q4_0x4 => "q4_0x4",
            DType::Q4K => "q4_k",
            DType::Q6K => "q6_k",
            DType::Q8Group { .. } => "q8_group",
        }
    }

    /// Parses a name of a dtype tinyllm files can hold.
    pub fn from_name(name: &str) -> Option<DType> {
        [
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::Q8_0,
            DType::Q4_0,
            DType::Q4_1,
            DType::Q8_0x4,
            DType::Q4_0x4,
        ]
        .into_iter()
        .find(|d| d.name() == name)
    }

    /// Whether the weights are floats (their products take f32
    /// activations).
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// Whether rows are stored in blocks of [`QK`] values (or super-blocks
    /// of [`QK_K`]), whose products take activations quantized in blocks of
    /// [`QK`].
    pub fn is_blocked(self) -> bool {
        matches!(
            self,
            DType::Q8_0
                | DType::Q4_0
                | DType::Q4_1
                | DType::Q8_0x4
                | DType::Q4_0x4
                | DType::Q4K
                | DType::Q6K
        )
    }

    /// Whether rows are stored in interleaved groups of four.
    pub fn is_interleaved(self) -> bool {
        matches!(self, DType::Q8_0x4 | DType::Q4_0x4)
    }

    /// Bytes of a `rows x cols` matrix of this type, values and scales
    /// (`None` if `cols` does not fit the type's blocks or it overflows).
    pub fn matrix_bytes(self, rows: usize, cols: usize) -> Option<usize> {
        let n = rows.checked_mul(cols)?;
        let block = |bytes: usize| cols.is_multiple_of(QK).then(|| n / QK * bytes);
        let super_block = |bytes: usize| cols.is_multiple_of(QK_K).then(|| n / QK_K * bytes);
        match self {
            DType::F32 => n.checked_mul(4),
            DType::F16 | DType::BF16 => n.checked_mul(2),
            DType::Q8_0 => block(BlockQ8_0::BYTES),
            DType::Q4_0 => block(BlockQ4_0::BYTES),
            DType::Q4_1 => block(BlockQ4_1::BYTES),
            DType::Q8_0x4 if rows.is_multiple_of(4) => block(BlockQ8_0::BYTES),
            DType::Q4_0x4 if rows.is_multiple_of(4) => block(BlockQ4_0::BYTES),
            DType::Q8_0x4 | DType::Q4_0x4 => None,
            DType::Q4K => super_block(BlockQ4K::BYTES),
            DType::Q6K => super_block(BlockQ6K::BYTES),
            DType::Q8Group { group_size } => cols
                .is_multiple_of(group_size)
                .then(|| n + n / group_size * 4),
        }
    }

    /// The alignment, in bytes, that a tensor of this type needs in memory.
    pub fn alignment(self) -> usize {
        use std::mem::align_of;
        match self {
            DType::F32 => align_of::<f32>(),
            DType::F16 | DType::BF16 => align_of::<f16>(),
            DType::Q8_0 => align_of::<BlockQ8_0>(),
            DType::Q4_0 => align_of::<BlockQ4_0>(),
            DType::Q4_1 => align_of::<BlockQ4_1>(),
            DType::Q8_0x4 => align_of::<BlockQ8_0x4>(),
            DType::Q4_0x4 => align_of::<BlockQ4_0x4>(),
            DType::Q4K => align_of::<BlockQ4K>(),
            DType::Q6K => align_of::<BlockQ6K>(),
            DType::Q8Group { .. } => align_of::<f32>(),
        }
    }

    /// Bits per weight, scales included.
    pub fn bits_per_weight(self) -> f64 {
        match self {
            DType::Q8Group { group_size } => 8.0 + 32.0 / group_size as f64,
            // Four rows of a super-block: a whole unit of every other type.
            _ => self.matrix_bytes(4, QK_K).unwrap_or(0) as f64 * 8.0 / (4 * QK_K) as f64,
        }
    }
}

/// Where one matrix lives in the model's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatrixDesc {
    pub rows: usize,
    pub cols: usize,
    pub dtype: DType,
    /// Which of the mapped files holds it (shards of one model).
    pub file: usize,
    /// Byte offset of the values.
    pub offset: usize,
    /// Byte offset of the scales (`Q8Group` only).
    pub scales_offset: usize,
}

impl MatrixDesc {
    /// Bytes the matrix occupies in all (values and scales).
    pub fn bytes(&self) -> usize {
        self.dtype
            .matrix_bytes(self.rows, self.cols)
            .expect("the loader checked the matrix's size")
    }
}

/// Where one vector (a norm's gains, a bias) lives among the model's
/// vectors. Vectors are small; the loaders copy them as f32 into one
/// buffer, whatever their type in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VectorDesc {
    pub len: usize,
    /// Index of the first value in the buffer.
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
    /// `(n_heads * head_dim,)`, `(n_kv_heads * head_dim,)` twice: biases
    /// of the query, key and value projections (`Config::attn_bias`)
    pub q_bias: Option<VectorDesc>,
    pub k_bias: Option<VectorDesc>,
    pub v_bias: Option<VectorDesc>,
    /// `(head_dim,)` twice: gains of the per-head query and key norms
    /// (`Config::qk_norm`)
    pub q_norm: Option<VectorDesc>,
    pub k_norm: Option<VectorDesc>,
}

impl LayerDesc {
    /// The block's vectors with their names in tinyllm files.
    pub fn vectors(&self) -> Vec<(&'static str, &VectorDesc)> {
        let optional = [
            ("attn_q.bias", &self.q_bias),
            ("attn_k.bias", &self.k_bias),
            ("attn_v.bias", &self.v_bias),
            ("attn_q_norm", &self.q_norm),
            ("attn_k_norm", &self.k_norm),
        ];
        let mut v = vec![("attn_norm", &self.attn_norm), ("ffn_norm", &self.ffn_norm)];
        v.extend(
            optional
                .into_iter()
                .filter_map(|(n, d)| d.as_ref().map(|d| (n, d))),
        );
        v
    }

    /// The block's matrices with their names in tinyllm files.
    pub fn matrices(&self) -> [(&'static str, &MatrixDesc); 7] {
        [
            ("attn_q", &self.wq),
            ("attn_k", &self.wk),
            ("attn_v", &self.wv),
            ("attn_output", &self.wo),
            ("ffn_gate", &self.w1),
            ("ffn_down", &self.w2),
            ("ffn_up", &self.w3),
        ]
    }
}

/// Every tensor of a model: matrices as descriptors into the mapped files,
/// vectors copied into one small buffer.
#[derive(Debug)]
pub struct Weights {
    maps: Vec<Mmap>,
    vectors: Vec<f32>,
    /// `(vocab_size, dim)`
    pub embedding: MatrixDesc,
    pub layers: Vec<LayerDesc>,
    /// `(dim,)`
    pub final_norm: VectorDesc,
    /// `(vocab_size, dim)`; the same descriptor as `embedding` when tied.
    pub classifier: MatrixDesc,
    /// `(head_dim / 2,)` divisors of the rotary frequencies, if the file
    /// stores them (llama.cpp's `rope_freqs` for Llama 3.1).
    pub rope_factors: Option<VectorDesc>,
}

/// The parts of [`Weights`] a loader fills in.
#[derive(Debug)]
pub struct WeightsParts {
    pub maps: Vec<Mmap>,
    pub vectors: Vec<f32>,
    pub embedding: MatrixDesc,
    pub layers: Vec<LayerDesc>,
    pub final_norm: VectorDesc,
    pub classifier: MatrixDesc,
    pub rope_factors: Option<VectorDesc>,
}

/// A borrowed matrix, ready for the kernels.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub rows: usize,
    pub cols: usize,
    pub data: MatData<'a>,
}

/// The elements of a [`MatRef`], row-major.
#[derive(Clone, Copy, Debug)]
pub enum MatData<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
    /// `cols / 32` blocks per row.
    Q8_0(&'a [BlockQ8_0]),
    Q4_0(&'a [BlockQ4_0]),
    Q4_1(&'a [BlockQ4_1]),
    /// `rows / 4` rows of `cols / 32` groups.
    Q8_0x4(&'a [BlockQ8_0x4]),
    Q4_0x4(&'a [BlockQ4_0x4]),
    /// `cols / 256` super-blocks per row.
    Q4K(&'a [BlockQ4K]),
    Q6K(&'a [BlockQ6K]),
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
        let (e0, e1) = (r0 * k, r1 * k);
        let (b0, b1) = (e0 / QK, e1 / QK);
        let (s0, s1) = (e0 / QK_K, e1 / QK_K);
        let data = match self.data {
            MatData::F32(w) => MatData::F32(&w[e0..e1]),
            MatData::F16(w) => MatData::F16(&w[e0..e1]),
            MatData::BF16(w) => MatData::BF16(&w[e0..e1]),
            MatData::Q8_0(w) => MatData::Q8_0(&w[b0..b1]),
            MatData::Q4_0(w) => MatData::Q4_0(&w[b0..b1]),
            MatData::Q4_1(w) => MatData::Q4_1(&w[b0..b1]),
            // A group holds 4 rows' blocks: whole groups only.
            MatData::Q8_0x4(w) => MatData::Q8_0x4(&w[group_range(r0, r1, self.rows, k)]),
            MatData::Q4_0x4(w) => MatData::Q4_0x4(&w[group_range(r0, r1, self.rows, k)]),
            MatData::Q4K(w) => MatData::Q4K(&w[s0..s1]),
            MatData::Q6K(w) => MatData::Q6K(&w[s0..s1]),
            MatData::Q8Group { q, s, group_size } => MatData::Q8Group {
                q: &q[e0..e1],
                s: &s[e0 / group_size..e1 / group_size],
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
        let (e0, e1) = (r * k, (r + 1) * k);
        match self.data {
            MatData::F32(w) => out.copy_from_slice(&w[e0..e1]),
            MatData::F16(w) => out
                .iter_mut()
                .zip(&w[e0..e1])
                .for_each(|(o, v)| *o = v.to_f32()),
            MatData::BF16(w) => out
                .iter_mut()
                .zip(&w[e0..e1])
                .for_each(|(o, v)| *o = v.to_f32()),
            MatData::Q8_0(w) => crate::quant::dequantize_row(&w[e0 / QK..e1 / QK], out),
            MatData::Q4_0(w) => crate::quant::dequantize_row(&w[e0 / QK..e1 / QK], out),
            MatData::Q4_1(w) => crate::quant::dequantize_row(&w[e0 / QK..e1 / QK], out),
            MatData::Q8_0x4(w) => group_row_into(w, r, k, out),
            MatData::Q4_0x4(w) => group_row_into(w, r, k, out),
            MatData::Q4K(w) => crate::quant::dequantize_row_k(&w[e0 / QK_K..e1 / QK_K], out),
            MatData::Q6K(w) => crate::quant::dequantize_row_k(&w[e0 / QK_K..e1 / QK_K], out),
            MatData::Q8Group { q, s, group_size } => {
                for (j, (o, &v)) in out.iter_mut().zip(&q[e0..e1]).enumerate() {
                    *o = v as f32 * s[(e0 + j) / group_size];
                }
            }
        }
    }
}

/// The groups that hold rows `r0..r1` of an interleaved matrix of `rows`
/// rows of `cols` values; `r0` and `r1` (unless it is `rows`) must be
/// multiples of 4.
fn group_range(r0: usize, r1: usize, rows: usize, cols: usize) -> Range<usize> {
    assert!(r0.is_multiple_of(4) && (r1.is_multiple_of(4) || r1 == rows));
    let nb = cols / QK;
    (r0 / 4) * nb..r1.div_ceil(4) * nb
}

/// Row `r` of an interleaved matrix with rows of `cols` values, as floats.
fn group_row_into<I: Interleaved>(groups: &[I], r: usize, cols: usize, out: &mut [f32]) {
    let nb = cols / QK;
    let row = &groups[(r / 4) * nb..(r / 4 + 1) * nb];
    for (g, o) in row.iter().zip(out.chunks_exact_mut(QK)) {
        o.copy_from_slice(&g.row(r % 4).dequantize());
    }
}

impl Weights {
    /// Wraps mappings whose descriptors the loader has checked.
    pub(crate) fn new(p: WeightsParts) -> Self {
        Weights {
            maps: p.maps,
            vectors: p.vectors,
            embedding: p.embedding,
            layers: p.layers,
            final_norm: p.final_norm,
            classifier: p.classifier,
            rope_factors: p.rope_factors,
        }
    }

    /// Bytes of all the model's files together.
    pub fn file_size(&self) -> usize {
        self.maps.iter().map(|m| m.len()).sum()
    }

    /// The bytes of the first (or only) file.
    pub fn first_file(&self) -> &[u8] {
        &self.maps[0]
    }

    /// A view of the matrix `d`.
    pub fn matrix(&self, d: &MatrixDesc) -> MatRef<'_> {
        let map = &self.maps[d.file];
        let bytes = &map[d.offset..];
        let n = d.rows * d.cols;
        let data = match d.dtype {
            DType::F32 => MatData::F32(cast(bytes, n)),
            DType::F16 => MatData::F16(cast(bytes, n)),
            DType::BF16 => MatData::BF16(cast(bytes, n)),
            DType::Q8_0 => MatData::Q8_0(cast(bytes, n / QK)),
            DType::Q4_0 => MatData::Q4_0(cast(bytes, n / QK)),
            DType::Q4_1 => MatData::Q4_1(cast(bytes, n / QK)),
            DType::Q8_0x4 => MatData::Q8_0x4(cast(bytes, n / QK / 4)),
            DType::Q4_0x4 => MatData::Q4_0x4(cast(bytes, n / QK / 4)),
            DType::Q4K => MatData::Q4K(cast(bytes, n / QK_K)),
            DType::Q6K => MatData::Q6K(cast(bytes, n / QK_K)),
            DType::Q8Group { group_size } => MatData::Q8Group {
                q: cast(bytes, n),
                s: cast(&map[d.scales_offset..], n / group_size),
                group_size,
            },
        };
        MatRef {
            rows: d.rows,
            cols: d.cols,
            data,
        }
    }

    /// The values of the vector `d`.
    pub fn vector(&self, d: &VectorDesc) -> &[f32] {
        &self.vectors[d.offset..d.offset + d.len]
    }

    /// Bytes read from the weights to decode one token: every block's
    /// matrices and norms, one embedding row, the final norm and the classifier.
    pub fn bytes_per_token(&self) -> usize {
        let layer: usize = self
            .layers
            .iter()
            .map(|l| {
                l.matrices().iter().map(|(_, m)| m.bytes()).sum::<usize>()
                    + l.vectors().iter().map(|(_, v)| 4 * v.len).sum::<usize>()
            })
            .sum();
        let e = &self.embedding;
        layer + e.bytes() / e.rows + 4 * self.final_norm.len + self.classifier.bytes()
    }
}

/// Types any bit pattern of whose size is a valid value, so file bytes can
/// be viewed as them.
///
/// # Safety
///
/// Implementors must be `Copy`, have no padding and accept every bit pattern.
pub(crate) unsafe trait Pod: Copy {}
// SAFETY: plain numbers and `#[repr(C)]` blocks of them without padding
// (their sizes are asserted in `quant`).
unsafe impl Pod for f32 {}
// SAFETY: as above.
unsafe impl Pod for i8 {}
// SAFETY: as above.
unsafe impl Pod for u8 {}
// SAFETY: as above.
unsafe impl Pod for u32 {}
// SAFETY: as above.
unsafe impl Pod for f16 {}
// SAFETY: as above.
unsafe impl Pod for bf16 {}
// SAFETY: as above.
unsafe impl Pod for BlockQ8_0 {}
// SAFETY: as above.
unsafe impl Pod for BlockQ4_0 {}
// SAFETY: as above.
unsafe impl Pod for BlockQ4_1 {}
// SAFETY: as above.
unsafe impl Pod for BlockQ8_0x4 {}
// SAFETY: as above.
unsafe impl Pod for BlockQ4_0x4 {}
// SAFETY: as above.
unsafe impl Pod for BlockQ4K {}
// SAFETY: as above.
unsafe impl Pod for BlockQ6K {}

/// The first `n` values of type `T` at the start of `bytes`. The loaders
/// only hand out offsets aligned for their types in a page-aligned mapping,
/// and extents they checked, so a failure here is a bug.
pub(crate) fn cast<T: Pod>(bytes: &[u8], n: usize) -> &[T] {
    let len = n * std::mem::size_of::<T>();
    let bytes = &bytes[..len];
    assert!(
        (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()),
        "misaligned tensor"
    );
    // SAFETY: `T: Pod` accepts any bytes; the pointer is aligned (checked)
    // and the length covers exactly `n` values inside `bytes`.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), n) }
}

/// The bytes of a slice of plain values.
pub(crate) fn as_bytes<T: Pod>(v: &[T]) -> &[u8] {
    // SAFETY: `T: Pod` has no padding, so every byte of the slice is
    // initialised; the length is the slice's size in bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

#[cfg(target_endian = "big")]
compile_error!("tinyllm reads little-endian model files and supports little-endian CPUs only");
