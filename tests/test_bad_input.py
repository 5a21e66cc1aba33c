"""Bad input gets a clear Python exception naming the file or argument and
the reason; never a crash, a hang or silent garbage."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

import tinyllm
from tinyllm import ContextLengthError, ModelFormatError

from conftest import write_random_model


def test_exception_classes() -> None:
    assert issubclass(ModelFormatError, ValueError)
    assert issubclass(ContextLengthError, ValueError)


def test_missing_files(tmp_path: Path, stories_path: Path, tok512: Path) -> None:
    missing = tmp_path / "nope.bin"
    with pytest.raises(FileNotFoundError) as e:
        tinyllm.Model(missing, tok512)
    assert e.value.filename == str(missing)
    with pytest.raises(FileNotFoundError) as e:
        tinyllm.Model(stories_path, missing)
    assert e.value.filename == str(missing)
    # A directory is a Hugging Face model only with a config.json.
    with pytest.raises(FileNotFoundError) as e:
        tinyllm.Model(tmp_path, tok512)
    assert e.value.filename == str(tmp_path / "config.json")


def test_missing_tokenizer_is_looked_for_beside_the_model(
    tmp_path: Path, stories_path: Path, tok512: Path
) -> None:
    lone = tmp_path / "stories260K.bin"
    shutil.copy(stories_path, lone)
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        tinyllm.Model(lone)
    shutil.copy(tok512, tmp_path / "tok512.bin")
    assert tinyllm.Model(lone).info["tokenizer_path"] == str(tmp_path / "tok512.bin")


def cut_offsets(size: int) -> list[int]:
    """Every offset in the header region, then a spread over the file."""
    rng = np.random.default_rng(0)
    spread = rng.integers(1, size, size=60).tolist()
    return sorted({*range(0, 300), *spread, size - 1, size - 4, size // 2})


@pytest.mark.parametrize("version", [0, 1, 2])
def test_truncated_model_files(tmp_path: Path, tok512: Path, version: int) -> None:
    src = tmp_path / "full.bin"
    write_random_model(src, dim=32, hidden_dim=64, n_heads=4, version=version, group_size=32)
    data = src.read_bytes()
    tinyllm.Model(src, tok512)  # the whole file is fine
    cut = tmp_path / "cut.bin"
    for n in cut_offsets(len(data)):
        cut.write_bytes(data[:n])
        with pytest.raises(ModelFormatError) as e:
            tinyllm.Model(cut, tok512)
        assert str(cut) in str(e.value), n
        if n >= 256:
            assert "truncated" in str(e.value), (n, str(e.value))


def test_trailing_bytes(tmp_path: Path, stories_path: Path, tok512: Path) -> None:
    p = tmp_path / "long.bin"
    p.write_bytes(stories_path.read_bytes() + b"\0" * 8)
    with pytest.raises(ModelFormatError, match="trailing bytes"):
        tinyllm.Model(p, tok512)


def header_variant(tmp_path: Path, stories_path: Path, fields: tuple[int, ...]) -> Path:
    p = tmp_path / "bad.bin"
    p.write_bytes(struct.pack("<7i", *fields) + stories_path.read_bytes()[28:])
    return p


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ((64, 172, -5, 8, 4, 512, 512), "n_layers = -5 must be positive"),
        ((64, 172, 5, 0, 4, 512, 512), "n_heads = 0 must be positive"),
        ((64, 172, 5, 7, 7, 512, 512), "dim = 64 is not a multiple of n_heads = 7"),
        ((64, 172, 5, 8, 3, 512, 512), "n_heads = 8 is not a multiple of n_kv_heads = 3"),
        ((64, 172, 5, 8, 4, 512, 1 << 30), "out of range"),
        ((1 << 30, 172, 5, 8, 4, 512, 512), "out of range"),
        ((64, 172, 6, 8, 4, 512, 512), "truncated"),
        ((64, 172, 4, 8, 4, 512, 512), "trailing bytes"),
        ((64, 172, 5, 8, 4, -512, 512), "truncated"),  # an untied classifier it lacks
    ],
)
def test_corrupt_headers(
    tmp_path: Path, stories_path: Path, tok512: Path, fields: tuple[int, ...], reason: str
) -> None:
    p = header_variant(tmp_path, stories_path, fields)
    with pytest.raises(ModelFormatError, match=reason.replace("(", r"\(")):
        tinyllm.Model(p, tok512)


def test_unknown_and_foreign_files(tmp_path: Path, tok512: Path, models: Path) -> None:
    p = tmp_path / "x.bin"
    p.write_bytes(struct.pack("<Ii", 0x616B3432, 7) + bytes(300))
    with pytest.raises(ModelFormatError, match="version 7 is unknown"):
        tinyllm.Model(p, tok512)
    p.write_bytes(b"")
    with pytest.raises(ModelFormatError, match="empty"):
        tinyllm.Model(p, tok512)
    p.write_text("this is a text file, not a model\n" * 40)
    with pytest.raises(ModelFormatError, match=r"not a llama2\.c model"):
        tinyllm.Model(p, tok512)
    gguf = (models / "stories260K.gguf").read_bytes()
    p.write_bytes(gguf[: len(gguf) // 2])
    with pytest.raises(ModelFormatError, match=r"truncated: tensor '[^']+'"):
        tinyllm.Model(p, tok512)
    p.write_bytes(gguf[:1000])
    with pytest.raises(ModelFormatError, match="truncated"):
        tinyllm.Model(p, tok512)
    # A vocabulary-only file: no weights.
    with pytest.raises(ModelFormatError, match=r"tensor 'token_embd\.weight' is missing"):
        tinyllm.Model(models / "vocab" / "ggml-vocab-qwen2.gguf", tok512)
    # An architecture the engine does not run.
    data = (models / "stories260K.gguf").read_bytes()
    arch = b"\x14\x00\x00\x00\x00\x00\x00\x00general.architecture\x08\x00\x00\x00"
    at = data.index(arch) + len(arch)
    assert data[at : at + 13] == b"\x05\x00\x00\x00\x00\x00\x00\x00llama"
    p.write_bytes(data[:at] + b"\x05\x00\x00\x00\x00\x00\x00\x00gpt_x" + data[at + 13 :])
    with pytest.raises(ModelFormatError, match="unsupported architecture 'gpt_x'"):
        tinyllm.Model(p, tok512)


def test_tokenizer_that_does_not_fit(tmp_path: Path, stories_path: Path, models: Path) -> None:
    with pytest.raises(ModelFormatError, match=r"32000 tokens .* vocabulary of 512"):
        tinyllm.Model(stories_path, models / "llama2-tokenizer.bin")
    data = (models / "tok512.bin").read_bytes()
    cut = tmp_path / "tok.bin"
    for n in [0, 3, 4, 10, len(data) // 2, len(data) - 1]:
        cut.write_bytes(data[:n])
        with pytest.raises(ModelFormatError) as e:
            tinyllm.Model(stories_path, cut)
        assert str(cut) in str(e.value)


def test_prompt_longer_than_the_context(stories_path: Path, tok512: Path, golden: str) -> None:
    m = tinyllm.Model(stories_path, tok512, context_length=32)
    with pytest.raises(ContextLengthError, match=r"\d+ tokens do not fit the context of 32 tokens"):
        m.generate(golden)
    with pytest.raises(ContextLengthError):
        m.logits(m.tokenize(golden))
    # the model is still usable
    assert m.generate("Once upon a time", max_tokens=5, temperature=0) == ", there was a little"
    with pytest.raises(ValueError, match="context_length"):
        tinyllm.Model(stories_path, tok512, context_length=100_000)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_tokens": "5"}, TypeError, "max_tokens must be an int"),
        ({"max_tokens": -1}, ValueError, "max_tokens must be >= 0"),
        ({"temperature": -1.0}, ValueError, "temperature"),
        ({"temperature": float("nan")}, ValueError, "temperature"),
        ({"temperature": "hot"}, TypeError, "temperature must be a number"),
        ({"top_p": 0.0}, ValueError, "top_p"),
        ({"top_p": 1.5}, ValueError, "top_p"),
        ({"min_p": -0.1}, ValueError, "min_p"),
        ({"top_k": -3}, ValueError, "top_k"),
        ({"repeat_penalty": 0.0}, ValueError, "repeat_penalty"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"stop": 3}, TypeError, "stop"),
        ({"stop": ["a", 3]}, TypeError, "stop"),
    ],
)
def test_bad_generation_arguments(
    stories: tinyllm.Model, kwargs: dict[str, object], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        stories.generate("Once", **kwargs)  # type: ignore[arg-type]


def test_bad_prompts_and_ids(stories: tinyllm.Model) -> None:
    with pytest.raises(TypeError, match="prompt"):
        stories.generate(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out of range"):
        stories.generate([1, 600])
    with pytest.raises(ValueError, match="at least BOS"):
        stories.generate([])
    with pytest.raises(ValueError, match="out of range"):
        stories.logits([1, 2, 9999])
    with pytest.raises(TypeError, match="ints"):
        stories.logits([1, 2.5])  # type: ignore[list-item]
    assert stories.logits([]).shape == (0, 512)


def test_bad_constructor_arguments(stories_path: Path, tok512: Path) -> None:
    with pytest.raises(TypeError, match="path must be a path"):
        tinyllm.Model(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tokenizer must be a path"):
        tinyllm.Model(stories_path, 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_threads"):
        tinyllm.Model(stories_path, tok512, n_threads=0)
    with pytest.raises(TypeError, match="n_threads"):
        tinyllm.Model(stories_path, tok512, n_threads="2")  # type: ignore[arg-type]
