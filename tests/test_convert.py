"""tinyllm files: conversion from llama2.c files, quantization quality
through the API, the CLI, and bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinyllm
from tinyllm import ModelFormatError


def kl_top1(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """Mean KL(ref || got) of the next-token distributions, and top-1 agreement."""
    p = np.exp(ref - ref.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    lq = got - got.max(-1, keepdims=True)
    lq -= np.log(np.exp(lq).sum(-1, keepdims=True))
    lp = np.log(np.maximum(p, 1e-30))
    kl = float((p * (lp - lq)).sum(-1).mean())
    return kl, float((ref.argmax(-1) == got.argmax(-1)).mean())


@pytest.fixture(scope="module")
def converted(
    tmp_path_factory: pytest.TempPathFactory, stories_path: Path, tok512: Path
) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tllm")
    out = {}
    for quant in tinyllm._convert.QUANTS:
        out[quant] = d / f"stories-{quant}.tllm"
        r = tinyllm.convert(stories_path, out[quant], quant, tokenizer=tok512, progress=False)
        assert r["file_bytes"] == out[quant].stat().st_size
    return out


def test_f32_file_opens_alone_and_tells_the_reference_story(
    converted: dict[str, Path], golden: str, stories: tinyllm.Model
) -> None:
    m = tinyllm.Model(converted["f32"])  # its tokenizer is inside
    assert m.info["format"] == "tinyllm" and m.info["tokenizer_path"] is None
    assert m.generate("", max_tokens=256, temperature=0) + "\n" == golden
    ids = stories.tokenize(golden)
    np.testing.assert_array_equal(m.logits(ids), stories.logits(ids))


# Mean KL bounds on the reference story (about twice what was measured).
BOUNDS = {
    "f16": (1e-5, 0.99),
    "bf16": (1e-4, 0.98),
    "q8_0": (1e-3, 0.97),
    "q4": (0.1, 0.85),
    "q4_1": (0.07, 0.87),
    "q4_mixed": (0.05, 0.87),
}


@pytest.mark.parametrize("quant", list(BOUNDS))
def test_quantized_files_stay_close(
    quant: str, converted: dict[str, Path], stories: tinyllm.Model, golden: str
) -> None:
    ids = stories.tokenize(golden)
    ref = stories.logits(ids)
    m = tinyllm.Model(converted[quant])
    kl, top1 = kl_top1(ref, m.logits(ids))
    max_kl, min_top1 = BOUNDS[quant]
    assert kl < max_kl and top1 > min_top1, (kl, top1)
    info = tinyllm.info(converted[quant])
    assert info["quantization"]["recipe"] == quant
    assert info["source"]["file"] == "stories260K.bin"


def test_smaller_types_make_smaller_files(converted: dict[str, Path]) -> None:
    size = {q: p.stat().st_size for q, p in converted.items()}
    assert size["f32"] > size["f16"] > size["q8_0"] > size["q4_mixed"] > size["q4"]
    assert abs(size["f16"] - size["bf16"]) <= 64  # only the header differs


def test_rows_that_do_not_fit_blocks_fall_back_to_f16(converted: dict[str, Path]) -> None:
    # stories260K's hidden size is 172, not a multiple of 32: ffn_down stays f16.
    tensors = {name: dtype for name, dtype, _, _ in tinyllm.info(converted["q4"])["tensors"]}
    assert tensors["blk.0.ffn_down"] == "f16"
    assert tensors["blk.0.ffn_up"] == "q4_0x4"  # four rows interleaved


def test_tinyllm_to_tinyllm(converted: dict[str, Path], tmp_path: Path) -> None:
    dst = tmp_path / "again.tllm"
    tinyllm.convert(converted["f32"], dst, "q8_0", progress=False)
    a = tinyllm.Model(dst).generate("Once upon a time", max_tokens=30, temperature=0)
    b = tinyllm.Model(converted["q8_0"]).generate("Once upon a time", max_tokens=30, temperature=0)
    assert a == b


def test_cli_convert_and_info(stories_path: Path, tok512: Path, tmp_path: Path) -> None:
    dst = tmp_path / "cli.tllm"
    run = [sys.executable, "-m", "tinyllm"]
    r = subprocess.run(
        [*run, "convert", str(stories_path), "-z", str(tok512), "-o", str(dst), "--quant", "q8_0"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "bits per weight" in r.stderr and dst.exists()
    r = subprocess.run([*run, "info", str(dst)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "tinyllm" in r.stdout and "blk.4.ffn_up" in r.stdout and "q8_0" in r.stdout
    r = subprocess.run([*run, "info", str(stories_path)], capture_output=True, text=True)
    assert "llama2.c (legacy, f32)" in r.stdout
    r = subprocess.run(
        [*run, "run", str(dst), "-t", "0", "-n", "5"], capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout.startswith("Once upon a time")


def test_bad_conversions(stories_path: Path, tok512: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="quant must be one of"):
        tinyllm.convert(stories_path, tmp_path / "x.tllm", "q3")
    with pytest.raises(FileNotFoundError):
        tinyllm.convert(tmp_path / "missing.bin", tmp_path / "x.tllm")
    with pytest.raises(ModelFormatError, match="tokenizer"):
        tinyllm.convert(stories_path, tmp_path / "x.tllm", tokenizer=stories_path)
    assert not (tmp_path / "x.tllm").exists()
    assert not list(tmp_path.glob("*.partial"))


def test_truncated_tinyllm_files(converted: dict[str, Path], tmp_path: Path) -> None:
    data = converted["q4"].read_bytes()
    cut = tmp_path / "cut.tllm"
    for n in [*range(0, 64), *range(64, len(data), max(1, len(data) // 97)), len(data) - 1]:
        cut.write_bytes(data[:n])
        with pytest.raises(ModelFormatError) as e:
            tinyllm.Model(cut)
        assert str(cut) in str(e.value)


def test_eval_measures_a_quantized_model(
    converted: dict[str, Path], stories: tinyllm.Model, golden: str
) -> None:
    same = tinyllm.eval(stories, stories, golden, ctx=64)
    assert same["kl_mean"] == 0.0 and same["top1"] == 1.0
    assert same["ppl"] == same["ppl_reference"] and same["chunks"] == 4
    assert same["positions"] == 4 * 31
    q8 = tinyllm.eval(converted["q8_0"], stories, golden, ctx=64)
    q4 = tinyllm.eval(converted["q4"], stories, golden, ctx=64)
    assert 0 < q8["kl_mean"] < 1e-3 < q4["kl_mean"] < 0.1
    assert q8["top1"] > q4["top1"] > 0.8
    assert q4["ppl"] > q8["ppl"] > 1.0
    # The greedy story is the model's own most likely text: low perplexity.
    assert same["ppl"] < 2.0
    with pytest.raises(ValueError, match="fewer than one chunk"):
        tinyllm.eval(stories, stories, "Once upon a time", ctx=64)


def test_eval_puts_bos_first_when_the_vocabulary_adds_it(
    stories: tinyllm.Model, golden: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # stories260K's vocabulary adds BOS: the text is tokenized after BOS and
    # each chunk's first token becomes BOS, as in llama-perplexity
    # (vocabularies without, such as SmolLM2's, keep the text's token: see
    # tests/test_smollm2.py).
    assert stories.tokenizer.add_bos
    ids = [1, *stories.tokenize(golden, add_bos=False)]
    seen: list[list[int]] = []
    logits = stories.logits

    def spy(chunk: list[int]) -> np.ndarray:
        seen.append(list(chunk))
        return logits(chunk)

    monkeypatch.setattr(stories, "logits", spy)
    tinyllm.eval(stories, stories, golden, ctx=64)
    chunks = len(ids) // 64
    assert chunks >= 3
    assert seen[::2] == [[1, *ids[c * 64 + 1 : (c + 1) * 64]] for c in range(chunks)]


def test_cli_eval(
    converted: dict[str, Path], stories_path: Path, tmp_path: Path, golden: str
) -> None:
    text = tmp_path / "story.txt"
    text.write_text(golden, encoding="utf-8")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinyllm",
            "eval",
            str(converted["q8_0"]),
            "--reference",
            str(stories_path),
            "--text",
            str(text),
            "--ctx",
            "64",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "mean KL divergence" in r.stdout and "perplexity" in r.stdout
