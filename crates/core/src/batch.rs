//! Many sequences on one model: a scheduler that decodes them together.
//!
//! Callers hand in [`Request`]s (a generation, or the logits of a token
//! sequence) and get a [`Ticket`] through which the results arrive. The
//! [`Batcher`] admits up to `max_sequences` of them, and each step builds one
//! forward pass from all of them: the one new token of every decoding
//! sequence first, then chunks of the prompts of new ones with what is left
//! of the batch (so a long prompt never freezes the others). It samples,
//! streams text into the tickets, retires what finished and drops what was
//! cancelled, without disturbing the rest.
//!
//! The KV cache is paged (`kv_cache`): a new sequence takes over the longest
//! prefix of its prompt that an active or recently finished sequence
//! computed (sharing its full pages, copying the rows of a partial one), so
//! a shared system prompt is computed once and a chat turn only computes
//! its new tokens. Finished sequences' pages stay as a cache of prefixes,
//! least recently used first out, while the memory is not needed.
//!
//! [`Engine`] runs a batcher on a thread of its own; any number of threads
//! submit to it at once.

use crate::constrain::Constraint;
use crate::error::{Error, Result};
use crate::forward::EngineDevice;
use crate::forward::{self, Plan, Want};
use crate::generate::{FinishReason, GenerateConfig, Generation, Stats, Step, TokenLogprob};
use crate::kv_cache::{KvType, PAGE, PageAllocator, SeqKv};
use crate::model::Model;
use crate::session::SessionOptions;
use crate::tokenizer::Detokenize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The most sequences decoded together by default (fewer if the memory for
/// their full contexts is not there).
pub const DEFAULT_MAX_SEQUENCES: usize = 16;

/// What to compute.
#[derive(Debug)]
pub enum Job {
    /// Continue `prompt`; text streams into the ticket.
    Generate {
        prompt: Vec<u32>,
        config: GenerateConfig,
        detok: Arc<dyn Detokenize>,
        /// The grammar the text must follow (compiled by the caller).
        constraint: Option<Box<Constraint>>,
    },
    /// The logits after every position of `ids`, `(len, vocab)`, from an
    /// empty cache.
    Logits { ids: Vec<u32> },
    /// The final hidden states (after the last norm) at every position of
    /// `ids`, `(len, dim)`, from an empty cache: what embeddings pool.
    Hidden { ids: Vec<u32> },
}

/// A job with its ticket.
#[derive(Debug)]
pub struct Request {
    pub job: Job,
    pub ticket: Arc<Ticket>,
    /// Keeps the finished sequence's cache for the next request with the
    /// same pin (a chat session's next turn), until [`Batcher::unpin`].
    pub pin: Option<u64>,
}

impl Request {
    pub fn new(job: Job) -> Self {
        Request {
            job,
            ticket: Arc::new(Ticket::default()),
            pin: None,
        }
    }
}

/// Where a request's results arrive, shared by the scheduler and the
/// caller.
#[derive(Debug, Default)]
pub struct Ticket {
    state: Mutex<TicketState>,
    ready: Condvar,
    cancelled: AtomicBool,
}

/// What a request has produced so far.
#[derive(Debug, Default)]
pub struct TicketState {
    /// Text not yet taken by the caller.
    pub pieces: VecDeque<String>,
    /// Set once nothing more will arrive.
    pub done: bool,
    /// Why a generation ended (None while running, or if it failed or was
    /// cancelled).
    pub finish_reason: Option<FinishReason>,
    pub error: Option<Error>,
    /// The generated token ids.
    pub generated: Vec<u32>,
    /// One record per generated token, if the request asked for them, not
    /// yet taken by the caller.
    pub logprobs: VecDeque<TokenLogprob>,
    pub stats: Stats,
    /// A logits job's result, `(len, vocab)`, or a hidden job's, `(len, dim)`.
    pub logits: Vec<f32>,
}

impl Ticket {
    /// Asks the scheduler to drop the request (at its next step).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// The state, locked.
    pub fn lock(&self) -> MutexGuard<'_, TicketState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to `timeout` for text or the end; returns the state.
    pub fn wait(&self, timeout: Duration) -> MutexGuard<'_, TicketState> {
        let guard = self.lock();
        if !guard.pieces.is_empty() || guard.done {
            return guard;
        }
        self.ready
            .wait_timeout(guard, timeout)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    fn update(&self, f: impl FnOnce(&mut TicketState)) {
        f(&mut self.lock());
        self.ready.notify_all();
    }

    fn fail(&self, e: Error) {
        self.update(|s| {
            s.error = Some(e);
            s.done = true;
        });
    }
}

/// How a batcher is set up: a session's options and how many sequences
/// run at once.
#[derive(Clone, Debug, Default)]
pub struct BatchOptions {
    pub session: SessionOptions,
    /// The most sequences decoded together (default: up to
    /// [`DEFAULT_MAX_SEQUENCES`], as many as the memory holds at full context).
    pub max_sequences: Option<usize>,
}

/// One running sequence.
#[derive(Debug)]
struct Seq {
    ticket: Arc<Ticket>,
    pin: Option<u64>,
    kv: SeqKv,
    /// The tokens whose keys and values are in `kv`.
    tokens: Vec<u32>,
    /// Tokens still to feed: the rest of the prompt, or the token just
    /// sampled.
    pending: Vec<u32>,
    /// Tokens of `pending` in the current pass.
    chunk: usize,
    /// The first row of the pass's logits (or hidden states) that is this
    /// sequence's.
    logit_row: usize,
    work: Work,
    started: Instant,
    prompt_done: Option<Instant>,
}

#[derive(Debug)]
enum Work {
    Generate {
        generation: Box<Generation>,
        detok: Arc<dyn Detokenize>,
    },
    Logits,
    Hidden,
}

/// A finished sequence's cache, kept for the prefixes of later requests.
#[derive(Debug)]
struct Cached {
    kv: SeqKv,
    tokens: Vec<u32>,
    pin: Option<u64>,
}

/// The scheduler: sequences, their caches and the device, stepped by the
/// caller (see [`Engine`] for one on its own thread).
#[derive(Debug)]
pub struct Batcher {
    model: Arc<Model>,
    dev: Box<dyn EngineDevice>,
    pages: PageAllocator,
    context: usize,
    max_sequences: usize,
    waiting: VecDeque<Request>,
    active: Vec<Seq>,
    /// Least recently used first.
    cached: Vec<Cached>,
    plan: Plan,
    /// `(rows, V)` the logits of the last pass
    out: Vec<f32>,
    /// `(rows, D)` the hidden states the last pass was asked for
    hidden: Vec<f32>,
}

impl Batcher {
    pub fn new(model: Arc<Model>, options: &BatchOptions) -> Result<Self> {
        let s = &options.session;
        let context = s.context(&model)?;
        let max_batch = s.batch()?;
        let dev = s.open_device(&model, max_batch, context)?;
        Self::with_device(model, options, dev)
    }

    /// A scheduler on `dev`, a device made for `model` with `options`'
    /// batch size and context (a GPU the options cannot name, such as the
    /// emulator in tests).
    pub fn with_device(
        model: Arc<Model>,
        options: &BatchOptions,
        dev: Box<dyn EngineDevice>,
    ) -> Result<Self> {
        let s = &options.session;
        let context = s.context(&model)?;
        let max_batch = dev.max_batch();
        let per_sequence = context.div_ceil(PAGE) * dev.layout().page_bytes();
        let max_sequences = match options.max_sequences {
            None => default_max_sequences(per_sequence).min(max_batch),
            Some(n) if (1..=4096).contains(&n) => n,
            Some(n) => {
                return Err(Error::InvalidArgument(format!(
                    "max_sequences must be between 1 and 4096, got {n}"
                )));
            }
        };
        if max_sequences > max_batch {
            return Err(Error::InvalidArgument(format!(
                "max_sequences ({max_sequences}) cannot exceed max_batch ({max_batch}): every \
                 decoding sequence takes a row of each batch"
            )));
        }
        Ok(Batcher {
            pages: PageAllocator::new(max_sequences * context.div_ceil(PAGE)),
            context,
            max_sequences,
            waiting: VecDeque::new(),
            active: Vec::new(),
            cached: Vec::new(),
            plan: Plan::default(),
            out: vec![0.0; max_sequences * model.config.vocab_size],
            hidden: Vec::new(),
            dev,
            model,
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn device(&self) -> &dyn EngineDevice {
        &*self.dev
    }

    pub fn context_length(&self) -> usize {
        self.context
    }

    pub fn max_sequences(&self) -> usize {
        self.max_sequences
    }

    /// Sequences running now.
    pub fn active(&self) -> usize {
        self.active.len()
    }

    /// Bytes of KV cache pages in use (by running sequences and the cache of
    /// finished ones' prefixes).
    pub fn kv_bytes_in_use(&self) -> usize {
        self.pages.in_use() * self.dev.layout().page_bytes()
    }

    /// Whether nothing is running or waiting.
    pub fn is_idle(&self) -> bool {
        self.active.is_empty() && self.waiting.is_empty()
    }

    /// Queues a request; it starts at a step when a sequence is free.
    pub fn submit(&mut self, r: Request) {
        self.waiting.push_back(r);
    }

    /// Forgets the caches of finished sequences (pinned ones too).
    pub fn clear_cache(&mut self) {
        for mut c in self.cached.drain(..) {
            c.kv.clear(&mut self.pages);
        }
    }

    /// Lets the cache kept for `pin` go.
    pub fn unpin(&mut self, pin: u64) {
        if let Some(i) = self.cached.iter().position(|c| c.pin == Some(pin)) {
            let mut c = self.cached.remove(i);
            c.kv.clear(&mut self.pages);
        }
    }

    /// One forward pass over every running sequence (admitting waiting
    /// ones first). Returns whether there was anything to do.
    pub fn step(&mut self) -> bool {
        self.drop_cancelled();
        self.admit();
        if self.active.is_empty() {
            return false;
        }
        self.plan_pass();
        if self.plan.is_empty() {
            return true;
        }
        let rows = self.plan.logit_rows.len();
        let vocab = self.model.config.vocab_size;
        if self.out.len() < rows * vocab {
            self.out.resize(rows * vocab, 0.0);
        }
        let hidden = self.plan.hidden_rows.len() * self.model.config.dim;
        if self.hidden.len() < hidden {
            self.hidden.resize(hidden, 0.0);
        }
        let (c, w) = (&self.model.config, &self.model.weights);
        forward::forward(
            c,
            w,
            &mut *self.dev,
            &self.plan,
            &mut self.out[..rows * vocab],
            &mut self.hidden[..hidden],
        );
        self.after_pass();
        true
    }

    /// Steps until nothing is left to do.
    pub fn run(&mut self) {
        while self.step() {}
    }

    fn drop_cancelled(&mut self) {
        self.waiting.retain(|r| {
            let gone = r.ticket.is_cancelled();
            if gone {
                r.ticket.update(|s| s.done = true);
            }
            !gone
        });
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].ticket.is_cancelled() {
                let seq = self.active.swap_remove(i);
                seq.ticket.update(|s| s.done = true);
                self.retire(seq);
            } else {
                i += 1;
            }
        }
    }

    /// Starts waiting requests while there is room.
    fn admit(&mut self) {
        while self.active.len() < self.max_sequences {
            let Some(r) = self.waiting.pop_front() else {
                return;
            };
            let ticket = r.ticket.clone();
            match self.start(r) {
                // The logits of no tokens: nothing to compute.
                Ok(seq) if seq.pending.is_empty() => ticket.update(|t| t.done = true),
                Ok(seq) => self.active.push(seq),
                Err(e) => ticket.fail(e),
            }
        }
    }

    /// Checks a request and makes it a sequence, taking over the longest
    /// cached prefix of its prompt.
    fn start(&mut self, r: Request) -> Result<Seq> {
        let vocab = self.model.config.vocab_size;
        let mut hidden = false;
        let (ids, work) = match r.job {
            Job::Generate {
                prompt,
                config,
                detok,
                constraint,
            } => {
                Generation::check(&prompt, vocab, &config)?;
                (prompt, Some((config, detok, constraint)))
            }
            Job::Logits { ids } => (check_ids(ids, vocab)?, None),
            Job::Hidden { ids } => {
                hidden = true;
                (check_ids(ids, vocab)?, None)
            }
        };
        if ids.len() > self.context {
            return Err(Error::ContextLength {
                tokens: ids.len(),
                context: self.context,
            });
        }
        let (kv, keep) = match work {
            Some(_) => self.take_prefix(&ids, r.pin),
            None => (SeqKv::default(), 0),
        };
        let work = match work {
            Some((config, detok, constraint)) => {
                let generation = Generation::detached(&ids, keep, &config, vocab, constraint);
                let generation = match generation {
                    Ok(g) => g,
                    Err(e) => {
                        let mut kv = kv;
                        kv.clear(&mut self.pages);
                        return Err(e);
                    }
                };
                Work::Generate {
                    generation: Box::new(generation),
                    detok,
                }
            }
            None if hidden => {
                let dim = self.model.config.dim;
                r.ticket.update(|s| s.logits = vec![0.0; ids.len() * dim]);
                Work::Hidden
            }
            None => {
                r.ticket.update(|s| s.logits = vec![0.0; ids.len() * vocab]);
                Work::Logits
            }
        };
        Ok(Seq {
            ticket: r.ticket,
            pin: r.pin,
            kv,
            tokens: ids[..keep].to_vec(),
            pending: ids[keep..].to_vec(),
            chunk: 0,
            logit_row: 0,
            work,
            started: Instant::now(),
            prompt_done: None,
        })
    }

    /// The cache of the longest prefix of `prompt` (short of its last
    /// token) that a running or finished sequence holds, and its length.
    fn take_prefix(&mut self, prompt: &[u32], pin: Option<u64>) -> (SeqKv, usize) {
        let limit = prompt.len() - 1;
        let common = |tokens: &[u32]| {
            tokens
                .iter()
                .zip(&prompt[..limit])
                .take_while(|(a, b)| a == b)
                .count()
        };
        // The best finished sequence: the pinned one of this request first.
        let mut best: Option<(usize, usize)> = None; // (index, length)
        for (i, c) in self.cached.iter().enumerate() {
            let n = common(&c.tokens);
            let mine = pin.is_some() && c.pin == pin;
            if mine || (n > best.map_or(0, |b| b.1) && c.pin.is_none()) {
                best = Some((i, n));
                if mine {
                    break;
                }
            }
        }
        let from_active = self
            .active
            .iter()
            .enumerate()
            .map(|(i, s)| (i, common(&s.tokens)))
            .max_by_key(|&(_, n)| n);
        let shared_cached = self
            .cached
            .iter()
            .enumerate()
            .filter(|(_, c)| c.pin.is_some() && c.pin != pin)
            .map(|(i, c)| (i, common(&c.tokens)))
            .max_by_key(|&(_, n)| n);
        let own = best.map_or(0, |b| b.1);
        let active_n = from_active.map_or(0, |a| a.1);
        let shared_n = shared_cached.map_or(0, |a| a.1);
        if own > 0 && own >= active_n && own >= shared_n {
            // Take a finished sequence's cache over, cut to the prefix.
            let (i, n) = best.expect("own > 0");
            let mut c = self.cached.remove(i);
            c.kv.truncate(&mut self.pages, n);
            return (c.kv, n);
        }
        // Share the full pages of a running sequence or a pinned cache, and
        // copy the rows of the page that is only partly common.
        let (pages, n) = if active_n >= shared_n {
            match from_active {
                Some((i, n)) if n > 0 => (self.active[i].kv.pages.clone(), n),
                _ => return (SeqKv::default(), 0),
            }
        } else {
            let (i, n) = shared_cached.expect("shared_n > 0");
            (self.cached[i].kv.pages.clone(), n)
        };
        let mut kv = SeqKv::default();
        for &p in &pages[..n / PAGE] {
            self.pages.retain(p);
            kv.pages.push(p);
        }
        kv.len = n / PAGE * PAGE;
        let rest = n % PAGE;
        if rest > 0
            && let Some(p) = self.alloc_page()
        {
            self.dev.copy_rows(pages[n / PAGE], p, rest);
            kv.pages.push(p);
            kv.len = n;
        }
        let n = kv.len;
        (kv, n)
    }

    /// A free page, evicting finished sequences' caches (least recently
    /// used, unpinned) if none is free.
    fn alloc_page(&mut self) -> Option<u32> {
        loop {
            if let Some(p) = self.pages.alloc() {
                return Some(p);
            }
            if !self.evict_one() {
                return None;
            }
        }
    }

    /// Drops the least recently used unpinned cache; false if there is none.
    fn evict_one(&mut self) -> bool {
        match self.cached.iter().position(|c| c.pin.is_none()) {
            Some(i) => {
                let mut c = self.cached.remove(i);
                c.kv.clear(&mut self.pages);
                true
            }
            None => false,
        }
    }

    /// Makes room in `seq`'s cache for `n` more positions: a tail page that
    /// others share is copied first (it is about to be written), then new
    /// pages are taken, evicting caches as needed.
    fn make_room(&mut self, i: usize, n: usize) -> bool {
        let len = self.active[i].kv.len;
        if !len.is_multiple_of(PAGE) {
            let tail = self.active[i].kv.pages[len / PAGE];
            if self.pages.holders(tail) > 1 {
                let Some(p) = self.alloc_page() else {
                    return false;
                };
                self.dev.copy_rows(tail, p, len % PAGE);
                self.pages.release(tail);
                self.active[i].kv.pages[len / PAGE] = p;
            }
        }
        while self.active[i].kv.pages_for(n) > self.pages.available() {
            if !self.evict_one() {
                return false;
            }
        }
        self.active[i].kv.reserve(&mut self.pages, n)
    }

    /// Builds the pass: each decoding sequence's token, then prompt chunks
    /// in order of arrival while the batch has room.
    fn plan_pass(&mut self) {
        self.plan.clear();
        let budget = self.dev.max_batch();
        let (mut rows, mut hidden_rows) = (0, 0);
        let mut stalled = Vec::new();
        for s in &mut self.active {
            s.chunk = 0;
        }
        // Decoding sequences first (they have one token each), then prompts.
        for decoding in [true, false] {
            for i in 0..self.active.len() {
                let s = &self.active[i];
                let is_decoding = s.prompt_done.is_some();
                if is_decoding != decoding || s.pending.is_empty() || s.chunk > 0 {
                    continue;
                }
                let room = budget - self.plan.len();
                if room == 0 {
                    break;
                }
                let n = s.pending.len().min(room);
                if !self.make_room(i, n) {
                    stalled.push(i);
                    continue; // waits for pages to come free
                }
                let s = &mut self.active[i];
                let want = match s.work {
                    Work::Logits => Want::All,
                    Work::Hidden => Want::Hidden,
                    Work::Generate { .. } if n == s.pending.len() => Want::Last,
                    Work::Generate { .. } => Want::None,
                };
                s.chunk = n;
                s.logit_row = if want == Want::Hidden {
                    hidden_rows
                } else {
                    rows
                };
                match want {
                    Want::All => rows += n,
                    Want::Last => rows += 1,
                    Want::Hidden => hidden_rows += n,
                    Want::None => {}
                }
                self.plan.push(&s.kv.pages, s.kv.len, &s.pending[..n], want);
            }
        }
        if self.plan.is_empty() {
            // No sequence can go on: the pages are held by pinned caches
            // (the running ones' pages always fit). Fail the newest.
            if let Some(&i) = stalled.last() {
                let s = self.active.remove(i);
                s.ticket.fail(Error::InvalidArgument(
                    "the KV cache is full: the memory for max_sequences is held by the caches \
                     of chat sessions"
                        .into(),
                ));
                self.retire(s);
            }
        }
    }

    /// Takes the pass's results: cache lengths, logits, sampled tokens.
    fn after_pass(&mut self) {
        let vocab = self.model.config.vocab_size;
        let context = self.context;
        let mut finished = Vec::new();
        for (i, s) in self.active.iter_mut().enumerate() {
            if s.chunk == 0 {
                continue;
            }
            let n = s.chunk;
            s.kv.len += n;
            s.tokens.extend_from_slice(&s.pending[..n]);
            s.pending.drain(..n);
            s.chunk = 0;
            match &mut s.work {
                Work::Logits | Work::Hidden => {
                    let (src, width) = match s.work {
                        Work::Logits => (&self.out, vocab),
                        _ => (&self.hidden, self.model.config.dim),
                    };
                    let done = s.tokens.len();
                    let rows = &src[s.logit_row * width..(s.logit_row + n) * width];
                    let at = || format!("at positions {}..{done}", done - n);
                    if let Err(e) = crate::generate::check_finite(rows, at) {
                        s.ticket.fail(e);
                        finished.push(i);
                        continue;
                    }
                    s.ticket.update(|t| {
                        t.logits[(done - n) * width..done * width].copy_from_slice(rows)
                    });
                    if s.pending.is_empty() {
                        finished.push(i);
                    }
                }
                Work::Generate { generation, detok } => {
                    if !s.pending.is_empty() {
                        continue; // more of the prompt to come
                    }
                    let now = Instant::now();
                    if s.prompt_done.is_none() {
                        s.prompt_done = Some(now);
                        let st = generation.stats_mut();
                        st.prompt_tokens = s.tokens.len() - st.reused_tokens;
                        st.prompt_time = now - s.started;
                    }
                    let logits = &self.out[s.logit_row * vocab..(s.logit_row + 1) * vocab];
                    let full = s.tokens.len() >= context;
                    let (step, next) = match generation.accept(logits, detok.as_ref(), full) {
                        Ok(r) => r,
                        Err(e) => {
                            s.ticket.fail(e);
                            finished.push(i);
                            continue;
                        }
                    };
                    generation.stats_mut().generate_time =
                        Instant::now() - s.prompt_done.expect("set above");
                    if let Some((time, n)) = generation.mask_stats() {
                        let st = generation.stats_mut();
                        (st.mask_time, st.masks) = (time, n);
                    }
                    let stats = *generation.stats();
                    let generated = generation.generated();
                    let logprobs = generation.logprobs();
                    s.ticket.update(|t| {
                        let seen = t.generated.len();
                        t.generated.extend_from_slice(&generated[seen..]);
                        // One record per generated token, when asked for.
                        if let Some(new) = logprobs.get(seen..) {
                            t.logprobs.extend(new.iter().cloned());
                        }
                        t.stats = stats;
                        match step {
                            Step::Text(piece) if !piece.is_empty() => t.pieces.push_back(piece),
                            Step::Done(piece, reason) => {
                                if !piece.is_empty() {
                                    t.pieces.push_back(piece);
                                }
                                t.finish_reason = Some(reason);
                            }
                            _ => {}
                        }
                    });
                    match next {
                        Some(token) => s.pending.push(token),
                        None => finished.push(i),
                    }
                }
            }
        }
        for &i in finished.iter().rev() {
            let seq = self.active.swap_remove(i);
            seq.ticket.update(|t| t.done = true);
            self.retire(seq);
        }
    }

    /// Keeps a finished sequence's cache for later prefixes (a logits job's
    /// too), or gives its pages back.
    fn retire(&mut self, seq: Seq) {
        let Seq {
            mut kv,
            tokens,
            pin,
            ..
        } = seq;
        if kv.len == 0 {
            kv.clear(&mut self.pages);
            return;
        }
        if let Some(p) = pin {
            // One cache per pin: the newest.
            self.unpin(p);
        }
        self.cached.push(Cached { kv, tokens, pin });
    }
}

/// `ids`, if every one is in a vocabulary of `vocab`.
fn check_ids(ids: Vec<u32>, vocab: usize) -> Result<Vec<u32>> {
    match ids.iter().find(|&&t| t as usize >= vocab) {
        Some(&bad) => Err(Error::InvalidArgument(format!(
            "token id {bad} is out of range for a vocabulary of {vocab}"
        ))),
        None => Ok(ids),
    }
}

/// The default `max_sequences`: [`DEFAULT_MAX_SEQUENCES`], or as many
/// sequences as half the available memory holds at `per_sequence` bytes
/// each (their full context), at least one.
fn default_max_sequences(per_sequence: usize) -> usize {
    let available = available_memory().unwrap_or(8 << 30);
    (available / 2 / per_sequence.max(1)).clamp(1, DEFAULT_MAX_SEQUENCES)
}

/// Bytes of memory the system can give without swapping (Linux's
/// `MemAvailable`), if known.
fn available_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

// ---------------------------------------------------------------------------
// The engine: a batcher on its own thread
// ---------------------------------------------------------------------------

/// What callers hand the engine's thread.
#[derive(Debug, Default)]
struct Inbox {
    requests: Vec<Request>,
    unpin: Vec<u64>,
    clear: bool,
    shutdown: bool,
}

#[derive(Debug, Default)]
struct Shared {
    inbox: Mutex<Inbox>,
    wake: Condvar,
    /// Facts the thread publishes after each step.
    kv_bytes: AtomicUsize,
    active: AtomicUsize,
}

/// A model serving any number of callers: requests from all threads are
/// decoded together on one thread of the engine's (which runs the pool).
#[derive(Debug)]
pub struct Engine {
    model: Arc<Model>,
    shared: Arc<Shared>,
    /// The engine thread, until [`Engine::close`].
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    context: usize,
    max_sequences: usize,
    max_batch: usize,
    n_threads: usize,
    buffer_bytes: usize,
    kv_type: KvType,
    isa: &'static str,
    device: String,
    page_bytes: usize,
}

impl Engine {
    pub fn new(model: Arc<Model>, options: &BatchOptions) -> Result<Self> {
        Self::start(Batcher::new(model, options)?, options)
    }

    /// An engine on `dev` (see [`Batcher::with_device`]).
    pub fn with_device(
        model: Arc<Model>,
        options: &BatchOptions,
        dev: Box<dyn EngineDevice>,
    ) -> Result<Self> {
        Self::start(Batcher::with_device(model, options, dev)?, options)
    }

    fn start(mut batcher: Batcher, options: &BatchOptions) -> Result<Self> {
        let model = batcher.model().clone();
        let shared = Arc::new(Shared::default());
        let dev = batcher.device();
        let device = dev.name();
        let (n_threads, buffer_bytes, isa, page_bytes) = (
            dev.n_threads(),
            dev.buffer_bytes() + batcher.out.len() * 4,
            dev.isa(),
            dev.layout().page_bytes(),
        );
        let (context, max_sequences, max_batch) = (
            batcher.context_length(),
            batcher.max_sequences(),
            dev.max_batch(),
        );
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("tinyllm-engine".into())
                .spawn(move || serve(&mut batcher, &shared))
                .map_err(|e| Error::InvalidArgument(format!("cannot start a thread: {e}")))?
        };
        Ok(Engine {
            model,
            shared,
            thread: Mutex::new(Some(thread)),
            context,
            max_sequences,
            max_batch,
            n_threads,
            buffer_bytes,
            kv_type: options.session.kv_cache,
            isa,
            device,
            page_bytes,
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Queues `request` and returns its ticket.
    pub fn submit(&self, request: Request) -> Arc<Ticket> {
        let ticket = request.ticket.clone();
        let mut closed = None;
        self.send(|i| {
            if i.shutdown {
                closed = Some(request);
            } else {
                i.requests.push(request);
            }
        });
        if let Some(r) = closed {
            r.ticket.fail(closed_error());
        }
        ticket
    }

    /// Stops the engine: running and waiting requests fail with "the model
    /// was closed", as does any submitted later; the engine thread ends,
    /// dropping the device (its buffers, KV pages and its hold on the thread
    /// pool). The weights stay mapped until the engine itself is dropped.
    pub fn close(&self) {
        self.send(|i| i.shutdown = true);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    /// Forgets the caches of finished sequences.
    pub fn clear_cache(&self) {
        self.send(|i| i.clear = true);
    }

    /// Lets the cache kept for `pin` go.
    pub fn unpin(&self, pin: u64) {
        self.send(|i| i.unpin.push(pin));
    }

    fn send(&self, f: impl FnOnce(&mut Inbox)) {
        f(&mut self.shared.inbox.lock().unwrap_or_else(|e| e.into_inner()));
        self.shared.wake.notify_one();
    }

    pub fn context_length(&self) -> usize {
        self.context
    }

    pub fn max_sequences(&self) -> usize {
        self.max_sequences
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Bytes of the device's buffers and the logits of one pass.
    pub fn buffer_bytes(&self) -> usize {
        self.buffer_bytes
    }

    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// The kernel tier's name.
    pub fn isa(&self) -> &'static str {
        self.isa
    }

    /// What computes: `"cpu"` or the GPU's name.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Bytes of one page of `kv_cache::PAGE` positions.
    pub fn page_bytes(&self) -> usize {
        self.page_bytes
    }

    /// Bytes of KV cache in use after the last step.
    pub fn kv_bytes(&self) -> usize {
        self.shared.kv_bytes.load(Ordering::Relaxed)
    }

    /// Sequences running after the last step.
    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::Relaxed)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.close();
    }
}

fn closed_error() -> Error {
    Error::InvalidArgument("the model was closed".into())
}

/// The engine thread: takes what callers sent, steps while there is work,
/// sleeps when there is none. A panic in a step fails the requests it
/// touched instead of taking the process down.
fn serve(b: &mut Batcher, shared: &Shared) {
    loop {
        {
            let mut inbox = shared.inbox.lock().unwrap_or_else(|e| e.into_inner());
            while !inbox.shutdown
                && inbox.requests.is_empty()
                && inbox.unpin.is_empty()
                && !inbox.clear
                && b.is_idle()
            {
                inbox = shared.wake.wait(inbox).unwrap_or_else(|e| e.into_inner());
            }
            if inbox.shutdown {
                for r in inbox.requests.drain(..) {
                    r.ticket.fail(closed_error());
                }
                drop(inbox);
                for s in b.active.drain(..) {
                    s.ticket.fail(closed_error());
                }
                for r in b.waiting.drain(..) {
                    r.ticket.fail(closed_error());
                }
                return;
            }
            for r in inbox.requests.drain(..) {
                b.submit(r);
            }
            for p in inbox.unpin.drain(..) {
                b.unpin(p);
            }
            if std::mem::take(&mut inbox.clear) {
                b.clear_cache();
            }
        }
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.step()));
        if stepped.is_err() {
            // A bug: fail what was running, start over with empty caches.
            for s in b.active.drain(..) {
                s.ticket.fail(Error::InvalidArgument(
                    "internal error in the engine (a bug: please report it)".into(),
                ));
            }
            b.cached.clear();
            b.pages = PageAllocator::new(b.pages.limit());
        }
        shared
            .kv_bytes
            .store(b.kv_bytes_in_use(), Ordering::Relaxed);
        shared.active.store(b.active(), Ordering::Relaxed);
    }
}
