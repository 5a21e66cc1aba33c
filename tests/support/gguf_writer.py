"""A small GGUF writer for tests: metadata of plain Python values and f32
tensors, laid out as llama.cpp's format documents (version 3, data aligned
to 32 bytes, extents listed innermost first)."""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ALIGN = 32
F32 = 0  # ggml's type number


def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _scalar(v: Any) -> tuple[int, bytes]:
    if isinstance(v, bool):
        return 7, struct.pack("<?", v)
    if isinstance(v, int):
        return (5, struct.pack("<i", v)) if -(2**31) <= v < 2**31 else (10, struct.pack("<Q", v))
    if isinstance(v, float):
        return 6, struct.pack("<f", v)
    if isinstance(v, str):
        return 8, _string(v)
    raise TypeError(f"no GGUF type for {type(v).__name__}")


def _value(v: Any) -> tuple[int, bytes]:
    if isinstance(v, (list, tuple)):
        kinds = {_scalar(x)[0] for x in v} or {5}
        kind = 6 if kinds == {5, 6} else kinds.pop() if len(kinds) == 1 else -1
        if kind < 0:
            raise TypeError("mixed GGUF array")
        body = b"".join(_scalar(float(x) if kind == 6 else x)[1] for x in v)
        return 9, struct.pack("<IQ", kind, len(v)) + body
    return _scalar(v)


def write(
    path: Path, metadata: Mapping[str, Any], tensors: Sequence[tuple[str, np.ndarray]]
) -> None:
    """Writes ``tensors`` (name, array; stored as f32) with ``metadata``."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, v in metadata.items():
        kind, body = _value(v)
        head += _string(key) + struct.pack("<I", kind) + body
    data = b""
    for name, a in tensors:
        a = np.ascontiguousarray(a, dtype="<f4")
        head += _string(name) + struct.pack("<I", a.ndim)
        head += b"".join(struct.pack("<Q", d) for d in reversed(a.shape))
        head += struct.pack("<IQ", F32, len(data))
        data += a.tobytes()
        data += b"\0" * (-len(data) % ALIGN)
    head += b"\0" * (-len(head) % ALIGN)
    path.write_bytes(head + data)
