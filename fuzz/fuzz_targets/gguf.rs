//! A GGUF model file: header, metadata, tensor infos and every quant type's
//! blocks, through `Model::open`, then a forward pass of what opened.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tinyllm_fuzz::write_files(&[("model.gguf", data)]);
    tinyllm_fuzz::open_and_run(&dir.join("model.gguf"));
});
