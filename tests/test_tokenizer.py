"""The tokenizer against run.c's encoder (tools/make_runc_fixtures.py ran
run.c's own encode() on these strings), and round trips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import tinyllm

from conftest import write_random_model


@pytest.fixture(scope="module")
def llama2_vocab_model(tmp_path_factory: pytest.TempPathFactory, models: Path) -> tinyllm.Model:
    """A tiny random model with Llama 2's 32000-token vocabulary, to carry
    the Llama 2 tokenizer."""
    path = tmp_path_factory.mktemp("llama2vocab") / "m.bin"
    write_random_model(
        path,
        dim=8,
        hidden_dim=16,
        n_layers=1,
        n_heads=2,
        n_kv_heads=2,
        vocab_size=32000,
        shared=True,
    )
    return tinyllm.Model(path, models / "llama2-tokenizer.bin")


@pytest.fixture(scope="module")
def by_tokenizer(
    stories: tinyllm.Model, llama2_vocab_model: tinyllm.Model
) -> dict[str, tinyllm.Model]:
    return {"tok512.bin": stories, "llama2-tokenizer.bin": llama2_vocab_model}


@pytest.mark.parametrize("name", ["tok512.bin", "llama2-tokenizer.bin"])
def test_encoding_equals_run_c(
    name: str, by_tokenizer: dict[str, tinyllm.Model], runc: dict[str, Any]
) -> None:
    model = by_tokenizer[name]
    cases = runc["encodings"][name]
    assert len(cases) >= 20
    for case in cases:
        assert model.tokenize(case["text"]) == case["ids"], repr(case["text"])


@pytest.mark.parametrize("name", ["tok512.bin", "llama2-tokenizer.bin"])
def test_round_trip(
    name: str, by_tokenizer: dict[str, tinyllm.Model], runc: dict[str, Any]
) -> None:
    model = by_tokenizer[name]
    texts = [c["text"] for c in runc["encodings"][name]]
    texts += [
        "naïve café ☕ 日本語 🦀",
        "tabs\tand\nnewlines\n",
        "  two leading spaces",
        "x" * 2000,
    ]
    for text in texts:
        assert model.detokenize(model.tokenize(text)) == text, repr(text)
        assert model.detokenize(model.tokenize(text, add_bos=False)) == text


def test_bos_and_known_ids(stories: tinyllm.Model, llama2_vocab_model: tinyllm.Model) -> None:
    assert stories.tokenize("") == [1]
    assert stories.tokenize("", add_bos=False) == []
    # Well-known Llama 2 ids (the ones llama2.c's own tests use).
    assert llama2_vocab_model.tokenize("I believe the meaning of life is") == [
        1,
        306,
        4658,
        278,
        6593,
        310,
        2834,
        338,
    ]


def test_long_text_encodes_quickly_and_correctly(llama2_vocab_model: tinyllm.Model) -> None:
    # The merge uses a heap; a long text must give the same ids as its pieces
    # would (words separated by newlines merge independently here).
    words = ["Once upon a time there was a tokenizer."] * 300
    ids = llama2_vocab_model.tokenize("\n".join(words))
    one = llama2_vocab_model.tokenize(words[0])
    assert ids[: len(one)] == one
    assert llama2_vocab_model.detokenize(ids) == "\n".join(words)


def test_detokenize_rejects_ids_outside_the_vocabulary(stories: tinyllm.Model) -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        stories.detokenize([5, 512])
    with pytest.raises(ValueError, match="negative"):
        stories.detokenize([-1])
    with pytest.raises(TypeError):
        stories.detokenize("abc")
    with pytest.raises(TypeError):
        stories.tokenize(b"abc")  # type: ignore[arg-type]
