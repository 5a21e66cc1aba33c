//! A session: one model's running state (KV cache, scratch, threads).

use crate::error::{Error, Result};
use crate::forward::{self, Engine, Logits, Scratch};
use crate::kernels::Kernels;
use crate::kv_cache::KvCache;
use crate::model::Model;
use crate::pool::ThreadPool;
use std::sync::Arc;

/// How to set a session up.
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// Threads to compute with (default: the machine's available parallelism).
    pub n_threads: Option<usize>,
    /// The most positions the KV cache holds (default, and maximum: the
    /// model's `seq_len`).
    pub context_length: Option<usize>,
    /// The most prompt tokens processed in one batch (default 128).
    pub max_batch: Option<usize>,
}

/// The state of running one model: which tokens are in the KV cache and the
/// logits that followed the last of them.
///
/// The cache keeps its tokens between calls: [`Session::prepare`] keeps the
/// longest cached prefix of a new prompt, so a chat turn or a repeated
/// prompt only computes what is new.
#[derive(Debug)]
pub struct Session {
    model: Arc<Model>,
    kernels: &'static Kernels,
    pool: ThreadPool,
    cache: KvCache,
    scratch: Scratch,
    /// The tokens whose keys and values are in the cache.
    tokens: Vec<u32>,
    /// `(vocab,)` logits after the last token fed (valid if `tokens` is not empty).
    logits: Vec<f32>,
}

impl Session {
    pub fn new(model: Arc<Model>, options: &SessionOptions) -> Result<Self> {
        let c = &model.config;
        let context = match options.context_length {
            None => c.seq_len,
            Some(n) if n >= 1 && n <= c.seq_len => n,
            Some(n) => {
                return Err(Error::InvalidArgument(format!(
                    "context_length must be between 1 and the model's seq_len {}, got {n}",
                    c.seq_len
                )));
            }
        };
        let n_threads = match options.n_threads {
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(n) if (1..=1024).contains(&n) => n,
            Some(n) => {
                return Err(Error::InvalidArgument(format!(
                    "n_threads must be between 1 and 1024, got {n}"
                )));
            }
        };
        let max_batch = options.max_batch.unwrap_or(128).clamp(1, 4096);
        let scratch = Scratch::new(c, &model.weights, max_batch, context, n_threads);
        Ok(Session {
            kernels: Kernels::best(),
            pool: ThreadPool::new(n_threads),
            cache: KvCache::new(c.n_layers, c.kv_dim(), context),
            scratch,
            tokens: Vec::with_capacity(context),
            logits: vec![0.0; c.vocab_size],
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
        self.cache.max_len()
    }

    /// Threads used per forward pass.
    pub fn n_threads(&self) -> usize {
        self.pool.n_threads()
    }

    /// The kernel tier in use.
    pub fn kernels(&self) -> &'static Kernels {
        self.kernels
    }

    /// The most tokens one call to [`Session::feed`] takes.
    pub fn max_batch(&self) -> usize {
        self.scratch.max_batch()
    }

    /// Bytes of the working buffers: the forward pass's (sized for
    /// [`Session::max_batch`] tokens) and the logits.
    pub fn buffer_bytes(&self) -> usize {
        self.scratch.bytes() + self.logits.len() * 4
    }

    /// Bytes of KV cache allocated now.
    pub fn kv_cache_bytes(&self) -> usize {
        self.cache.allocated_bytes()
    }

    /// The logits that followed the last token fed, `(vocab_size,)`.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Empties the KV cache.
    pub fn reset(&mut self) {
        self.cache.truncate(0);
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
        self.cache.truncate(keep);
        self.tokens.truncate(keep);
        Ok(keep)
    }

    /// Runs `tokens` (at most [`Session::max_batch`]) after the cached ones
    /// and keeps the last one's logits.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<()> {
        self.forward(tokens, Want::Last)
    }

    /// Like [`Session::feed`], but only fills the cache (no logits).
    pub fn feed_silently(&mut self, tokens: &[u32]) -> Result<()> {
        self.forward(tokens, Want::None)
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
        self.forward(tokens, Want::All(out))
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

    fn forward(&mut self, tokens: &[u32], want: Want<'_>) -> Result<()> {
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
        let engine = Engine {
            config: &self.model.config,
            weights: &self.model.weights,
            kernels: self.kernels,
            pool: &self.pool,
        };
        let vocab = self.model.config.vocab_size;
        let (cache, scratch) = (&mut self.cache, &mut self.scratch);
        match want {
            Want::None => forward::forward(engine, cache, scratch, tokens, Logits::None),
            Want::Last => forward::forward(
                engine,
                cache,
                scratch,
                tokens,
                Logits::Last(&mut self.logits),
            ),
            Want::All(out) => {
                forward::forward(engine, cache, scratch, tokens, Logits::All(out));
                self.logits.copy_from_slice(&out[out.len() - vocab..]);
            }
        }
        self.tokens.extend_from_slice(tokens);
        Ok(())
    }
}

/// Which logits a forward pass keeps.
enum Want<'a> {
    None,
    Last,
    All(&'a mut [f32]),
}
