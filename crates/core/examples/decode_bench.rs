//! Decoding speed of one sequence through `Session` (no scheduler thread)
//! and of N sequences through a `Batcher`, on a model file:
//!
//!     cargo run --release --example decode_bench -- MODEL [N...]

use std::sync::Arc;
use std::time::Instant;
use tinyllm_core::batch::{BatchOptions, Batcher, Job, Request};
use tinyllm_core::tokenizer::PieceTable;
use tinyllm_core::{GenerateConfig, Model, SamplerConfig, Session, SessionOptions};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = Arc::new(Model::open(&args[0]).expect("a model file"));
    let counts: Vec<usize> = args[1..].iter().map(|a| a.parse().unwrap()).collect();
    let opts = SessionOptions {
        n_threads: Some(2),
        ..Default::default()
    };
    let mut s = Session::new(model.clone(), &opts).unwrap();
    for _ in 0..3 {
        s.reset();
        s.feed(&[1]).unwrap();
        let t = Instant::now();
        for i in 0..256u32 {
            s.feed(&[3 + i % 100]).unwrap();
        }
        println!("session: {:.1} tok/s", 256.0 / t.elapsed().as_secs_f64());
    }
    let vocab = model.config.vocab_size;
    let detok = Arc::new(PieceTable::new(vec![Vec::new(); vocab], false, None));
    for &n in &counts {
        let options = BatchOptions {
            session: opts.clone(),
            max_sequences: Some(n.max(1)),
        };
        let mut b = Batcher::new(model.clone(), &options).unwrap();
        for _ in 0..2 {
            let tickets: Vec<_> = (0..n)
                .map(|i| {
                    let r = Request::new(Job::Generate {
                        prompt: vec![1, 3 + i as u32],
                        config: GenerateConfig {
                            max_tokens: 128,
                            sampler: SamplerConfig {
                                temperature: 0.0,
                                ..Default::default()
                            },
                            stop: vec![],
                            stop_ids: vec![],
                            logprobs: None,
                        },
                        detok: detok.clone(),
                        constraint: None,
                    });
                    let t = r.ticket.clone();
                    b.submit(r);
                    t
                })
                .collect();
            let t = Instant::now();
            b.run();
            let secs = t.elapsed().as_secs_f64();
            let tokens: usize = tickets.iter().map(|t| t.lock().generated.len()).sum();
            println!("batcher x{n}: {:.1} tok/s", tokens as f64 / secs);
        }
    }
}
