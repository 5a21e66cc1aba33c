"""Shared fixtures: the real models in ../shared/models and small model files
made on the fly with tests/support/llama2c_format.py."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

import tinyllm  # noqa: E402

import llama2c_format  # noqa: E402

#: The shared test data (never downloaded): $TINYLLM_SHARED_MODELS or ../shared/models.
MODELS = Path(os.environ.get("TINYLLM_SHARED_MODELS", ROOT.parent / "shared" / "models"))
FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="session")
def models() -> Path:
    if not (MODELS / "stories260K.bin").is_file():
        pytest.fail(f"the shared test models are missing: {MODELS}")
    return MODELS


@pytest.fixture(scope="session")
def stories_path(models: Path) -> Path:
    return models / "stories260K.bin"


@pytest.fixture(scope="session")
def tok512(models: Path) -> Path:
    return models / "tok512.bin"


@pytest.fixture(scope="session")
def stories(stories_path: Path, tok512: Path) -> tinyllm.Model:
    return tinyllm.Model(stories_path, tok512, n_threads=2)


@pytest.fixture(scope="session")
def golden(models: Path) -> str:
    return (models / "stories260K.greedy256.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def runc() -> dict[str, Any]:
    """What Karpathy's run.c and runq.c printed (tools/make_runc_fixtures.py)."""
    found: dict[str, Any] = json.loads((FIXTURES / "runc_reference.json").read_text("utf-8"))
    return found


@pytest.fixture(scope="session")
def stories_weights(stories_path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    return llama2c_format.read(stories_path)


def write_random_model(
    path: Path,
    *,
    dim: int = 48,
    hidden_dim: int = 100,
    n_layers: int = 3,
    n_heads: int = 6,
    n_kv_heads: int = 2,
    vocab_size: int = 512,
    seq_len: int = 256,
    shared: bool = False,
    version: int = 0,
    scale: float = 0.3,
    seed: int = 0,
    group_size: int = 64,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Writes a random llama2.c model whose weights are large enough that its
    logits spread over several units (small N(0, 0.02) weights would give
    near-uniform logits that any tolerance accepts)."""
    config, weights = llama2c_format.random_model(
        dim,
        hidden_dim,
        n_layers,
        n_heads,
        n_kv_heads,
        vocab_size,
        seq_len,
        shared_classifier=shared,
        seed=seed,
    )
    rng = np.random.default_rng(seed + 1)
    for name, w in list(weights.items()):
        if w.ndim == 2:
            weights[name] = (rng.standard_normal(w.shape) * scale).astype(np.float32)
        else:
            weights[name] = (1.0 + 0.2 * rng.standard_normal(w.shape)).astype(np.float32)
    if shared:
        weights["output"] = weights["tok_embeddings"]
    written = llama2c_format.write(path, config, weights, version=version, group_size=group_size)
    return written, weights


def f32_model(*args: Any, **kwargs: Any) -> tinyllm.Model:
    """A model whose KV cache keeps f32, as the float oracles compute (the
    default f16 cache rounds each key and value to 11 significant bits, a
    difference of ~1e-4 of the logits that the oracle tolerances would see;
    test_batching.py bounds it)."""
    return tinyllm.Model(*args, kv_cache="f32", **kwargs)
