#!/usr/bin/env python3
"""Regenerate tests/fixtures/runc_reference.json from Karpathy's llama2.c.

The fixture records what the reference C implementation does, so tinyllm's
tests can compare against it without a C toolchain or llama2.c at test time.
This script is *not* run in CI; it documents where the expected values come
from and lets a developer rebuild them.

It needs a directory holding llama2.c's ``run.c`` and ``runq.c`` (kept outside
this repository) and a C compiler.  It then:

1. compiles single-threaded ``run`` and ``runq`` binaries and
   ``tools/runc_harness.c`` (which ``#include``s run.c) in a temporary dir;
2. tokenizes a set of sample strings with run.c's ``encode()`` (BOS on, EOS
   off) for both tokenizer files in ``shared/models``;
3. records run.c's exact stdout for a few greedy (``-t 0``) generations of
   stories260K;
4. writes a Q8_0 (version 2) copy of stories260K with
   ``tests/support/llama2c_format.py`` to ``tests/fixtures/stories260K_q80.bin``
   and records runq.c's greedy stdout on it.

Usage::

    python tools/make_runc_fixtures.py --llama2c /tmp/llama2c
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = REPO.parent / "shared" / "models"
FIXTURES = REPO / "tests" / "fixtures"
OUT_JSON = FIXTURES / "runc_reference.json"
Q80_NAME = "stories260K_q80.bin"
CFLAGS = ["-O3", "-march=native"]

# sha256 of llama2.c sources this script has been run with, and where they are from.
KNOWN_SOURCES = {
    "f2f285c958c0e73516c79c7a2aa15a5d8a38138af30b14c30fd74adf8afcdf14": (
        "run.c at karpathy/llama2.c commit 7ac65cb2c2b169050747be92011b7bebdd1b4544"
    ),
    "bc182560105ff5d3b871ce77274ff756dfceb43fd8f808216e7aad1e42dfc572": (
        "runq.c at karpathy/llama2.c commit b233b77058c926ef38c41129d461aae34fb8a0c8"
    ),
}

TOKENIZERS = [("tok512.bin", 512), ("llama2-tokenizer.bin", 32000)]

SAMPLE_TEXTS = [
    "Once upon a time, a little dog",
    "Hello world",
    "",
    " leading space",
    "trailing space ",
    "  two leading spaces",
    "multiple   spaces   between   words",
    "   ",
    "line one\nline two\n",
    "\n",
    "tabs\tbetween\twords",
    "Windows line end\r\n",
    "1234567890",
    "The year 2024 had 366 days; pi is 3.14159.",
    "Hello, world! How's it going? (Fine.) [ok] {x} #@$%^&*_+=|~`",
    "café naïve résumé façade Ångström",
    "Ünïcödé: Straße, mañana, øre",
    "Ελληνικά και русский текст",
    "日本語のテキストです",
    "你好\uff0c世界\uff01",  # fullwidth comma and exclamation mark
    "emoji: 😀 🦙 👍🏽 🇫🇷",
    "<s>",
    "Hello <s> world </s> again",
    "[INST] What is the capital of France? [/INST]",
    "[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nHi there [/INST]",
    "I believe the meaning of life is",
    "Simply put, the theory of relativity states that ",
    (
        "Lily and Ben were best friends. Every morning they walked to the park "
        "near their house, where the big oak tree grew. One day, they found a "
        'small red box under the tree. "What is inside?" asked Ben. Lily shook '
        "it gently and heard a soft jingle. They opened it together and found "
        "three shiny keys, a map, and a note that said: Follow the river to the "
        "old mill. The friends looked at each other, smiled, and started to "
        "walk. The sun was warm, the birds sang, and the day felt full of magic."
    ),
]

GREEDY_RUNS: list[tuple[str | None, int]] = [
    ("Once upon a time, a little dog", 256),
    ("Lily", 100),
    ("The", 64),
    (None, 256),
]
GREEDY_Q8_RUN = ("Once upon a time", 128)


def load_format_module() -> ModuleType:
    """Import tests/support/llama2c_format.py without touching sys.path."""
    path = REPO / "tests" / "support" / "llama2c_format.py"
    spec = importlib.util.spec_from_file_location("llama2c_format", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sha256(path: Path) -> str:
    """Return the hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compile_c(cc: str, source: Path, output: Path, extra: list[str]) -> None:
    """Compile one C file into ``output`` (single-threaded, no OpenMP)."""
    cmd = [cc, *CFLAGS, *extra, str(source), "-lm", "-o", str(output)]
    subprocess.run(cmd, check=True)


def run_stdout(cmd: list[str], cwd: Path) -> str:
    """Run a command and return its stdout, which must be valid UTF-8."""
    result = subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return result.stdout.decode("utf-8")


def encodings(harness: Path, models: Path, work: Path) -> dict[str, Any]:
    """Tokenize SAMPLE_TEXTS with run.c's encode() for every tokenizer."""
    strings_file = work / "strings.bin"
    strings_file.write_bytes(b"".join(t.encode("utf-8") + b"\0" for t in SAMPLE_TEXTS))
    out: dict[str, Any] = {}
    for name, vocab_size in TOKENIZERS:
        text = run_stdout(
            [str(harness), str(models / name), str(vocab_size), str(strings_file)],
            work,
        )
        rows = [json.loads(line) for line in text.splitlines()]
        if [row["index"] for row in rows] != list(range(len(SAMPLE_TEXTS))):
            raise RuntimeError(f"harness output for {name} is incomplete")
        # lengths are equal (checked above), so zip pairs every text with its row
        pairs = zip(SAMPLE_TEXTS, rows, strict=True)
        out[name] = [{"text": t, "ids": row["ids"]} for t, row in pairs]
    return out


def to_json(data: dict[str, Any]) -> str:
    """Serialize indented, but keep every list of integers on one line."""
    text = json.dumps(data, indent=1, ensure_ascii=False)
    numbers = re.compile(r"\[\n\s*(-?\d+(?:,\n\s*-?\d+)*)\n\s*\]")
    return numbers.sub(lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", text)


def greedy_args(prompt: str | None, steps: int) -> list[str]:
    """Command-line flags for a greedy run (no ``-i`` when there is no prompt)."""
    args = ["-z", "tok512.bin", "-t", "0", "-n", str(steps)]
    if prompt is not None:
        args += ["-i", prompt]
    return args


def main() -> None:
    """Build the reference binaries, run them and write the fixture JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama2c", type=Path, required=True, help="dir with run.c and runq.c")
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS)
    parser.add_argument("--out", type=Path, default=OUT_JSON)
    parser.add_argument("--cc", default="gcc")
    args = parser.parse_args()

    run_c = args.llama2c / "run.c"
    runq_c = args.llama2c / "runq.c"
    for path in (run_c, runq_c):
        if not path.is_file():
            sys.exit(f"missing {path}")
    if shutil.which(args.cc) is None:
        sys.exit(f"C compiler {args.cc!r} not found")
    models = args.models.resolve()
    fmt = load_format_module()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run_bin, runq_bin, harness = work / "run", work / "runq", work / "harness"
        compile_c(args.cc, run_c, run_bin, [])
        compile_c(args.cc, runq_c, runq_bin, [])
        compile_c(
            args.cc,
            REPO / "tools" / "runc_harness.c",
            harness,
            ["-DTESTING", f"-I{args.llama2c.resolve()}"],
        )

        fixture: dict[str, Any] = {
            "runc_commit": {
                "repo": "karpathy/llama2.c",
                "files": {
                    path.name: {
                        "sha256": sha256(path),
                        "source": KNOWN_SOURCES.get(sha256(path), "unknown"),
                    }
                    for path in (run_c, runq_c)
                },
                "build": f"{args.cc} {' '.join(CFLAGS)} FILE.c -lm (no OpenMP)",
                "generated_by": "tools/make_runc_fixtures.py",
            },
            "tokenizer_vocab_sizes": dict(TOKENIZERS),
            "encodings": encodings(harness, models, work),
        }

        model = "stories260K.bin"
        fixture["greedy"] = [
            {
                "model": model,
                "prompt": prompt,
                "steps": steps,
                "args": greedy_args(prompt, steps),
                "stdout": run_stdout([str(run_bin), model, *greedy_args(prompt, steps)], models),
            }
            for prompt, steps in GREEDY_RUNS
        ]

        config, weights = fmt.read(models / model)
        group_size = fmt.runq_exact_group_size(config["dim"], config["hidden_dim"], 64)
        q80 = FIXTURES / Q80_NAME
        fmt.write(q80, config, weights, version=2, group_size=group_size)
        prompt, steps = GREEDY_Q8_RUN
        q8_args = greedy_args(prompt, steps)
        fixture["greedy_q8"] = {
            "model": f"tests/fixtures/{Q80_NAME}",
            "model_sha256": sha256(q80),
            "group_size": group_size,
            "prompt": prompt,
            "steps": steps,
            "args": q8_args,
            "stdout": run_stdout([str(runq_bin), str(q80), *q8_args], models),
            "note": (
                "export.py's backoff only checks dim, so it would keep group size "
                f"64 for dim {config['dim']}; runq.c then drops the last "
                f"{config['hidden_dim'] % 64} of {config['hidden_dim']} inputs of "
                "every w2 row and its output degenerates. The group size used "
                "here divides both dim and hidden_dim, so runq.c computes a true "
                "Q8_0 forward pass."
            ),
        }

    args.out.write_text(to_json(fixture) + "\n", encoding="utf-8")
    print(f"wrote {args.out} and {FIXTURES / Q80_NAME}")


if __name__ == "__main__":
    main()
