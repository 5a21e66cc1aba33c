//! Converting llama2.c models to tinyllm files, and reading those back.

mod common;

use common::{model_path, temp_dir};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tinyllm_core::convert::{Extras, Recipe, TokenizerData, convert};
use tinyllm_core::pool::ThreadPool;
use tinyllm_core::{
    Error, GenerateConfig, Generation, Model, SamplerConfig, Session, SessionOptions, Tokenizer,
};

fn stories() -> (Model, Tokenizer) {
    let m = Model::open(model_path("stories260K.bin")).unwrap();
    let t = Tokenizer::open(&model_path("tok512.bin")).unwrap();
    (m, t)
}

fn convert_to(dir: &Path, recipe: &str) -> PathBuf {
    let (m, t) = stories();
    let dst = dir.join(format!("stories260K-{recipe}.tllm"));
    let pool = ThreadPool::new(2);
    let extras = Extras {
        tokenizer: Some(TokenizerData::Llama2c(&t)),
        chat_template: None,
        source: serde_json::json!({"test": true}),
    };
    let report = convert(
        &m,
        extras,
        &dst,
        Recipe::parse(recipe).unwrap(),
        &pool,
        &mut |_, _, _| Ok(()),
    )
    .unwrap();
    assert_eq!(report.file_bytes, std::fs::metadata(&dst).unwrap().len());
    dst
}

fn session(path: &Path) -> Session {
    let model = Arc::new(Model::open(path).unwrap());
    Session::new(
        model,
        &SessionOptions {
            n_threads: Some(2),
            ..Default::default()
        },
    )
    .unwrap()
}

/// Logits of every position of the reference story.
fn story_logits(path: &Path) -> (Vec<f32>, usize) {
    let (_, tok) = stories();
    let text = std::fs::read_to_string(model_path("stories260K.greedy256.txt")).unwrap();
    let ids = tok.encode(&text, true);
    let mut s = session(path);
    let mut out = vec![0.0; ids.len() * 512];
    s.logits_of(&ids, &mut out).unwrap();
    (out, ids.len())
}

/// Mean KL divergence (reference || candidate) of the next-token
/// distributions, and the fraction of positions whose top token agrees.
fn kl_and_top1(reference: &[f32], candidate: &[f32], vocab: usize) -> (f64, f64) {
    let softmax = |row: &[f32]| {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.into_iter().map(|v| v / s).collect::<Vec<f64>>()
    };
    let argmax = |row: &[f32]| {
        (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap()
    };
    let (mut kl, mut same, mut n) = (0.0, 0usize, 0usize);
    for (r, c) in reference.chunks(vocab).zip(candidate.chunks(vocab)) {
        let (p, q) = (softmax(r), softmax(c));
        kl += p
            .iter()
            .zip(&q)
            .map(|(&a, &b)| if a > 0.0 { a * (a / b).ln() } else { 0.0 })
            .sum::<f64>();
        same += usize::from(argmax(r) == argmax(c));
        n += 1;
    }
    (kl / n as f64, same as f64 / n as f64)
}

#[test]
fn an_f32_tinyllm_file_tells_the_reference_story() {
    let dir = temp_dir("convert-f32");
    let path = convert_to(&dir, "f32");
    let model = Model::open(&path).unwrap();
    let tok = model
        .tokenizer
        .clone()
        .expect("the file carries its tokenizer");
    let (_, original) = stories();
    let text = std::fs::read_to_string(model_path("stories260K.greedy256.txt")).unwrap();
    assert_eq!(tok.encode(&text, true), original.encode(&text, true));
    let mut s = session(&path);
    let config = GenerateConfig {
        max_tokens: 256,
        sampler: SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        },
        stop: vec![],
        ..Default::default()
    };
    let got = Generation::new(&mut s, &[1], &config)
        .unwrap()
        .run(&mut s, &tok)
        .unwrap();
    assert_eq!(got + "\n", text);
    // and its logits are the .bin's exactly
    assert_eq!(
        story_logits(&path).0,
        story_logits(&model_path("stories260K.bin")).0
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn quantized_files_stay_close_to_f32() {
    let dir = temp_dir("convert-quant");
    let (reference, n) = story_logits(&model_path("stories260K.bin"));
    assert!(n > 200);
    // Named bounds on mean KL divergence over the story (measured values
    // are printed; the bounds leave about 2x headroom).
    for (recipe, max_kl, min_top1) in [
        ("f16", 1e-5, 0.99),
        ("bf16", 1e-4, 0.98),
        ("q8_0", 1e-3, 0.97),
        ("q4", 0.1, 0.85),
        ("q4_1", 0.07, 0.87),
        ("q4_mixed", 0.05, 0.87),
    ] {
        let path = convert_to(&dir, recipe);
        let (logits, _) = story_logits(&path);
        let (kl, top1) = kl_and_top1(&reference, &logits, 512);
        let bpw = {
            let m = Model::open(&path).unwrap();
            m.header.unwrap().quantization["bits_per_weight"]
                .as_f64()
                .unwrap()
        };
        println!(
            "{recipe:>9}: mean KL {kl:.5}, top-1 {:.1}%, {bpw:.2} bits/weight",
            top1 * 100.0
        );
        assert!(kl < max_kl, "{recipe}: KL {kl}");
        assert!(top1 > min_top1, "{recipe}: top-1 {top1}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn damaged_tinyllm_files_are_format_errors() {
    let dir = temp_dir("convert-damaged");
    let path = convert_to(&dir, "q4");
    let data = std::fs::read(&path).unwrap();
    let bad = dir.join("bad.tllm");
    let check = |bytes: &[u8], what: &str| {
        std::fs::write(&bad, bytes).unwrap();
        match Model::open(&bad) {
            Err(Error::Format { reason, .. }) => reason,
            Err(e) => panic!("{what}: {e}"),
            Ok(_) => panic!("{what}: opened"),
        }
    };
    let mut cuts: Vec<usize> = (0..200).collect();
    cuts.extend((1..50).map(|i| i * data.len() / 50));
    cuts.push(data.len() - 1);
    for cut in cuts {
        check(&data[..cut], &format!("cut at {cut}"));
    }
    let mut longer = data.clone();
    longer.extend([0; 64]);
    assert!(check(&longer, "trailing").contains("trailing"));
    let mut v2 = data.clone();
    v2[4] = 2;
    assert!(check(&v2, "version").contains("version 2"));
    // Damage the JSON: the architecture, a dtype, an offset, a missing tensor.
    let header_len = u64::from_le_bytes(data[8..16].try_into().unwrap()) as usize;
    let json = String::from_utf8(data[16..16 + header_len].to_vec()).unwrap();
    let with = |from: &str, to: &str| {
        assert!(json.contains(from), "{from}");
        let j = json.replacen(from, to, 1);
        let mut b = data.clone();
        // Same length keeps the data where it was; pad with spaces if shorter.
        let mut jb = j.into_bytes();
        assert!(
            jb.len() <= header_len,
            "{from} -> {to} must not grow the header"
        );
        jb.resize(header_len, b' ');
        b[16..16 + header_len].copy_from_slice(&jb);
        b
    };
    assert!(
        check(&with("\"llama\"", "\"gpt2x\""), "arch").contains("unknown architecture 'gpt2x'")
    );
    assert!(
        check(
            &with("\"dtype\":\"q4_0x4\"", "\"dtype\":\"q9_9x4\""),
            "dtype"
        )
        .contains("invalid")
    );
    assert!(
        check(&with("\"blk.0.attn_q\"", "\"blk.0.attn_z\""), "missing")
            .contains("'blk.0.attn_q' is missing")
    );
    assert!(
        check(&with("\"architecture\"", "\"architektur\""), "json")
            .contains("JSON header is invalid")
    );
    let _ = std::fs::remove_dir_all(dir);
}
