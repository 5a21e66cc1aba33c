//! A tinyllm file (docs/FORMAT.md): header JSON, tensor index, embedded
//! tokenizer, quantized tensors; then a forward pass of what opened.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tinyllm_fuzz::write_files(&[("model.tllm", data)]);
    tinyllm_fuzz::open_and_run(&dir.join("model.tllm"));
});
