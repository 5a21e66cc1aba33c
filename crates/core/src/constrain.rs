//! Structured output: a grammar (a JSON schema, a regular expression or a
//! Lark grammar) decides which tokens may come next, and the sampler only
//! draws among those. The masks come from llguidance, which works on the
//! bytes of the vocabulary's tokens.
//!
//! [`Grammars`] is built once per vocabulary (it indexes every token's
//! bytes); [`Grammars::constraint`] compiles one request's grammar into a
//! [`Constraint`], which follows that one sequence token by token.

use crate::error::{Error, Result};
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a generation's text must match.
#[derive(Clone, Debug, PartialEq)]
pub enum Grammar {
    /// A JSON schema (as JSON text).
    JsonSchema(String),
    /// Any JSON object.
    JsonObject,
    /// A regular expression the whole text must match.
    Regex(String),
    /// A grammar in llguidance's Lark syntax.
    Lark(String),
}

/// A vocabulary as llguidance sees it: each token's bytes, special tokens
/// marked so that no text can spell them.
struct Vocab {
    trie: TokTrie,
}

impl TokenizerEnv for Vocab {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }

    fn tokenize_is_canonical(&self) -> bool {
        false // greedy, not the model's own tokenizer
    }
}

/// Compiles grammars for one vocabulary.
pub struct Grammars {
    factory: ParserFactory,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars").finish_non_exhaustive()
    }
}

impl Grammars {
    /// `tokens[i]` is the text token `i` adds; `specials` are the control
    /// tokens (never produced by a grammar's text, named by `names`); `ends`
    /// the tokens that end a generation (allowed once the grammar is
    /// complete). `vocab_size` is the model's (it may exceed `tokens`).
    pub fn new(
        vocab_size: usize,
        tokens: &[Vec<u8>],
        specials: &[(u32, String)],
        ends: &[u32],
    ) -> Result<Self> {
        let bad = |why: String| Error::InvalidArgument(format!("grammar vocabulary: {why}"));
        if tokens.len() > vocab_size {
            return Err(bad(format!(
                "{} tokens for a model vocabulary of {vocab_size}",
                tokens.len()
            )));
        }
        let first_end = *ends
            .first()
            .ok_or_else(|| bad("no token ends a generation".into()))?;
        if let Some(t) = ends
            .iter()
            .chain(specials.iter().map(|s| &s.0))
            .find(|&&t| t as usize >= vocab_size)
        {
            return Err(bad(format!(
                "token {t} is outside the vocabulary of {vocab_size}"
            )));
        }
        let mut words: Vec<Vec<u8>> = tokens.to_vec();
        words.resize(vocab_size, Vec::new());
        for (id, name) in specials {
            let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
            w.extend_from_slice(name.as_bytes());
            words[*id as usize] = w;
        }
        for &id in ends {
            if words[id as usize].first() != Some(&TokTrie::SPECIAL_TOKEN_MARKER) {
                // An end token that is not marked special must not also be text.
                let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                w.extend_from_slice(format!("<end{id}>").as_bytes());
                words[id as usize] = w;
            }
        }
        let info = TokRxInfo::new(vocab_size as u32, first_end);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(ends);
        let env: TokEnv = Arc::new(Vocab { trie });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| bad(e.to_string()))?;
        factory.quiet();
        Ok(Grammars { factory })
    }

    /// Compiles `grammar` for one generation.
    pub fn constraint(&self, grammar: &Grammar) -> Result<Constraint> {
        let top = match grammar {
            Grammar::JsonSchema(text) => {
                let schema: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                    Error::InvalidArgument(format!("the JSON schema is not valid JSON: {e}"))
                })?;
                TopLevelGrammar::from_json_schema(bounded_whitespace(schema))
            }
            Grammar::JsonObject => TopLevelGrammar::from_json_schema(bounded_whitespace(
                serde_json::json!({"type": "object"}),
            )),
            Grammar::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Grammar::Lark(text) => TopLevelGrammar::from_lark(text.clone()),
        };
        let parser = self.factory.create_parser(top).map_err(|e| {
            Error::InvalidArgument(format!("the {} does not compile: {e}", grammar.kind()))
        })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(Error::InvalidArgument(format!(
                "the {} does not compile: {e}",
                grammar.kind()
            )));
        }
        Ok(Constraint {
            matcher,
            mask: None,
            mask_time: Duration::ZERO,
            masks: 0,
        })
    }
}

/// JSON may have whitespace between its tokens, but a run of it is bounded
/// (as llama.cpp's schema grammars bound it): a small model that keeps
/// emitting newlines inside a document must move on. A schema's own
/// `x-guidance` options are left alone.
fn bounded_whitespace(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(
            || serde_json::json!({"whitespace_pattern": r"[\x20\x0A\x0D\x09]{0,20}"}),
        );
    }
    schema
}

impl Grammar {
    fn kind(&self) -> &'static str {
        match self {
            Grammar::JsonSchema(_) => "JSON schema",
            Grammar::JsonObject => "JSON object grammar",
            Grammar::Regex(_) => "regular expression",
            Grammar::Lark(_) => "Lark grammar",
        }
    }
}

/// One generation's grammar state.
pub struct Constraint {
    matcher: Matcher,
    /// The mask for the next token, once computed.
    mask: Option<SimpleVob>,
    mask_time: Duration,
    masks: usize,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("masks", &self.masks)
            .finish_non_exhaustive()
    }
}

impl Constraint {
    /// The tokens allowed next (computed once per position).
    pub fn mask(&mut self) -> Result<&SimpleVob> {
        if self.mask.is_none() {
            let start = Instant::now();
            let mask = self.matcher.compute_mask().map_err(grammar_error)?;
            self.mask_time += start.elapsed();
            self.masks += 1;
            if mask.is_zero() {
                return Err(Error::InvalidArgument(
                    "the grammar allows no token here".into(),
                ));
            }
            self.mask = Some(mask);
        }
        Ok(self.mask.as_ref().expect("set above"))
    }

    /// Moves past `token` (which the last mask allowed).
    pub fn consume(&mut self, token: u32) -> Result<()> {
        self.mask = None;
        self.matcher.consume_token(token).map_err(grammar_error)
    }

    /// Whether the grammar is complete and allows nothing more.
    pub fn is_done(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// Time spent computing masks, and how many.
    pub fn mask_stats(&self) -> (Duration, usize) {
        (self.mask_time, self.masks)
    }
}

fn grammar_error(e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("structured output failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte vocabulary: tokens 0..=255 are single bytes, then a few words,
    /// then an end token.
    fn grammars() -> (Grammars, Vec<Vec<u8>>) {
        let mut tokens: Vec<Vec<u8>> = (0u8..=255).map(|b| vec![b]).collect();
        for w in ["{\"", "\":", "true", "false", "null", "abc"] {
            tokens.push(w.as_bytes().to_vec());
        }
        tokens.push(Vec::new()); // 262: the end token
        let end = (tokens.len() - 1) as u32;
        let g = Grammars::new(tokens.len(), &tokens, &[(end, "</s>".into())], &[end]).unwrap();
        (g, tokens)
    }

    fn allowed(c: &mut Constraint) -> Vec<u32> {
        let m = c.mask().unwrap();
        (0..m.len() as u32).filter(|&t| m.is_allowed(t)).collect()
    }

    #[test]
    fn a_regex_allows_exactly_its_language() {
        let (g, tokens) = grammars();
        let mut c = g.constraint(&Grammar::Regex("(yes|no)!".into())).unwrap();
        assert_eq!(allowed(&mut c), vec![b'n' as u32, b'y' as u32]);
        c.consume(b'y' as u32).unwrap();
        assert_eq!(allowed(&mut c), vec![b'e' as u32]);
        for b in "es!".bytes() {
            c.consume(b as u32).unwrap();
        }
        // complete: only the end token is left
        let end = (tokens.len() - 1) as u32;
        assert!(c.is_done() || allowed(&mut c) == vec![end]);
    }

    #[test]
    fn a_json_schema_steers_the_tokens() {
        let (g, tokens) = grammars();
        let schema = r#"{"type":"object","properties":{"abc":{"type":"boolean"}},"required":["abc"],"additionalProperties":false}"#;
        let mut c = g.constraint(&Grammar::JsonSchema(schema.into())).unwrap();
        let first = allowed(&mut c);
        assert!(first.contains(&(b'{' as u32)) && !first.contains(&(b'x' as u32)));
        let text = br#"{"abc":true}"#;
        for &b in text {
            assert!(c.mask().unwrap().is_allowed(b as u32), "{}", b as char);
            c.consume(b as u32).unwrap();
        }
        let end = (tokens.len() - 1) as u32;
        assert!(c.is_done() || allowed(&mut c) == vec![end]);
        // Multi-byte tokens are allowed where their bytes fit.
        let mut c = g.constraint(&Grammar::JsonSchema(schema.into())).unwrap();
        let open = tokens.iter().position(|t| t == b"{\"").unwrap() as u32;
        assert!(c.mask().unwrap().is_allowed(open));
        c.consume(open).unwrap();
        let abc = tokens.iter().position(|t| t == b"abc").unwrap() as u32;
        assert!(c.mask().unwrap().is_allowed(abc));
        let null = tokens.iter().position(|t| t == b"null").unwrap() as u32;
        assert!(!c.mask().unwrap().is_allowed(null));
    }

    #[test]
    fn bad_grammars_are_clear_errors() {
        let (g, _) = grammars();
        for (grammar, needle) in [
            (Grammar::JsonSchema("{not json".into()), "not valid JSON"),
            (
                Grammar::Lark("start: foo".into()),
                "Lark grammar does not compile",
            ),
            (
                Grammar::Regex("(unclosed".into()),
                "regular expression does not compile",
            ),
        ] {
            let e = g.constraint(&grammar).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}
