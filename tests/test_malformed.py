"""Malformed files, more than a thousand per format: every one is either
read (and then runs), or rejected with a ``ModelFormatError`` that names the
file in a message of bounded length. Nothing else is allowed: no other
exception, no crash, no hang.

Each format's mutants come from a real small file, by rules that know its
layout: a cut at every header field, each integer field of the header set to
extreme values, bit flips, offsets past the end or onto another tensor,
NaN and infinite scales, and dtypes that do not fit the shape. The seeds
are fixed, so a failure names a mutant that can be made again.

The rules the issue lists one by one (duplicated keys, ids outside the
vocabulary, absurd epsilons, ...) have their own tests at the end, each
checking the field its message names.
"""

from __future__ import annotations

import dataclasses
import json
import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tinyllm
from tinyllm import ModelFormatError

FIXTURES = Path(__file__).parent / "fixtures"
#: The longest error message accepted (the engine cuts reasons at 600 bytes;
#: the path and the exception's own words come on top).
MAX_MESSAGE = 1500
#: Integer values that break a field in every way: zero, one, the sign bit,
#: all ones, and neighbours of the real value (added per field).
EXTREMES = (0, 1, 2, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 1 << 40, (1 << 63), (1 << 64) - 1)


@dataclass
class Outcomes:
    """What the mutants of one format did."""

    rejected: int = 0
    loaded: int = 0
    non_finite: int = 0

    @property
    def total(self) -> int:
        return self.rejected + self.loaded + self.non_finite


def attempt(name: str, path: Path, load: Callable[[], Any], seen: Outcomes) -> None:
    """Loads one mutant; fails the test on anything but the allowed outcomes."""
    try:
        obj = load()
    except ModelFormatError as e:
        msg = str(e)
        assert str(path) in msg, f"{name}: the message does not name {path}: {msg[:300]}"
        assert len(msg) <= MAX_MESSAGE, f"{name}: a message of {len(msg)} characters"
        seen.rejected += 1
        return
    except Exception as e:
        pytest.fail(f"{name}: {type(e).__name__}: {str(e)[:500]}")
    if isinstance(obj, tinyllm.Model):
        try:
            obj.generate("Once upon", max_tokens=2, temperature=0)
        except tinyllm.ContextLengthError:
            pass  # a header's seq_len of 1 or 2 is a valid, if useless, model
        except tinyllm.NonFiniteError as e:
            assert "NaN or infinite" in str(e), f"{name}: {e}"
            seen.non_finite += 1
            return
    seen.loaded += 1


def run_all(mutants: Iterator[tuple[str, bytes]], path: Path, load: Callable[[], Any]) -> Outcomes:
    seen = Outcomes()
    for name, data in mutants:
        path.write_bytes(data)
        attempt(name, path, load, seen)
    return seen


def put(data: bytes, offset: int, value: int, size: int) -> bytes:
    b = bytearray(data)
    b[offset : offset + size] = (value % (1 << (8 * size))).to_bytes(size, "little")
    return bytes(b)


def flip(data: bytes, bit: int) -> bytes:
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def cuts(
    data: bytes, offsets: list[int], rng: random.Random, n: int
) -> Iterator[tuple[str, bytes]]:
    """Cuts at field boundaries (and one byte either side), sampled to ``n``."""
    points = sorted({o + d for o in offsets for d in (-1, 0, 1) if 0 < o + d < len(data)})
    points += [rng.randrange(1, len(data)) for _ in range(n // 5)]
    for at in sorted(rng.sample(points, min(n, len(points)))):
        yield f"cut at {at}", data[:at]


def integer_fields(
    data: bytes, fields: list[tuple[int, int, str]], rng: random.Random, n: int
) -> Iterator[tuple[str, bytes]]:
    """Each sampled integer field set to every extreme and to its neighbours."""
    for off, size, what in rng.sample(fields, min(n, len(fields))):
        real = int.from_bytes(data[off : off + size], "little")
        for v in (*EXTREMES, real + 1, real - 1, real * 2 + 1):
            yield f"{what} at {off} = {v}", put(data, off, v, size)


def bit_flips(
    data: bytes, start: int, end: int, rng: random.Random, n: int
) -> Iterator[tuple[str, bytes]]:
    for _ in range(n):
        bit = rng.randrange(start * 8, end * 8)
        yield f"bit {bit} flipped", flip(data, bit)


# -- GGUF ----------------------------------------------------------------------

GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
#: ggml type -> (values per block, bytes per block)
GGML_BLOCKS = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 8: (32, 34), 30: (1, 2)}


@dataclass
class GgufLayout:
    fields: list[tuple[int, int, str]]  # (offset, size, what) of every integer field
    keys: dict[str, tuple[int, int]]  # key -> (offset of its value type, offset of its value)
    tensors: list[dict[str, Any]]  # name, type_at, offset_at, dims_at, type, offset, nbytes
    data_start: int


def gguf_layout(data: bytes) -> GgufLayout:
    """Every field of a GGUF header, read by a walker written for these tests."""
    fields: list[tuple[int, int, str]] = [(4, 4, "version"), (8, 8, "tensor count")]
    fields.append((16, 8, "metadata count"))
    n_tensors, n_meta = struct.unpack_from("<QQ", data, 8)
    pos = 24

    def string(what: str) -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", data, pos)
        fields.append((pos, 8, f"length of {what}"))
        pos += 8 + n
        return data[pos - n : pos].decode("utf-8", "replace")

    def value(kind: int, what: str) -> None:
        nonlocal pos
        if kind == 8:
            string(what)
        elif kind == 9:
            (inner,) = struct.unpack_from("<I", data, pos)
            fields.append((pos, 4, f"element type of {what}"))
            (count,) = struct.unpack_from("<Q", data, pos + 4)
            fields.append((pos + 4, 8, f"count of {what}"))
            pos += 12
            for _ in range(count):
                value(inner, f"an element of {what}")
        else:
            if GGUF_SCALAR[kind] in (4, 8):
                fields.append((pos, GGUF_SCALAR[kind], f"value of {what}"))
            pos += GGUF_SCALAR[kind]

    keys = {}
    for _ in range(n_meta):
        key = string("a key")
        (kind,) = struct.unpack_from("<I", data, pos)
        fields.append((pos, 4, f"type of {key}"))
        pos += 4
        keys[key] = (pos - 4, pos)
        value(kind, key)
    tensors = []
    for _ in range(n_tensors):
        name = string("a tensor name")
        (n_dims,) = struct.unpack_from("<I", data, pos)
        fields.append((pos, 4, f"rank of {name}"))
        dims = struct.unpack_from(f"<{n_dims}Q", data, pos + 4)
        for i in range(n_dims):
            fields.append((pos + 4 + 8 * i, 8, f"dimension {i} of {name}"))
        pos += 4 + 8 * n_dims
        kind, offset = struct.unpack_from("<IQ", data, pos)
        fields += [(pos, 4, f"type of {name}"), (pos + 4, 8, f"offset of {name}")]
        per, size = GGML_BLOCKS[kind]
        count = int(np.prod(dims))
        tensors.append(
            {
                "name": name,
                "type_at": pos,
                "offset_at": pos + 4,
                "type": kind,
                "offset": offset,
                "nbytes": count // per * size,
            }
        )
        pos += 12
    return GgufLayout(fields, keys, tensors, (pos + 31) // 32 * 32)


def gguf_mutants(data: bytes, seed: int) -> Iterator[tuple[str, bytes]]:
    rng = random.Random(seed)
    lay = gguf_layout(data)
    yield from cuts(data, [o for o, _, _ in lay.fields] + [lay.data_start], rng, 300)
    # Fields of the model and of the tensor index first, then a sample of the
    # vocabulary's many lengths.
    model_fields = [f for f in lay.fields if "element" not in f[2]]
    yield from integer_fields(data, model_fields, rng, 70)
    vocab_fields = [f for f in lay.fields if "element" in f[2]]
    yield from integer_fields(data, vocab_fields, rng, 15)
    yield from bit_flips(data, 0, lay.data_start, rng, 250)
    yield from bit_flips(data, lay.data_start, len(data), rng, 50)
    for t in lay.tensors:
        name = t["name"]
        for kind in (0, 1, 2, 3, 6, 7, 8, 10, 12, 14, 30, 39, 1 << 31):
            if kind != t["type"]:
                yield f"{name} as type {kind}", put(data, t["type_at"], kind, 4)
        others = [u for u in lay.tensors if u is not t]
        other = rng.choice(others)
        yield f"{name} onto {other['name']}", put(data, t["offset_at"], other["offset"], 8)
        yield f"{name} past the end", put(data, t["offset_at"], len(data), 8)
        if t["type"] in (1, 2, 3, 8):  # an f16 scale (or value) at the block's start
            at = lay.data_start + t["offset"]
            for bits, what in ((0x7E00, "NaN"), (0x7C00, "inf"), (0xFC00, "-inf")):
                yield f"{what} scale in {name}", put(data, at, bits, 2)


@pytest.fixture(scope="module")
def gguf_q4() -> bytes:
    return (FIXTURES / "gguf" / "stories260K-Q4_0.gguf").read_bytes()


def test_gguf_walker_reads_the_fixture(gguf_q4: bytes) -> None:
    lay = gguf_layout(gguf_q4)
    assert {t["name"] for t in lay.tensors} >= {"token_embd.weight", "blk.4.ffn_up.weight"}
    assert "llama.block_count" in lay.keys
    last = max(lay.tensors, key=lambda t: t["offset"])
    assert lay.data_start + last["offset"] + last["nbytes"] <= len(gguf_q4)


def test_malformed_gguf_files(tmp_path: Path, gguf_q4: bytes) -> None:
    path = tmp_path / "m.gguf"
    seen = run_all(gguf_mutants(gguf_q4, 1), path, lambda: tinyllm.Model(path, n_threads=1))
    assert seen.total >= 1000, seen
    assert seen.rejected > seen.total // 2, seen


# -- tinyllm files -------------------------------------------------------------


@pytest.fixture(scope="module")
def tllm_q4(tmp_path_factory: pytest.TempPathFactory, models: Path) -> bytes:
    dst = tmp_path_factory.mktemp("tllm") / "stories.tllm"
    tinyllm.convert(
        models / "stories260K.bin", dst, "q4", tokenizer=models / "tok512.bin", progress=False
    )
    return dst.read_bytes()


def tllm_parts(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The header of a tinyllm file and its data section."""
    (n,) = struct.unpack_from("<Q", data, 8)
    start = (16 + n + 63) // 64 * 64
    return json.loads(data[16 : 16 + n]), data[start:]


def tllm_join(head: bytes, header: dict[str, Any] | bytes, body: bytes) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    pre = head[:8] + struct.pack("<Q", len(text)) + text
    return pre + b"\0" * (-len(pre) % 64) + body


def tllm_mutants(data: bytes, seed: int) -> Iterator[tuple[str, bytes]]:
    rng = random.Random(seed)
    header, body = tllm_parts(data)
    (n,) = struct.unpack_from("<Q", data, 8)
    offsets = [0, 4, 8, 16, 16 + n, len(data) - len(body)]
    offsets += [len(data) - len(body) + t["offset"] for t in header["tensors"]]
    yield from cuts(data, offsets, rng, 150)
    yield from integer_fields(data, [(4, 4, "version"), (8, 8, "header length")], rng, 2)
    yield from bit_flips(data, 0, 16 + n, rng, 250)
    yield from bit_flips(data, 16 + n, len(data), rng, 50)

    def edited(what: str, change: Callable[[dict[str, Any]], None]) -> tuple[str, bytes]:
        h = json.loads(json.dumps(header))
        change(h)
        return what, tllm_join(data, h, body)

    def set_config(key: str, v: Any) -> Callable[[dict[str, Any]], None]:
        return lambda h: h["config"].__setitem__(key, v)

    for key in header["config"]:
        for v in (0, -1, 3, 1 << 40, 1e19, 0.5, float("nan"), "7", None, [1]):
            yield edited(f"config.{key} = {v!r}", set_config(key, v))
        yield edited(f"no config.{key}", lambda h, k=key: h["config"].pop(k))
    for key in ("bos_id", "eos_id", "stop_ids", "type"):
        for v in (-1, 512, 1 << 40, "x", [600], None):
            yield edited(
                f"tokenizer.{key} = {v!r}", lambda h, k=key, v=v: h["tokenizer"].__setitem__(k, v)
            )
    for v in ("mamba", "", 5, None):
        yield edited(f"architecture = {v!r}", lambda h, v=v: h.__setitem__("architecture", v))
    tensors = header["tensors"]
    for i, t in enumerate(tensors):

        def tensor(h: dict[str, Any], i: int = i) -> dict[str, Any]:
            return h["tensors"][i]  # type: ignore[no-any-return]

        o = tensors[rng.randrange(len(tensors))]
        for key, v in (
            ("offset", o["offset"]),
            ("offset", t["offset"] + 64),
            ("offset", len(body)),
            ("offset", 1 << 62),
            ("nbytes", t["nbytes"] + 1),
            ("nbytes", 1 << 62),
            ("shape", t["shape"][::-1]),
            ("shape", [*t["shape"], 1]),
            ("shape", [0]),
            ("name", o["name"]),
            ("name", "blk.99.attn_q"),
        ):
            yield edited(
                f"{t['name']}.{key} = {v!r}", lambda h, k=key, v=v: tensor(h).update({k: v})
            )
        for dtype in ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q8_0x4", "q4_0x4", "u8"):
            if dtype != t["dtype"]:
                yield edited(
                    f"{t['name']} as {dtype}", lambda h, d=dtype: tensor(h).update(dtype=d)
                )
        if t["dtype"] in ("q8_0", "q4_0", "q4_1", "f16"):
            for bits, what in ((0x7E00, "NaN"), (0x7C00, "inf")):
                at = t["offset"] + 2 * rng.randrange(min(t["nbytes"] // 2, 64))
                bad = put(body, at, bits, 2)
                yield f"{what} at byte {at} of {t['name']}", tllm_join(data, header, bad)
    text = json.dumps(header).encode()
    yield "header not UTF-8", tllm_join(data, text[:40] + b"\xff\xfe" + text[42:], body)
    yield "header not an object", tllm_join(data, b"[1, 2]", body)
    yield "trailing bytes", data + b"\0" * 64


def test_malformed_tinyllm_files(tmp_path: Path, tllm_q4: bytes) -> None:
    path = tmp_path / "m.tllm"
    seen = run_all(tllm_mutants(tllm_q4, 2), path, lambda: tinyllm.Model(path, n_threads=1))
    assert seen.total >= 1000, seen
    assert seen.rejected > seen.total // 2, seen


# -- llama2.c models and tokenizer.bin -------------------------------------------


def llama2c_mutants(data: bytes, versioned: bool, seed: int) -> Iterator[tuple[str, bytes]]:
    rng = random.Random(seed)
    names = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"]
    base = 8 if versioned else 0
    fields = [(base + 4 * i, 4, n) for i, n in enumerate(names)]
    if versioned:
        fields += [(0, 4, "magic"), (4, 4, "version"), (37, 4, "group size")]
    start = 256 if versioned else 28
    yield from integer_fields(data, fields, rng, len(fields))
    if versioned:
        yield from ((f"shared flag = {v}", put(data, 36, v, 1)) for v in (0, 1, 2, 255))
    yield from cuts(data, [o for o, _, _ in fields] + [start], rng, 80)
    yield from bit_flips(data, 0, start, rng, 60)
    yield from bit_flips(data, start, len(data), rng, 150)
    # Non-finite floats (f32 weights, or the f32 scales and norms).
    for _ in range(180):
        at = rng.randrange(start, len(data) - 4) // 4 * 4
        v = rng.choice((float("nan"), float("inf"), -float("inf"), 3e38))
        yield f"{v} at byte {at}", data[:at] + struct.pack("<f", v) + data[at + 4 :]


def test_malformed_llama2c_models(tmp_path: Path, models: Path, tok512: Path) -> None:
    path = tmp_path / "m.bin"

    def load() -> tinyllm.Model:
        return tinyllm.Model(path, tokenizer=tok512, n_threads=1)

    seen = Outcomes()
    for source, versioned, seed in (
        (models / "stories260K.bin", False, 3),
        (FIXTURES / "stories260K_q80.bin", True, 4),
    ):
        data = source.read_bytes()
        assert (data[:4] == b"24ka") == versioned  # "ak42" as a little-endian u32
        for name, mutant in llama2c_mutants(data, versioned, seed):
            path.write_bytes(mutant)
            attempt(f"{source.name}: {name}", path, load, seen)
    assert seen.total >= 1000, seen
    assert seen.rejected > seen.total // 2, seen


def tokenizer_bin_mutants(data: bytes, seed: int) -> Iterator[tuple[str, bytes]]:
    rng = random.Random(seed)
    fields = [(0, 4, "max_token_length")]
    pos = 4
    while pos < len(data):
        (n,) = struct.unpack_from("<i", data, pos + 4)
        fields += [(pos, 4, "a score"), (pos + 4, 4, "a length")]
        pos += 8 + n
    yield from cuts(data, [o for o, _, _ in fields], rng, 300)
    lengths = [f for f in fields if f[2] != "a score"]
    yield from integer_fields(data, lengths, rng, 40)
    scores = [o for o, _, w in fields if w == "a score"]
    for at in rng.sample(scores, 60):
        v = rng.choice((float("nan"), float("inf"), -float("inf")))
        yield f"score {v} at {at}", data[:at] + struct.pack("<f", v) + data[at + 4 :]
    yield from bit_flips(data, 0, len(data), rng, 250)
    yield "no pieces", data[:4]
    empty = b"".join(struct.pack("<fi", 0.0, 0) for _ in range(512))
    yield "every piece empty", data[:4] + empty


def test_malformed_tokenizer_bin(tmp_path: Path, stories_path: Path, tok512: Path) -> None:
    path = tmp_path / "tok.bin"
    seen = run_all(
        tokenizer_bin_mutants(tok512.read_bytes(), 5),
        path,
        lambda: tinyllm.Model(stories_path, tokenizer=path, n_threads=1),
    )
    assert seen.total >= 1000, seen
    assert seen.rejected > seen.total // 2, seen


# -- Hugging Face directories ------------------------------------------------------


def tiny_tokenizer_json(vocab_size: int) -> str:
    """A word-level tokenizer.json of ``vocab_size`` tokens, made with the
    ``tokenizers`` package (the directory's tokenizer is not what these
    mutants test, except where they break it)."""
    import tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, vocab_size)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return str(tok.to_str())


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The files of a tiny Llama directory (vocabulary of 300 tokens)."""
    import hf_models

    config = hf_models.SPECS["llama2"].config | {"vocab_size": 300}
    spec = dataclasses.replace(hf_models.SPECS["llama2"], config=config, name="llama2-v300")
    d = hf_models.write_hf_dir(spec, tmp_path_factory.mktemp("hf") / "m")
    (d / "tokenizer.json").write_text(tiny_tokenizer_json(300), encoding="utf-8")
    (d / "tokenizer_config.json").write_text('{"bos_token": "<s>", "eos_token": "</s>"}')
    return {p.name: p.read_bytes() for p in d.iterdir()}


def safetensors_mutants(data: bytes, seed: int) -> Iterator[tuple[str, bytes]]:
    rng = random.Random(seed)
    (n,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]

    def join(h: dict[str, Any] | bytes, b: bytes = body) -> bytes:
        text = h if isinstance(h, bytes) else json.dumps(h).encode()
        return struct.pack("<Q", len(text)) + text + b

    yield from cuts(
        data,
        [
            0,
            8,
            8 + n,
            *(8 + n + t["data_offsets"][0] for k, t in header.items() if k != "__metadata__"),
        ],
        rng,
        200,
    )
    yield from integer_fields(data, [(0, 8, "header length")], rng, 1)
    yield from bit_flips(data, 8, 8 + n, rng, 200)
    names = [k for k in header if k != "__metadata__"]
    for name in names:
        t = header[name]
        b, e = t["data_offsets"]
        other = header[rng.choice(names)]["data_offsets"]
        for key, v in (
            ("data_offsets", other),
            ("data_offsets", [b + 4, e + 4]),
            ("data_offsets", [b, e + 4]),
            ("data_offsets", [e, b]),
            ("data_offsets", [b, 1 << 62]),
            ("data_offsets", [b]),
            ("shape", t["shape"][::-1]),
            ("shape", [*t["shape"], 2]),
            ("shape", [-1]),
            ("dtype", "F16"),
            ("dtype", "BF16"),
            ("dtype", "I8"),
            ("dtype", "F64"),
            ("dtype", 7),
        ):
            h = json.loads(json.dumps(header))
            h[name][key] = v
            yield f"{name}.{key} = {v!r}", join(h)
        at = b + 4 * rng.randrange((e - b) // 4)
        for v in (float("nan"), float("inf")):
            yield f"{v} in {name}", join(header, body[:at] + struct.pack("<f", v) + body[at + 4 :])
    yield "trailing bytes", data + b"\0" * 8
    yield (
        "header not UTF-8",
        join(json.dumps(header).encode()[:20] + b"\xff" + json.dumps(header).encode()[21:]),
    )


def config_mutants(data: bytes) -> Iterator[tuple[str, bytes]]:
    config = json.loads(data)
    for key in list(config):
        for v in (0, -1, 1 << 40, 1e19, 0.5, "12", None, [2], {"a": 1}):
            yield f"{key} = {v!r}", json.dumps(config | {key: v}).encode()
        yield f"no {key}", json.dumps({k: v for k, v in config.items() if k != key}).encode()
    yield "not UTF-8", data[:10] + b"\xff\xfe" + data[10:]
    yield "cut", data[: len(data) // 2]
    yield "not an object", b"[]"
    yield "empty", b""


def tokenizer_json_mutants(text: str, seed: int) -> Iterator[tuple[str, bytes]]:
    rng = random.Random(seed)
    doc = json.loads(text)
    vocab = doc["model"]["vocab"]
    for _ in range(60):
        a, b = rng.sample(sorted(vocab), 2)
        d = json.loads(text)
        d["model"]["vocab"][a] = vocab[b]
        yield f"{a} and {b} share id {vocab[b]}", json.dumps(d).encode()
    data = text.encode()
    for at in sorted(rng.sample(range(1, len(data)), 80)):
        yield f"tokenizer.json cut at {at}", data[:at]
    yield "tokenizer.json not UTF-8", data[:5] + b"\xff" + data[5:]
    for kind in ("Mamba", 3, None):
        d = json.loads(text)
        d["model"]["type"] = kind
        yield f"model type {kind!r}", json.dumps(d).encode()


def test_malformed_hugging_face_directories(tmp_path: Path, hf_dir: dict[str, bytes]) -> None:
    d = tmp_path / "m"
    seen = Outcomes()

    def write(changed: dict[str, bytes]) -> None:
        d.mkdir(exist_ok=True)
        for name, data in (hf_dir | changed).items():
            (d / name).write_bytes(data)

    def load() -> tinyllm.Model:
        return tinyllm.Model(d, n_threads=1)

    groups = (
        ("model.safetensors", safetensors_mutants(hf_dir["model.safetensors"], 6)),
        ("config.json", config_mutants(hf_dir["config.json"])),
        ("tokenizer.json", tokenizer_json_mutants(hf_dir["tokenizer.json"].decode(), 7)),
    )
    for file, mutants in groups:
        for name, data in mutants:
            write({file: data})
            attempt(f"{file}: {name}", d, load, seen)
    assert seen.total >= 1000, seen
    assert seen.rejected > seen.total // 2, seen


# -- the rules, one by one ---------------------------------------------------------


def rejected(path: Path, load: Callable[[], Any], *words: str) -> str:
    """The message of the ModelFormatError that ``load`` raises; it names
    ``path`` and each of ``words``."""
    with pytest.raises(ModelFormatError) as e:
        load()
    msg = str(e.value)
    assert str(path) in msg and len(msg) <= MAX_MESSAGE, msg[:300]
    for w in words:
        assert w in msg, msg
    return msg


def test_gguf_rules(tmp_path: Path, gguf_q4: bytes) -> None:
    lay = gguf_layout(gguf_q4)
    path = tmp_path / "m.gguf"

    def bad(data: bytes, *words: str) -> str:
        path.write_bytes(data)
        return rejected(path, lambda: tinyllm.Model(path, n_threads=1), *words)

    # A name claiming a million bytes: bounded message, no megabytes of it.
    first = lay.tensors[0]
    name_len_at = first["type_at"] - 4 - 8 * 2 - 8 - len(first["name"])
    assert struct.unpack_from("<Q", gguf_q4, name_len_at)[0] == len(first["name"])
    bad(put(gguf_q4, name_len_at, 1_000_000, 8), "claims 1000000 bytes")
    # A wrong rank throws the rest of the index off: still one short message.
    rank_at = first["type_at"] - 4 - 8 * 2
    for rank in (1, 3, 4):
        assert len(bad(put(gguf_q4, rank_at, rank, 4))) < 800
    # A key given twice (two keys of the same length, one renamed).
    key_at = lay.keys["general.file_type"][0] - len("general.file_type")
    bad(gguf_q4[:key_at] + b"llama.block_count" + gguf_q4[key_at + 17 :], "appears twice")
    # A tensor's type changed: its data no longer fits where the next begins.
    q = next(t for t in lay.tensors if t["name"] == "blk.0.attn_q.weight")
    bad(put(gguf_q4, q["type_at"], 8, 4), "do not match their data")
    bad(put(gguf_q4, q["type_at"], 3, 4), "do not match their data")
    # Overlapping tensors.
    k = next(t for t in lay.tensors if t["name"] == "blk.0.attn_k.weight")
    bad(put(gguf_q4, k["offset_at"], q["offset"], 8), "blk.0.attn_k")
    # An epsilon of 2^32 - 1 (stored as a u32).
    eps_type, eps_at = lay.keys["llama.attention.layer_norm_rms_epsilon"]
    bad(put(put(gguf_q4, eps_type, 4, 4), eps_at, 0xFFFF_FFFF, 4), "norm_eps")
    # NaN and infinite block scales, in the embeddings and in a layer.
    for t in (lay.tensors[0], q):
        at = lay.data_start + t["offset"] + 18 * 3
        for bits in (0x7E00, 0x7C00, 0xFC00):
            bad(put(gguf_q4, at, bits, 2), f"tensor '{t['name'].removesuffix('.weight')}'")
    # Bytes after the last tensor's padding.
    bad(gguf_q4 + b"\0" * 64, "trailing bytes")


def test_gguf_vocabulary_rules(models: Path) -> None:
    from tinyllm import _tinyllm

    path = models / "vocab" / "ggml-vocab-qwen2.gguf"
    meta = dict(_tinyllm.gguf_metadata(str(path)))
    src = str(path)

    def load(changes: dict[str, Any]) -> Callable[[], Any]:
        return lambda: tinyllm.Tokenizer.from_gguf_metadata(meta | changes, source=src)

    # tokenizers raises a bare Exception for a merge of unknown tokens.
    merges = list(meta["tokenizer.ggml.merges"])
    merges[5] = "qqqqzz xxxyy"
    rejected(path, load({"tokenizer.ggml.merges": merges}), "malformed")
    rejected(path, load({"tokenizer.ggml.bos_token_id": "1"}), "bos_token_id", "'1'")
    rejected(path, load({"tokenizer.ggml.eos_token_id": 10**6}), "eos_token_id", "1000000")
    # 0xFFFFFFFF is llama.cpp's "no such token" written as a u32: accepted.
    tok = tinyllm.Tokenizer.from_gguf_metadata(
        meta | {"tokenizer.ggml.bos_token_id": 0xFFFF_FFFF}, source=src
    )
    assert tok.bos_id is None


def test_tinyllm_file_rules(tmp_path: Path, tllm_q4: bytes) -> None:
    header, body = tllm_parts(tllm_q4)
    path = tmp_path / "m.tllm"

    def bad(h: dict[str, Any], *words: str) -> None:
        path.write_bytes(tllm_join(tllm_q4, h, body))
        rejected(path, lambda: tinyllm.Model(path, n_threads=1), *words)

    vocab = header["config"]["vocab_size"]
    bad(header | {"tokenizer": header["tokenizer"] | {"eos_id": vocab}}, "eos_id", str(vocab))
    bad(header | {"config": header["config"] | {"norm_eps": 1e19}}, "norm_eps")
    bad(header | {"config": header["config"] | {"rope_theta": 0.5}}, "rope_theta")


def test_llama2c_rules(tmp_path: Path, models: Path, tok512: Path) -> None:
    import subprocess
    import sys

    data = (models / "stories260K.bin").read_bytes()
    path = tmp_path / "m.bin"
    # A million layers: the right error, without first laying out a million
    # layers (in a child process, whose peak memory is its own).
    path.write_bytes(put(data, 8, 1 << 20, 4))
    code = (
        "import tinyllm\n"
        "try:\n"
        f"    tinyllm.Model({str(path)!r}, tokenizer={str(tok512)!r}, n_threads=1)\n"
        "except tinyllm.ModelFormatError as e:\n"
        "    print(str(e)[:200])\n"
        # VmHWM, not ru_maxrss, which counts the parent's pages before exec.
        "hwm = open('/proc/self/status').read().split('VmHWM:')[1].split()[0]\n"
        "print(int(hwm) // 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0].startswith(f"{path}: truncated"), out
    assert int(out[1]) < 300, f"peak resident memory {out[1]} MB"
    # Norm gains and weights that are not finite.
    dim, layers = struct.unpack_from("<ii", data, 0)[0], struct.unpack_from("<i", data, 8)[0]
    vocab = struct.unpack_from("<i", data, 20)[0]
    norm_at = 28 + 4 * vocab * dim  # legacy: embeddings, then the attention norms
    for at, words in (
        (norm_at + 4 * dim, ("attention norm of layer 1",)),
        (28 + 4 * 7, ("token_embd",)),
    ):
        path.write_bytes(data[:at] + struct.pack("<f", float("nan")) + data[at + 4 :])
        rejected(path, lambda: tinyllm.Model(path, tokenizer=tok512, n_threads=1), *words)
    # Finite weights whose products overflow: a clear error when generating.
    seq_len, head_dim = struct.unpack_from("<i", data, 24)[0], dim // 8
    assert layers == 5 and vocab > 0  # positive: the classifier is the embeddings
    # The final norm, then two unused rotary tables of seq_len * head_dim / 2.
    final_norm_at = len(data) - 4 * (dim + seq_len * head_dim)
    huge = struct.pack("<f", 3e38) * dim
    path.write_bytes(data[:final_norm_at] + huge + data[final_norm_at + 4 * dim :])
    m = tinyllm.Model(path, tokenizer=tok512, n_threads=1)
    with pytest.raises(tinyllm.NonFiniteError, match="NaN or infinite logit"):
        m.generate("Once upon a time", max_tokens=3, temperature=0)


def test_tokenizer_bin_rules(tmp_path: Path, stories_path: Path, tok512: Path) -> None:
    data = tok512.read_bytes()
    path = tmp_path / "tok.bin"

    def bad(mutant: bytes, *words: str) -> None:
        path.write_bytes(mutant)
        rejected(path, lambda: tinyllm.Model(stories_path, tokenizer=path), *words)

    empty = b"".join(struct.pack("<fi", 0.0, 0) for _ in range(512))
    bad(data[:4] + empty, "token 0", "length 0")
    bad(data[:4] + struct.pack("<f", float("nan")) + data[8:], "token 0", "NaN")


def test_safetensors_and_json_rules(tmp_path: Path, hf_dir: dict[str, bytes]) -> None:
    d = tmp_path / "m"
    d.mkdir()

    def bad(file: str, data: bytes, *words: str) -> None:
        for name, b in (hf_dir | {file: data}).items():
            (d / name).write_bytes(b)
        rejected(d / file, lambda: tinyllm.Model(d, n_threads=1), *words)

    st = hf_dir["model.safetensors"]
    (n,) = struct.unpack_from("<Q", st, 0)
    header = json.loads(st[8 : 8 + n])
    names = sorted(
        (k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"]
    )
    a, b = header[names[0]], header[names[1]]
    overlap = header | {names[1]: b | {"data_offsets": a["data_offsets"]}}
    text = json.dumps(overlap).encode()
    bad("model.safetensors", struct.pack("<Q", len(text)) + text + st[8 + n :], "overlaps")
    bad("model.safetensors", st + b"\0" * 4, "trailing bytes")
    bad("config.json", b'{"model_type": "llama", "x": "\xff"}', "invalid JSON")
    tj = json.loads(hf_dir["tokenizer.json"])
    tj["model"]["vocab"]["w7"] = tj["model"]["vocab"]["w8"]
    bad("tokenizer.json", json.dumps(tj).encode(), "'w7'", "'w8'", "share the id")
