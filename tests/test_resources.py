"""What a Model holds and gives back: threads, the file's mapping, memory
over many generations from many threads, and Ctrl-C in the middle of a
prompt."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import tinyllm

from conftest import write_random_model

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))

import soak  # noqa: E402


def threads_now() -> int:
    """Threads of this process, Python's and the engine's (from /proc)."""
    return len(os.listdir("/proc/self/task"))


def mapped(path: Path) -> bool:
    return str(path) in Path("/proc/self/maps").read_text()


def physical_cores() -> int:
    """Counted here from /sys, apart from the engine's own reading."""
    allowed = os.sched_getaffinity(0)
    cores = set()
    for cpu in allowed:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        cores.add(((topo / "physical_package_id").read_text(), (topo / "core_id").read_text()))
    return len(cores)


pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc and /sys")


def test_close_releases_threads_and_the_mapping(
    tmp_path: Path, stories_path: Path, tok512: Path
) -> None:
    path = tmp_path / "own-copy.bin"
    shutil.copy(stories_path, path)
    gc.collect()
    before = threads_now()
    with tinyllm.Model(path, tok512, n_threads=2) as m:
        assert mapped(path)
        assert threads_now() > before  # the engine thread (and a worker, unless shared)
        text = m.generate("Once", max_tokens=8, temperature=0)
        assert text
    with pytest.raises(ValueError, match="closed"):
        m.generate("Once", max_tokens=8)
    m.close()  # twice is harmless
    del m
    gc.collect()
    assert not mapped(path)
    assert threads_now() == before


def test_close_fails_a_generation_running_in_another_thread(
    stories_path: Path, tok512: Path
) -> None:
    m = tinyllm.Model(stories_path, tok512)
    stream = m.stream("", max_tokens=100_000, temperature=1.0, seed=0)
    assert next(stream)
    m.close()
    with pytest.raises(ValueError, match="the model was closed"):
        for _ in stream:
            pass


def test_models_share_one_pool_of_workers(stories_path: Path, tok512: Path) -> None:
    # Three workers each would be nine threads; shared, three plus one
    # engine thread per model. (Four threads: no other test asks for four.)
    gc.collect()
    before = threads_now()
    models = [tinyllm.Model(stories_path, tok512, n_threads=4) for _ in range(3)]
    assert threads_now() - before == 3 + 3
    outs = [m.generate("Once", max_tokens=16, temperature=0) for m in models]
    assert outs[0] == outs[1] == outs[2]
    for m in models:
        m.close()
    del models
    gc.collect()
    assert threads_now() == before


def test_default_threads_are_the_physical_cores_and_the_variable_overrides(
    stories_path: Path, tok512: Path
) -> None:
    def n_threads(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        code = (
            "import tinyllm, sys\n"
            f"m = tinyllm.Model({str(stories_path)!r}, {str(tok512)!r})\n"
            "print(m.info['n_threads'])\n"
        )
        return subprocess.run(
            [sys.executable, "-c", code],
            env={k: v for k, v in os.environ.items() if k != "TINYLLM_NUM_THREADS"} | env,
            capture_output=True,
            text=True,
        )

    assert n_threads({}).stdout.strip() == str(physical_cores())
    assert n_threads({"TINYLLM_NUM_THREADS": "3"}).stdout.strip() == "3"
    bad = n_threads({"TINYLLM_NUM_THREADS": "many"})
    assert bad.returncode != 0 and "TINYLLM_NUM_THREADS" in bad.stderr


def test_ctrl_c_during_a_prompt_leaves_the_model_usable(tmp_path: Path, tok512: Path) -> None:
    if not hasattr(signal, "pthread_kill"):
        pytest.skip("needs pthread_kill")
    path = tmp_path / "m.bin"
    write_random_model(
        path,
        dim=256,
        hidden_dim=512,
        n_layers=6,
        n_heads=8,
        n_kv_heads=8,
        seq_len=2048,
        shared=True,
    )
    m = tinyllm.Model(path, tok512)
    ids = [1, *np.random.default_rng(0).integers(3, 512, 2000).tolist()]
    short = m.logits(ids[:10])
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(0.05, lambda: signal.pthread_kill(main, signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        m.logits(ids)  # seconds of prompt, interrupted in the first
    timer.join()
    np.testing.assert_array_equal(m.logits(ids[:10]), short)
    assert m.generate([1, 5, 9], max_tokens=4, temperature=0)


def test_soak_from_eight_threads_matches_serial_and_memory_stays_flat(
    stories: tinyllm.Model,
) -> None:
    r = soak.soak(stories, threads=8, generations=400, samples=8)
    assert not r.mismatches, r.mismatches[:3]
    assert r.generations >= 400
    growth = soak.growth_mb(r)
    print(f"\nsoak: {r.generations} generations, {r.tokens} tokens, growth {growth:.1f} MB")
    assert growth < 20, r.memory


def test_gguf_q4_0_is_repacked_and_its_size_reported(stories_path: Path, tok512: Path) -> None:
    fixtures = Path(__file__).parent / "fixtures" / "gguf"
    with tinyllm.Model(fixtures / "stories260K-Q4_0.gguf") as m:
        i = m.info
        assert 0 < i["repacked_bytes"] < i["file_bytes"]
    with tinyllm.Model(stories_path, tok512) as m:
        assert m.info["repacked_bytes"] == 0
