//! llama2.c's `tokenizer.bin`, parsed from bytes; an accepted vocabulary
//! then encodes and decodes fixed texts and the input's own tail.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tinyllm_core::Tokenizer;

fuzz_target!(|data: &[u8]| {
    match Tokenizer::parse(Path::new("tokenizer.bin"), data) {
        Ok(tok) => tinyllm_fuzz::run_tokenizer(&tok, &data[data.len().saturating_sub(48)..]),
        Err(e) => tinyllm_fuzz::check_error(&e),
    }
});
