"""Benchmark fixtures: the models to time, and a summary table of tokens/s
and GB/s printed at the end of the run."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))

import llama2c_format  # noqa: E402

MODELS = Path(os.environ.get("TINYLLM_SHARED_MODELS", ROOT.parent / "shared" / "models"))
CACHE = Path(os.environ.get("TINYLLM_BENCH_CACHE", ROOT / "benches" / ".cache"))

#: Model shapes to time: (name, dim, hidden, layers, heads, kv heads, vocab, seq_len).
SHAPES = {
    # Karpathy's stories110M: a token streams 438 MB of f32 weights.
    "110M": (768, 2048, 12, 12, 12, 32000, 1024),
}


@dataclass
class Result:
    model: str
    phase: str
    engine: str
    tokens_per_s: float
    gb_per_s: float


RESULTS: list[Result] = []


def record(model: str, phase: str, engine: str, tokens_per_s: float, bytes_per_s: float) -> None:
    RESULTS.append(Result(model, phase, engine, tokens_per_s, bytes_per_s / 1e9))


def random_model_file(name: str) -> Path:
    """A llama2.c legacy file of random weights of the named shape, made once
    and kept in the bench cache."""
    dim, hidden, layers, heads, kv, vocab, seq = SHAPES[name]
    path = CACHE / f"random{name}.bin"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        config, weights = llama2c_format.random_model(
            dim, hidden, layers, heads, kv, vocab, seq, shared_classifier=True, seed=0
        )
        tmp = path.with_suffix(".tmp")
        llama2c_format.write(tmp, config, weights, version=0)
        tmp.rename(path)
    return path


@pytest.fixture(scope="session")
def model_files() -> dict[str, tuple[Path, Path]]:
    """Model name -> (model file, tokenizer file)."""
    files = {"stories260K": (MODELS / "stories260K.bin", MODELS / "tok512.bin")}
    for name in SHAPES:
        files[name] = (random_model_file(name), MODELS / "llama2-tokenizer.bin")
    return files


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("tokens/s and GB/s of weights streamed (same run)")
    tr.write_line(f"{'model':<12} {'phase':<11} {'engine':<22} {'tokens/s':>10} {'GB/s':>7}")
    for r in RESULTS:
        tr.write_line(
            f"{r.model:<12} {r.phase:<11} {r.engine:<22} {r.tokens_per_s:>10.1f} {r.gb_per_s:>7.2f}"
        )
