//! [`GpuDevice`]: the forward pass's operations as dispatches of the Metal
//! kernels, on any [`Gpu`].
//!
//! Buffers, planned once for the largest batch:
//! - the weights: each mapped file wrapped without a copy (matrices the
//!   engine rearranged at load are copied once), and the vectors;
//! - the activations [`Buf`], `(max_batch, width)` each, plus a second
//!   feed-forward buffer for the up projection;
//! - per pass: the tokens, each token's position and page list
//!   ([`TokenInfo`]), the page lists, the rotary cosines and sines (the
//!   host computes them exactly as the CPU device does);
//! - the KV cache's pages in one buffer, grown (and copied) when the page
//!   allocator hands out a page beyond it;
//! - the normalised rows and the logits (or hidden states) of a pass.
//!
//! A pass records every operation into one batch of work, which `logits`
//! submits and waits for.

use super::attention::AttentionPlan;
use super::layout::{Args, KvArgs, MatvecArgs, RowArgs, TokenInfo, slice_bytes, weight_code};
use super::{Arg, Gpu, Grid, SIMD_WIDTH, source};
use crate::config::{Activation, RopeStyle};
use crate::error::{Error, Result};
use crate::forward::{Buf, Device, EngineDevice, Plan, rotary_angles};
use crate::kv_cache::{KvType, PAGE, PageLayout};
use crate::model::Model;
use crate::weights::{MatrixDesc, VectorDesc};
use std::sync::Arc;

/// Rows and SIMD groups of a `matvec` threadgroup, and tokens per weight
/// read (`MV_ROWS`, `MV_GROUPS`, `MV_TOKENS` in matvec.metal).
const MV_ROWS: u32 = 4;
const MV_GROUPS: u32 = 2;
const MV_TOKENS: u32 = 8;
/// Rows and tokens of a `matmul` tile (`MM_ROWS`, `MM_TOKENS`), which
/// takes products of more than [`MV_TOKENS`] tokens; 128 threads.
const MM_ROWS: u32 = 32;
const MM_TOKENS: u32 = 32;

/// Alignment and length granule of memory wrapped without a copy (Apple
/// Silicon's pages; a multiple of every other page size in use).
const WRAP_GRANULE: usize = 16384;

/// The kernels, compiled once per device.
#[derive(Debug)]
struct Pipelines<P> {
    matvec: P,
    matmul: P,
    embed: P,
    rmsnorm: P,
    norm_heads: P,
    rope: P,
    add_bias: P,
    scale: P,
    swiglu: P,
    geglu: P,
    add_rmsnorm: P,
    store_kv: P,
    attention: P,
    attention_merge: P,
}

/// The forward pass on a GPU.
pub struct GpuDevice<G: Gpu> {
    gpu: G,
    model: Arc<Model>,
    p: Pipelines<G::Pipeline>,
    max_batch: usize,
    max_len: usize,
    layout: PageLayout,
    /// One per [`crate::weights::Weights::stores`] entry, with the offset
    /// of the store's first byte in it (wrapped memory starts at the page).
    weights: Vec<(G::Buffer, usize)>,
    vectors: G::Buffer,
    /// X, Xb, Q, K, V, Att, Hb, and the up projection's output
    acts: [G::Buffer; 8],
    tokens: G::Buffer,
    info: G::Buffer,
    pages: G::Buffer,
    pages_len: usize,
    /// The pass's cut of attention, its blocks, and the ranges' partial
    /// results.
    att: AttentionPlan,
    blocks: G::Buffer,
    partial: G::Buffer,
    partial_len: usize,
    cos: G::Buffer,
    sin: G::Buffer,
    /// The same at the sliding layers' frequencies, if they have their own
    /// (`Config::local_rope_theta`; else 4 bytes each).
    local_cos: G::Buffer,
    local_sin: G::Buffer,
    rows: G::Buffer,
    normed: G::Buffer,
    out: G::Buffer,
    out_len: usize,
    kv: G::Buffer,
    /// Pages the cache buffer holds.
    kv_pages: usize,
    inv_freq: Vec<f32>,
    /// Empty without local frequencies.
    local_inv_freq: Vec<f32>,
    /// Host scratch of `begin`, kept so a pass allocates nothing.
    info_host: Vec<TokenInfo>,
    cos_host: Vec<f32>,
    sin_host: Vec<f32>,
    /// The pass: tokens, logit rows and hidden rows.
    n: usize,
    logit_rows: Vec<u32>,
    hidden_rows: Vec<u32>,
    /// Bytes of GPU buffers of the device's own (not the wrapped weights).
    own_bytes: usize,
}

impl<G: Gpu> std::fmt::Debug for GpuDevice<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuDevice")
            .field("gpu", &self.gpu.name())
            .field("max_batch", &self.max_batch)
            .field("max_len", &self.max_len)
            .field("kv_pages", &self.kv_pages)
            .finish_non_exhaustive()
    }
}

const X: usize = 0;
const HB2: usize = 7;

fn index(b: Buf) -> usize {
    match b {
        Buf::X => 0,
        Buf::Xb => 1,
        Buf::Q => 2,
        Buf::K => 3,
        Buf::V => 4,
        Buf::Att => 5,
        Buf::Hb => 6,
    }
}

/// Whether the GPU backend runs `model` with a cache of `kv`: every weight
/// type has a kernel, heads are at most 256 values, and the cache is f16 or
/// f32. `device="auto"` runs a model it does not on the CPU.
pub fn supports(model: &Model, kv: KvType) -> Result<()> {
    let (c, w) = (&model.config, &model.weights);
    if kv == KvType::Q8_0 {
        return Err(Error::InvalidArgument(
            "the GPU keeps its KV cache in \"f16\" or \"f32\", not \"q8_0\"".into(),
        ));
    }
    let all = w.layers.iter().flat_map(|l| l.matrices().map(|(_, m)| m));
    for m in all.chain([&w.embedding, &w.classifier]) {
        if weight_code(m.dtype).is_none() {
            return Err(Error::InvalidArgument(format!(
                "weights of type {} have no GPU kernel; use device=\"cpu\" or convert the \
                 model (e.g. to q8_0)",
                m.dtype.name()
            )));
        }
    }
    if c.head_dim > 8 * SIMD_WIDTH as usize {
        return Err(Error::InvalidArgument(format!(
            "the GPU's attention takes heads of up to 256 values; this model's have {}",
            c.head_dim
        )));
    }
    Ok(())
}

impl<G: Gpu> GpuDevice<G> {
    /// A device on `gpu` for `model`: batches of up to `max_batch` tokens,
    /// sequences of up to `max_len` positions, a cache of `kv` values.
    pub fn new(
        model: Arc<Model>,
        gpu: G,
        max_batch: usize,
        max_len: usize,
        kv: KvType,
    ) -> Result<Self> {
        let c = &model.config;
        let w = &model.weights;
        supports(&model, kv)?;
        let library = gpu.compile(&source::library())?;
        let pipe = |name: &str| gpu.pipeline(&library, name);
        let p = Pipelines {
            matvec: pipe("matvec")?,
            matmul: pipe("matmul")?,
            embed: pipe("embed")?,
            rmsnorm: pipe("rmsnorm")?,
            norm_heads: pipe("norm_heads")?,
            rope: pipe("rope")?,
            add_bias: pipe("add_bias")?,
            scale: pipe("scale")?,
            swiglu: pipe("swiglu")?,
            geglu: pipe("geglu")?,
            add_rmsnorm: pipe("add_rmsnorm")?,
            store_kv: pipe("store_kv")?,
            attention: pipe("attention")?,
            attention_merge: pipe("attention_merge")?,
        };

        let mut weights = Vec::new();
        for (bytes, mapped) in w.stores() {
            let addr = bytes.as_ptr() as usize;
            if mapped && !bytes.is_empty() {
                // The mapping starts at a page; cover it to the granule.
                let base = addr - addr % WRAP_GRANULE;
                let len = (addr + bytes.len()).next_multiple_of(WRAP_GRANULE) - base;
                // SAFETY: `base` is the page holding the mapping's start
                // (mappings are page-aligned: base == addr on 16 KiB-page
                // systems), the span is whole pages of it, and the model
                // (held by `self.model`) keeps the mapping alive.
                let buf = unsafe { gpu.wrap(base as *const u8, len)? };
                weights.push((buf, addr - base));
            } else {
                let buf = gpu.buffer(bytes.len().max(1))?;
                // SAFETY: the buffer is new, at least as long as `bytes`,
                // and no work runs.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), gpu.contents(&buf), bytes.len())
                };
                weights.push((buf, 0));
            }
        }
        let mut own = 0usize;
        let mut alloc = |bytes: usize| -> Result<G::Buffer> {
            own += bytes.max(4);
            gpu.buffer(bytes.max(4))
        };
        let vecs = w.all_vectors();
        let vectors = alloc(vecs.len() * 4)?;
        // SAFETY: the buffer is new and holds the vectors; no work runs.
        unsafe {
            std::ptr::copy_nonoverlapping(
                vecs.as_ptr(),
                gpu.contents(&vectors).cast::<f32>(),
                vecs.len(),
            )
        };
        let f = 4 * max_batch;
        let acts = [
            alloc(f * c.dim)?,
            alloc(f * c.dim)?,
            alloc(f * c.q_dim())?,
            alloc(f * c.kv_dim())?,
            alloc(f * c.kv_dim())?,
            alloc(f * c.q_dim())?,
            alloc(f * c.hidden_dim)?,
            alloc(f * c.hidden_dim)?,
        ];
        let half = c.rotary_dims() / 2;
        let layout = PageLayout::new(c, kv)?;
        let local_inv_freq = c.local_rope_frequencies().unwrap_or_default();
        let local = usize::from(!local_inv_freq.is_empty());
        Ok(GpuDevice {
            tokens: alloc(f)?,
            info: alloc(max_batch * size_of::<TokenInfo>())?,
            pages: alloc(4 * max_batch)?,
            pages_len: max_batch,
            att: AttentionPlan::default(),
            blocks: alloc(8 * max_batch)?,
            partial: alloc(4)?,
            partial_len: 1,
            cos: alloc(f * half)?,
            sin: alloc(f * half)?,
            local_cos: alloc(local * f * half)?,
            local_sin: alloc(local * f * half)?,
            rows: alloc(f)?,
            normed: alloc(f * c.dim)?,
            out: alloc(4 * c.vocab_size)?,
            out_len: c.vocab_size,
            kv: alloc(layout.page_bytes())?,
            kv_pages: 1,
            info_host: Vec::with_capacity(max_batch),
            cos_host: vec![0.0; max_batch * half],
            sin_host: vec![0.0; max_batch * half],
            inv_freq: c.rope_frequencies(w.rope_factors.as_ref().map(|d| w.vector(d)), max_len),
            local_inv_freq,
            own_bytes: own,
            gpu,
            p,
            max_batch,
            max_len,
            layout,
            weights,
            vectors,
            acts,
            n: 0,
            logit_rows: Vec::with_capacity(max_batch),
            hidden_rows: Vec::with_capacity(max_batch),
            model,
        })
    }

    /// The GPU's name.
    pub fn gpu_name(&self) -> String {
        self.gpu.name()
    }

    /// How the cache's pages are laid out.
    pub fn layout(&self) -> PageLayout {
        self.layout
    }

    /// Bytes of the GPU buffers the device allocated (activations, cache,
    /// copies of rearranged weights); wrapped weights are not counted.
    pub fn buffer_bytes(&self) -> usize {
        self.own_bytes
    }

    /// Bytes of the KV cache's buffer.
    pub fn kv_bytes(&self) -> usize {
        self.kv_pages * self.layout.page_bytes()
    }

    /// Copies `values` to the start of `buf`.
    fn write<T: Copy>(&self, buf: &G::Buffer, values: &[T]) {
        // SAFETY: every buffer written is planned to hold what it is given
        // (checked by the callers' sizes), and no work runs between passes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                values.as_ptr().cast::<u8>(),
                self.gpu.contents(buf),
                std::mem::size_of_val(values),
            )
        }
    }

    /// A buffer of at least `need` elements of 4 bytes in `slot`, grown
    /// when it is too small.
    fn grow(&mut self, which: Grown, need: usize) -> Result<()> {
        let (len, cap) = match which {
            Grown::Pages => (&mut self.pages_len, need),
            Grown::Out => (&mut self.out_len, need),
            Grown::Partial => (&mut self.partial_len, need),
        };
        if *len >= cap {
            return Ok(());
        }
        let new_len = cap.next_power_of_two();
        let buf = self.gpu.buffer(4 * new_len)?;
        self.own_bytes += 4 * (new_len - *len);
        *len = new_len;
        match which {
            Grown::Pages => self.pages = buf,
            Grown::Out => self.out = buf,
            Grown::Partial => self.partial = buf,
        }
        Ok(())
    }

    /// Makes the cache buffer hold page `id`, keeping what it holds.
    fn ensure_page(&mut self, id: usize) -> Result<()> {
        if id < self.kv_pages {
            return Ok(());
        }
        let pages = (id + 1).next_power_of_two();
        let pb = self.layout.page_bytes();
        let buf = self.gpu.buffer(pages * pb)?;
        // SAFETY: both buffers hold at least the old pages; no work runs.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.gpu.contents(&self.kv),
                self.gpu.contents(&buf),
                self.kv_pages * pb,
            )
        };
        self.own_bytes += (pages - self.kv_pages) * pb;
        self.kv = buf;
        self.kv_pages = pages;
        Ok(())
    }

    /// `to (tokens, ld_out) (+)= from (tokens, ld_in) @ m^T`.
    #[allow(clippy::too_many_arguments)]
    fn product(
        &mut self,
        m: &MatrixDesc,
        from: Slot,
        ld_in: usize,
        tokens: usize,
        to: Slot,
        ld_out: usize,
        accumulate: bool,
    ) {
        let a = MatvecArgs {
            r#type: weight_code(m.dtype).expect("checked at construction"),
            rows: m.rows as u32,
            cols: m.cols as u32,
            tokens: tokens as u32,
            ld_in: ld_in as u32,
            ld_out: ld_out as u32,
            accumulate: u32::from(accumulate),
            pad: 0,
        };
        let (rows, n) = (m.rows as u32, tokens as u32);
        let (pipe, grid) = if n > MV_TOKENS {
            let groups = [rows.div_ceil(MM_ROWS), n.div_ceil(MM_TOKENS), 1];
            (
                &self.p.matmul,
                Grid {
                    groups,
                    threads: [128, 1, 1],
                    shared: 0,
                },
            )
        } else {
            let groups = [rows.div_ceil(MV_ROWS * MV_GROUPS), n.div_ceil(MV_TOKENS), 1];
            let threads = [SIMD_WIDTH * MV_GROUPS, 1, 1];
            (
                &self.p.matvec,
                Grid {
                    groups,
                    threads,
                    shared: 0,
                },
            )
        };
        let (w, base) = &self.weights[m.file];
        let (from, to) = (
            slot(&self.acts, &self.normed, &self.out, from),
            slot(&self.acts, &self.normed, &self.out, to),
        );
        self.gpu.dispatch(
            pipe,
            &[
                Arg::Bytes(a.bytes()),
                Arg::Buffer(w, base + m.offset),
                Arg::Buffer(from, 0),
                Arg::Buffer(to, 0),
            ],
            grid,
        );
    }

    fn row_args(&self, width: usize) -> RowArgs {
        let c = &self.model.config;
        RowArgs {
            tokens: self.n as u32,
            width: width as u32,
            ld: width as u32,
            eps: c.norm_eps,
            heads: (width / c.head_dim) as u32,
            head_dim: c.head_dim as u32,
            style: match c.rope_style {
                RopeStyle::Interleaved => 0,
                RopeStyle::Half => 1,
            },
            gather: 0,
            rotary: c.rotary_dims() as u32,
        }
    }

    fn kv_args(&self, layer: usize) -> KvArgs {
        let c = &self.model.config;
        let mut a = KvArgs {
            tokens: self.n as u32,
            layer: layer as u32,
            kv_heads: c.n_kv_heads as u32,
            head_dim: c.head_dim as u32,
            q_heads: c.n_heads as u32,
            window: c.window(layer).unwrap_or(0) as u32,
            row_bytes: self.layout.row_bytes as u32,
            kv_type: u32::from(self.layout.dtype == KvType::F16),
            page_bytes: self.layout.page_bytes() as u64,
            scale: c.attn_scale(),
            ld_q: c.q_dim() as u32,
            softcap: c.attn_softcap.unwrap_or(0.0),
            ..KvArgs::default()
        };
        self.att.apply(&mut a);
        a
    }

    /// `normed (rows, D) = rmsnorm(X[rows], norm)` for the listed rows.
    fn norm_rows(&mut self, rows: &[u32], norm: &VectorDesc) {
        self.write(&self.rows, rows);
        let dim = self.model.config.dim;
        let mut a = self.row_args(dim);
        a.tokens = rows.len() as u32;
        a.gather = 1;
        self.gpu.dispatch(
            &self.p.rmsnorm,
            &[
                Arg::Bytes(a.bytes()),
                Arg::Buffer(&self.acts[X], 0),
                Arg::Buffer(&self.vectors, 4 * norm.offset),
                Arg::Buffer(&self.normed, 0),
                Arg::Buffer(&self.rows, 0),
            ],
            Grid::linear(rows.len() as u32, SIMD_WIDTH),
        );
    }

    /// Submits the pass and waits; a fault is a bug of the backend, so it
    /// panics with the GPU's message (the bindings turn it into an error).
    fn run(&mut self) {
        if let Err(e) = self.gpu.run() {
            panic!("the GPU pass failed: {e}");
        }
    }

    /// Copies `len` floats from the start of `buf` into `out`.
    fn read(&self, buf: &G::Buffer, out: &mut [f32]) {
        // SAFETY: `buf` holds at least `out.len()` floats (planned by the
        // callers), and the pass has finished.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.gpu.contents(buf).cast::<f32>(),
                out.as_mut_ptr(),
                out.len(),
            )
        }
    }
}

/// An activation buffer, or one of the classifier's.
#[derive(Clone, Copy)]
enum Slot {
    Act(usize),
    Normed,
    Out,
}

fn slot<'a, B>(acts: &'a [B; 8], normed: &'a B, out: &'a B, s: Slot) -> &'a B {
    match s {
        Slot::Act(i) => &acts[i],
        Slot::Normed => normed,
        Slot::Out => out,
    }
}

#[derive(Clone, Copy)]
enum Grown {
    Pages,
    Out,
    Partial,
}

impl<G: Gpu + Send> EngineDevice for GpuDevice<G>
where
    G::Buffer: Send,
    G::Pipeline: Send,
{
    fn name(&self) -> String {
        self.gpu.name()
    }

    fn layout(&self) -> PageLayout {
        self.layout
    }

    fn buffer_bytes(&self) -> usize {
        self.own_bytes
    }

    fn kv_bytes(&self) -> usize {
        GpuDevice::kv_bytes(self)
    }

    fn n_threads(&self) -> usize {
        1
    }

    fn isa(&self) -> &'static str {
        "metal"
    }
}

impl<G: Gpu> Device for GpuDevice<G> {
    fn begin(&mut self, plan: &Plan) {
        let n = plan.len();
        let c = &self.model.config;
        plan.check(self.max_batch, self.max_len, c.vocab_size);
        let half = c.rotary_dims() / 2;
        let mut info = std::mem::take(&mut self.info_host);
        info.clear();
        for entry in &plan.entries {
            for t in 0..entry.tokens.len() {
                let (row, pos) = (entry.tokens.start + t, entry.start + t);
                info.push(TokenInfo {
                    pos: pos as u32,
                    pages: entry.pages.start as u32,
                });
                let r = row * half..(row + 1) * half;
                let (cos, sin) = (&mut self.cos_host[r.clone()], &mut self.sin_host[r]);
                rotary_angles(&self.inv_freq, c.rope_magnitude(), pos, cos, sin);
            }
        }
        if let Some(id) = plan.pages.iter().copied().max()
            && let Err(e) = self.ensure_page(id as usize)
        {
            panic!("the GPU could not grow its KV cache: {e}");
        }
        if let Err(e) = self.grow(Grown::Pages, plan.pages.len()) {
            panic!("the GPU could not grow its page list: {e}");
        }
        let c = &self.model.config;
        let runs = plan
            .entries
            .iter()
            .map(|e| (e.tokens.start, e.tokens.len(), e.start));
        self.att.plan(runs, c.n_heads, c.n_kv_heads, c.head_dim, 0);
        if let Err(e) = self.grow(Grown::Partial, self.att.partial_floats) {
            panic!("the GPU could not grow its attention scratch: {e}");
        }
        self.write(&self.blocks, &self.att.blocks);
        self.n = n;
        self.write(&self.tokens, &plan.tokens);
        self.write(&self.info, slice_bytes(&info));
        self.write(&self.pages, &plan.pages);
        self.write(&self.cos, &self.cos_host[..n * half]);
        self.write(&self.sin, &self.sin_host[..n * half]);
        if !self.local_inv_freq.is_empty() {
            // (The host scratch is free again: its angles are on the GPU.)
            for (row, t) in info.iter().enumerate() {
                let r = row * half..(row + 1) * half;
                let (cos, sin) = (&mut self.cos_host[r.clone()], &mut self.sin_host[r]);
                rotary_angles(&self.local_inv_freq, 1.0, t.pos as usize, cos, sin);
            }
            self.write(&self.local_cos, &self.cos_host[..n * half]);
            self.write(&self.local_sin, &self.sin_host[..n * half]);
        }
        self.info_host = info;
        self.logit_rows.clear();
        self.logit_rows
            .extend(plan.logit_rows.iter().map(|&r| r as u32));
        self.hidden_rows.clear();
        self.hidden_rows
            .extend(plan.hidden_rows.iter().map(|&r| r as u32));
    }

    fn embed(&mut self, table: &MatrixDesc) {
        let a = MatvecArgs {
            r#type: weight_code(table.dtype).expect("checked at construction"),
            rows: table.rows as u32,
            cols: table.cols as u32,
            tokens: self.n as u32,
            ld_in: 0,
            ld_out: self.model.config.dim as u32,
            accumulate: 0,
            pad: 0,
        };
        let (w, base) = &self.weights[table.file];
        self.gpu.dispatch(
            &self.p.embed,
            &[
                Arg::Bytes(a.bytes()),
                Arg::Buffer(w, base + table.offset),
                Arg::Buffer(&self.tokens, 0),
                Arg::Buffer(&self.acts[X], 0),
            ],
            Grid::linear(self.n as u32, SIMD_WIDTH),
        );
    }

    fn rmsnorm(&mut self, src: Buf, gains: &VectorDesc, dst: Buf) {
        let a = self.row_args(src.width(&self.model.config));
        self.gpu.dispatch(
            &self.p.rmsnorm,
            &[
                Arg::Bytes(a.bytes()),
                Arg::Buffer(&self.acts[index(src)], 0),
                Arg::Buffer(&self.vectors, 4 * gains.offset),
                Arg::Buffer(&self.acts[index(dst)], 0),
                Arg::Buffer(&self.rows, 0),
            ],
            Grid::linear(self.n as u32, SIMD_WIDTH),
        );
    }

    fn add_rmsnorm(&mut self, src: Buf, gains: &VectorDesc, acc: Buf) {
        let a = self.row_args(src.width(&self.model.config));
        assert_eq!(src.width(&self.model.config), acc.width(&self.model.config));
        self.gpu.dispatch(
            &self.p.add_rmsnorm,
            &[
                Arg::Bytes(a.bytes()),
                Arg::Buffer(&self.acts[index(src)], 0),
                Arg::Buffer(&self.vectors, 4 * gains.offset),
                Arg::Buffer(&self.acts[index(acc)], 0),
            ],
            Grid::linear(self.n as u32, SIMD_WIDTH),
        );
    }

    fn matmul(&mut self, input: Buf, products: &[(&MatrixDesc, Buf)]) {
        let wi = input.width(&self.model.config);
        for &(m, out) in products {
            let wo = out.width(&self.model.config);
            self.product(
                m,
                Slot::Act(index(input)),
                wi,
                self.n,
                Slot::Act(index(out)),
                wo,
                false,
            );
        }
    }

    fn matmul_add(&mut self, input: Buf, w: &MatrixDesc, acc: Buf) {
        let c = &self.model.config;
        let (wi, wo) = (input.width(c), acc.width(c));
        self.product(
            w,
            Slot::Act(index(input)),
            wi,
            self.n,
            Slot::Act(index(acc)),
            wo,
            true,
        );
    }

    fn glu(&mut self, act: Activation, input: Buf, gate: &MatrixDesc, up: &MatrixDesc, out: Buf) {
        let c = &self.model.config;
        let (wi, h) = (input.width(c), c.hidden_dim);
        let (i, o) = (Slot::Act(index(input)), index(out));
        self.product(gate, i, wi, self.n, Slot::Act(o), h, false);
        self.product(up, i, wi, self.n, Slot::Act(HB2), h, false);
        let a = self.row_args(h);
        let total = (self.n * h) as u32;
        let kernel = match act {
            Activation::Silu => &self.p.swiglu,
            Activation::GeluTanh => &self.p.geglu,
        };
        self.gpu.dispatch(
            kernel,
            &[
                Arg::Bytes(a.bytes()),
                Arg::Buffer(&self.acts[o], 0),
                Arg::Buffer(&self.acts[HB2], 0),
            ],
            Grid::linear(total.div_ceil(256), 256),
        );
    }

    fn add_bias(&mut self, buf: Buf, bias: &VectorDesc) {
        let a = self.row_args(buf.width(&self.model.config));
        self.gpu.dispatch(
            &self.p.add_bias,
            &[
                Arg::Bytes(a.bytes()),
                Arg::Buffer(&self.acts[index(buf)], 0),
                Arg::Buffer(&self.vectors, 4 * bias.offset),
            ],
            Grid::linear(self.n as u32, SIMD_WIDTH),
        );
    }

    fn scale(&mut self, buf: Buf, factor: f32) {
        let a = self.row_args(buf.width(&self.model.config));
        self.gpu.dispatch(
            &self.p.scale,
            &[
                Arg::Bytes(a.bytes()),
                Arg::Buffer(&self.acts[index(buf)], 0),
                Arg::Bytes(&factor.to_le_bytes()),
            ],
            Grid::linear(self.n as u32, SIMD_WIDTH),
        );
    }

    fn norm_heads(&mut self, buf: Buf, gains: &VectorDesc) {
        // Heads as wide as the gains: a head, or a whole row (OLMo 2).
        let mut a = self.row_args(buf.width(&self.model.config));
        a.head_dim = gains.len as u32;
        a.heads = a.width / a.head_dim;
        self.gpu.dispatch(
            &self.p.norm_heads,
            &[
                Arg::Bytes(a.bytes()),
                Arg::Buffer(&self.acts[index(buf)], 0),
                Arg::Buffer(&self.vectors, 4 * gains.offset),
            ],
            Grid {
                groups: [a.heads, self.n as u32, 1],
                threads: [SIMD_WIDTH, 1, 1],
                shared: 0,
            },
        );
    }

    fn rope(&mut self, buf: Buf, local: bool) {
        assert!(matches!(buf, Buf::Q | Buf::K), "rope turns Q or K");
        assert!(!local || !self.local_inv_freq.is_empty());
        let a = self.row_args(buf.width(&self.model.config));
        let (cos, sin) = if local {
            (&self.local_cos, &self.local_sin)
        } else {
            (&self.cos, &self.sin)
        };
        self.gpu.dispatch(
            &self.p.rope,
            &[
                Arg::Bytes(a.bytes()),
                Arg::Buffer(&self.acts[index(buf)], 0),
                Arg::Buffer(cos, 0),
                Arg::Buffer(sin, 0),
            ],
            Grid::linear(self.n as u32, SIMD_WIDTH),
        );
    }

    fn store_kv(&mut self, layer: usize, k: Buf, v: Buf) {
        assert!(k == Buf::K && v == Buf::V);
        let a = self.kv_args(layer);
        self.gpu.dispatch(
            &self.p.store_kv,
            &[
                Arg::Bytes(a.bytes()),
                Arg::Buffer(&self.acts[index(Buf::K)], 0),
                Arg::Buffer(&self.acts[index(Buf::V)], 0),
                Arg::Buffer(&self.kv, 0),
                Arg::Buffer(&self.info, 0),
                Arg::Buffer(&self.pages, 0),
            ],
            Grid {
                groups: [self.n as u32, a.kv_heads, 1],
                threads: [SIMD_WIDTH, 1, 1],
                shared: 0,
            },
        );
    }

    fn attention(&mut self, layer: usize, q: Buf, out: Buf) {
        assert!(q == Buf::Q && out == Buf::Att);
        let a = self.kv_args(layer);
        self.gpu.dispatch(
            &self.p.attention,
            &[
                Arg::Bytes(a.bytes()),
                Arg::Buffer(&self.acts[index(Buf::Q)], 0),
                Arg::Buffer(&self.kv, 0),
                Arg::Buffer(&self.acts[index(Buf::Att)], 0),
                Arg::Buffer(&self.info, 0),
                Arg::Buffer(&self.pages, 0),
                Arg::Buffer(&self.blocks, 0),
                Arg::Buffer(&self.partial, 0),
            ],
            self.att.grid,
        );
        if a.splits > 1 {
            self.gpu.dispatch(
                &self.p.attention_merge,
                &[
                    Arg::Bytes(a.bytes()),
                    Arg::Buffer(&self.partial, 0),
                    Arg::Buffer(&self.acts[index(Buf::Att)], 0),
                ],
                self.att.merge,
            );
        }
    }

    fn logits(&mut self, norm: &VectorDesc, classifier: &MatrixDesc, out: &mut [f32]) {
        let rows = self.logit_rows.len();
        let (dim, vocab) = (self.model.config.dim, self.model.config.vocab_size);
        assert_eq!(out.len(), rows * vocab);
        if rows > 0 {
            if let Err(e) = self.grow(Grown::Out, rows * vocab) {
                panic!("the GPU could not grow its logits buffer: {e}");
            }
            let list = std::mem::take(&mut self.logit_rows);
            self.norm_rows(&list, norm);
            self.logit_rows = list;
            self.product(classifier, Slot::Normed, dim, rows, Slot::Out, vocab, false);
        }
        // Every pass ends here: what was recorded runs now, cache writes
        // included, even when no logits are wanted.
        self.run();
        if rows > 0 {
            self.read(&self.out, out);
        }
    }

    fn hidden(&mut self, norm: &VectorDesc, out: &mut [f32]) {
        let dim = self.model.config.dim;
        let rows = self.hidden_rows.len();
        assert_eq!(out.len(), rows * dim);
        let list = std::mem::take(&mut self.hidden_rows);
        self.norm_rows(&list, norm);
        self.hidden_rows = list;
        self.run();
        self.read(&self.normed, out);
    }

    fn copy_rows(&mut self, src: u32, dst: u32, rows: usize) {
        assert!(rows <= PAGE && src != dst);
        if let Err(e) = self.ensure_page(src.max(dst) as usize) {
            panic!("the GPU could not grow its KV cache: {e}");
        }
        let l = self.layout;
        let pb = l.page_bytes();
        let base = self.gpu.contents(&self.kv);
        for layer in 0..l.n_layers {
            for values in [false, true] {
                for h in 0..l.n_kv_heads {
                    let at = l.offset(layer, values, h);
                    // SAFETY: both pages are inside the cache buffer (just
                    // ensured), distinct, and no work runs.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            base.add(src as usize * pb + at),
                            base.add(dst as usize * pb + at),
                            rows * l.row_bytes,
                        )
                    };
                }
            }
        }
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }
}
