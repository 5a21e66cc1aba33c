//! Choosing the next token from the logits.
//!
//! The order is: logit biases, repetition penalty, presence and frequency
//! penalties, then greedy (temperature 0) or temperature, softmax, top-k,
//! top-p (nucleus), min-p, and a draw from what is left. The random numbers come from a seeded xorshift generator, so the
//! same seed and settings give the same tokens.

use crate::error::{Error, Result};
use llguidance::toktrie::SimpleVob;

/// How to sample.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// Divides the logits; 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability adds up
    /// to at least `top_p` (1: all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0: none).
    pub min_p: f32,
    /// Divides positive (multiplies negative) logits of tokens among the last
    /// `repeat_last_n` of the sequence (1: off).
    pub repeat_penalty: f32,
    /// How far back the repetition penalty looks.
    pub repeat_last_n: usize,
    /// Subtracted once from the logit of every token this sampler has
    /// already drawn (OpenAI's `presence_penalty`, in `[-2, 2]`).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time this sampler has drawn
    /// it (OpenAI's `frequency_penalty`, in `[-2, 2]`).
    pub frequency_penalty: f32,
    /// Added to the logits of the given tokens before anything else (each
    /// in `[-100, 100]`; -100 in effect bans a token, 100 forces it).
    pub logit_bias: Vec<(u32, f32)>,
    /// The seed of the random generator.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 0,
            top_p: 0.95,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Checks every setting's range.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, v: f32, range: &str| {
            Err(Error::InvalidArgument(format!(
                "{name} must be {range}, got {v}"
            )))
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", self.temperature, "a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "in (0, 1]");
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return bad("min_p", self.min_p, "in [0, 1]");
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad("repeat_penalty", self.repeat_penalty, "a finite number > 0");
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(name, v, "in [-2, 2]");
            }
        }
        for &(token, bias) in &self.logit_bias {
            if !(-100.0..=100.0).contains(&bias) {
                return bad(
                    &format!("logit_bias of token {token}"),
                    bias,
                    "in [-100, 100]",
                );
            }
        }
        Ok(())
    }

    /// Also checks that the biased tokens are in a vocabulary of `vocab`.
    pub fn validate_for(&self, vocab: usize) -> Result<()> {
        self.validate()?;
        if let Some(&(token, _)) = self.logit_bias.iter().find(|b| b.0 as usize >= vocab) {
            return Err(Error::InvalidArgument(format!(
                "logit_bias names token {token}, outside the vocabulary of {vocab}"
            )));
        }
        Ok(())
    }
}

/// A seeded random generator: splitmix64 to spread the seed, xorshift64*
/// to draw.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(if z == 0 { 0x2545_f491_4f6c_dd1d } else { z })
    }

    pub fn next_u32(&mut self) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / 16_777_216.0
    }
}

/// Samples tokens; its buffers are sized once for the vocabulary.
#[derive(Debug)]
pub struct Sampler {
    config: SamplerConfig,
    rng: Rng,
    /// `(vocab,)` working copy of the logits, then the probabilities.
    probs: Vec<f32>,
    /// Surviving `(probability, token)` candidates.
    candidates: Vec<(f32, u32)>,
    /// `(token, times drawn)` for the presence and frequency penalties.
    drawn: Vec<(u32, u32)>,
}

impl Sampler {
    pub fn new(config: SamplerConfig, vocab_size: usize) -> Result<Self> {
        config.validate_for(vocab_size)?;
        let penalised = config.presence_penalty != 0.0 || config.frequency_penalty != 0.0;
        Ok(Sampler {
            rng: Rng::new(config.seed),
            config,
            probs: vec![0.0; vocab_size],
            candidates: Vec::with_capacity(vocab_size),
            drawn: Vec::with_capacity(if penalised { 256 } else { 0 }),
        })
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Picks the next token from `logits`; `history` is the sequence so far
    /// (for the repetition penalty). The presence and frequency penalties
    /// count the tokens this sampler drew before.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        self.sample_masked(logits, history, None)
    }

    /// Like [`Sampler::sample`], drawing only among the tokens `allowed`
    /// (a grammar's mask), which must allow at least one.
    pub fn sample_masked(
        &mut self,
        logits: &[f32],
        history: &[u32],
        allowed: Option<&SimpleVob>,
    ) -> u32 {
        let token = self.choose(logits, history, allowed);
        let c = &self.config;
        if c.presence_penalty != 0.0 || c.frequency_penalty != 0.0 {
            match self.drawn.iter_mut().find(|d| d.0 == token) {
                Some(d) => d.1 += 1,
                None => self.drawn.push((token, 1)),
            }
        }
        token
    }

    fn choose(&mut self, logits: &[f32], history: &[u32], allowed: Option<&SimpleVob>) -> u32 {
        let c = &self.config;
        let p = &mut self.probs;
        p.copy_from_slice(logits);
        for &(token, bias) in &c.logit_bias {
            p[token as usize] += bias;
        }
        if let Some(mask) = allowed {
            let n = p.len();
            mask.iter_unset_entries(|i| {
                if i < n {
                    p[i] = f32::NEG_INFINITY;
                }
            });
        }

        if c.repeat_penalty != 1.0 {
            let recent = &history[history.len().saturating_sub(c.repeat_last_n)..];
            for (i, &tok) in recent.iter().enumerate() {
                // Penalise each distinct token once.
                if (tok as usize) < p.len() && !recent[..i].contains(&tok) {
                    let v = &mut p[tok as usize];
                    *v = if *v > 0.0 {
                        *v / c.repeat_penalty
                    } else {
                        *v * c.repeat_penalty
                    };
                }
            }
        }

        for &(token, n) in &self.drawn {
            p[token as usize] -= c.presence_penalty + c.frequency_penalty * n as f32;
        }

        if c.temperature == 0.0 {
            return argmax(p);
        }

        // Softmax of logits / temperature.
        let max = p.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0.0f32;
        for v in p.iter_mut() {
            *v = ((*v - max) / c.temperature).exp();
            sum += *v;
        }
        for v in p.iter_mut() {
            *v /= sum;
        }

        let filtered = c.top_k > 0 || c.top_p < 1.0 || c.min_p > 0.0;
        if !filtered {
            return draw(p.iter().copied().zip(0u32..), 1.0, self.rng.next_f32());
        }

        // Candidates: drop what no filter can keep, before sorting.
        let n = p.len();
        let pmax = p.iter().fold(0.0f32, |m, &v| m.max(v));
        let mut floor = c.min_p * pmax;
        if c.top_p < 1.0 && n > 1 {
            // A token below (1 - top_p) / (n - 1) is never in the nucleus:
            // all such tokens together hold less than 1 - top_p.
            floor = floor.max((1.0 - c.top_p) / (n - 1) as f32);
        }
        let cand = &mut self.candidates;
        cand.clear();
        cand.extend(p.iter().copied().zip(0u32..).filter(|&(v, _)| v >= floor));
        if cand.is_empty() {
            return argmax(p);
        }
        let by_prob = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if c.top_k > 0 && cand.len() > c.top_k {
            cand.select_nth_unstable_by(c.top_k - 1, by_prob);
            cand.truncate(c.top_k);
        }
        cand.sort_unstable_by(by_prob);
        if c.top_p < 1.0 {
            let mut cum = 0.0f32;
            let mut keep = cand.len();
            for (i, &(v, _)) in cand.iter().enumerate() {
                cum += v;
                if cum >= c.top_p {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep);
        }
        let total: f32 = cand.iter().map(|&(v, _)| v).sum();
        draw(cand.iter().copied(), total, self.rng.next_f32())
    }
}

/// The index of the largest value (the first, on ties).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Draws from `(probability, token)` pairs adding up to `total`, with the
/// uniform number `u` in `[0, 1)`.
fn draw(items: impl Iterator<Item = (f32, u32)>, total: f32, u: f32) -> u32 {
    let target = u * total;
    let mut cum = 0.0f32;
    let mut last = 0;
    for (p, tok) in items {
        if p > 0.0 {
            cum += p;
            last = tok;
            if target < cum {
                return tok;
            }
        }
    }
    last // rounding left `target` a hair above the sum: the last possible token
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(c: SamplerConfig) -> Sampler {
        Sampler::new(c, 5).unwrap()
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = sampler(SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&[1.0, 3.0, 3.0, 0.0, -1.0], &[]), 1);
    }

    #[test]
    fn repetition_penalty_applies_once_per_distinct_token() {
        let c = SamplerConfig {
            temperature: 0.0,
            repeat_penalty: 2.0,
            ..Default::default()
        };
        let mut s = sampler(c);
        // token 1 (4.0) is penalised to 2.0, below token 2 (3.0)
        assert_eq!(s.sample(&[0.0, 4.0, 3.0, 0.0, 0.0], &[1, 1, 1]), 2);
        // a negative logit gets more negative
        assert_eq!(s.sample(&[-1.0, -1.5, -3.0, -4.0, -5.0], &[0]), 1);
    }

    #[test]
    fn logit_bias_moves_the_choice() {
        let logits = [1.0, 3.0, 2.0, 0.0, -1.0];
        let mut s = sampler(SamplerConfig {
            temperature: 0.0,
            logit_bias: vec![(1, -100.0), (4, 2.5)],
            ..Default::default()
        });
        // 3.0 - 100 drops token 1; -1 + 2.5 = 1.5 is still below token 2's 2.0
        assert_eq!(s.sample(&logits, &[]), 2);
        let mut s = sampler(SamplerConfig {
            temperature: 0.0,
            logit_bias: vec![(4, 4.5)],
            ..Default::default()
        });
        assert_eq!(s.sample(&logits, &[]), 4);
    }

    #[test]
    fn presence_and_frequency_penalties_count_the_drawn_tokens() {
        // The same logits each step; greedy. With presence 1.5, token 0
        // (3.0) is drawn, then 1 (2.0 > 3.0 - 1.5), then 2 (1.6 > 1.5, 0.5).
        let logits = [3.0, 2.0, 1.6, 0.0, 0.0];
        let mut s = sampler(SamplerConfig {
            temperature: 0.0,
            presence_penalty: 1.5,
            ..Default::default()
        });
        let got: Vec<u32> = (0..3).map(|_| s.sample(&logits, &[])).collect();
        assert_eq!(got, [0, 1, 2]);
        // Frequency 0.6: 0 (3.0), 0 (2.4 > 2.0), 1 (2.0 > 1.8), 0 (1.8 > 1.6, 1.4).
        let mut s = sampler(SamplerConfig {
            temperature: 0.0,
            frequency_penalty: 0.6,
            ..Default::default()
        });
        let got: Vec<u32> = (0..4).map(|_| s.sample(&logits, &[])).collect();
        assert_eq!(got, [0, 0, 1, 0]);
        // A negative presence penalty keeps repeating.
        let mut s = sampler(SamplerConfig {
            temperature: 0.0,
            presence_penalty: -2.0,
            ..Default::default()
        });
        let flat = [1.0, 1.1, 0.0, 0.0, 0.0];
        let got: Vec<u32> = (0..3).map(|_| s.sample(&flat, &[])).collect();
        assert_eq!(got, [1, 1, 1]);
    }

    #[test]
    fn filters_leave_only_the_allowed_tokens() {
        let logits = [2.0, 1.0, 0.5, 0.0, -3.0];
        let cases = [
            (
                SamplerConfig {
                    top_k: 2,
                    top_p: 1.0,
                    ..Default::default()
                },
                vec![0, 1],
            ),
            (
                SamplerConfig {
                    top_p: 0.5,
                    ..Default::default()
                },
                vec![0],
            ),
            (
                SamplerConfig {
                    top_p: 1.0,
                    min_p: 0.3,
                    temperature: 1.0,
                    ..Default::default()
                },
                vec![0, 1, 2],
            ),
        ];
        for (c, allowed) in cases {
            for seed in 0..200 {
                let mut s = sampler(SamplerConfig { seed, ..c.clone() });
                let t = s.sample(&logits, &[]);
                assert!(allowed.contains(&t), "{c:?} gave {t}");
            }
        }
    }

    #[test]
    fn frequencies_follow_the_distribution() {
        let logits = [0.0f32, (3.0f32).ln(), 0.0, f32::NEG_INFINITY, 0.0];
        let c = SamplerConfig {
            temperature: 1.0,
            top_p: 1.0,
            seed: 7,
            ..Default::default()
        };
        let mut s = sampler(c);
        let mut counts = [0usize; 5];
        for _ in 0..60_000 {
            counts[s.sample(&logits, &[]) as usize] += 1;
        }
        // expected 1/6, 1/2, 1/6, 0, 1/6
        assert_eq!(counts[3], 0);
        assert!(
            (counts[1] as f64 / 60_000.0 - 0.5).abs() < 0.01,
            "{counts:?}"
        );
        assert!(
            (counts[0] as f64 / 60_000.0 - 1.0 / 6.0).abs() < 0.01,
            "{counts:?}"
        );
    }

    #[test]
    fn invalid_settings_are_rejected() {
        for c in [
            SamplerConfig {
                temperature: -1.0,
                ..Default::default()
            },
            SamplerConfig {
                top_p: 0.0,
                ..Default::default()
            },
            SamplerConfig {
                min_p: 1.5,
                ..Default::default()
            },
            SamplerConfig {
                repeat_penalty: 0.0,
                ..Default::default()
            },
            SamplerConfig {
                temperature: f32::NAN,
                ..Default::default()
            },
            SamplerConfig {
                presence_penalty: 2.5,
                ..Default::default()
            },
            SamplerConfig {
                frequency_penalty: f32::NAN,
                ..Default::default()
            },
            SamplerConfig {
                logit_bias: vec![(0, 101.0)],
                ..Default::default()
            },
            SamplerConfig {
                logit_bias: vec![(4, 1.0)],
                ..Default::default()
            },
        ] {
            assert!(matches!(Sampler::new(c, 4), Err(Error::InvalidArgument(_))));
        }
    }
}
