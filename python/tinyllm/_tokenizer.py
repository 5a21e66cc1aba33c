"""Text to token ids and back: :class:`Tokenizer`.

One class covers three kinds of vocabulary file:

* a Hugging Face ``tokenizer.json`` (or a directory holding one, with its
  ``tokenizer_config.json``), run by the ``tokenizers`` package;
* a GGUF file (a whole model or a vocabulary-only file): its
  ``tokenizer.ggml.*`` metadata is turned into an equivalent ``tokenizers``
  pipeline by :func:`tokenizers_from_gguf_metadata`, so that it tokenizes as
  llama.cpp does;
* a llama2.c ``tokenizer.bin``, run by the engine's own tokenizer (which
  matches Karpathy's ``run.c``).

Two ways to encode matter to a chat engine. Plain text (``parse_special=False``,
the default) never yields a control token, whatever it contains: a user who
types ``<|im_end|>`` gets the tokens of those characters. Template text
(``parse_special=True``) turns the spelling of each special token into that
token.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tinyllm import _tinyllm
from tinyllm._tinyllm import ModelFormatError

if TYPE_CHECKING:
    import tokenizers

PathLike = str | os.PathLike[str]

__all__ = [
    "PRE_TOKENIZERS",
    "GGUFVocab",
    "StreamDecoder",
    "Tokenizer",
    "tokenizers_from_gguf_metadata",
]

# GGUF token types (``tokenizer.ggml.token_type``).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

#: Spellings of tokens that end a turn in common chat formats; those present
#: in a vocabulary (as special tokens) join :attr:`Tokenizer.eos_ids`.
END_OF_TURN_TOKENS = (
    "</s>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<eos>",
    "<|EOT|>",
    "<EOT>",
)

# Pre-tokenizer regexes of byte-level BPE vocabularies, written in the
# Oniguruma syntax of the ``tokenizers`` package. A vocabulary names its own in
# ``tokenizer.ggml.pre``; several regexes split the text one after the other
# (each match, and each run of text between matches, becomes a piece).
# Where llama.cpp spells a regex for C++'s std::regex (case-insensitive
# contractions as '[sS], letter classes as lookaheads), the regex here is the
# model's own, which Oniguruma takes as it is.
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2's without the contractions: a Turkish suffix after an apostrophe stays
# with its word.
_UFAKZEKA = r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# Qwen 3.5: combining marks (\p{M}) stay with their letters.
_QWEN35 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SEED_CODER = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}\r\n]+"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_MINICPM5 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Llama 3's, but a run of spaces before a word splits into powers of two.
_JAIS2 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)"
    r"|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s"
)
# Possessive quantifiers as in the model's own regex (llama.cpp makes them
# greedy, which matches the same here).
_BAILINGMOE = (
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*"
    r"|\s*[\r\n]|\s+(?!\S)|\s+"
)
# A word may hold single spaces between letters.
_EXAONE_MOE = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+"
)
_UPPER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"
_LOWER = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_TEKKEN = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Words split at case changes (camelCase is two pieces), contractions kept.
_CASED_WORDS = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTIONS}?"
    rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_CONTRACTIONS}?"
)
_GPT4O = _CASED_WORDS + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_YOUTU = _CASED_WORDS + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_NOT_HAN_UPPER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]"
_NOT_HAN_LOWER = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]"
_KIMI_K2 = (
    rf"\p{{Han}}+|[^\r\n\p{{L}}\p{{N}}]?{_NOT_HAN_UPPER}*{_NOT_HAN_LOWER}+{_CONTRACTIONS}?"
    rf"|[^\r\n\p{{L}}\p{{N}}]?{_NOT_HAN_UPPER}+{_NOT_HAN_LOWER}*{_CONTRACTIONS}?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BLOOM = " ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"
# DeepSeek V3's: an ASCII punctuation mark starts an ASCII word.
_PUNCT_WORDS = (
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
)
_DEEPSEEK3 = _PUNCT_WORDS + r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_HAN_KANA = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
# DeepSeek LLM's letters: the cased letters (Lu, Ll, Lt) of an older Unicode.
_DEEPSEEK_LETTERS = (
    "[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293"
    "\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c"
    "\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5"
    "\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    "\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59"
    "\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc"
    "\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107"
    "\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee"
    "\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e"
    "\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a"
    "\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb"
    "\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]"
)
_HAN_HANGUL = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
# Youtu: Hangul, CJK punctuation, Bopomofo, and Han and kana, each a piece.
_YOUTU_CJK = (
    "[\uac00-\ud7a3\u3131-\u318e]+"
    "|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c\u3001-\u303f\ufe30-\ufe4f]+"
    "|[\u3105-\u312f]+|[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
)
# AFMoE: a run of digits splits into groups of three from its end, and (as in
# llama.cpp) the text before the run stays with its first group.
_AFMOE_DIGITS = r"\P{N}*\p{N}{1,3}(?=(?:\p{N}{3})*(?!\p{N}))"
# AFMoE: Han, kana, Thai, Lao, Khmer, Myanmar, Hangul and their neighbours.
_AFMOE_ASIAN = (
    "[\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff\u3040-\u309f\u30a0-\u30ff\uff65-\uff9f"
    "\u2f00-\u2fdf\u0e40-\u0e7f\u0e80-\u0eff\u1780-\u17ff\u1000-\u109f\uaa60-\uaa7f"
    "\ua9e0-\ua9ff\uac00-\ud7af\u1100-\u11ff]+"
)


@dataclass(frozen=True)
class _PreTokenizer:
    regexes: tuple[str, ...]
    #: A piece that is a whole token is taken as is, without merges.
    ignore_merges: bool = False
    #: The default of ``tokenizer.ggml.add_bos_token``.
    add_bos: bool = False


_LLAMA3_PRE = _PreTokenizer((_LLAMA3,), ignore_merges=True, add_bos=True)
_DIGIT_THEN_GPT2 = _PreTokenizer((r"\p{N}", _GPT2))
_DEEPSEEK3_PRE = _PreTokenizer((r"\p{N}{1,3}", _HAN_KANA, _DEEPSEEK3))

#: ``tokenizer.ggml.pre`` names and their pre-tokenizers (the names are
#: llama.cpp's). Not here, though llama.cpp knows them: "gemma4",
#: "granite-embed-multi-311m", "sarvam-moe" and "whitespace", whose
#: vocabularies are not byte-level (raw UTF-8, spaces as U+2581 or dropped).
#: llama.cpp's pre-tokenizers of vocabularies that are not byte-level, which
#: a byte-level BPE cannot stand for: named as such in the error.
NOT_BYTE_LEVEL = frozenset({"gemma4", "granite-embed-multi-311m", "sarvam-moe", "whitespace"})

PRE_TOKENIZERS: dict[str, _PreTokenizer] = {
    "default": _PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")),
    **dict.fromkeys(
        (
            *("gpt-2", "gpt2", "phi-2", "mpt", "olmo", "exaone4", "jais", "trillion"),
            *("granite-docling", "gigachat", "a.x-4.0", "mellum", "modern-bert"),
            *("jina-es", "jina-de", "jina-v2-es", "jina-v2-de", "jina-v1-en", "jina-v2-code"),
            "roberta-bpe",
        ),
        _PreTokenizer((_GPT2,)),
    ),
    **dict.fromkeys(
        (
            *("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral"),
            *("midm-2.0", "lfm2", "jina-v5-nano"),
        ),
        _LLAMA3_PRE,
    ),
    **dict.fromkeys(("dbrx", "smaug-bpe", "chatglm-bpe", "glm4"), _PreTokenizer((_LLAMA3,))),
    "jais-2": _PreTokenizer((_JAIS2,)),
    **dict.fromkeys(
        (
            *("qwen2", "deepseek-r1-qwen", "megrez", "stablelm2", "hunyuan", "kormo"),
            *("f2llmv2", "grok-2", "solar-open"),
        ),
        _PreTokenizer((_QWEN2,)),
    ),
    "qwen35": _PreTokenizer((_QWEN35,)),
    "ufakzeka": _PreTokenizer((_UFAKZEKA,)),
    "seed-coder": _PreTokenizer((_SEED_CODER,)),
    "minicpm5": _PreTokenizer((r"\p{N}{1,3}", _MINICPM5), ignore_merges=True),
    "laguna": _PreTokenizer((r"[^\n]+|[\n]+", _QWEN2)),
    **dict.fromkeys(("bailingmoe", "bailingmoe2", "llada-moe"), _PreTokenizer((_BAILINGMOE,))),
    "exaone-moe": _PreTokenizer((_EXAONE_MOE,)),
    **dict.fromkeys(
        (
            *("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone"),
            *("minerva-7b", "mellum2"),
        ),
        _DIGIT_THEN_GPT2,
    ),
    "tekken": _PreTokenizer((_TEKKEN,), ignore_merges=True, add_bos=True),
    **dict.fromkeys(
        ("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _PreTokenizer((_GPT4O,))
    ),
    "granite-embed-multi-97m": _PreTokenizer((_GPT4O,), ignore_merges=True),
    **dict.fromkeys(
        ("tiny_aya", "cohere2moe"), _PreTokenizer((r"\d{1,3}(?=(?:\d{3})*\b)", _GPT4O))
    ),
    "youtu": _PreTokenizer((_YOUTU_CJK, _YOUTU), ignore_merges=True),
    "kimi-k2": _PreTokenizer((_KIMI_K2,)),
    "superbpe": _PreTokenizer((r"\p{N}+", r"(?=(\d{3})+(?!\d))")),
    "falcon": _PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]")),
    "deepseek-llm": _PreTokenizer(
        (
            r"[\r\n]",
            rf"\s?{_DEEPSEEK_LETTERS}+",
            "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
            r"\s+\z",
            _HAN_HANGUL,
            r"\p{N}+",
        )
    ),
    "deepseek-coder": _PreTokenizer(
        (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _HAN_HANGUL, r"\p{N}"),
    ),
    **dict.fromkeys(("deepseek-v3", "hunyuan-dense", "hy_v4", "joyai-llm"), _DEEPSEEK3_PRE),
    "spark2_5": _PreTokenizer(
        (
            r"\p{N}{1,3}",
            _HAN_KANA,
            _PUNCT_WORDS + r"| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+",
            r"\p{N}",
        )
    ),
    "afmoe": _PreTokenizer((_AFMOE_DIGITS, _AFMOE_ASIAN, _DEEPSEEK3)),
    "chameleon": _PreTokenizer(
        (
            r"<sentinel:[0-9]+>",
            r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
            r"([\t\n]|    |  )",
            r"\p{N}",
            r"[\p{P}!-/:-@\[-`{-~]",
            _GPT2,
        ),
        add_bos=True,
    ),
    **dict.fromkeys(("bloom", "poro-chat", "gpt3-finnish"), _PreTokenizer((_BLOOM,))),
    "viking": _PreTokenizer((_BLOOM, r"\p{N}")),
}


def _known_pre_tokenizers(limit: int = 300) -> str:
    """How many pre-tokenizers there are and their names, cut to about
    ``limit`` characters, for an error message."""
    names = sorted(PRE_TOKENIZERS)
    listed = ", ".join(names)
    if len(listed) > limit:
        listed = listed[: listed.rfind(", ", 0, limit)] + ", ..."
    return f"{len(names)} known: {listed}"


def _import_tokenizers(what: str) -> Any:
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"reading {what} needs the 'tokenizers' package (pip install tokenizers)"
        ) from e
    if not hasattr(tokenizers.Tokenizer, "encode_special_tokens"):  # pragma: no cover
        raise ImportError(
            f"reading {what} needs tokenizers >= 0.19 (found {tokenizers.__version__})"
        )
    return tokenizers


# -- GGUF --------------------------------------------------------------------


@dataclass(frozen=True)
class GGUFVocab:
    """What :func:`tokenizers_from_gguf_metadata` makes of GGUF metadata."""

    tokenizer: tokenizers.Tokenizer
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    #: Every id that ends generation: EOS, ``eot``/``eom`` and end-of-turn tokens.
    eos_ids: frozenset[int]
    add_bos: bool
    add_eos: bool
    chat_template: str | None


def tokenizers_from_gguf_metadata(
    metadata: Mapping[str, Any], source: str = "GGUF metadata"
) -> GGUFVocab:
    """Builds a ``tokenizers.Tokenizer`` equivalent to llama.cpp's tokenizer
    from the ``tokenizer.ggml.*`` keys of a GGUF file.

    ``metadata`` maps each key to its value (arrays as lists), however the
    file was read. ``source`` names the file in error messages.

    ``tokenizer.ggml.model`` ``"llama"`` (SentencePiece BPE, with scores and
    byte tokens ``<0xNN>``) becomes a BPE model with byte fallback whose merge
    order follows the scores of the merged pieces, as SentencePiece merges the
    best-scoring pair first; ``"gpt2"`` (byte-level BPE) becomes a BPE model
    with the file's merges behind the pre-tokenizer named by
    ``tokenizer.ggml.pre`` (see :data:`PRE_TOKENIZERS`).

    Raises:
        ModelFormatError: a key is missing or malformed, or the tokenizer model
            or pre-tokenizer is one this function does not know.
    """
    try:
        return _gguf_vocab(metadata, source)
    except ModelFormatError:
        raise
    except Exception as e:  # ``tokenizers`` reports a bad vocabulary as a bare Exception
        raise ModelFormatError(f"{source}: the vocabulary is malformed: {_short(e)}") from e


def _gguf_vocab(metadata: Mapping[str, Any], source: str) -> GGUFVocab:
    tk = _import_tokenizers("GGUF vocabularies")

    def fail(reason: str) -> ModelFormatError:
        return ModelFormatError(f"{source}: {reason}")

    model = metadata.get("tokenizer.ggml.model")
    if model is None:
        raise fail("no tokenizer in this GGUF file (tokenizer.ggml.model is missing)")
    if model not in ("llama", "gpt2"):
        raise fail(
            f"unsupported tokenizer model {_short(model)} "
            "(tokenizer.ggml.model; supported: llama, gpt2)"
        )
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise fail("tokenizer.ggml.tokens is missing or is not a list of strings")
    n = len(tokens)
    types = metadata.get("tokenizer.ggml.token_type", [NORMAL] * n)
    if not isinstance(types, list) or len(types) != n:
        raise fail(f"tokenizer.ggml.token_type does not hold one type for each of {n} tokens")

    def special_id(key: str, default: int | None = None) -> int | None:
        name = f"tokenizer.ggml.{key}_token_id"
        value = metadata.get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(f"{name} is {_short(value)}, not a token id")
        # llama.cpp's "no such token" is -1, which files that store the id
        # as a u32 hold as 0xFFFFFFFF: both mean none.
        if value in (-1, 0xFFFFFFFF):
            return None
        if not 0 <= value < n:
            raise fail(f"{name} = {value} is not a token of the {n}-token vocabulary")
        return value

    def flag(key: str, default: bool) -> bool:
        value = metadata.get(f"tokenizer.ggml.{key}", default)
        return bool(value)

    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)

    if model == "llama":
        scores = metadata.get("tokenizer.ggml.scores", [0.0] * n)
        if not isinstance(scores, list) or len(scores) != n:
            raise fail(f"tokenizer.ggml.scores does not hold one score for each of {n} tokens")
        # SentencePiece's own defaults where the file names no ids.
        unk_id, bos_id, eos_id = (
            special_id("unknown", 0),
            special_id("bos", 1),
            special_id("eos", 2),
        )
        add_prefix = flag("add_space_prefix", flag("add_dummy_prefix", True))
        bpe = tk.models.BPE(
            vocab,
            _merges_from_scores(tokens, [float(s) for s in scores], types, vocab),
            unk_token=tokens[unk_id] if unk_id is not None else None,
            fuse_unk=True,
            byte_fallback=True,
        )
        tok = tk.Tokenizer(bpe)
        replace = tk.normalizers.Replace(" ", "\u2581")
        tok.normalizer = (
            tk.normalizers.Sequence([tk.normalizers.Prepend("\u2581"), replace])
            if add_prefix
            else replace
        )
        steps = [tk.decoders.Replace("\u2581", " "), tk.decoders.ByteFallback(), tk.decoders.Fuse()]
        if add_prefix:
            steps.append(tk.decoders.Strip(" ", 1, 0))
        tok.decoder = tk.decoders.Sequence(steps)
        add_bos_default = True
    else:  # "gpt2"
        merges = metadata.get("tokenizer.ggml.merges")
        if not isinstance(merges, list):
            raise fail("tokenizer.ggml.merges is missing (byte-level BPE needs its merges)")
        pairs = []
        for m in merges:
            parts = m.split(" ") if isinstance(m, str) else []
            if len(parts) != 2:
                raise fail(f"tokenizer.ggml.merges holds a malformed merge {_short(m)}")
            pairs.append((parts[0], parts[1]))
        pre_name = metadata.get("tokenizer.ggml.pre") or "default"
        pre = PRE_TOKENIZERS.get(pre_name)
        if pre is None and pre_name in NOT_BYTE_LEVEL:
            raise fail(
                f"pre-tokenizer {pre_name!r} (tokenizer.ggml.pre) is llama.cpp's for a vocabulary "
                "that is not byte-level (raw UTF-8 pieces), which this build does not read"
            )
        if pre is None:
            raise fail(
                f"unknown pre-tokenizer {_short(pre_name)} (tokenizer.ggml.pre); "
                f"{_known_pre_tokenizers()}"
            )
        bpe = tk.models.BPE(vocab, pairs, ignore_merges=pre.ignore_merges)
        tok = tk.Tokenizer(bpe)
        splits = [tk.pre_tokenizers.Split(tk.Regex(r), behavior="isolated") for r in pre.regexes]
        tok.pre_tokenizer = tk.pre_tokenizers.Sequence(
            [*splits, tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        tok.decoder = tk.decoders.ByteLevel()
        bos_id, eos_id = special_id("bos"), special_id("eos")
        add_bos_default = pre.add_bos

    # Control and unknown tokens are special: recognised in template text only
    # and dropped by decode(skip_special_tokens=True). User-defined tokens are
    # recognised in any text, as llama.cpp does.
    added = []
    for i, (t, ty) in enumerate(zip(tokens, types, strict=True)):
        if ty in (CONTROL, UNKNOWN, USER_DEFINED) and vocab[t] == i and t:
            added.append(tk.AddedToken(t, special=ty != USER_DEFINED, normalized=False))
    tok.add_special_tokens([a for a in added if a.special])
    tok.add_tokens([a for a in added if not a.special])
    tok.encode_special_tokens = True

    eos_ids = {i for i in (eos_id, special_id("eot"), special_id("eom")) if i is not None}
    for name in END_OF_TURN_TOKENS:
        end = vocab.get(name)
        if end is not None and types[end] in (CONTROL, USER_DEFINED):
            eos_ids.add(end)
    add_bos = flag("add_bos_token", add_bos_default) and bos_id is not None
    add_eos = flag("add_eos_token", False) and eos_id is not None
    template = metadata.get("tokenizer.chat_template")
    return GGUFVocab(
        tokenizer=tok,
        vocab_size=n,
        bos_id=bos_id,
        eos_id=eos_id,
        eos_ids=frozenset(eos_ids),
        add_bos=add_bos,
        add_eos=add_eos,
        chat_template=template if isinstance(template, str) else None,
    )


def _merges_from_scores(
    tokens: Sequence[str], scores: Sequence[float], types: Sequence[int], vocab: Mapping[str, int]
) -> list[tuple[str, str]]:
    """The merges of a SentencePiece BPE vocabulary: every split of a piece
    into two pieces, the merges that make better-scoring pieces first."""
    mergeable = (NORMAL, USER_DEFINED, UNUSED)
    ranked: list[tuple[float, int, int, int]] = []
    for i, piece in enumerate(tokens):
        if types[i] not in mergeable or len(piece) < 2 or vocab[piece] != i:
            continue
        for cut in range(1, len(piece)):
            left = vocab.get(piece[:cut])
            right = vocab.get(piece[cut:])
            if left is None or right is None:
                continue
            if types[left] not in mergeable or types[right] not in mergeable:
                continue
            ranked.append((-scores[i], i, left, right))
    ranked.sort()
    return [(tokens[left], tokens[right]) for _, _, left, right in ranked]


# -- backends ----------------------------------------------------------------


class _Backend(Protocol):
    def encode(self, text: str, parse_special: bool) -> list[int]: ...
    def decode(self, ids: list[int], skip_special: bool) -> str: ...
    def token_to_id(self, token: str) -> int | None: ...
    def id_to_token(self, token_id: int) -> str | None: ...
    def special_ids(self) -> frozenset[int]: ...


class _HFBackend:
    """A ``tokenizers.Tokenizer`` (its post-processor is not used: the
    :class:`Tokenizer` adds BOS/EOS itself)."""

    def __init__(self, tok: tokenizers.Tokenizer) -> None:
        self._tok = tok
        # encode_special_tokens is a setting of the shared object: a lock keeps
        # one thread's plain encode from seeing another's template encode.
        self._lock = threading.Lock()
        self._special = frozenset(i for i, t in tok.get_added_tokens_decoder().items() if t.special)

    def encode(self, text: str, parse_special: bool) -> list[int]:
        with self._lock:
            self._tok.encode_special_tokens = not parse_special
            return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int], skip_special: bool) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def special_ids(self) -> frozenset[int]:
        return self._special

    def token_bytes_table(self, vocab_size: int) -> tuple[list[bytes], bool]:
        decoder = json.loads(self._tok.to_str()).get("decoder") or {}
        sequence = decoder.get("type") == "Sequence"
        steps = decoder.get("decoders", []) if sequence else [decoder]
        kinds = {d.get("type") for d in steps}
        byte_level = "ByteLevel" in kinds
        byte_fallback = "ByteFallback" in kinds
        metaspace = "Metaspace" in kinds or any(
            d.get("type") == "Replace" and d.get("pattern", {}).get("String") == "\u2581"
            for d in steps
        )
        strip = any(d.get("type") == "Strip" and d.get("start", 0) > 0 for d in steps) or any(
            d.get("type") == "Metaspace" and d.get("prepend_scheme", "always") != "never"
            for d in steps
        )
        unbyte = {c: b for b, c in _bytes_to_unicode().items()}
        added = self._tok.get_added_tokens_decoder()
        table: list[bytes] = []
        for i in range(vocab_size):
            piece = self._tok.id_to_token(i)
            if piece is None or i in self._special:
                table.append(b"")
            elif i in added:
                table.append(added[i].content.encode("utf-8"))
            elif byte_fallback and _BYTE_TOKEN.fullmatch(piece):
                table.append(bytes([int(piece[3:5], 16)]))
            elif byte_level:
                table.append(bytes(unbyte.get(c, 0x3F) for c in piece))
            elif metaspace:
                table.append(piece.replace("\u2581", " ").encode("utf-8"))
            else:
                table.append(self._tok.decode([i], skip_special_tokens=False).encode("utf-8"))
        return table, strip and metaspace


_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _bytes_to_unicode() -> dict[int, str]:
    """Byte-level BPE's alphabet: every byte as a printable character
    (printable Latin-1 bytes as themselves, the rest from U+0100 up)."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    out = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + extra)
            extra += 1
    return out


class _Llama2cBackend:
    """The engine's llama2.c tokenizer (``tinyllm._tinyllm.Llama2cTokenizer``).

    Its vocabulary spells BOS and EOS ``"\\n<s>\\n"`` and ``"\\n</s>\\n"``;
    here they (and ``<unk>``) are the special tokens ``<s>``, ``</s>`` and
    ``<unk>``, recognised in template text. Text between special tokens is
    encoded as run.c encodes a prompt (with its dummy-prefix space).
    """

    def __init__(
        self, impl: _tinyllm.Llama2cTokenizer, vocab_size: int, bos_id: int, eos_id: int
    ) -> None:
        self._impl = impl
        self._n = vocab_size
        wanted = {0: "<unk>", bos_id: "<s>", eos_id: "</s>"}
        self._names = {
            i: name
            for i, name in wanted.items()
            if 0 <= i < vocab_size and bytes(impl.piece(i)).strip() == name.encode()
        }
        by_length = sorted(self._names.items(), key=lambda kv: -len(kv[1]))
        self._split = re.compile("|".join(re.escape(name) for _, name in by_length))
        self._by_name = {name: i for i, name in self._names.items()}
        self._ids: dict[bytes, int] | None = None

    def encode(self, text: str, parse_special: bool) -> list[int]:
        if not parse_special or not self._names:
            return list(self._impl.encode(text, False))
        out: list[int] = []
        pos = 0
        for m in self._split.finditer(text):
            if m.start() > pos:
                out += self._impl.encode(text[pos : m.start()], False)
            out.append(self._by_name[m.group()])
            pos = m.end()
        if pos < len(text):
            out += self._impl.encode(text[pos:], False)
        return out

    def decode(self, ids: list[int], skip_special: bool) -> str:
        # The engine drops BOS and EOS, and the space that starts the text
        # after BOS. Other special ids are shown here unless skipped.
        parts: list[str] = []
        run: list[int] = []
        for i in ids:
            if i in self._names:
                if run:
                    parts.append(self._impl.decode(run))
                    run = []
                if not skip_special:
                    parts.append(self._names[i])
            else:
                run.append(i)
        if run:
            parts.append(self._impl.decode(run))
        return "".join(parts)

    def token_to_id(self, token: str) -> int | None:
        if token in self._by_name:
            return self._by_name[token]
        if self._ids is None:
            ids: dict[bytes, int] = {}
            for i in range(self._n):
                ids.setdefault(bytes(self._impl.piece(i)), i)
            self._ids = ids
        return self._ids.get(token.encode("utf-8"))

    def piece_bytes(self, token_id: int) -> bytes:
        piece = bytes(self._impl.piece(token_id))
        if _BYTE_TOKEN.fullmatch(piece.decode("latin-1")):
            return bytes([int(piece[3:5], 16)])
        return piece

    def id_to_token(self, token_id: int) -> str | None:
        if not 0 <= token_id < self._n:
            return None
        if token_id in self._names:
            return self._names[token_id]
        return bytes(self._impl.piece(token_id)).decode("utf-8", errors="replace")

    def special_ids(self) -> frozenset[int]:
        return frozenset(self._names)


# -- the public class --------------------------------------------------------


class Tokenizer:
    """Turns text into token ids and back.

    Open one with :meth:`from_file`. ``encode`` adds BOS (and EOS) as the
    vocabulary asks when ``add_special_tokens`` is true; ``decode`` and
    :meth:`decoder` turn ids back into text.

    Example:
        >>> tok = tinyllm.Tokenizer.from_file("models/ggml-vocab-llama-bpe.gguf")
        >>> tok.encode("Hello world", add_special_tokens=False)
        [9906, 1917]
        >>> tok.decode([9906, 1917])
        'Hello world'
    """

    def __init__(
        self,
        backend: _Backend,
        *,
        source: str,
        vocab_size: int,
        bos_id: int | None,
        eos_id: int | None,
        eos_ids: Iterable[int] = (),
        prefix: Sequence[int] = (),
        suffix: Sequence[int] = (),
        chat_template: str | None = None,
    ) -> None:
        """Internal: use :meth:`from_file` or :meth:`from_gguf_metadata`."""
        self._backend = backend
        self._source = source
        self._vocab_size = vocab_size
        self._bos_id = bos_id
        self._eos_id = eos_id
        ends = set(eos_ids)
        if eos_id is not None:
            ends.add(eos_id)
        self._eos_ids = frozenset(ends)
        self._prefix = list(prefix)
        self._suffix = list(suffix)
        self._chat_template = chat_template
        self._bytes: list[bytes] | None = None

    # -- opening -------------------------------------------------------------

    @classmethod
    def from_file(cls, path: PathLike) -> Tokenizer:
        """Opens a tokenizer: a ``tokenizer.json``, a directory holding one
        (with ``tokenizer_config.json`` and ``generation_config.json`` if
        present, for BOS/EOS, ``add_bos_token`` and the chat template), a GGUF
        file, or a llama2.c ``tokenizer.bin``.

        Raises:
            FileNotFoundError: ``path`` does not exist (or a directory holds no
                ``tokenizer.json``).
            ModelFormatError: the file is truncated, corrupt or of a kind (or
                tokenizer model, or pre-tokenizer) that is not supported.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or path, not {type(path).__name__}")
        p = Path(path)
        if p.is_dir():
            json_path = p / "tokenizer.json"
            if not json_path.is_file():
                raise FileNotFoundError(
                    2, f"no tokenizer.json in the directory {str(p)!r}", str(json_path)
                )
            return cls._from_hf_json(json_path)
        if not p.is_file():
            raise FileNotFoundError(2, f"no such tokenizer file: {str(p)!r}", str(p))
        with p.open("rb") as f:
            head = f.read(64)
        if head[:4] == b"GGUF":
            return cls._from_gguf(p)
        if p.suffix == ".json" or head.lstrip()[:1] == b"{":
            return cls._from_hf_json(p)
        return cls._from_llama2c(p)

    @classmethod
    def from_gguf_metadata(
        cls, metadata: Mapping[str, Any], source: str = "GGUF metadata"
    ) -> Tokenizer:
        """The tokenizer described by the ``tokenizer.ggml.*`` keys of GGUF
        metadata (see :func:`tokenizers_from_gguf_metadata`)."""
        v = tokenizers_from_gguf_metadata(metadata, source)
        return cls(
            _HFBackend(v.tokenizer),
            source=source,
            vocab_size=v.vocab_size,
            bos_id=v.bos_id,
            eos_id=v.eos_id,
            eos_ids=v.eos_ids,
            prefix=[v.bos_id] if v.add_bos and v.bos_id is not None else [],
            suffix=[v.eos_id] if v.add_eos and v.eos_id is not None else [],
            chat_template=v.chat_template,
        )

    @classmethod
    def _from_gguf(cls, path: Path) -> Tokenizer:
        return cls.from_gguf_metadata(_tinyllm.gguf_metadata(str(path)), source=str(path))

    @classmethod
    def _from_llama2c(cls, path: Path) -> Tokenizer:
        impl = _tinyllm.Llama2cTokenizer(str(path))
        return cls._from_llama2c_impl(impl, source=str(path))

    @classmethod
    def _from_llama2c_impl(cls, impl: _tinyllm.Llama2cTokenizer, source: str) -> Tokenizer:
        """Wraps an engine-side ``Llama2cTokenizer``. As in run.c, a
        generated BOS ends the text as EOS does."""
        n, bos, eos = int(impl.vocab_size), int(impl.bos_id), int(impl.eos_id)
        backend = _Llama2cBackend(impl, n, bos, eos)
        return cls(
            backend,
            source=source,
            vocab_size=n,
            bos_id=bos,
            eos_id=eos,
            eos_ids=[bos, eos],
            prefix=[bos],
        )

    @classmethod
    def from_json_str(
        cls, text: str, info: Mapping[str, Any], source: str = "tokenizer.json"
    ) -> Tokenizer:
        """A ``tokenizer.json`` given as text, with its special ids in
        ``info`` (``bos_id``, ``eos_id``, ``add_bos``, ``stop_ids``), as a
        tinyllm file stores them (see :meth:`to_json_str`)."""
        tk = _import_tokenizers(source)
        try:
            tok = tk.Tokenizer.from_str(text)
        except Exception as e:
            raise ModelFormatError(f"{source}: not a valid tokenizer.json: {_short(e)}") from e
        bos, eos = info.get("bos_id"), info.get("eos_id")
        vocab = _checked_vocab(tok, source)
        return cls(
            _HFBackend(tok),
            source=source,
            vocab_size=max(vocab.values(), default=-1) + 1,
            bos_id=bos,
            eos_id=eos,
            eos_ids=[int(i) for i in info.get("stop_ids", [])],
            prefix=[bos] if info.get("add_bos") and bos is not None else [],
        )

    def to_json_str(self) -> tuple[str, dict[str, Any]]:
        """This tokenizer as a ``tokenizer.json`` text and its special ids,
        for storing in a tinyllm file (not for llama2.c vocabularies, which
        tinyllm files store in their own form)."""
        backend = self._backend
        if not isinstance(backend, _HFBackend):
            raise TypeError("a llama2.c vocabulary has no tokenizer.json form")
        info = {
            "bos_id": self._bos_id,
            "eos_id": self._eos_id,
            "add_bos": self.add_bos,
            "stop_ids": sorted(self._eos_ids - {self._eos_id}),
        }
        return backend._tok.to_str(), info

    @property
    def is_llama2c(self) -> bool:
        """Whether this is a llama2.c vocabulary (run by the engine itself)."""
        return isinstance(self._backend, _Llama2cBackend)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes token ``token_id`` adds to a text (``b" the"`` for
        ``"▁the"`` or ``"Ġthe"``, one byte for ``"<0x0A>"``); for a special
        token, its spelling. Empty for an id outside the vocabulary."""
        if not 0 <= token_id < self._vocab_size:
            return b""
        if token_id in self.special_ids:
            return (self.id_to_token(token_id) or "").encode("utf-8")
        backend = self._backend
        if isinstance(backend, _Llama2cBackend):
            return backend.piece_bytes(token_id)
        if self._bytes is None:
            self._bytes = self.token_bytes_table()[0]
        return self._bytes[token_id]

    def token_bytes_table(self) -> tuple[list[bytes], bool]:
        """The bytes each token adds to a text (empty for special tokens),
        and whether a piece at the start of the text drops its leading space
        (SentencePiece's dummy prefix): what the engine needs to stream text
        without calling back into Python."""
        backend = self._backend
        if not isinstance(backend, _HFBackend):
            raise TypeError("llama2.c vocabularies stream text in the engine")
        return backend.token_bytes_table(self._vocab_size)

    @classmethod
    def _from_hf_json(cls, path: Path) -> Tokenizer:
        tk = _import_tokenizers(str(path))
        try:
            tok = tk.Tokenizer.from_file(str(path))
        except Exception as e:
            raise ModelFormatError(f"{path}: not a valid tokenizer.json: {_short(e)}") from e
        config = _read_json_object(path.parent / "tokenizer_config.json")
        generation = _read_json_object(path.parent / "generation_config.json")
        backend = _HFBackend(tok)

        def named(key: str) -> int | None:
            value = config.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            return tok.token_to_id(value) if isinstance(value, str) else None

        # What the post-processor puts around a sequence (BOS, EOS, ...).
        probe = "a"
        bare = tok.encode(probe, add_special_tokens=False).ids
        full = tok.encode(probe, add_special_tokens=True).ids
        prefix: list[int] = []
        suffix: list[int] = []
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                prefix, suffix = full[:start], full[start + len(bare) :]
                break

        special = backend.special_ids()
        bos_id = named("bos_token")
        if bos_id is None and len(prefix) == 1 and prefix[0] in special:
            bos_id = prefix[0]
        # A config that names no BOS ("bos_token": null, as Qwen's) has none;
        # without a config, a special token spelt like a BOS is taken.
        if bos_id is None and "bos_token" not in config:
            bos_id = _first_id(tok, ("<s>", "<|begin_of_text|>"), special)
        eos_id = named("eos_token")
        if eos_id is None and len(suffix) == 1 and suffix[0] in special:
            eos_id = suffix[0]
        if eos_id is None and "eos_token" not in config:
            names = ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>")
            eos_id = _first_id(tok, names, special)
        if isinstance(config.get("add_bos_token"), bool) and bos_id is not None:
            prefix = [i for i in prefix if i != bos_id]
            if config["add_bos_token"]:
                prefix.insert(0, bos_id)
        if isinstance(config.get("add_eos_token"), bool) and eos_id is not None:
            suffix = [i for i in suffix if i != eos_id]
            if config["add_eos_token"]:
                suffix.append(eos_id)

        eos_ids: set[int] = set()
        gen_eos = generation.get("eos_token_id")
        for i in gen_eos if isinstance(gen_eos, list) else [gen_eos]:
            if isinstance(i, int) and not isinstance(i, bool):
                eos_ids.add(i)
        for name in END_OF_TURN_TOKENS:
            i = tok.token_to_id(name)
            if i is not None and i in special:
                eos_ids.add(i)

        vocab = _checked_vocab(tok, str(path))
        return cls(
            backend,
            source=str(path),
            vocab_size=max(vocab.values(), default=-1) + 1,
            bos_id=bos_id,
            eos_id=eos_id,
            eos_ids=eos_ids,
            prefix=prefix,
            suffix=suffix,
            chat_template=_chat_template(config, path.parent),
        )

    # -- facts ---------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """The number of token ids (ids run from 0 to ``vocab_size - 1``)."""
        return self._vocab_size

    @property
    def bos_id(self) -> int | None:
        """The beginning-of-sequence token, or None."""
        return self._bos_id

    @property
    def eos_id(self) -> int | None:
        """The end-of-sequence token, or None."""
        return self._eos_id

    @property
    def eos_ids(self) -> frozenset[int]:
        """Every token that ends generation: EOS and, when the vocabulary has
        them, end-of-turn tokens such as ``<|eot_id|>``, ``<|im_end|>`` and
        ``<end_of_turn>``."""
        return self._eos_ids

    @property
    def add_bos(self) -> bool:
        """Whether ``encode(..., add_special_tokens=True)`` starts with BOS."""
        return self._bos_id is not None and self._bos_id in self._prefix

    @property
    def special_ids(self) -> frozenset[int]:
        """The special (control) tokens: those ``decode`` skips and only
        template text (``parse_special=True``) can produce."""
        return self._backend.special_ids()

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template stored with the vocabulary, if any."""
        return self._chat_template

    @property
    def source(self) -> str:
        """The file the tokenizer was read from."""
        return self._source

    def __repr__(self) -> str:
        name = os.path.basename(os.path.normpath(self._source)) or self._source
        kind = "llama2.c" if self.is_llama2c else "Hugging Face"
        return (
            f"Tokenizer({name!r}, {kind}, vocab_size={self._vocab_size}, "
            f"bos_id={self._bos_id}, eos_id={self._eos_id})"
        )

    # -- encoding ------------------------------------------------------------

    def encode(
        self, text: str, add_special_tokens: bool = True, *, parse_special: bool = False
    ) -> list[int]:
        """The token ids of ``text``.

        Args:
            text: the text.
            add_special_tokens: add what the vocabulary puts around a sequence
                (BOS, for most Llama-family models; see :attr:`add_bos`).
            parse_special: if true, the spelling of a special token (``<s>``,
                ``<|eot_id|>``, ...) in ``text`` becomes that token, as in a
                rendered chat template. If false (the default), all of
                ``text`` is plain text: untrusted input can never inject a
                control token.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        ids = self._backend.encode(text, bool(parse_special))
        if add_special_tokens:
            ids = self._prefix + ids + self._suffix
        return ids

    def token_to_id(self, token: str) -> int | None:
        """The id of the token spelt ``token`` in the vocabulary, or None."""
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary's spelling of token ``token_id`` (``"▁the"``,
        ``"Ġthe"``, ``"<0x0A>"``, ...), or None if there is no such id."""
        if not 0 <= token_id < self._vocab_size:
            return None
        return self._backend.id_to_token(token_id)

    # -- decoding ------------------------------------------------------------

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """The text of token ``ids``.

        Args:
            ids: token ids.
            skip_special_tokens: leave out special tokens (BOS, EOS,
                ``<|im_start|>``, ...) rather than spell them.

        Raises:
            ValueError: an id is outside the vocabulary.
        """
        return self._backend.decode(self._checked(ids), skip_special_tokens)

    def decoder(self, skip_special_tokens: bool = True) -> StreamDecoder:
        """An incremental decoder for streaming: ``push`` each generated id
        and print what it returns; ``flush`` at the end. The pieces add up to
        ``decode`` of all the ids."""
        return StreamDecoder(self, skip_special_tokens)

    def _checked(self, ids: Iterable[int]) -> list[int]:
        out = list(ids)
        for i in out:
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(f"token ids must be ints, not {type(i).__name__}")
            if not 0 <= i < self._vocab_size:
                raise ValueError(
                    f"token id {i} is outside the vocabulary (0..{self._vocab_size - 1})"
                )
        return out


class StreamDecoder:
    """Turns token ids into text one id at a time (see :meth:`Tokenizer.decoder`).

    A piece of text is held back while it ends in an incomplete UTF-8
    sequence (an emoji spread over byte tokens, say), and each piece is what
    the new id adds to the text of the ids before it, so that the leading
    space SentencePiece strips from the start of the text, and the spaces
    between words, come out as ``decode`` gives them.
    """

    #: Ids held back at most while the text ends in U+FFFD: a UTF-8 character
    #: has at most 4 bytes, so a longer wait means the bytes are invalid.
    MAX_HELD = 6

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._start = 0  # ids[start:read] are the context already shown
        self._read = 0  # ids[read:] have not been shown yet

    def __repr__(self) -> str:
        held = len(self._ids) - self._read
        return f"StreamDecoder({len(self._ids)} ids, {held} held back)"

    def push(self, token_id: int) -> str:
        """Adds one id; returns the text it completes (maybe "")."""
        self._ids += self._tok._checked([token_id])
        return self._emit(final=False)

    def flush(self) -> str:
        """Returns whatever is held back and starts a new sequence."""
        piece = self._emit(final=True)
        self._ids, self._start, self._read = [], 0, 0
        return piece

    def _emit(self, final: bool) -> str:
        backend, skip = self._tok._backend, self._skip
        shown = backend.decode(self._ids[self._start : self._read], skip)
        text = backend.decode(self._ids[self._start :], skip)
        if not final and text.endswith("\ufffd") and len(self._ids) - self._read < self.MAX_HELD:
            return ""
        piece = text[len(shown) :]
        if piece:
            # The new context starts with text, so that the start-of-text
            # space stripping falls on ids already shown.
            self._ids = self._ids[self._read :]
            self._start, self._read = 0, len(self._ids)
        return piece


# -- helpers -----------------------------------------------------------------


def _short(value: object, limit: int = 200) -> str:
    """``repr(value)`` (``str`` of an exception), cut to ``limit`` characters:
    values from a file can be as long as the file."""
    text = str(value) if isinstance(value, BaseException) else repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _checked_vocab(tok: tokenizers.Tokenizer, source: str) -> dict[str, int]:
    """The vocabulary of ``tok`` (added tokens included), each id spelt by
    one token only: two tokens sharing an id make decoding ambiguous."""
    vocab: dict[str, int] = tok.get_vocab(with_added_tokens=True)
    spelling: dict[int, str] = {}
    for token, i in vocab.items():
        other = spelling.setdefault(i, token)
        if other != token:
            a, b = sorted((other, token))
            raise ModelFormatError(
                f"{source}: the tokens {a[:80]!r} and {b[:80]!r} share the id {i}"
            )
    return vocab


def _read_json_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise ModelFormatError(f"{path}: expected a JSON object")
    return value


def _first_id(
    tok: tokenizers.Tokenizer, names: Sequence[str], special: frozenset[int]
) -> int | None:
    """The id of the first of ``names`` that is a special token."""
    for name in names:
        i = tok.token_to_id(name)
        if i is not None and i in special:
            return i
    return None


def _chat_template(config: Mapping[str, Any], directory: Path) -> str | None:
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    value = config.get("chat_template")
    if isinstance(value, list):  # named templates: take the default one
        by_name = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = by_name.get("default")
    return value if isinstance(value, str) else None
