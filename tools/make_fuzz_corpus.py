#!/usr/bin/env python3
"""Write the seed corpora of the fuzz targets (fuzz/fuzz_targets/*.rs) into
fuzz/corpus/<target>/, from ../shared/models and tests/support.

Seeds are small valid inputs, so that libFuzzer starts from files that pass
the first checks and mutates its way into the later ones. They are
generated, not committed: tiny random models (dimension 32, one layer) in
every layout and weight type the readers take, tokenizers cut from the real
vocabularies, and a dictionary of each format's keywords (fuzz/dict/).

Usage: python3 tools/make_fuzz_corpus.py [--out fuzz/corpus]

The tinyllm-file seeds need the built package (``import tinyllm``); without
it they are skipped with a note.
"""

from __future__ import annotations

import argparse
import dataclasses
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT.parent / "shared" / "models"
sys.path.insert(0, str(ROOT / "tests" / "support"))

import hf_models  # noqa: E402
import llama2c_format  # noqa: E402

# The separator the safetensors target splits its input at (fuzz/src/lib.rs).
FILE_SEPARATOR = b"\n%%tinyllm-fuzz-file%%\n"

# ggml type numbers and (values per block, bytes per block).
GGML_TYPES: dict[str, tuple[int, int, int]] = {
    "F32": (0, 1, 4),
    "F16": (1, 1, 2),
    "Q4_0": (2, 32, 18),
    "Q4_1": (3, 32, 20),
    "Q8_0": (8, 32, 34),
    "Q4_K": (12, 256, 144),
    "Q6_K": (14, 256, 210),
    "BF16": (30, 1, 2),
}


# -- tokenizers ------------------------------------------------------------------


def read_tokenizer_bin(path: Path) -> tuple[int, list[tuple[float, bytes]]]:
    raw = path.read_bytes()
    (max_len,) = struct.unpack_from("<i", raw)
    pos, out = 4, []
    while pos < len(raw):
        score, n = struct.unpack_from("<fi", raw, pos)
        pos += 8
        out.append((score, raw[pos : pos + n]))
        pos += n
    return max_len, out


def tokenizer_bin(pieces: list[tuple[float, bytes]]) -> bytes:
    max_len = max(len(p) for _, p in pieces)
    body = b"".join(struct.pack("<fi", s, len(p)) + p for s, p in pieces)
    return struct.pack("<i", max_len) + body


# -- GGUF --------------------------------------------------------------------------


def _gguf_string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _gguf_value(v: object) -> tuple[int, bytes]:
    if isinstance(v, bool):
        return 7, struct.pack("<?", v)
    if isinstance(v, int):
        return 4, struct.pack("<I", v)
    if isinstance(v, float):
        return 6, struct.pack("<f", v)
    if isinstance(v, str):
        return 8, _gguf_string(v)
    if isinstance(v, list):
        kind = _gguf_value(v[0])[0]
        body = b"".join(_gguf_value(x)[1] for x in v)
        return 9, struct.pack("<IQ", kind, len(v)) + body
    raise TypeError(type(v).__name__)


def gguf_file(meta: dict[str, object], tensors: list[tuple[str, tuple[int, ...], str]]) -> bytes:
    """A GGUF v3 file; each tensor (name, shape outermost first, ggml type)
    holds random bytes, except that float types hold small random values."""
    rng = np.random.default_rng(0)
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta))
    for key, v in meta.items():
        kind, body = _gguf_value(v)
        head += _gguf_string(key) + struct.pack("<I", kind) + body
    data = b""
    for name, shape, type_name in tensors:
        number, block, nbytes = GGML_TYPES[type_name]
        count = int(np.prod(shape))
        if type_name == "F32":
            blob = (rng.standard_normal(count) * 0.1 + (1.0 if len(shape) == 1 else 0.0)).astype(
                "<f4"
            )
        elif type_name == "F16":
            blob = (rng.standard_normal(count) * 0.1).astype("<f2")
        elif type_name == "BF16":
            values = (rng.standard_normal(count) * 0.1).astype("<f4")
            blob = (values.view("<u4") >> 16).astype("<u2")
        else:
            # Quantized blocks: random bytes, but every f16 scale a small
            # finite value, so that the forward pass sees real numbers.
            blob = rng.integers(0, 256, count // block * nbytes, dtype=np.uint8)
            if type_name in ("Q4_0", "Q4_1", "Q8_0"):
                blob = blob.reshape(-1, nbytes)
                blob[:, 0:2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
                if type_name == "Q4_1":
                    blob[:, 2:4] = 0
            elif type_name == "Q4_K":  # d and dmin lead the block
                blob = blob.reshape(-1, nbytes)
                blob[:, 0:4] = np.frombuffer(np.array([0.01, 0.001], "<f2").tobytes(), np.uint8)
            elif type_name == "Q6_K":  # d ends the block
                blob = blob.reshape(-1, nbytes)
                blob[:, -2:] = np.frombuffer(np.float16(0.001).tobytes(), np.uint8)
        head += _gguf_string(name) + struct.pack("<I", len(shape))
        head += b"".join(struct.pack("<Q", d) for d in reversed(shape))
        head += struct.pack("<IQ", number, len(data))
        data += np.asarray(blob).tobytes()
        data += b"\0" * (-len(data) % 32)
    head += b"\0" * (-len(head) % 32)
    return head + data


def gguf_model(arch: str, wtype: str, *, dim: int = 32, hidden: int = 64, vocab: int = 16) -> bytes:
    heads, kv_heads = 4, 2
    hd = dim // heads
    meta: dict[str, object] = {
        "general.architecture": arch,
        f"{arch}.block_count": 1,
        f"{arch}.context_length": 16,
        f"{arch}.embedding_length": dim,
        f"{arch}.feed_forward_length": hidden,
        f"{arch}.attention.head_count": heads,
        f"{arch}.attention.head_count_kv": kv_heads,
        f"{arch}.rope.freq_base": 10000.0,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-5,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(vocab - 3)],
        "tokenizer.ggml.scores": [0.0] * vocab,
        "tokenizer.ggml.token_type": [2, 3, 3] + [1] * (vocab - 3),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    blk = "blk.0."
    tensors: list[tuple[str, tuple[int, ...], str]] = [
        ("token_embd.weight", (vocab, dim), wtype),
        ("output_norm.weight", (dim,), "F32"),
        ("output.weight", (vocab, dim), wtype),
        (blk + "attn_norm.weight", (dim,), "F32"),
        (blk + "attn_q.weight", (heads * hd, dim), wtype),
        (blk + "attn_k.weight", (kv_heads * hd, dim), wtype),
        (blk + "attn_v.weight", (kv_heads * hd, dim), wtype),
        (blk + "attn_output.weight", (dim, heads * hd), wtype),
        (blk + "ffn_norm.weight", (dim,), "F32"),
        (blk + "ffn_gate.weight", (hidden, dim), wtype),
        (blk + "ffn_up.weight", (hidden, dim), wtype),
        (blk + "ffn_down.weight", (dim, hidden), wtype),
    ]
    if arch == "qwen2":
        tensors += [
            (blk + "attn_q.bias", (heads * hd,), "F32"),
            (blk + "attn_k.bias", (kv_heads * hd,), "F32"),
            (blk + "attn_v.bias", (kv_heads * hd,), "F32"),
        ]
    if arch == "qwen3":
        tensors += [
            (blk + "attn_q_norm.weight", (hd,), "F32"),
            (blk + "attn_k_norm.weight", (hd,), "F32"),
        ]
    return gguf_file(meta, tensors)


def gguf_vocab(pieces: list[tuple[float, bytes]]) -> bytes:
    tokens = [p.decode("utf-8", "replace") for _, p in pieces]
    meta: dict[str, object] = {
        "general.architecture": "llama",
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [float(s) for s, _ in pieces],
        "tokenizer.ggml.token_type": [1] * len(tokens),
        "tokenizer.ggml.add_bos_token": True,
    }
    return gguf_file(meta, [])


# -- Hugging Face directories ------------------------------------------------------


def hf_dirs(tmp: Path) -> dict[str, bytes]:
    """Each family's tiny model as one input of the safetensors target."""
    out = {}
    cases = [
        ("llama2", "float32", 1),
        ("llama3", "bfloat16", 1),
        ("qwen2", "float16", 1),
        ("qwen3", "float32", 1),
        ("mistral", "float32", 2),
        ("llama2", "float32", 3),
    ]
    for name, dtype, shards in cases:
        base = hf_models.spec(name)
        config = dict(base.config)
        config.update(
            vocab_size=24,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=16,
        )
        if "head_dim" in config:
            config["head_dim"] = 8
        for key in ("bos_token_id", "eos_token_id"):
            if isinstance(config.get(key), int):
                config[key] = min(config[key], 23)
            elif isinstance(config.get(key), list):
                config[key] = [min(i, 23) for i in config[key]]
        spec = dataclasses.replace(base, config=config, name=f"fuzz-{name}")
        d = hf_models.write_hf_dir(spec, tmp / f"{name}-{dtype}-{shards}", dtype, shards)
        files = [d / "config.json"]
        if shards == 1:
            files.append(d / "model.safetensors")
        else:
            files.append(d / "model.safetensors.index.json")
            files += [
                d / f"model-{k:05d}-of-{shards:05d}.safetensors" for k in range(1, 1 + shards)
            ]
        out[f"{name}-{dtype}-{shards}"] = FILE_SEPARATOR.join(f.read_bytes() for f in files)
    return out


# -- llama2.c ------------------------------------------------------------------------


def llama2c_files(tmp: Path) -> dict[str, bytes]:
    out = {}
    for shared in (True, False):
        config, weights = llama2c_format.random_model(
            32, 64, 1, 4, 2, 16, 16, shared_classifier=shared, seed=1
        )
        for version in (0, 1, 2):
            path = tmp / f"l2c-{version}-{shared}.bin"
            llama2c_format.write(path, config, weights, version=version, group_size=32)
            out[f"v{version}-{'shared' if shared else 'untied'}"] = path.read_bytes()
    return out


def tinyllm_files(tmp: Path, llama2c: Path, tok: Path) -> dict[str, bytes]:
    try:
        import tinyllm
    except ImportError:
        print("make_fuzz_corpus: no tinyllm package; tinyllm-file seeds skipped", file=sys.stderr)
        return {}
    out = {}
    for quant in ("f32", "f16", "bf16", "q8_0", "q4", "q4_1", "q4_mixed"):
        dst = tmp / f"m-{quant}.tllm"
        tinyllm.convert(llama2c, dst, quant, tokenizer=tok, n_threads=1, progress=False)
        out[quant] = dst.read_bytes()
    return out


# -- the token table of structured output ---------------------------------------------


def grammar_vocab(pieces: list[bytes], flags: int, end: int) -> bytes:
    body = b"".join(bytes([len(p)]) + p for p in pieces if len(p) < 256)
    return bytes([flags, end]) + body


# -- dictionaries ---------------------------------------------------------------------

DICTS: dict[str, list[bytes]] = {
    "gguf": [
        b"GGUF",
        b"general.architecture",
        b"llama",
        b"qwen2",
        b"qwen3",
        b".block_count",
        b".context_length",
        b".embedding_length",
        b".feed_forward_length",
        b".attention.head_count",
        b".attention.head_count_kv",
        b".attention.key_length",
        b".rope.dimension_count",
        b".rope.freq_base",
        b".rope.scaling.type",
        b".vocab_size",
        b"tokenizer.ggml.tokens",
        b"token_embd.weight",
        b"output.weight",
        b"blk.0.attn_q.bias",
        b"blk.0.attn_q_norm.weight",
        b"general.alignment",
    ],
    "safetensors": [
        FILE_SEPARATOR,
        b'"dtype"',
        b'"shape"',
        b'"data_offsets"',
        b'"F32"',
        b'"BF16"',
        b'"F16"',
        b'"I8"',
        b'"__metadata__"',
        b'"weight_map"',
        b'"model_type"',
        b'"tie_word_embeddings"',
        b'"rope_scaling"',
        b'"rope_type"',
        b'"llama3"',
        b'"head_dim"',
        b'"num_key_value_heads"',
        b'"max_position_embeddings"',
        b"model.layers.0.self_attn.q_proj.weight",
        b"lm_head.weight",
        b"1e308",
        b"-1",
        b"18446744073709551615",
    ],
    "tinyllm_file": [b'"dtype"', b'"shape"', b'"q4"', b'"q8_0"', b'"tokenizer.json"', b'"offset"'],
}
DICTS["gguf_header"] = DICTS["gguf"]


def dict_text(words: list[bytes]) -> str:
    def quote(w: bytes) -> str:
        return "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\x{b:02x}" for b in w)

    return "".join(f'"{quote(w)}"\n' for w in words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "fuzz" / "corpus")
    parser.add_argument("--dict-out", type=Path, default=ROOT / "fuzz" / "dict")
    args = parser.parse_args()

    _, tok512 = read_tokenizer_bin(MODELS / "tok512.bin")
    _, llama2 = read_tokenizer_bin(MODELS / "llama2-tokenizer.bin")
    small = tok512[:16]
    corpora: dict[str, dict[str, bytes]] = {name: {} for name in DICTS}
    corpora.update(llama2c={}, tokenizer_bin={}, grammar_vocab={})

    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for arch in ("llama", "qwen2", "qwen3"):
            corpora["gguf"][f"{arch}-f32"] = gguf_model(arch, "F32")
        for wtype in ("F16", "BF16", "Q4_0", "Q4_1", "Q8_0"):
            corpora["gguf"][f"llama-{wtype}"] = gguf_model("llama", wtype)
        for wtype in ("Q4_K", "Q6_K"):
            corpora["gguf"][f"llama-{wtype}"] = gguf_model("llama", wtype, dim=256, hidden=256)
        corpora["gguf_header"] = {
            "model-q8_0": corpora["gguf"]["llama-Q8_0"],
            "vocab-tok512": gguf_vocab(tok512),
        }
        corpora["safetensors"] = hf_dirs(tmp)
        corpora["llama2c"] = llama2c_files(tmp)
        small_model = tmp / "small.bin"
        small_model.write_bytes(corpora["llama2c"]["v0-shared"])
        small_tok = tmp / "tok16.bin"
        small_tok.write_bytes(tokenizer_bin(small))
        corpora["tinyllm_file"] = tinyllm_files(tmp, small_model, small_tok)
        corpora["tokenizer_bin"] = {
            "tok512": (MODELS / "tok512.bin").read_bytes(),
            "tok16": tokenizer_bin(small),
            "llama2-bytes": tokenizer_bin(llama2[:3] + llama2[3:259:8] + llama2[259:400]),
        }
        pieces = [p for _, p in tok512]
        corpora["grammar_vocab"] = {
            f"tok512-{flags:02x}": grammar_vocab(pieces, flags, 2)
            for flags in (0x00, 0x05, 0x1A, 0x0F)
        }
        corpora["grammar_vocab"]["bytes"] = grammar_vocab(
            [b"<|end|>"] + [bytes([b]) for b in range(256)] + [b'{"', b'":', b"yes", b" no"],
            0x01,
            0,
        )

    for target, seeds in corpora.items():
        d = args.out / target
        d.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (d / f"seed-{name}").write_bytes(data)
        print(f"{target}: {len(seeds)} seeds, largest {max(map(len, seeds.values()), default=0)} B")
    args.dict_out.mkdir(parents=True, exist_ok=True)
    for target, words in DICTS.items():
        (args.dict_out / f"{target}.dict").write_text(dict_text(words), encoding="utf-8")


if __name__ == "__main__":
    main()
