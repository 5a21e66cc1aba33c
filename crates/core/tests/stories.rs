//! The engine against run.c's own output on the real stories260K model.

mod common;

use common::model_path;
use std::sync::Arc;
use tinyllm_core::{GenerateConfig, Generation, Model, Session, SessionOptions, Tokenizer};

/// Greedy decoding that ends where run.c's does (BOS or EOS).
fn greedy(max_tokens: usize) -> GenerateConfig {
    common::greedy(max_tokens, &GenerateConfig::LLAMA2C_STOP_IDS)
}

fn open(n_threads: usize, max_batch: usize) -> (Session, Tokenizer) {
    let model = Arc::new(Model::open(model_path("stories260K.bin")).unwrap());
    let tok = Tokenizer::open(&model_path("tok512.bin")).unwrap();
    let opts = SessionOptions {
        n_threads: Some(n_threads),
        max_batch: Some(max_batch),
        ..Default::default()
    };
    (Session::new(model, &opts).unwrap(), tok)
}

#[test]
fn greedy_story_equals_run_c_byte_for_byte() {
    let want = std::fs::read_to_string(model_path("stories260K.greedy256.txt")).unwrap();
    for threads in [1, 2, 3] {
        let (mut s, tok) = open(threads, 64);
        let text = Generation::new(&mut s, &[1], &greedy(256))
            .unwrap()
            .run(&mut s, &tok)
            .unwrap();
        assert_eq!(text + "\n", want, "{threads} threads");
    }
}

#[test]
fn greedy_continuation_of_a_prompt_matches_run_c() {
    let (mut s, tok) = open(2, 7);
    let prompt = tok.encode("Once upon a time, a little dog", true);
    let text = Generation::new(&mut s, &prompt, &greedy(40))
        .unwrap()
        .run(&mut s, &tok)
        .unwrap();
    assert!(
        text.starts_with(
            " named Max was very excited. He loved to play with his toys and run around the house."
        ),
        "{text:?}"
    );
}

#[test]
fn the_gguf_file_tells_run_c_s_story_too() {
    // llama.cpp's conversion of the same weights: its greedy story, decoded
    // with the llama2.c vocabulary, is run.c's byte for byte.
    let want = std::fs::read_to_string(model_path("stories260K.greedy256.txt")).unwrap();
    let model = Arc::new(Model::open(model_path("stories260K.gguf")).unwrap());
    assert_eq!(model.kind, tinyllm_core::format::FileKind::Gguf);
    assert_eq!(model.config.vocab_size, 512);
    assert_eq!(model.config.hidden_dim, 172);
    let tok = Tokenizer::open(&model_path("tok512.bin")).unwrap();
    let mut s = Session::new(model, &SessionOptions::default()).unwrap();
    let text = Generation::new(&mut s, &[1], &greedy(256))
        .unwrap()
        .run(&mut s, &tok)
        .unwrap();
    assert_eq!(text + "\n", want);
}
