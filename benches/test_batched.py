"""Many sequences at once: aggregate decoding speed with 1 to 16 sequences,
the time to a new sequence's first token while 7 others decode, and
decoding at depth, side by side with llama.cpp in the same run:

    TINYLLM_BENCH_SHAPES=110M,1.1B TINYLLM_LLAMACPP=/path/to/llama.cpp/bin \\
        python -m pytest benches/test_batched.py

As ``llama-batched-bench -npp 128 -ntg 64 -npl 1,2,4,8,16`` does, each of N
sequences has its own 128-token prompt and then generates. llama.cpp times
its generation phase after every prompt is done; tinyllm's aggregate counts
the tokens generated from the moment every sequence has its first token
until the first of them has generated 64 (the others go on longer, so all
N decode throughout). The GB/s column is the weights streamed: one read of
every weight per step, which serves all N sequences.

Peers alternate with tinyllm round by round. Nothing here asserts a speed.
"""

from __future__ import annotations

import os
import statistics
import time

import pytest

import tinyllm

from conftest import PEER_TYPES, gguf_file, llamacpp, record, selected_shapes, tinyllm_file

THREADS = min(2, os.cpu_count() or 1)
PROMPT = 128
GENERATE = 64
PARALLEL = [1, 2, 4, 8, 16]
DEPTH = 900
ROUNDS = 2

CASES = [
    (shape, quant)
    for shape in selected_shapes()
    if shape in ("110M", "1.1B")
    for quant in ("q4", "q8_0", "f16")
]

needs_llamacpp = pytest.mark.skipif(
    not llamacpp.available(), reason="set TINYLLM_LLAMACPP to llama.cpp's program directory"
)


def prompt(i: int, n: int, vocab: int) -> list[int]:
    """BOS and a varied run of ordinary ids, different for each ``i``."""
    return [1] + [3 + (i * 7919 + j * 37) % (vocab - 3) for j in range(n - 1)]


def open_model(shape: str, quant: str) -> tinyllm.Model:
    path, tok = tinyllm_file(shape, quant)
    return tinyllm.Model(path, tok, n_threads=THREADS, max_sequences=max(PARALLEL))


def start(m: tinyllm.Model, ids: list[int], n: int) -> tinyllm.Stream:
    """A greedy stream of exactly ``n`` tokens (no stop token ends it)."""
    return m._engine.generate(
        ids,
        max_tokens=n,
        temperature=0.0,
        top_k=0,
        top_p=1.0,
        min_p=0.0,
        repeat_penalty=1.0,
        seed=0,
        stop=[],
        stop_ids=[],
    )


def aggregate_decode(m: tinyllm.Model, n: int) -> float:
    """Tokens/s of ``n`` sequences generating together, in the steady state:
    from the moment every prompt is done (each has its first token) until
    the first sequence ends, counting every token generated in between."""
    m.reset()
    vocab = m.config.vocab_size
    # The first to start ends first: it generates GENERATE tokens; the others
    # have more to go, so all of them decode until it ends.
    streams = [start(m, prompt(0, PROMPT, vocab), GENERATE)]
    streams += [start(m, prompt(i, PROMPT, vocab), GENERATE + 64) for i in range(1, n)]
    while any(not s.tokens for s in streams):
        time.sleep(0.0005)
    t0 = time.perf_counter()
    before = sum(len(s.tokens) for s in streams)
    first = streams[0]
    for _ in first:
        pass
    t1 = time.perf_counter()
    after = sum(len(s.tokens) for s in streams)
    for s in streams[1:]:
        s.cancel()
    return (after - before) / (t1 - t0)


def first_token_while_decoding(m: tinyllm.Model, others: int) -> float:
    """Seconds from a new sequence's arrival (a 128-token prompt) to its
    first token while ``others`` sequences decode."""
    m.reset()
    vocab = m.config.vocab_size
    busy = [start(m, prompt(100 + i, 16, vocab), 10_000) for i in range(others)]
    for s in busy:
        next(s)  # every one is decoding
    t0 = time.perf_counter()
    new = start(m, prompt(0, PROMPT, vocab), 1)
    "".join(new)
    seconds = time.perf_counter() - t0
    for s in busy:
        s.cancel()
    return seconds


def depth_decode(m: tinyllm.Model, depth: int) -> float:
    """Tokens/s of one sequence generating after ``depth`` tokens."""
    m.reset()
    s = start(m, prompt(0, depth, m.config.vocab_size), GENERATE)
    "".join(s)
    return s.stats["generated_tokens"] / s.stats["generate_seconds"]


@pytest.mark.parametrize(("shape", "quant"), CASES)
def test_batched_decoding(benchmark, shape: str, quant: str) -> None:  # type: ignore[no-untyped-def]
    m = open_model(shape, quant)
    bpt = m.info["bytes_per_token"]
    ours: dict[int, list[float]] = {n: [] for n in PARALLEL}
    theirs: dict[int, list[float]] = {n: [] for n in PARALLEL}
    peer = llamacpp.available() and quant in PEER_TYPES
    gguf = gguf_file(shape, PEER_TYPES[quant]) if peer else None

    def alternate() -> None:
        for n in PARALLEL:
            ours[n].append(aggregate_decode(m, n))
        if gguf is not None:
            r = llamacpp.batched_bench(gguf, THREADS, PROMPT, GENERATE, PARALLEL)
            for n in PARALLEL:
                theirs[n].append(r[n]["tg_tokens_per_s"])

    benchmark.pedantic(alternate, rounds=ROUNDS, warmup_rounds=0)
    engine = f"tinyllm ({m.info['isa']})"
    for n in PARALLEL:
        a = statistics.median(ours[n])
        label = engine
        if gguf is not None:
            b = statistics.median(theirs[n])
            label = f"tinyllm x{a / b:.2f}"
        record(shape, quant, f"decode x{n}", label, a, a / n * bpt / 1e9)
        if gguf is not None:
            record(shape, quant, f"decode x{n}", f"llama.cpp {PEER_TYPES[quant]}", b, None)
        benchmark.extra_info[f"decode_x{n}"] = a
    one = statistics.median(ours[1])
    eight = statistics.median(ours[8])
    benchmark.extra_info["x8_over_x1"] = eight / one


@pytest.mark.parametrize(("shape", "quant"), CASES)
def test_first_token_while_seven_decode(benchmark, shape: str, quant: str) -> None:  # type: ignore[no-untyped-def]
    m = open_model(shape, quant)
    busy: list[float] = []
    alone: list[float] = []

    def once() -> None:
        alone.append(first_token_while_decoding(m, 0))
        busy.append(first_token_while_decoding(m, 7))

    benchmark.pedantic(once, rounds=ROUNDS, warmup_rounds=1)
    a, b = statistics.median(alone), statistics.median(busy)
    # Recorded as prompt tokens/s, with the seconds in the phase's name.
    record(shape, quant, f"1st tok {a * 1e3:.0f}ms", "tinyllm, alone", PROMPT / a, None)
    record(shape, quant, f"1st tok {b * 1e3:.0f}ms", "tinyllm, 7 decoding", PROMPT / b, None)
    benchmark.extra_info.update(first_token_alone_s=a, first_token_with_7_s=b)


@pytest.mark.parametrize(("shape", "quant"), CASES)
def test_decoding_at_depth(benchmark, shape: str, quant: str) -> None:  # type: ignore[no-untyped-def]
    m = open_model(shape, quant)
    depth = min(DEPTH, m.context_length - GENERATE - 1)
    bpt = m.info["bytes_per_token"]
    ours: list[float] = []
    theirs: list[float] = []
    peer = llamacpp.available() and quant in PEER_TYPES
    gguf = gguf_file(shape, PEER_TYPES[quant]) if peer else None

    def alternate() -> None:
        ours.append(depth_decode(m, depth))
        if gguf is not None:
            r = llamacpp.bench(gguf, THREADS, n_prompt=0, n_gen=GENERATE, reps=1, depth=depth)
            theirs.append(float(r["gen_tokens_per_s"] or 0))

    benchmark.pedantic(alternate, rounds=ROUNDS + 1, warmup_rounds=0)
    a = statistics.median(ours)
    phase = f"depth {depth}"
    if gguf is not None:
        b = statistics.median(theirs)
        record(shape, quant, phase, f"tinyllm x{a / b:.2f}", a, a * bpt / 1e9)
        record(shape, quant, phase, f"llama.cpp {PEER_TYPES[quant]}", b, None)
    else:
        record(shape, quant, phase, f"tinyllm ({m.info['isa']})", a, a * bpt / 1e9)
