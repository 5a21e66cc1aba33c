"""Makes tests/fixtures/gguf/: stories260K in GGUF's F16, BF16, Q8_0, Q4_0
and Q4_1, quantized by llama.cpp itself, with reference logits.

Each file is ``llama-quantize --pure`` of ../shared/models/stories260K.gguf
(llama.cpp's own conversion of the model). The reference logits come from
the NumPy float64 forward pass in tests/support/numpy_llama.py over weights
dequantized by the ``gguf`` package (llama.cpp's Python library), so neither
the file layout nor the numbers pass through tinyllm.

Run it from the repository root with the gguf package installed and
``LLAMA_QUANTIZE`` naming llama.cpp's ``llama-quantize`` program:

    pip install gguf
    LLAMA_QUANTIZE=/path/to/llama-quantize python tools/make_gguf_fixtures.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf  # type: ignore[import-untyped]
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))

import numpy_llama  # noqa: E402

MODELS = ROOT.parent / "shared" / "models"
OUT = ROOT / "tests" / "fixtures" / "gguf"
TYPES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1"]
#: A story's opening in stories260K's vocabulary (BOS first); its logits at
#: every position are the reference.
TOKENS = [1, 403, 407, 261, 378, 11, 261, 409, 460, 301, 300, 376, 293, 299, 397, 270]

#: GGUF names (without ".weight") -> numpy_llama's llama2.c names.
GLOBAL = {"token_embd": "tok_embeddings", "output_norm": "norm", "output": "output"}
LAYER = {
    "attn_norm": "attention_norm",
    "attn_q": "attention.wq",
    "attn_k": "attention.wk",
    "attn_v": "attention.wv",
    "attn_output": "attention.wo",
    "ffn_norm": "ffn_norm",
    "ffn_gate": "feed_forward.w1",
    "ffn_down": "feed_forward.w2",
    "ffn_up": "feed_forward.w3",
}


def oracle_name(name: str) -> str:
    name = name.removesuffix(".weight")
    if name in GLOBAL:
        return GLOBAL[name]
    _, i, rest = name.split(".", 2)
    return f"layers.{i}.{LAYER[rest]}"


def dequantized(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    reader = gguf.GGUFReader(str(path))
    weights, types = {}, {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = [int(d) for d in reversed(t.shape)]  # GGUF lists innermost first
        weights[oracle_name(t.name)] = np.asarray(values, dtype=np.float64).reshape(shape)
        types[t.name] = t.tensor_type.name
    return weights, types


def main() -> None:
    quantize = os.environ.get("LLAMA_QUANTIZE")
    if not quantize:
        raise SystemExit("set LLAMA_QUANTIZE to llama.cpp's llama-quantize program")
    OUT.mkdir(parents=True, exist_ok=True)
    src = MODELS / "stories260K.gguf"
    reader = gguf.GGUFReader(str(src))
    field = reader.fields
    config = {
        "dim": int(field["llama.embedding_length"].parts[-1][0]),
        "n_layers": int(field["llama.block_count"].parts[-1][0]),
        "n_heads": int(field["llama.attention.head_count"].parts[-1][0]),
        "n_kv_heads": int(field["llama.attention.head_count_kv"].parts[-1][0]),
        "norm_eps": float(field["llama.attention.layer_norm_rms_epsilon"].parts[-1][0]),
    }
    cases = {}
    for kind in TYPES:
        dst = OUT / f"stories260K-{kind}.gguf"
        subprocess.run(
            [quantize, "--pure", str(src), str(dst), kind],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        weights, types = dequantized(dst)
        logits = numpy_llama.forward(config, weights, TOKENS)
        cases[kind] = {
            "file": dst.name,
            "tensor_types": sorted(set(types.values())),
            "logits": np.round(logits, 6).tolist(),
        }
        print(f"{dst.name}: {dst.stat().st_size} bytes, {sorted(set(types.values()))}")
    fixture = {
        "generated_by": "tools/make_gguf_fixtures.py",
        "gguf_version": getattr(gguf, "__version__", "?"),
        "tokens": TOKENS,
        "cases": cases,
    }
    (OUT / "reference.json").write_text(json.dumps(fixture) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
