"""tinyllm.Tokenizer: file kinds, special tokens in plain and template text,
end-of-turn ids, streaming decode and bad input.

Expected ids come from the vocabularies themselves (llama.cpp's GGUF files),
llama.cpp's test vectors and run.c's encodings (tests/fixtures)."""

from __future__ import annotations

import json
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import tinyllm
from tinyllm._tokenizer import PRE_TOKENIZERS, Tokenizer, tokenizers_from_gguf_metadata

from conftest import MODELS
from test_tokenizer_vectors import gguf_tokenizer, metadata, read_vectors, vocab_path


def token_id(name: str, text: str) -> int:
    """The id of ``text`` in a vocabulary, from the GGUF file's token list."""
    return list(metadata(name)["tokenizer.ggml.tokens"]).index(text)


def test_public_name() -> None:
    assert tinyllm.Tokenizer is Tokenizer


# -- facts of the GGUF vocabularies -----------------------------------------


@pytest.mark.parametrize(
    ("name", "vocab_size", "bos", "eos", "add_bos"),
    [
        ("llama-spm", 32000, "<s>", "</s>", True),
        ("llama-bpe", 128256, "<|begin_of_text|>", "<|end_of_text|>", True),
        ("qwen2", 151936, "<|endoftext|>", "<|endoftext|>", False),
    ],
)
def test_special_ids_and_bos(name: str, vocab_size: int, bos: str, eos: str, add_bos: bool) -> None:
    tok = gguf_tokenizer(name)
    assert tok.vocab_size == vocab_size
    assert tok.bos_id == token_id(name, bos)
    assert tok.eos_id == token_id(name, eos)
    assert tok.add_bos is add_bos
    text, ids = read_vectors(name)[10]
    assert ids  # a non-empty vector
    assert tok.encode(text) == ([tok.bos_id] if add_bos else []) + ids
    assert tok.encode(text, add_special_tokens=False) == ids
    assert tok.encode("", add_special_tokens=False) == []


@pytest.mark.parametrize(
    ("name", "ends"),
    [
        ("llama-spm", ["</s>"]),
        ("llama-bpe", ["<|end_of_text|>", "<|eot_id|>"]),
        ("qwen2", ["<|endoftext|>", "<|im_end|>"]),
    ],
)
def test_eos_ids(name: str, ends: list[str]) -> None:
    tok = gguf_tokenizer(name)
    assert tok.eos_ids == {token_id(name, t) for t in ends}
    assert tok.eos_id in tok.eos_ids


def test_eot_key_joins_eos_ids() -> None:
    meta = dict(metadata("llama-bpe"))
    reserved = token_id("llama-bpe", "<|reserved_special_token_4|>")
    meta["tokenizer.ggml.eot_token_id"] = reserved
    meta["tokenizer.ggml.eos_token_id"] = token_id("llama-bpe", "<|eot_id|>")
    tok = Tokenizer.from_gguf_metadata(meta)
    assert tok.eos_id == token_id("llama-bpe", "<|eot_id|>")
    assert reserved in tok.eos_ids
    # 0xFFFFFFFF (as llama.cpp writes "none") is no token.
    meta["tokenizer.ggml.bos_token_id"] = 0xFFFFFFFF
    assert Tokenizer.from_gguf_metadata(meta).bos_id is None


def test_token_lookup() -> None:
    spm, bpe, qwen = (gguf_tokenizer(n) for n in ("llama-spm", "llama-bpe", "qwen2"))
    assert spm.token_to_id("\u2581Hello") == 15043  # 'Hello' in the vectors
    assert spm.id_to_token(15043) == "\u2581Hello"
    assert spm.id_to_token(13) == "<0x0A>"
    assert qwen.token_to_id("<|im_start|>") == token_id("qwen2", "<|im_start|>")
    assert bpe.id_to_token(bpe.eos_id or 0) == "<|end_of_text|>"
    assert bpe.token_to_id("no such token, surely") is None
    assert bpe.id_to_token(bpe.vocab_size) is None
    assert bpe.id_to_token(-1) is None


# -- plain text versus template text ------------------------------------------

TEMPLATES = {
    "llama-spm": "<s>[INST] Hi there [/INST] Hello</s>",
    "llama-bpe": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "qwen2": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
}


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_special_text_is_plain_unless_parsed(name: str) -> None:
    tok = gguf_tokenizer(name)
    text = TEMPLATES[name]
    specials = tok.special_ids
    plain = tok.encode(text, add_special_tokens=False)
    assert not set(plain) & specials
    assert tok.decode(plain) == text  # the markup survives as text

    parsed = tok.encode(text, add_special_tokens=False, parse_special=True)
    wanted = [t for t in tok.special_ids if str(tok.id_to_token(t)) in text]
    assert wanted
    assert set(parsed) & specials == set(wanted)
    shown = tok.decode(parsed, skip_special_tokens=False)
    if name == "llama-spm":
        # SentencePiece text after a special token gets a prefix space (as in
        # llama.cpp), which decode keeps: only the very first one goes.
        assert shown == text.replace("<s>", "<s> ")
    else:
        assert shown == text
    for t in wanted:
        assert str(tok.id_to_token(t)) not in tok.decode(parsed)


def test_template_text_between_special_tokens() -> None:
    bpe = gguf_tokenizer("llama-bpe")
    eot = token_id("llama-bpe", "<|eot_id|>")
    # 'Hello world' is [9906, 1917] in llama.cpp's vectors.
    assert bpe.encode("<|eot_id|>Hello world", False, parse_special=True) == [eot, 9906, 1917]
    assert eot not in bpe.encode("<|eot_id|>Hello world", False)
    spm = gguf_tokenizer("llama-spm")
    # After a special token SentencePiece text starts with its prefix space
    # again, as llama.cpp tokenizes: 'Hello' is [15043].
    assert spm.encode("<s>Hello", False, parse_special=True) == [1, 15043]
    assert spm.encode("</s>", False, parse_special=True) == [2]
    assert 2 not in spm.encode("</s>", False)


def test_user_defined_tokens_are_always_tokens() -> None:
    # Qwen2's [PAD...] tokens are user-defined: llama.cpp matches them in any text.
    qwen = gguf_tokenizer("qwen2")
    pad = token_id("qwen2", "[PAD151646]")
    a, b = qwen.encode("a", False), qwen.encode("b", False)
    assert qwen.encode("a[PAD151646]b", False) == [*a, pad, *b]
    assert pad not in qwen.special_ids


def test_plain_and_template_encoding_from_threads() -> None:
    tok = gguf_tokenizer("qwen2")
    text = TEMPLATES["qwen2"]
    plain = tok.encode(text, False)
    parsed = tok.encode(text, False, parse_special=True)

    def work(i: int) -> bool:
        if i % 2:
            return tok.encode(text, False, parse_special=True) == parsed
        return tok.encode(text, False) == plain

    with ThreadPoolExecutor(2) as pool:
        assert all(pool.map(work, range(200)))


# -- streaming ------------------------------------------------------------------


def stream(tok: Tokenizer, ids: list[int], skip: bool = True) -> list[str]:
    dec = tok.decoder(skip_special_tokens=skip)
    pieces = [dec.push(i) for i in ids]
    pieces.append(dec.flush())
    return pieces


def test_stream_holds_back_split_emoji() -> None:
    spm = gguf_tokenizer("llama-spm")
    ids = spm.encode("🦙!", add_special_tokens=False)
    # '▁' then the four byte tokens of the emoji (as in llama.cpp's vectors).
    assert ids[:5] == [29871, 243, 162, 169, 156]
    pieces = stream(spm, [spm.bos_id or 0, *ids])
    assert pieces[:5] == ["", "", "", "", ""]
    assert pieces[5] == "🦙"
    assert "".join(pieces) == "🦙!"

    bpe = gguf_tokenizer("llama-bpe")
    ids = bpe.encode("🚀 go", add_special_tokens=False)
    pieces = stream(bpe, ids)
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == "🚀 go"


def test_stream_flush_gives_what_was_held() -> None:
    spm = gguf_tokenizer("llama-spm")
    dec = spm.decoder()
    assert dec.push(243) == ""  # the first byte of a 4-byte character
    assert dec.flush() == spm.decode([243])
    # The decoder starts a new sequence after flush.
    assert dec.push(15043) + dec.flush() == "Hello"


@pytest.mark.parametrize("name", list(TEMPLATES))
@pytest.mark.parametrize("skip", [True, False])
def test_stream_over_many_sequences(name: str, skip: bool) -> None:
    tok = gguf_tokenizer(name)
    specials = sorted(tok.special_ids)[:3]
    ids: list[int] = []
    for n, (_, vector) in enumerate(read_vectors(name)):
        ids += vector
        ids.append(specials[n % len(specials)])
    ids += tok.encode(TEMPLATES[name], False, parse_special=True)
    for end in (len(ids), len(ids) // 3, 7):
        assert "".join(stream(tok, ids[:end], skip)) == tok.decode(ids[:end], skip), end


def test_decode_checks_ids() -> None:
    tok = gguf_tokenizer("llama-spm")
    with pytest.raises(ValueError, match=re.escape("32000")):
        tok.decode([1, 32000])
    with pytest.raises(ValueError, match=re.escape("-1")):
        tok.decoder().push(-1)
    with pytest.raises(TypeError):
        tok.encode(b"bytes")  # type: ignore[arg-type]


# -- llama2.c tokenizer.bin -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "vocab_size"), [("tok512.bin", 512), ("llama2-tokenizer.bin", 32000)]
)
def test_llama2c_tokenizer_equals_run_c(name: str, vocab_size: int, runc: dict[str, Any]) -> None:
    tok = Tokenizer.from_file(MODELS / name)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.add_bos) == (vocab_size, 1, 2, True)
    assert tok.eos_ids == {1, 2}  # as in run.c, a generated BOS ends the text too
    for case in runc["encodings"][name]:
        assert tok.encode(case["text"]) == case["ids"], repr(case["text"])
        assert tok.encode(case["text"], add_special_tokens=False) == case["ids"][1:]
        assert tok.decode(case["ids"]) == case["text"]
        assert "".join(stream(tok, case["ids"])) == case["text"]


def test_llama2c_special_tokens() -> None:
    tok = Tokenizer.from_file(MODELS / "tok512.bin")
    assert tok.id_to_token(1) == "<s>"
    assert tok.token_to_id("</s>") == 2
    assert tok.token_to_id("<0x0A>") == 13
    text = "<s>Hi</s>"
    assert not {1, 2} & set(tok.encode(text, add_special_tokens=False))
    parsed = tok.encode(text, add_special_tokens=False, parse_special=True)
    assert parsed == [1, *tok.encode("Hi", add_special_tokens=False), 2]
    assert tok.decode(parsed) == "Hi"
    assert tok.decode(parsed, skip_special_tokens=False) == text
    assert "".join(stream(tok, parsed, skip=False)) == text


def test_stories_gguf_equals_run_c(runc: dict[str, Any]) -> None:
    tok = Tokenizer.from_file(MODELS / "stories260K.gguf")
    assert tok.vocab_size == 512
    for case in runc["encodings"]["tok512.bin"]:
        assert tok.encode(case["text"]) == case["ids"], repr(case["text"])


# -- tokenizer.json -----------------------------------------------------------------


def write_tokenizer_json(directory: Path, name: str, config: dict[str, Any] | None) -> Path:
    """A tokenizer.json made from a GGUF vocabulary (what from_file reads
    back is checked against llama.cpp's vectors)."""
    directory.mkdir()
    hf = tokenizers_from_gguf_metadata(metadata(name)).tokenizer
    (directory / "tokenizer.json").write_text(hf.to_str(), encoding="utf-8")
    if config is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def test_tokenizer_json_directory(tmp_path: Path) -> None:
    config = {
        "bos_token": "<|begin_of_text|>",
        "eos_token": {"content": "<|eot_id|>"},
        "add_bos_token": True,
        "chat_template": "{{ messages }}",
    }
    directory = write_tokenizer_json(tmp_path / "llama3", "llama-bpe", config)
    (directory / "generation_config.json").write_text(
        json.dumps({"eos_token_id": [128001, 128008, 128009]}), encoding="utf-8"
    )
    for tok in (Tokenizer.from_file(directory), Tokenizer.from_file(directory / "tokenizer.json")):
        assert tok.vocab_size == 128256
        assert (tok.bos_id, tok.eos_id) == (128000, 128009)
        assert tok.eos_ids == {128001, 128008, 128009}
        assert tok.chat_template == "{{ messages }}"
        for text, ids in read_vectors("llama-bpe"):
            assert tok.encode(text, add_special_tokens=False) == ids, repr(text)
            assert tok.encode(text) == [128000, *ids]
        t = TEMPLATES["llama-bpe"]
        assert tok.decode(tok.encode(t, False, parse_special=True), False) == t
        assert not set(tok.encode(t, False)) & tok.special_ids


def test_tokenizer_json_without_config(tmp_path: Path) -> None:
    tok = Tokenizer.from_file(write_tokenizer_json(tmp_path / "spm", "llama-spm", None))
    # No post-processor and no config: nothing is added, BOS/EOS go by name.
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, False)
    for text, ids in read_vectors("llama-spm"):
        assert tok.encode(text) == ids, repr(text)
    with_bos = Tokenizer.from_file(
        write_tokenizer_json(tmp_path / "spm2", "llama-spm", {"add_bos_token": True})
    )
    assert with_bos.encode("Hello") == [1, 15043]


# -- bad input ---------------------------------------------------------------------


def test_missing_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(FileNotFoundError, match=re.escape("nope.gguf")):
        Tokenizer.from_file(missing)
    with pytest.raises(FileNotFoundError, match=re.escape("tokenizer.json")):
        Tokenizer.from_file(tmp_path)
    with pytest.raises(TypeError):
        Tokenizer.from_file(3)  # type: ignore[arg-type]


def test_corrupt_tokenizer_json(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"model": 3}', encoding="utf-8")
    with pytest.raises(tinyllm.ModelFormatError, match=re.escape("tokenizer.json")):
        Tokenizer.from_file(bad)
    bad.write_text("{ not json", encoding="utf-8")
    with pytest.raises(tinyllm.ModelFormatError, match=re.escape(str(bad))):
        Tokenizer.from_file(tmp_path)
    write_tokenizer_json(tmp_path / "cfg", "llama-spm", None)
    (tmp_path / "cfg" / "tokenizer_config.json").write_text("[1, 2", encoding="utf-8")
    with pytest.raises(tinyllm.ModelFormatError, match=re.escape("tokenizer_config.json")):
        Tokenizer.from_file(tmp_path / "cfg")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tokenizer.ggml.pre": "no-such-pre"}, "unknown pre-tokenizer 'no-such-pre'"),
        ({"tokenizer.ggml.model": "rwkv"}, "unsupported tokenizer model 'rwkv'"),
        ({"tokenizer.ggml.model": None}, "no tokenizer"),
        ({"tokenizer.ggml.token_type": [1, 1]}, "token_type"),
        ({"tokenizer.ggml.merges": None}, "merges"),
        ({"tokenizer.ggml.merges": ["a b c"]}, "malformed merge"),
        ({"tokenizer.ggml.tokens": []}, "tokenizer.ggml.tokens"),
    ],
)
def test_bad_gguf_metadata(change: dict[str, Any], message: str) -> None:
    meta = {k: v for k, v in metadata("qwen2").items() if k.startswith("tokenizer.ggml.")}
    for key, value in change.items():
        if value is None:
            del meta[key]
        else:
            meta[key] = value
    with pytest.raises(tinyllm.ModelFormatError, match=rf"my\.gguf: .*{re.escape(message)}"):
        Tokenizer.from_gguf_metadata(meta, source="my.gguf")


def test_bad_sentencepiece_scores() -> None:
    meta = dict(metadata("llama-spm"))
    meta["tokenizer.ggml.scores"] = [0.0]
    with pytest.raises(tinyllm.ModelFormatError, match=re.escape("scores")):
        Tokenizer.from_gguf_metadata(meta)


def gguf_bytes(kv: dict[str, str]) -> bytes:
    """A GGUF (version 3) file with string metadata and no tensors."""
    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv))
    for key, value in kv.items():
        k, v = key.encode(), value.encode()
        out += struct.pack("<Q", len(k)) + k + struct.pack("<IQ", 8, len(v)) + v
    return out


def test_bad_gguf_files(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(vocab_path("llama-spm").read_bytes()[:5000])
    with pytest.raises(tinyllm.ModelFormatError, match=re.escape("truncated.gguf")):
        Tokenizer.from_file(truncated)
    no_vocab = tmp_path / "novocab.gguf"
    no_vocab.write_bytes(gguf_bytes({"general.architecture": "llama"}))
    with pytest.raises(tinyllm.ModelFormatError, match=re.escape("novocab.gguf: no tokenizer")):
        Tokenizer.from_file(no_vocab)
    other = tmp_path / "other.gguf"
    other.write_bytes(gguf_bytes({"tokenizer.ggml.model": "t5", "general.name": "x"}))
    with pytest.raises(tinyllm.ModelFormatError, match=r"other\.gguf: .*'t5'"):
        Tokenizer.from_file(other)


def test_bad_llama2c_files(tmp_path: Path) -> None:
    truncated = tmp_path / "tokenizer.bin"
    truncated.write_bytes((MODELS / "tok512.bin").read_bytes()[:1000])
    with pytest.raises(tinyllm.ModelFormatError, match=re.escape("tokenizer.bin")):
        Tokenizer.from_file(truncated)
    # A model file is no tokenizer.
    with pytest.raises(tinyllm.ModelFormatError, match=re.escape("stories260K.bin")):
        Tokenizer.from_file(MODELS / "stories260K.bin")


# -- conversion options ---------------------------------------------------------


def test_sentencepiece_without_space_prefix() -> None:
    meta = dict(metadata("llama-spm"))
    meta["tokenizer.ggml.add_space_prefix"] = False
    tok = Tokenizer.from_gguf_metadata(meta)
    # 'Hello world' is [15043, 3186] in llama.cpp's vectors (with the prefix).
    assert tok.encode(" Hello world", add_special_tokens=False) == [15043, 3186]
    assert tok.decode([15043, 3186]) == " Hello world"
    assert gguf_tokenizer("llama-spm").decode([15043, 3186]) == "Hello world"


@pytest.mark.parametrize("name", sorted(PRE_TOKENIZERS))
def test_pre_tokenizer_regexes_split_without_loss(name: str) -> None:
    tk = pytest.importorskip("tokenizers")
    text = "Hello, y'all! How are you 😁 ?我想在apple工作1314151天\uff5e"
    text += "\n\n  \tCửa Việt 333333 x\r\n"
    pre = tk.pre_tokenizers.Sequence(
        [
            tk.pre_tokenizers.Split(tk.Regex(r), behavior="isolated")
            for r in PRE_TOKENIZERS[name].regexes
        ]
    )
    pieces = [p for p, _ in pre.pre_tokenize_str(text)]
    assert "".join(pieces) == text
    # SuperBPE's tokens span spaces: its only split is around digits.
    assert len(pieces) > 10 or (name == "superbpe" and len(pieces) > 3)
