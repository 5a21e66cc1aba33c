//! A Hugging Face model directory. The input is split at the separator
//! (`tinyllm_fuzz::FILE_SEPARATOR`) into files: `config.json`, then either
//! one `model.safetensors`, or `model.safetensors.index.json` and the shards
//! `model-0000k-of-0000n.safetensors`. Then a forward pass of what opened.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts = tinyllm_fuzz::split_files(data);
    let mut names: Vec<String> = vec!["config.json".into()];
    match parts.len() {
        1 => {}
        2 => names.push("model.safetensors".into()),
        n => {
            names.push("model.safetensors.index.json".into());
            let shards = n - 2;
            names.extend((1..=shards).map(|k| format!("model-{k:05}-of-{shards:05}.safetensors")));
        }
    }
    let files: Vec<(&str, &[u8])> = names.iter().map(String::as_str).zip(parts).collect();
    let dir = tinyllm_fuzz::write_files(&files);
    tinyllm_fuzz::open_and_run(dir);
});
