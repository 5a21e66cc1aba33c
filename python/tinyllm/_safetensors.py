"""A small streaming writer of float32 safetensors files.

A safetensors file is an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
{...}}`` padded with spaces to a multiple of 8 bytes, then the tensor data,
the offsets counting from the end of the header. The header lists every
tensor before any data, so the shapes are all that is needed to start; each
tensor's values are asked for only when its turn comes, so a model of any
size is written holding one tensor in memory at a time.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: One tensor to write: its name, its shape and a function giving its
#: values (a float32 array of that shape), called once, when it is written.
Entry = tuple[str, tuple[int, ...], Callable[[], np.ndarray[Any, Any]]]


def write_f32(
    path: str | Path, entries: Sequence[Entry], metadata: Mapping[str, str] | None = None
) -> int:
    """Writes ``entries`` as float32 tensors, in the order given, to the
    safetensors file ``path``. Returns the bytes of tensor data.

    Raises:
        ValueError: two entries share a name, or a function returned an
            array of another shape.
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, shape, _ in entries:
        if name in header:
            raise ValueError(f"tensor {name!r} is given twice")
        size = 4 * math.prod(shape)
        header[name] = {
            "dtype": "F32",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name, shape, values in entries:
            a = np.ascontiguousarray(values(), dtype="<f4")
            if a.shape != tuple(shape):
                raise ValueError(f"tensor {name!r} has shape {a.shape}, not {tuple(shape)}")
            f.write(a.data)
    return offset
