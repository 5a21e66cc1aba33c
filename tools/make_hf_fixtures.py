#!/usr/bin/env python3
"""Regenerate tests/fixtures/hf/*.json: what Hugging Face ``transformers``
computes for the tiny random models of tests/support/hf_models.py.

tinyllm's tests build the same model directories with NumPy alone and
compare tinyllm's logits and greedy tokens with these records, so CI needs
neither torch nor transformers. This script is *not* run in CI.

For each case (a spec, a dtype and a number of shards) it:

1. writes the model directory with ``hf_models.write_hf_dir`` into a
   temporary directory;
2. loads it with ``AutoModelForCausalLM.from_pretrained(dir, dtype=float32,
   attn_implementation="eager")`` (``dtype`` is what transformers 5 calls
   ``torch_dtype``; bf16 files are widened to float32), checks that no
   tensor was missing or left over and that every parameter is exactly the
   value the file holds (and, for bf16, that torch rounds as we do);
3. runs a fixed prompt of 12 token ids and records the logits at every
   position for a fixed subset of 512 vocabulary ids (special ids, the
   first and last id, every argmax and the rest at random), and over the
   full vocabulary the argmax and largest |logit| of each position;
4. records a greedy continuation of 16 tokens (``generate(do_sample=False)``
   with the KV cache), checked to equal the one without the cache and the
   argmaxes of one forward pass over prompt and continuation, and the subset
   logits at the last position of that pass (position 26);
5. checks that the result is not fragile: at every prompt and continuation
   position the top two logits differ by more than ``MARGIN`` of the largest
   |logit|, every continuation token is a plain text token of the real
   vocabulary (no BOS, EOS, control or padding id, so a runtime that stops
   at one still produces all 16 and can spell them), and the continuation is
   not one or two tokens repeated (``MIN_DISTINCT``); the registry's seeds
   were chosen with ``--search`` to pass;
6. records, for choosing the tests' tolerances, how far the logits move when
   the matrices are rounded to Q8_0 and to (plain, max/-8) Q4_0 blocks of 32
   (and matmul inputs to Q8 blocks), how far float32 is from float64, and
   for Llama 3 how far the logits move without its RoPE scaling.

Everything is deterministic: weights come from fixed NumPy seeds, torch uses
one thread and deterministic algorithms, and logits are stored as the
shortest decimal strings that give back the same float32.

Usage (torch and transformers in a separate virtual environment; the CPU-only
torch wheel is enough)::

    python -m venv /tmp/hfvenv
    /tmp/hfvenv/bin/pip install torch transformers numpy safetensors
    /tmp/hfvenv/bin/python tools/make_hf_fixtures.py            # all cases
    /tmp/hfvenv/bin/python tools/make_hf_fixtures.py --check    # compare only
    /tmp/hfvenv/bin/python tools/make_hf_fixtures.py --search qwen3  # find seeds
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "support"))

import hf_models  # noqa: E402

OUT_DIR = REPO / "tests" / "fixtures" / "hf"

#: Prompt length, continuation length and vocabulary subset size.
PROMPT_LEN = 12
NEW_TOKENS = 16
SUBSET = 512
#: The least top-1/top-2 gap, as a fraction of the largest |logit|.
MARGIN = 1e-2
#: The fewest distinct tokens in the continuation (not one token repeated).
MIN_DISTINCT = 8


@dataclass(frozen=True)
class Case:
    name: str
    spec: str
    dtype: str = "float32"
    shards: int = 1


CASES = [
    Case("llama2", "llama2"),
    Case("llama3", "llama3"),
    Case("mistral", "mistral"),
    Case("qwen2", "qwen2"),
    Case("qwen3", "qwen3"),
    Case("granite", "granite"),
    Case("smollm3", "smollm3"),
    Case("gemma2", "gemma2"),
    Case("gemma3", "gemma3"),
    Case("olmo2", "olmo2"),
    Case("olmo3", "olmo3"),
    Case("phi3", "phi3"),
    Case("phi4_mini", "phi4_mini"),
    Case("qwen2_bf16", "qwen2", dtype="bfloat16"),
    Case("llama2_sharded", "llama2", shards=2),
]


# -- torch side ----------------------------------------------------------------


def _torch() -> Any:
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_grad_enabled(False)
    return torch


def load(path: Path, spec: hf_models.HFSpec, dtype: str) -> Any:
    """The transformers model of the directory, checked against the spec."""
    torch = _torch()
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()

    model, info = AutoModelForCausalLM.from_pretrained(
        str(path),
        dtype=torch.float32,
        attn_implementation="eager",
        output_loading_info=True,
    )
    model.eval()
    bad = {k: v for k, v in info.items() if v}
    # A tied model has no lm_head.weight in the file; transformers may list it.
    if spec.tied and set(bad.get("missing_keys", ())) <= {"lm_head.weight"}:
        bad.pop("missing_keys", None)
    if bad:
        raise SystemExit(f"{spec.name}: transformers loaded the directory with {bad}")
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, w in spec.weights().items():
        got = params[name].detach().numpy()
        if got.dtype != np.float32 or not np.array_equal(got, hf_models.as_stored(w, dtype)):
            raise SystemExit(f"{spec.name}: {name} does not hold the written values")
    if spec.tied and not np.array_equal(
        params["lm_head.weight"].detach().numpy(),
        params["model.embed_tokens.weight"].detach().numpy(),
    ):
        raise SystemExit(f"{spec.name}: the classifier is not tied to the embeddings")
    if dtype == "bfloat16":  # our rounding against torch's
        for name, w in spec.weights().items():
            theirs = torch.from_numpy(np.array(w)).to(torch.bfloat16).float().numpy()
            if not np.array_equal(theirs, hf_models.as_stored(w, dtype)):
                raise SystemExit(f"{name}: bfloat16 rounding differs from torch's")
    return model


def forward(model: Any, ids: list[int]) -> np.ndarray:
    torch = _torch()
    out = model(torch.tensor([ids]), use_cache=False)
    logits: np.ndarray = out.logits[0].double().numpy()
    return logits


def greedy(model: Any, spec: hf_models.HFSpec, ids: list[int], use_cache: bool) -> list[int]:
    torch = _torch()
    pad = spec.generation.get("pad_token_id", min(spec.special_ids()))
    out = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        use_cache=use_cache,
        pad_token_id=pad,
    )
    return [int(t) for t in out[0, len(ids) :]]


# -- the records ---------------------------------------------------------------


def prompt(spec: hf_models.HFSpec) -> list[int]:
    """BOS (for Llama and Mistral, which prepend it; Qwen does not), then
    ids spread over the vocabulary, one of them the last id."""
    rng = np.random.default_rng(1000 + spec.seed)
    specials = spec.special_ids()
    bos = spec.config.get("bos_token_id")
    ids = [bos] if isinstance(bos, int) and spec.model_type in ("llama", "mistral") else []
    while len(ids) < PROMPT_LEN - 1:
        t = int(rng.integers(0, spec.vocab_size))
        if t not in specials:
            ids.append(t)
    ids.insert(PROMPT_LEN // 2, spec.vocab_size - 1)
    return ids


def subset(spec: hf_models.HFSpec, must: set[int]) -> list[int]:
    """SUBSET vocabulary ids: the special and given ids, the first and last
    id, and the rest drawn at random."""
    rng = np.random.default_rng(2000 + spec.seed)
    out = set(must) | spec.special_ids() | {0, 1, spec.vocab_size - 1}
    while len(out) < SUBSET:
        out.add(int(rng.integers(0, spec.vocab_size)))
    return sorted(out)


def ordinary(spec: hf_models.HFSpec, ids: list[int]) -> bool:
    """Whether ``ids`` are all plain text tokens of the spec's vocabulary."""
    begin, end = spec.text_ids
    return all(begin <= i < end for i in ids) and not set(ids) & spec.special_ids()


def margins(logits: np.ndarray) -> np.ndarray:
    """Per row: (top1 - top2) / max|logit|."""
    top2 = np.partition(logits, -2, axis=-1)[:, -2:]
    out: np.ndarray = (top2[:, 1] - top2[:, 0]) / np.abs(logits).max(-1)
    return out


def quantize_blocks(w: np.ndarray, bits: int) -> np.ndarray:
    """``w`` with each run of 32 values of a row rounded as Q8_0
    (``d = max|x| / 127``) or plain Q4_0 (``d = max / -8``), ``d`` in f16."""
    g = w.astype(np.float32).reshape(-1, 32)
    if bits == 8:
        d = np.abs(g).max(1) / 127.0
        lo, hi = -127, 127
    else:
        idx = np.abs(g).argmax(1)
        d = g[np.arange(len(g)), idx] / -8.0
        lo, hi = -8, 7
    d = d.astype(np.float16).astype(np.float32)
    inv = np.where(d == 0, 0.0, 1.0 / np.where(d == 0, 1.0, d))
    q = np.clip(np.round(g * inv[:, None]), lo, hi)
    out: np.ndarray = (q * d[:, None]).astype(np.float32).reshape(w.shape)
    return out


def quantize_act(x: Any) -> Any:
    """Activations rounded as tinyllm's kernels do before a block matmul:
    blocks of 32, ``d = max|x| / 127`` in f32, ties to even."""
    torch = _torch()
    g = x.reshape(-1, 32)
    d = g.abs().amax(1, keepdim=True) / 127.0
    inv = torch.where(d > 0, 1.0 / torch.where(d > 0, d, torch.ones_like(d)), 0.0)
    return (torch.round(g * inv) * d).reshape(x.shape)


def rms(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.sqrt((x**2).mean(-1))
    return out


def emulate_quant(model: Any, ids: list[int], ref: np.ndarray, bits: int) -> dict[str, float]:
    """How far the logits of ``ids`` move when every matrix is rounded to
    blocks and the input of every matrix product to Q8 blocks: the largest
    |difference| over the largest |logit| and the RMS difference over the
    RMS logit, at the worst position, and the share of positions whose
    argmax stays."""
    torch = _torch()
    saved = {}
    for name, p in model.named_parameters():
        if p.ndim == 2:
            saved[name] = p.detach().clone()
            p.copy_(torch.from_numpy(quantize_blocks(p.detach().numpy(), bits)))
    hooks = [
        m.register_forward_pre_hook(lambda _m, args: (quantize_act(args[0]), *args[1:]))
        for m in model.modules()
        if isinstance(m, torch.nn.Linear)
    ]
    try:
        got = forward(model, ids)
    finally:
        for h in hooks:
            h.remove()
        params = dict(model.named_parameters())
        for name, value in saved.items():
            params[name].copy_(value)
    scale = np.abs(ref).max(-1)
    return {
        "max_rel_err": float((np.abs(got - ref).max(-1) / scale).max()),
        "rms_rel_err": float((rms(got - ref) / rms(ref)).max()),
        "top1": float((got.argmax(-1) == ref.argmax(-1)).mean()),
    }


def f32(values: np.ndarray) -> list[float]:
    """Floats whose shortest decimals give back the float32 values."""
    return [float(str(v)) for v in np.asarray(values, dtype=np.float32).ravel()]


def record(case: Case, spec: hf_models.HFSpec, workdir: Path) -> dict[str, Any]:
    path = hf_models.write_hf_dir(spec, workdir / case.name, case.dtype, case.shards)
    model = load(path, spec, case.dtype)
    ids = prompt(spec)
    new = greedy(model, spec, ids, use_cache=True)
    if greedy(model, spec, ids, use_cache=False) != new:
        raise SystemExit(f"{case.name}: greedy tokens differ with and without the cache")
    if len(new) != NEW_TOKENS or not ordinary(spec, new):
        raise SystemExit(f"{case.name}: the continuation {new} holds special ids; try another seed")
    if len(set(new)) < MIN_DISTINCT:
        raise SystemExit(f"{case.name}: the continuation {new} repeats; try another seed")
    seq = ids + new[:-1]
    full = forward(model, seq)  # float64 copy of float32 logits, (len(seq), V)
    if full[len(ids) - 1 :].argmax(-1).tolist() != new:
        raise SystemExit(f"{case.name}: greedy tokens are not the argmax of one forward pass")
    m = margins(full)
    if m.min() < MARGIN:
        raise SystemExit(f"{case.name}: top-2 margin {m.min():.2e} < {MARGIN}; try another seed")
    logits = forward(model, ids)  # what the tests compute: the prompt alone
    scale = np.abs(logits).max(-1, keepdims=True)
    if (np.abs(logits - full[: len(ids)]) / scale).max() > 1e-5:
        raise SystemExit(f"{case.name}: the prompt's logits depend on what follows")
    vocab_ids = subset(spec, set(ids) | set(new) | set(logits.argmax(-1).tolist()))

    out: dict[str, Any] = {
        "case": case.name,
        "spec": spec.name,
        "dtype": case.dtype,
        "shards": case.shards,
        "model_type": spec.model_type,
        "vocab_size": spec.vocab_size,
        "weights_sha256": hf_models.weights_digest(spec, case.dtype),
        "input_ids": ids,
        "greedy": new,
        "argmax": logits.argmax(-1).tolist(),
        "max_abs_logit": f32(np.abs(logits).max(-1)),
        "min_margin_rel": float(m.min()),
        "vocab_ids": vocab_ids,
        "logits": [f32(row[vocab_ids]) for row in logits],
        # the last position of prompt + continuation, for a longer reach
        "last_logits": f32(full[-1][vocab_ids]),
        "last_max_abs_logit": float(np.float32(np.abs(full[-1]).max())),
    }
    # float32 against float64: the reference's own rounding.
    wide = model.double()
    try:
        f64 = forward(wide, seq)
    finally:
        model.float()
    out["f32_vs_f64_max_rel"] = float((np.abs(full - f64).max(-1) / np.abs(f64).max(-1)).max())
    out["emulated_quant"] = {
        "q8_0": emulate_quant(model, seq, full, 8),
        "q4_0_plain": emulate_quant(model, seq, full, 4),
    }
    if spec.config.get("rope_scaling"):
        # The scaling must matter, or a runtime ignoring it would pass.
        plain = workdir / f"{case.name}_unscaled"
        hf_models.write_hf_dir(spec, plain, case.dtype, config_overrides={"rope_scaling": None})
        other = forward(load(plain, spec, case.dtype), seq)
        effect = np.abs(other - full).max(-1) / np.abs(full).max(-1)
        out["rope_scaling_effect_rel"] = {
            "prompt": float(effect[: len(ids)].max()),
            "last": float(effect[-1]),
        }
    return out


def versions() -> dict[str, str]:
    import torch
    import transformers

    return {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


# -- output --------------------------------------------------------------------


def dumps(obj: Any, indent: int = 0) -> str:
    """JSON with one line per list of numbers."""
    pad = "  " * (indent + 1)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k)}: {dumps(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    if isinstance(obj, list) and any(isinstance(v, (list, dict)) for v in obj):
        items = [pad + dumps(v, indent + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + "  " * indent + "]"
    return json.dumps(obj, separators=(", ", ": "))


def cases(names: list[str]) -> Iterator[Case]:
    known = {c.name: c for c in CASES}
    for n in names or list(known):
        if n not in known:
            raise SystemExit(f"unknown case {n!r}; cases: {', '.join(known)}")
        yield known[n]


def search(name: str, start: int, tries: int) -> None:
    """Prints the seeds of spec ``name`` (its other fields as in the
    registry) that pass the checks of :func:`record`."""
    base = hf_models.SPECS[name]
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(start, start + tries):
            spec = hf_models.spec(name, seed=seed)
            path = hf_models.write_hf_dir(spec, Path(tmp) / "model")
            model = load(path, spec, "float32")
            ids = prompt(spec)
            new = greedy(model, spec, ids, use_cache=True)
            m = margins(forward(model, ids + new[:-1])).min()
            ok = m >= MARGIN and ordinary(spec, new)
            ok = ok and len(new) == NEW_TOKENS and len(set(new)) >= MIN_DISTINCT
            print(
                f"{name} seed {seed}: min margin {m:.3e}, {len(set(new))} distinct of "
                f"{len(new)}{'' if ordinary(spec, new) else ', special ids'}"
                + (" GOOD" if ok else ""),
                flush=True,
            )
        print(f"(the registry uses seed {base.seed})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cases", nargs="*", help="cases to make (default: all)")
    ap.add_argument("--check", action="store_true", help="compare with the stored files only")
    ap.add_argument("--search", metavar="SPEC", help="try seeds for SPEC and print margins")
    ap.add_argument("--start", type=int, default=0, help="first seed to try")
    ap.add_argument("--tries", type=int, default=20)
    args = ap.parse_args()
    if args.search:
        search(args.search, args.start, args.tries)
        return
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases(args.cases):
            rec = record(case, hf_models.SPECS[case.spec], Path(tmp))
            rec = {"generated_by": "tools/make_hf_fixtures.py", "versions": versions()} | rec
            text = dumps(rec) + "\n"
            path = OUT_DIR / f"{case.name}.json"
            summary = (
                f"{case.name}: margin {rec['min_margin_rel']:.3f}, "
                f"f64 {rec['f32_vs_f64_max_rel']:.1e}, quant {rec['emulated_quant']}"
                + (
                    f", rope scaling {rec['rope_scaling_effect_rel']}"
                    if "rope_scaling_effect_rel" in rec
                    else ""
                )
            )
            if args.check:
                old = json.loads(path.read_text(encoding="utf-8"))
                same = {k: v for k, v in old.items() if k != "versions"} == {
                    k: v for k, v in json.loads(text).items() if k != "versions"
                }
                failed |= not same
                print(f"{summary}: {'same' if same else 'DIFFERENT'}", flush=True)
            else:
                path.write_text(text, encoding="utf-8")
                print(f"{summary} -> {path.relative_to(REPO)}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
