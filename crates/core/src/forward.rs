//! The Llama forward pass, with the variations the families of `models`
//! use (biases on Q/K/V, per-head Q/K norms, both rotary layouts, rescaled
//! rotary frequencies), each switched by a field of [`Config`].
//!
//! A batch of `T` consecutive tokens goes through each block together, so
//! every weight matrix is read once per batch (matrix-matrix products for a
//! prompt, matrix-vector products when decoding one token at a time). Each
//! product is one parallel region over the rows of its weights; the few
//! cheap element-wise steps run on the calling thread. All buffers live in
//! [`Scratch`], sized once: nothing is allocated per token.
//!
//! Shapes below use `T` for the batch, `D` for `dim`, `Q` for
//! `n_heads * head_dim`, `KV` for `n_kv_heads * head_dim`, `H` for
//! `hidden_dim` and `V` for `vocab_size`.

use crate::config::{Config, RopeStyle};
use crate::kernels::{Kernels, padded_ld};
use crate::kv_cache::KvCache;
use crate::pool::{SyncPtr, ThreadPool};
use crate::quant::{self, BlockQ8Act, QK, QK_K};
use crate::weights::{DType, MatData, MatRef, Weights};
use std::ops::Range;

/// Which logits a forward pass writes.
#[derive(Debug)]
pub enum Logits<'a> {
    /// None (the batch only fills the cache).
    None,
    /// The last token's: `(V,)`.
    Last(&'a mut [f32]),
    /// Every token's: `(T, V)`.
    All(&'a mut [f32]),
}

/// Working memory of the forward pass, sized for a batch of `max_batch`.
#[derive(Debug)]
pub struct Scratch {
    max_batch: usize,
    /// `(T, D)` the residual stream
    x: Vec<f32>,
    /// `(T, D)` the normalised input of a sub-layer
    xb: Vec<f32>,
    /// `(T, Q)` queries
    q: Vec<f32>,
    /// `(T, Q)` attention output
    att: Vec<f32>,
    /// `(T, H)` gate, then the gated activation
    hb: Vec<f32>,
    /// `(T, H)` up projection
    hb2: Vec<f32>,
    /// `(T, D)` output of a sub-layer before the residual add
    proj: Vec<f32>,
    /// Per thread, for one block of attention rows (`ATT_TOKENS` tokens times
    /// the query heads of one KV head): `(rows, max_len)` scores, then
    /// probabilities; `(rows, head_dim)` queries and outputs
    scores: Vec<f32>,
    att_q: Vec<f32>,
    att_o: Vec<f32>,
    /// The inputs of the products in the forms their weights take
    forms: InputForms,
    /// `(head_dim / 2,)` rotary frequencies
    inv_freq: Vec<f32>,
    /// `(head_dim,)` one head, normalised (`Config::qk_norm`)
    head: Vec<f32>,
    /// `(T, head_dim / 2)` cosines and sines of the batch's positions
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Scratch {
    /// Buffers for batches of up to `max_batch` tokens, `max_len` positions
    /// and `n_threads` threads.
    pub fn new(
        c: &Config,
        weights: &Weights,
        max_batch: usize,
        max_len: usize,
        n_threads: usize,
    ) -> Self {
        let widest = c.dim.max(c.q_dim()).max(c.hidden_dim);
        let dtypes: Vec<DType> = weights
            .layers
            .iter()
            .flat_map(|l| l.matrices().map(|(_, m)| m.dtype))
            .chain([weights.classifier.dtype])
            .collect();
        let blocked = usize::from(dtypes.iter().any(|d| d.is_blocked()));
        let grouped = usize::from(dtypes.iter().any(|d| matches!(d, DType::Q8Group { .. })));
        let floating = usize::from(max_batch > 1 && dtypes.iter().any(|d| d.is_float()));
        let half = c.head_dim / 2;
        let att_rows = ATT_TOKENS * (c.n_heads / c.n_kv_heads);
        // Pair j of a head turns at pos * theta^(-2j / head_dim), rescaled.
        let inv_freq = c.rope_frequencies(weights.rope_factors.as_ref().map(|d| weights.vector(d)));
        Scratch {
            max_batch,
            x: vec![0.0; max_batch * c.dim],
            xb: vec![0.0; max_batch * c.dim],
            q: vec![0.0; max_batch * c.q_dim()],
            att: vec![0.0; max_batch * c.q_dim()],
            hb: vec![0.0; max_batch * c.hidden_dim],
            hb2: vec![0.0; max_batch * c.hidden_dim],
            proj: vec![0.0; max_batch * c.dim],
            scores: vec![0.0; n_threads * att_rows * max_len],
            att_q: vec![0.0; n_threads * att_rows * c.head_dim],
            att_o: vec![0.0; n_threads * att_rows * c.head_dim],
            forms: InputForms {
                acts: vec![
                    quant::quantize_act(&[0.0; QK]);
                    blocked * max_batch * widest.div_ceil(QK)
                ],
                xq: vec![0; grouped * max_batch * widest],
                xs: vec![0.0; grouped * max_batch * widest],
                padded: vec![0.0; floating * max_batch * padded_ld(widest)],
            },
            inv_freq,
            head: vec![0.0; c.head_dim],
            cos: vec![0.0; max_batch * half],
            sin: vec![0.0; max_batch * half],
        }
    }

    /// The largest batch a forward pass takes.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Bytes these buffers hold.
    pub fn bytes(&self) -> usize {
        let f = &self.forms;
        let floats = [
            &self.x,
            &self.xb,
            &self.q,
            &self.att,
            &self.hb,
            &self.hb2,
            &self.proj,
            &self.scores,
            &self.att_q,
            &self.att_o,
            &f.xs,
            &f.padded,
            &self.inv_freq,
            &self.head,
            &self.cos,
            &self.sin,
        ];
        floats.iter().map(|v| v.len() * 4).sum::<usize>()
            + f.acts.len() * size_of::<BlockQ8Act>()
            + f.xq.len()
    }
}

/// Everything a forward pass reads besides its scratch and cache.
#[derive(Clone, Copy, Debug)]
pub struct Engine<'a> {
    pub config: &'a Config,
    pub weights: &'a Weights,
    pub kernels: &'static Kernels,
    pub pool: &'a ThreadPool,
}

/// Runs `tokens` (at most `max_batch`, ids already checked against the
/// vocabulary) through the model after the positions in `cache`, appends
/// their keys and values to it, and writes the requested logits.
///
/// The caller has checked that the cache has room (`cache.reserve`).
pub fn forward(
    e: Engine<'_>,
    cache: &mut KvCache,
    s: &mut Scratch,
    tokens: &[u32],
    logits: Logits<'_>,
) {
    let c = e.config;
    let w = e.weights;
    let n = tokens.len();
    assert!(n >= 1 && n <= s.max_batch);
    let (dim, q_dim, kv_dim, hid) = (c.dim, c.q_dim(), c.kv_dim(), c.hidden_dim);
    let p0 = cache
        .reserve(n)
        .expect("the caller checked the context length");

    // Embeddings: x[t] = embedding[tokens[t]]                       (T, D)
    let emb = w.matrix(&w.embedding);
    for (t, &tok) in tokens.iter().enumerate() {
        emb.row_into(tok as usize, &mut s.x[t * dim..(t + 1) * dim]);
    }

    // Rotary angles of positions p0..p0+T                            (T, head_dim/2)
    let half = c.head_dim / 2;
    for t in 0..n {
        let pos = (p0 + t) as f32;
        for j in 0..half {
            let a = pos * s.inv_freq[j];
            s.cos[t * half + j] = a.cos();
            s.sin[t * half + j] = a.sin();
        }
    }

    for (l, lw) in w.layers.iter().enumerate() {
        // ---- attention ----------------------------------------------------
        rmsnorm_rows(e, &s.x, w.vector(&lw.attn_norm), &mut s.xb, n, dim);

        // q = xb @ wq^T (T, Q); k, v = xb @ wk^T, xb @ wv^T written straight
        // into the cache at positions p0..p0+T                         (T, KV)
        let (kc, vc) = cache.layer_mut(l);
        let dtypes = [lw.wq.dtype, lw.wk.dtype, lw.wv.dtype];
        let input = Input::prepare(e, &s.xb, n, dim, &dtypes, &mut s.forms);
        let outs = [
            Out::new(&mut s.q[..n * q_dim], q_dim),
            Out::new(&mut kc[p0 * kv_dim..(p0 + n) * kv_dim], kv_dim),
            Out::new(&mut vc[p0 * kv_dim..(p0 + n) * kv_dim], kv_dim),
        ];
        let mats = [w.matrix(&lw.wq), w.matrix(&lw.wk), w.matrix(&lw.wv)];
        par_matmul(e, &mats, &outs, &input, n, |_, _| {});
        let (new_k, new_v) = (
            &mut kc[p0 * kv_dim..(p0 + n) * kv_dim],
            &mut vc[p0 * kv_dim..(p0 + n) * kv_dim],
        );
        if let (Some(bq), Some(bk), Some(bv)) = (&lw.q_bias, &lw.k_bias, &lw.v_bias) {
            add_rows(&mut s.q[..n * q_dim], w.vector(bq));
            add_rows(new_k, w.vector(bk));
            add_rows(new_v, w.vector(bv));
        }
        if let (Some(qn), Some(kn)) = (&lw.q_norm, &lw.k_norm) {
            norm_heads(e, &mut s.q[..n * q_dim], w.vector(qn), &mut s.head);
            norm_heads(e, new_k, w.vector(kn), &mut s.head);
        }

        // RoPE on the queries and the new keys.
        for t in 0..n {
            let (cos, sin) = (
                &s.cos[t * half..(t + 1) * half],
                &s.sin[t * half..(t + 1) * half],
            );
            let style = c.rope_style;
            rope(
                &mut s.q[t * q_dim..(t + 1) * q_dim],
                c.head_dim,
                style,
                cos,
                sin,
            );
            rope(
                &mut new_k[t * kv_dim..(t + 1) * kv_dim],
                c.head_dim,
                style,
                cos,
                sin,
            );
        }

        // Causal attention of each (token, head) over positions 0..=p0+t.
        attention(e, kc, vc, s, n, p0);

        // x += att @ wo^T                                               (T, D)
        let dtypes = [lw.wo.dtype];
        let input = Input::prepare(e, &s.att, n, q_dim, &dtypes, &mut s.forms);
        add_product(e, w.matrix(&lw.wo), &input, &mut s.x, &mut s.proj, n);

        // ---- feed-forward -------------------------------------------------
        rmsnorm_rows(e, &s.x, w.vector(&lw.ffn_norm), &mut s.xb, n, dim);

        // hb = silu(xb @ w1^T) * (xb @ w3^T)                           (T, H)
        let dtypes = [lw.w1.dtype, lw.w3.dtype];
        let input = Input::prepare(e, &s.xb, n, dim, &dtypes, &mut s.forms);
        let outs = [
            Out::new(&mut s.hb[..n * hid], hid),
            Out::new(&mut s.hb2[..n * hid], hid),
        ];
        let (hb, hb2) = (outs[0].ptr, outs[1].ptr);
        par_matmul_paired(
            e,
            [w.matrix(&lw.w1), w.matrix(&lw.w3)],
            &outs,
            &input,
            n,
            |rows| {
                for t in 0..n {
                    let at = t * hid + rows.start;
                    // SAFETY: this chunk alone computed (and now owns) these columns.
                    unsafe {
                        let a = std::slice::from_raw_parts_mut(hb.get().add(at), rows.len());
                        let b = std::slice::from_raw_parts(hb2.get().add(at), rows.len());
                        e.kernels.silu_mul(a, b);
                    }
                }
            },
        );

        // x += hb @ w2^T                                                (T, D)
        let dtypes = [lw.w2.dtype];
        let input = Input::prepare(e, &s.hb, n, hid, &dtypes, &mut s.forms);
        add_product(e, w.matrix(&lw.w2), &input, &mut s.x, &mut s.proj, n);
    }
    cache.commit(n);

    // ---- classifier ---------------------------------------------------------
    let (first, out) = match logits {
        Logits::None => return,
        Logits::Last(out) => (n - 1, out),
        Logits::All(out) => (0, out),
    };
    let rows = n - first;
    assert_eq!(out.len(), rows * c.vocab_size);
    rmsnorm_rows(
        e,
        &s.x[first * dim..],
        w.vector(&w.final_norm),
        &mut s.xb,
        rows,
        dim,
    );
    let cls = w.classifier.clone();
    let dtypes = [cls.dtype];
    let input = Input::prepare(e, &s.xb, rows, dim, &dtypes, &mut s.forms);
    par_matmul(
        e,
        &[w.matrix(&cls)],
        &[Out::new(out, c.vocab_size)],
        &input,
        rows,
        |_, _| {},
    );
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A `(T, ld)` output matrix that threads fill by disjoint column ranges.
#[derive(Clone, Copy)]
struct Out {
    ptr: SyncPtr<f32>,
    ld: usize,
}

impl Out {
    /// Wraps `buf`, which must hold whole rows of `ld`.
    fn new(buf: &mut [f32], ld: usize) -> Self {
        assert!(buf.len().is_multiple_of(ld));
        Out {
            ptr: SyncPtr(buf.as_mut_ptr()),
            ld,
        }
    }
}

/// Buffers for the input of a group of products in the forms its weights
/// take.
#[derive(Debug)]
struct InputForms {
    /// Blocks of 32 for the block types, `(T, max(D, Q, H) / 32)`
    acts: Vec<BlockQ8Act>,
    /// llama2.c's int8 groups, `(T, max(D, Q, H))` values and their scales
    xq: Vec<i8>,
    xs: Vec<f32>,
    /// The f32 activations for the float weights when several tokens share
    /// a product, `(T, padded_ld(max(D, Q, H)))`: rows a stride apart that
    /// keeps a register tile's tokens in different L1 sets (see
    /// `kernels::padded_ld`; rows of 2048 floats would evict each other).
    padded: Vec<f32>,
}

/// The input of a group of products: f32 activations `(T, k)`, rows `ldx`
/// apart, and the same quantized for the weights that take quantized input.
struct Input<'a> {
    x: &'a [f32],
    k: usize,
    ldx: usize,
    /// `(T, k / 32)` blocks, for the block types.
    acts: &'a [BlockQ8Act],
    /// `(T, k)` values and `(T, k / group_size)` scales, for llama2.c's groups.
    q8g: Option<(&'a [i8], &'a [f32], usize)>,
}

impl<'a> Input<'a> {
    /// The `(T, k)` activations `x` in every form the weights of `dtypes` take.
    fn prepare(
        e: Engine<'_>,
        x: &'a [f32],
        n: usize,
        k: usize,
        dtypes: &[DType],
        forms: &'a mut InputForms,
    ) -> Input<'a> {
        let x = &x[..n * k];
        let mut input = Input {
            x,
            k,
            ldx: k,
            acts: &[],
            q8g: None,
        };
        if dtypes.iter().any(|d| d.is_blocked()) {
            let acts = &mut forms.acts[..n * k / QK];
            let (nb, out) = (k / QK, SyncPtr(acts.as_mut_ptr()));
            // Token by token across the threads (alone, it took a tenth of a
            // 110M-shaped q4 prompt while the other thread waited).
            e.pool
                .for_chunks(n, n.div_ceil(4 * e.pool.n_threads()), |_, tokens| {
                    // SAFETY: each chunk writes the blocks of its own tokens.
                    let blocks = unsafe {
                        std::slice::from_raw_parts_mut(
                            out.get().add(tokens.start * nb),
                            tokens.len() * nb,
                        )
                    };
                    e.kernels
                        .quantize_act(&x[tokens.start * k..tokens.end * k], blocks);
                });
            input.acts = acts;
        }
        if let Some(gs) = dtypes.iter().find_map(|d| match d {
            DType::Q8Group { group_size } => Some(*group_size),
            _ => None,
        }) {
            let (q, s) = (&mut forms.xq[..n * k], &mut forms.xs[..n * k / gs]);
            e.kernels.quantize_q8g(x, gs, q, s);
            input.q8g = Some((q, s, gs));
        }
        if n > 1 && dtypes.iter().any(|d| d.is_float()) {
            let ld = padded_ld(k);
            let padded = &mut forms.padded[..n * ld];
            for (dst, src) in padded.chunks_exact_mut(ld).zip(x.chunks_exact(k)) {
                dst[..k].copy_from_slice(src);
            }
            (input.x, input.ldx) = (padded, ld);
        }
        input
    }
}

/// `out[t, r] = w[r] . input[t]` for the rows of `w`.
fn matmul_chunk(
    e: Engine<'_>,
    w: &MatRef<'_>,
    input: &Input<'_>,
    n: usize,
    out: *mut f32,
    ldo: usize,
) {
    let (k, x, ldx, nb) = (input.k, input.x, input.ldx, w.cols / QK);
    let kern = e.kernels;
    // SAFETY: (all arms) the caller gives this chunk exclusive use of its
    // output columns; the kernels check the input extents.
    unsafe {
        match w.data {
            MatData::F32(wd) => kern.matmul_f32_into(wd, k, x, ldx, n, out, ldo),
            MatData::F16(wd) => kern.matmul_f16_into(wd, k, x, ldx, n, out, ldo),
            MatData::BF16(wd) => kern.matmul_bf16_into(wd, k, x, ldx, n, out, ldo),
            MatData::Q8_0(wd) => kern.matmul_quant_into(wd, nb, input.acts, n, out, ldo),
            MatData::Q4_0(wd) => kern.matmul_quant_into(wd, nb, input.acts, n, out, ldo),
            MatData::Q4_1(wd) => kern.matmul_quant_into(wd, nb, input.acts, n, out, ldo),
            MatData::Q8_0x4(wd) => kern.matmul_quant4_into(wd, nb, input.acts, n, out, ldo),
            MatData::Q4_0x4(wd) => kern.matmul_quant4_into(wd, nb, input.acts, n, out, ldo),
            MatData::Q4K(wd) => kern.matmul_kquant_into(wd, w.cols / QK_K, input.acts, n, out, ldo),
            MatData::Q6K(wd) => kern.matmul_kquant_into(wd, w.cols / QK_K, input.acts, n, out, ldo),
            MatData::Q8Group {
                q: wq,
                s: ws,
                group_size,
            } => {
                let (q, s, gs) = input.q8g.expect("prepared for this matrix's dtype");
                assert_eq!(group_size, gs);
                kern.matmul_q8g_into(wq, ws, w.cols, gs, q, s, n, out, ldo)
            }
        }
    }
}

/// Rows per parallel chunk: enough chunks to balance the threads, few enough
/// rows that a chunk's weights stay in cache while every token of the batch
/// passes over them, and enough work per chunk (`MIN_CHUNK_WORK`
/// multiply-adds) that a region is worth starting; a product smaller than
/// one chunk runs on the calling thread alone.
///
/// Decoding (one token) takes two chunks per thread, not eight: each chunk
/// is a memory stream whose first prefetch distance arrives cold, and longer
/// streams measured faster (110M q4 +10%, 1.1B q4 +5%, f16 and q8_0 the
/// same or better, 2 threads, alternating builds).
fn chunk_rows(e: Engine<'_>, rows: usize, k: usize, n: usize) -> usize {
    let per_thread = if n > 1 { 8 } else { 2 };
    let balance = rows.div_ceil(per_thread * e.pool.n_threads());
    let cached = if n > 1 {
        (64 * 1024 / k).max(1)
    } else {
        usize::MAX
    };
    let worth = MIN_CHUNK_WORK.div_ceil(k * n);
    balance
        .min(cached)
        .max(worth)
        .next_multiple_of(if n > 1 { PROMPT_CHUNK_ALIGN } else { 16 })
}

/// Prompt chunks hold whole register tiles of every kernel: a multiple of
/// 48 rows (AVX-512's float panel strip, 3 x 16), 6 (its float tile), 4 (the
/// interleaved types) and 16 (the other tiers' float panel strips).
const PROMPT_CHUNK_ALIGN: usize = 48;

/// The least work (multiply-adds) worth handing to another thread.
const MIN_CHUNK_WORK: usize = 32 * 1024;

/// Computes the products of several matrices that share an input, as one
/// parallel region over all their rows. `done(matrix, rows)` runs on the
/// thread that computed a chunk, right after it.
fn par_matmul<F>(
    e: Engine<'_>,
    mats: &[MatRef<'_>],
    outs: &[Out],
    input: &Input<'_>,
    n: usize,
    done: F,
) where
    F: Fn(usize, Range<usize>) + Sync,
{
    let chunk = chunk_rows(
        e,
        mats.iter().map(|m| m.rows).max().unwrap_or(0),
        mats[0].cols,
        n,
    );
    // Chunk i of matrix m is unit (units before m) + i.
    let mut units = [0usize; 4];
    for (u, m) in units.iter_mut().zip(mats) {
        *u = m.rows.div_ceil(chunk);
    }
    assert!(mats.len() <= units.len());
    let total: usize = units.iter().sum();
    e.pool.for_chunks(total, 1, |_, range| {
        for mut u in range {
            let mut m = 0;
            while u >= units[m] {
                u -= units[m];
                m += 1;
            }
            let rows = u * chunk..((u + 1) * chunk).min(mats[m].rows);
            let out = outs[m];
            // SAFETY: `rows` of matrix m belong to this chunk alone.
            let ptr = unsafe { out.ptr.get().add(rows.start) };
            matmul_chunk(e, &mats[m].slice_rows(rows.clone()), input, n, ptr, out.ld);
            done(m, rows);
        }
    });
}

/// Computes two products of the same shape chunk by chunk, the same rows of
/// both in one chunk, then `done(rows)` on them (the SwiGLU gate).
fn par_matmul_paired<F>(
    e: Engine<'_>,
    mats: [MatRef<'_>; 2],
    outs: &[Out; 2],
    input: &Input<'_>,
    n: usize,
    done: F,
) where
    F: Fn(Range<usize>) + Sync,
{
    let rows = mats[0].rows;
    let chunk = chunk_rows(e, rows, mats[0].cols, n);
    e.pool.for_chunks(rows.div_ceil(chunk), 1, |_, range| {
        for u in range {
            let rows = u * chunk..((u + 1) * chunk).min(rows);
            for (m, out) in mats.iter().zip(outs) {
                // SAFETY: `rows` of both matrices belong to this chunk alone.
                let ptr = unsafe { out.ptr.get().add(rows.start) };
                matmul_chunk(e, &m.slice_rows(rows.clone()), input, n, ptr, out.ld);
            }
            done(rows);
        }
    });
}

/// `x += input @ w^T` for the `(n, w.rows)` residual stream `x`, with `proj`
/// as scratch; each chunk adds its own columns as soon as it has them.
fn add_product(
    e: Engine<'_>,
    w: MatRef<'_>,
    input: &Input<'_>,
    x: &mut [f32],
    proj: &mut [f32],
    n: usize,
) {
    let dim = w.rows;
    let out = Out::new(&mut proj[..n * dim], dim);
    let (xp, pp) = (SyncPtr(x.as_mut_ptr()), out.ptr);
    par_matmul(e, &[w], &[out], input, n, |_, rows| {
        // SAFETY: each chunk owns columns `rows` of x and proj.
        unsafe { add_columns(xp, pp, dim, n, rows) }
    });
}

/// `x[t, cols] += proj[t, cols]` for every token of the batch.
///
/// # Safety
/// The caller has exclusive use of columns `cols` of both `(n, ld)` matrices.
unsafe fn add_columns(
    x: SyncPtr<f32>,
    proj: SyncPtr<f32>,
    ld: usize,
    n: usize,
    cols: Range<usize>,
) {
    for t in 0..n {
        for j in cols.clone() {
            // SAFETY: inside the caller's columns of the two matrices.
            unsafe { *x.get().add(t * ld + j) += *proj.get().add(t * ld + j) }
        }
    }
}

/// RMSNorm of `n` rows of `dim`: `out[t] = norm(x[t]) * w`.
fn rmsnorm_rows(e: Engine<'_>, x: &[f32], w: &[f32], out: &mut [f32], n: usize, dim: usize) {
    for t in 0..n {
        e.kernels.rmsnorm(
            &x[t * dim..(t + 1) * dim],
            w,
            e.config.norm_eps,
            &mut out[t * dim..(t + 1) * dim],
        );
    }
}

/// Adds `bias` to every row of `rows` (rows of `bias.len()`).
fn add_rows(rows: &mut [f32], bias: &[f32]) {
    for row in rows.chunks_exact_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(x, b)| *x += b);
    }
}

/// RMS-normalises every head (`gains.len()` values) of `rows` in place.
fn norm_heads(e: Engine<'_>, rows: &mut [f32], gains: &[f32], tmp: &mut [f32]) {
    for head in rows.chunks_exact_mut(gains.len()) {
        e.kernels.rmsnorm(head, gains, e.config.norm_eps, tmp);
        head.copy_from_slice(tmp);
    }
}

/// Rotates pair `j` of every head in `v` by the angle whose cosine and sine
/// are `cos[j]`, `sin[j]`; a pair is `(2j, 2j+1)` or `(j, j + head_dim/2)`.
fn rope(v: &mut [f32], head_dim: usize, style: RopeStyle, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    for head in v.chunks_exact_mut(head_dim) {
        match style {
            RopeStyle::Interleaved => {
                for (pair, (&c, &s)) in head.chunks_exact_mut(2).zip(cos.iter().zip(sin)) {
                    let (a, b) = (pair[0], pair[1]);
                    pair[0] = a * c - b * s;
                    pair[1] = a * s + b * c;
                }
            }
            RopeStyle::Half => {
                let (lo, hi) = head.split_at_mut(half);
                for j in 0..half {
                    let (a, b, c, s) = (lo[j], hi[j], cos[j], sin[j]);
                    lo[j] = a * c - b * s;
                    hi[j] = a * s + b * c;
                }
            }
        }
    }
}

/// Query tokens per attention work item: with the query heads that share a
/// KV head, the rows of one block of scores.
const ATT_TOKENS: usize = 16;

/// Causal attention for every token of the batch, in parallel over (KV
/// head, block of tokens) items. Each item gathers its query rows (all the
/// query heads that read this KV head, for up to `ATT_TOKENS` tokens),
/// computes their scores against the cached keys as one matrix product,
/// turns each row into probabilities over the positions it may see, and
/// multiplies those by the cached values as another.
fn attention(e: Engine<'_>, kc: &[f32], vc: &[f32], s: &mut Scratch, n: usize, p0: usize) {
    let c = e.config;
    let (hd, q_dim, kv_dim) = (c.head_dim, c.q_dim(), c.kv_dim());
    let group = c.n_heads / c.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let rows_max = ATT_TOKENS * group;
    let max_len = s.scores.len() / e.pool.n_threads() / rows_max;
    let blocks = n.div_ceil(ATT_TOKENS);
    let q = &s.q;
    let att = SyncPtr(s.att.as_mut_ptr());
    let (scores, aq, ao) = (
        SyncPtr(s.scores.as_mut_ptr()),
        SyncPtr(s.att_q.as_mut_ptr()),
        SyncPtr(s.att_o.as_mut_ptr()),
    );
    e.pool
        .for_chunks(c.n_kv_heads * blocks, 1, |thread, range| {
            // SAFETY: each thread owns its slice of the three scratch buffers.
            let (sc, qb, ob) = unsafe {
                (
                    std::slice::from_raw_parts_mut(
                        scores.get().add(thread * rows_max * max_len),
                        rows_max * max_len,
                    ),
                    std::slice::from_raw_parts_mut(
                        aq.get().add(thread * rows_max * hd),
                        rows_max * hd,
                    ),
                    std::slice::from_raw_parts_mut(
                        ao.get().add(thread * rows_max * hd),
                        rows_max * hd,
                    ),
                )
            };
            for item in range {
                let (kvh, blk) = (item % c.n_kv_heads, item / c.n_kv_heads);
                let (t0, tn) = (blk * ATT_TOKENS, ATT_TOKENS.min(n - blk * ATT_TOKENS));
                let rows = tn * group;
                let n_pos = p0 + t0 + tn; // the positions the block's last token sees
                // Row t * group + g: token t0 + t, query head kvh * group + g, scaled.
                for t in 0..tn {
                    for g in 0..group {
                        let src = &q[(t0 + t) * q_dim + (kvh * group + g) * hd..][..hd];
                        let dst = &mut qb[(t * group + g) * hd..][..hd];
                        dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v * scale);
                    }
                }
                // scores (rows, n_pos) = queries @ keys^T
                // SAFETY: `sc` holds `rows` rows of `max_len >= n_pos`.
                unsafe {
                    e.kernels.matmul_f32_strided_into(
                        &kc[kvh * hd..],
                        kv_dim,
                        n_pos,
                        hd,
                        qb,
                        hd,
                        rows,
                        sc.as_mut_ptr(),
                        max_len,
                    )
                };
                // Each row sees the positions up to its own token.
                for t in 0..tn {
                    let seen = p0 + t0 + t + 1;
                    for g in 0..group {
                        let row = &mut sc[(t * group + g) * max_len..][..n_pos];
                        e.kernels.softmax(&mut row[..seen]);
                        row[seen..].fill(0.0);
                    }
                }
                // outputs (rows, hd) = probabilities @ values
                e.kernels
                    .attn_pv(sc, max_len, rows, n_pos, &vc[kvh * hd..], kv_dim, hd, ob);
                for t in 0..tn {
                    for g in 0..group {
                        let h = kvh * group + g;
                        // SAFETY: each (token, head) of `att` belongs to one item.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(
                                att.get().add((t0 + t) * q_dim + h * hd),
                                hd,
                            )
                        };
                        dst.copy_from_slice(&ob[(t * group + g) * hd..][..hd]);
                    }
                }
            }
        });
}
