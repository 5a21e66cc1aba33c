"""The built wheel installs and runs where there is no Rust compiler.

Building a wheel takes minutes, so this test runs only when
``TINYLLM_WHEEL`` names one (``make wheel`` builds them into ``dist/``;
``.ci/run`` builds the x86_64 wheel and sets it). The wheel goes into a
fresh virtual environment without the system's site packages, its
dependencies installed by pip from its own metadata, and every command runs
with no cargo or rustc on ``PATH``, from a directory outside the checkout,
so that nothing can build or import the development tree instead.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

WHEEL = os.environ.get("TINYLLM_WHEEL")

pytestmark = pytest.mark.skipif(
    not WHEEL, reason="set TINYLLM_WHEEL to a built wheel (make wheel) to test it"
)


def _no_rust_path() -> str:
    """``PATH`` without the directories that hold cargo or rustc."""
    keep = [
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d
        and not any((Path(d) / tool).exists() for tool in ("cargo", "rustc", "rustup"))
        and ".cargo" not in Path(d).parts
    ]
    return os.pathsep.join(keep)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    assert WHEEL is not None
    wheel = Path(WHEEL).resolve()
    assert wheel.is_file(), f"TINYLLM_WHEEL={WHEEL} is not a file"
    assert wheel.name.endswith(f"_{platform.machine()}.whl"), (
        f"{wheel.name} is not for this machine ({platform.machine()})"
    )
    root = tmp_path_factory.mktemp("wheel-venv")
    env_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CARGO", "RUSTC")
    }
    env["PATH"] = os.pathsep.join([str(env_dir / "bin"), _no_rust_path()])
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    for tool in ("cargo", "rustc"):
        assert shutil.which(tool, path=env["PATH"]) is None, f"{tool} is still on PATH"
    # Binary wheels only, for the dependencies too: nothing may be compiled.
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run(
        [*pip, "--only-binary=:all:", str(wheel)],
        check=True,
        env=env,
        cwd=root,
    )
    return env_dir, env


def _run(venv: tuple[Path, dict[str, str]], *args: str) -> str:
    env_dir, env = venv
    done = subprocess.run(
        list(args),
        env=env,
        cwd=env_dir.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_wheel_is_what_is_imported(venv: tuple[Path, dict[str, str]]) -> None:
    env_dir, _ = venv
    out = _run(
        venv,
        str(env_dir / "bin" / "python"),
        "-c",
        "import json, tinyllm, tinyllm._tinyllm as t; "
        "print(json.dumps([tinyllm.__file__, t.__file__, t.isa()]))",
    )
    package, module, isa = json.loads(out)
    site = env_dir / "lib"
    assert Path(package).is_relative_to(site), package
    assert Path(module).is_relative_to(site), module
    assert module.endswith(".abi3.so"), module
    assert isa  # the kernels chosen at run time for this CPU


def test_tinyllm_run_tells_a_story(venv: tuple[Path, dict[str, str]]) -> None:
    env_dir, _ = venv
    out = _run(venv, str(env_dir / "bin" / "tinyllm"), "run", "-n", "40", "-t", "0", "-s", "1")
    assert len(out.split()) >= 10, out


def test_a_chat_completion(venv: tuple[Path, dict[str, str]]) -> None:
    env_dir, _ = venv
    code = (
        "import json, tinyllm\n"
        "m = tinyllm.Model.default()\n"
        "r = m.chat_completion([{'role': 'user', 'content': 'Tell me a story.'}],"
        " max_tokens=24, temperature=0)\n"
        "print(json.dumps(r))\n"
    )
    reply = json.loads(_run(venv, str(env_dir / "bin" / "python"), "-c", code))
    choice = reply["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    assert reply["usage"]["completion_tokens"] > 0
