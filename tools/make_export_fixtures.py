#!/usr/bin/env python3
"""Regenerate tests/fixtures/export/*.json: what PyTorch computes for small
random models of the kinds ``tinyllm.export_model`` takes.

tests/test_export.py rebuilds the same weights with NumPy alone and checks
that the exported tinyllm files give these logits, so CI needs no torch.
This script is *not* run in CI.

Each case is a PyTorch module:

* ``llama2c``: the llama2.c-style ``Transformer`` of examples/train_tiny.py
  (llama2.c's tensor names, interleaved rotary pairs, tied classifier), its
  feed-forward width derived from ``multiple_of`` (180, not a multiple of
  32);
* ``hf_llama``: ``transformers``' ``LlamaForCausalLM`` with grouped-query
  attention, an untied classifier, ``rope_theta`` 5e5 and Llama 3's rope
  scaling, whose ``config.to_dict()`` (transformers 5 keeps the rotary
  settings in ``rope_parameters``) is stored as the config;
* ``hf_qwen3_tied``: ``Qwen3ForCausalLM`` with per-head q/k norms,
  ``head_dim`` apart from the width, and a tied classifier, whose state
  dict holds ``lm_head.weight`` as the embedding table under a second name.

For each, the script records the state dict's names and shapes in order
(and which names share one tensor), loads weights drawn by
tests/support/export_models.py, checks they arrived exactly, and records
the float32 logits of a fixed prompt at every position (and how far they
are from float64, and for ``hf_llama`` how far the rope scaling moves
them). Logits are stored as the shortest decimals that give back the same
float32.

Usage (torch, transformers and tinyllm in one environment; the CPU-only
torch wheel is enough)::

    /tmp/hfvenv/bin/python tools/make_export_fixtures.py            # all cases
    /tmp/hfvenv/bin/python tools/make_export_fixtures.py --check    # compare only
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "support"))
sys.path.insert(0, str(REPO / "examples"))

import export_models  # noqa: E402

OUT_DIR = REPO / "tests" / "fixtures" / "export"
PROMPT_LEN = 10
VOCAB = 512


def _llama2c() -> tuple[Any, dict[str, Any]]:
    import train_tiny

    args = train_tiny.ModelArgs(
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=VOCAB,
        multiple_of=20,
        max_seq_len=64,
    )
    module = train_tiny.Transformer(args)
    config = dict(vars(args))
    return module, config


def _hf(kind: str) -> Callable[[], tuple[Any, dict[str, Any]]]:
    def make() -> tuple[Any, dict[str, Any]]:
        import transformers

        common: dict[str, Any] = {
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
        }
        if kind == "llama":
            config = transformers.LlamaConfig(
                **common,
                rms_norm_eps=1e-5,
                rope_theta=500000.0,
                rope_scaling=_LLAMA3_SCALING,
                tie_word_embeddings=False,
            )
            cls = transformers.LlamaForCausalLM
        else:
            config = transformers.Qwen3Config(
                **common, head_dim=32, rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True
            )
            cls = transformers.Qwen3ForCausalLM
        config._attn_implementation = "eager"
        return cls(config), config.to_dict()

    return make


_LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 1024,
}

#: name -> (builder, seed)
CASES: dict[str, tuple[Callable[[], tuple[Any, dict[str, Any]]], int]] = {
    "llama2c": (_llama2c, 11),
    "hf_llama": (_hf("llama"), 12),
    "hf_qwen3_tied": (_hf("qwen3"), 13),
}


def _logits(module: Any, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = module(torch.tensor([ids]))
    logits = out if isinstance(out, torch.Tensor) else out.logits
    return np.asarray(logits[0].double().numpy())


def _short(x: float) -> float:
    # The shortest decimal that gives back the same float32.
    return float(str(np.float32(x)))


def make_case(name: str) -> dict[str, Any]:
    import torch
    import transformers

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    build, seed = CASES[name]
    module, config = build()
    module.eval()
    state = module.state_dict()
    tensors = [(n, list(t.shape)) for n, t in state.items()]
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for n, t in state.items():
        key = t.data_ptr()
        if key in first:
            tied[n] = first[key]
        else:
            first[key] = n
    weights = export_models.random_weights(tensors, seed, tied)
    module.load_state_dict({n: torch.from_numpy(w.copy()) for n, w in weights.items()})
    for n, t in module.state_dict().items():  # every number arrived as drawn
        assert np.array_equal(t.numpy(), weights[n]), n
    ids = [int(i) for i in np.random.default_rng(seed + 1).integers(3, VOCAB, PROMPT_LEN)]
    logits = _logits(module, ids)
    f64 = _logits(module.double(), ids)
    module.float()
    scale = np.abs(logits).max(-1)
    case: dict[str, Any] = {
        "generated_by": "tools/make_export_fixtures.py",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "case": name,
        "module": type(module).__name__,
        "config": config,
        "tensors": tensors,
        "tied": tied,
        "seed": seed,
        "weights_sha256": export_models.digest(weights),
        "input_ids": ids,
        "max_abs_logit": [_short(v) for v in scale],
        "f32_vs_f64_max_rel": float((np.abs(logits - f64).max(-1) / scale).max()),
    }
    if name == "hf_llama":
        unscaled = {"rope_type": "default", "rope_theta": config["rope_parameters"]["rope_theta"]}
        plain = transformers.LlamaConfig(**{**config, "rope_parameters": unscaled})
        plain._attn_implementation = "eager"
        other = transformers.LlamaForCausalLM(plain).eval()
        other.load_state_dict(module.state_dict())
        moved = np.abs(_logits(other, ids) - logits).max(-1) / scale
        case["rope_scaling_effect_rel"] = float(moved.max())
    case["logits"] = [[_short(v) for v in row] for row in logits.astype(np.float32)]
    return case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", default=sorted(CASES))
    parser.add_argument("--check", action="store_true", help="compare with the stored files")
    args = parser.parse_args()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name in args.cases:
        case = make_case(name)
        path = OUT_DIR / f"{name}.json"
        print(
            f"{name}: largest |logit| {max(case['max_abs_logit']):.1f}, "
            f"f32 vs f64 {case['f32_vs_f64_max_rel']:.1e}"
            + (
                f", rope scaling moves {case['rope_scaling_effect_rel']:.1e}"
                if "rope_scaling_effect_rel" in case
                else ""
            )
        )
        if args.check:
            stored = json.loads(path.read_text(encoding="utf-8"))
            want, got = np.array(stored["logits"]), np.array(case["logits"])
            rel = np.abs(want - got).max() / max(stored["max_abs_logit"])
            same = stored["weights_sha256"] == case["weights_sha256"]
            print(f"  stored: same weights {same}, logits differ by {rel:.1e}")
            continue
        path.write_text(json.dumps(case, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
