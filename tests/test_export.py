"""tinyllm.export and tinyllm.export_model: your own weights as tinyllm files.

The exported files must give the logits of the framework the weights came
from, computed in that framework's own rotary layout:

* llama2.c-named NumPy weights (interleaved rotary pairs) against the
  float64 NumPy oracle of tests/support/numpy_llama.py, which follows
  llama2.c's run.c;
* Hugging Face-named weights (half-split pairs) of every family against
  ``transformers``' logits stored in tests/fixtures/hf (the weights of
  tests/support/hf_models.py);
* PyTorch modules (a llama2.c-style ``Transformer``, ``LlamaForCausalLM``,
  ``Qwen3ForCausalLM``) against PyTorch's logits stored in
  tests/fixtures/export by tools/make_export_fixtures.py, and, where torch
  is installed, against the live modules (bfloat16 weights included).

Then quantized exports, vocabularies of every kind, and bad input.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tinyllm
from tinyllm._export import hf_config, to_hf_rope_layout

import export_models
import hf_models
import numpy_llama
import test_hf_models as hf_tests
from conftest import MODELS, ROOT, f32_model

#: Exported f32 files against the source's logits: the largest |difference|
#: over the largest |logit| of the position.
TOL = 1e-5
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "export"
TORCH_CASES = sorted(p.stem for p in FIXTURES.glob("*.json"))
HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed")

#: A llama2.c config: grouped-query attention, 8 heads of 8, and a
#: feed-forward width (100) that is not a multiple of 32.
LLAMA2C: dict[str, Any] = {
    "dim": 64,
    "n_layers": 2,
    "n_heads": 8,
    "n_kv_heads": 2,
    "vocab_size": 512,
    "hidden_dim": 100,
    "max_seq_len": 128,
    "norm_eps": 1e-5,
}
IDS = [1, 403, 7, 260, 511, 3, 88, 88, 150, 42, 300, 9, 64, 2, 17, 499]

#: llama2.c's names and Hugging Face's, written out here (not taken from
#: the code under test).
RENAME = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
}


def to_hf_names(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, w in weights.items():
        if name.startswith("layers."):
            _, i, rest = name.split(".", 2)
            out[f"model.layers.{i}.{RENAME[rest]}"] = w
        else:
            out[RENAME[name]] = w
    return out


def llama2c_weights(seed: int = 0, config: dict[str, Any] = LLAMA2C) -> dict[str, np.ndarray]:
    return export_models.random_weights(export_models.llama2c_shapes(config), seed)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """The largest |difference| over the largest |logit|, any position."""
    want = np.asarray(want, dtype=np.float64)
    err = np.abs(got.astype(np.float64) - want).max(-1) / np.abs(want).max(-1)
    return float(err.max())


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".tinyllm-export"))


@pytest.fixture(scope="module")
def vocab512() -> Path:
    path = MODELS / "tok512.bin"
    if not path.is_file():
        pytest.fail(f"the shared test models are missing: {path}")
    return path


# -- the rotary layouts ---------------------------------------------------------------


def test_interleaved_rows_are_reordered_head_by_head() -> None:
    # Two heads of 4: pairs (0,1), (2,3) become (0,2), (1,3) in each head.
    w = np.arange(8, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    got = to_hf_rope_layout(w, 2)
    assert got[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    # One head of 6 (a bias vector): rows 0, 2, 4 first, then 1, 3, 5.
    assert to_hf_rope_layout(np.arange(6.0), 1).tolist() == [0, 2, 4, 1, 3, 5]
    with pytest.raises(ValueError, match="heads of an even size"):
        to_hf_rope_layout(np.zeros((6, 2)), 2)


@pytest.mark.parametrize("classifier", ["separate", "absent", "a copy of the embeddings"])
def test_llama2c_names_give_the_numpy_oracles_logits(
    tmp_path: Path, vocab512: Path, classifier: str
) -> None:
    w = llama2c_weights()
    if classifier == "absent":
        del w["output.weight"]
    elif classifier != "separate":
        w["output.weight"] = w["tok_embeddings.weight"].copy()
    out = tmp_path / "m.tllm"
    report = tinyllm.export(w, LLAMA2C, out, tokenizer=vocab512, quant="f32")
    assert report["file_bytes"] == out.stat().st_size
    m = f32_model(out)
    assert m.config.hidden_dim == 100 and m.config.n_kv_heads == 2 and m.config.seq_len == 128
    names = {t[0] for t in tinyllm.info(out)["tensors"]}
    assert ("output" in names) == (classifier == "separate")
    want = numpy_llama.forward(LLAMA2C, export_models.oracle_names(w), IDS)
    assert np.abs(want).max(-1).min() > 10  # spread logits
    assert relative_error(m.logits(IDS), want) <= TOL
    assert leftovers(tmp_path) == []


def test_without_the_reordering_the_logits_are_wrong(tmp_path: Path, vocab512: Path) -> None:
    # The same numbers under Hugging Face names are read as half-split
    # pairs: the tolerance must see the difference the reordering makes.
    w = llama2c_weights()
    out = tmp_path / "m.tllm"
    tinyllm.export(to_hf_names(w), LLAMA2C, out, tokenizer=vocab512, quant="f32")
    want = numpy_llama.forward(LLAMA2C, export_models.oracle_names(w), IDS)
    assert relative_error(f32_model(out).logits(IDS), want) > 1000 * TOL


def test_torch_tensors_in_bfloat16_export_exactly(tmp_path: Path, vocab512: Path) -> None:
    torch = pytest.importorskip("torch")
    w = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in llama2c_weights().items()}
    widened = {k: v.float().numpy() for k, v in w.items()}
    out = tmp_path / "m.tllm"
    tinyllm.export(w, LLAMA2C, out, tokenizer=vocab512, quant="f32")
    want = numpy_llama.forward(LLAMA2C, export_models.oracle_names(widened), IDS)
    assert relative_error(f32_model(out).logits(IDS), want) <= TOL


def test_any_array_like_and_float64_export(tmp_path: Path, vocab512: Path) -> None:
    class Wrapped:
        def __init__(self, a: np.ndarray) -> None:
            self.a = a

        def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
            return self.a if dtype is None else self.a.astype(dtype)

    w = llama2c_weights()
    given = {k: Wrapped(v.astype(np.float64)) for k, v in w.items()}
    out = tmp_path / "m.tllm"
    tinyllm.export(given, LLAMA2C, out, tokenizer=vocab512, quant="f32")
    want = numpy_llama.forward(LLAMA2C, export_models.oracle_names(w), IDS)
    assert relative_error(f32_model(out).logits(IDS), want) <= TOL


# -- Hugging Face names, against transformers ------------------------------------------

SPECS = sorted(hf_models.SPECS)


@pytest.fixture(scope="module")
def hf_export(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """Exports a spec with a recipe (once) and returns the file."""
    directory = tmp_path_factory.mktemp("hf-exports")
    made: dict[tuple[str, str], Path] = {}

    def get(name: str, quant: str) -> Path:
        if (name, quant) not in made:
            spec = hf_models.SPECS[name]
            tok = hf_tests.spec_tokenizer(name)
            out = directory / f"{name}-{quant}.tllm"
            tinyllm.export(spec.weights(), spec.config, out, tokenizer=tok, quant=quant)
            made[name, quant] = out
        return made[name, quant]

    return get


@pytest.mark.parametrize("name", SPECS)
def test_hugging_face_names_give_transformers_logits(
    hf_export: Callable[[str, str], Path], name: str
) -> None:
    case = hf_tests.load_case(name)
    assert case["dtype"] == "float32" and case["spec"] == name
    m = f32_model(hf_export(name, "f32"), context_length=64)
    assert m.info["family"] == hf_models.SPECS[name].model_type
    got = m.logits(case["input_ids"])
    assert hf_tests.relative_errors(got, case).max() <= TOL
    assert got.argmax(-1).tolist() == case["argmax"]
    # the vocabulary travelled with it
    source = hf_tests.spec_tokenizer(name)
    text = "Hello <|im_start|> wörld\n  ok"
    assert m.tokenize(text) == source.encode(text)
    assert (m.tokenizer.bos_id, m.tokenizer.eos_ids) == (source.bos_id, source.eos_ids)


@pytest.mark.parametrize("name", ["llama2", "qwen2"])
def test_quantized_exports_stay_close(hf_export: Callable[[str, str], Path], name: str) -> None:
    case = hf_tests.load_case(name)
    seq, argmax = hf_tests.sequence(case), hf_tests.reference_argmax(case)
    q8 = f32_model(hf_export(name, "q8_0"), context_length=64)
    got = q8.logits(seq)
    top1 = float(np.mean(got.argmax(-1) == argmax))
    err = hf_tests.relative_errors(got, case).max()
    assert err <= hf_tests.Q8_0_MAX_REL and top1 >= hf_tests.Q8_0_MIN_TOP1, (err, top1)
    q4 = f32_model(hf_export(name, "q4"), context_length=64)
    got = q4.logits(seq)
    ref = np.array(case["logits"], dtype=np.float64)
    sub = got[: len(case["input_ids"]), case["vocab_ids"]].astype(np.float64)
    rms = np.sqrt(((sub - ref) ** 2).mean(-1)) / np.sqrt((ref**2).mean(-1))
    top1 = float(np.mean(got.argmax(-1) == argmax))
    assert rms.max() <= hf_tests.Q4_RMS_REL and top1 >= hf_tests.Q4_MIN_TOP1, (rms.max(), top1)
    assert rms.max() > 0


def test_rows_that_are_not_blocks_of_32_stay_f16(tmp_path: Path, vocab512: Path) -> None:
    out = tmp_path / "m.tllm"
    tinyllm.export(llama2c_weights(), LLAMA2C, out, tokenizer=vocab512, quant="q8_0")
    dtypes = {name: dtype for name, dtype, _, _ in tinyllm.info(out)["tensors"]}
    assert dtypes["blk.0.ffn_down"] == "f16"  # rows of 100
    assert dtypes["blk.0.ffn_gate"].startswith("q8_0")  # rows of 64
    assert dtypes["blk.1.attn_q"].startswith("q8_0")


# -- PyTorch modules, from stored fixtures ---------------------------------------------


def load_torch_case(name: str) -> dict[str, Any]:
    case: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return case


def torch_case_weights(case: dict[str, Any]) -> dict[str, np.ndarray]:
    return export_models.random_weights(case["tensors"], case["seed"], case["tied"])


def test_every_kind_of_module_has_a_fixture() -> None:
    kinds = {load_torch_case(c)["module"] for c in TORCH_CASES}
    assert kinds == {"Transformer", "LlamaForCausalLM", "Qwen3ForCausalLM"}


@pytest.mark.parametrize("name", TORCH_CASES)
def test_fixture_weights_and_logits_are_usable(name: str) -> None:
    case = load_torch_case(name)
    weights = torch_case_weights(case)
    assert export_models.digest(weights) == case["weights_sha256"]
    logits = np.array(case["logits"])
    assert logits.shape == (len(case["input_ids"]), case["config"]["vocab_size"])
    np.testing.assert_allclose(np.abs(logits).max(-1), case["max_abs_logit"], rtol=1e-6)
    assert min(case["max_abs_logit"]) > 10
    assert case["f32_vs_f64_max_rel"] < TOL / 10
    if name == "hf_llama":  # the rope scaling is visible to the tolerance
        assert case["rope_scaling_effect_rel"] > 100 * TOL
        assert "rope_theta" not in case["config"]  # transformers 5: rope_parameters


@pytest.mark.parametrize("name", TORCH_CASES)
def test_torch_modules_export_with_their_logits(tmp_path: Path, vocab512: Path, name: str) -> None:
    case = load_torch_case(name)
    out = tmp_path / "m.tllm"
    tinyllm.export(torch_case_weights(case), case["config"], out, tokenizer=vocab512, quant="f32")
    got = f32_model(out).logits(case["input_ids"])
    assert relative_error(got, case["logits"]) <= TOL


def test_the_llama2c_fixture_follows_llama2c(vocab512: Path) -> None:
    # PyTorch's logits of the llama2.c-style module are the NumPy oracle's.
    case = load_torch_case("llama2c")
    weights = torch_case_weights(case)
    c = case["config"]
    config = {**c, "hidden_dim": weights["layers.0.feed_forward.w1.weight"].shape[0]}
    want = numpy_llama.forward(config, export_models.oracle_names(weights), case["input_ids"])
    assert relative_error(np.array(case["logits"]), want) <= TOL


# -- configs ------------------------------------------------------------------------------


def test_llama2c_configs_give_metas_feed_forward_widths() -> None:
    # Published widths: Llama 2 7B 11008, Llama 2 70B 28672, Llama 3 8B 14336.
    base = {"n_layers": 1, "vocab_size": 32000, "n_heads": 32}
    assert hf_config({**base, "dim": 4096, "multiple_of": 256})["intermediate_size"] == 11008
    big = {**base, "dim": 8192, "n_heads": 64, "n_kv_heads": 8, "multiple_of": 4096}
    assert hf_config({**big, "ffn_dim_multiplier": 1.3})["intermediate_size"] == 28672
    l3 = {**base, "dim": 4096, "multiple_of": 1024, "ffn_dim_multiplier": 1.3}
    c = hf_config({**l3, "rope_theta": 500000.0, "norm_eps": 1e-5, "n_kv_heads": 8})
    assert c["intermediate_size"] == 14336 and c["num_key_value_heads"] == 8
    assert c["rope_theta"] == 500000.0 and c["rms_norm_eps"] == 1e-5
    assert c["max_position_embeddings"] == 2048 and c["model_type"] == "llama"


def test_transformers_5_rope_parameters_are_read() -> None:
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0}
    scaling |= {"high_freq_factor": 4.0, "original_max_position_embeddings": 1024}
    c = hf_models.spec("llama2").config | {"rope_parameters": {**scaling, "rope_theta": 5e5}}
    del c["rope_theta"], c["rope_scaling"]
    got = hf_config(c)
    assert got["rope_theta"] == 5e5 and got["rope_scaling"] == scaling
    plain = hf_config(c | {"rope_parameters": {"rope_type": "default", "rope_theta": 3.0}})
    assert plain["rope_theta"] == 3.0 and "rope_scaling" not in plain


# -- vocabularies -------------------------------------------------------------------------

TEXT = (
    "The river ran past the mill and under the old stone bridge. "
    "Children threw sticks from the bridge and ran to the other side to see them come out. "
    "The miller's dog barked at every stick, and the children laughed at the dog. "
) * 4


def small_bpe() -> Any:
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TEXT], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return tok


@pytest.mark.parametrize("form", ["object", "tokenizer.json", "directory"])
def test_a_tokenizers_vocabulary_is_stored(tmp_path: Path, form: str) -> None:
    bpe = small_bpe()
    given: Any = bpe
    if form != "object":
        (tmp_path / "tok").mkdir()
        bpe.save(str(tmp_path / "tok" / "tokenizer.json"))
        given = tmp_path / "tok" / ("tokenizer.json" if form == "tokenizer.json" else "")
    out = tmp_path / "m.tllm"
    tinyllm.export(llama2c_weights(), LLAMA2C, out, tokenizer=given)
    m = f32_model(out)
    text = "The dog ran under the bridge."
    assert m.tokenize(text) == bpe.encode(text).ids
    assert m.tokenizer.bos_id == bpe.token_to_id("<s>") == m.tokenize(text)[0]
    assert m.tokenizer.eos_id == bpe.token_to_id("</s>")
    assert m.detokenize(m.tokenize(text)) == text


def test_a_chat_template_is_stored(tmp_path: Path) -> None:
    template = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    out = tmp_path / "m.tllm"
    tinyllm.export(llama2c_weights(), LLAMA2C, out, tokenizer=small_bpe(), chat_template=template)
    assert tinyllm.info(out)["chat_template"] == template
    m = f32_model(out)
    assert m.chat_template.render([{"role": "user", "content": "hi"}]) == "<s>user: hi\n"


def test_a_llama2c_vocabulary_object_is_stored_by_path(tmp_path: Path, vocab512: Path) -> None:
    out = tmp_path / "m.tllm"
    tok = tinyllm.Tokenizer.from_file(vocab512)
    tinyllm.export(llama2c_weights(), LLAMA2C, out, tokenizer=tok)
    m = f32_model(out)
    assert m.tokenizer.is_llama2c
    assert m.tokenize("Once upon a time") == tok.encode("Once upon a time")


# -- bad input ----------------------------------------------------------------------------


def export_fails(
    tmp_path: Path,
    tokenizer: Any,
    match: str,
    weights: Any = None,
    config: Any = None,
    error: type[Exception] = ValueError,
    **kwargs: Any,
) -> None:
    out = tmp_path / "bad.tllm"
    with pytest.raises(error, match=match):
        tinyllm.export(
            llama2c_weights() if weights is None else weights,
            LLAMA2C if config is None else config,
            out,
            tokenizer=tokenizer,
            **kwargs,
        )
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_a_wrong_shape_names_the_tensor_and_both_shapes(tmp_path: Path, vocab512: Path) -> None:
    w = llama2c_weights()
    w["layers.1.attention.wk.weight"] = np.zeros((64, 64), np.float32)
    want = "tensor 'layers.1.attention.wk.weight' has shape (64, 64), expected (16, 64)"
    export_fails(tmp_path, vocab512, re.escape(want), w)
    hf = to_hf_names(llama2c_weights())
    hf["model.norm.weight"] = np.ones((1, 64), np.float32)
    want = "tensor 'model.norm.weight' has shape (1, 64), expected (64,)"
    export_fails(tmp_path, vocab512, re.escape(want), hf)


def test_missing_and_unknown_tensors_are_named_together(tmp_path: Path, vocab512: Path) -> None:
    w = llama2c_weights()
    del w["layers.0.feed_forward.w3.weight"]
    w["layers.0.attention.wqkv.weight"] = np.zeros((8, 8), np.float32)
    w["layers.2.ffn_norm.weight"] = np.ones(64, np.float32)  # only 2 layers
    w["layers.0.attention.wq.weight"] = np.zeros((64, 32), np.float32)
    with pytest.raises(ValueError) as info:
        tinyllm.export(w, LLAMA2C, tmp_path / "bad.tllm", tokenizer=vocab512)
    message = str(info.value)
    for part in (
        "tensor 'layers.0.feed_forward.w3.weight' is missing",
        "unknown tensor 'layers.0.attention.wqkv.weight'",
        "unknown tensor 'layers.2.ffn_norm.weight'",
        "tensor 'layers.0.attention.wq.weight' has shape (64, 32), expected (64, 64)",
    ):
        assert part in message
    hf = to_hf_names(llama2c_weights())
    del hf["model.layers.1.mlp.up_proj.weight"]
    export_fails(
        tmp_path, vocab512, re.escape("'model.layers.1.mlp.up_proj.weight' is missing"), hf
    )
    # an untied config needs its classifier
    hf = to_hf_names(llama2c_weights())
    del hf["lm_head.weight"]
    config = {**hf_config(LLAMA2C), "tie_word_embeddings": False}
    export_fails(tmp_path, vocab512, re.escape("'lm_head.weight' is missing"), hf, config)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.zeros((16, 64), np.int32), "dtype int32"),
        (np.full((16, 64), "x"), "dtype str"),
        (np.zeros((16, 64), np.complex64), "dtype complex64"),
        ([[0.0] * 64] * 16, "is a list, not an array"),
    ],
)
def test_weights_that_are_not_floating_point_arrays(
    tmp_path: Path, vocab512: Path, value: Any, match: str
) -> None:
    w: dict[str, Any] = dict(llama2c_weights())
    w["layers.0.attention.wk.weight"] = value
    export_fails(tmp_path, vocab512, r"'layers\.0\.attention\.wk\.weight'.*" + match, w)


def test_non_finite_weights_are_refused(tmp_path: Path, vocab512: Path) -> None:
    w = llama2c_weights()
    w["norm.weight"] = w["norm.weight"].copy()
    w["norm.weight"][3] = np.nan
    export_fails(tmp_path, vocab512, r"'norm\.weight' holds NaN", w)


def test_a_tied_config_with_another_classifier_is_refused(tmp_path: Path, vocab512: Path) -> None:
    hf = to_hf_names(llama2c_weights())
    config = {**hf_config(LLAMA2C), "tie_word_embeddings": True}
    export_fails(tmp_path, vocab512, "'lm_head.weight' differs from", hf, config)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"dim": None}, "neither 'hidden_size'"),
        ({"n_experts": 8}, "unknown llama2.c key.*'n_experts'"),
        ({"n_heads": 7}, "not a multiple of 'n_heads'"),
        ({"n_kv_heads": 3}, "not a multiple of 'num_key_value_heads'"),
        ({"vocab_size": -1}, "'vocab_size' must be a positive integer"),
        ({"n_layers": "2"}, "'n_layers' must be a positive integer"),
        ({"norm_eps": 0}, "'rms_norm_eps' must be a positive number"),
        ({"use_scaled_rope": True}, "use_scaled_rope"),
    ],
)
def test_bad_llama2c_configs(
    tmp_path: Path, vocab512: Path, change: dict[str, Any], match: str
) -> None:
    config = {k: v for k, v in {**LLAMA2C, **change}.items() if v is not None}
    export_fails(tmp_path, vocab512, match, config=config)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"intermediate_size": None}, "'intermediate_size' is missing"),
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"attention_bias": True}, "'attention_bias' is not supported"),
        ({"rope_scaling": {"rope_type": "dynamic", "factor": 4.0}}, "'dynamic' is not supported"),
        ({"tie_word_embeddings": "yes"}, "'tie_word_embeddings' must be true or false"),
        ({"head_dim": 7}, "must be even"),
    ],
)
def test_bad_hugging_face_configs(
    tmp_path: Path, vocab512: Path, change: dict[str, Any], match: str
) -> None:
    config = {k: v for k, v in {**hf_config(LLAMA2C), **change}.items() if v is not None}
    export_fails(tmp_path, vocab512, match, to_hf_names(llama2c_weights()), config)


def test_bad_arguments(tmp_path: Path, vocab512: Path) -> None:
    export_fails(tmp_path, None, "needs the model's tokenizer")
    export_fails(tmp_path, 42, "tokenizer must be", error=TypeError)
    export_fails(tmp_path, vocab512, "quant must be one of", quant="q3")
    export_fails(tmp_path, vocab512, "weights must be a mapping", [1, 2], error=TypeError)
    export_fails(tmp_path, vocab512, "config must be", config=[1], error=TypeError)
    with pytest.raises(tinyllm.TemplateError):
        tinyllm.export(
            llama2c_weights(), LLAMA2C, tmp_path / "a", tokenizer=small_bpe(), chat_template="{%"
        )
    export_fails(
        tmp_path, vocab512, "chat template is stored with a tokenizer.json", chat_template="x"
    )
    small = {**LLAMA2C, "vocab_size": 256}
    weights = llama2c_weights(config={**small})
    export_fails(tmp_path, vocab512, "512 tokens but the model's vocabulary is 256", weights, small)
    with pytest.raises(FileNotFoundError):
        tinyllm.export(llama2c_weights(), LLAMA2C, tmp_path / "no" / "m.tllm", tokenizer=vocab512)
    with pytest.raises(TypeError, match="must be a PyTorch module"):
        tinyllm.export_model(object(), vocab512, tmp_path / "m.tllm")

    class Shapeless:
        def state_dict(self) -> dict[str, np.ndarray]:
            return llama2c_weights()

    with pytest.raises(TypeError, match="no 'config'"):
        tinyllm.export_model(Shapeless(), vocab512, tmp_path / "m.tllm")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# -- live PyTorch modules ---------------------------------------------------------------------


def _examples() -> Any:
    sys.path.insert(0, str(ROOT / "examples"))
    import train_tiny

    return train_tiny


def load_random(module: Any, seed: int) -> None:
    """Loads export_models' weights for the module's own state dict."""
    import torch

    state = module.state_dict()
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for n, t in state.items():
        tied_to = first.setdefault(t.data_ptr(), n)
        if tied_to != n:
            tied[n] = tied_to
    shapes = [(n, tuple(t.shape)) for n, t in state.items()]
    w = export_models.random_weights(shapes, seed, tied)
    module.load_state_dict({n: torch.from_numpy(v.copy()) for n, v in w.items()})


def torch_logits(module: Any, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = module(torch.tensor([ids]))
    logits = out if isinstance(out, torch.Tensor) else out.logits
    return np.asarray(logits[0].float().numpy())


def transformers_model(family: str, **overrides: Any) -> Any:
    transformers = pytest.importorskip("transformers")
    kwargs: dict[str, Any] = {
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
    }
    kwargs.update(overrides)
    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }[family]
    config = config_cls(**kwargs)
    config._attn_implementation = "eager"
    return model_cls(config).eval()


@needs_torch
@pytest.mark.parametrize(
    ("family", "overrides"),
    [
        ("llama", {"tie_word_embeddings": False, "rope_theta": 5e5}),
        ("llama", {"tie_word_embeddings": True}),
        ("mistral", {"sliding_window": None}),
        ("qwen2", {"tie_word_embeddings": True}),
        ("qwen3", {"head_dim": 32, "tie_word_embeddings": False}),
    ],
)
def test_transformers_models_export_with_their_logits(
    tmp_path: Path, vocab512: Path, family: str, overrides: dict[str, Any]
) -> None:
    model = transformers_model(family, **overrides)
    load_random(model, 21)
    out = tmp_path / "m.tllm"
    tinyllm.export_model(model, vocab512, out, quant="f32")
    m = f32_model(out)
    assert m.info["family"] == family
    assert relative_error(m.logits(IDS), torch_logits(model, IDS)) <= TOL


@needs_torch
def test_a_bfloat16_transformers_model_exports_exactly(tmp_path: Path, vocab512: Path) -> None:
    import torch

    model = transformers_model("llama")
    load_random(model, 22)
    model.to(torch.bfloat16)
    out = tmp_path / "m.tllm"
    tinyllm.export_model(model, vocab512, out, quant="f32")
    # The same bf16 values in a float32 model (model.float() would keep the
    # rotary frequencies rounded to bf16).
    reference = transformers_model("llama")
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    want = torch_logits(reference, IDS)
    assert relative_error(f32_model(out).logits(IDS), want) <= TOL


@needs_torch
def test_a_llama2c_transformer_exports_with_its_logits(tmp_path: Path, vocab512: Path) -> None:
    tt = _examples()
    args = tt.ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=512)
    model = tt.Transformer(args).eval()
    load_random(model, 23)
    out = tmp_path / "m.tllm"
    tinyllm.export_model(model, vocab512, out, quant="f32")
    assert relative_error(f32_model(out).logits(IDS), torch_logits(model, IDS)) <= TOL


@needs_torch
def test_a_transformers_tokenizer_is_stored_with_its_template(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    template = "{% for m in messages %}{{ m['content'] }}</s>{% endfor %}"
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=small_bpe(), bos_token="<s>", eos_token="</s>"
    )
    hf_tok.chat_template = template
    model = transformers_model("llama")
    load_random(model, 24)
    out = tmp_path / "m.tllm"
    tinyllm.export_model(model, hf_tok, out)
    m = f32_model(out)
    text = "The children laughed."
    assert m.tokenize(text) == hf_tok(text)["input_ids"]
    assert m.tokenizer.eos_id == hf_tok.eos_token_id
    assert tinyllm.info(out)["chat_template"] == template
