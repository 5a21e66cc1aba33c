"""Models from every source Model opens: GGUF files with their own
vocabulary, Hugging Face directories with a tokenizer.json and a chat
template, tinyllm files converted from them, and the hub cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinyllm

import hf_models
from conftest import MODELS

#: The real vocabulary each tiny model is given (its ``tokenizer.json`` is
#: made from llama.cpp's vocabulary file).
VOCABS = {
    "llama2": "ggml-vocab-llama-spm.gguf",
    "llama3": "ggml-vocab-llama-bpe.gguf",
    "qwen2": "ggml-vocab-qwen2.gguf",
}
TEMPLATES = {
    "llama3": "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "qwen2": "Qwen-Qwen2.5-7B-Instruct.jinja",
}


def write_model_dir(name: str, path: Path, dtype: str = "float32") -> Path:
    """A tiny random model of the spec ``name`` as a complete Hugging Face
    directory: weights, config, tokenizer.json and tokenizer_config.json."""
    spec = hf_models.spec(name)
    hf_models.write_hf_dir(spec, path, dtype=dtype)
    tok = tinyllm.Tokenizer.from_file(MODELS / "vocab" / VOCABS[name])
    text, special = tok.to_json_str()
    (path / "tokenizer.json").write_text(text, encoding="utf-8")
    config: dict[str, object] = {"add_bos_token": special["add_bos"]}
    for key, i in (("bos_token", special["bos_id"]), ("eos_token", special["eos_id"])):
        if i is not None:
            config[key] = tok.id_to_token(i)
    if name in TEMPLATES:
        template = (MODELS / "templates" / TEMPLATES[name]).read_text(encoding="utf-8")
        config["chat_template"] = template
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return path


def test_stories260k_gguf_tells_run_c_s_story_with_its_own_vocabulary(golden: str) -> None:
    m = tinyllm.Model(MODELS / "stories260K.gguf")
    assert m.info["format"] == "GGUF"
    assert m.tokenizer.vocab_size == 512
    assert m.generate("", max_tokens=256, temperature=0) + "\n" == golden
    reference = tinyllm.Model.default()
    text = "Once upon a time, a little dog"
    assert m.tokenize(text) == reference.tokenize(text)
    assert m.generate(text, max_tokens=40, temperature=0) == reference.generate(
        text, max_tokens=40, temperature=0
    )


@pytest.mark.parametrize("name", sorted(VOCABS))
def test_streamed_text_is_the_decoded_tokens(tmp_path: Path, name: str) -> None:
    # The engine streams text from a table of token bytes; it must spell
    # exactly what the tokenizer decodes, whatever the vocabulary's kind:
    # the text the new tokens add to the prompt's.
    m = tinyllm.Model(write_model_dir(name, tmp_path / name))
    prompt = m.tokenize("Hello world, ")
    before = m.tokenizer.decode(prompt)
    for seed in range(3):
        stream = m.stream(prompt, max_tokens=40, temperature=1.5, seed=seed)
        text = "".join(stream)
        assert before + text == m.tokenizer.decode(prompt + stream.tokens)


@pytest.mark.parametrize("name", ["llama3", "qwen2"])
def test_a_hugging_face_directory_converts_to_a_self_contained_file(
    tmp_path: Path, name: str
) -> None:
    src = write_model_dir(name, tmp_path / "src", dtype="bfloat16")
    original = tinyllm.Model(src)
    dst = tmp_path / f"{name}.tllm"
    # f16 holds bf16 weights of this size exactly: the logits must agree.
    report = tinyllm.convert(src, dst, "f16", progress=False)
    assert report["dtypes"]
    converted = tinyllm.Model(dst)
    assert converted.info["family"] == original.info["family"] == hf_models.spec(name).model_type
    text = "Ünïcode <|im_start|> and\nlines"
    assert converted.tokenize(text) == original.tokenize(text)
    assert converted.tokenizer.eos_ids == original.tokenizer.eos_ids
    assert converted.info["chat_template"] == original.tokenizer.chat_template
    ids = original.tokenize("The quick brown fox jumps over the lazy dog")
    want, got = original.logits(ids), converted.logits(ids)
    scale = float(np.abs(want).max())
    assert np.abs(got - want).max() < 1e-4 * scale
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_from_pretrained_converts_once_from_the_hub_cache(tmp_path: Path) -> None:
    # A hub cache laid out as huggingface_hub keeps it, used offline.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny--qwen2"
    write_model_dir("qwen2", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    script = (
        "import tinyllm, sys\n"
        "m = tinyllm.Model.from_pretrained('tiny/qwen2', quant='q8_0')\n"
        "print(m.info['path'])\n"
        "print(m.generate('Hi', max_tokens=8, temperature=0))\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "TINYLLM_CACHE": str(tmp_path / "tinyllm"),
    }
    runs = [
        subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        for _ in range(2)
    ]
    path = runs[0].stdout.splitlines()[0]
    assert path == str(tmp_path / "tinyllm" / "tiny--qwen2" / commit / "model-q8_0.tllm")
    assert runs[1].stdout == runs[0].stdout
    made = os.stat(path).st_mtime_ns
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True)
    assert os.stat(path).st_mtime_ns == made  # reused, not converted again
    with pytest.raises(ValueError, match="owner/name"):
        tinyllm.Model.from_pretrained("no-slash")


def test_unknown_model_type_and_missing_tensor_are_named(tmp_path: Path) -> None:
    spec = hf_models.spec("llama2")
    d = hf_models.write_hf_dir(spec, tmp_path / "a", config_overrides={"model_type": "gpt_bigcode"})
    with pytest.raises(tinyllm.ModelFormatError, match="unknown model_type 'gpt_bigcode'"):
        tinyllm.Model(d)
    d = hf_models.write_hf_dir(
        spec, tmp_path / "b", drop=["model.layers.1.self_attn.k_proj.weight"]
    )
    with pytest.raises(
        tinyllm.ModelFormatError, match=r"'model\.layers\.1\.self_attn\.k_proj\.weight' is missing"
    ):
        tinyllm.Model(d)


def test_transformers_5_rope_parameters_are_read(tmp_path: Path) -> None:
    # transformers 5 writes rope_theta and the scaling inside rope_parameters.
    old = write_model_dir("llama3", tmp_path / "old")
    new = write_model_dir("llama3", tmp_path / "new")
    config = json.loads((new / "config.json").read_text())
    params = {"rope_theta": config.pop("rope_theta"), **config.pop("rope_scaling")}
    config["rope_parameters"] = params
    (new / "config.json").write_text(json.dumps(config))
    assert params["rope_type"] == "llama3" and params["rope_theta"] != 10000
    ids = list(range(100, 140))
    np.testing.assert_array_equal(tinyllm.Model(new).logits(ids), tinyllm.Model(old).logits(ids))
