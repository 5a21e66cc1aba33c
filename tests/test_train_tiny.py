"""examples/train_tiny.py: a short training run, its export, and its logits.

Skipped without PyTorch. The run is tiny (a 2-layer model of width 32, a
few dozen steps) but goes through every stage: the BPE vocabulary, the
training loop, ``tinyllm.export_model`` and generation.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import tinyllm

from conftest import ROOT

torch = pytest.importorskip("torch")
sys.path.insert(0, str(ROOT / "examples"))

import train_tiny  # noqa: E402

TEXT = """The lighthouse keeper climbed the stairs every evening to light the lamp.
Ships far out at sea saw the light and knew where the rocks were.

One night a storm came and the wind blew so hard that the windows shook.
The keeper held the lamp steady and kept it burning until the morning.

In the morning the sea was calm again. A fishing boat came into the harbour,
and the fishermen waved to the keeper on the tower.

The keeper waved back, went down the stairs, and made a pot of tea.
"""

#: The exported f32 file against the trained PyTorch model: the largest
#: |difference| over the largest |logit|.
TOL = 1e-4

SMALL = ["--dim", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2"]
SMALL += ["--vocab", "300", "--seq-len", "32", "--batch", "8", "--threads", "1"]


def test_training_lowers_the_loss_and_the_export_gives_the_trainers_logits(
    tmp_path: Path,
) -> None:
    text = tmp_path / "text.txt"
    text.write_text(TEXT * 3, encoding="utf-8")
    out = tmp_path / "tiny.tllm"
    args = ["--text", str(text), "--steps", "40", "--quant", "f32", "--out", str(out)]
    result = train_tiny.run(train_tiny.parse_args(args + SMALL))
    losses = result.losses
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < losses[0] - 0.5
    m = tinyllm.Model(out)
    assert m.config.dim == 32 and m.config.n_kv_heads == 2
    prompt = "The keeper held the lamp steady"
    ids = m.tokenize(prompt)
    assert ids == result.tokenizer.encode(prompt).ids
    with torch.no_grad():
        want = result.model(torch.tensor([ids]))[0].double().numpy()
    got = m.logits(ids).astype(np.float64)
    assert np.abs(got - want).max() <= TOL * np.abs(want).max()
    assert isinstance(m.generate(prompt, max_tokens=10, temperature=0), str)


def test_the_script_runs_on_built_in_stories(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tiny.tllm"
    train_tiny.main(["--stories", "12", "--steps", "3", "--out", str(out), *SMALL])
    printed = capsys.readouterr().out
    assert "12 stories told by stories260K" in printed
    assert "tinyllm's logits vs PyTorch's" in printed
    assert out.is_file() and tinyllm.info(out)["quantization"]["recipe"] == "f16"
