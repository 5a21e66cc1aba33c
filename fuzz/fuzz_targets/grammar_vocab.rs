//! The token-bytes table handed to the engine for structured output
//! (`Engine.enable_grammars`, `constrain::Grammars::new`), then a grammar
//! compiled against it and a few masked steps.
//!
//! Input: byte 0 holds flags (bits 0-1: how many of the first tokens are
//! special, named by their own bytes; bits 2-3: which grammar; bits 4-6:
//! how many ids the model has past the table; bit 7: one id fewer than the
//! table, an error), byte 1 picks the end token, then tokens follow as
//! (length byte, bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyllm_core::constrain::{Grammar, Grammars};

const SCHEMA: &str = r#"{"type": "object", "properties": {"n": {"type": "integer"},
  "s": {"type": "string", "maxLength": 5}}, "required": ["n"]}"#;

fuzz_target!(|data: &[u8]| {
    let [flags, end, rest @ ..] = data else {
        return;
    };
    let mut tokens: Vec<Vec<u8>> = Vec::new();
    let mut rest = rest;
    while let [len, tail @ ..] = rest {
        let n = (*len as usize).min(tail.len());
        tokens.push(tail[..n].to_vec());
        rest = &tail[n..];
    }
    if tokens.is_empty() {
        return;
    }
    let n_special = (flags & 3) as usize;
    let specials: Vec<(u32, String)> = tokens
        .iter()
        .take(n_special)
        .enumerate()
        .map(|(i, t)| (i as u32, String::from_utf8_lossy(t).into_owned()))
        .collect();
    let mut vocab_size = tokens.len() + ((flags >> 4) & 7) as usize;
    if flags & 0x80 != 0 {
        vocab_size -= 1;
    }
    let ends = [*end as u32 % vocab_size.max(1) as u32];
    let grammars = match Grammars::new(vocab_size, &tokens, &specials, &ends) {
        Ok(g) => g,
        Err(e) => return tinyllm_fuzz::check_error(&e),
    };
    let grammar = match (flags >> 2) & 3 {
        0 => Grammar::JsonObject,
        1 => Grammar::Regex("(yes|no) [a-z]{1,5}!?".into()),
        2 => Grammar::JsonSchema(SCHEMA.into()),
        _ => Grammar::Lark(r#"start: /[a-c]+/ ("!" | "?")"#.into()),
    };
    let mut constraint = match grammars.constraint(&grammar) {
        Ok(c) => c,
        Err(e) => return tinyllm_fuzz::check_error(&e),
    };
    for _ in 0..8 {
        if constraint.is_done() {
            break;
        }
        let token = match constraint.mask() {
            Ok(mask) => {
                assert!(
                    mask.len() >= vocab_size,
                    "a mask shorter than the vocabulary"
                );
                // The last allowed token, so that text tokens are tried
                // before the end token (usually a low id) ends it.
                match mask.to_list().last() {
                    Some(&t) => t,
                    None => break,
                }
            }
            Err(e) => {
                tinyllm_fuzz::check_error(&e);
                break;
            }
        };
        if let Err(e) = constraint.consume(token) {
            tinyllm_fuzz::check_error(&e);
            break;
        }
    }
});
