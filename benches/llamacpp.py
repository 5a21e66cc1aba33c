"""Drive a llama.cpp build from the benchmarks: convert, quantize, time, compare.

llama.cpp is the peer tinyllm is measured against.  It is never part of this
repository: build it elsewhere and point ``TINYLLM_LLAMACPP`` at the directory
that holds its programs (``llama-bench``, ``llama-quantize``,
``llama-perplexity``, ...).  This module then offers:

* :func:`llama2c_to_gguf` -- write a llama2.c checkpoint as a GGUF file of the
  ``llama`` architecture (F32 or F16), with a tokenizer, so that both engines
  run the very same weights;
* :func:`quantize` -- run ``llama-quantize`` (F16, Q8_0, Q4_0, Q4_K_M, ...);
* :func:`bench` -- run ``llama-bench`` and return prompt and generation
  tokens/s;
* :func:`kl_divergence` -- run ``llama-perplexity`` twice to measure how far a
  quantized model's next-token distributions drift from a reference model's.

Writing GGUF needs the ``gguf`` Python package; it is imported only when a
conversion runs.

How the figures in README.md were made (llama.cpp from llama-cpp-python's
sources; AMX off because its AMX path crashed on the benchmark machine)::

    pip install cmake ninja gguf
    pip download --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d /tmp/l
    cd /tmp/l && tar xzf llama_cpp_python-0.3.36.tar.gz
    cd llama_cpp_python-0.3.36/vendor/llama.cpp
    F="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    cmake -B build -G Ninja -DGGML_NATIVE=ON -DGGML_OPENMP=ON -DLLAMA_CURL=OFF \
        -DCMAKE_BUILD_TYPE=Release "-DCMAKE_C_FLAGS=$F" "-DCMAKE_CXX_FLAGS=$F"
    ninja -C build llama-bench llama-batched-bench llama-quantize llama-perplexity llama-server
    export TINYLLM_LLAMACPP=$PWD/build/bin
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests" / "support") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests" / "support"))

import llama2c_format  # noqa: E402

#: Environment variable naming the directory of llama.cpp's programs.
ENV_BIN = "TINYLLM_LLAMACPP"

#: Where the shared models live (same convention as ``benches/conftest.py``).
MODELS = Path(os.environ.get("TINYLLM_SHARED_MODELS", ROOT.parent / "shared" / "models"))

#: Tokenizer used when none is given, by vocabulary size.
DEFAULT_TOKENIZERS = {
    32000: MODELS / "vocab" / "ggml-vocab-llama-spm.gguf",
    512: MODELS / "tok512.bin",
}

#: Token types as GGUF numbers them (the same numbers SentencePiece uses).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

#: SentencePiece marks a word boundary with U+2581 instead of a space.
_SPACE_MARK = "\u2581".encode()

_BYTE_TOKEN = re.compile(rb"<0x[0-9A-Fa-f]{2}>")

#: llama2.c tensor name suffix -> GGUF tensor name suffix, per layer.
_LAYER_TENSORS = {
    "attention_norm": "attn_norm",
    "attention.wq": "attn_q",
    "attention.wk": "attn_k",
    "attention.wv": "attn_v",
    "attention.wo": "attn_output",
    "ffn_norm": "ffn_norm",
    "feed_forward.w1": "ffn_gate",
    "feed_forward.w2": "ffn_down",
    "feed_forward.w3": "ffn_up",
}

#: ``general.file_type`` values (llama.cpp's ``llama_ftype``).
_FILE_TYPES = {"f32": 0, "f16": 1}


class LlamaCppError(RuntimeError):
    """llama.cpp is not configured, or one of its programs failed."""


class BenchResult(TypedDict):
    """What :func:`bench` returns; a speed is ``None`` when its test was skipped."""

    prompt_tokens_per_s: float | None
    prompt_stddev: float | None
    gen_tokens_per_s: float | None
    gen_stddev: float | None
    n_prompt: int
    n_gen: int
    threads: int
    model_size_bytes: int
    n_params: int
    model_type: str
    build: str


class KLResult(TypedDict):
    """What :func:`kl_divergence` returns.

    ``same_top_p`` is the fraction (0..1) of scored positions where both models
    put their highest probability on the same token; ``ppl`` and ``ppl_base``
    are the perplexities of the tested and the reference model on the scored
    tokens (llama.cpp scores the second half of every ``ctx``-token chunk).
    ``ppl_base`` comes from the reference run itself: the "Mean PPL(base)" of
    the comparison run is computed from the saved logits, which llama.cpp
    stores compressed to 16 bits, and differs from it slightly.
    """

    kl_mean: float
    kl_mean_err: float
    kl_median: float
    kl_p99: float
    kl_max: float
    same_top_p: float
    same_top_p_err: float
    ppl: float
    ppl_err: float
    ppl_base: float


# ---------------------------------------------------------------------------
# finding and running llama.cpp's programs


def bin_dir() -> Path:
    """Return the directory named by ``TINYLLM_LLAMACPP``, or raise."""
    value = os.environ.get(ENV_BIN)
    if not value:
        raise LlamaCppError(
            f"{ENV_BIN} is not set: build llama.cpp outside this repository and set "
            f"{ENV_BIN} to the directory holding llama-bench, llama-quantize, ..."
        )
    path = Path(value).expanduser()
    if not path.is_dir():
        raise LlamaCppError(f"{ENV_BIN}={value} is not a directory")
    return path


def program(name: str) -> Path:
    """Return the path of llama.cpp's program ``name`` (e.g. ``"llama-bench"``)."""
    path = bin_dir() / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise LlamaCppError(f"{path} is missing or not executable; was it built?")
    return path


def available() -> bool:
    """True when ``TINYLLM_LLAMACPP`` names a directory with ``llama-bench`` in it."""
    try:
        program("llama-bench")
    except LlamaCppError:
        return False
    return True


def _run(
    args: Sequence[str | os.PathLike[str]],
    *,
    expect: Sequence[str] = (),
    attempts: int = 3,
    env: dict[str, str] | None = None,
) -> str:
    """Run a llama.cpp program and return its stdout and stderr, interleaved.

    ``expect`` lists regular expressions the output must match.  llama.cpp's
    tools log through a background thread that is not drained at exit, so a
    run that succeeds can still lose its last lines (more often when every
    core is busy); such a run is repeated, up to ``attempts`` runs in all.
    """
    cmd = [str(a) for a in args]
    missing: list[str] = []
    for _ in range(attempts):
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=env,
        )
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-30:])
            raise LlamaCppError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{tail}")
        missing = [pattern for pattern in expect if not re.search(pattern, proc.stdout)]
        if not missing:
            return proc.stdout
    raise LlamaCppError(f"{' '.join(cmd)} printed no {missing!r} in {attempts} runs")


# ---------------------------------------------------------------------------
# tokenizers


def _read_llama2c_tokenizer(path: Path, vocab_size: int) -> dict[str, Any]:
    """Tokens, scores and token types of a llama2.c ``tokenizer.bin``.

    The file is an int32 maximum token length, then per token a float32
    score, an int32 byte length and the token's bytes.  Ids 0, 1 and 2 are
    ``<unk>``, ``<s>`` and ``</s>`` (llama2.c stores the last two wrapped in
    newlines); spaces become SentencePiece's U+2581 mark, as in llama.cpp's
    vocabularies.
    """
    data = path.read_bytes()
    offset = 4
    tokens: list[bytes] = []
    scores: list[float] = []
    types: list[int] = []
    specials = {0: (b"<unk>", UNKNOWN), 1: (b"<s>", CONTROL), 2: (b"</s>", CONTROL)}
    for i in range(vocab_size):
        if offset + 8 > len(data):
            raise ValueError(f"{path}: holds fewer than {vocab_size} tokens")
        score, length = struct.unpack_from("<fi", data, offset)
        text = data[offset + 8 : offset + 8 + length]
        offset += 8 + length
        if i in specials:
            text, kind = specials[i]
        elif not text:
            kind = CONTROL
        elif _BYTE_TOKEN.fullmatch(text):
            kind = BYTE
        else:
            kind = NORMAL
        tokens.append(text.replace(b" ", _SPACE_MARK))
        scores.append(float(score))
        types.append(kind)
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, offset
        shift += 7


def _protobuf_fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """Split one protobuf message into (field number, value) pairs.

    Varints come back as ints; length-delimited, 32-bit and 64-bit values as
    their raw bytes.
    """
    fields: list[tuple[int, int | bytes]] = []
    offset = 0
    while offset < len(data):
        key, offset = _varint(data, offset)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, offset = _varint(data, offset)
        elif wire == 1:
            value, offset = data[offset : offset + 8], offset + 8
        elif wire == 2:
            length, offset = _varint(data, offset)
            value, offset = data[offset : offset + length], offset + length
        elif wire == 5:
            value, offset = data[offset : offset + 4], offset + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.append((number, value))
    return fields


def _read_sentencepiece(path: Path) -> dict[str, Any]:
    """Tokens, scores and types of a SentencePiece ``tokenizer.model``.

    Only the model's pieces are read (field 1 of ``ModelProto``; in each piece
    field 1 is the text, 2 the float score, 3 the type, NORMAL when absent).
    """
    tokens: list[bytes] = []
    scores: list[float] = []
    types: list[int] = []
    for number, piece in _protobuf_fields(path.read_bytes()):
        if number != 1 or not isinstance(piece, bytes):
            continue
        text, score, kind = b"", 0.0, NORMAL
        for field, value in _protobuf_fields(piece):
            if field == 1 and isinstance(value, bytes):
                text = value
            elif field == 2 and isinstance(value, bytes):
                (score,) = struct.unpack("<f", value)
            elif field == 3 and isinstance(value, int):
                kind = value
        tokens.append(text)
        scores.append(float(score))
        types.append(kind)
    if not tokens:
        raise ValueError(f"{path}: no SentencePiece pieces found")

    def find(text: bytes, default: int) -> int:
        return tokens.index(text) if text in tokens else default

    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": find(b"<s>", 1),
        "tokenizer.ggml.eos_token_id": find(b"</s>", 2),
        "tokenizer.ggml.unknown_token_id": types.index(UNKNOWN) if UNKNOWN in types else 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
    }


def _copy_gguf_tokenizer(path: Path, writer: Any) -> int:
    """Copy every ``tokenizer.ggml.*`` key of a GGUF file; return the vocab size."""
    import gguf

    reader = gguf.GGUFReader(path)
    n_vocab = 0
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer.ggml."):
            continue
        main = field.types[0]
        sub = field.types[-1] if main == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), main, sub)
        if name == "tokenizer.ggml.tokens":
            n_vocab = len(field.data)
    if not n_vocab:
        raise ValueError(f"{path}: no tokenizer.ggml.tokens key")
    return n_vocab


def _add_tokenizer(writer: Any, path: Path, vocab_size: int) -> None:
    """Write the tokenizer keys from a ``.gguf``, a ``.model`` or a llama2.c ``.bin``."""
    import gguf

    if path.suffix == ".gguf":
        n_vocab = _copy_gguf_tokenizer(path, writer)
    else:
        if path.suffix == ".model":
            keys = _read_sentencepiece(path)
        else:
            keys = _read_llama2c_tokenizer(path, vocab_size)
        n_vocab = len(keys["tokenizer.ggml.tokens"])
        for name, value in keys.items():
            if isinstance(value, list):
                sub = {
                    "tokenizer.ggml.tokens": gguf.GGUFValueType.STRING,
                    "tokenizer.ggml.scores": gguf.GGUFValueType.FLOAT32,
                    "tokenizer.ggml.token_type": gguf.GGUFValueType.INT32,
                }[name]
                writer.add_key_value(name, value, gguf.GGUFValueType.ARRAY, sub)
            elif isinstance(value, bool):
                writer.add_key_value(name, value, gguf.GGUFValueType.BOOL)
            elif isinstance(value, int):
                writer.add_key_value(name, value, gguf.GGUFValueType.UINT32)
            else:
                writer.add_key_value(name, value, gguf.GGUFValueType.STRING)
    if n_vocab != vocab_size:
        raise ValueError(f"{path} has {n_vocab} tokens, the model has {vocab_size}")


# ---------------------------------------------------------------------------
# conversion


def llama2c_to_gguf(src: Path, dst: Path, tokenizer_model: Path | None, dtype: str = "f32") -> Path:
    """Write the llama2.c checkpoint ``src`` as a ``llama`` GGUF file ``dst``.

    ``tokenizer_model`` is a GGUF file whose ``tokenizer.ggml.*`` keys are
    copied, a SentencePiece ``.model``, or a llama2.c ``tokenizer.bin``; with
    ``None`` the shared vocabulary matching the model's vocab size is used
    (:data:`DEFAULT_TOKENIZERS`).  ``dtype`` is ``"f32"`` or ``"f16"``: it
    applies to the matrices, the norm vectors always stay F32.

    llama2.c's Q/K rows already use the interleaved-pair RoPE layout that
    llama.cpp's ``llama`` graph expects, so they are written as they are.  A
    shared classifier is left out (llama.cpp then reuses ``token_embd``); an
    untied one is written as ``output``.  Returns ``dst``.
    """
    try:
        import gguf
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise LlamaCppError("writing GGUF needs the 'gguf' package (pip install gguf)") from exc

    dtype = dtype.lower()
    if dtype not in _FILE_TYPES:
        raise ValueError(f"dtype must be 'f32' or 'f16', not {dtype!r}")
    src, dst = Path(src), Path(dst)
    config, weights = llama2c_format.read(src)
    vocab = int(config["vocab_size"])
    if tokenizer_model is None:
        if vocab not in DEFAULT_TOKENIZERS:
            raise ValueError(f"no default tokenizer for vocab size {vocab}; pass one")
        tokenizer_model = DEFAULT_TOKENIZERS[vocab]
    tokenizer_model = Path(tokenizer_model)

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, "llama")
    writer.add_name(src.stem)
    writer.add_file_type(_FILE_TYPES[dtype])
    writer.add_context_length(int(config["seq_len"]))
    writer.add_embedding_length(int(config["dim"]))
    writer.add_feed_forward_length(int(config["hidden_dim"]))
    writer.add_block_count(int(config["n_layers"]))
    writer.add_head_count(int(config["n_heads"]))
    writer.add_head_count_kv(int(config["n_kv_heads"]))
    writer.add_rope_dimension_count(llama2c_format.head_size(config))
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    _add_tokenizer(writer, tokenizer_model, vocab)

    def add(name: str, array: np.ndarray) -> None:
        # numpy's (rows, cols) becomes GGUF's ne = [cols, rows]: one row per output
        if array.ndim > 1 and dtype == "f16":
            array = array.astype(np.float16)
        else:
            array = array.astype(np.float32, copy=False)
        writer.add_tensor(name, np.ascontiguousarray(array))

    add("token_embd.weight", weights["tok_embeddings"])
    for i in range(int(config["n_layers"])):
        for ours, theirs in _LAYER_TENSORS.items():
            add(f"blk.{i}.{theirs}.weight", weights[f"layers.{i}.{ours}"])
    add("output_norm.weight", weights["norm"])
    if not config["shared_classifier"]:
        add("output.weight", weights["output"])

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(dst)
    return dst


def quantize(
    src_gguf: Path,
    dst_gguf: Path,
    qtype: str,
    *,
    pure: bool = False,
    threads: int | None = None,
) -> Path:
    """Quantize ``src_gguf`` to ``qtype`` (``"F16"``, ``"Q8_0"``, ``"Q4_0"``, ``"Q4_K_M"``...).

    By default llama-quantize keeps some tensors (the output matrix, and for
    the K-quant mixes some attention/FFN tensors) at higher precision;
    ``pure=True`` passes ``--pure`` so that every matrix gets ``qtype``.
    Returns ``dst_gguf``.
    """
    args: list[str | os.PathLike[str]] = [program("llama-quantize")]
    if pure:
        args.append("--pure")
    args += [src_gguf, dst_gguf, qtype]
    if threads is not None:
        args.append(str(threads))
    _run(args)
    return Path(dst_gguf)


# ---------------------------------------------------------------------------
# measuring


def bench(
    gguf: Path,
    threads: int = 2,
    n_prompt: int = 512,
    n_gen: int = 128,
    reps: int = 5,
    depth: int = 0,
    gpu: bool = False,
) -> BenchResult:
    """Time ``gguf`` with ``llama-bench``: prompt (pp``n_prompt``) and generation (tg``n_gen``),
    each after ``depth`` tokens already in the KV cache; every layer on the GPU
    (a Metal build) if ``gpu``, else none.

    Speeds are llama-bench's mean over ``reps`` repetitions, in tokens/s, with
    their standard deviations.  A count of 0 skips that test.
    """
    out = _run(
        [
            program("llama-bench"),
            "-m", gguf,
            "-t", str(threads),
            "-p", str(n_prompt),
            "-n", str(n_gen),
            "-r", str(reps),
            "-d", str(depth),
            "-ngl", "99" if gpu else "0",
            "-o", "json",
        ]
    )  # fmt: skip
    start = out.find("[")
    if start < 0:
        raise LlamaCppError(f"llama-bench printed no JSON:\n{out[-2000:]}")
    records: list[dict[str, Any]] = json.JSONDecoder().raw_decode(out[start:])[0]
    if not records:
        raise LlamaCppError("llama-bench ran no test")
    result = BenchResult(
        prompt_tokens_per_s=None,
        prompt_stddev=None,
        gen_tokens_per_s=None,
        gen_stddev=None,
        n_prompt=n_prompt,
        n_gen=n_gen,
        threads=threads,
        model_size_bytes=int(records[0]["model_size"]),
        n_params=int(records[0]["model_n_params"]),
        model_type=str(records[0]["model_type"]),
        build=str(records[0].get("build_commit", "")),
    )
    for record in records:
        if int(record["n_gen"]) == 0:
            result["prompt_tokens_per_s"] = float(record["avg_ts"])
            result["prompt_stddev"] = float(record["stddev_ts"])
        elif int(record["n_prompt"]) == 0:
            result["gen_tokens_per_s"] = float(record["avg_ts"])
            result["gen_stddev"] = float(record["stddev_ts"])
    return result


def batched_bench(
    gguf: Path, threads: int, n_prompt: int, n_gen: int, parallel: list[int]
) -> dict[int, dict[str, float]]:
    """Time ``gguf`` with ``llama-batched-bench``: for each count in
    ``parallel``, that many sequences each process ``n_prompt`` tokens and
    then generate ``n_gen`` together. Returns, per count, the aggregate
    prompt and generation speeds (``pp_tokens_per_s``, ``tg_tokens_per_s``).
    """
    ctx = max(parallel) * (n_prompt + n_gen) + 16
    out = _run(
        [
            program("llama-batched-bench"),
            "-m", gguf,
            "-t", str(threads),
            "-c", str(ctx),
            "-b", "2048",
            "-ub", "512",
            "-npp", str(n_prompt),
            "-ntg", str(n_gen),
            "-npl", ",".join(map(str, parallel)),
            "--output-format", "jsonl",
        ]
    )  # fmt: skip
    results: dict[int, dict[str, float]] = {}
    for line in out.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if "pl" in r and "speed_tg" in r:
            results[int(r["pl"])] = {
                "pp_tokens_per_s": float(r["speed_pp"]),
                "tg_tokens_per_s": float(r["speed_tg"]),
            }
    if not results:
        raise LlamaCppError(f"llama-batched-bench printed no results:\n{out[-2000:]}")
    return results


#: The last line each llama-perplexity run prints that we need.
_FINAL_PPL = r"Final estimate: PPL"
_SAME_TOP_P = r"Same top p"


def _value_pattern(label: str) -> str:
    """Regex for ``label: value [± error]`` (or ``label = value +/- error``)."""
    sep = r"[ \t]*[:=][ \t]*"
    error = r"(?:[ \t]*(?:±|\+/-)[ \t]*([\d.]+))?"
    return label + sep + r"(-?[\d.]+)" + error


def _number(label: str, text: str) -> tuple[float, float]:
    """The value (and its error, 0 when none is printed) after ``label`` in ``text``."""
    match = re.search(_value_pattern(label), text)
    if match is None:
        raise LlamaCppError(f"llama-perplexity printed no {label!r} line")
    return float(match.group(1)), float(match.group(2) or 0.0)


def kl_divergence(
    base_gguf: Path, test_gguf: Path, text_file: Path, ctx: int = 128, threads: int = 2
) -> KLResult:
    """Compare ``test_gguf``'s next-token distributions with ``base_gguf``'s on a text.

    Runs ``llama-perplexity`` on ``base_gguf`` with ``--kl-divergence-base`` to
    save its logits, then on ``test_gguf`` with ``--kl-divergence``, both with
    a context of ``ctx`` tokens; the text must hold at least ``2 * ctx``
    tokens.  Returns the mean KL divergence (nats per token), the top-1
    agreement and both perplexities (see :class:`KLResult`).
    """
    perplexity = program("llama-perplexity")
    common = ["-f", str(text_file), "-c", str(ctx), "-t", str(threads)]
    # idle OpenMP workers that sleep leave the logging thread a core to print on
    env = {"OMP_WAIT_POLICY": "passive", **os.environ}
    with tempfile.TemporaryDirectory(prefix="tinyllm-kld-") as tmp:
        logits = Path(tmp) / "base.kld"
        base = _run(
            [perplexity, "-m", base_gguf, *common, "--kl-divergence-base", logits],
            expect=[_value_pattern(_FINAL_PPL)],
            env=env,
        )
        out = _run(
            [perplexity, "-m", test_gguf, *common, "--kl-divergence-base", logits,
             "--kl-divergence"],
            expect=[_value_pattern(_SAME_TOP_P)],
            env=env,
        )  # fmt: skip
    kl_mean, kl_err = _number(r"Mean\s+KLD", out)
    same, same_err = _number(_SAME_TOP_P, out)
    ppl, ppl_err = _number(r"Mean PPL\(Q\)", out)
    return KLResult(
        kl_mean=kl_mean,
        kl_mean_err=kl_err,
        kl_median=_number(r"Median\s+KLD", out)[0],
        kl_p99=_number(r"99\.0%\s+KLD", out)[0],
        kl_max=_number(r"Maximum KLD", out)[0],
        same_top_p=same / 100.0,
        same_top_p_err=same_err / 100.0,
        ppl=ppl,
        ppl_err=ppl_err,
        ppl_base=_number(_FINAL_PPL, base)[0],
    )
