"""The Python surface: configuration, the built-in model, memory mapping,
the GIL, Ctrl-C, the chat loop, and the type stubs."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import tinyllm
from tinyllm import _tinyllm
from tinyllm._chat import chat

from conftest import ROOT, write_random_model


def test_config_and_info(stories: tinyllm.Model, stories_path: Path) -> None:
    c = stories.config
    assert (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads) == (64, 172, 5, 8, 4)
    assert (c.vocab_size, c.seq_len, c.head_dim) == (512, 512, 8)
    info = stories.info
    assert info["file_bytes"] == stories_path.stat().st_size
    assert info["format"] == "llama2.c (legacy, f32)"
    assert info["isa"] in tinyllm.available_isas()
    assert info["n_threads"] == 2 and info["context_length"] == 512
    assert "stories260K.bin" in repr(stories)


def test_buffer_bytes_grow_with_the_batch(stories_path: Path, tok512: Path) -> None:
    one = _tinyllm.Engine(str(stories_path), n_threads=2, max_batch=1).info()["buffer_bytes"]
    many = _tinyllm.Engine(str(stories_path), n_threads=2, max_batch=128).info()["buffer_bytes"]
    # Each more token holds at least its residual, normalised input, queries,
    # attention output, projection (dim 64 each) and two hidden rows (172):
    # 664 floats.
    assert one > 0 and many - one >= 127 * 664 * 4


def test_builtin_model() -> None:
    m = tinyllm.Model.default(n_threads=1)
    assert m.config.vocab_size == 512
    text = m.generate("Once upon a time", max_tokens=12, temperature=0)
    assert text.startswith(", there was a little girl")


def test_weights_are_memory_mapped(tmp_path: Path, tok512: Path) -> None:
    path = tmp_path / "mapped.bin"
    write_random_model(path, dim=256, hidden_dim=512, n_heads=8, n_kv_heads=8, n_layers=4)
    size = path.stat().st_size
    m = tinyllm.Model(path, tok512)
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("no /proc on this system")
    mapped = [line for line in maps.read_text().splitlines() if line.endswith(str(path))]
    assert mapped, "the model file is not mapped into memory"
    lo, hi = (int(x, 16) for x in mapped[0].split()[0].split("-"))
    assert hi - lo >= size
    m.generate("Once", max_tokens=2, temperature=0)


def test_the_gil_is_released_while_computing(tmp_path: Path, tok512: Path) -> None:
    path = tmp_path / "m.bin"
    write_random_model(
        path, dim=256, hidden_dim=768, n_heads=8, n_kv_heads=8, n_layers=6, seq_len=512
    )
    engine = _tinyllm.Engine(str(path), n_threads=1, max_batch=512)
    ids = list(range(3, 3 + 500))
    done = threading.Event()
    ticks_during = 0

    def compute() -> None:
        try:
            engine.logits(ids)  # one batch: a single long call into Rust
        finally:
            done.set()

    worker = threading.Thread(target=compute)
    worker.start()
    while not done.is_set():  # Python code can only run here if the GIL is free
        ticks_during += 1
        time.sleep(0)
    worker.join()
    assert ticks_during > 100, ticks_during


def test_ctrl_c_interrupts_generation_and_the_model_stays_usable(
    stories: tinyllm.Model, golden: str
) -> None:
    if not hasattr(signal, "pthread_kill"):
        pytest.skip("needs pthread_kill")
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(0.05, lambda: signal.pthread_kill(main, signal.SIGINT))
    produced = []
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        while True:  # an endless run of stories (context 512, restarted)
            for piece in stories.stream("", max_tokens=10_000, temperature=1.0, seed=1):
                produced.append(piece)
    timer.join()
    assert produced
    assert stories.generate("", max_tokens=256, temperature=0) + "\n" == golden


def test_chat_loop_with_scripted_input(stories: tinyllm.Model) -> None:
    lines = iter(["Tell me a story", "/system Be brief.", "Hi", "/reset", "Again", "/quit"])
    out, err = io.StringIO(), io.StringIO()
    chat(stories, read=lambda prompt: next(lines), out=out, err=err, max_tokens=20, seed=0)
    assert out.getvalue().count("Assistant: ") == 3
    assert "system prompt set" in err.getvalue() and "forgotten" in err.getvalue()
    assert "tokens/s" in err.getvalue()


def test_chat_reuses_the_cache_across_turns(stories_path: Path, tok512: Path) -> None:
    stories = tinyllm.Model(stories_path, tok512)
    lines = iter(["Tell me a story", "And another one", "/quit"])
    streams: list[tinyllm.Stream] = []
    original = stories.stream

    def spy(*args: object, **kwargs: object) -> tinyllm.Stream:
        s = original(*args, **kwargs)  # type: ignore[arg-type]
        streams.append(s)
        return s

    stories.stream = spy  # type: ignore[method-assign]
    try:
        chat(
            stories,
            read=lambda p: next(lines),
            out=io.StringIO(),
            err=io.StringIO(),
            max_tokens=10,
            seed=0,
        )
    finally:
        del stories.stream
    reused = [s.stats["reused_tokens"] for s in streams]
    assert reused[0] == 0 and reused[1] > 10


def test_cli_chat_reads_stdin() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "tinyllm", "chat", "-n", "10", "--seed", "1"],
        input="Hello there\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert "Assistant: " in r.stdout


def test_cli_reports_errors_without_a_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "missing.bin"
    r = subprocess.run(
        [sys.executable, "-m", "tinyllm", "run", str(missing)], capture_output=True, text=True
    )
    assert r.returncode == 1
    assert "tinyllm: error:" in r.stderr and str(missing) in r.stderr
    assert "Traceback" not in r.stderr


def test_logits_layout(stories: tinyllm.Model) -> None:
    ids = stories.tokenize("Once upon a time")
    lg = stories.logits(np.array(ids, dtype=np.int64))  # numpy ids are fine
    assert lg.shape == (len(ids), 512) and lg.dtype == np.float32 and lg.flags.c_contiguous
    assert int(lg[-1].argmax()) == stories.tokenize("Once upon a time,", add_bos=True)[-1]


def test_stubs_match_the_compiled_module() -> None:
    pytest.importorskip("mypy")
    r = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "tinyllm._tinyllm"],
        capture_output=True,
        text=True,
        env={**os.environ, "MYPYPATH": ""},
    )
    assert r.returncode == 0, r.stdout + r.stderr
