"""Tokens/s of prompt processing and generation, with the GB/s of weights
each streamed, for stories260K and a random model shaped like stories110M.

    make bench                       # or: pytest benches
    TINYLLM_RUNC=/path/to/run make bench

With ``TINYLLM_RUNC`` pointing at a build of Karpathy's run.c
(``gcc -O3 -march=native -fopenmp run.c -lm -o run``, kept outside this
repository), the same run also times run.c on the same files, alternating
with tinyllm so that both see the same machine load.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import subprocess
from pathlib import Path

import pytest

import tinyllm

from conftest import record

THREADS = min(2, os.cpu_count() or 1)
MODELS = ["stories260K", "110M"]
PROMPT_TOKENS = {"stories260K": 256, "110M": 128}
GENERATE_TOKENS = {"stories260K": 256, "110M": 128}
ROUNDS = 5


def prompt_ids(n: int) -> list[int]:
    """BOS and then a fixed, varied run of ordinary token ids."""
    return [1] + [3 + (i * 37) % 500 for i in range(n - 1)]


@pytest.fixture(scope="module", params=MODELS)
def loaded(request: pytest.FixtureRequest, model_files: dict) -> tuple[str, tinyllm.Model]:
    name = request.param
    path, tok = model_files[name]
    return name, tinyllm.Model(path, tok, n_threads=THREADS)


def test_prompt_processing(benchmark, loaded: tuple[str, tinyllm.Model]) -> None:  # type: ignore[no-untyped-def]
    name, m = loaded
    n = PROMPT_TOKENS[name]
    ids = prompt_ids(n)

    def run() -> None:
        m.reset()
        "".join(m.stream(ids, max_tokens=0))

    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    seconds = benchmark.stats.stats.median
    batches = math.ceil(n / m.info["max_batch"])  # each batch reads the weights once
    tps = n / seconds
    gbs = batches * m.info["bytes_per_token"] / seconds
    benchmark.extra_info.update(tokens=n, tokens_per_s=tps, weights_gb_per_s=gbs / 1e9)
    record(name, f"prompt {n}", f"tinyllm ({m.info['isa']})", tps, gbs)


def generate_once(m: tinyllm.Model, n: int) -> float:
    """Generates up to ``n`` tokens greedily from BOS; returns tokens/s of
    the generation (sampling and forward passes, no prompt)."""
    m.reset()
    s = m.stream([1], max_tokens=n, temperature=0)
    "".join(s)
    st = s.stats
    return st["generated_tokens"] / st["generate_seconds"]


def test_generation(benchmark, loaded: tuple[str, tinyllm.Model]) -> None:  # type: ignore[no-untyped-def]
    name, m = loaded
    n = GENERATE_TOKENS[name]
    rates: list[float] = []
    benchmark.pedantic(lambda: rates.append(generate_once(m, n)), rounds=ROUNDS, warmup_rounds=1)
    tps = statistics.median(rates[1:] or rates)
    gbs = tps * m.info["bytes_per_token"]
    benchmark.extra_info.update(tokens=n, tokens_per_s=tps, weights_gb_per_s=gbs / 1e9)
    record(name, f"generate {n}", f"tinyllm ({m.info['isa']})", tps, gbs)


def run_c(binary: str, model: Path, tok: Path, steps: int) -> float:
    """run.c's own 'achieved tok/s' (it times every step after the first)."""
    r = subprocess.run(
        [binary, str(model), "-z", str(tok), "-t", "0", "-n", str(steps)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": str(THREADS)},
    )
    found = re.search(r"achieved tok/s: ([0-9.]+)", r.stderr)
    assert found, r.stderr
    return float(found.group(1))


@pytest.mark.skipif(not os.environ.get("TINYLLM_RUNC"), reason="set TINYLLM_RUNC to run.c's binary")
@pytest.mark.parametrize("name", MODELS)
def test_generation_against_run_c(benchmark, name: str, model_files: dict) -> None:  # type: ignore[no-untyped-def]
    binary = os.environ["TINYLLM_RUNC"]
    path, tok = model_files[name]
    m = tinyllm.Model(path, tok, n_threads=THREADS)
    n = GENERATE_TOKENS[name]
    ours: list[float] = []
    theirs: list[float] = []

    def alternate() -> None:
        ours.append(generate_once(m, n))
        theirs.append(run_c(binary, path, tok, n + 1))  # run.c's -n counts the BOS position

    benchmark.pedantic(alternate, rounds=ROUNDS, warmup_rounds=1)
    a, b = statistics.median(ours), statistics.median(theirs)
    bpt = m.info["bytes_per_token"]
    benchmark.extra_info.update(tinyllm_tokens_per_s=a, run_c_tokens_per_s=b, ratio=a / b)
    record(name, f"generate {n}", f"tinyllm vs run.c x{a / b:.2f}", a, a * bpt)
    record(name, f"generate {n}", f"run.c ({THREADS} threads)", b, b * bpt)
