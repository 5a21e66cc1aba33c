"""GGUF files made by llama.cpp: the model, its vocabulary and its chat
template, read straight from the file.

The references in tests/fixtures/gguf were computed without tinyllm (see
tools/make_gguf_fixtures.py): llama.cpp quantized stories260K, and a
float64 NumPy forward pass ran over the weights as llama.cpp's own Python
library dequantizes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import tinyllm

from conftest import FIXTURES, MODELS

GGUF = FIXTURES / "gguf"
REFERENCE = json.loads((GGUF / "reference.json").read_text(encoding="utf-8"))

#: Largest |logit error| over the largest |logit|. Float weights compute in
#: f32 (rounding only); quantized weights meet activations quantized to int8
#: per block of 32, as llama.cpp's CPU kernels do, which costs about 1-2%.
TOLERANCE = {"F16": 1e-5, "BF16": 1e-5, "Q8_0": 0.03, "Q4_0": 0.04, "Q4_1": 0.04}


@pytest.mark.parametrize("kind", sorted(REFERENCE["cases"]))
def test_logits_of_llama_cpp_quantized_files(kind: str) -> None:
    case = REFERENCE["cases"][kind]
    m = tinyllm.Model(GGUF / case["file"])
    assert m.info["format"] == "GGUF"
    got = m.logits(REFERENCE["tokens"])
    want = np.asarray(case["logits"])
    scale = float(np.abs(want).max())
    assert np.abs(got - want).max() <= TOLERANCE[kind] * scale
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9


def test_quantized_gguf_tells_a_story_like_the_original(golden: str) -> None:
    # Greedy text from 8-bit weights stays on the f32 model's story for a while.
    m = tinyllm.Model(GGUF / "stories260K-Q8_0.gguf")
    text = m.generate("", max_tokens=40, temperature=0)
    assert golden.startswith(text[:60])


def test_the_vocabulary_comes_from_the_file(models: Path) -> None:
    m = tinyllm.Model(GGUF / "stories260K-Q4_0.gguf")
    ref = tinyllm.Model.default()
    for text in ["Once upon a time", "Tim and Lily played. The end!", " spaces  and\nlines"]:
        assert m.tokenize(text) == ref.tokenize(text)
    assert m.tokenizer.bos_id == 1 and m.tokenizer.eos_id == 2


def test_a_cut_file_is_an_error_naming_it(tmp_path: Path) -> None:
    data = (GGUF / "stories260K-Q4_0.gguf").read_bytes()
    # (the last 16 bytes are alignment padding, which a reader may lack)
    for cut in [3, 24, 200, len(data) // 2, len(data) - 20]:
        p = tmp_path / f"cut{cut}.gguf"
        p.write_bytes(data[:cut])
        with pytest.raises(tinyllm.ModelFormatError, match=str(p)):
            tinyllm.Model(p, MODELS / "tok512.bin")
