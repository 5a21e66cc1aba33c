"""GGUF files made by llama.cpp: the model, its vocabulary and its chat
template, read straight from the file.

The references in tests/fixtures/gguf were computed without tinyllm (see
tools/make_gguf_fixtures.py): llama.cpp quantized stories260K, and a
float64 NumPy forward pass ran over the weights as llama.cpp's own Python
library dequantizes them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tinyllm
from tinyllm._export import to_hf_rope_layout

from conftest import FIXTURES, MODELS, f32_model

GGUF = FIXTURES / "gguf"
REFERENCE = json.loads((GGUF / "reference.json").read_text(encoding="utf-8"))

#: Largest |logit error| over the largest |logit|. Float weights compute in
#: f32 (rounding only); quantized weights meet activations quantized to int8
#: per block of 32, as llama.cpp's CPU kernels do, which costs about 1-2%.
TOLERANCE = {"F16": 1e-5, "BF16": 1e-5, "Q8_0": 0.03, "Q4_0": 0.04, "Q4_1": 0.04}


@pytest.mark.parametrize("kind", sorted(REFERENCE["cases"]))
def test_logits_of_llama_cpp_quantized_files(kind: str) -> None:
    case = REFERENCE["cases"][kind]
    m = f32_model(GGUF / case["file"])
    assert m.info["format"] == "GGUF"
    got = m.logits(REFERENCE["tokens"])
    want = np.asarray(case["logits"])
    scale = float(np.abs(want).max())
    assert np.abs(got - want).max() <= TOLERANCE[kind] * scale
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9


def test_quantized_gguf_tells_a_story_like_the_original(golden: str) -> None:
    # Greedy text from 8-bit weights stays on the f32 model's story for a while.
    m = f32_model(GGUF / "stories260K-Q8_0.gguf")
    text = m.generate("", max_tokens=40, temperature=0)
    assert len(text) >= 60  # (an empty story would match any prefix)
    assert golden.startswith(text[:60])


def test_the_vocabulary_comes_from_the_file(models: Path) -> None:
    m = f32_model(GGUF / "stories260K-Q4_0.gguf")
    ref = tinyllm.Model.default()
    for text in ["Once upon a time", "Tim and Lily played. The end!", " spaces  and\nlines"]:
        assert m.tokenize(text) == ref.tokenize(text)
    assert m.tokenizer.bos_id == 1 and m.tokenizer.eos_id == 2


def test_a_cut_file_is_an_error_naming_it(tmp_path: Path) -> None:
    data = (GGUF / "stories260K-Q4_0.gguf").read_bytes()
    # (the last 16 bytes are alignment padding, which a reader may lack)
    for cut in [3, 24, 200, len(data) // 2, len(data) - 20]:
        p = tmp_path / f"cut{cut}.gguf"
        p.write_bytes(data[:cut])
        with pytest.raises(tinyllm.ModelFormatError, match=str(p)):
            f32_model(p, MODELS / "tok512.bin")


#: Hugging Face tensor names (per block) -> GGUF's.
HF_TO_GGUF = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf: str) -> str:
    top = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
    }
    if hf in top:
        return top[hf]
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, i, rest = hf.split(".", 3)
    return f"blk.{i}.{HF_TO_GGUF[rest]}"


@pytest.mark.parametrize("name", ["qwen2", "qwen3"])
def test_qwen_gguf_files_give_transformers_logits(tmp_path: Path, name: str) -> None:
    # llama.cpp writes Qwen models with their Hugging Face rotary layout and
    # names; the weights here are the transformers fixtures' own.
    import gguf_writer
    import hf_models

    spec = hf_models.spec(name)
    meta = block_meta(name, spec)
    vocab = tinyllm._tinyllm.gguf_metadata(str(MODELS / "vocab" / "ggml-vocab-qwen2.gguf"))
    meta.update({k: v for k, v in vocab.items() if k.startswith("tokenizer.")})
    tensors = [(gguf_name(k), v) for k, v in spec.weights().items()]
    path = tmp_path / f"{name}.gguf"
    gguf_writer.write(path, meta, tensors)

    fixture = json.loads((FIXTURES / "hf" / f"{name}.json").read_text(encoding="utf-8"))
    m = f32_model(path)
    assert m.info["family"] == name
    got = m.logits(fixture["input_ids"])[:, fixture["vocab_ids"]]
    want = np.asarray(fixture["logits"])
    scale = np.asarray(fixture["max_abs_logit"])[:, None]
    assert (np.abs(got - want) / scale).max() < 1e-4


def test_a_yarn_gguf_file_matches_its_directory(tmp_path: Path) -> None:
    # YaRN as llama.cpp's converter writes it (rope.scaling.* keys) against
    # the same model as a Hugging Face directory with YaRN in config.json
    # (whose reading transformers checks through the OLMo 3 fixture), and
    # both away from the unscaled model's logits. With
    # head_dim 32 and theta 1e6 the ramp runs over pairs 3 to 8 of 16.
    import dataclasses

    import gguf_writer
    import hf_models
    from test_hf_models import add_tokenizer

    base = hf_models.SPECS["qwen3"]
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}
    spec = dataclasses.replace(base, config=dict(base.config, rope_scaling=yarn), name="qwen3-yarn")
    meta = block_meta("qwen3", spec)
    meta["qwen3.rope.scaling.type"] = "yarn"
    meta["qwen3.rope.scaling.factor"] = 4.0
    meta["qwen3.rope.scaling.original_context_length"] = 4096
    vocab = tinyllm._tinyllm.gguf_metadata(str(MODELS / "vocab" / "ggml-vocab-qwen2.gguf"))
    meta.update({k: v for k, v in vocab.items() if k.startswith("tokenizer.")})
    path = tmp_path / "qwen3-yarn.gguf"
    gguf_writer.write(path, meta, [(gguf_name(k), v) for k, v in spec.weights().items()])
    directory = add_tokenizer(hf_models.write_hf_dir(spec, tmp_path / "dir"), "qwen3")

    fixture = json.loads((FIXTURES / "hf" / "qwen3.json").read_text(encoding="utf-8"))
    ids = fixture["input_ids"]
    got, want = f32_model(path).logits(ids), f32_model(directory).logits(ids)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    # and the scaling shows: transformers' logits without it are far away
    unscaled = np.asarray(fixture["logits"])
    subset = want[:, fixture["vocab_ids"]]
    assert np.abs(unscaled - subset).max() > 1e-2 * np.abs(subset).max()


def block_meta(arch: str, spec: Any) -> dict[str, object]:
    """The GGUF keys every Llama-like block has, for the Hugging Face spec
    ``spec`` written as architecture ``arch``."""
    c = spec.config
    return {
        "general.architecture": arch,
        f"{arch}.block_count": c["num_hidden_layers"],
        f"{arch}.context_length": c["max_position_embeddings"],
        f"{arch}.embedding_length": c["hidden_size"],
        f"{arch}.feed_forward_length": c["intermediate_size"],
        f"{arch}.attention.head_count": c["num_attention_heads"],
        f"{arch}.attention.head_count_kv": c["num_key_value_heads"],
        f"{arch}.attention.key_length": spec.head_dim,
        f"{arch}.rope.freq_base": float(c.get("rope_theta", 10000.0)),
        f"{arch}.attention.layer_norm_rms_epsilon": float(c["rms_norm_eps"]),
    }


def interleave_rotary_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """Q/K rows as llama.cpp's converter stores Llama-like models: each
    head's pairs ``(j, j + head_dim / 2)`` moved next to each other (the
    inverse of the exporter's ``to_hf_rope_layout``)."""
    order = to_hf_rope_layout(np.arange(w.shape[0]), heads)
    return w[np.argsort(order)]


def test_granite_gguf_file_gives_transformers_logits(tmp_path: Path) -> None:
    # The multipliers come from granite.* keys, the Q/K rows interleaved as
    # llama.cpp's converter writes them; the weights are the fixture's own.
    import gguf_writer
    import hf_models

    spec = hf_models.spec("granite")
    c = spec.config
    meta = block_meta("granite", spec)
    meta.update(
        {
            "granite.vocab_size": c["vocab_size"],
            "granite.embedding_scale": float(c["embedding_multiplier"]),
            "granite.residual_scale": float(c["residual_multiplier"]),
            "granite.attention.scale": float(c["attention_multiplier"]),
            "granite.logit_scale": float(c["logits_scaling"]),
        }
    )
    # Llama 3's vocabulary, cut to Granite's size (as the directory tests
    # borrow it): the first ids, the merges among them, no BOS or EOS.
    vocab = tinyllm._tinyllm.gguf_metadata(str(MODELS / "vocab" / "ggml-vocab-llama-bpe.gguf"))
    n = c["vocab_size"]
    tokens = vocab["tokenizer.ggml.tokens"][:n]
    kept = set(tokens)
    meta.update(
        {
            "tokenizer.ggml.model": vocab["tokenizer.ggml.model"],
            "tokenizer.ggml.pre": vocab["tokenizer.ggml.pre"],
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": vocab["tokenizer.ggml.token_type"][:n],
            "tokenizer.ggml.merges": [
                m
                for m in vocab["tokenizer.ggml.merges"]
                if {*m.split(" "), m.replace(" ", "")} <= kept
            ],
        }
    )
    heads = {"q_proj": c["num_attention_heads"], "k_proj": c["num_key_value_heads"]}
    tensors = []
    for k, v in spec.weights().items():
        proj = k.split(".")[-2]
        if proj in heads:
            v = interleave_rotary_rows(v, heads[proj])
        tensors.append((gguf_name(k), v))
    path = tmp_path / "granite.gguf"
    gguf_writer.write(path, meta, tensors)

    fixture = json.loads((FIXTURES / "hf" / "granite.json").read_text(encoding="utf-8"))
    m = f32_model(path)
    assert m.info["family"] == "granite"
    got = m.logits(fixture["input_ids"])[:, fixture["vocab_ids"]]
    want = np.asarray(fixture["logits"])
    scale = np.asarray(fixture["max_abs_logit"])[:, None]
    assert (np.abs(got - want) / scale).max() < 1e-4


#: Gemma's and OLMo 2's block tensors whose GGUF names differ from
#: Llama's mapping.
POST_NORMS_TO_GGUF = {
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
}
#: Phi-3's fused projections, as llama.cpp keeps them (gate and up are one
#: `ffn_up` of twice the hidden size).
FUSED_TO_GGUF = {
    "self_attn.qkv_proj.weight": "attn_qkv.weight",
    "mlp.gate_up_proj.weight": "ffn_up.weight",
}


@pytest.mark.parametrize(
    ("name", "arch"),
    [
        ("gemma2", "gemma2"),
        ("gemma3", "gemma3"),
        ("olmo2", "olmo2"),
        ("phi3", "phi3"),
        ("phi4_mini", "phi3"),
    ],
)
def test_gguf_files_of_other_blocks_match_their_directories(
    tmp_path: Path, name: str, arch: str
) -> None:
    # As llama.cpp's converter writes Gemma, OLMo 2 and Phi-3: Gemma's norms
    # hold 1 + w, the rows keep Hugging Face's rotary layout, Phi-3's
    # projections stay fused, the settings are {arch}.* keys. llama.cpp has
    # no key for query_pre_attn_scalar (it scales by 1 / sqrt(head_dim) but
    # in the 27B models), so the model here uses head_dim; its directory is
    # the reference.
    import dataclasses

    import gguf_writer
    import hf_models
    from test_hf_models import add_tokenizer

    base = hf_models.SPECS[name]
    spec = base
    if base.is_gemma:
        config = dict(base.config, query_pre_attn_scalar=base.head_dim)
        spec = dataclasses.replace(base, config=config, name=name + "-qpas")
    c = spec.config
    meta = block_meta(arch, spec)
    meta[f"{arch}.attention.value_length"] = spec.head_dim
    if base.is_gemma or arch == "phi3":
        meta[f"{arch}.attention.sliding_window"] = c["sliding_window"]
    if name == "gemma2":
        meta[f"{arch}.attn_logit_softcapping"] = float(c["attn_logit_softcapping"])
        meta[f"{arch}.final_logit_softcapping"] = float(c["final_logit_softcapping"])
    elif name == "gemma3":
        # layer 0 slides and layer 1 is global: a pattern of 2, not 6
        meta[f"{arch}.attention.sliding_window_pattern"] = 2
        meta[f"{arch}.rope.freq_base_swa"] = float(c["rope_local_base_freq"])
        meta[f"{arch}.rope.scaling.type"] = "linear"
        meta[f"{arch}.rope.scaling.factor"] = float(c["rope_scaling"]["factor"])
    vocab = tinyllm._tinyllm.gguf_metadata(str(MODELS / "vocab" / "ggml-vocab-llama-spm.gguf"))
    meta.update({k: v for k, v in vocab.items() if k.startswith("tokenizer.")})
    added = spec.vocab_size - len(vocab["tokenizer.ggml.tokens"])  # Phi-3's 64
    meta["tokenizer.ggml.tokens"] = [*vocab["tokenizer.ggml.tokens"]] + [
        f"<|added_{i}|>" for i in range(added)
    ]
    meta["tokenizer.ggml.scores"] = [*vocab["tokenizer.ggml.scores"]] + [0.0] * added
    meta["tokenizer.ggml.token_type"] = [*vocab["tokenizer.ggml.token_type"]] + [4] * added
    renamed = FUSED_TO_GGUF if arch == "phi3" else POST_NORMS_TO_GGUF
    tensors = []
    if name == "phi4_mini":  # as llama.cpp's converter writes its rotary settings
        scaling, original = c["rope_scaling"], c["original_max_position_embeddings"]
        extension = c["max_position_embeddings"] / original
        meta[f"{arch}.rope.scaling.original_context_length"] = original
        rotary = int(spec.head_dim * c["partial_rotary_factor"])
        meta[f"{arch}.rope.dimension_count"] = rotary
        meta[f"{arch}.rope.scaling.attn_factor"] = math.sqrt(
            1 + math.log(extension) / math.log(original)
        )
        for kind in ("long", "short"):
            factors = np.asarray(scaling[f"{kind}_factor"], dtype=np.float32)
            tensors.append((f"rope_factors_{kind}.weight", factors))
    for k, v in spec.weights().items():
        rest = k.split(".", 3)[-1]
        if k.endswith("norm.weight") and base.is_gemma:
            v = v + np.float32(1.0)
        if rest in renamed:
            tensors.append((f"blk.{k.split('.')[2]}.{renamed[rest]}", v))
        else:
            tensors.append((gguf_name(k), v))
    path = tmp_path / f"{name}.gguf"
    gguf_writer.write(path, meta, tensors)
    directory = add_tokenizer(hf_models.write_hf_dir(spec, tmp_path / "dir"), name)

    fixture = json.loads((FIXTURES / "hf" / f"{name}.json").read_text(encoding="utf-8"))
    ids = [*fixture["input_ids"], *fixture["greedy"]]
    got, want = f32_model(path), f32_model(directory)
    assert got.info["family"] == want.info["family"]
    a, b = got.logits(ids), want.logits(ids)
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
