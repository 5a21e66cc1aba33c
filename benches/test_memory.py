"""What a model costs to open and to hold: the time to open a file with a
warm page cache, and the peak resident memory of a process that generates
with it (one sequence, or eight at once), against the file size plus the KV
cache plus 100 MB."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import pytest

import tinyllm

from conftest import record, selected_shapes, tinyllm_file

SHAPES = [s for s in selected_shapes() if s != "stories260K"]


@pytest.mark.parametrize("shape", SHAPES)
def test_open_time(benchmark, shape: str) -> None:  # type: ignore[no-untyped-def]
    path, tok = tinyllm_file(shape, "q4")
    tinyllm.Model(path, tok)  # warm the page cache

    def open_once() -> float:
        start = time.perf_counter()
        tinyllm.Model(path, tok)
        return time.perf_counter() - start

    times = [open_once() for _ in range(5)]
    benchmark.pedantic(open_once, rounds=1, iterations=1)
    ms = 1000 * statistics.median(times)
    benchmark.extra_info["open_ms"] = ms
    record(shape, "q4", "open (ms)", "tinyllm", ms, None)


# Run in a child process so its peak resident size is the model's alone.
CHILD = """
import json, resource, sys, tinyllm
m = tinyllm.Model(sys.argv[1], None if sys.argv[2] == "-" else sys.argv[2], n_threads=2)
n = int(sys.argv[3])
# Each sequence: a 128-token prompt of its own, then 128 tokens.
prompts = [[1] + [3 + (i * 7919 + j * 37) % 30000 for j in range(127)] for i in range(n)]
streams = [m.stream(p, max_tokens=128, temperature=0) for p in prompts]
for s in streams:
    "".join(s)
# The finished sequences' pages stay as cached prefixes: kv_cache_bytes
# still counts them.
print(json.dumps({"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "file": m.info["file_bytes"], "kv": m.info["kv_cache_bytes"]}))
"""


@pytest.mark.parametrize("sequences", [1, 8])
@pytest.mark.parametrize("shape", SHAPES)
def test_peak_memory(benchmark, shape: str, sequences: int) -> None:  # type: ignore[no-untyped-def]
    path, tok = tinyllm_file(shape, "q4")
    args = [sys.executable, "-c", CHILD, str(path), str(tok) if tok else "-", str(sequences)]
    out = benchmark.pedantic(
        lambda: subprocess.run(args, capture_output=True, text=True, check=True).stdout,
        rounds=1, iterations=1,
    )  # fmt: skip
    r = json.loads(out)
    budget = r["file"] + r["kv"] + 100e6
    benchmark.extra_info.update(r)
    record(shape, "q4", f"peak RSS x{sequences} (MB)", "tinyllm", r["rss"] / 1e6, None)
    # The weights are mapped, not copied: the process holds the file once.
    assert r["rss"] <= budget, f"peak RSS {r['rss'] / 1e6:.0f} MB > budget {budget / 1e6:.0f} MB"
