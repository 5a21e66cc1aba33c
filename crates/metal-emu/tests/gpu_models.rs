//! Whole models through the GPU backend, run by the emulator: the same
//! kernel sequence, buffers and arguments a Mac runs, checked against
//! run.c's story and against the CPU device on every weight type.

use std::path::PathBuf;
use std::sync::Arc;
use tinyllm_core::batch::{BatchOptions, Batcher, Job, Request};
use tinyllm_core::convert::{Extras, Recipe, convert};
use tinyllm_core::forward::EngineDevice;
use tinyllm_core::gpu::GpuDevice;
use tinyllm_core::kv_cache::KvType;
use tinyllm_core::pool::ThreadPool;
use tinyllm_core::{
    Error, GenerateConfig, Generation, Model, SamplerConfig, Session, SessionOptions, Tokenizer,
};
use tinyllm_metal_emu::Emulator;

/// GPU logits against the CPU's float path over the same weight values,
/// relative to the largest logit: the two sum in other orders, and Metal's
/// fast math (the emulator's exact math here) differs a little more.
const LOGIT_TOL: f32 = 1e-5;

/// The shared test data: `$TINYLLM_SHARED_MODELS`, else `../shared/models`
/// beside the checkout.
fn model_path(name: &str) -> PathBuf {
    match std::env::var("TINYLLM_SHARED_MODELS") {
        Ok(dir) => PathBuf::from(dir).join(name),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/models")
            .join(name),
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn gpu(model: &Arc<Model>, max_batch: usize, kv: KvType) -> Box<dyn EngineDevice> {
    let context = model.config.seq_len;
    let dev = GpuDevice::new(model.clone(), Emulator::new(), max_batch, context, kv).unwrap();
    Box::new(dev)
}

fn options(max_batch: usize, kv: KvType) -> SessionOptions {
    SessionOptions {
        n_threads: Some(2),
        max_batch: Some(max_batch),
        kv_cache: kv,
        ..Default::default()
    }
}

fn greedy(max_tokens: usize, stop: &[u32]) -> GenerateConfig {
    GenerateConfig {
        max_tokens,
        sampler: SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        },
        stop: vec![],
        stop_ids: stop.to_vec(),
        logprobs: None,
    }
}

#[test]
fn stories260k_tells_run_c_s_greedy_story() {
    let want = std::fs::read_to_string(model_path("stories260K.greedy256.txt")).unwrap();
    let model = Arc::new(Model::open(model_path("stories260K.bin")).unwrap());
    let tok = Tokenizer::open(&model_path("tok512.bin")).unwrap();
    let opts = options(16, KvType::F16);
    let mut s = Session::with_device(model.clone(), &opts, gpu(&model, 16, KvType::F16)).unwrap();
    let config = greedy(256, &GenerateConfig::LLAMA2C_STOP_IDS);
    let text = Generation::new(&mut s, &[1], &config)
        .unwrap()
        .run(&mut s, &tok)
        .unwrap();
    assert_eq!(text + "\n", want);
}

/// The logits of a prompt (every row) and of a few tokens decoded after
/// it, on the CPU and on the emulated GPU.
fn logits(model: &Arc<Model>, on_gpu: bool, tokens: &[u32]) -> Vec<Vec<f32>> {
    let opts = options(16, KvType::F32);
    let mut s = if on_gpu {
        Session::with_device(model.clone(), &opts, gpu(model, 16, KvType::F32)).unwrap()
    } else {
        Session::new(model.clone(), &opts).unwrap()
    };
    let (prompt, rest) = tokens.split_at(tokens.len() - 3);
    let vocab = model.config.vocab_size;
    let mut all = vec![0f32; prompt.len() * vocab];
    s.feed_all_logits(prompt, &mut all).unwrap();
    let mut rows: Vec<Vec<f32>> = all.chunks(vocab).map(|r| r.to_vec()).collect();
    for &t in rest {
        s.feed(&[t]).unwrap();
        rows.push(s.logits().to_vec());
    }
    rows
}

/// `model` with every matrix dequantized to f32, as a tinyllm file in the
/// temporary directory: the CPU's float path over it is the reference of a
/// quantized model's GPU products (the CPU's own quantized products round
/// their activations to 8 bits; the GPU's keep them in f32).
fn dequantized(model: &Model, name: &str) -> Arc<Model> {
    let dir = std::env::temp_dir().join(format!("tinyllm-gpu-models-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dst = dir.join(format!("{name}.f32.tllm"));
    let extras = Extras {
        tokenizer: None,
        chat_template: None,
        source: serde_json::json!({"test": "gpu_models"}),
    };
    let pool = ThreadPool::new(2);
    let f32 = Recipe::parse("f32").unwrap();
    convert(model, extras, &dst, f32, &pool, &mut |_, _, _| Ok(())).unwrap();
    let m = Arc::new(Model::open(&dst).unwrap());
    std::fs::remove_file(&dst).unwrap();
    m
}

#[test]
fn logits_of_every_weight_type_match_the_cpu_over_the_same_values() {
    // (file, opened as stored or with q4_0/q8_0 rows interleaved in fours).
    let cases = [
        (model_path("stories260K.bin"), false),
        (fixture("gguf/stories260K-F16.gguf"), false),
        (fixture("gguf/stories260K-BF16.gguf"), false),
        (fixture("gguf/stories260K-Q8_0.gguf"), true),
        (fixture("gguf/stories260K-Q8_0.gguf"), false),
        (fixture("gguf/stories260K-Q4_0.gguf"), true),
        (fixture("gguf/stories260K-Q4_0.gguf"), false),
        (fixture("gguf/stories260K-Q4_1.gguf"), false),
        (fixture("gguf/kquant-q4_k.gguf"), false),
        (fixture("gguf/kquant-q6_k.gguf"), false),
    ];
    // Nine prompt tokens take the prompt kernel (more than `matvec`'s
    // eight), the three after them the decoding one.
    let tokens = [1u32, 403, 407, 261, 378, 11, 261, 409, 460, 301, 300, 376];
    for (path, stored) in cases {
        let model = Arc::new(match stored {
            true => Model::open_as_stored(&path).unwrap(),
            false => Model::open(&path).unwrap(),
        });
        let types: Vec<_> = model.weights.layers[0]
            .matrices()
            .iter()
            .map(|(_, m)| m.dtype)
            .collect();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let reference = dequantized(&model, &name);
        let vocab = model.config.vocab_size;
        let tokens: Vec<u32> = tokens.iter().map(|&t| t % vocab as u32).collect();
        let cpu = logits(&reference, false, &tokens);
        let gpu = logits(&model, true, &tokens);
        for (i, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
            let scale = c.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = c
                .iter()
                .zip(g)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= LOGIT_TOL * scale,
                "{} ({types:?}, as stored {stored}): row {i}: logits differ by {worst} \
                 (largest {scale})",
                path.display()
            );
        }
    }
}

#[test]
fn a_batch_of_sequences_decodes_as_each_alone() {
    let model = Arc::new(Model::open(model_path("stories260K.bin")).unwrap());
    let tok = Arc::new(Tokenizer::open(&model_path("tok512.bin")).unwrap());
    let prompts = [
        "Once upon a time",
        "The dog ran to the park and saw a big",
        "Lily",
    ];
    let prompts: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(p, true)).collect();
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let opts = options(16, KvType::F16);
            let dev = gpu(&model, 16, KvType::F16);
            let mut s = Session::with_device(model.clone(), &opts, dev).unwrap();
            let mut g = Generation::new(&mut s, p, &greedy(24, &[])).unwrap();
            g.run(&mut s, tok.as_ref()).unwrap();
            g.generated().to_vec()
        })
        .collect();
    let options = BatchOptions {
        session: options(16, KvType::F16),
        max_sequences: Some(3),
    };
    let dev = gpu(&model, 16, KvType::F16);
    let mut b = Batcher::with_device(model.clone(), &options, dev).unwrap();
    let tickets: Vec<_> = prompts
        .iter()
        .map(|p| {
            let r = Request::new(Job::Generate {
                prompt: p.clone(),
                config: greedy(24, &[]),
                detok: tok.clone(),
                constraint: None,
            });
            let t = r.ticket.clone();
            b.submit(r);
            t
        })
        .collect();
    b.run();
    for (i, t) in tickets.iter().enumerate() {
        let s = t.lock();
        assert!(s.done && s.error.is_none(), "{:?}", s.error);
        assert_eq!(s.generated, alone[i], "sequence {i}");
    }
}

#[test]
fn what_the_gpu_cannot_run_is_a_clear_error() {
    // llama2.c's int8 groups have no GPU kernel.
    let q80 = fixture("stories260K_q80.bin");
    let model = Arc::new(Model::open(&q80).unwrap());
    let err = GpuDevice::new(model, Emulator::new(), 8, 64, KvType::F16).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(err.to_string().contains("no GPU kernel"), "{err}");
    // The GPU's cache holds f16 or f32.
    let model = Arc::new(Model::open(model_path("stories260K.bin")).unwrap());
    let err = GpuDevice::new(model, Emulator::new(), 8, 64, KvType::Q8_0).unwrap_err();
    assert!(err.to_string().contains("q8_0"), "{err}");
}
