"""The pre-tokenizers of GGUF vocabularies (``tokenizer.ggml.pre``).

Every name llama.cpp's vocabulary loader knows is known here too, with the
regexes and defaults of its pre-tokenizer type; an unknown name is a clear
error. The expected splits below were worked out by hand from what each regex
means, not by running it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest

import tinyllm
from tinyllm import _tinyllm
from tinyllm._tokenizer import (
    PRE_TOKENIZERS,
    _known_pre_tokenizers,
    tokenizers_from_gguf_metadata,
)

from conftest import MODELS

tokenizers = pytest.importorskip("tokenizers")

#: The names in llama.cpp's ``tokenizer_pre == "..."`` chain
#: (src/llama-vocab.cpp), in its order.
LLAMA_CPP_NAMES = [
    "default",
    "minicpm5",
    *("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0"),
    *("lfm2", "jina-v5-nano"),
    *("deepseek-llm", "deepseek-coder", "deepseek-v3", "spark2_5", "youtu", "falcon", "mpt"),
    "starcoder",
    *("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de"),
    *("a.x-4.0", "mellum", "modern-bert"),
    "jais-2",
    *("gemma4", "granite-embed-multi-311m", "sarvam-moe"),
    *("jina-v1-en", "jina-v2-code", "roberta-bpe"),
    *("whitespace", "refact", "command-r"),
    *("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "qwen35", "stablelm2", "olmo", "dbrx"),
    *("smaug-bpe", "poro-chat", "glm4", "chatglm-bpe", "viking", "jais", "tekken", "smollm"),
    *("codeshell", "bloom", "gpt3-finnish", "exaone", "exaone4", "exaone-moe", "chameleon"),
    *("minerva-7b", "megrez", "gpt-4o", "llama4", "kanana2", "talkie"),
    *("granite-embed-multi-97m", "tiny_aya", "cohere2moe", "superbpe", "trillion"),
    *("granite-docling", "bailingmoe", "bailingmoe2", "llada-moe", "seed-coder", "hunyuan"),
    *("hunyuan-dense", "hy_v4", "joyai-llm", "kimi-k2", "ufakzeka", "grok-2", "afmoe"),
    *("laguna", "minimax-m2", "solar-open", "mellum2"),
]

#: llama.cpp's names whose vocabularies are not byte-level BPE (raw UTF-8,
#: spaces as U+2581 or dropped): no pre-tokenizer here can stand for them.
NOT_BYTE_LEVEL = {"gemma4", "granite-embed-multi-311m", "sarvam-moe", "whitespace"}

#: Names whose pre-tokenizer type sets llama.cpp's ``ignore_merges`` /
#: ``add_bos`` (the default of ``tokenizer.ggml.add_bos_token``).
IGNORE_MERGES = {
    *("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0"),
    *("lfm2", "jina-v5-nano", "minicpm5", "youtu", "tekken", "granite-embed-multi-97m"),
}
ADD_BOS = {
    *("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0"),
    *("lfm2", "jina-v5-nano", "tekken", "chameleon"),
}

VOCAB = MODELS / "vocab" / "ggml-vocab-llama-bpe.gguf"


def test_the_name_list_is_whole() -> None:
    assert len(LLAMA_CPP_NAMES) == len(set(LLAMA_CPP_NAMES)) == 90


@pytest.mark.parametrize("name", sorted(set(LLAMA_CPP_NAMES) - NOT_BYTE_LEVEL))
def test_every_llama_cpp_name_is_known(name: str) -> None:
    assert name in PRE_TOKENIZERS


def test_the_names_left_out_are_the_ones_that_are_not_byte_level() -> None:
    assert not NOT_BYTE_LEVEL & set(PRE_TOKENIZERS)


@pytest.mark.parametrize("name", sorted(PRE_TOKENIZERS))
def test_every_regex_compiles(name: str) -> None:
    for regex in PRE_TOKENIZERS[name].regexes:
        tokenizers.Regex(regex)


@pytest.mark.parametrize("name", sorted(PRE_TOKENIZERS))
def test_flags_are_llama_cpp_defaults(name: str) -> None:
    pre = PRE_TOKENIZERS[name]
    assert pre.ignore_merges == (name in IGNORE_MERGES)
    assert pre.add_bos == (name in ADD_BOS)


# -- the pre-tokenizers as _gguf_vocab builds them --------------------------


@cache
def _byte_level_metadata() -> dict[str, Any]:
    """A tiny byte-level vocabulary: the 256 byte symbols and a BOS token."""
    alphabet = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": [*alphabet, "<s>"],
        "tokenizer.ggml.token_type": [1] * len(alphabet) + [3],
        "tokenizer.ggml.merges": [],
        "tokenizer.ggml.bos_token_id": len(alphabet),
    }


def _vocab(pre: str) -> Any:
    return tokenizers_from_gguf_metadata(
        {**_byte_level_metadata(), "tokenizer.ggml.pre": pre}, "tiny.gguf"
    )


def _pieces(pre: str, text: str) -> list[str]:
    """``text`` split by the pre-tokenizer of ``pre``, each piece turned back
    from byte-level symbols into text."""
    tok = _vocab(pre).tokenizer
    unmap = tokenizers.decoders.ByteLevel()
    return [unmap.decode([piece]) for piece, _ in tok.pre_tokenizer.pre_tokenize_str(text)]


@pytest.mark.parametrize("name", sorted(PRE_TOKENIZERS))
def test_every_pre_tokenizer_builds_with_its_defaults(name: str) -> None:
    vocab = _vocab(name)
    assert vocab.add_bos == (name in ADD_BOS)
    assert vocab.tokenizer.model.ignore_merges == (name in IGNORE_MERGES)
    text = "Hello, World! It's 2024-06-01: 12345 apples\n\n  你好 안녕 café\tend  "
    assert "".join(_pieces(name, text)) == text


SPLITS = [
    # Digits in threes, a newline run, then spaces before a word.
    ("llama-bpe", "x 12345\n\n  y", ["x", " ", "123", "45", "\n\n", " ", " y"]),
    # Digits one by one.
    ("qwen2", "x 12345", ["x", " ", "1", "2", "3", "4", "5"]),
    # Words split at case changes, contractions kept on their word.
    ("gpt-4o", "camelCase DON'T 1234", ["camel", "Case", " DON'T", " ", "123", "4"]),
    # The same text the Llama 3 way: contractions apart.
    ("llama3", "camelCase DON'T", ["camelCase", " DON", "'T"]),
    # Han characters apart from the words next to them.
    ("deepseek-v3", "\u4f60\u597dworld 12345", ["\u4f60\u597d", "world", " ", "123", "45"]),
    # Each newline a piece; digits one by one.
    ("deepseek-coder", "a\nb 12", ["a", "\n", "b", " ", "1", "2"]),
    # Punctuation and spaces end a piece; a space starts one.
    ("bloom", "Hello, world.", ["Hello", ",", " world", "."]),
    # Digit runs in threes from their end.
    ("superbpe", "x1234567", ["x", "1", "234", "567"]),
    # The same, with the text before the run on its first group until the
    # last regex splits it off.
    ("afmoe", "ab12345", ["ab", "12", "345"]),
    # Spaces before a word in a power of two, then what is left.
    ("jais-2", "a      b", ["a", "    ", " ", " b"]),
    # Han is not a letter of a word.
    ("kimi-k2", "Hi\u4f60\u597d", ["Hi", "\u4f60\u597d"]),
    # A word goes on over single spaces.
    ("exaone-moe", "big red car", ["big red car"]),
    # No contractions: the apostrophe starts the suffix's piece.
    ("ufakzeka", "Ankara'da", ["Ankara", "'da"]),
]


@pytest.mark.parametrize(("name", "text", "expected"), SPLITS)
def test_split(name: str, text: str, expected: list[str]) -> None:
    assert _pieces(name, text) == expected


def test_a_real_vocabulary_takes_another_pre_tokenizer() -> None:
    metadata = {**_tinyllm.gguf_metadata(str(VOCAB)), "tokenizer.ggml.pre": "gpt-4o"}
    vocab = tokenizers_from_gguf_metadata(metadata, str(VOCAB))
    tok = vocab.tokenizer
    assert not vocab.add_bos  # the file does not say; gpt-4o's default is no BOS
    text = "camelCase DON'T 1234"
    pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(text)]
    assert pieces == ["camel", "Case", "\u0120DON'T", "\u0120", "123", "4"]
    assert tok.decode(tok.encode(text).ids) == text


@pytest.mark.parametrize("name", ["no-such-pre", *sorted(NOT_BYTE_LEVEL)])
def test_an_unknown_name_is_a_clear_error(name: str) -> None:
    metadata = {**_tinyllm.gguf_metadata(str(VOCAB)), "tokenizer.ggml.pre": name}
    with pytest.raises(tinyllm.ModelFormatError) as e:
        tokenizers_from_gguf_metadata(metadata, str(VOCAB))
    message = str(e.value)
    assert str(VOCAB) in message
    assert "tokenizer.ggml.pre" in message
    assert repr(name) in message
    assert ("not byte-level" in message) == (name in NOT_BYTE_LEVEL)


def test_the_list_of_known_names_is_short() -> None:
    known = _known_pre_tokenizers()
    assert known.startswith(f"{len(PRE_TOKENIZERS)} known: a.x-4.0, afmoe, ")
    assert known.endswith(", ...")
    assert len(known) < 330
