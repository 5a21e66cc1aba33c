"""Read and write llama2.c checkpoint files with NumPy (test support only).

Three on-disk layouts exist, all little-endian:

* **legacy** (``version=0``): seven int32 config fields (``dim, hidden_dim,
  n_layers, n_heads, n_kv_heads, vocab_size, seq_len``; a negative
  ``vocab_size`` marks an untied classifier), then float32 tensors in this
  order: token embeddings, every layer's attention norm, wq, wk, wv, wo,
  every layer's ffn norm, w1, w2, w3, the final norm, two obsolete RoPE
  tables of ``seq_len * head_size / 2`` floats each (cos, then sin), and the
  classifier only when it is untied.  Each "every layer's X" block is the
  ``n_layers`` tensors X stored back to back.
* **version 1**: a 256-byte header (uint32 magic ``0x616b3432`` at byte 0,
  int32 version at 4, the seven config int32s at 8..35 with a positive
  vocab_size, a uint8 "classifier is shared" flag at 36, zero padding), then
  float32 tensors: attention norms, ffn norms, final norm, token embeddings,
  wq, wk, wv, wo, w1, w2, w3 (each per layer), and the classifier if untied.
  There are no RoPE tables.
* **version 2** (Q8_0): the same header plus an int32 group size at byte 37
  (unaligned, it directly follows the flag byte), then the float32 norms
  (attention norms, ffn norms, final norm), then for each quantized tensor
  (token embeddings, wq, wk, wv, wo, w1, w2, w3 per layer, classifier if
  untied) all of its int8 values followed by its float32 scales, one scale per
  ``group_size`` consecutive values of the flattened tensor.

Tensor names follow llama2.c's PyTorch model (``layers.{i}.attention.wq``
etc.); every tensor keeps the ``(out_features, in_features)`` orientation that
the C code multiplies with, and Q/K rows stay in llama2.c's interleaved-pair
RoPE layout.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

MAGIC = 0x616B3432
HEADER_SIZE = 256
CONFIG_FIELDS = (
    "dim",
    "hidden_dim",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "vocab_size",
    "seq_len",
)
ROPE_TABLE_NAMES = ("freq_cis_real", "freq_cis_imag")

Config = dict[str, Any]
Weights = dict[str, np.ndarray]
Rounding = Literal["half_even", "half_away"]

_LAYER_MATRICES = (
    "attention.wq",
    "attention.wk",
    "attention.wv",
    "attention.wo",
    "feed_forward.w1",
    "feed_forward.w2",
    "feed_forward.w3",
)


# ---------------------------------------------------------------------------
# shapes and orders


def head_size(config: Mapping[str, Any]) -> int:
    """Return the per-head dimension ``dim // n_heads``."""
    return int(config["dim"]) // int(config["n_heads"])


def tensor_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Return the shape of every named tensor of a model with this config."""
    dim = int(config["dim"])
    hidden = int(config["hidden_dim"])
    vocab = abs(int(config["vocab_size"]))
    hs = head_size(config)
    q_rows = int(config["n_heads"]) * hs
    kv_rows = int(config["n_kv_heads"]) * hs
    shapes: dict[str, tuple[int, ...]] = {"tok_embeddings": (vocab, dim)}
    for i in range(int(config["n_layers"])):
        p = f"layers.{i}."
        shapes[p + "attention_norm"] = (dim,)
        shapes[p + "attention.wq"] = (q_rows, dim)
        shapes[p + "attention.wk"] = (kv_rows, dim)
        shapes[p + "attention.wv"] = (kv_rows, dim)
        shapes[p + "attention.wo"] = (dim, q_rows)
        shapes[p + "ffn_norm"] = (dim,)
        shapes[p + "feed_forward.w1"] = (hidden, dim)
        shapes[p + "feed_forward.w2"] = (dim, hidden)
        shapes[p + "feed_forward.w3"] = (hidden, dim)
    shapes["norm"] = (dim,)
    shapes["output"] = (vocab, dim)
    return shapes


def _per_layer(config: Mapping[str, Any], suffix: str) -> list[str]:
    return [f"layers.{i}.{suffix}" for i in range(int(config["n_layers"]))]


def legacy_order(config: Mapping[str, Any], shared: bool) -> list[str]:
    """Names in the order run.c maps a legacy file (RoPE tables included)."""
    names = ["tok_embeddings"]
    for suffix in (
        "attention_norm",
        *_LAYER_MATRICES[:4],
        "ffn_norm",
        *_LAYER_MATRICES[4:],
    ):
        names += _per_layer(config, suffix)
    names += ["norm", *ROPE_TABLE_NAMES]
    if not shared:
        names.append("output")
    return names


def v1_order(config: Mapping[str, Any], shared: bool) -> list[str]:
    """Names in the order export.py's version 1 writes them."""
    names = _per_layer(config, "attention_norm") + _per_layer(config, "ffn_norm")
    names += ["norm", "tok_embeddings"]
    for suffix in _LAYER_MATRICES:
        names += _per_layer(config, suffix)
    if not shared:
        names.append("output")
    return names


def v2_fp32_order(config: Mapping[str, Any]) -> list[str]:
    """Names of the float32 (norm) tensors at the start of a version 2 body."""
    return _per_layer(config, "attention_norm") + _per_layer(config, "ffn_norm") + ["norm"]


def v2_q8_order(config: Mapping[str, Any], shared: bool) -> list[str]:
    """Names of the Q8_0 tensors of a version 2 body, in file order."""
    names = ["tok_embeddings"]
    for suffix in _LAYER_MATRICES:
        names += _per_layer(config, suffix)
    if not shared:
        names.append("output")
    return names


# ---------------------------------------------------------------------------
# helpers


def rope_tables(config: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Return the legacy (cos, sin) tables, each ``(seq_len, head_size // 2)``.

    They follow llama2.c's model.py: frequency ``10000 ** (-2j / head_size)``
    for pair ``j`` and position ``t``, computed in float32.  run.c skips them.
    """
    hs = head_size(config)
    seq_len = int(config["seq_len"])
    exponents = np.arange(0, hs, 2, dtype=np.float32)[: hs // 2] / np.float32(hs)
    freqs = np.float32(1.0) / np.power(np.float32(10000.0), exponents)
    angles = np.outer(np.arange(seq_len, dtype=np.float32), freqs).astype(np.float32)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def export_group_size(dim: int, group_size: int = 64) -> int:
    """Apply export.py's backoff: halve ``group_size`` until it divides ``dim``.

    Only ``dim`` is checked (export.py prints that it fits ``hidden_dim``, but
    does not test it); the per-tensor divisibility check comes afterwards.
    """
    if group_size <= 0:
        raise ValueError("group_size must be positive")
    while dim % group_size != 0:
        group_size //= 2
    return group_size


def runq_exact_group_size(dim: int, hidden_dim: int, group_size: int = 64) -> int:
    """Halve ``group_size`` until it divides both ``dim`` and ``hidden_dim``.

    runq.c's matmul walks each row in whole groups and silently drops a row's
    last ``n % group_size`` inputs, and its scales are indexed as if groups
    never straddle rows.  Both are harmless only when the group size divides
    every matmul input width, i.e. ``dim`` and ``hidden_dim``.
    """
    group_size = export_group_size(dim, group_size)
    while hidden_dim % group_size != 0:
        group_size //= 2
    return group_size


def _round(values: np.ndarray, rounding: Rounding) -> np.ndarray:
    if rounding == "half_even":
        rounded: np.ndarray = np.rint(values)
        return rounded
    if rounding == "half_away":
        # rint differs from C's round() only on exact ties (x.5), which go away from zero
        whole = np.trunc(values)
        tie = np.abs(values - whole) == 0.5
        away: np.ndarray = np.where(tie, whole + np.sign(values), np.rint(values))
        return away
    raise ValueError(f"unknown rounding {rounding!r}")


def quantize_q80(
    w: np.ndarray, group_size: int, rounding: Rounding = "half_even"
) -> tuple[np.ndarray, np.ndarray]:
    """Quantize a tensor to Q8_0 the way export.py does.

    Groups are ``group_size`` consecutive values of the flattened tensor;
    ``scale = max|w| / 127`` and ``q = round(w / scale)`` in float32.
    export.py rounds with ``torch.round`` (ties to even, ``"half_even"``);
    ``"half_away"`` gives C's ``round()`` as runq.c uses for activations.
    An all-zero group gets scale 0 and zero codes.

    Returns the int8 codes (same shape as ``w``) and the float32 scales (1-D).
    """
    flat = np.asarray(w, dtype=np.float32).reshape(-1)
    if flat.size % group_size != 0:
        raise ValueError(f"{flat.size} values are not a multiple of group_size {group_size}")
    groups = flat.reshape(-1, group_size)
    scale = (np.abs(groups).max(axis=1) / np.float32(127.0)).astype(np.float32)
    safe = np.where(scale == 0, np.float32(1.0), scale).astype(np.float32)
    scaled = (groups / safe[:, None]).astype(np.float32)
    q = np.clip(_round(scaled, rounding), -127, 127).astype(np.int8)
    return q.reshape(np.shape(w)), scale


def dequantize_q80(q: np.ndarray, scales: np.ndarray, group_size: int) -> np.ndarray:
    """Return ``q * scale`` in float32, as runq.c's ``dequantize`` computes it."""
    groups = q.reshape(-1, group_size).astype(np.float32) * scales.astype(np.float32)[:, None]
    return groups.astype(np.float32).reshape(q.shape)


def _public_config(raw: Mapping[str, int], shared: bool, version: int) -> Config:
    config: Config = {name: int(raw[name]) for name in CONFIG_FIELDS}
    config["vocab_size"] = abs(config["vocab_size"])
    config["shared_classifier"] = bool(shared)
    config["version"] = version
    return config


def _check_config(config: Mapping[str, Any]) -> None:
    for name in CONFIG_FIELDS:
        if int(config[name]) <= 0:
            raise ValueError(f"config field {name} must be positive, got {config[name]}")
    if int(config["dim"]) % int(config["n_heads"]) != 0:
        raise ValueError("dim must be a multiple of n_heads")
    if int(config["n_heads"]) % int(config["n_kv_heads"]) != 0:
        raise ValueError("n_heads must be a multiple of n_kv_heads")
    if head_size(config) % 2 != 0:
        raise ValueError("head size must be even for RoPE")


class _Reader:
    """Sequential little-endian reader over a bytes buffer."""

    def __init__(self, data: bytes, offset: int) -> None:
        self.data = data
        self.offset = offset

    def take(self, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        nbytes = count * np.dtype(dtype).itemsize
        if self.offset + nbytes > len(self.data):
            raise ValueError("file is shorter than its config implies")
        arr: np.ndarray = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.offset)
        self.offset += nbytes
        out: np.ndarray = arr.reshape(shape).copy()
        return out

    def finish(self) -> None:
        if self.offset != len(self.data):
            extra = len(self.data) - self.offset
            raise ValueError(f"{extra} unexpected trailing bytes after the last tensor")


# ---------------------------------------------------------------------------
# reading


def _parse(
    path: str | Path,
) -> tuple[Config, Weights, dict[str, tuple[np.ndarray, np.ndarray]]]:
    data = Path(path).read_bytes()
    if len(data) < 28:
        raise ValueError(f"{path}: too short for a llama2.c checkpoint")
    (magic,) = struct.unpack_from("<I", data, 0)
    weights: Weights = {}
    q8: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if magic != MAGIC:
        raw = dict(zip(CONFIG_FIELDS, struct.unpack_from("<7i", data, 0), strict=True))
        shared = raw["vocab_size"] > 0
        config = _public_config(raw, shared, 0)
        _check_config(config)
        shapes = tensor_shapes(config)
        half = (config["seq_len"], head_size(config) // 2)
        shapes[ROPE_TABLE_NAMES[0]] = half
        shapes[ROPE_TABLE_NAMES[1]] = half
        reader = _Reader(data, 28)
        for name in legacy_order(config, shared):
            weights[name] = reader.take("<f4", shapes[name]).astype(np.float32)
        reader.finish()
    else:
        if len(data) < HEADER_SIZE:
            raise ValueError(f"{path}: header shorter than {HEADER_SIZE} bytes")
        (version,) = struct.unpack_from("<i", data, 4)
        raw = dict(zip(CONFIG_FIELDS, struct.unpack_from("<7i", data, 8), strict=True))
        shared = bool(data[36])
        config = _public_config(raw, shared, version)
        _check_config(config)
        shapes = tensor_shapes(config)
        reader = _Reader(data, HEADER_SIZE)
        if version == 1:
            for name in v1_order(config, shared):
                weights[name] = reader.take("<f4", shapes[name]).astype(np.float32)
        elif version == 2:
            (group_size,) = struct.unpack_from("<i", data, 37)
            if group_size <= 0:
                raise ValueError(f"bad group size {group_size}")
            config["group_size"] = group_size
            for name in v2_fp32_order(config):
                weights[name] = reader.take("<f4", shapes[name]).astype(np.float32)
            for name in v2_q8_order(config, shared):
                shape = shapes[name]
                numel = int(np.prod(shape))
                if numel % group_size != 0:
                    raise ValueError(f"{name}: {numel} values not a multiple of {group_size}")
                q = reader.take("<i1", shape).astype(np.int8)
                s = reader.take("<f4", (numel // group_size,)).astype(np.float32)
                q8[name] = (q, s)
                weights[name] = dequantize_q80(q, s, group_size)
        else:
            raise ValueError(f"{path}: unsupported llama2.c version {version}")
        reader.finish()
    if shared:
        weights["output"] = weights["tok_embeddings"]
        if q8:
            q8["output"] = q8["tok_embeddings"]
    return config, weights, q8


def read(path: str | Path, *, rope_tables: bool = False) -> tuple[Config, Weights]:
    """Read a llama2.c checkpoint of any layout.

    Returns ``(config, weights)``.  ``config`` holds the seven header fields
    (``vocab_size`` always positive), ``shared_classifier``, ``version``
    (0 for legacy) and, for version 2, ``group_size``.  ``weights`` maps
    llama2.c tensor names to float32 arrays; Q8_0 tensors come back
    dequantized, and ``output`` is the embedding table when shared.  With
    ``rope_tables=True`` a legacy file's two stored RoPE tables are returned
    too, as ``freq_cis_real`` and ``freq_cis_imag``.
    """
    config, weights, _ = _parse(path)
    if not rope_tables:
        for name in ROPE_TABLE_NAMES:
            weights.pop(name, None)
    return config, weights


def read_q8(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return the raw Q8_0 data of a version 2 file.

    Maps each quantized tensor name (``output`` included, aliasing
    ``tok_embeddings`` when shared) to ``(int8 codes shaped like the tensor,
    float32 scales, one per group of the flattened tensor)``.
    """
    config, _, q8 = _parse(path)
    if config["version"] != 2:
        raise ValueError(f"{path} is version {config['version']}, not a Q8_0 (version 2) file")
    return q8


# ---------------------------------------------------------------------------
# writing


def _header(config: Mapping[str, Any], version: int, vocab_size: int) -> bytes:
    fields = [int(config[name]) for name in CONFIG_FIELDS]
    fields[CONFIG_FIELDS.index("vocab_size")] = vocab_size
    return struct.pack("<Ii7i", MAGIC, version, *fields)


def _f32(arr: np.ndarray) -> bytes:
    return np.ascontiguousarray(arr, dtype="<f4").tobytes()


def _resolve_shared(config: Mapping[str, Any], weights: Mapping[str, np.ndarray]) -> bool:
    if "output" not in weights:
        if config.get("shared_classifier") is False:
            raise ValueError("shared_classifier is False but weights has no 'output'")
        return True
    same = weights["output"] is weights["tok_embeddings"] or np.array_equal(
        weights["output"], weights["tok_embeddings"]
    )
    shared = bool(config.get("shared_classifier", same))
    if shared and not same:
        raise ValueError("shared_classifier is True but 'output' differs from 'tok_embeddings'")
    return shared


def write(
    path: str | Path,
    config: Mapping[str, Any],
    weights: Mapping[str, np.ndarray],
    version: int = 0,
    group_size: int = 64,
    *,
    rounding: Rounding = "half_even",
) -> Config:
    """Write a llama2.c checkpoint in the legacy (0), v1 or v2 (Q8_0) layout.

    ``config`` needs the seven header fields; ``shared_classifier`` is taken
    from it when present, else inferred from whether ``output`` equals
    ``tok_embeddings`` (a missing ``output`` means shared).  For version 2 the
    group size goes through export.py's backoff (:func:`export_group_size`)
    and every tensor is quantized with :func:`quantize_q80` using
    ``rounding``.  Legacy files get RoPE tables from ``weights`` when they hold
    ``freq_cis_real``/``freq_cis_imag``, else computed by :func:`rope_tables`.

    Returns the config as :func:`read` would report it for the new file.
    """
    _check_config(config)
    shapes = tensor_shapes(config)
    shared = _resolve_shared(config, weights)

    def tensor(name: str) -> np.ndarray:
        arr = np.asarray(weights[name], dtype=np.float32)
        if arr.shape != shapes[name]:
            raise ValueError(f"{name}: shape {arr.shape}, expected {shapes[name]}")
        return arr

    vocab = int(config["vocab_size"])
    out = _public_config(config, shared, version)
    parts: list[bytes] = []
    if version == 0:
        parts.append(
            struct.pack(
                "<7i",
                *(int(config[n]) for n in CONFIG_FIELDS[:5]),
                vocab if shared else -vocab,
                int(config["seq_len"]),
            )
        )
        cos, sin = rope_tables(config)
        tables = {ROPE_TABLE_NAMES[0]: cos, ROPE_TABLE_NAMES[1]: sin}
        for name in legacy_order(config, shared):
            if name in tables:
                table = np.asarray(weights.get(name, tables[name]), dtype=np.float32)
                if table.shape != tables[name].shape:
                    raise ValueError(f"{name}: shape {table.shape}, expected {tables[name].shape}")
                parts.append(_f32(table))
            else:
                parts.append(_f32(tensor(name)))
    elif version == 1:
        header = _header(config, 1, vocab) + struct.pack("<B", int(shared))
        parts.append(header.ljust(HEADER_SIZE, b"\0"))
        parts.extend(_f32(tensor(name)) for name in v1_order(config, shared))
    elif version == 2:
        gs = export_group_size(int(config["dim"]), group_size)
        names = v2_q8_order(config, shared)
        for name in names:
            numel = int(np.prod(shapes[name]))
            if numel % gs != 0:
                raise ValueError(f"{name} has {numel} values, not a multiple of group size {gs}")
        header = _header(config, 2, vocab) + struct.pack("<Bi", int(shared), gs)
        parts.append(header.ljust(HEADER_SIZE, b"\0"))
        parts.extend(_f32(tensor(name)) for name in v2_fp32_order(config))
        for name in names:
            q, s = quantize_q80(tensor(name), gs, rounding)
            parts.append(q.astype(np.int8).tobytes())
            parts.append(_f32(s))
        out["group_size"] = gs
    else:
        raise ValueError(f"unsupported version {version}")
    with open(path, "wb") as f:
        f.writelines(parts)
    return out


# ---------------------------------------------------------------------------
# random models


def random_model(
    dim: int,
    hidden_dim: int,
    n_layers: int,
    n_heads: int,
    n_kv_heads: int,
    vocab_size: int,
    seq_len: int,
    shared_classifier: bool = True,
    seed: int = 0,
) -> tuple[Config, Weights]:
    """Make a model with small random weights (N(0, 0.02)) and norms near 1."""
    config: Config = {
        "dim": dim,
        "hidden_dim": hidden_dim,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "n_kv_heads": n_kv_heads,
        "vocab_size": vocab_size,
        "seq_len": seq_len,
        "shared_classifier": shared_classifier,
        "version": 0,
    }
    _check_config(config)
    rng = np.random.default_rng(seed)
    weights: Weights = {}
    for name, shape in tensor_shapes(config).items():
        if name == "output" and shared_classifier:
            continue
        values = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        if len(shape) == 1:
            values += np.float32(1.0)
        weights[name] = values.astype(np.float32)
    if shared_classifier:
        weights["output"] = weights["tok_embeddings"]
    return config, weights
