//! Model weights, memory-mapped from the model file.
//!
//! A loader (see `format`) checks every tensor's extent against the file and
//! records it as a descriptor (offsets into the mapping); the forward pass
//! turns descriptors into borrowed views. Nothing is copied: the weights cost
//! address space and page cache, not heap.

use crate::error::{Error, Result};
use crate::kernels::Kernels;
use crate::quant::{
    self, Block, BlockQ3K, BlockQ4_0, BlockQ4_0x4, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1,
    BlockQ5K, BlockQ6K, BlockQ8_0, BlockQ8_0x4, BlockQ8Act, Interleaved, QK, QK_K,
};
use half::{bf16, f16};
use memmap2::Mmap;
use std::ops::Range;
use std::path::Path;

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
    /// ggml's 5-bit blocks of 32 with an f16 scale ([`BlockQ5_0`]). Read
    /// from GGUF files only.
    Q5_0,
    /// ggml's 5-bit blocks of 32 with an f16 scale and offset
    /// ([`BlockQ5_1`]). Read from GGUF files only.
    Q5_1,
    /// [`DType::Q8_0`] blocks of four rows interleaved ([`BlockQ8_0x4`]).
    Q8_0x4,
    /// [`DType::Q4_0`] blocks of four rows interleaved ([`BlockQ4_0x4`]).
    Q4_0x4,
    /// ggml's 3-bit k-quant: super-blocks of 256 ([`BlockQ3K`]). Read from
    /// GGUF files only.
    Q3K,
    /// ggml's 4-bit k-quant: super-blocks of 256 ([`BlockQ4K`]). Read from
    /// GGUF files only; tinyllm files do not hold it.
    Q4K,
    /// ggml's 5-bit k-quant: super-blocks of 256 ([`BlockQ5K`]). Read from
    /// GGUF files only.
    Q5K,
    /// ggml's 6-bit k-quant: super-blocks of 256 ([`BlockQ6K`]). Read from
    /// GGUF files only.
    Q6K,
    /// llama2.c's group-quantized int8: all int8 values row-major, then one
    /// f32 scale per `group_size` consecutive values.
    Q8Group { group_size: usize },
}

// ---------------------------------------------------------------------------
// The weight types: one entry each
// ---------------------------------------------------------------------------

/// The form of the activations a weight type's products take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActForm {
    /// f32 values (the float types).
    F32,
    /// Blocks of [`QK`] quantized at run time ([`BlockQ8Act`]).
    Q8Blocks,
    /// llama2.c's int8 groups, of the weights' group size.
    Q8Groups,
}

/// What tinyllm knows of a weight type besides its two operations (see
/// `WeightType`): its entry in the table.
#[derive(Debug)]
pub struct TypeTraits {
    /// The name used in tinyllm files, on the command line and in reports.
    pub name: &'static str,
    /// Consecutive values of a row that one block holds (1 for the floats).
    pub block_cols: usize,
    /// Rows one block spans: 4 for the interleaved types, else 1.
    pub block_rows: usize,
    /// Bytes of one block (values only: llama2.c's groups keep their
    /// scales apart).
    pub block_bytes: usize,
    /// The alignment, in bytes, that a tensor of the type needs in memory.
    pub align: usize,
    /// The form of the activations its products take.
    pub act: ActForm,
}

impl TypeTraits {
    /// The entry of the storage unit `T`, a block of `block_rows` rows of
    /// `block_cols` values.
    const fn of<T>(name: &'static str, block_cols: usize, block_rows: usize, act: ActForm) -> Self {
        TypeTraits {
            name,
            block_cols,
            block_rows,
            block_bytes: std::mem::size_of::<T>(),
            align: std::mem::align_of::<T>(),
            act,
        }
    }

    /// Bytes of one row of blocks (`block_rows` rows of `cols` values).
    fn row_bytes(&self, cols: usize) -> usize {
        cols / self.block_cols * self.block_bytes
    }
}

/// A weight type: the storage unit of its matrices (a float, a block or a
/// super-block), with its [`TypeTraits`] and the two operations that depend
/// on its layout. This, with `with_type!` which maps each [`DType`] to its
/// unit, is the one place a weight type is described; [`DType`], [`MatRef`]
/// and the CPU's products consult it instead of matching on the type.
///
/// To add a block type:
/// 1. define its block in `quant`, `#[repr(C)]` with its size asserted, and
///    mark it [`Pod`];
/// 2. add its [`DType`] variant and its arm in `with_type!`;
/// 3. add its entry to `weight_types!` below: its [`TypeTraits`], whether a
///    unit is finite, how to dequantize a row, and which kernel runs its
///    product;
/// 4. give it its kernel: a field of [`Kernels`] filled in by `tier!`, and
///    its `kernel` accessor in `kernels` (a new family needs a `Kernels`
///    method that checks the extents, as `matmul_quant_into` does);
/// 5. map its name or type id to the [`DType`] in the loaders (`format`).
pub(crate) trait WeightType: Pod {
    /// The type's entry in the table.
    const TRAITS: TypeTraits;

    /// Whether every value the unit stands for is finite: a float that is
    /// not NaN or infinite, a block whose scales are not.
    fn finite(&self) -> bool;

    /// Writes row `r` of `m` (a matrix of this type) as floats into `out`
    /// (`m.cols` long).
    fn dequantize_row(m: &MatRef<'_>, r: usize, out: &mut [f32]);

    /// `out[t * ldo + r] = m[r] . x[t]` for every row `r` of `m` (a matrix
    /// of this type) and `t < n`: a direct call of the type's kernel.
    ///
    /// # Safety
    ///
    /// As for [`MatRef::matmul_into`].
    unsafe fn matmul(
        k: &Kernels,
        m: &MatRef<'_>,
        x: &Activations<'_>,
        n: usize,
        out: *mut f32,
        ldo: usize,
    );
}

/// Evaluates `$body` with `$T` the storage unit (the [`WeightType`]) of the
/// dtype `$dtype`: a match of one arm per type, each calling its own
/// monomorphised code.
#[rustfmt::skip]
macro_rules! with_type {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            DType::F32 => { type $T = f32; $body }
            DType::F16 => { type $T = f16; $body }
            DType::BF16 => { type $T = bf16; $body }
            DType::Q8_0 => { type $T = BlockQ8_0; $body }
            DType::Q4_0 => { type $T = BlockQ4_0; $body }
            DType::Q4_1 => { type $T = BlockQ4_1; $body }
            DType::Q5_0 => { type $T = BlockQ5_0; $body }
            DType::Q5_1 => { type $T = BlockQ5_1; $body }
            DType::Q8_0x4 => { type $T = BlockQ8_0x4; $body }
            DType::Q4_0x4 => { type $T = BlockQ4_0x4; $body }
            DType::Q3K => { type $T = BlockQ3K; $body }
            DType::Q4K => { type $T = BlockQ4K; $body }
            DType::Q5K => { type $T = BlockQ5K; $body }
            DType::Q6K => { type $T = BlockQ6K; $body }
            DType::Q8Group { .. } => { type $T = i8; $body }
        }
    };
}

/// Implements [`WeightType`] for each storage unit from its entry: the
/// [`TypeTraits`], then the bodies of the two operations over the named
/// arguments (for `matmul`, in an `unsafe` block).
macro_rules! weight_types {
    ($(
        $t:ty = $traits:expr;
        fn finite($b:ident) $finite:block
        fn dequantize_row($m:ident, $r:ident, $out:ident) $dequantize:block
        fn matmul($k:ident, $w:ident, $x:ident, $n:ident, $o:ident, $ldo:ident) { $($matmul:tt)* }
    )*) => {$(
        impl WeightType for $t {
            const TRAITS: TypeTraits = $traits;

            fn finite(&self) -> bool {
                let $b = self;
                $finite
            }

            fn dequantize_row($m: &MatRef<'_>, $r: usize, $out: &mut [f32]) $dequantize

            unsafe fn matmul(
                $k: &Kernels,
                $w: &MatRef<'_>,
                $x: &Activations<'_>,
                $n: usize,
                $o: *mut f32,
                $ldo: usize,
            ) {
                // SAFETY: forwarded contract; the kernels check the extents.
                unsafe { $($matmul)* }
            }
        }
    )*};
}

weight_types! {
    f32 = TypeTraits::of::<Self>("f32", 1, 1, ActForm::F32);
    fn finite(b) { b.to_bits() & 0x7f80_0000 != 0x7f80_0000 }
    fn dequantize_row(m, r, out) { floats_into(m.row_blocks::<Self>(r), out) }
    fn matmul(k, m, x, n, out, ldo) {
        k.matmul_f32_into(m.blocks(), m.cols, x.x, x.ldx, n, out, ldo)
    }

    f16 = TypeTraits::of::<Self>("f16", 1, 1, ActForm::F32);
    fn finite(b) { b.to_bits() & 0x7c00 != 0x7c00 }
    fn dequantize_row(m, r, out) { floats_into(m.row_blocks::<Self>(r), out) }
    fn matmul(k, m, x, n, out, ldo) {
        k.matmul_f16_into(m.blocks(), m.cols, x.x, x.ldx, n, out, ldo)
    }

    bf16 = TypeTraits::of::<Self>("bf16", 1, 1, ActForm::F32);
    fn finite(b) { b.to_bits() & 0x7f80 != 0x7f80 }
    fn dequantize_row(m, r, out) { floats_into(m.row_blocks::<Self>(r), out) }
    fn matmul(k, m, x, n, out, ldo) {
        k.matmul_bf16_into(m.blocks(), m.cols, x.x, x.ldx, n, out, ldo)
    }

    BlockQ8_0 = TypeTraits::of::<Self>("q8_0", QK, 1, ActForm::Q8Blocks);
    fn finite(b) { b.d.is_finite() }
    fn dequantize_row(m, r, out) { quant::dequantize_row(m.row_blocks::<Self>(r), out) }
    fn matmul(k, m, x, n, out, ldo) {
        k.matmul_quant_into::<Self>(m.blocks(), m.cols / QK, x.blocks, n, out, ldo)
    }

    BlockQ4_0 = TypeTraits::of::<Self>("q4_0", QK, 1, ActForm::Q8Blocks);
    fn finite(b) { b.d.is_finite() }
    fn dequantize_row(m, r, out) { quant::dequantize_row(m.row_blocks::<Self>(r), out) }
    fn matmul(k, m, x, n, out, ldo) {
        k.matmul_quant_into::<Self>(m.blocks(), m.cols / QK, x.blocks, n, out, ldo)
    }

    BlockQ4_1 = TypeTraits::of::<Self>("q4_1", QK, 1, ActForm::Q8Blocks);
    fn finite(b) { b.d.is_finite() && b.m.is_finite() }
    fn dequantize_row(m, r, out) { quant::dequantize_row(m.row_blocks::<Self>(r), out) }
    fn matmul(k, m, x, n, out, ldo) {
        k.matmul_quant_into::<Self>(m.blocks(), m.cols / QK, x.blocks, n, out, ldo)
    }

    BlockQ5_0 = TypeTraits::of::<Self>("q5_0", QK, 1, ActForm::Q8Blocks);
    fn finite(b) { b.d.is_finite() }
    fn dequantize_row(m, r, out) { quant::dequantize_row(m.row_blocks::<Self>(r), out) }
    fn matmul(k, m, x, n, out, ldo) {
        k.matmul_quant_into::<Self>(m.blocks(), m.cols / QK, x.blocks, n, out, ldo)
    }

    BlockQ5_1 = TypeTraits::of::<Self>("q5_1", QK, 1, ActForm::Q8Blocks);
    fn finite(b) { b.d.is_finite() && b.m.is_finite() }
    fn dequantize_row(m, r, out) { quant::dequantize_row(m.row_blocks::<Self>(r), out) }
    fn matmul(k, m, x, n, out, ldo) {
        k.matmul_quant_into::<Self>(m.blocks(), m.cols / QK, x.blocks, n, out, ldo)
    }

    // Blocks of four rows: a row of them holds four rows of the matrix.
    BlockQ8_0x4 = TypeTraits::of::<Self>("q8_0x4", QK, 4, ActForm::Q8Blocks);
    fn finite(b) { b.d.iter().all(|d| d.is_finite()) }
    fn dequantize_row(m, r, out) { group_row_into(m.row_blocks::<Self>(r), r % 4, out) }
    fn matmul(k, m, x, n, out, ldo) {
        k.matmul_quant4_into::<Self>(m.blocks(), m.cols / QK, x.blocks, n, out, ldo)
    }

    BlockQ4_0x4 = TypeTraits::of::<Self>("q4_0x4", QK, 4, ActForm::Q8Blocks);
    fn finite(b) { b.d.iter().all(|d| d.is_finite()) }
    fn dequantize_row(m, r, out) { group_row_into(m.row_blocks::<Self>(r), r % 4, out) }
    fn matmul(k, m, x, n, out, ldo) {
        k.matmul_quant4_into::<Self>(m.blocks(), m.cols / QK, x.blocks, n, out, ldo)
    }

    // Super-blocks of 256 values, against activation blocks of 32.
    BlockQ3K = TypeTraits::of::<Self>("q3_k", QK_K, 1, ActForm::Q8Blocks);
    fn finite(b) { b.d.is_finite() }
    fn dequantize_row(m, r, out) { quant::dequantize_row_k(m.row_blocks::<Self>(r), out) }
    fn matmul(k, m, x, n, out, ldo) {
        k.matmul_kquant_into::<Self>(m.blocks(), m.cols / QK_K, x.blocks, n, out, ldo)
    }

    BlockQ4K = TypeTraits::of::<Self>("q4_k", QK_K, 1, ActForm::Q8Blocks);
    fn finite(b) { b.d.is_finite() && b.dmin.is_finite() }
    fn dequantize_row(m, r, out) { quant::dequantize_row_k(m.row_blocks::<Self>(r), out) }
    fn matmul(k, m, x, n, out, ldo) {
        k.matmul_kquant_into::<Self>(m.blocks(), m.cols / QK_K, x.blocks, n, out, ldo)
    }

    BlockQ5K = TypeTraits::of::<Self>("q5_k", QK_K, 1, ActForm::Q8Blocks);
    fn finite(b) { b.d.is_finite() && b.dmin.is_finite() }
    fn dequantize_row(m, r, out) { quant::dequantize_row_k(m.row_blocks::<Self>(r), out) }
    fn matmul(k, m, x, n, out, ldo) {
        k.matmul_kquant_into::<Self>(m.blocks(), m.cols / QK_K, x.blocks, n, out, ldo)
    }

    BlockQ6K = TypeTraits::of::<Self>("q6_k", QK_K, 1, ActForm::Q8Blocks);
    fn finite(b) { b.d.is_finite() }
    fn dequantize_row(m, r, out) { quant::dequantize_row_k(m.row_blocks::<Self>(r), out) }
    fn matmul(k, m, x, n, out, ldo) {
        k.matmul_kquant_into::<Self>(m.blocks(), m.cols / QK_K, x.blocks, n, out, ldo)
    }

    // llama2.c's groups: the values, a byte each, and one f32 scale per
    // `group_size` values of a row, stored apart (the matrix's `scales`),
    // whose alignment the type takes.
    i8 = TypeTraits {
        align: std::mem::align_of::<f32>(),
        ..TypeTraits::of::<Self>("q8_group", 1, 1, ActForm::Q8Groups)
    };
    fn finite(_b) { true } // integers; the scales are checked apart
    fn dequantize_row(m, r, out) {
        let gs = m.dtype.group_size().expect("llama2.c groups");
        let (q, s) = (m.row_blocks::<Self>(r), m.row_scales(r));
        for (j, (o, &v)) in out.iter_mut().zip(q).enumerate() {
            *o = v as f32 * s[j / gs];
        }
    }
    fn matmul(k, m, x, n, out, ldo) {
        let (q, s, gs) = x.groups.expect("prepared for this matrix's dtype");
        assert_eq!(m.dtype.group_size(), Some(gs));
        k.matmul_q8g_into(m.blocks(), m.scales, m.cols, gs, q, s, n, out, ldo)
    }
}

/// The index of the first unit of `units` that is not finite. Runs of
/// units are tested without an early exit, which the compiler vectorises:
/// a clean file (the usual case) is read at memory speed.
fn first_non_finite<T: WeightType>(units: &[T]) -> Option<usize> {
    let mut start = 0;
    for run in units.chunks(4096) {
        if !run.iter().fold(true, |ok, u| ok & u.finite()) {
            return run.iter().position(|u| !u.finite()).map(|i| start + i);
        }
        start += run.len();
    }
    None
}

/// Floats of any width as f32.
fn floats_into<T: Copy + Into<f32>>(values: &[T], out: &mut [f32]) {
    assert_eq!(values.len(), out.len());
    for (o, &v) in out.iter_mut().zip(values) {
        *o = v.into();
    }
}

/// Row `sub` (0..4) of a row of interleaved groups, as floats.
fn group_row_into<I: Interleaved>(groups: &[I], sub: usize, out: &mut [f32]) {
    assert_eq!(groups.len() * QK, out.len());
    for (g, o) in groups.iter().zip(out.chunks_exact_mut(QK)) {
        o.copy_from_slice(&g.row(sub).dequantize());
    }
}

impl DType {
    /// The type's entry in the table of weight types (see `WeightType`).
    pub fn traits(self) -> &'static TypeTraits {
        with_type!(self, T => &T::TRAITS)
    }

    /// The name used in tinyllm files, on the command line and in reports
    /// (the GGUF types, `q5_0`, `q5_1` and the k-quants, and `q8_group`
    /// only in reports: tinyllm files do not hold them, see
    /// [`DType::from_name`]).
    pub fn name(self) -> &'static str {
        self.traits().name
    }

    /// The name of the blocks the type holds, whatever their layout: the
    /// interleaved forms hold q4_0 and q8_0 blocks, four rows at a time.
    pub fn block_name(self) -> &'static str {
        match self {
            DType::Q4_0x4 => DType::Q4_0.name(),
            DType::Q8_0x4 => DType::Q8_0.name(),
            other => other.name(),
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
        self.traits().act == ActForm::F32
    }

    /// Whether the products take activations quantized in blocks of [`QK`]
    /// (the types stored in blocks of [`QK`] values or super-blocks of
    /// [`QK_K`]).
    pub fn is_blocked(self) -> bool {
        self.traits().act == ActForm::Q8Blocks
    }

    /// Whether rows are stored in interleaved groups of four.
    pub fn is_interleaved(self) -> bool {
        self.traits().block_rows > 1
    }

    /// The group size of llama2.c's int8 groups, whose scales are stored
    /// apart from the values (`None` for every other type).
    pub fn group_size(self) -> Option<usize> {
        match self {
            DType::Q8Group { group_size } => Some(group_size),
            _ => None,
        }
    }

    /// Bytes of a `rows x cols` matrix of this type, values and scales
    /// (`None` if the matrix does not fit the type's blocks or it overflows).
    pub fn matrix_bytes(self, rows: usize, cols: usize) -> Option<usize> {
        let t = self.traits();
        let n = rows.checked_mul(cols)?;
        if !cols.is_multiple_of(t.block_cols) || !rows.is_multiple_of(t.block_rows) {
            return None;
        }
        let values = (n / (t.block_cols * t.block_rows)).checked_mul(t.block_bytes)?;
        let scales = match self.group_size() {
            Some(gs) => cols.is_multiple_of(gs).then(|| n / gs * 4)?,
            None => 0,
        };
        values.checked_add(scales)
    }

    /// The alignment, in bytes, that a tensor of this type needs in memory.
    pub fn alignment(self) -> usize {
        self.traits().align
    }

    /// Bits per weight, scales included.
    pub fn bits_per_weight(self) -> f64 {
        let t = self.traits();
        let values = (8 * t.block_bytes) as f64 / (t.block_cols * t.block_rows) as f64;
        values + self.group_size().map_or(0.0, |gs| 32.0 / gs as f64)
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
    /// `(dim,)`; none without `Config::pre_norms`
    pub attn_norm: Option<VectorDesc>,
    /// `(n_heads * head_dim, dim)`
    pub wq: MatrixDesc,
    /// `(n_kv_heads * head_dim, dim)`
    pub wk: MatrixDesc,
    /// `(n_kv_heads * head_dim, dim)`
    pub wv: MatrixDesc,
    /// `(dim, n_heads * head_dim)`
    pub wo: MatrixDesc,
    /// `(dim,)`; none without `Config::pre_norms`
    pub ffn_norm: Option<VectorDesc>,
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
    /// (`Config::qk_norm`), or `(n_heads * head_dim,)` and `(n_kv_heads *
    /// head_dim,)` with `Config::qk_norm_whole`
    pub q_norm: Option<VectorDesc>,
    pub k_norm: Option<VectorDesc>,
    /// `(dim,)` twice: gains of the norms of the attention's and the
    /// feed-forward's outputs (`Config::post_norms`)
    pub post_attn_norm: Option<VectorDesc>,
    pub post_ffn_norm: Option<VectorDesc>,
}

impl LayerDesc {
    /// The block's vectors with their names in tinyllm files.
    pub fn vectors(&self) -> Vec<(&'static str, &VectorDesc)> {
        let optional = [
            ("attn_norm", &self.attn_norm),
            ("ffn_norm", &self.ffn_norm),
            ("attn_q.bias", &self.q_bias),
            ("attn_k.bias", &self.k_bias),
            ("attn_v.bias", &self.v_bias),
            ("attn_q_norm", &self.q_norm),
            ("attn_k_norm", &self.k_norm),
            ("post_attention_norm", &self.post_attn_norm),
            ("post_ffw_norm", &self.post_ffn_norm),
        ];
        optional
            .into_iter()
            .filter_map(|(n, d)| d.as_ref().map(|d| (n, d)))
            .collect()
    }

    /// The block's RMSNorm gains: its vectors but the biases.
    pub fn norms(&self) -> impl Iterator<Item = &VectorDesc> {
        let all = [
            &self.attn_norm,
            &self.ffn_norm,
            &self.q_norm,
            &self.k_norm,
            &self.post_attn_norm,
            &self.post_ffn_norm,
        ];
        all.into_iter().flatten()
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

/// Where a model's matrices live: a mapped file, or memory of the engine's
/// own, holding matrices rearranged at load for the kernels.
#[derive(Debug)]
enum Store {
    Mapped(Mmap),
    /// `u64`s so that every block type's alignment holds; the length in
    /// bytes.
    Owned(Vec<u64>, usize),
}

impl std::ops::Deref for Store {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Store::Mapped(m) => m,
            Store::Owned(words, len) => &as_bytes(words)[..*len],
        }
    }
}

impl Store {
    /// An owned copy of the units `v`.
    fn owned<T: Pod>(v: &[T]) -> Store {
        let bytes = as_bytes(v);
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        for (w, b) in words.iter_mut().zip(bytes.chunks(8)) {
            let mut le = [0u8; 8];
            le[..b.len()].copy_from_slice(b);
            *w = u64::from_ne_bytes(le);
        }
        Store::Owned(words, bytes.len())
    }
}

/// Every tensor of a model: matrices as descriptors into the mapped files
/// (or, rearranged at load, into memory of their own), vectors copied into
/// one small buffer.
#[derive(Debug)]
pub struct Weights {
    maps: Vec<Store>,
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
    pub dtype: DType,
    /// The blocks of the type, row-major: `rows / block_rows` rows of
    /// `cols / block_cols` blocks (see [`TypeTraits`]).
    bytes: &'a [u8],
    /// `(rows, cols / group_size)` scales of llama2.c's groups; empty for
    /// every other type.
    scales: &'a [f32],
}

/// The input of a product in the forms the weight types take (see
/// [`ActForm`]); a form that no weight of the product takes may be empty.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Activations<'a> {
    /// `(T, k)` floats, rows `ldx` apart.
    pub x: &'a [f32],
    pub ldx: usize,
    /// `(T, k / 32)` blocks.
    pub blocks: &'a [BlockQ8Act],
    /// `(T, k)` int8 values, `(T, k / group_size)` scales, and the group size.
    pub groups: Option<(&'a [i8], &'a [f32], usize)>,
}

impl<'a> MatRef<'a> {
    /// The rows `range` of the matrix; for the interleaved types, its ends
    /// must be multiples of 4 (or the last row).
    pub fn slice_rows(&self, range: Range<usize>) -> MatRef<'a> {
        let t = self.dtype.traits();
        let (r0, r1, br) = (range.start, range.end, t.block_rows);
        // A block of several rows belongs to one slice: whole blocks only.
        assert!(r0.is_multiple_of(br) && (r1.is_multiple_of(br) || r1 == self.rows));
        let row_bytes = t.row_bytes(self.cols);
        let spr = self.scales_per_row();
        MatRef {
            rows: r1 - r0,
            bytes: &self.bytes[r0 / br * row_bytes..r1.div_ceil(br) * row_bytes],
            scales: &self.scales[r0 * spr..r1 * spr],
            ..*self
        }
    }

    /// Writes row `r` as floats into `out` (`cols` long).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        with_type!(self.dtype, T => T::dequantize_row(self, r, out))
    }

    /// `out[t * ldo + r] = self[r] . x[t]` for every row `r` and `t < n`,
    /// by the kernel of the matrix's type in `k`.
    ///
    /// # Safety
    ///
    /// `out` must be valid for writes at every `t * ldo + r` above, and no
    /// other thread may access those elements during the call.
    pub(crate) unsafe fn matmul_into(
        &self,
        k: &Kernels,
        x: &Activations<'_>,
        n: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        // SAFETY: forwarded contract.
        with_type!(self.dtype, T => unsafe { T::matmul(k, self, x, n, out, ldo) })
    }

    /// The matrix's blocks, as `T` (its storage unit).
    fn blocks<T: WeightType>(&self) -> &'a [T] {
        cast(self.bytes, self.bytes.len() / std::mem::size_of::<T>())
    }

    /// The blocks that hold row `r`, as `T` (its storage unit): for the
    /// interleaved types, those of its group of four rows.
    fn row_blocks<T: WeightType>(&self, r: usize) -> &'a [T] {
        let per_row = self.cols / T::TRAITS.block_cols;
        let unit = r / T::TRAITS.block_rows;
        &self.blocks::<T>()[unit * per_row..(unit + 1) * per_row]
    }

    /// The scales of row `r` of llama2.c's groups.
    fn row_scales(&self, r: usize) -> &'a [f32] {
        let spr = self.scales_per_row();
        &self.scales[r * spr..(r + 1) * spr]
    }

    fn scales_per_row(&self) -> usize {
        self.dtype.group_size().map_or(0, |gs| self.cols / gs)
    }
}

impl Weights {
    /// Wraps mappings whose descriptors the loader has checked.
    pub(crate) fn new(p: WeightsParts) -> Self {
        Weights {
            maps: p.maps.into_iter().map(Store::Mapped).collect(),
            vectors: p.vectors,
            embedding: p.embedding,
            layers: p.layers,
            final_norm: p.final_norm,
            classifier: p.classifier,
            rope_factors: p.rope_factors,
        }
    }

    /// The bytes each [`MatrixDesc::file`] index stands for, and whether
    /// they are a file's mapping (page-aligned, so a GPU can wrap them
    /// without a copy) or memory of the engine's own.
    pub fn stores(&self) -> impl Iterator<Item = (&[u8], bool)> {
        self.maps
            .iter()
            .map(|m| (&**m, matches!(m, Store::Mapped(_))))
    }

    /// Every vector's values, which [`VectorDesc::offset`] indexes.
    pub fn all_vectors(&self) -> &[f32] {
        &self.vectors
    }

    /// Bytes of all the model's files together.
    pub fn file_size(&self) -> usize {
        let mapped = self.maps.iter().filter(|m| matches!(m, Store::Mapped(_)));
        mapped.map(|m| m.len()).sum()
    }

    /// Bytes of the matrices held in memory of the engine's own (rearranged
    /// at load by [`Weights::interleave_plain`]).
    pub fn owned_bytes(&self) -> usize {
        let owned = self.maps.iter().filter(|m| matches!(m, Store::Owned(..)));
        owned.map(|m| m.len()).sum()
    }

    /// Rearranges the q4_0 and q8_0 matrices stored a row at a time (as
    /// GGUF files hold them) into groups of four interleaved rows, the form
    /// the fastest kernels read (and tinyllm files store): one load brings
    /// four rows' values, one conversion their scales. The groups live in
    /// memory of their own, as large as the blocks they replace, and the
    /// file's pages they came from are handed back to the kernel; llama.cpp
    /// repacks its CPU weights the same way. Matrices whose row count is
    /// not a multiple of four stay as they are. `threads` share the work.
    pub fn interleave_plain(&mut self, threads: usize) {
        let plain = |d: &MatrixDesc| {
            matches!(d.dtype, DType::Q4_0 | DType::Q8_0) && d.rows.is_multiple_of(4)
        };
        let tied = self.classifier == self.embedding;
        let mut todo: Vec<MatrixDesc> = vec![self.embedding.clone()];
        if !tied {
            todo.push(self.classifier.clone());
        }
        for l in &self.layers {
            todo.extend(l.matrices().map(|(_, m)| m.clone()));
        }
        todo.retain(plain);
        if todo.is_empty() {
            return;
        }
        let threads = threads.clamp(1, todo.len());
        let this = &*self;
        let stores: Vec<Store> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let todo = &todo;
                    s.spawn(move || {
                        let mine = todo.iter().enumerate().skip(t).step_by(threads);
                        mine.map(|(k, d)| (k, this.interleaved(d)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let mut all: Vec<(usize, Store)> = handles
                .into_iter()
                .flat_map(|h| h.join().expect("interleaving panicked"))
                .collect();
            all.sort_by_key(|(k, _)| *k);
            all.into_iter().map(|(_, store)| store).collect()
        });
        let base = self.maps.len();
        let moved: Vec<(MatrixDesc, MatrixDesc)> = todo
            .iter()
            .enumerate()
            .map(|(k, d)| {
                let dtype = match d.dtype {
                    DType::Q4_0 => DType::Q4_0x4,
                    _ => DType::Q8_0x4,
                };
                let new = MatrixDesc {
                    dtype,
                    file: base + k,
                    offset: 0,
                    ..d.clone()
                };
                (d.clone(), new)
            })
            .collect();
        for (old, _) in &moved {
            self.release(old);
        }
        self.maps.extend(stores);
        let swap = |d: &mut MatrixDesc| {
            if let Some((_, new)) = moved.iter().find(|(old, _)| old == d) {
                *d = new.clone();
            }
        };
        swap(&mut self.embedding);
        if tied {
            self.classifier = self.embedding.clone();
        } else {
            swap(&mut self.classifier);
        }
        for l in &mut self.layers {
            for m in [
                &mut l.wq, &mut l.wk, &mut l.wv, &mut l.wo, &mut l.w1, &mut l.w2, &mut l.w3,
            ] {
                swap(m);
            }
        }
    }

    /// The interleaved groups of the plain q4_0 or q8_0 matrix `d`.
    fn interleaved(&self, d: &MatrixDesc) -> Store {
        fn groups<I: Interleaved>(rows: &[I::Row], nb: usize) -> Vec<I> {
            let mut out = Vec::with_capacity(rows.len() / 4);
            for four in rows.chunks_exact(4 * nb) {
                out.extend(
                    (0..nb).map(|b| I::interleave(std::array::from_fn(|r| &four[r * nb + b]))),
                );
            }
            out
        }
        let m = self.matrix(d);
        let nb = d.cols / QK;
        match d.dtype {
            DType::Q4_0 => Store::owned(&groups::<BlockQ4_0x4>(m.blocks::<BlockQ4_0>(), nb)),
            DType::Q8_0 => Store::owned(&groups::<BlockQ8_0x4>(m.blocks::<BlockQ8_0>(), nb)),
            other => unreachable!("{other:?} is not a plain block type"),
        }
    }

    /// Hands the file pages of the matrix `d` back to the kernel (they are
    /// read again from the file if ever touched).
    fn release(&self, d: &MatrixDesc) {
        #[cfg(unix)]
        if let Store::Mapped(map) = &self.maps[d.file] {
            let len = d.bytes();
            // Whole pages inside the matrix only: its neighbours stay.
            let page = 4096;
            let start = d.offset.next_multiple_of(page);
            let end = (d.offset + len) / page * page;
            if end > start {
                // SAFETY: a private read-only mapping: dropping its pages
                // changes no byte a reader sees, it only makes the next
                // access read the file again.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
        }
        #[cfg(not(unix))]
        let _ = d;
    }

    /// The bytes of the first (or only) file.
    pub fn first_file(&self) -> &[u8] {
        &self.maps[0]
    }

    /// A view of the matrix `d`.
    pub fn matrix(&self, d: &MatrixDesc) -> MatRef<'_> {
        let map = &self.maps[d.file];
        let t = d.dtype.traits();
        let len = d.rows.div_ceil(t.block_rows) * t.row_bytes(d.cols);
        let scales = match d.dtype.group_size() {
            Some(gs) => cast(&map[d.scales_offset..], d.rows * d.cols / gs),
            None => &[],
        };
        MatRef {
            rows: d.rows,
            cols: d.cols,
            dtype: d.dtype,
            bytes: &map[d.offset..d.offset + len],
            scales,
        }
    }

    /// The values of the vector `d`.
    pub fn vector(&self, d: &VectorDesc) -> &[f32] {
        &self.vectors[d.offset..d.offset + d.len]
    }

    /// The first matrix that holds a value that is not finite (a NaN or an
    /// infinity among its floats or its blocks' scales), by tinyllm name,
    /// with the index of the storage unit or scale. The matrices are read
    /// once, split between `threads` threads.
    pub fn non_finite(&self, threads: usize) -> Option<(String, usize)> {
        let mut named: Vec<(String, &MatrixDesc)> = vec![("token_embd".into(), &self.embedding)];
        if self.classifier != self.embedding {
            named.push(("output".into(), &self.classifier));
        }
        for (i, l) in self.layers.iter().enumerate() {
            named.extend(l.matrices().map(|(n, m)| (format!("blk.{i}.{n}"), m)));
        }
        let check = |m: MatRef<'_>| {
            with_type!(m.dtype, T => first_non_finite(m.blocks::<T>()))
                .or_else(|| first_non_finite(m.scales))
        };
        // Interleave the matrices between threads, so each gets a share of
        // every size; keep the first bad one in file order.
        let threads = threads.clamp(1, named.len());
        let found: Vec<Option<(usize, usize)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let named = &named;
                    s.spawn(move || {
                        named
                            .iter()
                            .enumerate()
                            .skip(t)
                            .step_by(threads)
                            .find_map(|(k, (_, d))| check(self.matrix(d)).map(|u| (k, u)))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a finiteness check panicked"))
                .collect()
        });
        let (k, unit) = found.into_iter().flatten().min()?;
        Some((named[k].0.clone(), unit))
    }

    /// [`Weights::non_finite`] as the format error of the model at `path`,
    /// split over the machine's cores.
    pub(crate) fn check_finite(&self, path: &Path) -> Result<()> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        match self.non_finite(threads) {
            None => Ok(()),
            Some((name, unit)) => Err(Error::format(
                path,
                format!(
                    "tensor '{name}' holds a NaN or an infinity (value or block {unit}); \
                     the file is corrupt"
                ),
            )),
        }
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
unsafe impl Pod for u64 {}
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
// SAFETY: as above.
unsafe impl Pod for BlockQ5_0 {}
// SAFETY: as above.
unsafe impl Pod for BlockQ5_1 {}
// SAFETY: as above.
unsafe impl Pod for BlockQ5K {}
// SAFETY: as above.
unsafe impl Pod for BlockQ3K {}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_gives_each_type_its_layout() {
        // (type, bytes of a 4 x 256 matrix, alignment): the layouts' sizes.
        let gs = DType::Q8Group { group_size: 32 };
        for (d, bytes, align) in [
            (DType::F32, 4096, 4),
            (DType::F16, 2048, 2),
            (DType::BF16, 2048, 2),
            (DType::Q8_0, 32 * 34, 2),
            (DType::Q4_0, 32 * 18, 2),
            (DType::Q4_1, 32 * 20, 2),
            (DType::Q5_0, 32 * 22, 2),
            (DType::Q5_1, 32 * 24, 2),
            (DType::Q8_0x4, 8 * 136, 2),
            (DType::Q4_0x4, 8 * 72, 2),
            (DType::Q4K, 4 * 144, 2),
            (DType::Q6K, 4 * 210, 2),
            (DType::Q5K, 4 * 176, 2),
            (DType::Q3K, 4 * 110, 2),
            (gs, 1024 + 32 * 4, 4),
        ] {
            assert_eq!(d.matrix_bytes(4, QK_K), Some(bytes), "{}", d.name());
            assert_eq!(d.alignment(), align, "{}", d.name());
            assert_eq!(d.bits_per_weight(), bytes as f64 * 8.0 / 1024.0);
            assert!(DType::from_name(d.name()).is_none_or(|f| f == d));
        }
        assert_eq!(DType::Q4_0x4.matrix_bytes(2, QK), None);
        assert_eq!(DType::Q4K.matrix_bytes(1, QK), None);
        assert_eq!(DType::Q3K.matrix_bytes(1, QK), None);
        assert_eq!(DType::Q5_0.matrix_bytes(1, 48), None);
        assert_eq!(gs.matrix_bytes(1, 48), None);
    }

    #[test]
    fn rows_of_llama2c_groups_and_interleaved_blocks() {
        // A (6, 64) matrix of llama2.c groups of 32.
        let q: Vec<i8> = (0..6 * 64).map(|i| (i % 251) as i8).collect();
        let s: Vec<f32> = (0..6 * 2).map(|g| 0.5 + g as f32).collect();
        let m = MatRef {
            rows: 6,
            cols: 64,
            dtype: DType::Q8Group { group_size: 32 },
            bytes: as_bytes(&q),
            scales: &s,
        };
        let mut row = [0.0; 64];
        m.slice_rows(2..5).row_into(1, &mut row);
        for (j, &v) in row.iter().enumerate() {
            assert_eq!(v, q[3 * 64 + j] as f32 * s[3 * 2 + j / 32]);
        }
        // Eight rows of q8_0 blocks, interleaved in fours.
        let x: Vec<f32> = (0..8 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
        let plain: Vec<BlockQ8_0> = quant::quantize_row(&x);
        let groups: Vec<BlockQ8_0x4> = plain
            .chunks(4 * 2)
            .flat_map(|four| quant::interleave(four, 2))
            .collect();
        let m = MatRef {
            rows: 8,
            cols: 64,
            dtype: DType::Q8_0x4,
            bytes: as_bytes(&groups),
            scales: &[],
        };
        let mut want = [0.0; 64];
        quant::dequantize_row(&plain[6 * 2..7 * 2], &mut want);
        m.slice_rows(4..8).row_into(2, &mut row);
        assert_eq!(row, want);
    }
}
