"""tinyllm.Tokenizer against llama.cpp's tokenizer test vectors.

For each vocabulary-only GGUF file in shared/models/vocab, ``.inp`` holds test
strings and ``.out`` the token ids llama.cpp's test-tokenizer-0 expects (it
tokenizes without BOS and without parsing special tokens). The files are read
here the way that test reads them.

The GGUF metadata is read by a small reader in this file, so the conversion
(:func:`tinyllm._tokenizer.tokenizers_from_gguf_metadata`) is tested whether
or not the extension has its own GGUF reader yet; where it has, the two
readers are compared too.
"""

from __future__ import annotations

import struct
from functools import cache
from pathlib import Path
from typing import Any

import pytest

import tinyllm
from tinyllm import _tinyllm
from tinyllm._tokenizer import Tokenizer

from conftest import MODELS, write_random_model

VOCABS = ["llama-spm", "llama-bpe", "qwen2"]
SEPARATOR = "\n__ggml_vocab_test__\n"


# -- a GGUF metadata reader (test support) -----------------------------------

_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """The key/value metadata of a GGUF file (version 2 or 3): strings as
    str, arrays as lists."""
    data = path.read_bytes()
    if data[:4] != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file")
    version, _n_tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
    if version not in (2, 3):
        raise ValueError(f"{path}: unsupported GGUF version {version}")
    pos = 24

    def string() -> str:
        nonlocal pos
        (length,) = struct.unpack_from("<Q", data, pos)
        text = data[pos + 8 : pos + 8 + length].decode("utf-8")
        pos += 8 + length
        return text

    def value(kind: int) -> Any:
        nonlocal pos
        if kind == _STRING:
            return string()
        if kind == _ARRAY:
            elem, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if elem in _SCALARS:
                fmt = _SCALARS[elem]
                size = struct.calcsize(fmt)
                items = list(struct.unpack_from(f"<{count}{fmt[1]}", data, pos))
                pos += size * count
                return items
            return [value(elem) for _ in range(count)]
        fmt = _SCALARS[kind]
        (v,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v

    out: dict[str, Any] = {}
    for _ in range(n_kv):
        key = string()
        (kind,) = struct.unpack_from("<I", data, pos)
        pos += 4
        out[key] = value(kind)
    return out


# -- the vectors -------------------------------------------------------------


def vocab_path(name: str) -> Path:
    return MODELS / "vocab" / f"ggml-vocab-{name}.gguf"


def read_vectors(name: str) -> list[tuple[str, list[int]]]:
    """The (text, ids) pairs, split as test-tokenizer-0 splits them: texts
    end at each separator line (the file ends with one), ids one line each."""
    path = vocab_path(name)
    raw = Path(f"{path}.inp").read_bytes().decode("utf-8")
    texts: list[str] = []
    pos = 0
    while pos < len(raw):
        end = raw.find(SEPARATOR, pos)
        if end < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:end])
        pos = end + len(SEPARATOR)
    lines = Path(f"{path}.out").read_text(encoding="utf-8").splitlines()
    assert len(texts) == len(lines), f"{path}: .inp and .out disagree"
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines, strict=True)]


@cache
def metadata(name: str) -> dict[str, Any]:
    return read_gguf_metadata(vocab_path(name))


@cache
def gguf_tokenizer(name: str) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(metadata(name), source=str(vocab_path(name)))


@pytest.mark.parametrize("name", VOCABS)
def test_vectors_are_present(name: str) -> None:
    vectors = read_vectors(name)
    assert len(vectors) >= 40
    assert any(ids == [] for _, ids in vectors)  # the empty string
    assert any(len(ids) > 20 for _, ids in vectors)


@pytest.mark.parametrize("name", VOCABS)
def test_encode_matches_llama_cpp(name: str) -> None:
    tok = gguf_tokenizer(name)
    failures = [
        (text, ids, got)
        for text, ids in read_vectors(name)
        if (got := tok.encode(text, add_special_tokens=False)) != ids
    ]
    assert not failures, "\n".join(f"{t!r}: want {w}, got {g}" for t, w, g in failures)


@pytest.mark.parametrize("name", VOCABS)
def test_decode_round_trip(name: str) -> None:
    # These vocabularies lose nothing: no normalization, byte fallback or
    # byte-level coverage, and the SentencePiece prefix space is stripped again.
    tok = gguf_tokenizer(name)
    for text, ids in read_vectors(name):
        assert tok.decode(ids) == text, repr(text)


@pytest.mark.parametrize("name", VOCABS)
def test_stream_decoder_matches_decode(name: str) -> None:
    tok = gguf_tokenizer(name)
    for text, ids in read_vectors(name):
        dec = tok.decoder()
        pieces = [dec.push(i) for i in ids]
        pieces.append(dec.flush())
        assert "".join(pieces) == text, repr(text)
        # No piece ends in a broken UTF-8 sequence that a later id completes.
        assert all("\ufffd" not in p for p in pieces), repr(text)


def test_llama_spm_matches_llama2c_tokenizer(tmp_path: Path) -> None:
    """The Llama 2 vocabulary as GGUF metadata and as llama2.c's
    tokenizer.bin tokenize alike (the engine's llama2.c tokenizer matches
    run.c)."""
    model_path = tmp_path / "m.bin"
    write_random_model(
        model_path, dim=8, hidden_dim=16, n_layers=1, n_heads=2, n_kv_heads=2, vocab_size=32000
    )
    model = tinyllm.Model(model_path, MODELS / "llama2-tokenizer.bin", n_threads=1)
    tok = gguf_tokenizer("llama-spm")
    texts = [t for t, _ in read_vectors("llama-spm")]
    texts += ["Once upon a time, a little dog", "naïve café ☕ 日本語 🦀", "x" * 300]
    for text in texts:
        assert tok.encode(text) == model.tokenize(text), repr(text)
        assert tok.encode(text, add_special_tokens=False) == model.tokenize(text, add_bos=False)
        ids = model.tokenize(text)
        assert tok.decode(ids) == model.detokenize(ids), repr(text)
    bin_tok = Tokenizer.from_file(MODELS / "llama2-tokenizer.bin")
    for text in texts:
        assert bin_tok.encode(text) == tok.encode(text), repr(text)
        assert bin_tok.decode(tok.encode(text)) == tok.decode(tok.encode(text))


@pytest.mark.parametrize("name", VOCABS)
def test_from_file_reads_gguf(name: str) -> None:
    path = vocab_path(name)
    engine_meta = _tinyllm.gguf_metadata(str(path))
    ours = metadata(name)
    for key in [k for k in ours if k.startswith("tokenizer.")]:
        assert engine_meta[key] == pytest.approx(ours[key]), key
    tok = Tokenizer.from_file(path)
    for text, ids in read_vectors(name):
        assert tok.encode(text, add_special_tokens=False) == ids, repr(text)
