//! The forward pass: the graph of a Llama-family block, written once over
//! the operations of a [`Device`].
//!
//! The variations the families of `models` use (biases on Q/K/V, per-head
//! Q/K norms, both rotary layouts, rescaled rotary frequencies, scalar
//! multipliers, norms after each sub-layer, GeGLU, sliding windows and soft
//! caps) are each switched by a field of [`Config`]; the device carries
//! them out.
//!
//! One pass runs a [`Plan`]: a batch of entries, each some consecutive
//! tokens of one sequence from a start position (a chunk of a prompt, or
//! the one new token of a sequence that is decoding). All the batch's tokens
//! go through each weight matrix together, so every matrix is read once per
//! pass however many sequences it serves; attention, rotary positions and
//! cache writes work per entry.
//!
//! Shapes below use `T` for the tokens of the batch, `D` for `dim`, `Q` for
//! `n_heads * head_dim`, `KV` for `n_kv_heads * head_dim`, `H` for
//! `hidden_dim` and `V` for `vocab_size`.

use crate::config::{Activation, Config};
use crate::kv_cache::PAGE;
use crate::weights::{MatrixDesc, VectorDesc, Weights};
use std::ops::Range;

/// Consecutive tokens of one sequence in a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The sequence's pages (see `kv_cache`), as a range of [`Plan::pages`].
    pub pages: Range<usize>,
    /// The position of the entry's first token (positions before it are in
    /// the cache).
    pub start: usize,
    /// The entry's tokens, as a range of [`Plan::tokens`].
    pub tokens: Range<usize>,
}

/// What one forward pass computes.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// `(T,)` the batch's tokens, each entry's together
    pub tokens: Vec<u32>,
    /// The pages of every entry's sequence, one run per entry
    pub pages: Vec<u32>,
    pub entries: Vec<Entry>,
    /// The rows of the batch whose next-token logits are wanted, ascending
    pub logit_rows: Vec<usize>,
    /// The rows whose final hidden states (after the last norm) are wanted
    /// instead, ascending (embeddings)
    pub hidden_rows: Vec<usize>,
}

impl Plan {
    /// Empties the plan, keeping its buffers.
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.pages.clear();
        self.entries.clear();
        self.logit_rows.clear();
        self.hidden_rows.clear();
    }

    /// Adds an entry: `tokens` of a sequence whose cache holds `start`
    /// positions in `pages` (with room for the new ones); `logits` says
    /// which of the new rows want logits.
    pub fn push(&mut self, pages: &[u32], start: usize, tokens: &[u32], logits: Want) {
        let row = self.tokens.len();
        let p = self.pages.len();
        self.pages.extend_from_slice(pages);
        self.tokens.extend_from_slice(tokens);
        self.entries.push(Entry {
            pages: p..self.pages.len(),
            start,
            tokens: row..self.tokens.len(),
        });
        match logits {
            Want::None => {}
            Want::Last => self.logit_rows.push(self.tokens.len() - 1),
            Want::All => self.logit_rows.extend(row..self.tokens.len()),
            Want::Hidden => self.hidden_rows.extend(row..self.tokens.len()),
        }
    }

    /// Tokens in the batch.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Asserts what the engine promises a device: 1 to `max_batch` tokens
    /// of the vocabulary, every entry within the context of `max_len`
    /// positions and within the pages reserved for it. A failure is a bug of
    /// the engine, not bad input.
    pub fn check(&self, max_batch: usize, max_len: usize, vocab: usize) {
        let n = self.len();
        assert!(n >= 1 && n <= max_batch);
        assert!(self.tokens.iter().all(|&t| (t as usize) < vocab));
        let mut rows = 0;
        for e in &self.entries {
            let len = e.tokens.len();
            assert!(
                len >= 1 && e.start + len <= max_len,
                "the context was checked"
            );
            assert!(e.pages.len() * PAGE >= e.start + len, "pages were reserved");
            assert_eq!(e.tokens.start, rows, "entries follow each other");
            rows += len;
        }
        assert_eq!(rows, n);
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// The rotary cosines and sines of position `pos` for each pair of a head
/// (`inv_freq`: [`crate::config::Config::rope_frequencies`]), in f32 as
/// Hugging Face computes them; every device uses these.
pub fn rotary_angles(inv_freq: &[f32], m: f32, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
    for (j, &f) in inv_freq.iter().enumerate() {
        let a = pos as f32 * f;
        cos[j] = a.cos() * m;
        sin[j] = a.sin() * m;
    }
}

/// Which logits an entry wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// None (a chunk of a prompt that only fills the cache).
    None,
    /// The last token's.
    Last,
    /// Every token's.
    All,
    /// No logits, but every token's final hidden state (embeddings).
    Hidden,
}

/// The activations of a pass, by name. A device keeps one buffer of each,
/// `(T, width)` for the largest batch it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buf {
    /// `(T, D)` the residual stream
    X,
    /// `(T, D)` the normalised input of a sub-layer
    Xb,
    /// `(T, Q)` queries
    Q,
    /// `(T, KV)` the new keys
    K,
    /// `(T, KV)` the new values
    V,
    /// `(T, Q)` attention's output
    Att,
    /// `(T, H)` the gated feed-forward activation
    Hb,
}

impl Buf {
    /// Values per token.
    pub fn width(self, c: &Config) -> usize {
        match self {
            Buf::X | Buf::Xb => c.dim,
            Buf::Q | Buf::Att => c.q_dim(),
            Buf::K | Buf::V => c.kv_dim(),
            Buf::Hb => c.hidden_dim,
        }
    }
}

/// What runs the graph: the CPU (`cpu::CpuDevice`), and later a GPU.
///
/// A device holds the model's weights (mapped, never copied), its own
/// buffers for the activations ([`Buf`]) and the storage of the KV cache's
/// pages. The graph calls [`Device::begin`], then the operations in order,
/// then [`Device::logits`]; a device may run each operation at once (the
/// CPU) or record them and run them together (a GPU's command buffer),
/// as long as `logits` returns with the results written.
pub trait Device {
    /// Starts a pass over `plan` (at most [`Device::max_batch`] tokens, ids
    /// in the vocabulary, every entry's pages with room for its tokens).
    fn begin(&mut self, plan: &Plan);
    /// `X[t] = embedding[tokens[t]]`.
    fn embed(&mut self, table: &MatrixDesc);
    /// `dst[t] = src[t] / rms(src[t]) * gains`.
    fn rmsnorm(&mut self, src: Buf, gains: &VectorDesc, dst: Buf);
    /// `acc[t] += src[t] / rms(src[t]) * gains` (a sub-layer's output,
    /// normalised, joins the residual stream).
    fn add_rmsnorm(&mut self, src: Buf, gains: &VectorDesc, acc: Buf);
    /// `out_i = input @ w_i^T` for matrices that share an input.
    fn matmul(&mut self, input: Buf, products: &[(&MatrixDesc, Buf)]);
    /// `acc += input @ w^T` (a sub-layer's output joins the residual stream).
    fn matmul_add(&mut self, input: Buf, w: &MatrixDesc, acc: Buf);
    /// `out = act(input @ gate^T) * (input @ up^T)`.
    fn glu(&mut self, act: Activation, input: Buf, gate: &MatrixDesc, up: &MatrixDesc, out: Buf);
    /// `buf[t] += bias`.
    fn add_bias(&mut self, buf: Buf, bias: &VectorDesc);
    /// `buf[t] *= factor`.
    fn scale(&mut self, buf: Buf, factor: f32);
    /// RMS-normalises every head of `buf` with `gains` (`head_dim` long),
    /// or every row as a whole (gains as wide as the row).
    fn norm_heads(&mut self, buf: Buf, gains: &VectorDesc);
    /// Rotates every head of `buf` by its token's position, at the
    /// frequencies of the sliding layers if `local`
    /// ([`Config::local_rope_frequencies`]), else at the model's.
    fn rope(&mut self, buf: Buf, local: bool);
    /// Writes the new keys and values of `layer` into each entry's pages.
    fn store_kv(&mut self, layer: usize, k: Buf, v: Buf);
    /// Causal attention of each entry's queries over its sequence's cached
    /// positions (those before the entry and the entry's own up to each
    /// token, within the layer's [`Config::window`]), grouped-query heads
    /// sharing their KV head; scores are scaled by [`Config::attn_scale`]
    /// and capped by [`Config::attn_softcap`].
    fn attention(&mut self, layer: usize, q: Buf, out: Buf);
    /// The logits of the plan's `logit_rows`: `out (rows, V) =
    /// rmsnorm(X[rows], norm) @ classifier^T`. Returns when they are written.
    fn logits(&mut self, norm: &VectorDesc, classifier: &MatrixDesc, out: &mut [f32]);
    /// The final hidden states of the plan's `hidden_rows`: `out (rows, D) =
    /// rmsnorm(X[rows], norm)`. Returns when they are written.
    fn hidden(&mut self, norm: &VectorDesc, out: &mut [f32]);
    /// Copies the first `rows` positions of page `src` into page `dst`
    /// (a sequence taking over part of another's page).
    fn copy_rows(&mut self, src: u32, dst: u32, rows: usize);
    /// The most tokens one pass takes.
    fn max_batch(&self) -> usize;
}

/// A [`Device`] as the scheduler and sessions hold it: the CPU's or a
/// GPU's, chosen at run time ([`crate::session::DeviceKind`]).
pub trait EngineDevice: Device + Send + std::fmt::Debug {
    /// What computes: `"cpu"` or the GPU's name.
    fn name(&self) -> String;
    /// How the cache's pages are laid out.
    fn layout(&self) -> crate::kv_cache::PageLayout;
    /// Bytes of activation buffers and scratch the device allocated.
    fn buffer_bytes(&self) -> usize;
    /// Bytes of KV cache storage allocated so far.
    fn kv_bytes(&self) -> usize;
    /// CPU threads per pass (1 for a GPU: its host work is one thread's).
    fn n_threads(&self) -> usize;
    /// The CPU kernels' instruction set (`"metal"` for the GPU).
    fn isa(&self) -> &'static str;
}

/// Runs `plan` through the model on `dev`: appends each entry's keys and
/// values to its pages and writes the logits of `plan.logit_rows` into
/// `out`, `(rows, V)`, and the final hidden states of `plan.hidden_rows`
/// into `hidden`, `(rows, D)`.
pub fn forward<D: Device + ?Sized>(
    c: &Config,
    w: &Weights,
    dev: &mut D,
    plan: &Plan,
    out: &mut [f32],
    hidden: &mut [f32],
) {
    assert!(!plan.is_empty() && plan.len() <= dev.max_batch());
    assert_eq!(out.len(), plan.logit_rows.len() * c.vocab_size);
    assert_eq!(hidden.len(), plan.hidden_rows.len() * c.dim);
    dev.begin(plan);

    // x[t] = embedding[tokens[t]] (* embedding_scale)                 (T, D)
    dev.embed(&w.embedding);
    if c.embedding_scale != 1.0 {
        dev.scale(Buf::X, c.embedding_scale);
    }

    for (l, lw) in w.layers.iter().enumerate() {
        // ---- attention ----------------------------------------------------
        // xb = rmsnorm(x), or x itself without pre-norms                 (T, D)
        let xb = pre_norm(dev, lw.attn_norm.as_ref());

        // q = xb @ wq^T (T, Q); k, v = xb @ wk^T, xb @ wv^T             (T, KV)
        dev.matmul(xb, &[(&lw.wq, Buf::Q), (&lw.wk, Buf::K), (&lw.wv, Buf::V)]);
        if let (Some(bq), Some(bk), Some(bv)) = (&lw.q_bias, &lw.k_bias, &lw.v_bias) {
            dev.add_bias(Buf::Q, bq);
            dev.add_bias(Buf::K, bk);
            dev.add_bias(Buf::V, bv);
        }
        if let (Some(qn), Some(kn)) = (&lw.q_norm, &lw.k_norm) {
            dev.norm_heads(Buf::Q, qn);
            dev.norm_heads(Buf::K, kn);
        }

        // RoPE on the queries and the new keys (but in NoPE layers), which
        // then join the cache.
        if c.rotates(l) {
            dev.rope(Buf::Q, c.local_rope(l));
            dev.rope(Buf::K, c.local_rope(l));
        }
        dev.store_kv(l, Buf::K, Buf::V);

        // att = causal attention of q over each sequence's cache         (T, Q)
        dev.attention(l, Buf::Q, Buf::Att);

        // x += (att @ wo^T) * residual_scale                            (T, D)
        // or, with post-norms, x += rmsnorm(att @ wo^T)
        sublayer_output(c, dev, Buf::Att, &lw.wo, lw.post_attn_norm.as_ref());

        // ---- feed-forward -------------------------------------------------
        let xb = pre_norm(dev, lw.ffn_norm.as_ref());

        // hb = act(xb @ w1^T) * (xb @ w3^T)                              (T, H)
        dev.glu(c.activation, xb, &lw.w1, &lw.w3, Buf::Hb);

        // x += (hb @ w2^T) * residual_scale                             (T, D)
        // or, with post-norms, x += rmsnorm(hb @ w2^T)
        sublayer_output(c, dev, Buf::Hb, &lw.w2, lw.post_ffn_norm.as_ref());
    }

    // ---- hidden states: rmsnorm(x[rows])                            (rows, D)
    if !plan.hidden_rows.is_empty() {
        dev.hidden(&w.final_norm, hidden);
    }
    // ---- classifier: logits = rmsnorm(x[rows]) @ classifier^T      (rows, V)
    dev.logits(&w.final_norm, &w.classifier, out);
    if c.logit_scale != 1.0 {
        out.iter_mut().for_each(|v| *v /= c.logit_scale);
    }
    if let Some(cap) = c.final_softcap {
        out.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
    }
}

/// A sub-layer's input: `Xb = rmsnorm(X)` with a pre-norm, else `X`.
fn pre_norm<D: Device + ?Sized>(dev: &mut D, gains: Option<&VectorDesc>) -> Buf {
    match gains {
        Some(g) => {
            dev.rmsnorm(Buf::X, g, Buf::Xb);
            Buf::Xb
        }
        None => Buf::X,
    }
}

/// Adds a sub-layer's output `input @ w^T` (`(T, D)`) to the residual
/// stream: normalised by `post_norm` if the model has one (using `Xb`), else
/// multiplied by the residual scale.
fn sublayer_output<D: Device + ?Sized>(
    c: &Config,
    dev: &mut D,
    input: Buf,
    w: &MatrixDesc,
    post_norm: Option<&VectorDesc>,
) {
    if let Some(gains) = post_norm {
        dev.matmul(input, &[(w, Buf::Xb)]);
        dev.add_rmsnorm(Buf::Xb, gains, Buf::X);
        return;
    }
    if c.residual_scale != 1.0 {
        dev.scale(input, c.residual_scale);
    }
    dev.matmul_add(input, w, Buf::X);
}
