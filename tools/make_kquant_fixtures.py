#!/usr/bin/env python3
"""Regenerate crates/core/tests/fixtures/kquants.json: ggml's Q4_K, Q6_K,
Q5_K and Q3_K super-blocks, and its Q5_0 and Q5_1 blocks of 32, with the
values the ``gguf`` package's NumPy dequantizer (``gguf.quants.dequantize``,
written by llama.cpp's authors) gives them.

tinyllm's Rust test (crates/core/tests/kquants.rs) dequantizes the same bytes
with its own code and requires the same float32 values, bit for bit, so the
two layouts cannot drift apart. The blocks are random bytes (every scale,
min and value bit pattern occurs) with the f16 super-block scales replaced
by sane values of both signs and several magnitudes, plus a few extremes:
all-zero bits, all-one bits, and the largest 6-bit scales and mins.

The file holds, per type, ``blocks``: the blocks' bytes in hex, and
``values``: the dequantized float32 values, little-endian, in hex. This
script is not run in CI (which has no ``gguf`` package); run it by hand::

    pip install gguf numpy
    python tools/make_kquant_fixtures.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates" / "core" / "tests" / "fixtures" / "kquants.json"

#: Blocks per type, random then extreme.
N_RANDOM = 20

#: (ggml type, block bytes, byte offsets of its f16 scales). New types go
#: last: the generator's draws for the earlier ones stay the same.
TYPES = {
    "q4_k": (GGMLQuantizationType.Q4_K, 144, [0, 2]),
    "q6_k": (GGMLQuantizationType.Q6_K, 210, [208]),
    "q5_k": (GGMLQuantizationType.Q5_K, 176, [0, 2]),
    "q3_k": (GGMLQuantizationType.Q3_K, 110, [108]),
    "q5_0": (GGMLQuantizationType.Q5_0, 22, [0]),
    "q5_1": (GGMLQuantizationType.Q5_1, 24, [0, 2]),
}


def scales(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` f16 scales: magnitudes from 1e-4 to 1, either sign."""
    mag = 10.0 ** rng.uniform(-4.0, 0.0, size=n)
    sign = np.where(rng.random(n) < 0.2, -1.0, 1.0)
    return (mag * sign).astype(np.float16)


def blocks(rng: np.random.Generator, size: int, f16_at: list[int]) -> np.ndarray:
    b = rng.integers(0, 256, size=(N_RANDOM + 3, size), dtype=np.uint8)
    b[N_RANDOM] = 0  # every value at its smallest, scale 0
    b[N_RANDOM + 1] = 0xFF  # every bit set (f16 scales fixed below)
    b[N_RANDOM + 2] = 0x3F  # 6-bit scales and mins at 63 (q4_k, q5_k)
    for off in f16_at:
        b[:, off : off + 2] = scales(rng, len(b)).view(np.uint8).reshape(-1, 2)
    return b


def main() -> None:
    rng = np.random.default_rng(20240612)
    out = {}
    for name, (qtype, size, f16_at) in TYPES.items():
        b = blocks(rng, size, f16_at)
        values = dequantize(b, qtype).astype(np.float32)  # (n, 256) or (n, 32)
        per_block = GGML_QUANT_SIZES[qtype][0]
        assert values.shape == (len(b), per_block) and np.isfinite(values).all()
        out[name] = {
            "block_bytes": size,
            "blocks": b.tobytes().hex(),
            "values": values.astype("<f4").tobytes().hex(),
        }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
