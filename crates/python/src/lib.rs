//! The `tinyllm._tinyllm` extension module: a thin layer that turns the
//! engine's types into Python ones.
//!
//! Arguments are converted to Rust values first; the forward pass then runs
//! with the GIL released, and signals (Ctrl-C) are checked between prompt
//! batches and between tokens, so an interrupt surfaces as
//! `KeyboardInterrupt` and leaves the model usable. Every engine error is
//! mapped to a Python exception in one place, [`to_py_err`].

use numpy::{PyArray1, PyArrayMethods};
use pyo3::exceptions::{
    PyFileNotFoundError, PyIsADirectoryError, PyOSError, PyPermissionError, PyRuntimeError,
    PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tinyllm_core::constrain::{Grammar, Grammars};
use tinyllm_core::convert::{Extras, Recipe, TokenizerData, convert as convert_model};
use tinyllm_core::format::gguf::{self, Value as GgufValue};
use tinyllm_core::format::tinyllm::TokenizerInfo;
use tinyllm_core::generate::{GenerateConfig, Generation};
use tinyllm_core::kv_cache::{KvType, PAGE};
use tinyllm_core::pool::ThreadPool;
use tinyllm_core::session::DeviceKind;
use tinyllm_core::tokenizer::{Detokenize, PieceTable};
use tinyllm_core::{
    BatchOptions, Engine as CoreEngine, Error, Job, Model, Request, SamplerConfig, SessionOptions,
    Ticket, Tokenizer,
};

// The exception classes are defined in Python (`tinyllm/_errors.py`, under
// `tinyllm.TinyLLMError`) and imported once, on first use.
pyo3::import_exception!(tinyllm._errors, ModelFormatError);
pyo3::import_exception!(tinyllm._errors, ContextLengthError);
pyo3::import_exception!(tinyllm._errors, NonFiniteError);

/// Maps an engine error to the Python exception a user expects.
fn to_py_err(e: Error) -> PyErr {
    match e {
        Error::Io {
            ref path,
            ref source,
        } => {
            // Python's own form: (errno, strerror, filename).
            let text = source.to_string();
            let (errno, strerror) = match source.raw_os_error() {
                Some(n) => (
                    n,
                    text.split(" (os error").next().unwrap_or(&text).to_string(),
                ),
                None if source.kind() == std::io::ErrorKind::NotFound => (2, text), // ENOENT
                None => (0, text),
            };
            let args = (errno, strerror, path.display().to_string());
            match source.kind() {
                std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(args),
                std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(args),
                std::io::ErrorKind::IsADirectory => PyIsADirectoryError::new_err(args),
                _ => PyOSError::new_err(args),
            }
        }
        Error::Format { .. } => ModelFormatError::new_err(e.to_string()),
        Error::ContextLength { .. } => ContextLengthError::new_err(e.to_string()),
        Error::InvalidArgument(msg) => PyValueError::new_err(msg),
        Error::NonFinite { .. } => NonFiniteError::new_err(e.to_string()),
        Error::Gpu(_) => pyo3::exceptions::PyRuntimeError::new_err(e.to_string()),
    }
}

/// An engine on the Metal emulator (`device="metal-emulator"`): the GPU
/// backend's kernels run on the CPU, for tests on machines without a Mac.
#[cfg(feature = "metal-emulator")]
fn emulated_engine(model: Arc<Model>, options: &BatchOptions) -> Result<CoreEngine, Error> {
    let s = &options.session;
    let dev = tinyllm_core::gpu::GpuDevice::new(
        model.clone(),
        tinyllm_metal_emu::Emulator::new(),
        s.batch()?,
        s.context(&model)?,
        s.kv_cache,
    )?;
    CoreEngine::with_device(model, options, Box::new(dev))
}

#[cfg(not(feature = "metal-emulator"))]
fn emulated_engine(_: Arc<Model>, _: &BatchOptions) -> Result<CoreEngine, Error> {
    Err(Error::InvalidArgument(
        "device=\"metal-emulator\" is only in builds with the metal-emulator feature (make \
         install-test)"
            .into(),
    ))
}

/// The engine behind `tinyllm.Model`: a model shared by every thread that
/// calls it, a scheduler that decodes their requests together, and the
/// bytes of each token for streaming text (llama2.c's tokenizer, or a table
/// that Python hands over for the other vocabularies).
#[pyclass(module = "tinyllm._tinyllm", frozen)]
struct Engine {
    engine: CoreEngine,
    /// What streams text: llama2.c's tokenizer (`use_llama2c_tokenizer`) or
    /// the table given by `set_pieces`.
    detok: Mutex<Option<Arc<dyn Detokenize>>>,
    /// None when the tokenizer came from the model file itself.
    tokenizer_path: Mutex<Option<PathBuf>>,
    /// The vocabulary indexed for grammars (`enable_grammars`), once built.
    grammars: Mutex<Option<Arc<Grammars>>>,
}

/// How often a waiting call wakes to check for Ctrl-C.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

impl Engine {
    fn model(&self) -> &Arc<Model> {
        self.engine.model()
    }

    /// Runs a job that returns one row of `width` floats per token.
    fn rows<'py>(&self, py: Python<'py>, job: Job, width: usize) -> PyResult<Bound<'py, PyAny>> {
        let ticket = self.engine.submit(Request::new(job));
        let mut guard = Cancel(Some(ticket.clone()));
        loop {
            let out = py.detach(|| {
                let mut s = ticket.wait(SIGNAL_CHECK);
                if !s.done {
                    return None;
                }
                Some(match s.error.take() {
                    Some(e) => Err(e),
                    None => Ok(std::mem::take(&mut s.logits)),
                })
            });
            match out {
                None => py.check_signals()?,
                Some(r) => {
                    guard.0 = None;
                    let rows = r.map_err(to_py_err)?;
                    let n = rows.len() / width;
                    let arr = PyArray1::from_vec(py, rows);
                    return Ok(arr.reshape([n, width])?.into_any());
                }
            }
        }
    }
}

#[pymethods]
impl Engine {
    /// Opens a model (a file, or a Hugging Face directory). Text streams
    /// once a vocabulary is attached: `use_llama2c_tokenizer` or `set_pieces`.
    #[new]
    #[pyo3(signature = (path, *, n_threads=None, context_length=None, max_batch=None, max_sequences=None, kv_cache="f16", device="auto"))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn new(
        py: Python<'_>,
        path: PathBuf,
        n_threads: Option<usize>,
        context_length: Option<usize>,
        max_batch: Option<usize>,
        max_sequences: Option<usize>,
        kv_cache: &str,
        device: &str,
    ) -> PyResult<Self> {
        let kv_cache = KvType::from_name(kv_cache).map_err(to_py_err)?;
        let emulated = device == "metal-emulator";
        let device = match emulated {
            true => DeviceKind::Cpu,
            false => DeviceKind::from_name(device).map_err(to_py_err)?,
        };
        // The GPU reads every weight type as the file stores it, so the
        // CPU's rearranged copies would only cost memory; a model "auto"
        // leaves to the CPU is opened again (the file is mapped, not read).
        let model = py
            .detach(|| match device.uses_metal() || emulated {
                true => Model::open_as_stored(&path).and_then(|m| {
                    match emulated || device.resolve(&m, kv_cache) == DeviceKind::Metal {
                        true => Ok(m),
                        false => Model::open(&path),
                    }
                }),
                false => Model::open(&path),
            })
            .map_err(to_py_err)?;
        let options = BatchOptions {
            session: SessionOptions {
                n_threads,
                context_length,
                max_batch,
                kv_cache,
                device,
            },
            max_sequences,
        };
        let model = Arc::new(model);
        let engine = match emulated {
            true => emulated_engine(model, &options),
            false => CoreEngine::new(model, &options),
        }
        .map_err(to_py_err)?;
        Ok(Engine {
            engine,
            detok: Mutex::new(None),
            tokenizer_path: Mutex::new(None),
            grammars: Mutex::new(None),
        })
    }

    /// Attaches llama2.c's tokenizer: the file `path`, else the one the
    /// model file carries, else `tokenizer.bin` or `tok{vocab}.bin` beside
    /// the model. Returns it (shared) for encoding in Python.
    #[pyo3(signature = (path=None))]
    fn use_llama2c_tokenizer(
        &self,
        py: Python<'_>,
        path: Option<PathBuf>,
    ) -> PyResult<Llama2cTokenizer> {
        let model = self.model().clone();
        let (tok, tok_path) = py
            .detach(|| model.open_tokenizer(path.as_deref()))
            .map_err(to_py_err)?;
        let tok = Arc::new(tok);
        *lock(&self.detok) = Some(tok.clone());
        *lock(&self.tokenizer_path) = tok_path;
        Ok(Llama2cTokenizer { inner: tok })
    }

    /// Gives the text of every token (`pieces[id]`, empty for control
    /// tokens) for streaming; `strip_space_at_start` drops the leading space
    /// of a piece at the start of the text or right after `bos_id`.
    #[pyo3(signature = (pieces, strip_space_at_start, bos_id=None))]
    fn set_pieces(
        &self,
        pieces: Vec<Vec<u8>>,
        strip_space_at_start: bool,
        bos_id: Option<u32>,
    ) -> PyResult<()> {
        let vocab = self.model().config.vocab_size;
        if pieces.len() > vocab {
            return Err(ModelFormatError::new_err(format!(
                "the tokenizer has {} tokens but the model {} has a vocabulary of {vocab}",
                pieces.len(),
                self.model().path.display()
            )));
        }
        let mut pieces = pieces;
        // Models often pad the embedding past the vocabulary: those ids
        // add no text.
        pieces.resize(vocab, Vec::new());
        *lock(&self.detok) = Some(Arc::new(PieceTable::new(
            pieces,
            strip_space_at_start,
            bos_id,
        )));
        Ok(())
    }

    /// The `tokenizer.json` a tinyllm file carries, with its special ids
    /// (`type`, `bos_id`, `eos_id`, `add_bos`, `stop_ids`) as a JSON string;
    /// None if the file has no such tokenizer.
    fn embedded_tokenizer(&self) -> Option<(String, String)> {
        let m = self.model();
        let h = m.header.as_ref()?;
        let info = h.tokenizer.as_ref().filter(|t| t.kind == "hf")?;
        let t = h.tensors.iter().find(|t| t.name == "tokenizer.json")?;
        let bytes = m.weights.first_file();
        let start = tinyllm_core::format::tinyllm::data_start(bytes)? + t.offset;
        let json = std::str::from_utf8(bytes.get(start..start + t.nbytes)?).ok()?;
        Some((json.to_string(), serde_json::to_string(info).ok()?))
    }

    /// The model's dimensions, as a dict.
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.model().config;
        let d = PyDict::new(py);
        d.set_item("dim", c.dim)?;
        d.set_item("hidden_dim", c.hidden_dim)?;
        d.set_item("n_layers", c.n_layers)?;
        d.set_item("n_heads", c.n_heads)?;
        d.set_item("n_kv_heads", c.n_kv_heads)?;
        d.set_item("vocab_size", c.vocab_size)?;
        d.set_item("seq_len", c.seq_len)?;
        d.set_item("head_dim", c.head_dim)?;
        d.set_item("rope_theta", shortest(c.rope_theta))?;
        d.set_item("norm_eps", shortest(c.norm_eps))?;
        Ok(d)
    }

    /// Facts about the loaded model and the engine running it, as a dict.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let e = &self.engine;
        let m = self.model();
        let d = PyDict::new(py);
        d.set_item("path", m.path.display().to_string())?;
        let tok_path = lock(&self.tokenizer_path)
            .as_ref()
            .map(|p| p.display().to_string());
        d.set_item("tokenizer_path", tok_path)?;
        d.set_item("format", m.kind.describe())?;
        d.set_item("family", m.family.as_str())?;
        d.set_item(
            "chat_template",
            m.header.as_ref().and_then(|h| h.chat_template.clone()),
        )?;
        d.set_item("file_bytes", m.weights.file_size())?;
        d.set_item("repacked_bytes", m.weights.owned_bytes())?;
        d.set_item("bytes_per_token", m.weights.bytes_per_token())?;
        d.set_item("kv_cache", e.kv_type().name())?;
        d.set_item("kv_cache_bytes", e.kv_bytes())?;
        d.set_item("kv_bytes_per_token", e.page_bytes() / PAGE)?;
        d.set_item("buffer_bytes", e.buffer_bytes())?;
        d.set_item("context_length", e.context_length())?;
        d.set_item("max_sequences", e.max_sequences())?;
        d.set_item("active_sequences", e.active())?;
        d.set_item("n_threads", e.n_threads())?;
        d.set_item("max_batch", e.max_batch())?;
        d.set_item("isa", e.isa())?;
        d.set_item("device", e.device())?;
        let (parameters, weight_type) = weight_summary(&m.weights);
        d.set_item("parameters", parameters)?;
        d.set_item("weight_type", weight_type)?;
        Ok(d)
    }

    /// Logits of every position of `ids`, `(len(ids), vocab_size)` float32,
    /// computed from an empty KV cache.
    fn logits<'py>(&self, py: Python<'py>, ids: Vec<u32>) -> PyResult<Bound<'py, PyAny>> {
        let vocab = self.model().config.vocab_size;
        self.rows(py, Job::Logits { ids }, vocab)
    }

    /// The final hidden states (after the last norm) at every position of
    /// `ids`, `(len(ids), dim)` float32, from an empty KV cache.
    fn hidden<'py>(&self, py: Python<'py>, ids: Vec<u32>) -> PyResult<Bound<'py, PyAny>> {
        let dim = self.model().config.dim;
        self.rows(py, Job::Hidden { ids }, dim)
    }

    /// Starts generating after `prompt` (token ids); returns a `Stream` that
    /// yields the text as it decodes. `pin` keeps the finished sequence's
    /// cache for the next call with the same pin (until `unpin`).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (prompt, *, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, seed, stop, stop_ids=None, pin=None, presence_penalty=0.0, frequency_penalty=0.0, logit_bias=Vec::new(), logprobs=None, grammar=None))]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: Vec<u32>,
        max_tokens: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        min_p: f32,
        repeat_penalty: f32,
        seed: u64,
        stop: Vec<String>,
        stop_ids: Option<Vec<u32>>,
        pin: Option<u64>,
        presence_penalty: f32,
        frequency_penalty: f32,
        logit_bias: Vec<(u32, f32)>,
        logprobs: Option<usize>,
        grammar: Option<(String, String)>,
    ) -> PyResult<Stream> {
        let config = GenerateConfig {
            max_tokens,
            sampler: SamplerConfig {
                temperature,
                top_k,
                top_p,
                min_p,
                repeat_penalty,
                presence_penalty,
                frequency_penalty,
                logit_bias,
                seed,
                ..SamplerConfig::default()
            },
            stop,
            stop_ids: stop_ids.unwrap_or_else(|| GenerateConfig::LLAMA2C_STOP_IDS.to_vec()),
            logprobs,
        };
        let detok = lock(&self.detok).clone().ok_or_else(|| {
            PyRuntimeError::new_err(
                "the model has no tokenizer to stream text with (set_pieces was not called)",
            )
        })?;
        // Arguments are checked here, so a bad one raises at the call.
        let vocab = self.model().config.vocab_size;
        Generation::check(&prompt, vocab, &config).map_err(to_py_err)?;
        if prompt.len() > self.engine.context_length() {
            return Err(to_py_err(Error::ContextLength {
                tokens: prompt.len(),
                context: self.engine.context_length(),
            }));
        }
        let constraint = match grammar {
            None => None,
            Some((kind, text)) => {
                let grammar = match kind.as_str() {
                    "json_schema" => Grammar::JsonSchema(text),
                    "json_object" => Grammar::JsonObject,
                    "regex" => Grammar::Regex(text),
                    "lark" => Grammar::Lark(text),
                    _ => {
                        return Err(PyValueError::new_err(format!(
                            "unknown grammar kind {kind:?}: json_schema, json_object, regex or lark"
                        )));
                    }
                };
                let grammars = lock(&self.grammars).clone().ok_or_else(|| {
                    PyRuntimeError::new_err("grammars need enable_grammars() first")
                })?;
                let c = py
                    .detach(|| grammars.constraint(&grammar))
                    .map_err(to_py_err)?;
                Some(Box::new(c))
            }
        };
        let mut request = Request::new(Job::Generate {
            prompt,
            config,
            detok,
            constraint,
        });
        request.pin = pin;
        Ok(Stream {
            ticket: self.engine.submit(request),
            done: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
        })
    }

    /// Indexes the vocabulary for structured output: `tokens[i]` is the text
    /// of token `i`, `specials` the control tokens with their names, `ends`
    /// the tokens that end a generation. Done once; later calls do nothing.
    fn enable_grammars(
        &self,
        py: Python<'_>,
        tokens: Vec<Vec<u8>>,
        specials: Vec<(u32, String)>,
        ends: Vec<u32>,
    ) -> PyResult<()> {
        if lock(&self.grammars).is_some() {
            return Ok(());
        }
        let vocab = self.model().config.vocab_size;
        let built = py
            .detach(|| Grammars::new(vocab, &tokens, &specials, &ends))
            .map_err(to_py_err)?;
        lock(&self.grammars).get_or_insert(Arc::new(built));
        Ok(())
    }

    /// Forgets the caches that finished sequences left for later prompts.
    fn reset(&self) {
        self.engine.clear_cache();
    }

    /// Stops the engine thread and frees the device; requests still running
    /// fail with "the model was closed".
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.engine.close());
    }

    /// Lets the cache kept for `pin` go.
    fn unpin(&self, pin: u64) {
        self.engine.unpin(pin);
    }
}

/// Cancels a request if dropped while still set (the call was interrupted).
struct Cancel(Option<Arc<Ticket>>);

impl Drop for Cancel {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.cancel();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `(token, logprob, [(token, logprob), ...])`, as Python sees a record.
type LogprobRecord = (u32, f32, Vec<(u32, f32)>);

/// Text pieces of a generation, as they decode. Iterate it; afterwards
/// `finish_reason`, `stats` and `tokens` describe what happened. Dropping
/// it, `cancel()` or Ctrl-C while iterating stops the generation; other
/// generations on the same model go on.
#[pyclass(module = "tinyllm._tinyllm", frozen)]
struct Stream {
    ticket: Arc<Ticket>,
    /// Set once the caller has read the end.
    done: AtomicBool,
    /// Set when the caller stopped the stream before its end.
    cancelled: AtomicBool,
}

/// What one wait for a stream gave.
enum Next {
    Piece(String),
    End,
    Failed(Error),
    Nothing,
}

#[pymethods]
impl Stream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// `Stream(running, 12 tokens)`, or `Stream('stop', 40 tokens)` once read
    /// to its end.
    fn __repr__(&self) -> String {
        let n = self.ticket.lock().generated.len();
        let state = if self.cancelled.load(Ordering::SeqCst) {
            "cancelled".to_string()
        } else {
            match self.finish_reason() {
                Some(r) => format!("'{r}'"),
                None => "running".to_string(),
            }
        };
        let unit = if n == 1 { "token" } else { "tokens" };
        format!("Stream({state}, {n} {unit})")
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        if self.done.load(Ordering::SeqCst) {
            return Ok(None);
        }
        loop {
            let ticket = &self.ticket;
            let next = py.detach(|| {
                let mut s = ticket.wait(SIGNAL_CHECK);
                if let Some(p) = s.pieces.pop_front() {
                    Next::Piece(p)
                } else if let Some(e) = s.error.take() {
                    Next::Failed(e)
                } else if s.done {
                    Next::End
                } else {
                    Next::Nothing
                }
            });
            match next {
                Next::Piece(p) => return Ok(Some(p)),
                Next::End => {
                    self.done.store(true, Ordering::SeqCst);
                    return Ok(None);
                }
                Next::Failed(e) => {
                    self.done.store(true, Ordering::SeqCst);
                    return Err(to_py_err(e));
                }
                Next::Nothing => {
                    if let Err(e) = py.check_signals() {
                        self.cancel();
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Stops the generation; the stream then ends, with no finish reason
    /// (the tokens generated so far stay in `tokens`).
    fn cancel(&self) {
        if !self.done.swap(true, Ordering::SeqCst) {
            self.cancelled.store(true, Ordering::SeqCst);
        }
        self.ticket.cancel();
    }

    /// "stop" (end of text or a stop string), "length" (max_tokens or a full
    /// context), or None before the stream has been read to its end (or if
    /// it was cancelled).
    #[getter]
    fn finish_reason(&self) -> Option<&'static str> {
        if !self.done.load(Ordering::SeqCst) || self.cancelled.load(Ordering::SeqCst) {
            return None;
        }
        self.ticket.lock().finish_reason.map(|r| r.as_str())
    }

    /// The log-probability records that arrived since the last call, one per
    /// generated token: `(token, logprob, [(token, logprob), ...])` with the
    /// most likely tokens first (empty unless the call asked for logprobs).
    fn take_logprobs(&self) -> Vec<LogprobRecord> {
        let mut s = self.ticket.lock();
        s.logprobs
            .drain(..)
            .map(|r| (r.token, r.logprob, r.top))
            .collect()
    }

    /// The generated token ids so far.
    #[getter]
    fn tokens(&self) -> Vec<u32> {
        self.ticket.lock().generated.clone()
    }

    /// Token counts and times of the prompt and of the generation, as a dict.
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.ticket.lock().stats;
        let d = PyDict::new(py);
        d.set_item("prompt_tokens", s.prompt_tokens)?;
        d.set_item("reused_tokens", s.reused_tokens)?;
        d.set_item("prompt_seconds", s.prompt_time.as_secs_f64())?;
        d.set_item("generated_tokens", s.generated_tokens)?;
        d.set_item("generate_seconds", s.generate_time.as_secs_f64())?;
        if s.masks > 0 {
            d.set_item("grammar_masks", s.masks)?;
            d.set_item("grammar_mask_seconds", s.mask_time.as_secs_f64())?;
        }
        Ok(d)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // An abandoned stream frees its sequence for others.
        self.ticket.cancel();
    }
}

/// Converts the model at `src` into a tinyllm file at `dst` with the recipe
/// `quant`; calls `progress(done, total, tensor_name)` as it goes. Returns
/// what was written.
///
/// The file carries llama2.c's tokenizer (`tokenizer`, or the model's own
/// or one beside it) unless `hf_tokenizer` is given: a `tokenizer.json`
/// text and a JSON object of its special ids (`bos_id`, `eos_id`,
/// `add_bos`, `stop_ids`). `chat_template` is stored in the header.
#[pyfunction]
#[pyo3(signature = (src, dst, quant, tokenizer=None, n_threads=None, progress=None, hf_tokenizer=None, chat_template=None))]
#[allow(clippy::too_many_arguments)]
fn convert<'py>(
    py: Python<'py>,
    src: PathBuf,
    dst: PathBuf,
    quant: &str,
    tokenizer: Option<PathBuf>,
    n_threads: Option<usize>,
    progress: Option<Bound<'py, PyAny>>,
    hf_tokenizer: Option<(String, String)>,
    chat_template: Option<String>,
) -> PyResult<Bound<'py, PyDict>> {
    let recipe = Recipe::parse(quant).map_err(to_py_err)?;
    let model = py.detach(|| Model::open(&src)).map_err(to_py_err)?;
    let llama2c = match hf_tokenizer {
        Some(_) => None,
        None => Some(
            model
                .open_tokenizer(tokenizer.as_deref())
                .map_err(to_py_err)?,
        ),
    };
    let tok_path = llama2c.as_ref().and_then(|(_, p)| p.clone());
    let hf = match &hf_tokenizer {
        None => None,
        Some((json, info)) => {
            let mut value: serde_json::Value = serde_json::from_str(info)
                .map_err(|e| PyValueError::new_err(format!("hf_tokenizer: {e}")))?;
            value["type"] = "hf".into();
            let info: TokenizerInfo = serde_json::from_value(value)
                .map_err(|e| PyValueError::new_err(format!("hf_tokenizer: {e}")))?;
            Some((json.as_str(), info))
        }
    };
    let tokenizer = match (&llama2c, hf) {
        (Some((t, _)), _) => Some(TokenizerData::Llama2c(t)),
        (None, Some((json, info))) => Some(TokenizerData::HuggingFace { json, info }),
        (None, None) => None,
    };
    let threads = n_threads.unwrap_or_else(tinyllm_core::machine::physical_cores);
    let pool = ThreadPool::new(threads.clamp(1, 1024));
    let source = serde_json::json!({
        "file": src.file_name().map(|n| n.to_string_lossy().into_owned()),
        "format": model.kind.describe(),
        "family": model.family,
        "tokenizer": tok_path.as_ref().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()),
    });
    let extras = Extras {
        tokenizer,
        chat_template,
        source,
    };
    let progress = progress.map(|p| p.unbind());
    // The callback's error (a KeyboardInterrupt, or one it raised) is kept
    // here while the engine unwinds the conversion.
    let mut failure: Option<PyErr> = None;
    let result = py.detach(|| {
        convert_model(
            &model,
            extras,
            &dst,
            recipe,
            &pool,
            &mut |done, total, name| {
                Python::attach(|py| {
                    let r = match &progress {
                        Some(cb) => cb.call1(py, (done, total, name)).map(|_| ()),
                        None => Ok(()),
                    };
                    r.and_then(|_| py.check_signals()).map_err(|e| {
                        failure = Some(e);
                        tinyllm_core::Error::InvalidArgument("conversion stopped".into())
                    })
                })
            },
        )
    });
    let report = match (result, failure) {
        (_, Some(e)) => return Err(e),
        (r, None) => r.map_err(to_py_err)?,
    };
    let d = PyDict::new(py);
    d.set_item("path", dst.display().to_string())?;
    d.set_item("quant", recipe.name())?;
    d.set_item("tensors", report.tensors)?;
    d.set_item("parameters", report.parameters)?;
    d.set_item("file_bytes", report.file_bytes)?;
    d.set_item("bits_per_weight", report.bits_per_weight())?;
    d.set_item("seconds", report.seconds)?;
    let dtypes = PyDict::new(py);
    for (k, v) in &report.dtypes {
        dtypes.set_item(*k, *v)?;
    }
    d.set_item("dtypes", dtypes)?;
    Ok(d)
}

/// How many weights a model has (its matrices and vectors), and the type
/// of its matrices that holds the most of them (`"q4_0"`, `"f32"`, ...).
fn weight_summary(w: &tinyllm_core::weights::Weights) -> (usize, &'static str) {
    let mut matrices = vec![&w.embedding];
    if w.classifier != w.embedding {
        matrices.push(&w.classifier);
    }
    let mut vectors = w.final_norm.len;
    for l in &w.layers {
        matrices.extend(l.matrices().into_iter().map(|(_, m)| m));
        vectors += l.vectors().iter().map(|(_, v)| v.len).sum::<usize>();
    }
    let mut by_type: Vec<(&'static str, usize)> = Vec::new();
    for m in &matrices {
        let n = m.rows * m.cols;
        match by_type.iter_mut().find(|(t, _)| *t == m.dtype.block_name()) {
            Some((_, count)) => *count += n,
            None => by_type.push((m.dtype.block_name(), n)),
        }
    }
    let total = by_type.iter().map(|(_, n)| n).sum::<usize>() + vectors;
    let main = by_type
        .iter()
        .max_by_key(|(_, n)| *n)
        .map_or("none", |(t, _)| t);
    (total, main)
}

/// What a model file holds: its format, dimensions and tensors (and, for a
/// tinyllm file, its header's provenance and quantization), as a dict.
#[pyfunction]
fn file_info<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let model = py.detach(|| Model::open(&path)).map_err(to_py_err)?;
    let w = &model.weights;
    let d = PyDict::new(py);
    d.set_item("path", path.display().to_string())?;
    d.set_item("format", model.kind.describe())?;
    d.set_item("family", model.family.as_str())?;
    d.set_item("file_bytes", w.file_size())?;
    d.set_item("bytes_per_token", w.bytes_per_token())?;
    d.set_item("has_tokenizer", model.tokenizer.is_some())?;
    let c = &model.config;
    let config = PyDict::new(py);
    for (k, v) in [
        ("dim", c.dim),
        ("hidden_dim", c.hidden_dim),
        ("n_layers", c.n_layers),
        ("n_heads", c.n_heads),
        ("n_kv_heads", c.n_kv_heads),
        ("vocab_size", c.vocab_size),
        ("seq_len", c.seq_len),
        ("head_dim", c.head_dim),
    ] {
        config.set_item(k, v)?;
    }
    config.set_item("rope_theta", shortest(c.rope_theta))?;
    config.set_item("norm_eps", shortest(c.norm_eps))?;
    d.set_item("config", config)?;
    let mut tensors: Vec<(String, &'static str, Vec<usize>, usize)> = Vec::new();
    let mut add = |name: String, m: &tinyllm_core::weights::MatrixDesc| {
        tensors.push((name, m.dtype.name(), vec![m.rows, m.cols], m.bytes()));
    };
    add("token_embd".into(), &w.embedding);
    for (i, l) in w.layers.iter().enumerate() {
        for (name, m) in l.matrices() {
            add(format!("blk.{i}.{name}"), m);
        }
    }
    if w.classifier != w.embedding {
        add("output".into(), &w.classifier);
    }
    d.set_item("tensors", tensors)?;
    if let Some(h) = &model.header {
        let json = pyo3::types::PyModule::import(py, "json")?;
        let loads = |v: &serde_json::Value| json.call_method1("loads", (v.to_string(),));
        d.set_item("source", loads(&h.source)?)?;
        d.set_item("quantization", loads(&h.quantization)?)?;
        d.set_item("chat_template", h.chat_template.clone())?;
    }
    Ok(d)
}

/// The metadata of the GGUF file at `path` as a dict (arrays as lists).
#[pyfunction]
fn gguf_metadata<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let g = py.detach(|| gguf::read(&path)).map_err(to_py_err)?;
    let d = PyDict::new(py);
    for (k, v) in &g.metadata {
        d.set_item(k, gguf_value(py, v)?)?;
    }
    Ok(d)
}

fn gguf_value<'py>(py: Python<'py>, v: &GgufValue) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        GgufValue::U8(x) => x.into_pyobject(py)?.into_any(),
        GgufValue::I8(x) => x.into_pyobject(py)?.into_any(),
        GgufValue::U16(x) => x.into_pyobject(py)?.into_any(),
        GgufValue::I16(x) => x.into_pyobject(py)?.into_any(),
        GgufValue::U32(x) => x.into_pyobject(py)?.into_any(),
        GgufValue::I32(x) => x.into_pyobject(py)?.into_any(),
        GgufValue::U64(x) => x.into_pyobject(py)?.into_any(),
        GgufValue::I64(x) => x.into_pyobject(py)?.into_any(),
        GgufValue::F32(x) => shortest(*x).into_pyobject(py)?.into_any(),
        GgufValue::F64(x) => x.into_pyobject(py)?.into_any(),
        GgufValue::Bool(x) => pyo3::types::PyBool::new(py, *x).to_owned().into_any(),
        GgufValue::String(x) => x.into_pyobject(py)?.into_any(),
        GgufValue::Array(items) => {
            let list = pyo3::types::PyList::empty(py);
            for item in items {
                list.append(gguf_value(py, item)?)?;
            }
            list.into_any()
        }
    })
}

/// llama2.c's tokenizer (`tokenizer.bin`): run.c's encoder and decoder.
#[pyclass(module = "tinyllm._tinyllm", frozen)]
struct Llama2cTokenizer {
    inner: Arc<Tokenizer>,
}

#[pymethods]
impl Llama2cTokenizer {
    /// Reads a llama2.c tokenizer file.
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = py.detach(|| Tokenizer::open(&path)).map_err(to_py_err)?;
        Ok(Llama2cTokenizer {
            inner: Arc::new(inner),
        })
    }

    /// Token ids of `text` (BOS first if `add_bos`), as run.c encodes.
    #[pyo3(signature = (text, add_bos=true))]
    fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        self.inner.encode(text, add_bos)
    }

    /// The text of `ids` (BOS and EOS give none).
    fn decode(&self, ids: Vec<u32>) -> PyResult<String> {
        let vocab = self.inner.vocab_size();
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(PyValueError::new_err(format!(
                "token id {bad} is out of range for a vocabulary of {vocab}"
            )));
        }
        Ok(self.inner.decode(&ids))
    }

    /// The stored bytes of token `id`.
    fn piece<'py>(&self, py: Python<'py>, id: u32) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        let p = self.inner.piece(id).ok_or_else(|| {
            PyValueError::new_err(format!(
                "token id {id} is out of range for a vocabulary of {}",
                self.inner.vocab_size()
            ))
        })?;
        Ok(pyo3::types::PyBytes::new(py, p))
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    #[getter]
    fn bos_id(&self) -> u32 {
        tinyllm_core::tokenizer::BOS
    }

    #[getter]
    fn eos_id(&self) -> u32 {
        tinyllm_core::tokenizer::EOS
    }
}

/// The f64 whose shortest decimal form is the f32's (1e-5, not 9.99999974e-6).
fn shortest(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}

/// Measures the memory read bandwidth (bytes per second): the best of
/// `reps` passes of `n_threads` threads (default: the physical cores)
/// streaming a buffer of `bytes` (default: four times the last-level cache,
/// 1 to 4 GiB), with nothing but loads.
#[pyfunction]
#[pyo3(signature = (n_threads=None, bytes=None, reps=5))]
fn read_bandwidth(
    py: Python<'_>,
    n_threads: Option<usize>,
    bytes: Option<usize>,
    reps: usize,
) -> f64 {
    let threads = n_threads.unwrap_or_else(tinyllm_core::machine::physical_cores);
    let pool = ThreadPool::new(threads.clamp(1, 1024));
    let bytes = bytes.unwrap_or_else(tinyllm_core::machine::read_buffer_bytes);
    py.detach(|| tinyllm_core::machine::read_bandwidth(&pool, bytes.min(1 << 34), reps))
}

/// The weight types whose decode products `kernel_bandwidth` times: every
/// one the CPU kernels run.
#[pyfunction]
fn kernel_weight_types() -> Vec<&'static str> {
    tinyllm_core::machine::KERNEL_TYPES
        .iter()
        .map(|d| d.name())
        .collect()
}

/// Times one decode kernel (a matrix times one vector) on the calling
/// thread with its weights in cache: a `weight_type` matrix of about
/// `bytes` (default: half the L2 cache), rows of `cols` weights, for about
/// `seconds`, with the kernels of tier `isa` (default: the engine's).
///
/// Returns a dict: `weight_type`, `isa`, `rows`, `cols`, `bytes` (of
/// weights per product), `gb_per_s` (of weights) and `error` (the largest
/// difference from the f64 product over the outputs' root mean square).
///
/// Raises:
///     ValueError: an unknown weight type, or a tier this CPU lacks.
#[pyfunction]
#[pyo3(signature = (weight_type, isa=None, bytes=None, cols=2048, seconds=0.2))]
fn kernel_bandwidth<'py>(
    py: Python<'py>,
    weight_type: &str,
    isa: Option<&str>,
    bytes: Option<usize>,
    cols: usize,
    seconds: f64,
) -> PyResult<Bound<'py, PyDict>> {
    use tinyllm_core::kernels::{Isa, Kernels};
    use tinyllm_core::machine;
    let dtype = *machine::KERNEL_TYPES
        .iter()
        .find(|d| d.name() == weight_type)
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "unknown weight type {weight_type:?} (one of {:?})",
                kernel_weight_types()
            ))
        })?;
    let kernels = match isa {
        None => Kernels::best(),
        Some(name) => Isa::from_name(name)
            .and_then(Kernels::for_isa)
            .ok_or_else(|| {
                PyValueError::new_err(format!("this CPU does not run kernel tier {name:?}"))
            })?,
    };
    if !(cols > 0 && cols <= 1 << 20 && seconds.is_finite() && seconds > 0.0) {
        return Err(PyValueError::new_err(
            "cols must be 1 to 2**20 and seconds positive",
        ));
    }
    let bytes = bytes
        .unwrap_or_else(|| machine::cache_bytes(2).map_or(256 << 10, |l2| l2 / 2))
        .min(1 << 30);
    let r = py.detach(|| machine::kernel_rate(kernels, dtype, bytes, cols, seconds.min(60.0)));
    let d = PyDict::new(py);
    d.set_item("weight_type", dtype.name())?;
    d.set_item("isa", kernels.isa().name())?;
    d.set_item("rows", r.rows)?;
    d.set_item("cols", r.cols)?;
    d.set_item("bytes", r.bytes)?;
    d.set_item("gb_per_s", r.bytes_per_second / 1e9)?;
    d.set_item("error", r.error)?;
    Ok(d)
}

/// The kernel tier the engine runs on: the fastest this CPU supports, or
/// the one `TINYLLM_ISA` names.
#[pyfunction]
fn isa() -> &'static str {
    tinyllm_core::kernels::Kernels::best().isa().name()
}

/// Whether this machine has a GPU the Metal backend runs on (a Mac with an
/// Apple GPU of family 7 or later), which `device="auto"` then picks.
#[pyfunction]
fn metal_available() -> bool {
    tinyllm_core::session::DeviceKind::metal_available()
}

/// The names of the kernel tiers this CPU runs, best last.
#[pyfunction]
fn available_isas() -> Vec<&'static str> {
    tinyllm_core::kernels::Isa::ALL
        .into_iter()
        .filter(|i| i.is_available())
        .map(|i| i.name())
        .collect()
}

#[pymodule]
fn _tinyllm(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Engine>()?;
    m.add_class::<Stream>()?;
    m.add_class::<Llama2cTokenizer>()?;
    m.add_function(wrap_pyfunction!(gguf_metadata, m)?)?;
    m.add_function(wrap_pyfunction!(available_isas, m)?)?;
    m.add_function(wrap_pyfunction!(metal_available, m)?)?;
    m.add_function(wrap_pyfunction!(isa, m)?)?;
    m.add_function(wrap_pyfunction!(convert, m)?)?;
    m.add_function(wrap_pyfunction!(file_info, m)?)?;
    m.add_function(wrap_pyfunction!(read_bandwidth, m)?)?;
    m.add_function(wrap_pyfunction!(kernel_weight_types, m)?)?;
    m.add_function(wrap_pyfunction!(kernel_bandwidth, m)?)?;
    // Re-exported, so `tinyllm._tinyllm.ModelFormatError` is still the class.
    m.add("ModelFormatError", m.py().get_type::<ModelFormatError>())?;
    m.add(
        "ContextLengthError",
        m.py().get_type::<ContextLengthError>(),
    )?;
    Ok(())
}
