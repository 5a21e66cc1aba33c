//! The CPU device: the forward pass's operations on the thread pool with
//! the kernels of the best tier, activations in host buffers, and the KV
//! cache's pages in host memory.
//!
//! Each product is one parallel region over the rows of its weights; the
//! few cheap element-wise steps run on the calling thread. All buffers are
//! sized once for the largest batch: a decoding step allocates nothing
//! (the cache's storage grows a page at a time, every [`PAGE`] positions
//! of a sequence).

use crate::config::{Activation, Config, RopeStyle};
use crate::forward::{Buf, Device, EngineDevice, Entry, Plan, rotary_angles};
use crate::kernels::{Kernels, padded_ld};
use crate::kv_cache::{KvType, PAGE, PageLayout};
use crate::model::Model;
use crate::pool::{SyncPtr, ThreadPool};
use crate::quant::{self, Block, BlockQ8_0, BlockQ8Act, QK};
use crate::weights::{Activations, DType, MatRef, MatrixDesc, VectorDesc, Weights, cast};
use half::f16;
use std::ops::Range;
use std::sync::Arc;

/// Everything an operation reads besides its buffers.
#[derive(Clone, Copy, Debug)]
struct Engine<'a> {
    config: &'a Config,
    weights: &'a Weights,
    kernels: &'static Kernels,
    pool: &'a ThreadPool,
}

impl<'a> Engine<'a> {
    fn new(model: &'a Model, kernels: &'static Kernels, pool: &'a ThreadPool) -> Self {
        Engine {
            config: &model.config,
            weights: &model.weights,
            kernels,
            pool,
        }
    }
}

/// The forward pass on the CPU.
#[derive(Debug)]
pub struct CpuDevice {
    model: Arc<Model>,
    kernels: &'static Kernels,
    /// The process's pool for this thread count, shared with other models.
    pool: Arc<ThreadPool>,
    max_batch: usize,
    /// The most positions a sequence holds.
    max_len: usize,
    /// `(T, width)` each, see [`Buf`]
    x: Vec<f32>,
    xb: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    hb: Vec<f32>,
    /// `(T, H)` the up projection, beside the gate in `hb`
    hb2: Vec<f32>,
    /// `(T, max(D, V-rows))` output of a sub-layer before the residual add
    proj: Vec<f32>,
    /// The inputs of the products in the forms their weights take
    forms: InputForms,
    /// Per thread, for one block of attention rows (`ATT_TOKENS` tokens
    /// times the query heads of one KV head): `(rows, max_len)` scores, then
    /// probabilities; `(rows, head_dim)` queries and outputs; `(PAGE,
    /// head_dim)` one page's values as f32 (a q8_0 cache);
    /// `(rows, head_dim / 32)` the queries quantized (a q8_0 cache)
    scores: Vec<f32>,
    att_q: Vec<f32>,
    att_o: Vec<f32>,
    att_v: Vec<f32>,
    att_acts: Vec<BlockQ8Act>,
    /// `(head_dim / 2,)` rotary frequencies, and those of the sliding
    /// layers if they have their own (else empty)
    inv_freq: Vec<f32>,
    local_inv_freq: Vec<f32>,
    /// `(max(head_dim, Q),)` one head (or row), normalised (`Config::qk_norm`)
    head: Vec<f32>,
    /// `(T, head_dim / 2)` cosines and sines of the batch's positions, at
    /// `inv_freq` and at `local_inv_freq` (empty without it)
    cos: Vec<f32>,
    sin: Vec<f32>,
    local_cos: Vec<f32>,
    local_sin: Vec<f32>,
    /// The current pass: its entries, their pages, the entry of each row,
    /// the rows that want logits, and the attention blocks
    /// `(entry, first token, tokens)`
    tokens: Vec<u32>,
    entries: Vec<Entry>,
    pages: Vec<u32>,
    row_entry: Vec<usize>,
    logit_rows: Vec<usize>,
    hidden_rows: Vec<usize>,
    blocks: Vec<(usize, usize, usize)>,
    /// The KV cache's pages, `(page_bytes,)` each, 4-byte aligned
    layout: PageLayout,
    kv: Vec<Box<[u32]>>,
}

/// Query tokens per attention work item: with the query heads that share a
/// KV head, the rows of one block of scores.
const ATT_TOKENS: usize = 16;

impl CpuDevice {
    /// A device for `model` with `n_threads` threads, batches of up to
    /// `max_batch` tokens, sequences of up to `max_len` positions, and a
    /// cache of `kv` values.
    pub fn new(
        model: Arc<Model>,
        n_threads: usize,
        max_batch: usize,
        max_len: usize,
        kv: KvType,
    ) -> crate::Result<Self> {
        let c = &model.config;
        let weights = &model.weights;
        let layout = PageLayout::new(c, kv)?;
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
        let half = c.rotary_dims() / 2;
        let att_rows = ATT_TOKENS * (c.n_heads / c.n_kv_heads);
        let quant_q = usize::from(kv == KvType::Q8_0);
        // Pair j of a head turns at pos * theta^(-2j / head_dim), rescaled.
        let inv_freq = c.rope_frequencies(
            weights.rope_factors.as_ref().map(|d| weights.vector(d)),
            max_len,
        );
        let local_inv_freq = c.local_rope_frequencies().unwrap_or_default();
        let local = usize::from(!local_inv_freq.is_empty());
        let n_threads = n_threads.max(1);
        let hd = c.head_dim;
        Ok(CpuDevice {
            kernels: Kernels::best(),
            pool: ThreadPool::shared(n_threads),
            max_batch,
            max_len,
            x: vec![0.0; max_batch * c.dim],
            xb: vec![0.0; max_batch * c.dim],
            q: vec![0.0; max_batch * c.q_dim()],
            k: vec![0.0; max_batch * c.kv_dim()],
            v: vec![0.0; max_batch * c.kv_dim()],
            att: vec![0.0; max_batch * c.q_dim()],
            hb: vec![0.0; max_batch * c.hidden_dim],
            hb2: vec![0.0; max_batch * c.hidden_dim],
            proj: vec![0.0; max_batch * c.dim],
            forms: InputForms {
                acts: vec![
                    quant::quantize_act(&[0.0; QK]);
                    blocked * max_batch * widest.div_ceil(QK)
                ],
                xq: vec![0; grouped * max_batch * widest],
                xs: vec![0.0; grouped * max_batch * widest],
                padded: vec![0.0; floating * max_batch * padded_ld(widest)],
            },
            scores: vec![0.0; n_threads * att_rows * max_len],
            att_q: vec![0.0; n_threads * att_rows * hd],
            att_o: vec![0.0; n_threads * att_rows * hd],
            att_v: vec![0.0; n_threads * PAGE * hd],
            att_acts: vec![
                quant::quantize_act(&[0.0; QK]);
                quant_q * n_threads * att_rows * hd / QK
            ],
            inv_freq,
            local_inv_freq,
            head: vec![0.0; hd.max(c.q_dim())],
            cos: vec![0.0; max_batch * half],
            sin: vec![0.0; max_batch * half],
            local_cos: vec![0.0; local * max_batch * half],
            local_sin: vec![0.0; local * max_batch * half],
            tokens: Vec::with_capacity(max_batch),
            entries: Vec::with_capacity(max_batch),
            pages: Vec::new(),
            row_entry: vec![0; max_batch],
            logit_rows: Vec::with_capacity(max_batch),
            hidden_rows: Vec::with_capacity(max_batch),
            blocks: Vec::with_capacity(max_batch),
            layout,
            kv: Vec::new(),
            model,
        })
    }

    /// Threads per pass.
    pub fn n_threads(&self) -> usize {
        self.pool.n_threads()
    }

    /// The kernel tier in use.
    pub fn kernels(&self) -> &'static Kernels {
        self.kernels
    }

    /// How the cache's pages are laid out.
    pub fn layout(&self) -> PageLayout {
        self.layout
    }

    /// Bytes of the activation buffers and per-thread scratch.
    pub fn buffer_bytes(&self) -> usize {
        let f = &self.forms;
        let floats = [
            &self.x,
            &self.xb,
            &self.q,
            &self.k,
            &self.v,
            &self.att,
            &self.hb,
            &self.hb2,
            &self.proj,
            &self.scores,
            &self.att_q,
            &self.att_o,
            &self.att_v,
            &f.xs,
            &f.padded,
            &self.inv_freq,
            &self.head,
            &self.cos,
            &self.sin,
        ];
        floats.iter().map(|v| v.len() * 4).sum::<usize>()
            + (f.acts.len() + self.att_acts.len()) * size_of::<BlockQ8Act>()
            + f.xq.len()
    }

    /// Bytes of the cache's page storage allocated so far.
    pub fn kv_bytes(&self) -> usize {
        self.kv.len() * self.layout.page_bytes()
    }

    /// Makes sure page `id` has storage.
    fn ensure_page(&mut self, id: u32) {
        let words = self.layout.page_bytes().div_ceil(4);
        while self.kv.len() <= id as usize {
            self.kv.push(vec![0u32; words].into_boxed_slice());
        }
    }

    fn rows(&self) -> usize {
        self.row_entry.len()
    }
}

/// A page's bytes.
fn page_bytes(page: &[u32]) -> &[u8] {
    crate::weights::as_bytes(page)
}

/// A page's bytes, writable.
fn page_bytes_mut(page: &mut [u32]) -> &mut [u8] {
    // SAFETY: u32 has no padding and every byte pattern is a valid u8; the
    // length is the slice's size in bytes.
    unsafe { std::slice::from_raw_parts_mut(page.as_mut_ptr().cast::<u8>(), size_of_val(page)) }
}

/// The device's buffer of `b` (`&mut`, or shared with `buf!`), borrowing
/// that field alone, so other fields stay usable beside it.
macro_rules! buf_mut {
    ($dev:expr, $b:expr) => {
        buf!($dev, $b, mut)
    };
}

macro_rules! buf {
    ($dev:expr, $b:expr $(, $m:tt)?) => {
        match $b {
            Buf::X => &$($m)? $dev.x,
            Buf::Xb => &$($m)? $dev.xb,
            Buf::Q => &$($m)? $dev.q,
            Buf::K => &$($m)? $dev.k,
            Buf::V => &$($m)? $dev.v,
            Buf::Att => &$($m)? $dev.att,
            Buf::Hb => &$($m)? $dev.hb,
        }
    };
}

impl EngineDevice for CpuDevice {
    fn name(&self) -> String {
        "cpu".into()
    }

    fn layout(&self) -> PageLayout {
        self.layout
    }

    fn buffer_bytes(&self) -> usize {
        CpuDevice::buffer_bytes(self)
    }

    fn kv_bytes(&self) -> usize {
        CpuDevice::kv_bytes(self)
    }

    fn n_threads(&self) -> usize {
        CpuDevice::n_threads(self)
    }

    fn isa(&self) -> &'static str {
        self.kernels.isa().name()
    }
}

impl Device for CpuDevice {
    fn begin(&mut self, plan: &Plan) {
        let c = &self.model.config;
        let (vocab, half, magnitude) = (c.vocab_size, c.rotary_dims() / 2, c.rope_magnitude());
        plan.check(self.max_batch, self.max_len, vocab);
        self.tokens.clone_from(&plan.tokens);
        self.entries.clone_from(&plan.entries);
        self.pages.clone_from(&plan.pages);
        self.logit_rows.clone_from(&plan.logit_rows);
        self.hidden_rows.clone_from(&plan.hidden_rows);
        self.row_entry.clear();
        self.blocks.clear();
        if let Some(id) = plan.pages.iter().copied().max() {
            self.ensure_page(id);
        }
        for (e, entry) in plan.entries.iter().enumerate() {
            let len = entry.tokens.len();
            for t in 0..len {
                self.row_entry.push(e);
                let r = (entry.tokens.start + t) * half..(entry.tokens.start + t + 1) * half;
                let (cos, sin) = (&mut self.cos[r.clone()], &mut self.sin[r.clone()]);
                rotary_angles(&self.inv_freq, magnitude, entry.start + t, cos, sin);
                if !self.local_inv_freq.is_empty() {
                    let (cos, sin) = (&mut self.local_cos[r.clone()], &mut self.local_sin[r]);
                    rotary_angles(&self.local_inv_freq, 1.0, entry.start + t, cos, sin);
                }
            }
            for t0 in (0..len).step_by(ATT_TOKENS) {
                self.blocks.push((e, t0, ATT_TOKENS.min(len - t0)));
            }
        }
    }

    fn embed(&mut self, table: &MatrixDesc) {
        let dim = self.model.config.dim;
        let emb = self.model.weights.matrix(table);
        for (t, &tok) in self.tokens.iter().enumerate() {
            emb.row_into(tok as usize, &mut self.x[t * dim..(t + 1) * dim]);
        }
    }

    fn rmsnorm(&mut self, src: Buf, gains: &VectorDesc, dst: Buf) {
        let (n, dim) = (self.rows(), self.model.config.dim);
        let model = self.model.clone();
        let w = model.weights.vector(gains);
        assert!(src != dst && w.len() == dim);
        // Both are (T, D) buffers: X and Xb.
        let (x, out) = match (src, dst) {
            (Buf::X, Buf::Xb) => (&self.x, &mut self.xb),
            (Buf::Xb, Buf::X) => (&self.xb, &mut self.x),
            _ => panic!("rmsnorm works between X and Xb"),
        };
        rmsnorm_rows(self.kernels, model.config.norm_eps, x, w, out, n, dim);
    }

    fn add_rmsnorm(&mut self, src: Buf, gains: &VectorDesc, acc: Buf) {
        let (n, dim) = (self.rows(), self.model.config.dim);
        let model = self.model.clone();
        let w = model.weights.vector(gains);
        assert!(src == Buf::Xb && acc == Buf::X && w.len() == dim);
        let eps = model.config.norm_eps;
        rmsnorm_rows(self.kernels, eps, &self.xb, w, &mut self.proj, n, dim);
        let sum = self.x[..n * dim].iter_mut().zip(&self.proj[..n * dim]);
        sum.for_each(|(x, p)| *x += p);
    }

    fn matmul(&mut self, input: Buf, products: &[(&MatrixDesc, Buf)]) {
        let n = self.rows();
        let model = self.model.clone();
        let e = Engine::new(&model, self.kernels, &self.pool);
        let c = e.config;
        let k = input.width(c);
        let count = products.len();
        let mut outs = [Out::dangling(); 4];
        let mut dtypes = [products[0].0.dtype; 4];
        let mut mats = [e.weights.matrix(products[0].0); 4];
        assert!(count <= outs.len());
        for (i, (m, _)) in products.iter().enumerate() {
            (dtypes[i], mats[i]) = (m.dtype, e.weights.matrix(m));
        }
        for (o, (m, b)) in outs.iter_mut().zip(products) {
            assert!(*b != input && m.rows == b.width(c) && m.cols == k);
            *o = Out::new(&mut buf_mut!(self, *b)[..n * m.rows], m.rows);
        }
        let x = buf!(self, input);
        let input = Input::prepare(e, x, n, k, &dtypes[..count], &mut self.forms);
        par_matmul(e, &mats[..count], &outs[..count], &input, n, |_, _| {});
    }

    fn matmul_add(&mut self, input: Buf, w: &MatrixDesc, acc: Buf) {
        let n = self.rows();
        let model = self.model.clone();
        let e = Engine::new(&model, self.kernels, &self.pool);
        assert!(acc == Buf::X && input != Buf::X && w.cols == input.width(e.config));
        // (Not X itself, which the product adds to.)
        let x = match input {
            Buf::Xb => &self.xb,
            Buf::Q => &self.q,
            Buf::Att => &self.att,
            Buf::Hb => &self.hb,
            _ => panic!("matmul_add reads Xb, Q, Att or Hb"),
        };
        let dtypes = [w.dtype];
        let input = Input::prepare(e, x, n, w.cols, &dtypes, &mut self.forms);
        add_product(
            e,
            e.weights.matrix(w),
            &input,
            &mut self.x,
            &mut self.proj,
            n,
        );
    }

    fn glu(&mut self, act: Activation, input: Buf, gate: &MatrixDesc, up: &MatrixDesc, out: Buf) {
        let n = self.rows();
        let model = self.model.clone();
        let e = Engine::new(&model, self.kernels, &self.pool);
        assert!(matches!(input, Buf::X | Buf::Xb) && out == Buf::Hb);
        let hid = gate.rows;
        let dtypes = [gate.dtype, up.dtype];
        let x = if input == Buf::X { &self.x } else { &self.xb };
        let input = Input::prepare(e, x, n, gate.cols, &dtypes, &mut self.forms);
        let outs = [
            Out::new(&mut self.hb[..n * hid], hid),
            Out::new(&mut self.hb2[..n * hid], hid),
        ];
        let (hb, hb2) = (outs[0].ptr, outs[1].ptr);
        par_matmul_paired(
            e,
            [e.weights.matrix(gate), e.weights.matrix(up)],
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
                        match act {
                            Activation::Silu => e.kernels.silu_mul(a, b),
                            Activation::GeluTanh => e.kernels.gelu_tanh_mul(a, b),
                        }
                    }
                }
            },
        );
    }

    fn add_bias(&mut self, buf: Buf, bias: &VectorDesc) {
        let n = self.rows();
        let model = self.model.clone();
        let b = model.weights.vector(bias);
        let rows = &mut buf_mut!(self, buf)[..n * b.len()];
        for row in rows.chunks_exact_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(x, b)| *x += b);
        }
    }

    fn scale(&mut self, buf: Buf, factor: f32) {
        let n = self.rows() * buf.width(&self.model.config);
        buf_mut!(self, buf)[..n]
            .iter_mut()
            .for_each(|x| *x *= factor);
    }

    fn norm_heads(&mut self, buf: Buf, gains: &VectorDesc) {
        let n = self.rows();
        let model = self.model.clone();
        let g = model.weights.vector(gains);
        let width = buf.width(&model.config);
        let (kernels, eps) = (self.kernels, model.config.norm_eps);
        let tmp = &mut self.head[..g.len()];
        let rows = &mut buf_mut!(self, buf)[..n * width];
        for head in rows.chunks_exact_mut(g.len()) {
            kernels.rmsnorm(head, g, eps, tmp);
            head.copy_from_slice(tmp);
        }
    }

    fn rope(&mut self, buf: Buf, local: bool) {
        let n = self.rows();
        let c = &self.model.config;
        let (hd, style, width) = (c.head_dim, c.rope_style, buf.width(c));
        let (rot, half) = (c.rotary_dims(), c.rotary_dims() / 2);
        let (cos, sin) = if local {
            assert!(
                !self.local_cos.is_empty(),
                "the model has local frequencies"
            );
            (&self.local_cos, &self.local_sin)
        } else {
            (&self.cos, &self.sin)
        };
        let rows = match buf {
            Buf::Q => &mut self.q,
            Buf::K => &mut self.k,
            _ => panic!("rope turns Q or K"),
        };
        for t in 0..n {
            rope(
                &mut rows[t * width..(t + 1) * width],
                hd,
                rot,
                style,
                &cos[t * half..(t + 1) * half],
                &sin[t * half..(t + 1) * half],
            );
        }
    }

    fn store_kv(&mut self, layer: usize, k: Buf, v: Buf) {
        assert!(k == Buf::K && v == Buf::V);
        let (layout, hd) = (self.layout, self.model.config.head_dim);
        let kv_dim = layout.n_kv_heads * hd;
        for (t, &e) in self.row_entry.iter().enumerate() {
            let entry = &self.entries[e];
            let pos = entry.start + (t - entry.tokens.start);
            let page = self.pages[entry.pages.start + pos / PAGE] as usize;
            let slot = pos % PAGE;
            let bytes = page_bytes_mut(&mut self.kv[page]);
            for (values, src) in [(false, &self.k), (true, &self.v)] {
                for h in 0..layout.n_kv_heads {
                    let at = layout.offset(layer, values, h) + slot * layout.row_bytes;
                    let dst = &mut bytes[at..at + layout.row_bytes];
                    let x = &src[t * kv_dim + h * hd..][..hd];
                    write_row(layout.dtype, x, dst);
                }
            }
        }
    }

    fn attention(&mut self, layer: usize, q: Buf, out: Buf) {
        assert!(q == Buf::Q && out == Buf::Att);
        attention(self, layer);
    }

    fn logits(&mut self, norm: &VectorDesc, classifier: &MatrixDesc, out: &mut [f32]) {
        let rows = self.logit_rows.len();
        if rows == 0 {
            return;
        }
        let model = self.model.clone();
        let e = Engine::new(&model, self.kernels, &self.pool);
        let (dim, vocab) = (e.config.dim, e.config.vocab_size);
        assert_eq!(out.len(), rows * vocab);
        let w = e.weights.vector(norm);
        for (i, &r) in self.logit_rows.iter().enumerate() {
            e.kernels.rmsnorm(
                &self.x[r * dim..(r + 1) * dim],
                w,
                e.config.norm_eps,
                &mut self.xb[i * dim..(i + 1) * dim],
            );
        }
        let dtypes = [classifier.dtype];
        let input = Input::prepare(e, &self.xb, rows, dim, &dtypes, &mut self.forms);
        par_matmul(
            e,
            &[e.weights.matrix(classifier)],
            &[Out::new(out, vocab)],
            &input,
            rows,
            |_, _| {},
        );
    }

    fn hidden(&mut self, norm: &VectorDesc, out: &mut [f32]) {
        let model = self.model.clone();
        let e = Engine::new(&model, self.kernels, &self.pool);
        let dim = e.config.dim;
        assert_eq!(out.len(), self.hidden_rows.len() * dim);
        let w = e.weights.vector(norm);
        for (i, &r) in self.hidden_rows.iter().enumerate() {
            let row = &mut out[i * dim..(i + 1) * dim];
            e.kernels
                .rmsnorm(&self.x[r * dim..(r + 1) * dim], w, e.config.norm_eps, row);
        }
    }

    fn copy_rows(&mut self, src: u32, dst: u32, rows: usize) {
        assert!(rows <= PAGE && src != dst);
        self.ensure_page(src.max(dst));
        let l = self.layout;
        let (src, dst) = (src as usize, dst as usize);
        // Split the borrow of the two pages.
        let (a, b) = if src < dst {
            let (lo, hi) = self.kv.split_at_mut(dst);
            (&lo[src], &mut hi[0])
        } else {
            let (lo, hi) = self.kv.split_at_mut(src);
            (&hi[0], &mut lo[dst])
        };
        let (a, b) = (page_bytes(a), page_bytes_mut(b));
        for layer in 0..l.n_layers {
            for values in [false, true] {
                for h in 0..l.n_kv_heads {
                    let at = l.offset(layer, values, h);
                    let n = rows * l.row_bytes;
                    b[at..at + n].copy_from_slice(&a[at..at + n]);
                }
            }
        }
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }
}

/// Stores one head's `head_dim` values as the cache's type.
fn write_row(dtype: KvType, x: &[f32], dst: &mut [u8]) {
    match dtype {
        KvType::F32 => dst
            .chunks_exact_mut(4)
            .zip(x)
            .for_each(|(d, v)| d.copy_from_slice(&v.to_le_bytes())),
        KvType::F16 => dst
            .chunks_exact_mut(2)
            .zip(x)
            .for_each(|(d, v)| d.copy_from_slice(&f16::from_f32(*v).to_le_bytes())),
        KvType::Q8_0 => {
            for (d, v) in dst
                .chunks_exact_mut(size_of::<BlockQ8_0>())
                .zip(x.chunks_exact(QK))
            {
                let b = BlockQ8_0::quantize(v.try_into().expect("a whole block"));
                d[..2].copy_from_slice(&b.d.to_le_bytes());
                d[2..].copy_from_slice(&b.qs.map(|q| q as u8));
            }
        }
    }
}

/// Causal attention for every entry of the batch, in parallel over (KV
/// head, block of an entry's tokens) items. Each item gathers its query
/// rows (all the query heads that read this KV head, for up to
/// `ATT_TOKENS` tokens), computes their scores against the keys of each of
/// the sequence's pages as one matrix product, turns each row into
/// probabilities over the positions it may see, and adds up their products
/// with each page's values.
fn attention(d: &mut CpuDevice, layer: usize) {
    let c = &d.model.config;
    let (hd, q_dim) = (c.head_dim, c.q_dim());
    let n_kv = c.n_kv_heads;
    let group = c.n_heads / n_kv;
    let scale = c.attn_scale();
    let (window, softcap) = (c.window(layer), c.attn_softcap);
    let rows_max = ATT_TOKENS * group;
    let max_len = d.max_len;
    let layout = d.layout;
    let kern = d.kernels;
    let q = &d.q;
    let att = SyncPtr(d.att.as_mut_ptr());
    let ptrs = [
        SyncPtr(d.scores.as_mut_ptr()),
        SyncPtr(d.att_q.as_mut_ptr()),
        SyncPtr(d.att_o.as_mut_ptr()),
        SyncPtr(d.att_v.as_mut_ptr()),
    ];
    let acts = SyncPtr(d.att_acts.as_mut_ptr());
    let (entries, pages, blocks, kv) = (&d.entries, &d.pages, &d.blocks, &d.kv);
    d.pool.for_chunks(n_kv * blocks.len(), 1, |thread, range| {
        // SAFETY: each thread owns its slice of the per-thread scratch.
        let (sc, qb, ob, vbuf, qacts) = unsafe {
            let slice = |p: SyncPtr<f32>, len: usize| {
                std::slice::from_raw_parts_mut(p.get().add(thread * len), len)
            };
            (
                slice(ptrs[0], rows_max * max_len),
                slice(ptrs[1], rows_max * hd),
                slice(ptrs[2], rows_max * hd),
                slice(ptrs[3], PAGE * hd),
                if layout.dtype == KvType::Q8_0 {
                    let len = rows_max * hd / QK;
                    std::slice::from_raw_parts_mut(acts.get().add(thread * len), len)
                } else {
                    &mut [][..]
                },
            )
        };
        for item in range {
            let (kvh, (e, t0, tn)) = (item % n_kv, blocks[item / n_kv]);
            let entry = &entries[e];
            let seq_pages = &pages[entry.pages.clone()];
            let rows = tn * group;
            let n_pos = entry.start + t0 + tn; // the positions the block's last token sees
            let row0 = entry.tokens.start + t0;
            // Row t * group + g: token t0 + t, query head kvh * group + g, scaled.
            for t in 0..tn {
                for g in 0..group {
                    let src = &q[(row0 + t) * q_dim + (kvh * group + g) * hd..][..hd];
                    let dst = &mut qb[(t * group + g) * hd..][..hd];
                    dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v * scale);
                }
            }
            if layout.dtype == KvType::Q8_0 {
                kern.quantize_act(&qb[..rows * hd], &mut qacts[..rows * hd / QK]);
            }
            // One head's keys (`values == false`) or values in page `pg` of
            // the sequence: `(npg, hd)` rows as the cache stores them.
            let rows_of = |pg: usize, values: bool| {
                let npg = PAGE.min(n_pos - pg * PAGE);
                let at = layout.offset(layer, values, kvh);
                let page = &kv[seq_pages[pg] as usize];
                (npg, &page_bytes(page)[at..at + npg * layout.row_bytes])
            };
            let n_pages = n_pos.div_ceil(PAGE);
            // The first position token t of the block sees (0 without a
            // window), and the first page any of them sees.
            let first =
                |t: usize| window.map_or(0, |w| (entry.start + t0 + t + 1).saturating_sub(w));
            let first_page = first(0) / PAGE;
            // scores (rows, n_pos) = queries @ keys^T, a page at a time
            for pg in first_page..n_pages {
                let (npg, keys) = rows_of(pg, false);
                // SAFETY: `sc` holds `rows` rows of `max_len >= n_pos`.
                let out = unsafe { sc.as_mut_ptr().add(pg * PAGE) };
                // SAFETY: (all arms) `out` has room for `rows` rows of these columns.
                unsafe {
                    match layout.dtype {
                        KvType::F32 => kern.matmul_f32_into(
                            cast(keys, npg * hd),
                            hd,
                            qb,
                            hd,
                            rows,
                            out,
                            max_len,
                        ),
                        KvType::F16 => kern.matmul_f16_into(
                            cast(keys, npg * hd),
                            hd,
                            qb,
                            hd,
                            rows,
                            out,
                            max_len,
                        ),
                        KvType::Q8_0 => kern.matmul_quant_into::<BlockQ8_0>(
                            cast(keys, npg * hd / QK),
                            hd / QK,
                            qacts,
                            rows,
                            out,
                            max_len,
                        ),
                    }
                }
            }
            // Each row sees the positions up to its own token (and within
            // the window).
            for t in 0..tn {
                let (lo, seen) = (first(t), entry.start + t0 + t + 1);
                for g in 0..group {
                    let row = &mut sc[(t * group + g) * max_len..][..n_pos];
                    if let Some(cap) = softcap {
                        let capped = row[lo..seen].iter_mut();
                        capped.for_each(|s| *s = cap * (*s / cap).tanh());
                    }
                    kern.softmax(&mut row[lo..seen]);
                    row[first_page * PAGE..lo].fill(0.0);
                    row[seen..].fill(0.0);
                }
            }
            // outputs (rows, hd) = probabilities @ values, summed over pages
            for pg in first_page..n_pages {
                let (npg, bytes) = rows_of(pg, true);
                let (p, acc) = (&sc[pg * PAGE..], pg > first_page);
                match layout.dtype {
                    KvType::F32 => {
                        let v: &[f32] = cast(bytes, npg * hd);
                        kern.attn_pv(p, max_len, rows, npg, v, hd, hd, ob, acc)
                    }
                    KvType::F16 => {
                        let v: &[f16] = cast(bytes, npg * hd);
                        kern.attn_pv(p, max_len, rows, npg, v, hd, hd, ob, acc)
                    }
                    KvType::Q8_0 => {
                        let v: &[BlockQ8_0] = cast(bytes, npg * hd / QK);
                        quant::dequantize_row(v, &mut vbuf[..npg * hd]);
                        kern.attn_pv(p, max_len, rows, npg, &vbuf[..], hd, hd, ob, acc)
                    }
                }
            }
            for t in 0..tn {
                for g in 0..group {
                    let h = kvh * group + g;
                    // SAFETY: each (token, head) of `att` belongs to one item.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            att.get().add((row0 + t) * q_dim + h * hd),
                            hd,
                        )
                    };
                    dst.copy_from_slice(&ob[(t * group + g) * hd..][..hd]);
                }
            }
        }
    });
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
    /// An output that is never written (fills unused slots of arrays).
    fn dangling() -> Self {
        Out {
            ptr: SyncPtr(std::ptr::NonNull::dangling().as_ptr()),
            ld: 0,
        }
    }

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

/// `out[t, r] = w[r] . input[t]` for the rows of `w`, by the kernel of its
/// type (see `weights::WeightType`).
fn matmul_chunk(
    e: Engine<'_>,
    w: &MatRef<'_>,
    input: &Input<'_>,
    n: usize,
    out: *mut f32,
    ldo: usize,
) {
    assert_eq!(w.cols, input.k);
    let x = Activations {
        x: input.x,
        ldx: input.ldx,
        blocks: input.acts,
        groups: input.q8g,
    };
    // SAFETY: the caller gives this chunk exclusive use of its output
    // columns; the kernels check the input extents.
    unsafe { w.matmul_into(e.kernels, &x, n, out, ldo) }
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
fn rmsnorm_rows(
    kernels: &Kernels,
    eps: f32,
    x: &[f32],
    w: &[f32],
    out: &mut [f32],
    n: usize,
    dim: usize,
) {
    for t in 0..n {
        kernels.rmsnorm(
            &x[t * dim..(t + 1) * dim],
            w,
            eps,
            &mut out[t * dim..(t + 1) * dim],
        );
    }
}

/// Rotates pair `j` of every head in `v` by the angle whose cosine and sine
/// are `cos[j]`, `sin[j]`; a pair is `(2j, 2j+1)` or `(j, j + head_dim/2)`.
/// Rotates the first `rot` values of each head of `v` (the rest pass
/// through) by the angles of `cos` and `sin`, `rot / 2` of each.
fn rope(v: &mut [f32], head_dim: usize, rot: usize, style: RopeStyle, cos: &[f32], sin: &[f32]) {
    let half = rot / 2;
    for head in v.chunks_exact_mut(head_dim) {
        let head = &mut head[..rot];
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
