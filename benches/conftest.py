"""Benchmark fixtures: the model files each engine runs (made once and kept
in the bench cache), and a summary table of tokens/s and GB/s printed at the
end of the run.

Shapes are chosen with ``TINYLLM_BENCH_SHAPES`` (default
``stories260K,15M,110M``; add ``1.1B`` for the TinyLlama shape, whose f32
file is 4.4 GB). llama.cpp runs beside tinyllm when ``TINYLLM_LLAMACPP``
names the directory of its programs (see ``benches/llamacpp.py``).

Every benchmark row records the machine it ran on (see :class:`Machine`):
the CPU, the kernel tier and the memory read bandwidth, measured once per
run, in its ``extra_info`` and in the JSON's ``machine_info``
(``--benchmark-json``), so that runs on different machines can be told
apart.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import llamacpp  # noqa: E402

import tinyllm  # noqa: E402
from tinyllm import _tinyllm  # noqa: E402

import llama2c_format  # noqa: E402

MODELS = Path(os.environ.get("TINYLLM_SHARED_MODELS", ROOT.parent / "shared" / "models"))
CACHE = Path(os.environ.get("TINYLLM_BENCH_CACHE", ROOT / "benches" / ".cache"))
LLAMA2_VOCAB = MODELS / "llama2-tokenizer.bin"

#: Random-weight shapes: (dim, hidden, layers, heads, kv heads, vocab, seq_len).
SHAPES = {
    "15M": (288, 768, 6, 6, 6, 32000, 256),
    "110M": (768, 2048, 12, 12, 12, 32000, 1024),
    "1.1B": (2048, 5632, 22, 32, 4, 32000, 2048),
}

#: tinyllm recipe -> the llama.cpp type at the same bits per weight.
PEER_TYPES = {"f16": "F16", "q8_0": "Q8_0", "q4": "Q4_0"}


def cpu_name() -> str:
    """The CPU this run is on (its model name and family, as the kernel
    reports them), for every result printed."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        import platform

        return platform.processor() or platform.machine()
    fields = dict(
        line.split(":", 1) for line in info.splitlines() if ":" in line and line[0] != " "
    )
    name = fields.get("model name\t", fields.get("model name", "?")).strip()
    fam, model = fields.get("cpu family\t", "").strip(), fields.get("model\t\t", "").strip()
    return f"{name} (family {fam} model {model})" if fam else name


#: The threads the benchmarks run on (their ``THREADS``).
BENCH_THREADS = min(2, os.cpu_count() or 1)


@dataclass(frozen=True)
class Machine:
    """What every benchmark row records of the machine it ran on."""

    #: The CPU's model name, family and model (:func:`cpu_name`).
    cpu: str
    #: The kernel tier the engine runs (``TINYLLM_ISA`` may force a slower
    #: one) and every tier this CPU runs, best last.
    isa: str
    isas: list[str]
    #: Memory read bandwidth, in GB/s, on ``read_threads`` threads (the
    #: benchmarks') and on one thread (the kernels' benchmark divides by it).
    read_threads: int
    read_gb_per_s: float
    read_gb_per_s_1_thread: float


@functools.cache
def machine() -> Machine:
    """The machine, measured on first use (a few seconds) and kept for the run."""
    both = _tinyllm.read_bandwidth(BENCH_THREADS)
    BANDWIDTH.append(both)
    return Machine(
        cpu=cpu_name(),
        isa=_tinyllm.isa(),
        isas=_tinyllm.available_isas(),
        read_threads=BENCH_THREADS,
        read_gb_per_s=both / 1e9,
        read_gb_per_s_1_thread=_tinyllm.read_bandwidth(1) / 1e9,
    )


@pytest.fixture(autouse=True)
def _machine_in_every_row(request: pytest.FixtureRequest) -> None:
    """Puts :func:`machine` into the ``extra_info`` of every benchmark (a test
    may still override a key, as the kernels' benchmark does ``isa``)."""
    if "benchmark" in request.fixturenames:
        request.getfixturevalue("benchmark").extra_info.update(asdict(machine()))


def pytest_benchmark_update_machine_info(
    config: pytest.Config, machine_info: dict[str, Any]
) -> None:
    machine_info["tinyllm"] = asdict(machine())


def selected_shapes() -> list[str]:
    names = os.environ.get("TINYLLM_BENCH_SHAPES", "stories260K,15M,110M").split(",")
    return [n.strip() for n in names if n.strip()]


@dataclass
class Result:
    model: str
    weights: str
    phase: str
    engine: str
    tokens_per_s: float
    gb_per_s: float | None


RESULTS: list[Result] = []
BANDWIDTH: list[float] = []


@dataclass
class KernelRow:
    """A decode kernel's cache-resident rate (``test_kernels.py``)."""

    isa: str
    weight_type: str
    bytes: int
    gb_per_s: float
    read_gb_per_s: float


KERNELS: list[KernelRow] = []

#: Cache-resident GB/s over one thread's memory read rate that leaves memory
#: the limit of decoding even where it is twice as fast (issue 15's target).
KERNEL_TARGET_RATIO = 2.0


def record(
    model: str, weights: str, phase: str, engine: str, tokens_per_s: float, gb_per_s: float | None
) -> None:
    RESULTS.append(Result(model, weights, phase, engine, tokens_per_s, gb_per_s))


def source_file(shape: str) -> tuple[Path, Path]:
    """The f32 llama2.c file of a shape and its tokenizer (made once)."""
    if shape == "stories260K":
        return MODELS / "stories260K.bin", MODELS / "tok512.bin"
    dim, hidden, layers, heads, kv, vocab, seq = SHAPES[shape]
    path = CACHE / f"random{shape}.bin"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        config, weights = llama2c_format.random_model(
            dim, hidden, layers, heads, kv, vocab, seq, shared_classifier=True, seed=0
        )
        tmp = path.with_suffix(".tmp")
        llama2c_format.write(tmp, config, weights, version=0)
        tmp.rename(path)
    return path, LLAMA2_VOCAB


def tinyllm_file(shape: str, quant: str) -> tuple[Path, Path | None]:
    """The model tinyllm runs for (shape, recipe): the f32 llama2.c file
    itself, or a tinyllm file converted from it (made once)."""
    src, tok = source_file(shape)
    if quant == "f32":
        return src, tok
    dst = CACHE / f"{shape}-{quant}.tllm"
    if not dst.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tinyllm.convert(src, dst, quant, tokenizer=tok, progress=False)
    return dst, None


def gguf_file(shape: str, qtype: str) -> Path:
    """The same weights as a GGUF file of llama.cpp type ``qtype`` (made once)."""
    src, _ = source_file(shape)
    base = CACHE / f"{shape}-F32.gguf"
    if not base.exists():
        # The tokenizer comes from the shared vocabularies (see llamacpp.py).
        llamacpp.llama2c_to_gguf(src, base, None, dtype="f32")
    if qtype == "F32":
        return base
    dst = CACHE / f"{shape}-{qtype}.gguf"
    if not dst.exists():
        llamacpp.quantize(base, dst, qtype, pure=True)
    return dst


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if KERNELS:
        kernel_summary(terminalreporter)
    if not RESULTS:
        return
    tr = terminalreporter
    bw = max(BANDWIDTH) if BANDWIDTH else None
    title = f"tokens/s and GB/s of weights streamed, one run on {cpu_name()}"
    title += f", kernels {_tinyllm.isa()}"
    if bw:
        title += f" (measured read bandwidth {bw / 1e9:.1f} GB/s)"
    tr.section(title)
    tr.write_line(
        f"{'model':<12} {'weights':<8} {'phase':<13} {'engine':<24} {'tokens/s':>10}"
        f" {'GB/s':>7} {'of bw':>6}"
    )
    for r in RESULTS:
        gbs = f"{r.gb_per_s:7.2f}" if r.gb_per_s is not None else f"{'':7}"
        frac = f"{100 * r.gb_per_s * 1e9 / bw:5.0f}%" if bw and r.gb_per_s is not None else ""
        tr.write_line(
            f"{r.model:<12} {r.weights:<8} {r.phase:<13} {r.engine:<24} {r.tokens_per_s:>10.1f}"
            f" {gbs} {frac:>6}"
        )


def kernel_summary(tr: pytest.TerminalReporter) -> None:
    """The decode kernels' cache-resident GB/s over one thread's read rate."""
    read = KERNELS[0].read_gb_per_s
    tr.section(
        f"decode kernels, weights in cache, 1 thread, on {cpu_name()}"
        f" (memory read {read:.1f} GB/s on 1 thread)"
    )
    tr.write_line(f"{'tier':<13} {'weights':<9} {'KiB':>6} {'GB/s':>7} {'x read':>7}")
    for k in KERNELS:
        ratio = k.gb_per_s / k.read_gb_per_s
        flag = "" if ratio >= KERNEL_TARGET_RATIO else f"  below {KERNEL_TARGET_RATIO:g}x"
        tr.write_line(
            f"{k.isa:<13} {k.weight_type:<9} {k.bytes / 1024:>6.0f} {k.gb_per_s:>7.1f}"
            f" {ratio:>7.2f}{flag}"
        )
