"""Soak test: one Model used from many threads for a long time.

Each thread runs greedy and seeded generations from a fixed list of prompts;
every output must equal the one the same request gave when run alone,
first. Resident memory is sampled as the generations go; it must stay flat
once the first round has filled the caches.

    python tools/soak.py --minutes 10            # make soak
    python tools/soak.py --generations 200       # the size CI runs (tests/)

It prints the figures (generations, tokens, resident memory over time) and
exits non-zero on a mismatch or on memory growth beyond --max-growth-mb.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tinyllm

PROMPTS = [
    "Once upon a time",
    "The little dog",
    "Lily and Tom went to the park",
    "One day, a big bird",
    "The sun was hot and",
    "Sam had a red ball",
    "",
    "There was a girl who liked to",
]


def resident_mb() -> float:
    """This process's resident memory, from /proc (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    import resource

    return pages * resource.getpagesize() / 2**20


@dataclass
class Report:
    generations: int = 0
    tokens: int = 0
    mismatches: list[str] = field(default_factory=list)
    #: (seconds since the start, generations so far, resident MB)
    memory: list[tuple[float, int, float]] = field(default_factory=list)


def requests() -> list[dict[str, Any]]:
    """Greedy, and sampled with a seed, for each prompt (both reproducible)."""
    out: list[dict[str, Any]] = []
    for i, p in enumerate(PROMPTS):
        out.append({"prompt": p, "max_tokens": 48, "temperature": 0.0})
        out.append({"prompt": p, "max_tokens": 48, "temperature": 0.9, "seed": i})
    return out


def soak(
    model: tinyllm.Model,
    *,
    threads: int = 8,
    generations: int | None = None,
    seconds: float | None = None,
    samples: int = 20,
) -> Report:
    """Runs ``generations`` generations (or for ``seconds``) from ``threads``
    threads, checking each against the serial output of the same request."""
    reqs = requests()
    expected = [model.generate(**r) for r in reqs]
    report = Report()
    lock = threading.Lock()
    start = time.monotonic()
    stop = threading.Event()
    every = max(1, (generations or 1000) // samples)

    def worker(k: int) -> None:
        i = k
        while not stop.is_set():
            with lock:
                if generations is not None and report.generations >= generations:
                    stop.set()
                    return
                report.generations += 1
                n = report.generations
            r = reqs[i % len(reqs)]
            text = model.generate(**r)
            with lock:
                report.tokens += len(model.tokenize(text, add_bos=False))
                if text != expected[i % len(reqs)]:
                    report.mismatches.append(f"{r}: {text!r} != {expected[i % len(reqs)]!r}")
                if n % every == 0:
                    report.memory.append((time.monotonic() - start, n, resident_mb()))
            if seconds is not None and time.monotonic() - start > seconds:
                stop.set()
            i += threads

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    report.memory.append((time.monotonic() - start, report.generations, resident_mb()))
    return report


def growth_mb(report: Report) -> float:
    """Resident memory growth after the first quarter of the run."""
    marks = report.memory
    settled = marks[len(marks) // 4][2]
    return max(m[2] for m in marks[len(marks) // 4 :]) - settled


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a model file (default: the built-in one)")
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--generations", type=int, default=None)
    ap.add_argument("--max-growth-mb", type=float, default=20.0)
    args = ap.parse_args(argv)
    if args.minutes is None and args.generations is None:
        args.generations = 1000
    model = tinyllm.Model(args.model, args.tokenizer) if args.model else tinyllm.Model.default()
    seconds = None if args.minutes is None else args.minutes * 60
    r = soak(model, threads=args.threads, generations=args.generations, seconds=seconds)
    elapsed = r.memory[-1][0]
    print(f"model: {model!r}")
    print(
        f"{r.generations} generations, {r.tokens} tokens in {elapsed:.0f} s from "
        f"{args.threads} threads ({r.tokens / elapsed:.0f} tokens/s)"
    )
    print("resident memory (s, generations, MB):")
    step = max(1, len(r.memory) // 20)
    for t, n, mb in [*r.memory[:-1:step], r.memory[-1]]:
        print(f"  {t:8.1f} {n:8d} {mb:8.1f}")
    g = growth_mb(r)
    print(f"growth after the first quarter: {g:.1f} MB; mismatches: {len(r.mismatches)}")
    for m in r.mismatches[:5]:
        print("  ", m)
    return 1 if r.mismatches or g > args.max_growth_mb else 0


if __name__ == "__main__":
    sys.exit(main())
