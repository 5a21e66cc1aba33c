//! llama2.c model files (legacy, version 1 and version 2 headers), then a
//! forward pass of what opened.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tinyllm_fuzz::write_files(&[("model.bin", data)]);
    tinyllm_fuzz::open_and_run(&dir.join("model.bin"));
});
