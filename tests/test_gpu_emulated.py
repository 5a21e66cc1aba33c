"""The GPU backend through the whole package, on the Metal emulator (or a
Mac's GPU).

``device="metal-emulator"`` runs the Metal kernels of ``kernels/metal/``
(compiled as C++ by clang, every GPU thread a fiber with Metal's SIMD-group
and threadgroup semantics) behind the same ``GpuDevice`` a Mac runs: the
same buffers, kernel sequence and arguments. It exists in builds with the
``metal-emulator`` feature, which ``make install-test`` turns on.

Checked against references tinyllm did not compute: run.c's story,
transformers' logits and greedy tokens for every family, and the NumPy
forward passes over llama.cpp's quantized files. The GPU keeps activations
in f32, so its quantized products are checked as tightly as float ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tinyllm

from conftest import FIXTURES, MODELS
from test_hf_models import CASES, CONTEXT, load_case, relative_errors, write_dir

#: ``TINYLLM_TEST_GPU=metal`` (the macOS workflow) runs these checks on a
#: Mac's real GPU instead.
DEVICE = "metal" if os.environ.get("TINYLLM_TEST_GPU") == "metal" else "metal-emulator"

#: Against transformers' f32 logits, relative to the largest |logit| (as the
#: CPU's TOL in test_hf_models.py).
TOL = 1e-4
#: Against the float64 NumPy passes over llama.cpp's dequantized weights,
#: relative to the largest |logit|: f32 sums only (the CPU needs 3-4% here,
#: because it rounds activations to 8 bits for the quantized types).
TOL_GGUF = 1e-4


def emulated(path: Path | str, **kwargs: Any) -> tinyllm.Model:
    kwargs.setdefault("kv_cache", "f32")
    return tinyllm.Model(path, device=DEVICE, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def _emulator_built() -> None:
    try:
        emulated(MODELS / "stories260K.bin", tokenizer=MODELS / "tok512.bin").close()
    except ValueError as e:
        if "metal-emulator feature" in str(e):
            pytest.skip("this build has no Metal emulator (make install-test adds it)")
        raise


def test_stories260k_tells_run_c_s_story(golden: str) -> None:
    m = emulated(MODELS / "stories260K.bin", tokenizer=MODELS / "tok512.bin", kv_cache="f16")
    assert m.info["device"] != "cpu" and m.info["isa"] == "metal"
    assert m.generate("", max_tokens=256, temperature=0) + "\n" == golden


@pytest.mark.parametrize("name", CASES)
def test_every_family_gives_transformers_logits_and_tokens(name: str, tmp_path: Path) -> None:
    case = load_case(name)
    path = write_dir(case["spec"], tmp_path / "m", dtype=case["dtype"], shards=case["shards"])
    m = emulated(str(path), context_length=CONTEXT)
    got = m.logits(case["input_ids"])
    err = relative_errors(got, case)
    assert err.max() <= TOL, err
    assert got.argmax(-1).tolist() == case["argmax"]
    # (4 of transformers' 16 greedy tokens: the emulated classifier of a
    # 151936-token vocabulary costs ~1 s a token, and the logits above
    # already cover every position of the prompt)
    stream = m.stream(case["input_ids"], max_tokens=4, temperature=0)
    for _ in stream:
        pass
    assert stream.tokens == case["greedy"][:4]


GGUF = FIXTURES / "gguf"


def gguf_cases() -> list[tuple[str, list[int], list[list[float]]]]:
    ref = json.loads((GGUF / "reference.json").read_text(encoding="utf-8"))
    cases = [(c["file"], ref["tokens"], c["logits"]) for c in ref["cases"].values()]
    k = json.loads((GGUF / "kquant_reference.json").read_text(encoding="utf-8"))
    cases += [(k[kind]["file"], k["ids"], k[kind]["logits"]) for kind in ("q4_k", "q6_k")]
    return cases


@pytest.mark.parametrize(("file", "ids", "logits"), gguf_cases(), ids=lambda v: str(v)[:24])
def test_llama_cpp_quantized_files_match_numpy(
    file: str, ids: list[int], logits: list[list[float]]
) -> None:
    m = emulated(GGUF / file, tokenizer=MODELS / "tok512.bin")
    got = m.logits(ids)
    want = np.asarray(logits)
    assert np.abs(got - want).max() <= TOL_GGUF * float(np.abs(want).max())


def test_sequences_decoded_together_equal_each_alone() -> None:
    m = emulated(MODELS / "stories260K.bin", tokenizer=MODELS / "tok512.bin", kv_cache="f16")
    prompts = ["Once upon a time", "The dog ran to the park and saw a big", "Lily"]
    alone = [m.generate(p, max_tokens=30, temperature=0) for p in prompts]
    assert m.generate(prompts, max_tokens=30, temperature=0) == alone


def test_what_the_gpu_cannot_do_is_a_clear_error() -> None:
    tok = MODELS / "tok512.bin"
    with pytest.raises(ValueError, match="no GPU kernel"):
        emulated(FIXTURES / "stories260K_q80.bin", tokenizer=tok)
    # GGUF types the CPU runs but the GPU does not (yet): "auto" keeps them
    # on the CPU for this reason.
    for kind in ("q5_k", "q3_k", "q5_0"):
        with pytest.raises(ValueError, match=f"weights of type {kind} have no GPU kernel"):
            emulated(GGUF / f"kquant-{kind}.gguf", tokenizer=tok)
    with pytest.raises(ValueError, match="q8_0"):
        emulated(MODELS / "stories260K.bin", tokenizer=tok, kv_cache="q8_0")
    with pytest.raises(ValueError, match='"auto", "cpu", "metal"'):
        tinyllm.Model(MODELS / "stories260K.bin", tokenizer=tok, device="gpu")


def test_metal_without_a_mac_says_so() -> None:
    import sys

    if sys.platform == "darwin":
        pytest.skip("a Mac may have a GPU")
    with pytest.raises(ValueError, match="needs a Mac"):
        tinyllm.Model(MODELS / "stories260K.bin", tokenizer=MODELS / "tok512.bin", device="metal")
    m = tinyllm.Model(MODELS / "stories260K.bin", tokenizer=MODELS / "tok512.bin", device="auto")
    assert m.info["device"] == "cpu"
