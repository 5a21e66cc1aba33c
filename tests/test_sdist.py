"""The source distribution holds every file the Rust sources embed.

A build from the sdist (``pip install`` of the ``.tar.gz``, or a platform
with no wheel) compiles the crates as the sdist lays them out. The core
embeds files from outside its crate (the Metal kernels, with
``include_str!``), which maturin packs only when ``pyproject.toml`` says so;
without them the build fails on the user's machine, not here. So this test
builds the sdist and resolves every ``include_str!``/``include_bytes!`` of
the packed Rust sources inside the unpacked tree.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INCLUDE = re.compile(r'include_(?:str|bytes)!\(\s*"([^"]+)"\s*\)')


@pytest.mark.skipif(shutil.which("cargo") is None, reason="maturin sdist reads cargo metadata")
def test_sdist_holds_every_embedded_file(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "maturin", "sdist", "--out", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (sdist,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    (top,) = (tmp_path / "x").iterdir()
    found = 0
    for rs in (top / "crates").rglob("*.rs"):
        for rel in INCLUDE.findall(rs.read_text()):
            found += 1
            where = rs.relative_to(top)
            assert (rs.parent / rel).is_file(), f"{where} embeds {rel}, not in the sdist"
    assert found >= 6, "the Metal kernels are embedded with include_str!"
