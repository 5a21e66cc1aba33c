"""Model.from_pretrained and the CLI's --hf against a hub that never touches
the network: huggingface_hub itself with HF_HUB_OFFLINE=1 over a cache laid
out as it keeps one, and a fake hub that serves a local folder through the
functions from_pretrained calls (with huggingface_hub's own pattern filter),
to see which files a download asks for."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import tinyllm
from tinyllm import cli

import hf_models
from conftest import FIXTURES, MODELS

hub = pytest.importorskip("huggingface_hub")
from huggingface_hub.utils._paths import filter_repo_objects  # noqa: E402

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
GGUF = FIXTURES / "gguf"


class FakeHub:
    """One repository, ``remote`` (a folder), served as the hub would: its
    downloads land in a cache laid out as huggingface_hub's, and every file
    asked for is recorded."""

    def __init__(self, repo_id: str, remote: Path, cache: Path) -> None:
        self.repo_id = repo_id
        self.remote = remote
        self.snapshot = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / COMMIT
        self.downloaded: list[str] = []
        self.revisions: list[str | None] = []
        self.listed = 0

    def files(self) -> list[str]:
        return sorted(p.relative_to(self.remote).as_posix() for p in self.remote.rglob("*"))

    def _fetch(self, repo_id: str, names: list[str], revision: str | None) -> None:
        assert repo_id == self.repo_id
        assert revision in (None, "main", COMMIT)
        self.revisions.append(revision)
        for name in names:
            if (self.remote / name).is_file():
                self.downloaded.append(name)
                (self.snapshot / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.remote / name, self.snapshot / name)

    def list_repo_files(self, repo_id: str, *, revision: str | None = None, **_: Any) -> list[str]:
        assert repo_id == self.repo_id
        self.listed += 1
        return [f for f in self.files() if (self.remote / f).is_file()]

    def hf_hub_download(
        self, repo_id: str, filename: str, *, revision: str | None = None, **_: Any
    ) -> str:
        self._fetch(repo_id, [filename], revision)
        return str(self.snapshot / filename)

    def snapshot_download(
        self,
        repo_id: str,
        *,
        revision: str | None = None,
        allow_patterns: list[str] | None = None,
        **_: Any,
    ) -> str:
        names = list(filter_repo_objects(self.files(), allow_patterns=allow_patterns))
        self._fetch(repo_id, names, revision)
        return str(self.snapshot)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("list_repo_files", "hf_hub_download", "snapshot_download"):
            monkeypatch.setattr(hub, name, getattr(self, name))
        monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
        if hasattr(hub.constants, "is_offline_mode"):
            monkeypatch.setattr(hub.constants, "is_offline_mode", lambda: False)


@pytest.fixture
def tinyllm_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TINYLLM_CACHE", str(tmp_path / "tinyllm"))
    return tmp_path / "tinyllm"


def gguf_repo(remote: Path) -> Path:
    """A repository of GGUF files, as quantizers publish them (one in a
    folder, as some do for their larger files)."""
    remote.mkdir(parents=True)
    for q in ("Q4_0", "Q8_0", "F16"):
        shutil.copyfile(gguf_file(q), remote / f"stories260K-{q}.gguf")
    (remote / "big").mkdir()
    shutil.copyfile(gguf_file("Q4_1"), remote / "big" / "stories260K-Q4_1.gguf")
    (remote / "README.md").write_text("a model card\n", encoding="utf-8")
    return remote


def gguf_file(q: str) -> Path:
    return GGUF / f"stories260K-{q}.gguf"


# -- GGUF files: as they are, picked by a glob -----------------------------------


def test_a_gguf_file_runs_as_it_is_unless_a_quant_is_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tinyllm_cache: Path
) -> None:
    fake = FakeHub("tiny/stories-GGUF", gguf_repo(tmp_path / "remote"), tmp_path / "hub")
    fake.install(monkeypatch)
    m = tinyllm.Model.from_pretrained("tiny/stories-GGUF", filename="*q4_0.gguf", n_threads=1)
    assert fake.downloaded == ["stories260K-Q4_0.gguf"]
    assert m.info["path"] == str(fake.snapshot / "stories260K-Q4_0.gguf")
    assert m.info["weight_type"] == "q4_0"  # not re-quantized
    assert not tinyllm_cache.exists()  # nothing converted
    assert "'tiny/stories-GGUF/stories260K-Q4_0.gguf'" in repr(m)
    original = tinyllm.Model(gguf_file("Q4_0"), n_threads=1)
    assert m.generate("Once", max_tokens=12, temperature=0) == original.generate(
        "Once", max_tokens=12, temperature=0
    )
    # An explicit quant still converts, once, under the file's commit (a
    # file in a folder included).
    q8 = tinyllm.Model.from_pretrained(
        "tiny/stories-GGUF", filename="big/*.gguf", quant="q8_0", n_threads=1
    )
    want = tinyllm_cache / "tiny--stories-GGUF" / COMMIT / "stories260K-Q4_1-q8_0.tllm"
    assert q8.info["path"] == str(want) and want.is_file()
    assert q8.info["weight_type"].startswith("q8_0")
    # A file named exactly needs no listing.
    listed = fake.listed
    tinyllm.Model.from_pretrained("tiny/stories-GGUF", filename="stories260K-F16.gguf", quant=None)
    assert fake.listed == listed and fake.downloaded[-1] == "stories260K-F16.gguf"


def test_a_glob_must_match_exactly_one_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = gguf_repo(tmp_path / "remote")
    for i in range(30):
        (remote / f"part-{i:02d}.bin").write_bytes(b"")
    fake = FakeHub("tiny/stories-GGUF", remote, tmp_path / "hub")
    fake.install(monkeypatch)
    with pytest.raises(ValueError, match=r"4 files of tiny/stories-GGUF match '\*\.gguf'") as e:
        tinyllm.Model.from_pretrained("tiny/stories-GGUF", filename="*.gguf")
    assert "stories260K-Q8_0.gguf" in str(e.value) and "big/stories260K-Q4_1.gguf" in str(e.value)
    with pytest.raises(ValueError, match=r"no file of tiny/stories-GGUF matches '\*Q5_K_M\*'") as e:
        tinyllm.Model.from_pretrained("tiny/stories-GGUF", filename="*Q5_K_M*")
    assert "GGUF files are: big/stories260K-Q4_1.gguf, stories260K-F16.gguf" in str(e.value)
    with pytest.raises(ValueError) as e:
        tinyllm.Model.from_pretrained("tiny/stories-GGUF", filename="part-*")
    # 30 candidates: the message names some and counts the rest.
    assert "part-00.bin" in str(e.value) and "and 18 more" in str(e.value)
    assert "part-29.bin" not in str(e.value) and len(str(e.value)) < 400
    assert fake.downloaded == []
    with pytest.raises(ValueError, match="quant must be"):
        tinyllm.Model.from_pretrained("tiny/stories-GGUF", filename="*Q4_0*", quant="q3")


def test_globs_work_offline_from_the_hub_cache(tmp_path: Path) -> None:
    # huggingface_hub itself, offline: the cache is all there is to list.
    repo = tmp_path / "hub" / "models--tiny--stories-GGUF"
    gguf_repo(repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    script = (
        "import tinyllm\n"
        "m = tinyllm.Model.from_pretrained('tiny/stories-GGUF', filename='*Q8_0.gguf')\n"
        "print(m.info['path'], m.info['weight_type'])\n"
        "try:\n"
        "    tinyllm.Model.from_pretrained('tiny/stories-GGUF', filename='*.gguf')\n"
        "except ValueError as e:\n"
        "    print(e)\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "TINYLLM_CACHE": str(tmp_path / "tinyllm"),
    }
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    assert first == f"{repo / 'snapshots' / COMMIT / 'stories260K-Q8_0.gguf'} q8_0"
    assert second.startswith("4 files of tiny/stories-GGUF match '*.gguf'")
    assert not (tmp_path / "tinyllm").exists()


# -- safetensors: only the shards the index lists --------------------------------


def mistral_like_repo(remote: Path) -> Path:
    """A sharded safetensors model beside a ``consolidated.safetensors`` copy
    of it and Mistral's own ``params.json``, as Mistral's repositories are."""
    spec = hf_models.spec("qwen2")
    hf_models.write_hf_dir(spec, remote, shards=2)
    tok = tinyllm.Tokenizer.from_file(MODELS / "vocab" / "ggml-vocab-qwen2.gguf")
    (remote / "tokenizer.json").write_text(tok.to_json_str()[0], encoding="utf-8")
    (remote / "consolidated.safetensors").write_bytes(b"\0" * 4096)
    (remote / "params.json").write_text(json.dumps({"dim": spec.config["hidden_size"]}))
    (remote / "original").mkdir()
    (remote / "original" / "consolidated.00.pth").write_bytes(b"\0" * 64)
    return remote


def test_only_the_indexed_shards_are_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tinyllm_cache: Path
) -> None:
    remote = mistral_like_repo(tmp_path / "remote")
    fake = FakeHub("tiny/mistral-like", remote, tmp_path / "hub")
    fake.install(monkeypatch)
    m = tinyllm.Model.from_pretrained("tiny/mistral-like", quant=None, n_threads=1)
    weights = [f for f in fake.downloaded if not f.endswith(".json")]
    assert sorted(weights) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert len(fake.downloaded) == len(set(fake.downloaded))  # each file once
    assert "model.safetensors.index.json" in fake.downloaded
    # The weights come from the commit the small files came from.
    assert fake.revisions == [None, COMMIT]
    assert m.info["path"] == str(fake.snapshot)
    local = tinyllm.Model(remote, n_threads=1)
    ids = local.tokenize("Hello world")
    assert (m.logits(ids) == local.logits(ids)).all()
    # The default for safetensors is still q4, converted once.
    q4 = tinyllm.Model.from_pretrained("tiny/mistral-like", n_threads=1)
    assert q4.info["path"] == str(tinyllm_cache / "tiny--mistral-like" / COMMIT / "model-q4.tllm")
    assert repr(q4).startswith("Model('tiny/mistral-like', qwen2, ")


def test_a_single_file_model_downloads_model_safetensors_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = tmp_path / "remote"
    hf_models.write_hf_dir(hf_models.spec("qwen2"), remote)
    tok = tinyllm.Tokenizer.from_file(MODELS / "vocab" / "ggml-vocab-qwen2.gguf")
    (remote / "tokenizer.json").write_text(tok.to_json_str()[0], encoding="utf-8")
    (remote / "consolidated.safetensors").write_bytes(b"\0" * 4096)
    fake = FakeHub("tiny/one-file", remote, tmp_path / "hub")
    fake.install(monkeypatch)
    tinyllm.Model.from_pretrained("tiny/one-file", quant=None, n_threads=1)
    assert [f for f in fake.downloaded if not f.endswith(".json")] == ["model.safetensors"]


# -- the command line ------------------------------------------------------------


def test_cli_hf_file_and_quant_none(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tinyllm_cache: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = FakeHub("tiny/stories-GGUF", gguf_repo(tmp_path / "remote"), tmp_path / "hub")
    fake.install(monkeypatch)
    args = ["run", "--hf", "tiny/stories-GGUF", "--hf-file", "*Q8_0.gguf", "-n", "8", "-t", "0"]
    assert cli.main(args) == 0
    as_is = capsys.readouterr().out
    assert fake.downloaded == ["stories260K-Q8_0.gguf"] and not tinyllm_cache.exists()
    want = tinyllm.Model(gguf_file("Q8_0")).generate("", max_tokens=8, temperature=0)
    assert as_is == want + "\n"
    assert cli.main([*args, "--quant", "none"]) == 0
    assert capsys.readouterr().out == as_is and not tinyllm_cache.exists()
    assert cli.main([*args, "--quant", "q4"]) == 0
    capsys.readouterr()
    assert (tinyllm_cache / "tiny--stories-GGUF" / COMMIT / "stories260K-Q8_0-q4.tllm").is_file()
    with pytest.raises(SystemExit, match="--hf-file and --quant go with --hf"):
        cli.main(["run", "--hf-file", "*Q8_0.gguf"])
    assert cli.main(["run", "--hf", "tiny/stories-GGUF", "--hf-file", "*.gguf"]) == 1
    assert "4 files of tiny/stories-GGUF match" in capsys.readouterr().err
