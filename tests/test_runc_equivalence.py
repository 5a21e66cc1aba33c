"""tinyllm reproduces Karpathy's run.c and runq.c token for token: the
reference story of stories260K, greedy continuations of prompts, and the
int8 (version 2) model, through the Python API and through the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import tinyllm

from conftest import FIXTURES, ROOT


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m tinyllm ARGS`` and returns its output."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [sys.executable, "-m", "tinyllm", *args],
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def test_api_greedy_story_equals_run_c(stories: tinyllm.Model, golden: str) -> None:
    # run.c -n 256 runs 256 forward passes from BOS and prints each sampled
    # token; it ends the text with a newline.
    assert stories.generate("", max_tokens=256, temperature=0) + "\n" == golden


def test_cli_greedy_story_equals_run_c(stories_path: Path, tok512: Path, golden: str) -> None:
    r = cli("run", str(stories_path), "--tokenizer", str(tok512), "-t", "0", "-n", "256")
    assert r.returncode == 0, r.stderr
    assert r.stdout == golden
    assert "tokens/s" in r.stderr


def test_builtin_model_tells_the_reference_story(golden: str) -> None:
    assert tinyllm.Model.default().generate("", max_tokens=256, temperature=0) + "\n" == golden
    r = cli("run", "-t", "0", "-n", "256")
    assert r.returncode == 0, r.stderr
    assert r.stdout == golden


def test_console_script_is_installed() -> None:
    exe = shutil.which("tinyllm")
    assert exe is not None, "the `tinyllm` command is not on PATH"
    r = subprocess.run([exe, "run", "-t", "0", "-n", "8"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Once upon a time")


def _prompt_cases(runc: dict[str, Any]) -> list[dict[str, Any]]:
    return [g for g in runc["greedy"] if g["prompt"]]


def test_greedy_prompt_continuations_equal_run_c(
    stories: tinyllm.Model, stories_path: Path, tok512: Path, runc: dict[str, Any]
) -> None:
    cases = _prompt_cases(runc)
    assert cases
    for case in cases:
        ids = stories.tokenize(case["prompt"])
        # run.c's -n counts positions from BOS: steps - (prompt tokens - 1) are sampled.
        n_new = case["steps"] - len(ids) + 1
        expected_new = case["stdout"][len(stories.detokenize(ids)) :].removesuffix("\n")
        got = stories.generate(case["prompt"], max_tokens=n_new, temperature=0)
        assert got == expected_new, case["prompt"]

        r = cli(
            "run",
            str(stories_path),
            "-z",
            str(tok512),
            "-t",
            "0",
            "-n",
            str(n_new),
            "-p",
            case["prompt"],
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout == case["stdout"], case["prompt"]


def test_prompt_named_in_the_models_readme(stories: tinyllm.Model) -> None:
    text = stories.generate("Once upon a time, a little dog", max_tokens=40, temperature=0)
    assert text.startswith(
        " named Max was very excited. He loved to play with his toys and run around the house."
    )


def test_int8_version2_file_equals_runq_c(tok512: Path, runc: dict[str, Any]) -> None:
    case = runc["greedy_q8"]
    path = FIXTURES / Path(case["model"]).name
    m = tinyllm.Model(path, tok512)
    assert m.info["format"] == "llama2.c version 2 (int8 groups)"
    ids = m.tokenize(case["prompt"])
    n_new = case["steps"] - len(ids) + 1
    r = cli("run", str(path), "-z", str(tok512), "-t", "0", "-n", str(n_new), "-p", case["prompt"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == case["stdout"]


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_count_does_not_change_the_text(
    stories_path: Path, tok512: Path, golden: str, threads: int
) -> None:
    m = tinyllm.Model(stories_path, tok512, n_threads=threads)
    assert m.generate("", max_tokens=256, temperature=0) + "\n" == golden
