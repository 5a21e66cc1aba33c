//! GGUF's header, metadata (vocabularies included) and tensor infos, parsed
//! from bytes with no file: fast, so it goes deeper into the metadata than
//! the `gguf` target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tinyllm_core::format::gguf;

fuzz_target!(|data: &[u8]| {
    match gguf::parse(Path::new("fuzz.gguf"), data) {
        Ok(g) => {
            for key in [
                "general.architecture",
                "tokenizer.ggml.tokens",
                "llama.context_length",
            ] {
                if let Some(v) = g.get(key) {
                    let _ = (v.as_u64(), v.as_f64(), v.as_str());
                }
            }
        }
        Err(e) => tinyllm_fuzz::check_error(&e),
    }
});
