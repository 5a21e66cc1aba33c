//! A session: one sequence on its own device, driven step by step by the
//! caller (the Rust API's simplest form; the scheduler in `batch` runs many
//! sequences on one device).

use crate::cpu::CpuDevice;
use crate::error::{Error, Result};
use crate::forward::EngineDevice;
use crate::forward::{self, Plan, Want};
use crate::kv_cache::{KvType, PAGE, PageAllocator, SeqKv};
use crate::model::Model;
use std::sync::Arc;

/// How to set a session (or a scheduler) up.
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// Threads to compute with (default: `TINYLLM_NUM_THREADS` if set, else
    /// the physical cores this process may use).
    pub n_threads: Option<usize>,
    /// The most positions a sequence holds (default, and maximum: the
    /// model's `seq_len`).
    pub context_length: Option<usize>,
    /// The most tokens processed in one forward pass (default 128).
    pub max_batch: Option<usize>,
    /// How the KV cache stores keys and values (default f16).
    pub kv_cache: KvType,
    /// What computes (default: Metal on a Mac whose GPU runs the model,
    /// else the CPU).
    pub device: DeviceKind,
}

/// What runs the forward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceKind {
    /// Metal on a Mac with a GPU that runs the model (see
    /// [`crate::gpu::device::supports`]), else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The GPU of a Mac, through Metal.
    Metal,
}

impl DeviceKind {
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "auto" => Ok(DeviceKind::Auto),
            "cpu" => Ok(DeviceKind::Cpu),
            "metal" => Ok(DeviceKind::Metal),
            _ => Err(Error::InvalidArgument(format!(
                "device must be one of \"auto\", \"cpu\", \"metal\", got {name:?}"
            ))),
        }
    }

    /// What runs `model` with a cache of `kv`: `Auto` becomes `Metal` on a
    /// Mac whose GPU runs this model, else `Cpu`.
    pub fn resolve(self, model: &Model, kv: KvType) -> DeviceKind {
        match self {
            DeviceKind::Auto
                if DeviceKind::metal_available()
                    && crate::gpu::device::supports(model, kv).is_ok() =>
            {
                DeviceKind::Metal
            }
            DeviceKind::Auto => DeviceKind::Cpu,
            d => d,
        }
    }

    /// Whether this choice may run on Metal here (before the model is
    /// known: `Auto` on a Mac with a GPU).
    pub fn uses_metal(self) -> bool {
        match self {
            DeviceKind::Cpu => false,
            DeviceKind::Metal => true,
            DeviceKind::Auto => DeviceKind::metal_available(),
        }
    }

    /// Whether this machine has a Metal GPU.
    pub fn metal_available() -> bool {
        #[cfg(target_os = "macos")]
        {
            crate::gpu::metal::available()
        }
        #[cfg(not(target_os = "macos"))]
        {
            false
        }
    }
}

impl SessionOptions {
    /// The device these options choose, for `model`: batches of up to
    /// `max_batch` tokens, sequences of up to `context` positions.
    pub fn open_device(
        &self,
        model: &Arc<Model>,
        max_batch: usize,
        context: usize,
    ) -> Result<Box<dyn EngineDevice>> {
        if self.device.resolve(model, self.kv_cache) == DeviceKind::Cpu {
            let threads = self.threads()?;
            let dev = CpuDevice::new(model.clone(), threads, max_batch, context, self.kv_cache)?;
            return Ok(Box::new(dev));
        }
        #[cfg(target_os = "macos")]
        {
            let gpu = crate::gpu::metal::Metal::new()?;
            let dev =
                crate::gpu::GpuDevice::new(model.clone(), gpu, max_batch, context, self.kv_cache)?;
            Ok(Box::new(dev))
        }
        #[cfg(not(target_os = "macos"))]
        {
            Err(Error::InvalidArgument(
                "device=\"metal\" needs a Mac with a Metal GPU; this machine has none (use \"cpu\" \
                 or \"auto\")"
                    .into(),
            ))
        }
    }
}

impl SessionOptions {
    /// The context length, checked against the model's.
    pub fn context(&self, model: &Model) -> Result<usize> {
        let seq_len = model.config.seq_len;
        match self.context_length {
            None => Ok(seq_len),
            Some(n) if n >= 1 && n <= seq_len => Ok(n),
            Some(n) => Err(Error::InvalidArgument(format!(
                "context_length must be between 1 and the model's seq_len {seq_len}, got {n}"
            ))),
        }
    }

    /// The thread count, checked.
    pub fn threads(&self) -> Result<usize> {
        match self.n_threads {
            None => match std::env::var("TINYLLM_NUM_THREADS") {
                Err(_) => Ok(crate::machine::physical_cores()),
                Ok(v) => match v.trim().parse::<usize>() {
                    Ok(n) if (1..=1024).contains(&n) => Ok(n),
                    _ => Err(Error::InvalidArgument(format!(
                        "TINYLLM_NUM_THREADS must be a number of threads between 1 and 1024, \
                         got {v:?}"
                    ))),
                },
            },
            Some(n) if (1..=1024).contains(&n) => Ok(n),
            Some(n) => Err(Error::InvalidArgument(format!(
                "n_threads must be between 1 and 1024, got {n}"
            ))),
        }
    }

    /// The batch size, checked.
    pub fn batch(&self) -> Result<usize> {
        match self.max_batch {
            None => Ok(128),
            Some(n) if (1..=4096).contains(&n) => Ok(n),
            Some(n) => Err(Error::InvalidArgument(format!(
                "max_batch must be between 1 and 4096, got {n}"
            ))),
        }
    }
}

/// The state of running one sequence: which tokens are in its KV cache and
/// the logits that followed the last of them.
///
/// The cache keeps its tokens between calls: [`Session::prepare`] keeps the
/// longest cached prefix of a new prompt, so a chat turn or a repeated
/// prompt only computes what is new.
#[derive(Debug)]
pub struct Session {
    model: Arc<Model>,
    dev: Box<dyn EngineDevice>,
    pages: PageAllocator,
    kv: SeqKv,
    context: usize,
    /// The tokens whose keys and values are in the cache.
    tokens: Vec<u32>,
    /// `(vocab,)` logits after the last token fed (valid if `tokens` is not empty).
    logits: Vec<f32>,
    plan: Plan,
}

impl Session {
    pub fn new(model: Arc<Model>, options: &SessionOptions) -> Result<Self> {
        let context = options.context(&model)?;
        let dev = options.open_device(&model, options.batch()?, context)?;
        Self::with_device(model, options, dev)
    }

    /// A session on `dev`, a device made for `model` with `options`' batch
    /// size and context (a GPU the options cannot name, such as the
    /// emulator in tests).
    pub fn with_device(
        model: Arc<Model>,
        options: &SessionOptions,
        dev: Box<dyn EngineDevice>,
    ) -> Result<Self> {
        let context = options.context(&model)?;
        Ok(Session {
            dev,
            pages: PageAllocator::new(context.div_ceil(PAGE)),
            kv: SeqKv::default(),
            context,
            tokens: Vec::with_capacity(context),
            logits: vec![0.0; model.config.vocab_size],
            plan: Plan::default(),
            model,
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The tokens in the KV cache.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The most positions the session holds.
    pub fn context_length(&self) -> usize {
        self.context
    }

    /// Threads used per forward pass.
    pub fn n_threads(&self) -> usize {
        self.dev.n_threads()
    }

    /// The CPU kernels' instruction set in use, or `"metal"`.
    pub fn isa(&self) -> &'static str {
        self.dev.isa()
    }

    /// What computes: `"cpu"` or the GPU's name.
    pub fn device_name(&self) -> String {
        self.dev.name()
    }

    /// The most tokens one call to [`Session::feed`] takes.
    pub fn max_batch(&self) -> usize {
        self.dev.max_batch()
    }

    /// Bytes of the working buffers: the forward pass's (sized for
    /// [`Session::max_batch`] tokens) and the logits.
    pub fn buffer_bytes(&self) -> usize {
        self.dev.buffer_bytes() + self.logits.len() * 4
    }

    /// Bytes of KV cache allocated now.
    pub fn kv_cache_bytes(&self) -> usize {
        self.dev.kv_bytes()
    }

    /// The logits that followed the last token fed, `(vocab_size,)`.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Empties the KV cache.
    pub fn reset(&mut self) {
        self.kv.clear(&mut self.pages);
        self.tokens.clear();
    }

    /// Checks that `tokens` are in the vocabulary and, after the first
    /// `keep` cached ones, fit the context.
    pub fn check(&self, tokens: &[u32], keep: usize) -> Result<()> {
        let vocab = self.model.config.vocab_size;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is out of range for a vocabulary of {vocab}"
            )));
        }
        if keep + tokens.len() > self.context_length() {
            return Err(Error::ContextLength {
                tokens: keep + tokens.len(),
                context: self.context_length(),
            });
        }
        Ok(())
    }

    /// Keeps the longest prefix of the cache that `prompt` starts with (but
    /// never all of `prompt`: its last token must be fed to get logits) and
    /// returns how many tokens were kept.
    pub fn prepare(&mut self, prompt: &[u32]) -> Result<usize> {
        let common = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        let keep = common.min(prompt.len().saturating_sub(1));
        self.check(&prompt[keep..], keep)?;
        self.kv.truncate(&mut self.pages, keep);
        self.tokens.truncate(keep);
        Ok(keep)
    }

    /// Runs `tokens` (at most [`Session::max_batch`]) after the cached ones
    /// and keeps the last one's logits.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<()> {
        self.forward(tokens, Want::Last, None)
    }

    /// Like [`Session::feed`], but only fills the cache (no logits).
    pub fn feed_silently(&mut self, tokens: &[u32]) -> Result<()> {
        self.forward(tokens, Want::None, None)
    }

    /// Like [`Session::feed`], and also writes every position's logits into
    /// `out`, `(tokens.len(), vocab_size)`.
    pub fn feed_all_logits(&mut self, tokens: &[u32], out: &mut [f32]) -> Result<()> {
        let vocab = self.model.config.vocab_size;
        if out.len() != tokens.len() * vocab {
            return Err(Error::InvalidArgument(format!(
                "the output holds {} floats, {} tokens need {}",
                out.len(),
                tokens.len(),
                tokens.len() * vocab
            )));
        }
        self.forward(tokens, Want::All, Some(out))
    }

    /// Empties the cache, runs all of `tokens` and writes every position's
    /// logits into `out`, `(tokens.len(), vocab_size)`.
    pub fn logits_of(&mut self, tokens: &[u32], out: &mut [f32]) -> Result<()> {
        let vocab = self.model.config.vocab_size;
        self.reset();
        self.check(tokens, 0)?;
        let batch = self.max_batch();
        for (chunk, rows) in tokens.chunks(batch).zip(out.chunks_mut(batch * vocab)) {
            self.feed_all_logits(chunk, rows)?;
        }
        Ok(())
    }

    fn forward(&mut self, tokens: &[u32], want: Want, all: Option<&mut [f32]>) -> Result<()> {
        if tokens.is_empty() {
            return Ok(());
        }
        if tokens.len() > self.max_batch() {
            return Err(Error::InvalidArgument(format!(
                "a batch holds at most {} tokens, got {}",
                self.max_batch(),
                tokens.len()
            )));
        }
        self.check(tokens, self.tokens.len())?;
        let ok = self.kv.reserve(&mut self.pages, tokens.len());
        assert!(ok, "a session's pages cover its whole context");
        self.plan.clear();
        self.plan.push(&self.kv.pages, self.kv.len, tokens, want);
        let (c, w) = (&self.model.config, &self.model.weights);
        match all {
            Some(out) => {
                forward::forward(c, w, &mut *self.dev, &self.plan, out, &mut []);
                let vocab = c.vocab_size;
                self.logits.copy_from_slice(&out[out.len() - vocab..]);
            }
            None if want == Want::Last => {
                forward::forward(c, w, &mut *self.dev, &self.plan, &mut self.logits, &mut [])
            }
            None => forward::forward(c, w, &mut *self.dev, &self.plan, &mut [], &mut []),
        }
        self.kv.len += tokens.len();
        self.tokens.extend_from_slice(tokens);
        Ok(())
    }
}
