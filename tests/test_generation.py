"""Sampling, stop conditions and streaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tinyllm


def test_same_seed_same_text(stories: tinyllm.Model) -> None:
    kw = {"max_tokens": 80, "temperature": 1.0, "top_p": 0.9, "seed": 1234}
    a = stories.generate("Once upon a time", **kw)
    b = stories.generate("Once upon a time", **kw)
    assert a == b
    others = {stories.generate("Once upon a time", **{**kw, "seed": s}) for s in range(5)}
    assert len(others) > 1, "different seeds should (almost surely) differ"


def test_random_seed_when_none(stories: tinyllm.Model) -> None:
    texts = {stories.generate("Tim", max_tokens=40, temperature=1.2, top_p=1.0) for _ in range(4)}
    assert len(texts) > 1


def test_filters_that_keep_one_token_are_greedy(stories: tinyllm.Model) -> None:
    greedy = stories.generate("Lily", max_tokens=60, temperature=0)
    assert stories.generate("Lily", max_tokens=60, temperature=0.9, top_k=1, seed=3) == greedy
    assert stories.generate("Lily", max_tokens=60, temperature=0.9, min_p=1.0, seed=3) == greedy
    assert stories.generate("Lily", max_tokens=60, temperature=0.9, top_p=1e-6, seed=3) == greedy


def test_repeat_penalty_changes_greedy_text(stories: tinyllm.Model) -> None:
    plain = stories.generate("", max_tokens=200, temperature=0)
    penalised = stories.generate("", max_tokens=200, temperature=0, repeat_penalty=1.3)
    assert penalised != plain


def test_openai_penalties_and_biases(stories: tinyllm.Model) -> None:
    plain = stories.generate("", max_tokens=120, temperature=0)
    for kw in [{"presence_penalty": 1.5}, {"frequency_penalty": 0.8}]:
        penalised = stories.generate("", max_tokens=120, temperature=0, **kw)
        assert penalised != plain, kw
        # Fewer repeated tokens: what the penalties are for.
        ids, base = stories.tokenize(penalised), stories.tokenize(plain)
        assert len(set(ids)) / len(ids) > len(set(base)) / len(base), kw
    [the] = stories.tokenize("the", add_bos=False)
    banned = stories.generate("", max_tokens=120, temperature=0, logit_bias={the: -100})
    assert the in stories.tokenize(plain) and the not in stories.tokenize(banned)
    with pytest.raises(ValueError, match=r"presence_penalty must be in \[-2, 2\], got 3"):
        stories.generate("", presence_penalty=3)
    with pytest.raises(ValueError, match="logit_bias names token 512, outside the vocabulary"):
        stories.generate("", logit_bias={512: 1.0})
    with pytest.raises(ValueError, match=r"logit_bias of token 3 must be in \[-100, 100\]"):
        stories.generate("", logit_bias={3: 1000.0})
    with pytest.raises(TypeError, match="logit_bias must map token ids"):
        stories.generate("", logit_bias=[(3, 1.0)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="top_logprobs must be at most 20"):
        stories.stream("", logprobs=21)


def test_logprobs_records(stories: tinyllm.Model) -> None:
    s = stories.stream("Tim", max_tokens=20, temperature=1.0, seed=4, logprobs=5)
    text = "".join(s)
    records = s.take_logprobs()
    assert s.take_logprobs() == []  # taken once
    assert [r[0] for r in records] == s.tokens and text
    ids = stories.tokenize("Tim")
    rows = stories.logits(ids + s.tokens)[len(ids) - 1 : -1].astype(np.float64)
    rows -= rows.max(axis=1, keepdims=True)
    rows -= np.log(np.exp(rows).sum(axis=1, keepdims=True))  # log-softmax
    for (token, logprob, top), row in zip(records, rows, strict=True):
        assert logprob == pytest.approx(row[token], abs=1e-3)
        assert [t for t, _ in top] == list(np.argsort(-row, kind="stable")[:5])
        assert [v for _, v in top] == pytest.approx(np.sort(row)[::-1][:5], abs=1e-3)


def test_stream_pieces_add_up_to_generate(stories: tinyllm.Model, golden: str) -> None:
    s = stories.stream("", max_tokens=256, temperature=0)
    pieces = list(s)
    assert len(pieces) > 50 and all(pieces)
    assert "".join(pieces) + "\n" == golden
    assert s.finish_reason == "length"
    assert len(s.tokens) == 256
    st = s.stats
    assert st["generated_tokens"] == 256 and st["prompt_tokens"] + st["reused_tokens"] == 1


def test_max_tokens(stories: tinyllm.Model) -> None:
    s = stories.stream("Once", max_tokens=7, temperature=0)
    "".join(s)
    assert len(s.tokens) == 7 and s.finish_reason == "length"
    assert stories.generate("Once", max_tokens=0) == ""


def test_stop_strings(stories: tinyllm.Model, golden: str) -> None:
    s = stories.stream("", max_tokens=256, temperature=0, stop=["Lily's mom"])
    text = "".join(s)
    assert text == golden[: golden.index("Lily's mom")]
    assert s.finish_reason == "stop"
    # the earliest of several stop strings wins; a str works as well as a list
    first_stop = golden[: golden.index(".")]
    assert golden.index(".") < golden.index("park")
    assert stories.generate("", max_tokens=256, temperature=0, stop=["park", "."]) == first_stop
    assert stories.generate("", max_tokens=256, temperature=0, stop=".") == first_stop


def test_generation_stops_when_the_context_is_full(stories_path: Path, tok512: Path) -> None:
    m = tinyllm.Model(stories_path, tok512, context_length=20)
    s = m.stream("Once upon a time", max_tokens=100, temperature=0)
    "".join(s)
    assert s.finish_reason == "length"
    assert len(m.tokenize("Once upon a time")) + len(s.tokens) == 21  # 20 cached + the last sampled


def test_stops_at_bos_like_run_c(stories: tinyllm.Model) -> None:
    # stories260K ends a story by predicting BOS; greedy from a story's end
    # must stop there (finish_reason "stop") well before max_tokens.
    ended = 0
    for seed in range(8):
        s = stories.stream("", max_tokens=512, temperature=1.0, seed=seed)
        "".join(s)
        if s.finish_reason == "stop":
            ended += 1
            assert len(s.tokens) < 511
    assert ended > 0


def test_prompt_as_token_ids(stories: tinyllm.Model) -> None:
    ids = stories.tokenize("Once upon a time")
    assert stories.generate(ids, max_tokens=20, temperature=0) == stories.generate(
        "Once upon a time", max_tokens=20, temperature=0
    )


def test_a_stream_goes_on_while_other_calls_run(stories: tinyllm.Model) -> None:
    alone = stories.generate("Once", max_tokens=50, temperature=0)
    s = stories.stream("Once", max_tokens=50, temperature=0)
    first = next(s)
    stories.generate("Tim", max_tokens=5)
    stories.logits(stories.tokenize("Tim and Lily"))
    assert first + "".join(s) == alone
