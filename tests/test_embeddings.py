"""Embeddings: the final hidden states (after the last norm) against the
NumPy oracle, pooled as the model's files ask, and through the server with
the official client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_chat import QWEN_CONFIG, write_hf_model

import tinyllm
from tinyllm._model import _pooling_of

import gguf_writer
import numpy_llama
from conftest import f32_model, write_random_model

TEXTS = ["Once upon a time, there was a cat.", "The dog ran to the park.", "Lily"]


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@pytest.fixture(scope="module")
def model(stories_path: Path, tok512: Path) -> tinyllm.Model:
    return f32_model(stories_path, tok512)


def test_hidden_states_match_numpy(
    model: tinyllm.Model, stories_weights: Any, tmp_path: Path, tok512: Path, stories_path: Path
) -> None:
    config, weights = stories_weights
    ids = model.tokenize(TEXTS[0])
    want = numpy_llama.forward(config, weights, ids, hidden=True)
    got = model._engine.hidden(ids)
    assert got.shape == (len(ids), config["dim"])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    # In chunks of 16 (a long input over several passes), each chunk's rows
    # where they belong.
    chunked = tinyllm._tinyllm.Engine(str(stories_path), max_batch=16, kv_cache="f32")
    ids = model.tokenize(" ".join(TEXTS * 3))
    assert len(ids) > 40
    want = numpy_llama.forward(config, weights, ids, hidden=True)
    np.testing.assert_allclose(chunked.hidden(ids), want, rtol=0, atol=1e-4)
    # A model with grouped-query heads and odd sizes.
    path = tmp_path / "m.bin"
    config, weights = write_random_model(path, seed=5)
    m = f32_model(path, tok512)
    ids = list(np.random.default_rng(1).integers(0, 512, size=40))
    want = numpy_llama.forward(config, weights, ids, hidden=True)
    np.testing.assert_allclose(m._engine.hidden(ids), want, rtol=0, atol=1e-4)


def test_pooling(model: tinyllm.Model, stories_weights: Any) -> None:
    config, weights = stories_weights
    states = [numpy_llama.forward(config, weights, model.tokenize(t), hidden=True) for t in TEXTS]
    got = model.embed(TEXTS)
    assert got.shape == (3, config["dim"]) and got.dtype == np.float32
    for row, h in zip(got, states, strict=True):
        np.testing.assert_allclose(row, unit(h.mean(axis=0)), atol=2e-5)
    last = model.embed(TEXTS, pooling="last")
    cls = model.embed(TEXTS[1], pooling="cls")
    raw = model.embed(TEXTS[2], normalize=False)
    np.testing.assert_allclose(last[1], unit(states[1][-1]), atol=2e-5)
    np.testing.assert_allclose(cls[0], unit(states[1][0]), atol=2e-5)
    np.testing.assert_allclose(raw[0], states[2].mean(axis=0), atol=1e-4)
    # One at a time, or as token ids: the same.
    np.testing.assert_allclose(model.embed(TEXTS[1])[0], got[1], atol=1e-5)
    np.testing.assert_allclose(model.embed(model.tokenize(TEXTS[1]))[0], got[1], atol=1e-5)
    np.testing.assert_allclose(model.embed([model.tokenize(t) for t in TEXTS]), got, atol=1e-5)


def test_bad_input(model: tinyllm.Model) -> None:
    with pytest.raises(ValueError, match="pooling must be"):
        model.embed("x", pooling="max")
    with pytest.raises(ValueError, match="must not be empty"):
        model.embed([])
    with pytest.raises(ValueError, match=r"input\[1\] has no tokens"):
        model.embed([[1, 2], []])
    with pytest.raises(ValueError, match="out of range"):
        model.embed([1, 99999])
    with pytest.raises(tinyllm.ContextLengthError):
        model.embed(list(range(1, 400)) * 2)
    assert model.embed("still works").shape == (1, 64)


def test_the_pooling_comes_from_the_files(tmp_path: Path) -> None:
    for kind, how in [(1, "mean"), (2, "cls"), (3, "last"), (0, "mean")]:
        path = tmp_path / f"p{kind}.gguf"
        gguf_writer.write(path, {"general.architecture": "qwen3", "qwen3.pooling_type": kind}, [])
        assert _pooling_of(str(path)) == how
    d = write_hf_model(tmp_path / "qwen", "qwen2", "qwen2", QWEN_CONFIG)
    assert tinyllm.Model(d).pooling == "mean"
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 64, "pooling_mode_lasttoken": True}),
        encoding="utf-8",
    )
    m = tinyllm.Model(d)
    assert m.pooling == "last"
    ids = [5, 9, 11, 200]
    np.testing.assert_allclose(m.embed(ids)[0], unit(m._engine.hidden(ids)[-1]), atol=1e-6)
