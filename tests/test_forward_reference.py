"""Logits of the Rust engine against tests/support/numpy_llama.py, an
independent NumPy (float64) forward pass, and with the KV cache against
without it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tinyllm
from tinyllm import _tinyllm

import numpy_llama
from conftest import f32_model, write_random_model

#: f32 engine vs float64 oracle: the issue's bound, absolute, on logits that
#: reach ~20 for stories260K (the observed error is ~1e-5).
TOL_LOGITS = 1e-4
#: The same computation run in a different batching: only the order of f32
#: additions may differ. Batches of several tokens take the float panel
#: products, which add each output's terms column by column, where a single
#: token's product keeps a partial sum per vector lane (observed: 1.4e-5 on
#: logits of ~20; a caching or position fault moves them by far more).
TOL_BATCHING = 4e-5


def story_ids(model: tinyllm.Model, golden: str, n: int) -> list[int]:
    ids = model.tokenize(golden)
    assert len(ids) >= n
    return ids[:n]


def test_stories260k_logits_match_numpy(
    stories_path: Path, tok512: Path, stories_weights: Any, golden: str
) -> None:
    config, weights = stories_weights
    stories = f32_model(stories_path, tok512)
    ids = story_ids(stories, golden, 100)
    want = numpy_llama.forward(config, weights, ids)
    got = stories.logits(ids)
    assert got.dtype == np.float32 and got.shape == (100, 512)
    assert np.abs(want).max() > 5.0  # a real spread of logits, not noise
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL_LOGITS)


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("shared", [False, True])
def test_random_models_match_numpy(
    tmp_path: Path, tok512: Path, version: int, shared: bool
) -> None:
    # Odd sizes (hidden 100, head_dim 8, GQA 6:2) reach every kernel's tail path.
    path = tmp_path / "m.bin"
    config, weights = write_random_model(path, shared=shared, version=version, seed=version)
    m = f32_model(path, tok512)
    assert m.config.n_kv_heads == 2 and m.config.head_dim == 8
    ids = list(np.random.default_rng(3).integers(0, 512, size=70))
    want = numpy_llama.forward(config, weights, ids)
    got = m.logits(ids)
    assert np.abs(want).max() > 5.0
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL_LOGITS)


def test_version1_file_gives_the_same_logits_as_legacy(
    tmp_path: Path, tok512: Path, stories: tinyllm.Model, stories_weights: Any, golden: str
) -> None:
    config, weights = stories_weights
    path = tmp_path / "v1.bin"
    import llama2c_format

    llama2c_format.write(path, config, weights, version=1)
    m = tinyllm.Model(path, tok512, n_threads=2)
    assert m.info["format"] == "llama2.c version 1 (f32)"
    ids = story_ids(stories, golden, 50)
    np.testing.assert_array_equal(m.logits(ids), stories.logits(ids))


def test_int8_version2_logits_match_numpy_emulation_of_runq(tmp_path: Path, tok512: Path) -> None:
    import llama2c_format

    path = tmp_path / "q8.bin"
    write_random_model(path, dim=64, hidden_dim=128, n_heads=8, version=2, group_size=32, seed=5)
    config, weights = llama2c_format.read(path)
    q8 = llama2c_format.read_q8(path)
    m = f32_model(path, tok512)
    ids = list(np.random.default_rng(4).integers(0, 512, size=40))
    want = numpy_llama.forward(
        config, weights, ids, q8_group_size=config["group_size"], weights_q8=q8
    )
    got = m.logits(ids)
    # The oracle quantizes activations as runq.c does, so the results agree
    # to float rounding (~5e-6 observed); 0.1% of the spread leaves room for a
    # rare activation that lands on an int8 rounding boundary.
    scale = float(np.abs(want).max())
    assert scale > 5.0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * scale)
    # and the argmax agrees nearly everywhere
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.95


def engine(path: Path, tok: Path, max_batch: int) -> _tinyllm.Engine:
    return _tinyllm.Engine(str(path), n_threads=2, max_batch=max_batch, kv_cache="f32")


def test_cached_decoding_equals_one_batch(stories_path: Path, tok512: Path, golden: str) -> None:
    ids = f32_model(stories_path, tok512).tokenize(golden)[:150]
    whole = engine(stories_path, tok512, 512).logits(ids)  # one batch, no cached past
    one_by_one = engine(stories_path, tok512, 1).logits(ids)  # every token reads the cache
    chunks = engine(stories_path, tok512, 7).logits(ids)
    np.testing.assert_allclose(one_by_one, whole, rtol=0, atol=TOL_BATCHING)
    np.testing.assert_allclose(chunks, whole, rtol=0, atol=TOL_BATCHING)


def test_logits_reset_the_cache_first(stories: tinyllm.Model, golden: str) -> None:
    ids = story_ids(stories, golden, 30)
    first = stories.logits(ids)
    stories.generate("Tim", max_tokens=20, temperature=0)
    np.testing.assert_array_equal(stories.logits(ids), first)
    np.testing.assert_array_equal(stories.logits(ids[:10]), first[:10])


def test_prompt_reuse_gives_the_same_text(stories: tinyllm.Model) -> None:
    # The second call shares a prefix with the cache and only computes the rest.
    a = stories.generate("Once upon a time, Tim", max_tokens=30, temperature=0)
    s = stories.stream("Once upon a time, Tim went", max_tokens=30, temperature=0)
    b = "".join(s)
    assert s.stats["reused_tokens"] > 0
    fresh = f32_model(stories.info["path"], stories.info["tokenizer_path"])
    assert b == fresh.generate("Once upon a time, Tim went", max_tokens=30, temperature=0)
    assert a == fresh.generate("Once upon a time, Tim", max_tokens=30, temperature=0)


@pytest.mark.parametrize("isa", ["portable", "avx2", "avx512"])
def test_every_kernel_tier_gives_the_reference_story(
    isa: str, stories_path: Path, tok512: Path, golden: str
) -> None:
    import os
    import subprocess
    import sys

    if isa not in tinyllm.available_isas():
        pytest.skip(f"this CPU has no {isa}")
    code = (
        "import sys, tinyllm;"
        f"m = tinyllm.Model({str(stories_path)!r}, {str(tok512)!r});"
        "sys.stdout.write(m.info['isa'] + '|' + m.generate('', max_tokens=256, temperature=0))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "TINYLLM_ISA": isa, "PYTHONIOENCODING": "utf-8"},
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=True,
    )
    used, text = r.stdout.split("|", 1)
    assert used == isa
    assert text + "\n" == golden
