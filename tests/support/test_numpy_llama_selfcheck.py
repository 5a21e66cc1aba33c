"""Self-check of the NumPy oracle against Karpathy's run.c output.

Greedy decoding of stories260K.bin from BOS with tests/support/numpy_llama.py
must reproduce the start of stories260K.greedy256.txt, which is what run.c
prints for `run stories260K.bin -z tok512.bin -t 0 -n 256`.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy_llama

MODELS = Path(__file__).resolve().parents[3] / "shared" / "models"
MODEL = MODELS / "stories260K.bin"
TOKENIZER = MODELS / "tok512.bin"
REFERENCE = MODELS / "stories260K.greedy256.txt"
N_STEPS = 40  # forward passes (positions 0..N_STEPS-1), like run.c's -n

pytestmark = pytest.mark.skipif(
    not (MODEL.exists() and TOKENIZER.exists() and REFERENCE.exists()),
    reason="shared stories260K test data not found",
)


def read_llama2c_bin(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read a llama2.c legacy checkpoint: 7 int32 header fields, fp32 weights."""
    raw = path.read_bytes()
    header = np.frombuffer(raw, dtype="<i4", count=7)
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = map(int, header)
    shared = vocab > 0  # a negative vocab_size means an untied classifier
    vocab = abs(vocab)
    config = {
        "dim": dim,
        "hidden_dim": hidden,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "n_kv_heads": n_kv_heads,
        "vocab_size": vocab,
        "seq_len": seq_len,
    }
    hd = dim // n_heads
    data = np.frombuffer(raw, dtype="<f4", offset=7 * 4)
    offset = 0

    def take(*shape: int) -> np.ndarray:
        nonlocal offset
        n = int(np.prod(shape))
        out = data[offset : offset + n].reshape(shape)
        offset += n
        return out

    emb = take(vocab, dim)
    rms_att = take(n_layers, dim)
    wq = take(n_layers, n_heads * hd, dim)
    wk = take(n_layers, n_kv_heads * hd, dim)
    wv = take(n_layers, n_kv_heads * hd, dim)
    wo = take(n_layers, dim, n_heads * hd)
    rms_ffn = take(n_layers, dim)
    w1 = take(n_layers, hidden, dim)
    w2 = take(n_layers, dim, hidden)
    w3 = take(n_layers, hidden, dim)
    rms_final = take(dim)
    take(seq_len * hd // 2)  # freq_cis_real, unused by run.c
    take(seq_len * hd // 2)  # freq_cis_imag, unused by run.c
    wcls = emb if shared else take(vocab, dim)
    assert offset == data.size, "unexpected trailing data in checkpoint"

    weights = {"tok_embeddings": emb, "norm": rms_final, "output": wcls}
    for i in range(n_layers):
        p = f"layers.{i}."
        weights[p + "attention_norm"] = rms_att[i]
        weights[p + "attention.wq"] = wq[i]
        weights[p + "attention.wk"] = wk[i]
        weights[p + "attention.wv"] = wv[i]
        weights[p + "attention.wo"] = wo[i]
        weights[p + "ffn_norm"] = rms_ffn[i]
        weights[p + "feed_forward.w1"] = w1[i]
        weights[p + "feed_forward.w2"] = w2[i]
        weights[p + "feed_forward.w3"] = w3[i]
    return config, weights


def read_llama2c_tokenizer(path: Path, vocab_size: int) -> list[bytes]:
    """Read a llama2.c tokenizer: int32 max_len, then (f32 score, i32 len, bytes)."""
    raw = path.read_bytes()
    pos = 4  # skip max_token_length
    pieces = []
    for _ in range(vocab_size):
        length = int(np.frombuffer(raw, dtype="<i4", count=1, offset=pos + 4)[0])
        pieces.append(raw[pos + 8 : pos + 8 + length])
        pos += 8 + length
    return pieces


def decode_like_run_c(pieces: list[bytes], tokens: list[int]) -> str:
    """Concatenate what run.c prints for tokens[1:] (decode + safe_printf)."""
    out = bytearray()
    for prev, tok in itertools.pairwise(tokens):
        piece = pieces[tok]
        if prev == 1 and piece.startswith(b" "):
            piece = piece[1:]  # sentencepiece strips the space after BOS
        if len(piece) == 6 and piece.startswith(b"<0x") and piece.endswith(b">"):
            piece = bytes([int(piece[3:5], 16)])  # raw byte token like <0x0A>
        if len(piece) == 1 and not (32 <= piece[0] < 127 or piece in b" \t\n\v\f\r"):
            continue  # safe_printf skips unprintable single bytes
        out += piece
    return out.decode("utf-8", errors="replace")


def greedy(config: dict, weights: dict, n_steps: int, **kw) -> list[int]:
    """run.c's loop with -t 0: from BOS, n_steps forwards, each appending the
    argmax token; stops early on BOS. Returns [1] + up to n_steps new ids."""
    tokens = [1]
    while len(tokens) <= n_steps:
        logits = numpy_llama.forward(config, weights, tokens, **kw)  # (T, V)
        nxt = int(np.argmax(logits[-1]))
        if nxt == 1:
            break
        tokens.append(nxt)
    return tokens


@pytest.fixture(scope="module")
def model():
    return read_llama2c_bin(MODEL)


def test_greedy_matches_run_c(model):
    config, weights = model
    assert config["n_kv_heads"] < config["n_heads"]  # exercises GQA
    tokens = greedy(config, weights, N_STEPS)
    text = decode_like_run_c(read_llama2c_tokenizer(TOKENIZER, config["vocab_size"]), tokens)
    reference = REFERENCE.read_text(encoding="utf-8")
    assert len(tokens) == N_STEPS + 1
    assert text.startswith("Once upon a time")
    assert reference.startswith(text), f"oracle diverged from run.c:\n{text!r}"


def test_prefix_logits_are_causal(model):
    config, weights = model
    tokens = [1, 403, 407, 261, 378]
    full = numpy_llama.forward(config, weights, tokens)  # (5, V)
    assert full.shape == (5, config["vocab_size"]) and full.dtype == np.float64
    np.testing.assert_allclose(numpy_llama.forward(config, weights, tokens[:3]), full[:3])


def test_c_round_is_half_away_from_zero():
    halves = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5])
    np.testing.assert_array_equal(numpy_llama._c_round(halves), [-3, -2, -1, 1, 2, 3])


def test_q8_mode_tracks_fp32(model):
    config, weights = model
    gs = 4  # largest group size dividing dim 64, hidden 172 and kv_dim 32
    q8 = {
        name: numpy_llama.quantize_q80(w, gs)
        for name, w in weights.items()
        if w.ndim == 2 and name != "output"  # output is tied to tok_embeddings
    }
    weights_tied = {k: v for k, v in weights.items() if k != "output"}
    tokens = greedy(config, weights, 24)
    ref = numpy_llama.forward(config, weights, tokens)  # (T, V)
    got = numpy_llama.forward(
        config, weights_tied, tokens, q8_group_size=gs, weights_q8=q8
    )  # (T, V)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()
    assert np.mean(got.argmax(-1) == ref.argmax(-1)) >= 0.75
