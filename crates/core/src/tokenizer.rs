//! llama2.c's tokenizer: a SentencePiece vocabulary with scores, encoded by
//! score-driven pair merges exactly as `run.c` encodes.
//!
//! File layout (little-endian): `max_token_length: i32`, then for each token
//! `score: f32, len: i32, bytes[len]`. The file does not store the number of
//! tokens; it is read to its end and must match the model's vocabulary.

use crate::error::{Error, Result};
use crate::format::Reader;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

/// Id of the beginning-of-sequence token in llama2.c vocabularies.
pub const BOS: u32 = 1;
/// Id of the end-of-sequence token in llama2.c vocabularies.
pub const EOS: u32 = 2;

/// A vocabulary of byte strings with merge scores.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    pieces: Vec<Vec<u8>>,
    scores: Vec<f32>,
    /// Piece bytes to id (the first id, should a piece repeat).
    ids: HashMap<Vec<u8>, u32>,
    /// For tokens spelled `<0xHH>`, the byte they stand for.
    byte_value: Vec<Option<u8>>,
    /// The token of each byte value, for byte fallback.
    byte_token: [Option<u32>; 256],
}

impl Tokenizer {
    /// Reads a llama2.c `tokenizer.bin`.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(path, &bytes)
    }

    /// Parses the bytes of a `tokenizer.bin`; `path` names it in errors.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self> {
        Self::parse_inner(path, bytes).map_err(|e| match e {
            Error::Format { path, reason } => {
                Error::format(&path, format!("not a valid llama2.c tokenizer: {reason}"))
            }
            e => e,
        })
    }

    fn parse_inner(path: &Path, bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(path, bytes);
        let max_len = r.i32("the max_token_length header")?;
        if !(1..=1 << 16).contains(&max_len) {
            return Err(Error::format(
                path,
                format!("max_token_length = {max_len} is out of range"),
            ));
        }
        let mut pieces = Vec::new();
        let mut scores = Vec::new();
        while !r.is_empty() {
            let i = pieces.len();
            let what = format!("token {i}");
            let score = r.f32(&what)?;
            if !score.is_finite() {
                return Err(Error::format(
                    path,
                    format!("token {i} has the score {score}; scores must be finite"),
                ));
            }
            let len = r.i32(&what)?;
            // SentencePiece has no empty pieces, and the header's maximum is
            // the longest piece (run.c sizes its merge buffer from it).
            if !(1..=max_len).contains(&len) {
                return Err(Error::format(
                    path,
                    format!(
                        "token {i} at offset {} has length {len}, outside 1..={max_len} \
                         (max_token_length)",
                        r.pos() - 4
                    ),
                ));
            }
            pieces.push(r.take(len as usize, &what)?.to_vec());
            scores.push(score);
        }
        if pieces.len() < 3 {
            return Err(Error::format(
                path,
                format!(
                    "the vocabulary has {} tokens; it needs at least <unk>, <s> and </s>",
                    pieces.len()
                ),
            ));
        }
        Ok(Self::from_pieces(pieces, scores))
    }

    /// Builds a tokenizer from its pieces and their merge scores.
    pub fn from_pieces(pieces: Vec<Vec<u8>>, scores: Vec<f32>) -> Self {
        let mut ids = HashMap::with_capacity(pieces.len());
        for (id, p) in pieces.iter().enumerate() {
            ids.entry(p.clone()).or_insert(id as u32);
        }
        let byte_value: Vec<Option<u8>> = pieces.iter().map(|p| parse_byte_piece(p)).collect();
        let mut byte_token = [None; 256];
        for (id, b) in byte_value.iter().enumerate() {
            if let Some(b) = *b {
                byte_token[b as usize].get_or_insert(id as u32);
            }
        }
        Tokenizer {
            pieces,
            scores,
            ids,
            byte_value,
            byte_token,
        }
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// The bytes of token `id` as stored.
    pub fn piece(&self, id: u32) -> Option<&[u8]> {
        self.pieces.get(id as usize).map(|p| p.as_slice())
    }

    /// The merge score of token `id`.
    pub fn score(&self, id: u32) -> Option<f32> {
        self.scores.get(id as usize).copied()
    }

    /// Encodes `text` as run.c does: BOS if asked, the dummy-prefix space
    /// (for non-empty text), one token per UTF-8 character where the
    /// vocabulary has it (else one byte token per byte), then repeated
    /// merges of the adjacent pair whose merged piece scores highest
    /// (the leftmost on ties).
    pub fn encode(&self, text: &str, bos: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() + 2);
        if bos {
            out.push(BOS);
        }
        if text.is_empty() {
            return out;
        }
        let mut symbols: Vec<u32> = Vec::with_capacity(text.len() + 1);
        if let Some(&space) = self.ids.get(b" ".as_slice()) {
            symbols.push(space);
        }
        let mut buf = [0u8; 4];
        for ch in text.chars() {
            let bytes = ch.encode_utf8(&mut buf).as_bytes();
            match self.ids.get(bytes) {
                Some(&id) => symbols.push(id),
                None => symbols.extend(
                    bytes
                        .iter()
                        .map(|&b| self.byte_token[b as usize].unwrap_or(0)),
                ),
            }
        }
        self.merge(&mut symbols);
        out.extend(symbols);
        out
    }

    /// Applies the best-scoring merges until none applies. A heap of
    /// candidate pairs over a linked list of symbols gives the same result as
    /// run.c's repeated scan, in `O(n log n)`.
    fn merge(&self, symbols: &mut Vec<u32>) {
        let n = symbols.len();
        if n < 2 {
            return;
        }
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        let mut scratch = Vec::new();
        for i in 0..n - 1 {
            self.push_pair(&mut heap, &mut scratch, symbols, i, i + 1);
        }
        while let Some(c) = heap.pop() {
            let (l, r) = (c.left, c.right);
            // Skip candidates whose symbols have changed since they were pushed.
            if !alive[l]
                || !alive[r]
                || next[l] != r
                || symbols[l] != c.left_id
                || symbols[r] != c.right_id
            {
                continue;
            }
            symbols[l] = c.merged;
            alive[r] = false;
            next[l] = next[r];
            if next[r] < n {
                prev[next[r]] = l;
            }
            if prev[l] < n {
                self.push_pair(&mut heap, &mut scratch, symbols, prev[l], l);
            }
            if next[l] < n {
                self.push_pair(&mut heap, &mut scratch, symbols, l, next[l]);
            }
        }
        let mut i = 0;
        symbols.retain(|_| {
            i += 1;
            alive[i - 1]
        });
    }

    fn push_pair(
        &self,
        heap: &mut BinaryHeap<Candidate>,
        scratch: &mut Vec<u8>,
        symbols: &[u32],
        left: usize,
        right: usize,
    ) {
        scratch.clear();
        scratch.extend_from_slice(&self.pieces[symbols[left] as usize]);
        scratch.extend_from_slice(&self.pieces[symbols[right] as usize]);
        if let Some(&merged) = self.ids.get(scratch.as_slice()) {
            let score = self.scores[merged as usize];
            // run.c starts its search at -1e10 and needs a strictly greater score.
            if score > -1e10 {
                heap.push(Candidate {
                    score,
                    left,
                    right,
                    left_id: symbols[left],
                    right_id: symbols[right],
                    merged,
                });
            }
        }
    }

    /// The bytes token `id` contributes after token `prev`: a `<0xHH>`
    /// token is its byte; after BOS a leading space is dropped (the dummy
    /// prefix); BOS and EOS contribute nothing. Unknown ids give nothing.
    pub fn decode_bytes(&self, prev: Option<u32>, id: u32) -> &[u8] {
        if id == BOS || id == EOS {
            return &[];
        }
        let Some(piece) = self.pieces.get(id as usize) else {
            return &[];
        };
        if let Some(b) = self.byte_value[id as usize] {
            return &BYTES[b as usize..b as usize + 1];
        }
        let at_start = prev.is_none_or(|p| p == BOS);
        match piece.split_first() {
            Some((b' ', rest)) if at_start => rest,
            _ => piece,
        }
    }

    /// The text of `ids` (invalid UTF-8 replaced by U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        let mut prev = None;
        for &id in ids {
            bytes.extend_from_slice(self.decode_bytes(prev, id));
            prev = Some(id);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Every byte value, so a byte token can be returned as a slice.
static BYTES: [u8; 256] = {
    let mut b = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        b[i] = i as u8;
        i += 1;
    }
    b
};

/// `<0xHH>` to the byte `HH`.
fn parse_byte_piece(p: &[u8]) -> Option<u8> {
    match p {
        [b'<', b'0', b'x', h, l, b'>'] => {
            let hex = |c: u8| (c as char).to_digit(16);
            Some((hex(*h)? * 16 + hex(*l)?) as u8)
        }
        _ => None,
    }
}

/// A possible merge of two adjacent symbols.
#[derive(Debug)]
struct Candidate {
    score: f32,
    left: usize,
    right: usize,
    left_id: u32,
    right_id: u32,
    merged: u32,
}

impl Ord for Candidate {
    /// Higher score first; on equal scores the leftmost pair first.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary of single letters with a few scored merges.
    fn toy() -> Tokenizer {
        let mut pieces: Vec<Vec<u8>> = vec![b"<unk>".to_vec(), b"<s>".to_vec(), b"</s>".to_vec()];
        pieces.extend((0..=255u8).map(|b| format!("<0x{b:02X}>").into_bytes()));
        let mut scores = vec![0.0; pieces.len()];
        for (p, s) in [
            (" ", -1.0),
            ("a", -1.0),
            ("b", -1.0),
            ("ab", -2.0),
            ("ba", -3.0),
            (" a", -5.0),
            ("aba", -1.5),
        ] {
            pieces.push(p.as_bytes().to_vec());
            scores.push(s);
        }
        Tokenizer::from_pieces(pieces, scores)
    }

    /// run.c's merge loop, transcribed literally: rescan every pair each time.
    fn naive(t: &Tokenizer, mut syms: Vec<u32>) -> Vec<u32> {
        loop {
            let mut best = (-1e10f32, usize::MAX, 0u32);
            for i in 0..syms.len().saturating_sub(1) {
                let mut s = t.pieces[syms[i] as usize].clone();
                s.extend_from_slice(&t.pieces[syms[i + 1] as usize]);
                if let Some(&id) = t.ids.get(&s)
                    && t.scores[id as usize] > best.0
                {
                    best = (t.scores[id as usize], i, id);
                }
            }
            if best.1 == usize::MAX {
                return syms;
            }
            syms[best.1] = best.2;
            syms.remove(best.1 + 1);
        }
    }

    #[test]
    fn heap_merge_equals_the_rescanning_loop() {
        let t = toy();
        for text in [
            "", "a", "ab", "aba", "abab", "babab", "a ba ab", "abababa", "bbaabb", "aé☃b",
        ] {
            let got = t.encode(text, true);
            let mut syms = Vec::new();
            if !text.is_empty() {
                syms.push(t.ids[b" ".as_slice()]);
                for ch in text.chars() {
                    let mut b = [0; 4];
                    let s = ch.encode_utf8(&mut b).as_bytes();
                    match t.ids.get(s) {
                        Some(&id) => syms.push(id),
                        None => syms.extend(s.iter().map(|&x| t.byte_token[x as usize].unwrap())),
                    }
                }
            }
            let mut want = vec![BOS];
            want.extend(naive(&t, syms));
            assert_eq!(got, want, "{text:?}");
            assert_eq!(t.decode(&got), text);
        }
    }

    #[test]
    fn truncated_and_garbage_files_are_format_errors() {
        let p = Path::new("tok.bin");
        assert!(matches!(
            Tokenizer::parse(p, &[]),
            Err(Error::Format { .. })
        ));
        assert!(matches!(
            Tokenizer::parse(p, &[1, 0, 0]),
            Err(Error::Format { .. })
        ));
        let mut ok = 8i32.to_le_bytes().to_vec();
        for piece in ["<unk>", "<s>", "</s>", "a"] {
            ok.extend(0.0f32.to_le_bytes());
            ok.extend((piece.len() as i32).to_le_bytes());
            ok.extend(piece.as_bytes());
        }
        assert_eq!(Tokenizer::parse(p, &ok).unwrap().vocab_size(), 4);
        // A cut inside a token is an error; a cut between tokens leaves a
        // smaller vocabulary, which the model's vocabulary check rejects.
        for cut in 1..ok.len() {
            match Tokenizer::parse(p, &ok[..cut]) {
                Err(Error::Format { .. }) => {}
                Ok(t) => assert!(t.vocab_size() < 4, "cut at {cut}"),
                Err(e) => panic!("cut at {cut}: {e}"),
            }
        }
    }

    #[test]
    fn nan_scores_empty_and_overlong_pieces_are_format_errors() {
        let p = Path::new("tok.bin");
        let file = |pieces: &[(&str, f32)]| {
            let mut b = 8i32.to_le_bytes().to_vec();
            for (piece, score) in pieces {
                b.extend(score.to_le_bytes());
                b.extend((piece.len() as i32).to_le_bytes());
                b.extend(piece.as_bytes());
            }
            b
        };
        let base = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)];
        assert!(Tokenizer::parse(p, &file(&[base[0], base[1], base[2], ("a", -1.0)])).is_ok());
        for (bad, why) in [
            (("a", f32::NAN), "score NaN"),
            (("a", f32::INFINITY), "score inf"),
            (("", 0.0), "length 0"),
            (("abcdefghi", 0.0), "length 9"),
        ] {
            let e = Tokenizer::parse(p, &file(&[base[0], base[1], base[2], bad])).unwrap_err();
            assert!(e.to_string().contains(why), "{e}");
            assert!(e.to_string().contains("token 3"), "{e}");
        }
    }
}

/// What generation needs of a vocabulary: the bytes each token adds to the
/// text, given the token before it.
pub trait Detokenize: Send + Sync + std::fmt::Debug {
    fn token_bytes(&self, prev: Option<u32>, id: u32) -> &[u8];
}

impl Detokenize for Tokenizer {
    fn token_bytes(&self, prev: Option<u32>, id: u32) -> &[u8] {
        self.decode_bytes(prev, id)
    }
}

/// The bytes of every token, for vocabularies encoded elsewhere (a Hugging
/// Face tokenizer in Python hands its table over once).
#[derive(Clone, Debug)]
pub struct PieceTable {
    pieces: Vec<Vec<u8>>,
    /// Tokens that add no text (BOS, EOS, other control tokens).
    silent: Vec<bool>,
    /// SentencePiece-style vocabularies: a piece right after BOS (or at the
    /// very start) drops its leading space, the prefix added when encoding.
    strip_space_at_start: bool,
    bos_id: Option<u32>,
}

impl PieceTable {
    /// `pieces[id]` is the text of token `id` (empty for control tokens).
    pub fn new(pieces: Vec<Vec<u8>>, strip_space_at_start: bool, bos_id: Option<u32>) -> Self {
        let silent = pieces.iter().map(|p| p.is_empty()).collect();
        PieceTable {
            pieces,
            silent,
            strip_space_at_start,
            bos_id,
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }
}

impl Detokenize for PieceTable {
    fn token_bytes(&self, prev: Option<u32>, id: u32) -> &[u8] {
        let Some(piece) = self.pieces.get(id as usize) else {
            return &[];
        };
        if self.silent[id as usize] {
            return &[];
        }
        let at_start = prev.is_none() || prev == self.bos_id;
        match piece.split_first() {
            Some((b' ', rest)) if at_start && self.strip_space_at_start => rest,
            _ => piece,
        }
    }
}
