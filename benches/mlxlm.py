"""Drive mlx-lm from the benchmarks: convert, quantize, time.

mlx-lm (Apple's MLX and its language-model package) is the peer of
tinyllm's Metal backend: on a Mac it runs on the GPU by default.  It is never
part of this repository: ``pip install mlx-lm`` on an Apple Silicon Mac.  On
Linux, ``pip install "mlx[cpu]" mlx-lm`` runs it on the CPU, enough to check
the conversion (``benches/test_mlx_weights.py``) but not a peer to time.
This module offers:

* :func:`llama2c_to_hf` -- write a llama2.c checkpoint as a Hugging Face
  Llama directory (``config.json`` and ``model.safetensors``, float32);
* :func:`quantize` -- turn that directory into an mlx-lm one with mlx-lm's
  own functions: float16, or its affine quantization at the bits per weight
  of a tinyllm type (:data:`QUANTS`);
* :func:`model_dir` -- both, made once and kept in the bench cache;
* :func:`bench` -- time prompt processing and greedy generation with mlx-lm's
  own generation loop, and return tokens/s of each.

The module is called ``mlxlm``, not ``mlx``: ``benches/`` is on ``sys.path``
during a run, and a file ``mlx.py`` there would hide the ``mlx`` package.
mlx is imported only when it is used, through :mod:`importlib`, so that this
file type-checks where mlx is not installed (its objects are ``Any`` here).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests" / "support") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests" / "support"))

import hf_models  # noqa: E402
import llama2c_format  # noqa: E402

#: tinyllm recipe -> (bits, group size) of mlx's affine quantization at the
#: same bits per weight, or ``None`` for float16.  Affine quantization keeps a
#: scale and a bias per group, in the weights' dtype (float16 here: 32 bits a
#: group), where Q8_0 and Q4_0 keep one float16 scale per 32 weights (16 bits
#: a group).  Groups of 64 therefore cost what blocks of 32 do:
#: 8 + 32/64 = 8 + 16/32 = 8.5 bits per weight, and 4 + 32/64 = 4 + 16/32 = 4.5.
#: (Groups of 32 would be 9 and 5.)  As with tinyllm and llama.cpp, a matrix
#: whose rows are not a whole number of groups stays float16.
QUANTS: dict[str, tuple[int, int] | None] = {"f16": None, "q8_0": (8, 64), "q4": (4, 64)}

#: The token every benchmark generation starts from (llama2.c's BOS).
BOS = 1


class BenchResult(TypedDict):
    """What :func:`bench` returns."""

    prompt_tokens_per_s: float
    gen_tokens_per_s: float
    #: The bytes of every parameter (weights, scales and biases, norms).
    model_size_bytes: int


def available() -> bool:
    """True when mlx-lm can be imported."""
    return importlib.util.find_spec("mlx_lm") is not None


# ---------------------------------------------------------------------------
# conversion


def _hf_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder a Q or K matrix's rows from llama2.c's rotary layout to
    Hugging Face's.

    llama2.c (like Meta's checkpoints) rotates each head's rows in adjacent
    pairs ``(2i, 2i + 1)``; Hugging Face's Llama rotates row ``i`` with row
    ``i + head_size / 2``, and its checkpoints hold the rows permuted to
    match (llama2.c's export undoes that permutation).  Row ``2i + j`` of a
    head becomes row ``j * head_size / 2 + i``.
    """
    rows, cols = w.shape  # (n_heads * head_size, dim)
    half = rows // n_heads // 2
    hf: np.ndarray = w.reshape(n_heads, half, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)
    return hf


def llama2c_to_hf(src: Path, dst: Path, *, rotary: bool = True) -> Path:
    """Write the llama2.c checkpoint ``src`` as a Hugging Face Llama directory
    ``dst`` (``config.json``, ``model.safetensors``; float32), in the tensor
    names and rotary layout of ``transformers``' ``LlamaForCausalLM``.

    ``rotary=False`` leaves the Q and K rows in llama2.c's order, which is
    wrong: it exists so that a test can show that the check catches it.
    Returns ``dst``.
    """
    config, weights = llama2c_format.read(src)
    n_heads, n_kv_heads = int(config["n_heads"]), int(config["n_kv_heads"])
    shared = bool(config["shared_classifier"])
    hf_config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": int(config["dim"]),
        "intermediate_size": int(config["hidden_dim"]),
        "num_hidden_layers": int(config["n_layers"]),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "vocab_size": int(config["vocab_size"]),
        "max_position_embeddings": int(config["seq_len"]),
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,  # run.c's
        "rope_theta": 10000.0,
        "tie_word_embeddings": shared,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }

    def qk(w: np.ndarray, heads: int) -> np.ndarray:
        return _hf_rotary(w, heads) if rotary else w

    tensors = {
        "model.embed_tokens.weight": weights["tok_embeddings"],
        "model.norm.weight": weights["norm"],
    }
    if not shared:
        tensors["lm_head.weight"] = weights["output"]
    for i in range(int(config["n_layers"])):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        tensors |= {
            theirs + "input_layernorm.weight": weights[ours + "attention_norm"],
            theirs + "self_attn.q_proj.weight": qk(weights[ours + "attention.wq"], n_heads),
            theirs + "self_attn.k_proj.weight": qk(weights[ours + "attention.wk"], n_kv_heads),
            theirs + "self_attn.v_proj.weight": weights[ours + "attention.wv"],
            theirs + "self_attn.o_proj.weight": weights[ours + "attention.wo"],
            theirs + "post_attention_layernorm.weight": weights[ours + "ffn_norm"],
            theirs + "mlp.gate_proj.weight": weights[ours + "feed_forward.w1"],
            theirs + "mlp.down_proj.weight": weights[ours + "feed_forward.w2"],
            theirs + "mlp.up_proj.weight": weights[ours + "feed_forward.w3"],
        }
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
    hf_models.write_safetensors(tmp / "model.safetensors", tensors, "float32", {"format": "pt"})
    tmp.rename(dst)
    return dst


def quantize(hf_dir: Path, dst: Path, quant: str) -> Path:
    """Convert the Hugging Face directory ``hf_dir`` into an mlx-lm directory
    ``dst`` for the tinyllm recipe ``quant`` (a key of :data:`QUANTS`), as
    ``mlx_lm.convert`` does (it needs a tokenizer, which these models lack):
    every float parameter cast to float16, then, for the 8- and 4-bit
    recipes, ``mlx_lm.utils.quantize_model``.  Returns ``dst``.
    """
    if quant not in QUANTS:
        raise ValueError(f"no mlx-lm recipe for {quant!r}; one of {sorted(QUANTS)}")
    mx = importlib.import_module("mlx.core")
    utils = importlib.import_module("mlx_lm.utils")
    model, config = utils.load_model(Path(hf_dir), lazy=True)
    # Before quantizing: the scales and biases take the weights' dtype.
    model.set_dtype(mx.float16)
    config["torch_dtype"] = "float16"
    recipe = QUANTS[quant]
    if recipe is not None:
        bits, group = recipe
        model, config = utils.quantize_model(model, config, group_size=group, bits=bits)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    utils.save_model(tmp, model)
    utils.save_config(config, config_path=tmp / "config.json")
    tmp.rename(dst)
    return dst


def hf_dir(src: Path, cache: Path) -> Path:
    """The Hugging Face directory of the llama2.c checkpoint ``src``, made
    once in ``cache``."""
    dst = cache / f"{src.stem}-hf"
    if not dst.exists():
        llama2c_to_hf(src, dst)
    return dst


def model_dir(src: Path, quant: str, cache: Path) -> Path:
    """The mlx-lm directory of the llama2.c checkpoint ``src`` for the
    tinyllm recipe ``quant``, made once in ``cache`` (from :func:`hf_dir`)."""
    dst = cache / f"{src.stem}-mlx-{quant}"
    if not dst.exists():
        quantize(hf_dir(src, cache), dst, quant)
    return dst


def same_matrices_quantized(path: Path) -> bool:
    """True when mlx-lm's 8- and 4-bit recipes quantize the same matrices of
    the model in directory ``path`` as tinyllm's do.  tinyllm quantizes a
    matrix whose rows are whole blocks of 32 weights, mlx-lm one whose rows
    are whole groups of 64: rows of 288 (the 15M shape) are 8-bit in one and
    float16 in the other, rows of 172 (stories260K's) float16 in both."""
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    widths = {int(config["hidden_size"]), int(config["intermediate_size"])}
    return all(w % 64 == 0 or w % 32 != 0 for w in widths)


# ---------------------------------------------------------------------------
# measuring


@functools.lru_cache(maxsize=1)
def load(path: str) -> Any:
    """The mlx-lm model in directory ``path``, its weights evaluated (the last
    one loaded is kept, for the rounds of one benchmark)."""
    utils = importlib.import_module("mlx_lm.utils")
    model, _ = utils.load_model(Path(path))
    return model


def bench(path: Path, prompt: Sequence[int], n_gen: int) -> BenchResult:
    """Time the mlx-lm model in directory ``path`` on the default device (a
    Mac's GPU): processing the token ids ``prompt`` from an empty cache, then,
    from a fresh cache, generating ``n_gen`` tokens greedily after BOS.

    Both run through ``mlx_lm.generate.generate_step``, mlx-lm's own loop
    (prompt in one forward pass, decoding pipelined with ``mx.async_eval``),
    inside its ``wired_limit``, as ``mlx_lm.stream_generate`` runs them.  The
    prompt is done when the logits of its last token are evaluated.  The first
    generated token comes with BOS's pass; the ``n_gen`` tokens are counted
    over the time from it to the last, as tinyllm's stats and mlx-lm's own
    ``generation_tps`` count them.
    """
    mx = importlib.import_module("mlx.core")
    generate = importlib.import_module("mlx_lm.generate")
    tree_flatten = importlib.import_module("mlx.utils").tree_flatten
    model = load(str(path))
    size = sum(int(v.nbytes) for _, v in tree_flatten(model.parameters()))
    with generate.wired_limit(model, [generate.generation_stream]):
        start = time.perf_counter()
        for _ in generate.generate_step(mx.array(list(prompt)), model, max_tokens=0):
            pass
        mx.synchronize()
        prompt_seconds = time.perf_counter() - start
        first = last = 0.0
        n = 0
        for _ in generate.generate_step(mx.array([BOS]), model, max_tokens=n_gen):
            last = time.perf_counter()
            first = first or last
            n += 1
    return BenchResult(
        prompt_tokens_per_s=len(prompt) / prompt_seconds,
        gen_tokens_per_s=n / (last - first),
        model_size_bytes=size,
    )
