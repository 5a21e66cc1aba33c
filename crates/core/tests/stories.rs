//! The engine against run.c's own output on the real stories260K model.

mod common;

use common::model_path;
use std::sync::Arc;
use tinyllm_core::weights::DType;
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

#[test]
fn gguf_q4_0_and_q8_0_rows_interleaved_at_load_compute_what_the_file_holds() {
    // The four-row groups hold the same blocks: the same products, only
    // read in another order.
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf");
    for (name, plain, grouped) in [
        ("stories260K-Q4_0.gguf", DType::Q4_0, DType::Q4_0x4),
        ("stories260K-Q8_0.gguf", DType::Q8_0, DType::Q8_0x4),
    ] {
        let path = fixtures.join(name);
        let stored = Arc::new(Model::open_as_stored(&path).unwrap());
        let packed = Arc::new(Model::open(&path).unwrap());
        assert_eq!(stored.weights.layers[0].wq.dtype, plain, "{name}");
        assert_eq!(packed.weights.layers[0].wq.dtype, grouped, "{name}");
        assert_eq!(stored.weights.owned_bytes(), 0);
        assert!(packed.weights.owned_bytes() > 0);
        let tok = Tokenizer::open(&model_path("tok512.bin")).unwrap();
        let ids = tok.encode(
            "Once upon a time, there was a little girl named Lily.",
            true,
        );
        let logits = |m: Arc<Model>| {
            let mut s = Session::new(m, &SessionOptions::default()).unwrap();
            let mut out = vec![0.0; ids.len() * 512];
            s.feed_all_logits(&ids, &mut out).unwrap();
            out
        };
        let (a, b) = (logits(stored), logits(packed));
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(worst <= 1e-5 * scale, "{name}: {worst} of {scale}");
    }
}
