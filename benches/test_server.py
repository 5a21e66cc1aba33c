"""The HTTP server under load, next to llama.cpp's ``llama-server`` on the
same GGUF file in the same run: 1, 4 and 16 concurrent streaming clients,
aggregate completion tokens/s and the median time to first token.

    TINYLLM_BENCH_SHAPES=110M TINYLLM_LLAMACPP=/path/to/llama.cpp/bin \\
        python -m pytest benches/test_server.py

Each client streams ``/v1/completions`` requests of a 32-token prompt and
128 new tokens (greedy; llama-server with ``ignore_eos``, tinyllm's random
models do not stop early), two rounds each. Both servers run as programs of
their own with 2 threads and room for 16 sequences; the clients are threads
of this process. Servers alternate level by level. Nothing here asserts a
speed.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import cpu_name, gguf_file, llamacpp, record, selected_shapes

THREADS = min(2, os.cpu_count() or 1)
CLIENTS = [1, 4, 16]
GENERATE = 128
ROUNDS = 2
PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman"

needs_llamacpp = pytest.mark.skipif(
    not llamacpp.available(), reason="set TINYLLM_LLAMACPP to llama.cpp's program directory"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not come up")


def serve_tinyllm(gguf: Path, port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tinyllm", "serve", str(gguf), "--port", str(port)]
    cmd += ["--parallel", str(max(CLIENTS)), "--threads", str(THREADS), "--ctx", "1024"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def serve_llamacpp(gguf: Path, port: int) -> subprocess.Popen[bytes]:
    n = max(CLIENTS)
    cmd = [str(llamacpp.program("llama-server")), "-m", str(gguf), "--port", str(port)]
    cmd += ["-t", str(THREADS), "-np", str(n), "-c", str(1024 * n), "--log-disable"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def one_request(url: str, engine: str) -> tuple[float, int, float]:
    """Streams one completion: (seconds to the first token, tokens, seconds)."""
    body: dict[str, object] = {
        "model": "m",
        "prompt": PROMPT,
        "max_tokens": GENERATE,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if engine == "llama.cpp":
        body["ignore_eos"] = True
    start = time.perf_counter()
    first = None
    tokens = chunks = 0
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                tokens = int(data["usage"]["completion_tokens"])
            for choice in data.get("choices", []):
                if choice.get("text"):
                    chunks += 1
                    if first is None:
                        first = time.perf_counter() - start
    total = time.perf_counter() - start
    return (first if first is not None else total), (tokens or chunks), total


def load(url: str, engine: str, clients: int) -> tuple[float, float]:
    """``clients`` streaming clients, ``ROUNDS`` requests each: aggregate
    tokens/s over the whole run and the median time to first token."""
    results: list[tuple[float, int, float]] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(ROUNDS):
            r = one_request(url, engine)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    tokens = sum(r[1] for r in results)
    return tokens / wall, statistics.median(r[0] for r in results)


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, tuple[str, Path]]]:
    out = {}
    procs = []
    try:
        for shape in [s for s in selected_shapes() if s in ("110M", "1.1B")]:
            gguf = gguf_file(shape, "Q4_0")
            for engine, start in [("tinyllm", serve_tinyllm), ("llama.cpp", serve_llamacpp)]:
                port = free_port()
                proc = start(gguf, port)
                procs.append(proc)
                url = f"http://127.0.0.1:{port}"
                wait_ready(url, proc)
                out[f"{shape}/{engine}"] = (url, gguf)
        yield out
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)


@needs_llamacpp
@pytest.mark.parametrize("shape", [s for s in selected_shapes() if s in ("110M", "1.1B")])
def test_streaming_clients(shape: str, servers: dict[str, tuple[str, Path]]) -> None:
    print(f"\n{shape} Q4_0 (same GGUF), {THREADS} threads, CPU: {cpu_name()}")
    for clients in CLIENTS:
        row = {}
        for engine in ("tinyllm", "llama.cpp"):
            url, _ = servers[f"{shape}/{engine}"]
            one_request(url, engine)  # warm up
            rate, ttft = load(url, engine, clients)
            row[engine] = (rate, ttft)
            record(shape, "Q4_0", f"serve x{clients}", engine, rate, None)
        (t_rate, t_ttft), (l_rate, l_ttft) = row["tinyllm"], row["llama.cpp"]
        print(
            f"  {clients:>2} clients: tinyllm {t_rate:7.1f} tok/s,"
            f" first token {t_ttft * 1e3:6.0f} ms"
            f" | llama-server {l_rate:7.1f} tok/s, {l_ttft * 1e3:6.0f} ms"
            f" | x{t_rate / l_rate:.2f}"
        )
