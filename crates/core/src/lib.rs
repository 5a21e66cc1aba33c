//! tinyllm's engine: Llama-family transformers on the CPU, in pure Rust.
//!
//! - [`Model`] opens a model file (memory-mapped, checked against its length);
//! - [`Tokenizer`] turns text into token ids and back;
//! - [`Session`] holds the running state (KV cache, scratch, threads) and runs
//!   the forward pass;
//! - [`Generation`] samples tokens from a session and streams their text.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tinyllm_core::{GenerateConfig, Generation, Model, SamplerConfig, Session, Tokenizer};
//!
//! let model = Arc::new(Model::open("stories260K.bin")?);
//! let tok = Tokenizer::open("tok512.bin".as_ref())?;
//! let mut session = Session::new(model, &Default::default())?;
//! let config = GenerateConfig {
//!     max_tokens: 64,
//!     sampler: SamplerConfig { temperature: 0.0, ..Default::default() },
//!     stop: vec![],
//!     ..Default::default()
//! };
//! let prompt = tok.encode("Once upon a time", true);
//! let text = Generation::new(&mut session, &prompt, &config)?.run(&mut session, &tok)?;
//! println!("{text}");
//! # Ok::<(), tinyllm_core::Error>(())
//! ```

pub mod batch;
pub mod config;
pub mod constrain;
pub mod convert;
pub mod cpu;
pub mod error;
pub mod format;
pub mod forward;
pub mod generate;
pub mod gpu;
pub mod kernels;
pub mod kv_cache;
pub mod machine;
pub mod model;
pub mod models;
pub mod pool;
pub mod quant;
pub mod sampler;
pub mod session;
pub mod tokenizer;
pub mod weights;

pub use batch::{BatchOptions, Batcher, Engine, Job, Request, Ticket};
pub use config::Config;
pub use error::{Error, Result};
pub use generate::{
    FinishReason, GenerateConfig, Generation, Stats, Step, TextStream, TokenLogprob,
};
pub use kv_cache::KvType;
pub use model::Model;
pub use sampler::{Sampler, SamplerConfig};
pub use session::{Session, SessionOptions};
pub use tokenizer::Tokenizer;
