"""Many sequences on one model: calls that overlap are decoded together in
the same forward passes, and each returns what it would have returned alone.

The reference of every check here is the same model running one sequence at
a time (``max_sequences=1``, caches of finished sequences forgotten between
calls), whose own correctness the other suites establish against run.c,
transformers and llama.cpp.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tinyllm

from conftest import FIXTURES, MODELS
from test_hf_models import write_dir

GGUF = FIXTURES / "gguf"

#: How far a logit computed in a batch may move from the same logit computed
#: alone (with an f32 cache), relative to the largest logit of its row: float
#: weights take the batched products' packed panels (the sums run in another
#: order, ~1e-6 measured), quantized weights take the same integer dots.
BATCH_TOLERANCE = 1e-4


def greedy_alone(model: tinyllm.Model, prompts: Sequence[Any], n: Sequence[int]) -> list[list[int]]:
    """Each prompt's greedy tokens, one at a time from an empty cache."""
    out = []
    for p, k in zip(prompts, n, strict=True):
        model.reset()
        s = model.stream(p, max_tokens=k, temperature=0)
        "".join(s)
        out.append(s.tokens)
    model.reset()
    return out


def greedy_together(
    model: tinyllm.Model, prompts: Sequence[Any], n: Sequence[int], victim: Any
) -> list[list[int]]:
    """The same, decoded together: the first sequence starts alone and the
    others join once it is decoding; ``victim`` joins too and is cancelled
    after two pieces; every stream is then read a piece at a time in turn,
    so sequences finish (at their own max_tokens) while others go on."""
    first = model.stream(prompts[0], max_tokens=n[0], temperature=0)
    head = [next(first), next(first)]
    cancelled = model.stream(victim, max_tokens=200, temperature=0)
    rest = [
        model.stream(p, max_tokens=k, temperature=0)
        for p, k in zip(prompts[1:], n[1:], strict=True)
    ]
    next(cancelled)
    next(cancelled)
    cancelled.cancel()
    streams = [first, *rest]
    texts = ["".join(head), *[""] * len(rest)]
    live = set(range(len(streams)))
    while live:
        for i in sorted(live):
            piece = next(streams[i], None)
            if piece is None:
                live.discard(i)
            else:
                texts[i] += piece
    assert cancelled.finish_reason is None, "a cancelled stream has no finish reason"
    assert len(cancelled.tokens) < 200
    return [s.tokens for s in streams]


def id_prompts(vocab: int, bos: int | None, seed: int = 0) -> list[list[int]]:
    """Four prompts of different lengths (one longer than a prompt chunk of
    16 attention rows, so blocks of tokens split) from the vocabulary."""
    rng = np.random.default_rng(seed)
    start = [] if bos is None else [bos]
    return [start + [int(t) for t in rng.integers(3, vocab, size=k)] for k in (3, 9, 40, 1)]


# -- every family and weight type ----------------------------------------------


def _stories(kv_cache: str = "f16") -> tinyllm.Model:
    return tinyllm.Model(
        MODELS / "stories260K.bin", MODELS / "tok512.bin", n_threads=2, kv_cache=kv_cache
    )


Factory = Callable[[Path, str], tinyllm.Model]


def _gguf(name: str) -> Factory:
    return lambda _, kv: tinyllm.Model(GGUF / name, MODELS / "tok512.bin", n_threads=2, kv_cache=kv)


def _hf(spec: str, quant: str | None = None) -> Factory:
    def make(tmp: Path, kv_cache: str) -> tinyllm.Model:
        path = tmp / spec
        if not path.exists():
            write_dir(spec, path)
        if quant is not None:
            out = tmp / f"{spec}-{quant}.tllm"
            if not out.exists():
                tinyllm.convert(path, out, quant)
            path = out
        return tinyllm.Model(path, n_threads=2, context_length=256, kv_cache=kv_cache)

    return make


MODELS_UNDER_TEST: dict[str, Factory] = {
    "stories260K-f32": lambda _, kv: _stories(kv),
    "gguf-F16": _gguf("stories260K-F16.gguf"),
    "gguf-BF16": _gguf("stories260K-BF16.gguf"),
    "gguf-Q8_0": _gguf("stories260K-Q8_0.gguf"),
    "gguf-Q4_0": _gguf("stories260K-Q4_0.gguf"),
    "gguf-Q4_1": _gguf("stories260K-Q4_1.gguf"),
    "llama": _hf("llama2"),
    "llama3": _hf("llama3"),
    "mistral": _hf("mistral"),
    "qwen2": _hf("qwen2"),
    "qwen3": _hf("qwen3"),
    "tinyllm-q8_0": _hf("llama3", "q8_0"),
    "tinyllm-q4": _hf("llama3", "q4"),
}


@pytest.fixture(scope="module", params=sorted(MODELS_UNDER_TEST))
def any_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(name, the model with its default f16 cache, the same with an f32 cache)"""
    tmp = tmp_path_factory.mktemp(request.param)
    make = MODELS_UNDER_TEST[request.param]
    return request.param, make(tmp, "f16"), make(tmp, "f32")


def test_decoded_together_equals_alone(any_model: tuple[str, tinyllm.Model, Any]) -> None:
    name, model, _ = any_model
    tok = model.tokenizer
    prompts = id_prompts(model.config.vocab_size, tok.bos_id)
    n = [24, 6, 17, 30]
    victim = id_prompts(model.config.vocab_size, tok.bos_id, seed=1)[1]
    alone = greedy_alone(model, prompts, n)
    together = greedy_together(model, prompts, n, victim)
    for i, (a, t) in enumerate(zip(alone, together, strict=True)):
        assert t == a, f"{name}: sequence {i} decoded together differs from alone"
    assert any(len(a) > 1 for a in alone), "the sequences generate"


def test_logits_together_within_tolerance(any_model: tuple[str, Any, tinyllm.Model]) -> None:
    # With an f32 cache: requests in one batch split into other chunks than
    # alone, and an f16 cache would round slightly different keys apart.
    name, _, model = any_model
    prompts = id_prompts(model.config.vocab_size, model.tokenizer.bos_id, seed=2)
    alone = [model.logits(p) for p in prompts]
    results: list[np.ndarray | None] = [None] * len(prompts)

    def run(i: int) -> None:
        results[i] = model.logits(prompts[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, r in zip(alone, results, strict=True):
        assert r is not None and r.shape == a.shape
        scale = np.abs(a).max(axis=1, keepdims=True)
        assert np.all(np.abs(r - a) <= BATCH_TOLERANCE * scale), name


# -- threads, lists and serial calls agree ------------------------------------


@pytest.fixture(scope="module")
def stories() -> tinyllm.Model:
    return _stories()


PROMPTS = [
    "Once upon a time",
    "Tim and Lily went to the park",
    "The little dog",
    "One day, a big bird",
    "Sue liked to",
    "There was a boy named Max. He",
    "The sun",
    "Mom said",
]


def test_eight_threads_a_list_and_serial_calls_agree(stories: tinyllm.Model) -> None:
    serial = []
    for p in PROMPTS:
        stories.reset()
        serial.append(stories.generate(p, max_tokens=40, temperature=0))
    stories.reset()
    listed = stories.generate(PROMPTS, max_tokens=40, temperature=0)
    assert listed == serial

    stories.reset()
    results: list[str | BaseException | None] = [None] * len(PROMPTS)
    barrier = threading.Barrier(len(PROMPTS))

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = stories.generate(PROMPTS[i], max_tokens=40, temperature=0)
        except BaseException as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == serial


def test_sampled_text_is_the_same_with_a_seed_alone_or_together(stories: tinyllm.Model) -> None:
    options: dict[str, Any] = {"max_tokens": 30, "temperature": 0.9, "top_p": 0.9, "seed": 7}
    alone = []
    for p in PROMPTS[:4]:
        stories.reset()
        alone.append(stories.generate(p, **options))
    stories.reset()
    assert stories.generate(PROMPTS[:4], **options) == alone


def test_a_list_of_token_id_prompts(stories: tinyllm.Model) -> None:
    ids = [stories.tokenize(p) for p in PROMPTS[:3]]
    texts = stories.generate(ids, max_tokens=10, temperature=0)
    assert texts == [stories.generate(i, max_tokens=10, temperature=0) for i in ids]
    # One list of ints is one prompt, not a batch.
    assert isinstance(stories.generate(ids[0], max_tokens=5, temperature=0), str)


def test_more_requests_than_sequences_wait_their_turn(stories_path: Path, tok512: Path) -> None:
    m = tinyllm.Model(stories_path, tok512, n_threads=2, max_sequences=2)
    assert m.info["max_sequences"] == 2
    expected = []
    for p in PROMPTS[:5]:
        m.reset()
        expected.append(m.generate(p, max_tokens=20, temperature=0))
    m.reset()
    assert m.generate(PROMPTS[:5], max_tokens=20, temperature=0) == expected


# -- bad input in one call, the others carry on -------------------------------


def test_bad_calls_fail_alone(stories: tinyllm.Model) -> None:
    good = stories.stream(PROMPTS[0], max_tokens=30, temperature=0)
    next(good)
    n = stories.context_length
    with pytest.raises(tinyllm.ContextLengthError):
        stories.generate([1] * (n + 1), max_tokens=5)
    with pytest.raises(ValueError, match="top_p"):
        stories.generate("Hi", top_p=2.0)
    with pytest.raises(ValueError, match="out of range"):
        stories.generate([1, 10**6], max_tokens=5)
    with pytest.raises(ValueError, match="out of range"):
        stories.logits([1, 10**6])
    rest = "".join(good)
    stories.reset()
    assert stories.generate(PROMPTS[0], max_tokens=30, temperature=0).endswith(rest)


def test_a_full_context_ends_one_sequence(stories_path: Path, tok512: Path) -> None:
    m = tinyllm.Model(stories_path, tok512, n_threads=2, context_length=40)
    short = m.stream("Once", max_tokens=100, temperature=0)
    long = m.stream([1] + [300] * 30, max_tokens=100, temperature=0)
    "".join(short), "".join(long)
    assert short.finish_reason == long.finish_reason == "length"
    assert len(long.tokens) == 40 - 31 + 1
    assert len(short.tokens) < 40


# -- the KV cache ---------------------------------------------------------------


def test_kv_cache_types_agree(stories_path: Path, tok512: Path) -> None:
    ids = _stories().tokenize("Once upon a time, there was a little girl named Lily. She")
    ref = tinyllm.Model(stories_path, tok512, kv_cache="f32").logits(ids)
    f16 = tinyllm.Model(stories_path, tok512, kv_cache="f16").logits(ids)
    scale = np.abs(ref).max()
    # f16 keeps 11 significant bits of each key and value.
    assert np.abs(f16 - ref).max() <= 2e-3 * scale
    assert np.array_equal(f16.argmax(1), ref.argmax(1))
    with pytest.raises(ValueError, match="head_dim"):
        tinyllm.Model(stories_path, tok512, kv_cache="q8_0")  # head_dim 8
    with pytest.raises(ValueError, match="kv_cache"):
        tinyllm.Model(stories_path, tok512, kv_cache="f8")


def test_q8_0_cache_on_a_model_with_wide_heads(tmp_path: Path) -> None:
    path = write_dir("qwen3", tmp_path / "qwen3")  # head_dim 32
    ids = [1, 5, 9, 200, 3000, 17, 4, 88, 901, 12]
    ref = tinyllm.Model(path, kv_cache="f32").logits(ids)
    q8 = tinyllm.Model(path, kv_cache="q8_0").logits(ids)
    scale = np.abs(ref).max()
    # 8 bits per key and value, and the queries quantized as llama.cpp does
    # (measured: 1.3e-2 of the largest logit, every argmax the same).
    assert np.abs(q8 - ref).max() <= 3e-2 * scale
    assert np.mean(q8.argmax(1) == ref.argmax(1)) >= 0.8


def test_a_shared_prefix_is_computed_once(stories: tinyllm.Model) -> None:
    preamble = "Once upon a time, there was a little girl named Lily. She loved to play"
    prompts = [preamble + " outside", preamble + " with her dog", preamble + " in the sun"]
    expected = []
    for p in prompts:
        stories.reset()
        expected.append(stories.generate(p, max_tokens=20, temperature=0))
    stories.reset()
    first = stories.stream(prompts[0], max_tokens=20, temperature=0)
    next(first)  # its prompt is in the cache now
    others = [stories.stream(p, max_tokens=20, temperature=0) for p in prompts[1:]]
    texts = [next(first) + "".join(first), *["".join(s) for s in others]]
    shared = len(stories.tokenize(preamble)) - 1
    for s in others:
        assert s.stats["reused_tokens"] >= shared
    # The first one's text lost the piece read before; compare the others.
    assert texts[1:] == expected[1:]
    assert expected[0].endswith(texts[0])


def test_info_reports_the_kv_cache(stories_path: Path, tok512: Path) -> None:
    m = tinyllm.Model(stories_path, tok512, n_threads=2)
    info = m.info
    assert info["kv_cache"] == "f16"
    # 5 layers x (keys, values) x 4 KV heads x head_dim 8 x 2 bytes
    assert info["kv_bytes_per_token"] == 5 * 2 * 4 * 8 * 2
    assert info["kv_cache_bytes"] == 0
    s = m.stream("Once upon a time", max_tokens=300, temperature=0)
    next(s)
    assert m.info["active_sequences"] == 1
    assert m.info["kv_cache_bytes"] >= 5 * info["kv_bytes_per_token"]
    s.cancel()
    "".join(s)
    m.reset()
    m.generate("x", max_tokens=1)  # a step, so the engine publishes its state
    m.reset()
    m.generate("y", max_tokens=1)
    assert m.info["kv_cache_bytes"] <= 64 * info["kv_bytes_per_token"]


def test_chat_completions_from_threads_equal_serial_ones(stories: tinyllm.Model) -> None:
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS[:4]]
    options: dict[str, Any] = {"max_tokens": 24, "temperature": 0}
    serial = []
    for c in conversations:
        stories.reset()
        serial.append(stories.chat_completion(c, **options)["choices"][0]["message"]["content"])
    stories.reset()
    results: list[Any] = [None] * len(conversations)

    def run(i: int) -> None:
        r = stories.chat_completion(conversations[i], **options)
        results[i] = r["choices"][0]["message"]["content"]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(conversations))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == serial
    assert any(serial)


def test_chat_sessions_keep_their_own_sequences(stories: tinyllm.Model) -> None:
    a = stories.chat_session(max_tokens=10, temperature=0)
    b = stories.chat_session(max_tokens=10, temperature=0)
    a.send("Tell me about a cat")
    b.send("Tell me about a dog")
    # Other requests in between do not take the sessions' caches away.
    stories.generate(PROMPTS, max_tokens=5, temperature=0)
    second = a.stream("And then?")
    "".join(second)
    assert second.stats["reused_tokens"] > 0
