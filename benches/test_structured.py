"""What structured output costs: decoding tokens/s with a JSON schema, a
regular expression and no constraint, in the same run, on one sequence and
on 8 together, and the time the token masks took:

    TINYLLM_BENCH_SHAPES=110M python -m pytest benches/test_structured.py

Greedy, interleaved rounds, medians. The masks are computed on the
engine's thread between forward passes, so their time adds to each step.
Nothing here asserts a speed.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from typing import Any

import pytest

import tinyllm

from conftest import cpu_name, record, selected_shapes, tinyllm_file

THREADS = min(2, os.cpu_count() or 1)
TOKENS = 200
ROUNDS = 5

#: A schema no sequence completes within TOKENS (else one that ends early
#: would leave the batch smaller, and its rate would look slower).
SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "count": {"type": "integer"}},
        "required": ["name", "count"],
    },
    "minItems": 1000,
}
CONSTRAINTS: dict[str, dict[str, Any]] = {
    "none": {},
    "regex": {"regex": r"([a-z]+ )+"},
    "json": {"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}}},
}


def decode(m: tinyllm.Model, n: int, kw: dict[str, Any]) -> tuple[float, float]:
    """``n`` greedy sequences of ``TOKENS`` tokens: tokens/s of the whole
    run, and mask seconds per token."""
    kw = {"max_tokens": TOKENS, **kw}
    streams = [m.stream([1, 3 + i], temperature=0.0, **kw) for i in range(n)]
    done: list[tinyllm.Stream] = []

    def read(s: tinyllm.Stream) -> None:
        for _ in s:
            pass
        done.append(s)

    start = time.perf_counter()
    threads = [threading.Thread(target=read, args=(s,)) for s in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    tokens = sum(s.stats["generated_tokens"] for s in streams)
    masks = sum(s.stats.get("grammar_mask_seconds", 0.0) for s in streams)
    return tokens / wall, masks / max(tokens, 1)


@pytest.mark.parametrize("shape", [s for s in selected_shapes() if s in ("15M", "110M", "1.1B")])
@pytest.mark.parametrize("n", [1, 8])
def test_constrained_decoding_cost(shape: str, n: int) -> None:
    path, tok = tinyllm_file(shape, "q4")
    m = tinyllm.Model(path, tok, n_threads=THREADS, max_sequences=8)
    for kw in CONSTRAINTS.values():
        decode(m, 1, {**kw, "max_tokens": 8} if kw else {})  # warm up (and index the vocabulary)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in CONSTRAINTS}
    for _ in range(ROUNDS):  # interleaved, so drifts of the machine hit all alike
        for name, kw in CONSTRAINTS.items():
            m.reset()
            runs[name].append(decode(m, n, kw))
    best = {
        name: (statistics.median(r for r, _ in v), statistics.median(k for _, k in v))
        for name, v in runs.items()
    }
    base = best["none"][0]
    print(f"\n{shape} q4, {n} sequence(s), {THREADS} threads, CPU: {cpu_name()}")
    for name, (rate, mask) in best.items():
        record(shape, "q4", f"x{n} {name}", "tinyllm", rate, None)
        print(
            f"  {name:<6} {rate:8.1f} tok/s  x{rate / base:.3f} of unconstrained,"
            f"  masks {mask * 1e3:.3f} ms/token"
        )
