#!/usr/bin/env python3
"""Regenerate the k-quant GGUF fixtures of tests/test_gguf_kquants.py:

- tests/fixtures/gguf/kquant-q4_k.gguf, kquant-q6_k.gguf, kquant-q5_k.gguf,
  kquant-q3_k.gguf and kquant-q5_0.gguf: a tiny random Llama whose every
  matrix is a real Q4_K (Q6_K, Q5_K, Q3_K, Q5_0) tensor made by llama.cpp's
  own quantizer;
- tests/fixtures/gguf/kquant_reference.json: what a NumPy float64 forward
  pass (tests/support/numpy_llama.py) computes from those files' weights as
  the ``gguf`` package dequantizes them, and from the float32 weights before
  quantization.

CI has neither the ``gguf`` package nor llama.cpp, so the tests read only
these files. This script is not run in CI. Steps:

1. Make a random Llama in float32 (``MODEL`` below; every matrix has rows
   of a multiple of 256 values, as the k-quants need), write it as a
   llama2.c file (tests/support/llama2c_format.py) and that as a GGUF file
   with stories260K's vocabulary (benches/llamacpp.py's ``llama2c_to_gguf``,
   copying the ``tokenizer.ggml.*`` keys of ../shared/models/stories260K.gguf).
2. Quantize it with llama.cpp's ``llama-quantize`` (from the llama.cpp
   sources of llama-cpp-python 0.3.36, built for the CPU; see
   benches/llamacpp.py)::

       llama-quantize --pure model-f32.gguf kquant-q4_k.gguf Q4_K
       llama-quantize --pure model-f32.gguf kquant-q6_k.gguf Q6_K
       (and Q5_K, Q3_K, Q5_0 the same way)

   ``--pure`` keeps k-quant mixtures out: every matrix (the embeddings and
   the classifier included) gets the one type; the norms stay float32.
3. Read each quantized file back with ``gguf.GGUFReader``, check every matrix
   has the expected type, dequantize it with ``gguf.quants.dequantize`` and
   run ``numpy_llama.forward`` on ``IDS``. Also run the float32 model, for
   the tests' bounds on what quantization costs.

Usage (``TINYLLM_LLAMACPP`` names the directory of llama.cpp's programs)::

    pip install gguf numpy
    TINYLLM_LLAMACPP=/path/to/llama.cpp/build/bin python tools/make_kquant_gguf.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "benches"))
import llamacpp  # noqa: E402

import llama2c_format  # noqa: E402
import numpy_llama  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "gguf"
STORIES = llamacpp.MODELS / "stories260K.gguf"

#: The model: dim and hidden multiples of 256, grouped-query attention 4:2,
#: an untied classifier.
MODEL: dict[str, Any] = {
    "dim": 256,
    "hidden_dim": 512,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "vocab_size": 512,
    "seq_len": 256,
    "rope_theta": 10000.0,  # (llama2c_to_gguf's values)
    "norm_eps": 1e-5,
}
SEED = 7
#: The token ids the logits are recorded for (BOS, then fixed random ids).
IDS = [1, *np.random.default_rng(SEED + 1).integers(3, 512, size=11).tolist()]
#: The quantized files: name -> llama-quantize type and ggml type. (Q5_0 is
#: what Q4_K_M files fall back to for rows that are not a multiple of 256;
#: Q5_1, which tinyllm also reads, is checked against ``gguf`` block by block
#: only, by tools/make_kquant_fixtures.py, to keep the fixtures small.)
TYPES = {
    "q4_k": ("Q4_K", GGMLQuantizationType.Q4_K),
    "q6_k": ("Q6_K", GGMLQuantizationType.Q6_K),
    "q5_k": ("Q5_K", GGMLQuantizationType.Q5_K),
    "q3_k": ("Q3_K", GGMLQuantizationType.Q3_K),
    "q5_0": ("Q5_0", GGMLQuantizationType.Q5_0),
}
#: GGUF tensor names (without ".weight") -> llama2.c's (numpy_llama's).
NAMES = {"token_embd": "tok_embeddings", "output_norm": "norm", "output": "output"} | {
    f"blk.{i}.{theirs}": f"layers.{i}.{ours}"
    for i in range(MODEL["n_layers"])
    for ours, theirs in llamacpp._LAYER_TENSORS.items()
}


def random_model() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Config and float32 weights under llama2.c's names: matrices
    N(0, 1 / cols), the classifier N(0, 9 / cols) so that the logits spread
    over several units, norm gains N(1, 0.04)."""
    keys = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"]
    config, weights = llama2c_format.random_model(
        *(MODEL[k] for k in keys), shared_classifier=False, seed=SEED
    )
    rng = np.random.default_rng(SEED)
    for name, w in weights.items():
        if name == "tok_embeddings":
            new = rng.standard_normal(w.shape)
        elif w.ndim == 2:
            gain = 3.0 if name == "output" else 1.0
            new = rng.standard_normal(w.shape) * gain / np.sqrt(w.shape[1])
        else:
            new = 1.0 + 0.2 * rng.standard_normal(w.shape)
        weights[name] = new.astype(np.float32)
    return dict(config), weights


def read_dequantized(path: Path, qtype: GGMLQuantizationType) -> dict[str, np.ndarray]:
    """The file's tensors under llama2.c's names, dequantized by ``gguf``,
    after checking every matrix is of type ``qtype`` and every vector f32."""
    out = {}
    for t in GGUFReader(str(path)).tensors:
        want = qtype if len(t.shape) == 2 else GGMLQuantizationType.F32
        assert t.tensor_type == want, (path.name, t.name, t.tensor_type)
        name = NAMES[t.name.removesuffix(".weight")]
        out[name] = dequantize(t.data, t.tensor_type).astype(np.float32)
    return out


def logits(weights: dict[str, np.ndarray]) -> list[list[float]]:
    got = numpy_llama.forward(MODEL, weights, IDS)  # (len(IDS), vocab) float64
    # 6 decimals: far below the tests' tolerances, and a small file.
    return [[round(float(v), 6) for v in row] for row in got]


def main() -> None:
    config, weights = random_model()
    record: dict[str, object] = {"config": MODEL, "ids": IDS}
    with tempfile.TemporaryDirectory() as tmp:
        src, f32 = Path(tmp) / "model.bin", Path(tmp) / "model-f32.gguf"
        llama2c_format.write(src, config, weights)
        llamacpp.llama2c_to_gguf(src, f32, STORIES)
        record["f32"] = {"logits": logits(weights)}
        for name, (cli_type, qtype) in TYPES.items():
            dst = llamacpp.quantize(f32, FIXTURES / f"kquant-{name}.gguf", cli_type, pure=True)
            record[name] = {
                "file": dst.name,
                "bytes": dst.stat().st_size,
                "logits": logits(read_dequantized(dst, qtype)),
            }
            print(f"wrote {dst} ({dst.stat().st_size} bytes)")
    out = FIXTURES / "kquant_reference.json"
    out.write_text(json.dumps(record) + "\n", encoding="utf-8")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
