//! Text generation: prompt processing, sampling, streaming decoding, stop
//! conditions.
//!
//! A [`Generation`] is advanced one [`Step`] at a time by
//! [`Generation::step`], so a caller (the Python bindings) can check for
//! interrupts and hand text out between steps.

use crate::constrain::Constraint;
use crate::error::{Error, Result};
use crate::sampler::{Sampler, SamplerConfig};
use crate::session::Session;
use crate::tokenizer::{BOS, Detokenize, EOS};
use std::time::{Duration, Instant};

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateConfig {
    /// The most tokens to generate.
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Generation stops before the first occurrence of any of these; the
    /// stop string itself is not returned.
    pub stop: Vec<String>,
    /// Tokens that end the text (EOS, end-of-turn markers); they add no text.
    pub stop_ids: Vec<u32>,
    /// Record each generated token's log-probability and this many most
    /// likely alternatives (at most [`GenerateConfig::MAX_TOP_LOGPROBS`]);
    /// None records nothing.
    pub logprobs: Option<usize>,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            max_tokens: 256,
            sampler: SamplerConfig::default(),
            stop: Vec::new(),
            stop_ids: GenerateConfig::LLAMA2C_STOP_IDS.to_vec(),
            logprobs: None,
        }
    }
}

/// A generated token with its log-probability under the model (the
/// log-softmax of the logits, before biases, penalties and temperature), and
/// the most likely tokens at that position, most likely first.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

impl GenerateConfig {
    /// llama2.c's stop tokens: a generated BOS or EOS ends the text.
    pub const LLAMA2C_STOP_IDS: [u32; 2] = [BOS, EOS];
    /// The most alternatives `logprobs` may ask for (OpenAI's limit).
    pub const MAX_TOP_LOGPROBS: usize = 20;
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The model ended the text (EOS or BOS) or a stop string appeared.
    Stop,
    /// `max_tokens` were generated, or the context is full.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What one step did.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// A batch of the prompt went through the model.
    Prompt,
    /// A token was generated; this is the text it completed (possibly empty,
    /// if it ended inside a UTF-8 character or a possible stop string).
    Text(String),
    /// The generation ended; this is the text still held back.
    Done(String, FinishReason),
}

/// Timings of a generation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Prompt tokens computed (not counting those reused from the cache).
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were reused from the cache.
    pub reused_tokens: usize,
    pub prompt_time: Duration,
    pub generated_tokens: usize,
    pub generate_time: Duration,
    /// Time spent computing a grammar's token masks, and how many.
    pub mask_time: Duration,
    pub masks: usize,
}

/// One generation in progress on a [`Session`].
#[derive(Debug)]
pub struct Generation {
    /// The prompt tokens still to feed.
    pending: Vec<u32>,
    fed: usize,
    sampler: Sampler,
    text: TextStream,
    max_tokens: usize,
    stop_ids: Vec<u32>,
    /// Prompt and generated tokens (for the repetition penalty and decoding).
    history: Vec<u32>,
    finished: Option<FinishReason>,
    stats: Stats,
    /// How many alternatives to record per token, if any.
    top_logprobs: Option<usize>,
    /// One record per generated token when `top_logprobs` is set.
    logprobs: Vec<TokenLogprob>,
    /// The grammar the text must follow, if any.
    constraint: Option<Box<Constraint>>,
}

impl Generation {
    /// Prepares to continue `prompt` (token ids, BOS included if wanted) on
    /// `session`, reusing the cached prefix the prompt shares.
    pub fn new(session: &mut Session, prompt: &[u32], config: &GenerateConfig) -> Result<Self> {
        let vocab = session.model().config.vocab_size;
        Generation::check(prompt, vocab, config)?;
        let keep = session.prepare(prompt)?;
        Generation::detached(prompt, keep, config, vocab, None)
    }

    /// Checks a prompt and settings before any work starts.
    pub fn check(prompt: &[u32], vocab: usize, config: &GenerateConfig) -> Result<()> {
        config.sampler.validate_for(vocab)?;
        if let Some(n) = config
            .logprobs
            .filter(|&n| n > GenerateConfig::MAX_TOP_LOGPROBS)
        {
            return Err(crate::Error::InvalidArgument(format!(
                "top_logprobs must be at most {}, got {n}",
                GenerateConfig::MAX_TOP_LOGPROBS
            )));
        }
        if prompt.is_empty() {
            return Err(crate::Error::InvalidArgument(
                "the prompt has no tokens; pass at least BOS".into(),
            ));
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(crate::Error::InvalidArgument(format!(
                "token id {bad} is out of range for a vocabulary of {vocab}"
            )));
        }
        Ok(())
    }

    /// A generation whose prompt is fed by someone else (the scheduler):
    /// `keep` of its tokens were in the cache already; the caller feeds the
    /// rest and hands the logits that follow to [`Generation::accept`].
    pub fn detached(
        prompt: &[u32],
        keep: usize,
        config: &GenerateConfig,
        vocab: usize,
        constraint: Option<Box<Constraint>>,
    ) -> Result<Self> {
        let sampler = Sampler::new(config.sampler.clone(), vocab)?;
        Ok(Generation {
            pending: prompt[keep..].to_vec(),
            fed: 0,
            sampler,
            text: TextStream::new(config.stop.clone()),
            max_tokens: config.max_tokens,
            stop_ids: config.stop_ids.clone(),
            history: prompt.to_vec(),
            finished: if config.max_tokens == 0 {
                Some(FinishReason::Length)
            } else {
                None
            },
            stats: Stats {
                reused_tokens: keep,
                ..Stats::default()
            },
            top_logprobs: config.logprobs,
            logprobs: Vec::new(),
            constraint,
        })
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn stats_mut(&mut self) -> &mut Stats {
        &mut self.stats
    }

    /// The generated token ids so far.
    pub fn generated(&self) -> &[u32] {
        &self.history[self.history.len() - self.stats.generated_tokens..]
    }

    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finished
    }

    /// One record per generated token, if the config asked for them.
    pub fn logprobs(&self) -> &[TokenLogprob] {
        &self.logprobs
    }

    /// The grammar's mask time and count, if the generation has one.
    pub fn mask_stats(&self) -> Option<(Duration, usize)> {
        self.constraint.as_ref().map(|c| c.mask_stats())
    }

    /// Takes the logits that followed the last token fed: samples the next
    /// token and returns what it completed, with the token to feed next
    /// (None once the generation is done). `full` says the context has no
    /// room for another token. Fails only if the grammar does.
    pub fn accept(
        &mut self,
        logits: &[f32],
        tok: &dyn Detokenize,
        full: bool,
    ) -> Result<(Step, Option<u32>)> {
        if let Some(reason) = self.finished {
            return Ok((Step::Done(self.text.finish(), reason), None));
        }
        check_finite(logits, || {
            format!("after {} generated tokens", self.stats.generated_tokens)
        })?;
        let token = match self.constraint.as_mut() {
            Some(c) => {
                let mask = c.mask()?;
                self.sampler
                    .sample_masked(logits, &self.history, Some(mask))
            }
            None => self.sampler.sample(logits, &self.history),
        };
        if self.stop_ids.contains(&token) {
            return Ok((self.finish(FinishReason::Stop), None));
        }
        // A complete grammar ends the text as an end token would.
        let grammar_done = match self.constraint.as_mut() {
            Some(c) => {
                c.consume(token)?;
                c.is_done()
            }
            None => false,
        };
        if let Some(n) = self.top_logprobs {
            self.logprobs.push(token_logprob(logits, token, n));
        }
        let prev = self.history.last().copied();
        self.history.push(token);
        self.stats.generated_tokens += 1;
        let (piece, stopped) = self.text.push(tok.token_bytes(prev, token));
        Ok(if stopped {
            self.finished = Some(FinishReason::Stop);
            (Step::Done(piece, FinishReason::Stop), None)
        } else if grammar_done {
            self.finished = Some(FinishReason::Stop);
            (
                Step::Done(piece + &self.text.finish(), FinishReason::Stop),
                None,
            )
        } else if self.stats.generated_tokens >= self.max_tokens || full {
            self.finished = Some(FinishReason::Length);
            (
                Step::Done(piece + &self.text.finish(), FinishReason::Length),
                None,
            )
        } else {
            (Step::Text(piece), Some(token))
        })
    }

    /// Does the next piece of work: one batch of the prompt, or one token.
    pub fn step(&mut self, session: &mut Session, tok: &dyn Detokenize) -> Result<Step> {
        if self.fed < self.pending.len() {
            let start = Instant::now();
            let end = (self.fed + session.max_batch()).min(self.pending.len());
            let batch = &self.pending[self.fed..end];
            if end == self.pending.len() {
                session.feed(batch)?;
            } else {
                session.feed_silently(batch)?;
            }
            self.fed = end;
            self.stats.prompt_tokens += batch.len();
            self.stats.prompt_time += start.elapsed();
            return Ok(Step::Prompt);
        }
        let start = Instant::now();
        // The token just sampled has not been fed yet, so the cache holds
        // one position less than the text: full when that is the last one.
        let full = session.tokens().len() >= session.context_length();
        let (step, next) = self.accept(session.logits(), tok, full)?;
        if let Some(token) = next {
            session.feed(&[token])?;
        }
        self.stats.generate_time += start.elapsed();
        Ok(step)
    }

    fn finish(&mut self, reason: FinishReason) -> Step {
        self.finished = Some(reason);
        Step::Done(self.text.finish(), reason)
    }

    /// Runs to the end and returns all the generated text.
    pub fn run(&mut self, session: &mut Session, tok: &dyn Detokenize) -> Result<String> {
        let mut out = String::new();
        loop {
            match self.step(session, tok)? {
                Step::Prompt => {}
                Step::Text(t) => out.push_str(&t),
                Step::Done(t, _) => {
                    out.push_str(&t);
                    return Ok(out);
                }
            }
        }
    }
}

/// `token`'s log-probability under `logits`, with the `n` most likely
/// tokens (ties in id order).
fn token_logprob(logits: &[f32], token: u32, n: usize) -> TokenLogprob {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = logits.iter().map(|&v| f64::from((v - max).exp())).sum();
    let log_z = max + sum.ln() as f32;
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(n);
    let better = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    for (id, &v) in (0u32..).zip(logits) {
        if top.len() < n {
            top.push((id, v));
            top.sort_by(better);
        } else if n > 0 && v > top[n - 1].1 {
            top[n - 1] = (id, v);
            top.sort_by(better);
        }
    }
    for t in &mut top {
        t.1 -= log_z;
    }
    TokenLogprob {
        token,
        logprob: logits[token as usize] - log_z,
        top,
    }
}

/// Turns a stream of token bytes into text: never splits a UTF-8 character,
/// and holds back text that may be the start of a stop string.
#[derive(Debug)]
pub struct TextStream {
    /// Bytes of an incomplete UTF-8 character.
    partial: Vec<u8>,
    /// Decoded text not yet handed out.
    held: String,
    stop: Vec<String>,
    stopped: bool,
}

impl TextStream {
    pub fn new(stop: Vec<String>) -> Self {
        TextStream {
            partial: Vec::new(),
            held: String::new(),
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            stopped: false,
        }
    }

    /// Adds `bytes`; returns the text that is now safe to hand out, and
    /// whether a stop string was found (the text then ends before it).
    pub fn push(&mut self, bytes: &[u8]) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.partial.extend_from_slice(bytes);
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.partial[start..]) {
                Ok(text) => {
                    self.held.push_str(text);
                    start = self.partial.len();
                    break;
                }
                Err(e) => {
                    let valid = &self.partial[start..start + e.valid_up_to()];
                    // `valid` is exactly the validated prefix, so this cannot fail.
                    self.held
                        .push_str(std::str::from_utf8(valid).unwrap_or_default());
                    start += e.valid_up_to();
                    match e.error_len() {
                        Some(n) => {
                            self.held.push(char::REPLACEMENT_CHARACTER);
                            start += n;
                        }
                        None => break, // an incomplete character: wait for more bytes
                    }
                }
            }
        }
        self.partial.drain(..start);

        if let Some(at) = self
            .stop
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            self.held.truncate(at);
            self.stopped = true;
            return (std::mem::take(&mut self.held), true);
        }
        let keep = self.held_back();
        let out: String = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        (out, false)
    }

    /// How many trailing bytes of `held` may begin a stop string.
    fn held_back(&self) -> usize {
        let h = self.held.as_str();
        let mut keep = 0;
        for s in &self.stop {
            for (i, _) in h.char_indices().rev().take(s.len()) {
                let tail = &h[i..];
                if tail.len() > keep && s.starts_with(tail) {
                    keep = tail.len();
                }
            }
        }
        keep
    }

    /// Hands out everything held (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        if !self.partial.is_empty() && !self.stopped {
            self.held.push(char::REPLACEMENT_CHARACTER);
        }
        self.partial.clear();
        std::mem::take(&mut self.held)
    }
}

/// An [`Error::NonFinite`] if `logits` hold a NaN or an infinity; `when`
/// says where in the text.
pub(crate) fn check_finite(logits: &[f32], when: impl FnOnce() -> String) -> Result<()> {
    // A sum is NaN if any term is NaN or infinite (of either sign, or both).
    if logits.iter().map(|&x| x * 0.0).sum::<f32>() == 0.0 {
        return Ok(());
    }
    let i = logits.iter().position(|x| !x.is_finite()).unwrap_or(0);
    Err(Error::NonFinite {
        what: format!("{} for token {i}, {}", logits[i], when()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(stream: &mut TextStream, pieces: &[&[u8]]) -> (Vec<String>, bool) {
        let mut out = Vec::new();
        for p in pieces {
            let (s, stop) = stream.push(p);
            out.push(s);
            if stop {
                return (out, true);
            }
        }
        out.push(stream.finish());
        (out, false)
    }

    #[test]
    fn never_splits_a_character() {
        let snow = "☃".as_bytes();
        let mut s = TextStream::new(vec![]);
        let (out, _) = collect(&mut s, &[b"a", &snow[..1], &snow[1..2], &snow[2..], b"b"]);
        assert_eq!(out, ["a", "", "", "☃", "b", ""]);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut s = TextStream::new(vec![]);
        let (out, _) = collect(&mut s, &[b"a\xff", b"b", &"é".as_bytes()[..1]]);
        assert_eq!(out.concat(), "a\u{fffd}b\u{fffd}");
    }

    #[test]
    fn stops_before_a_stop_string_across_pieces() {
        let mut s = TextStream::new(vec!["THE END".into(), "\n\n".into()]);
        let (out, stopped) = collect(&mut s, &[b"and so", b" TH", b"E E", b"ND!"]);
        assert!(stopped);
        assert_eq!(out, ["and so", " ", "", ""]);
        assert_eq!(out.concat(), "and so ");

        let mut s = TextStream::new(vec!["THE END".into()]);
        let (out, stopped) = collect(&mut s, &[b"THE", b" ENVOY"]);
        assert!(!stopped);
        assert_eq!(out.concat(), "THE ENVOY");
        assert_eq!(out[0], "");
    }
}
