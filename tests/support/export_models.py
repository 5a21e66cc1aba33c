"""Random weights for the export tests, drawn by tensor name.

:func:`random_weights` fills any list of (name, shape) pairs, in either
naming convention, with NumPy's generator: gains near 1 for norms, unit rows
for embeddings and classifiers, projections whose outputs stay about as
large as their inputs. Logits then spread over tens of units, so that a
wrong rotary layout or a transposed matrix moves them far beyond any
tolerance. tools/make_export_fixtures.py loads the same numbers into
PyTorch modules; the fixtures record the names, shapes and a digest, so the
tests rebuild the weights without torch.

Only NumPy is needed here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Names (in either convention) of embedding and classifier tables.
TABLES = ("tok_embeddings.weight", "output.weight", "model.embed_tokens.weight", "lm_head.weight")


def random_weights(
    shapes: Sequence[tuple[str, Sequence[int]]],
    seed: int,
    tied: Mapping[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """float32 weights for ``shapes`` (drawn in the order given); a name in
    ``tied`` gets the very array of the name it maps to."""
    rng = np.random.default_rng(seed)
    tied = tied or {}
    out: dict[str, np.ndarray] = {}
    for name, dims in shapes:
        shape = tuple(int(d) for d in dims)
        if name in tied:
            out[name] = out[tied[name]]
            continue
        if name in TABLES:
            w = rng.standard_normal(shape)
        elif name.endswith("norm.weight"):
            w = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            w = 0.5 * rng.standard_normal(shape)
        elif len(shape) == 2:  # a projection (out, in)
            w = rng.standard_normal(shape) / np.sqrt(shape[1])
        else:
            raise ValueError(f"no rule draws {name!r} of shape {shape}")
        out[name] = np.ascontiguousarray(w, dtype=np.float32)
    return out


def digest(weights: Mapping[str, np.ndarray]) -> str:
    """sha256 over the names and float32 bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(name.encode("utf-8"))
        h.update(np.ascontiguousarray(weights[name], dtype="<f4").tobytes())
    return h.hexdigest()


def llama2c_shapes(config: Mapping[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """The tensors of a llama2.c ``Transformer``'s state dict, in its order,
    for a config of llama2.c keys (``hidden_dim`` given)."""
    d, f, v = config["dim"], config["hidden_dim"], config["vocab_size"]
    hd = d // config["n_heads"]
    q, kv = config["n_heads"] * hd, config.get("n_kv_heads", config["n_heads"]) * hd
    out: list[tuple[str, tuple[int, ...]]] = [("tok_embeddings.weight", (v, d))]
    for i in range(config["n_layers"]):
        p = f"layers.{i}."
        out += [
            (p + "attention.wq.weight", (q, d)),
            (p + "attention.wk.weight", (kv, d)),
            (p + "attention.wv.weight", (kv, d)),
            (p + "attention.wo.weight", (d, q)),
            (p + "feed_forward.w1.weight", (f, d)),
            (p + "feed_forward.w2.weight", (d, f)),
            (p + "feed_forward.w3.weight", (f, d)),
            (p + "attention_norm.weight", (d,)),
            (p + "ffn_norm.weight", (d,)),
        ]
    out += [("norm.weight", (d,)), ("output.weight", (v, d))]
    return out


def oracle_names(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """llama2.c-named weights under the names of tests/support/numpy_llama.py
    (without ``.weight``)."""
    return {name.removesuffix(".weight"): w for name, w in weights.items()}
