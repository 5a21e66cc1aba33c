//! Converting any model the engine opens into a tinyllm file, at a chosen
//! precision, quantizing rows in parallel.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::format::tinyllm::{Header, TensorInfo, TokenizerInfo, Writer};
use crate::model::Model;
use crate::pool::{SyncPtr, ThreadPool};
use crate::quant::{self, BlockQ4_0, BlockQ4_0x4, BlockQ4_1, BlockQ8_0, BlockQ8_0x4, QK};
use crate::tokenizer::{BOS, EOS, Tokenizer};
use crate::weights::{DType, MatRef, MatrixDesc, VectorDesc, as_bytes};
use half::{bf16, f16};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// How to store each weight matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipe {
    /// Every matrix in one type.
    Uniform(DType),
    /// 4-bit (q4_0) matrices, but 8-bit (q8_0) for the tensors that matter
    /// most: the embeddings, the classifier and the attention values.
    Q4Mixed,
}

impl Recipe {
    /// The recipes by name, as the command line takes them.
    pub const NAMES: [&'static str; 7] = ["f32", "f16", "bf16", "q8_0", "q4", "q4_1", "q4_mixed"];

    pub fn parse(name: &str) -> Result<Recipe> {
        Ok(match name {
            "f32" => Recipe::Uniform(DType::F32),
            "f16" => Recipe::Uniform(DType::F16),
            "bf16" => Recipe::Uniform(DType::BF16),
            "q8_0" => Recipe::Uniform(DType::Q8_0),
            "q4" | "q4_0" => Recipe::Uniform(DType::Q4_0),
            "q4_1" => Recipe::Uniform(DType::Q4_1),
            "q4_mixed" => Recipe::Q4Mixed,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "unknown quantization '{name}' (choose from {})",
                    Recipe::NAMES.join(", ")
                )));
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Recipe::Uniform(DType::Q4_0) => "q4",
            Recipe::Uniform(d) => d.name(),
            Recipe::Q4Mixed => "q4_mixed",
        }
    }

    /// The type of the matrix `name` of `rows` rows of `cols` values. A
    /// block type needs rows that are a multiple of 32 values (other rows
    /// fall back to f16); q8_0 and q4_0 are stored four rows interleaved
    /// when the row count allows (`q8_0x4`, `q4_0x4`), for the kernels.
    pub fn dtype(self, name: &str, rows: usize, cols: usize) -> DType {
        let mixed_q8 = name == "token_embd" || name == "output" || name.ends_with(".attn_v");
        let want = match self {
            Recipe::Uniform(d) => d,
            Recipe::Q4Mixed if mixed_q8 => DType::Q8_0,
            Recipe::Q4Mixed => DType::Q4_0,
        };
        match want {
            d if d.is_blocked() && !cols.is_multiple_of(QK) => DType::F16,
            DType::Q8_0 if rows.is_multiple_of(4) => DType::Q8_0x4,
            DType::Q4_0 if rows.is_multiple_of(4) => DType::Q4_0x4,
            d => d,
        }
    }
}

/// What a conversion wrote.
#[derive(Clone, Debug)]
pub struct Report {
    pub tensors: usize,
    /// Weights in the matrices (norms and tokenizer not counted).
    pub parameters: usize,
    /// Bytes of the matrices.
    pub weight_bytes: usize,
    /// Bytes of the whole file.
    pub file_bytes: u64,
    pub seconds: f64,
    /// How many matrices of each type.
    pub dtypes: BTreeMap<&'static str, usize>,
}

impl Report {
    /// Bits per weight over the matrices, scales included.
    pub fn bits_per_weight(&self) -> f64 {
        self.weight_bytes as f64 * 8.0 / self.parameters.max(1) as f64
    }
}

/// One tensor to write.
enum Source<'a> {
    Matrix(MatRef<'a>, DType),
    Vector(&'a [f32]),
    /// Raw bytes, with the dtype the index gives them.
    Bytes(Vec<u8>, &'static str),
}

/// The vocabulary a converted file carries.
#[derive(Clone, Debug)]
pub enum TokenizerData<'a> {
    /// llama2.c's pieces and scores.
    Llama2c(&'a Tokenizer),
    /// A Hugging Face `tokenizer.json`, with the special ids in `info`
    /// (whose `kind` is set to `"hf"`).
    HuggingFace { json: &'a str, info: TokenizerInfo },
}

/// What a conversion records besides the weights.
#[derive(Clone, Debug, Default)]
pub struct Extras<'a> {
    pub tokenizer: Option<TokenizerData<'a>>,
    /// The chat template (else the source file's, if it has one).
    pub chat_template: Option<String>,
    /// Where the weights came from (free-form provenance).
    pub source: serde_json::Value,
}

/// Converts `model` into a tinyllm file at `dst`, with what `extras` says.
/// `progress(done, total, name)` is called before each tensor and once at
/// the end.
pub fn convert(
    model: &Model,
    extras: Extras<'_>,
    dst: &Path,
    recipe: Recipe,
    pool: &ThreadPool,
    progress: &mut dyn FnMut(usize, usize, &str) -> Result<()>,
) -> Result<Report> {
    let start = Instant::now();
    let c = &model.config;
    let w = &model.weights;
    if let Some(TokenizerData::Llama2c(t)) = &extras.tokenizer
        && t.vocab_size() != c.vocab_size
    {
        return Err(Error::InvalidArgument(format!(
            "the tokenizer has {} tokens but the model has {}",
            t.vocab_size(),
            c.vocab_size
        )));
    }

    // The tensors in file order: each block's together, as decoding reads them.
    let mut list: Vec<(String, Vec<usize>, Source<'_>)> = Vec::new();
    let matrix = |list: &mut Vec<_>, name: String, d: &MatrixDesc| {
        let dtype = recipe.dtype(&name, d.rows, d.cols);
        list.push((
            name,
            vec![d.rows, d.cols],
            Source::Matrix(w.matrix(d), dtype),
        ));
    };
    let vector = |list: &mut Vec<_>, name: String, d: &VectorDesc| {
        list.push((name, vec![d.len], Source::Vector(w.vector(d))));
    };
    matrix(&mut list, "token_embd".into(), &w.embedding);
    for (i, l) in w.layers.iter().enumerate() {
        // Vectors first, then the matrices in the order decoding reads them.
        for (name, d) in l.vectors() {
            vector(&mut list, format!("blk.{i}.{name}"), d);
        }
        for (name, d) in l.matrices() {
            matrix(&mut list, format!("blk.{i}.{name}"), d);
        }
    }
    vector(&mut list, "output_norm".into(), &w.final_norm);
    if let Some(d) = &w.rope_factors {
        vector(&mut list, "rope_freqs".into(), d);
    }
    if w.classifier != w.embedding {
        matrix(&mut list, "output".into(), &w.classifier);
    }
    let tokenizer_info = match &extras.tokenizer {
        None => None,
        Some(TokenizerData::Llama2c(t)) => {
            let (blob, offsets, scores) = tokenizer_tensors(t);
            let n = blob.len().max(1);
            list.push((
                "tokenizer.pieces".into(),
                vec![n],
                Source::Bytes(blob, "u8"),
            ));
            list.push((
                "tokenizer.offsets".into(),
                vec![c.vocab_size + 1],
                Source::Bytes(offsets, "u32"),
            ));
            list.push((
                "tokenizer.scores".into(),
                vec![c.vocab_size],
                Source::Bytes(scores, "f32"),
            ));
            Some(TokenizerInfo {
                kind: "llama2c".into(),
                bos_id: Some(BOS),
                eos_id: Some(EOS),
                add_bos: Some(true),
                stop_ids: vec![],
            })
        }
        Some(TokenizerData::HuggingFace { json, info }) => {
            let bytes = json.as_bytes().to_vec();
            list.push((
                "tokenizer.json".into(),
                vec![bytes.len().max(1)],
                Source::Bytes(bytes, "u8"),
            ));
            Some(TokenizerInfo {
                kind: "hf".into(),
                ..info.clone()
            })
        }
    };

    let mut report = Report {
        tensors: list.len(),
        parameters: 0,
        weight_bytes: 0,
        file_bytes: 0,
        seconds: 0.0,
        dtypes: BTreeMap::new(),
    };
    let infos: Vec<TensorInfo> = list
        .iter()
        .map(|(name, shape, src)| {
            let dtype = match src {
                Source::Matrix(_, d) => {
                    let n = shape[0] * shape[1];
                    report.parameters += n;
                    report.weight_bytes += d.matrix_bytes(shape[0], shape[1]).unwrap_or(0);
                    *report.dtypes.entry(d.name()).or_default() += 1;
                    d.name()
                }
                Source::Vector(_) => "f32",
                Source::Bytes(_, dtype) => dtype,
            };
            TensorInfo {
                name: name.clone(),
                dtype: dtype.into(),
                shape: shape.clone(),
                offset: 0,
                nbytes: 0,
            }
        })
        .collect();
    let header = Header {
        architecture: model.family.clone(),
        // The vectors written are the gains the kernels use: any norm
        // offset is in them already.
        config: Config {
            norm_offset: 0.0,
            ..c.clone()
        },
        tokenizer: tokenizer_info,
        chat_template: extras
            .chat_template
            .or_else(|| model.header.as_ref().and_then(|h| h.chat_template.clone())),
        source: extras.source,
        quantization: serde_json::json!({
            "recipe": recipe.name(),
            "bits_per_weight": report.bits_per_weight(),
            "tensors": report.dtypes,
            "by": concat!("tinyllm ", env!("CARGO_PKG_VERSION")),
        }),
        tensors: infos,
    };

    let mut writer = Writer::create(dst, header)?;
    let total = list.len();
    for (i, (name, _, src)) in list.into_iter().enumerate() {
        progress(i, total, &name)?;
        match src {
            Source::Matrix(m, dtype) => writer.write_tensor(&encode(m, dtype, pool))?,
            Source::Vector(v) => writer.write_tensor(as_bytes(v))?,
            Source::Bytes(b, _) => {
                let mut b = b;
                if b.is_empty() {
                    b.push(0); // an empty vocabulary blob still needs one byte
                }
                writer.write_tensor(&b)?
            }
        }
    }
    progress(total, total, "")?;
    writer.finish()?;
    report.file_bytes = std::fs::metadata(dst).map_err(|e| Error::io(dst, e))?.len();
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// The tokenizer as three tensors: piece bytes, `vocab + 1` offsets, scores.
fn tokenizer_tensors(t: &Tokenizer) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut blob = Vec::new();
    let mut offsets: Vec<u32> = vec![0];
    let mut scores = Vec::with_capacity(t.vocab_size());
    for id in 0..t.vocab_size() as u32 {
        blob.extend_from_slice(t.piece(id).unwrap_or_default());
        offsets.push(blob.len() as u32);
        scores.push(t.score(id).unwrap_or(0.0));
    }
    (
        blob,
        as_bytes(&offsets).to_vec(),
        as_bytes(&scores).to_vec(),
    )
}

/// The bytes of matrix `m` stored as `dtype`, encoded in parallel a unit of
/// rows at a time (four rows for the interleaved types, else one).
fn encode(m: MatRef<'_>, dtype: DType, pool: &ThreadPool) -> Vec<u8> {
    let unit = if dtype.is_interleaved() { 4 } else { 1 };
    let unit_bytes = dtype
        .matrix_bytes(unit, m.cols)
        .expect("the recipe chose a type that fits");
    let units = m.rows / unit;
    let mut out = vec![0u8; units * unit_bytes];
    let dst = SyncPtr(out.as_mut_ptr());
    pool.for_chunks(units, 4, |_, range| {
        let mut rows = vec![0.0f32; unit * m.cols];
        for u in range {
            for (i, row) in rows.chunks_exact_mut(m.cols).enumerate() {
                m.row_into(u * unit + i, row);
            }
            // SAFETY: unit `u` of the output belongs to this chunk alone.
            let o = unsafe {
                std::slice::from_raw_parts_mut(dst.get().add(u * unit_bytes), unit_bytes)
            };
            encode_rows(&rows, m.cols, dtype, o);
        }
    });
    out
}

/// Rows of floats (four for the interleaved types, else one) as `dtype`.
fn encode_rows(x: &[f32], cols: usize, dtype: DType, out: &mut [u8]) {
    let nb = cols / QK;
    match dtype {
        DType::Q8_0x4 => {
            let plain = quant::quantize_row::<BlockQ8_0>(x);
            out.copy_from_slice(as_bytes(&quant::interleave::<BlockQ8_0x4>(&plain, nb)));
        }
        DType::Q4_0x4 => {
            let plain = quant::quantize_row::<BlockQ4_0>(x);
            out.copy_from_slice(as_bytes(&quant::interleave::<BlockQ4_0x4>(&plain, nb)));
        }
        _ => encode_row(x, dtype, out),
    }
}

/// One row of floats as `dtype`.
fn encode_row(x: &[f32], dtype: DType, out: &mut [u8]) {
    match dtype {
        DType::F32 => out.copy_from_slice(as_bytes(x)),
        DType::F16 => {
            let v: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
            out.copy_from_slice(as_bytes(&v));
        }
        DType::BF16 => {
            let v: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
            out.copy_from_slice(as_bytes(&v));
        }
        DType::Q8_0 => out.copy_from_slice(as_bytes(&quant::quantize_row::<BlockQ8_0>(x))),
        DType::Q4_0 => out.copy_from_slice(as_bytes(&quant::quantize_row::<BlockQ4_0>(x))),
        DType::Q4_1 => out.copy_from_slice(as_bytes(&quant::quantize_row::<BlockQ4_1>(x))),
        DType::Q8_0x4 | DType::Q4_0x4 => unreachable!("interleaved types go through encode_rows"),
        DType::Q3K | DType::Q4K | DType::Q5K | DType::Q6K => {
            unreachable!("no recipe writes the k-quants")
        }
        DType::Q5_0 | DType::Q5_1 => unreachable!("no recipe writes the 5-bit types"),
        DType::Q8Group { .. } => unreachable!("tinyllm files do not hold llama2.c groups"),
    }
}
