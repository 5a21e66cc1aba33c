//! What the fuzz targets share: a scratch directory for the readers that
//! take paths, the properties every error must keep, and a short drive of
//! whatever a reader accepted (a forward pass, a tokenizer round trip), so
//! that bytes which pass the checks are also used.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use tinyllm_core::{Error, Model, Session, SessionOptions, Tokenizer};

/// The longest error message accepted (issue 13: messages are bounded,
/// whatever the file holds).
pub const MAX_MESSAGE_CHARS: usize = 1000;

/// Splits one input into the files of a model directory (see the
/// `safetensors` target); also in the seeds and the dictionary.
pub const FILE_SEPARATOR: &[u8] = b"\n%%tinyllm-fuzz-file%%\n";

/// A directory of this process's own, in memory when the system has one
/// (`/dev/shm`), so that writing each input costs no disk I/O. Several
/// fuzzers may run at once: the process id keeps them apart.
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("tinyllm-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        dir
    })
}

/// Empties the scratch directory and writes `files` (name, bytes) into it.
pub fn write_files(files: &[(&str, &[u8])]) -> &'static Path {
    let dir = scratch_dir();
    clear(dir);
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).expect("write a scratch file");
    }
    dir
}

/// Removes every file in `dir` (not the directory itself).
pub fn clear(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Whether long messages are tolerated this run (set
/// `TINYLLM_FUZZ_LONG_MESSAGES=1` to look past a known finding).
fn long_messages_allowed() -> bool {
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    *ALLOWED.get_or_init(|| std::env::var_os("TINYLLM_FUZZ_LONG_MESSAGES").is_some())
}

/// The properties every error keeps: its message is bounded in length.
pub fn check_error(e: &Error) {
    if long_messages_allowed() {
        return;
    }
    let message = e.to_string();
    let n = message.chars().count();
    if n > MAX_MESSAGE_CHARS {
        let head: String = message.chars().take(300).collect();
        panic!("an error message of {n} characters (the bound is {MAX_MESSAGE_CHARS}): {head}...");
    }
}

/// Opens the model at `path`; when it opens, runs its tokenizer (if it
/// carries one) and a forward pass of a few tokens on one thread.
pub fn open_and_run(path: &Path) {
    let model = match Model::open(path) {
        Ok(m) => m,
        Err(e) => return check_error(&e),
    };
    if let Some(tok) = &model.tokenizer {
        run_tokenizer(tok, b"");
    }
    run_model(model);
}

/// A short forward pass: the context is capped so that a file claiming a
/// huge `seq_len` costs a small cache, not an out-of-memory report.
pub fn run_model(model: Model) {
    let model = Arc::new(model);
    let ctx = model.config.seq_len.clamp(1, 4);
    let options = SessionOptions {
        n_threads: Some(1),
        context_length: Some(ctx),
        max_batch: Some(2),
        ..Default::default()
    };
    let mut session = match Session::new(model.clone(), &options) {
        Ok(s) => s,
        Err(e) => return check_error(&e),
    };
    let vocab = model.config.vocab_size.max(1) as u32;
    let tokens: Vec<u32> = [1, 0, vocab - 1, 2]
        .iter()
        .map(|t| t % vocab)
        .take(ctx)
        .collect();
    match session.feed(&tokens) {
        Ok(()) => {
            let _ = session.logits().iter().fold(0.0f32, |a, &x| a.max(x));
        }
        Err(e) => check_error(&e),
    }
}

/// Texts every tokenizer is asked to encode.
const TEXTS: &[&str] = &[
    "",
    " ",
    "Once upon a time, a little dog",
    "  two  spaces\n\nand\ttabs\r\n",
    "<s></s><unk><0x41><|endoftext|>",
    "naïve café, 日本語, Ελληνικά, 🦀🦀",
    "\u{0}\u{1}\u{7f}\u{fffd}",
];

/// Encodes and decodes a few texts (and `extra`, read as UTF-8 with
/// replacements), then decodes every token one by one.
pub fn run_tokenizer(tok: &Tokenizer, extra: &[u8]) {
    let extra = String::from_utf8_lossy(extra);
    for text in TEXTS.iter().copied().chain([extra.as_ref()]) {
        for bos in [false, true] {
            let ids = tok.encode(text, bos);
            let n = tok.vocab_size();
            assert!(
                ids.iter().all(|&id| (id as usize) < n),
                "encode returned an id outside the vocabulary of {n}: {ids:?}"
            );
            let _ = tok.decode(&ids);
            let mut prev = None;
            for &id in &ids {
                let _ = tok.decode_bytes(prev, id);
                prev = Some(id);
            }
        }
    }
    let n = tok.vocab_size().min(1 << 12) as u32;
    let mut prev = None;
    for id in 0..n {
        let _ = tok.piece(id);
        let _ = tok.score(id);
        let _ = tok.decode_bytes(prev, id);
        prev = Some(id);
    }
}

/// Splits `data` at every [`FILE_SEPARATOR`].
pub fn split_files(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = find(rest, FILE_SEPARATOR) {
        parts.push(&rest[..at]);
        rest = &rest[at + FILE_SEPARATOR.len()..];
    }
    parts.push(rest);
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
