"""GGUF files with llama.cpp's k-quants (Q4_K, Q6_K, Q5_K, Q3_K) and its Q5_0
(which Q4_K_M files use for rows that are not a multiple of 256), run as they
are: the matrices stay in the memory-mapped file and the kernels read them.

The references were computed without tinyllm (see tools/make_kquant_gguf.py):
llama.cpp's ``llama-quantize --pure`` made the files from a random float32
Llama (dim 256, hidden 512, stories260K's vocabulary), and a float64 NumPy
forward pass ran over their weights as llama.cpp's own Python library
dequantizes them, and over the float32 weights before quantization.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import tinyllm
from tinyllm import _tinyllm

from conftest import FIXTURES, f32_model

GGUF = FIXTURES / "gguf"
REFERENCE = json.loads((GGUF / "kquant_reference.json").read_text(encoding="utf-8"))
IDS = REFERENCE["ids"]
KINDS = ["q4_k", "q6_k", "q5_k", "q3_k", "q5_0"]

#: Largest |logit error| over the largest |logit| when the kernels read the
#: blocks: activations quantized to int8 per block of 32 cost about 1% here
#: (1.1% measured for q4_k, q6_k, q5_k and q5_0, 1.3% for q3_k), as for
#: test_gguf.py's Q8_0.
TOL_DIRECT = 0.03
#: The same blocks dequantized to f32 by ``tinyllm.convert``: f32 rounding
#: only, absolute on logits that reach ~14 (as TOL_LOGITS of
#: test_forward_reference.py; ~4e-6 measured).
TOL_DEQUANTIZED = 1e-4
#: One token at a time through the KV cache against one batch: the same
#: products in another order at most.
TOL_BATCHING = 1e-5
#: What quantization costs against the float32 model: mean KL of the
#: next-token distributions and top-1 agreement (measured: q4_k 0.10 and
#: 0.92, q6_k 0.007 and 1.0, q5_k 0.028 and 1.0, q3_k 0.48 and 0.83, q5_0
#: 0.048 and 0.92; random weights are hard on 4 bits, and harder on 3).
QUALITY = {
    "q4_k": (0.2, 0.8),
    "q6_k": (0.015, 0.95),
    "q5_k": (0.06, 0.95),
    "q3_k": (0.8, 0.7),
    "q5_0": (0.1, 0.8),
}


def path(kind: str) -> Path:
    return GGUF / str(REFERENCE[kind]["file"])


def mean_kl(ref: np.ndarray, got: np.ndarray) -> float:
    """Mean KL(softmax(ref) || softmax(got)) over the positions."""
    lp = ref - ref.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    lq = got - got.max(-1, keepdims=True)
    lq -= np.log(np.exp(lq).sum(-1, keepdims=True))
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())


@pytest.mark.parametrize("kind", KINDS)
def test_every_matrix_keeps_its_type(kind: str) -> None:
    info = tinyllm.info(path(kind))
    assert info["format"] == "GGUF"
    assert info["file_bytes"] == REFERENCE[kind]["bytes"]
    dtypes = {dtype for _, dtype, shape, _ in info["tensors"] if len(shape) == 2}
    assert dtypes == {kind}


@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_numpy_over_gguf_s_dequantization(kind: str) -> None:
    m = f32_model(path(kind), n_threads=2)
    got = m.logits(IDS)
    want = np.asarray(REFERENCE[kind]["logits"])
    scale = float(np.abs(want).max())
    assert scale > 5.0  # a real spread of logits
    assert np.abs(got - want).max() <= TOL_DIRECT * scale
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9
    # Decoding (matrix-vector products) gives what the batch gave.
    one_by_one = _tinyllm.Engine(str(path(kind)), n_threads=2, max_batch=1, kv_cache="f32").logits(
        IDS
    )
    np.testing.assert_allclose(one_by_one, got, rtol=0, atol=TOL_BATCHING)


@pytest.mark.parametrize("kind", KINDS)
def test_converted_files_hold_the_same_weights(kind: str, tmp_path: Path) -> None:
    # Conversion reads every row through tinyllm's own dequantizer.
    want = np.asarray(REFERENCE[kind]["logits"])
    f32 = tmp_path / "f32.tllm"
    tinyllm.convert(path(kind), f32, "f32", progress=False)
    np.testing.assert_allclose(f32_model(f32).logits(IDS), want, rtol=0, atol=TOL_DEQUANTIZED)
    q8 = tmp_path / "q8.tllm"
    r = tinyllm.convert(path(kind), q8, "q8_0", progress=False)
    assert set(r["dtypes"]) == {"q8_0x4"}
    got = f32_model(q8).logits(IDS)
    assert np.abs(got - want).max() <= TOL_DIRECT * float(np.abs(want).max())


@pytest.mark.parametrize("kind", KINDS)
def test_quantization_costs_what_it_should(kind: str) -> None:
    f32 = np.asarray(REFERENCE["f32"]["logits"])
    got = f32_model(path(kind)).logits(IDS)
    max_kl, min_top1 = QUALITY[kind]
    assert mean_kl(f32, got) < max_kl
    assert (got.argmax(-1) == f32.argmax(-1)).mean() > min_top1


def test_the_vocabulary_comes_from_the_file() -> None:
    m = f32_model(path("q4_k"))
    ref = tinyllm.Model.default()
    text = "Once upon a time, Tim and Lily played."
    assert m.tokenize(text) == ref.tokenize(text)
    assert len(m.generate("Once upon a time", max_tokens=8, temperature=0)) > 0
