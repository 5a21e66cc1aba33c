"""mlx-lm runs the very weights tinyllm runs: the Hugging Face directory that
``mlxlm.llama2c_to_hf`` writes from a llama2.c checkpoint, loaded by mlx-lm,
gives the logits and greedy tokens of a float64 NumPy forward pass over the
checkpoint itself (``tests/support/numpy_llama.py``), and its 8- and 4-bit
conversions cost tinyllm's bits per weight.  Skipped without mlx-lm (on
Linux: ``pip install "mlx[cpu]" mlx-lm``, which runs on the CPU).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import mlxlm
import numpy as np
import pytest

import llama2c_format
import numpy_llama
from conftest import CACHE, selected_shapes, source_file

pytestmark = pytest.mark.skipif(not mlxlm.available(), reason='pip install "mlx[cpu]" mlx-lm')

SHAPES = [s for s in ("stories260K", "110M") if s in selected_shapes()]

#: mlx computes in float32, the oracle in float64: logits of these models
#: (tens of units) agree to about 1e-6 of the largest; 1e-4 of it leaves room
#: for float32 sums over rows of up to 2048 and still fails a rotary layout
#: off by one permutation by three orders of magnitude (see below).
REL_TOLERANCE = 1e-4

#: Greedy tokens compared, after BOS.
STEPS = 12


def prompt(vocab: int) -> list[int]:
    return [1] + [3 + (i * 37) % (vocab - 3) for i in range(15)]


def mlx_logits(path: Path, ids: list[int]) -> np.ndarray:
    """Logits (len(ids), vocab) of the mlx-lm model in ``path``, in float32."""
    mx = importlib.import_module("mlx.core")
    model = mlxlm.load(str(path))
    logits: np.ndarray = np.array(model(mx.array([ids])).astype(mx.float32))[0]
    return logits


def mlx_greedy(path: Path, n: int) -> list[int]:
    mx = importlib.import_module("mlx.core")
    generate = importlib.import_module("mlx_lm.generate")
    steps = generate.generate_step(mx.array([1]), mlxlm.load(str(path)), max_tokens=n)
    return [int(token) for token, _ in steps]


def numpy_greedy(config: dict[str, Any], weights: dict[str, np.ndarray], n: int) -> list[int]:
    ids = [1]
    for _ in range(n):
        ids.append(int(numpy_llama.forward(config, weights, ids)[-1].argmax()))
    return ids[1:]


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("shape", SHAPES)
def test_same_logits_and_greedy_tokens(shape: str) -> None:
    src, _ = source_file(shape)
    config, weights = llama2c_format.read(src)
    path = mlxlm.hf_dir(src, CACHE)
    ids = prompt(int(config["vocab_size"]))
    want = numpy_llama.forward(config, weights, ids)
    assert relative_error(mlx_logits(path, ids), want) < REL_TOLERANCE
    assert mlx_greedy(path, STEPS) == numpy_greedy(config, weights, STEPS)


def test_llama2c_rotary_order_is_caught(tmp_path: Path) -> None:
    """Q and K rows left in llama2.c's order load and run, and are wrong:
    the check above must see it."""
    src, _ = source_file("stories260K")
    config, weights = llama2c_format.read(src)
    path = mlxlm.llama2c_to_hf(src, tmp_path / "hf", rotary=False)
    ids = prompt(int(config["vocab_size"]))
    assert relative_error(mlx_logits(path, ids), numpy_llama.forward(config, weights, ids)) > 0.1


@pytest.mark.parametrize(("quant", "bits"), [("q8_0", 8.5), ("q4", 4.5)])
def test_bits_per_weight(quant: str, bits: float) -> None:
    """Every matrix mlx-lm quantized costs what tinyllm's blocks of 32 do."""
    mx = importlib.import_module("mlx.core")
    shape = "110M" if "110M" in SHAPES else "stories260K"
    path = mlxlm.model_dir(source_file(shape)[0], quant, CACHE)
    tensors = mx.load(str(path / "model.safetensors"))
    recipe = mlxlm.QUANTS[quant]
    assert recipe is not None
    group = recipe[1]
    quantized = [name[: -len(".scales")] for name in tensors if name.endswith(".scales")]
    assert quantized
    for name in quantized:
        weight, scales, biases = (tensors[f"{name}.{k}"] for k in ("weight", "scales", "biases"))
        n = scales.size * group  # weights in the matrix
        assert 8 * weight.nbytes == n * recipe[0], name
        assert 8 * (weight.nbytes + scales.nbytes + biases.nbytes) / n == bits, name
