"""Your own model as a tinyllm file: :func:`export` and :func:`export_model`.

The weights (PyTorch tensors, NumPy arrays, anything with ``__array__``)
come under Hugging Face Llama names or under the names of Meta's and
llama2.c's ``model.py``; the config is a Hugging Face ``config.json`` as a
dict (or a ``transformers`` config) or llama2.c's ``ModelArgs``. Every name,
shape and dtype is checked first. The weights are then written as a
temporary Hugging Face directory (float32 safetensors, ``config.json`` and
the vocabulary) beside the destination, which :func:`tinyllm.convert` turns
into the tinyllm file; the directory is removed afterwards.

Rotary layouts: Hugging Face checkpoints rotate the pairs ``(j, j +
head_dim/2)`` of each head; Meta's and llama2.c's code rotates ``(2j, 2j +
1)``. The rows of ``wq`` and ``wk`` given under llama2.c names are reordered
into Hugging Face's layout (row ``2j + i`` of a head becomes row ``i *
head_dim/2 + j``), which gives the same logits.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import operator
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinyllm._convert import QUANTS, convert
from tinyllm._model import PathLike, _path
from tinyllm._safetensors import Entry, write_f32
from tinyllm._template import ChatTemplate
from tinyllm._tokenizer import Tokenizer

__all__ = ["export", "export_model", "hf_config", "to_hf_rope_layout"]

#: The Hugging Face ``model_type`` values the engine runs.
FAMILIES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "granite",
    "smollm3",
    "gemma2",
    "gemma3_text",
    "olmo2",
    "olmo3",
    "phi3",
)

#: What Gemma 2 and 3 read beyond Llama's keys.
_GEMMA_KEYS = (
    "query_pre_attn_scalar",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "layer_types",
    "sliding_window_pattern",
    "use_bidirectional_attention",
)

#: The activations the engine runs, by their Hugging Face names.
_ACTIVATIONS = ("silu", "gelu_pytorch_tanh")

#: The keys a family's config holds beyond the common ones, handed on as
#: given (the engine's reader of the family checks them).
FAMILY_KEYS = {
    "granite": (
        "embedding_multiplier",
        "attention_multiplier",
        "residual_multiplier",
        "logits_scaling",
    ),
    "smollm3": ("no_rope_layers", "no_rope_layer_interval"),
    "gemma2": _GEMMA_KEYS,
    # (rope_parameters with an object per layer type is handed on whole.)
    "gemma3_text": (*_GEMMA_KEYS, "rope_local_base_freq", "rope_parameters"),
    "phi3": ("partial_rotary_factor", "original_max_position_embeddings"),
    "olmo3": ("layer_types",),
}

#: Keys of llama2.c's and Meta's ``ModelArgs``. ``dropout`` and
#: ``max_batch_size`` are training and serving settings, ignored here.
LLAMA2C_KEYS = frozenset(
    {
        "dim",
        "n_layers",
        "n_heads",
        "n_kv_heads",
        "vocab_size",
        "hidden_dim",
        "multiple_of",
        "ffn_dim_multiplier",
        "norm_eps",
        "max_seq_len",
        "rope_theta",
        "dropout",
        "max_batch_size",
        "use_scaled_rope",
    }
)

#: Buffers some modules keep in their state dict: precomputed rotary
#: tables, which carry nothing the engine needs.
_ROTARY_BUFFERS = ("rotary_emb.inv_freq", "freqs_cos", "freqs_sin", "freqs_cis")

#: Per-layer tensors, llama2.c's name and Hugging Face's.
_LLAMA2C_LAYER = (
    ("attention_norm.weight", "input_layernorm.weight"),
    ("attention.wq.weight", "self_attn.q_proj.weight"),
    ("attention.wk.weight", "self_attn.k_proj.weight"),
    ("attention.wv.weight", "self_attn.v_proj.weight"),
    ("attention.wo.weight", "self_attn.o_proj.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("feed_forward.w1.weight", "mlp.gate_proj.weight"),
    ("feed_forward.w2.weight", "mlp.down_proj.weight"),
    ("feed_forward.w3.weight", "mlp.up_proj.weight"),
)
_LLAMA2C_TOP = (
    ("tok_embeddings.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
)

#: Most problems listed in one error.
_MAX_PROBLEMS = 12


@dataclass(frozen=True)
class _Config:
    """A config read and checked: the dimensions the tensors must have and
    the ``config.json`` to write (without ``tie_word_embeddings``)."""

    hf: dict[str, Any]
    model_type: str
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    head_dim: int
    #: ``tie_word_embeddings`` as given; None lets the weights decide.
    tied: bool | None


@dataclass
class _Tensor:
    """One tensor to write: its source, where it goes, and how."""

    source_name: str
    hf_name: str
    shape: tuple[int, ...]
    value: Any
    #: The number of heads whose rows go from interleaved to half-split
    #: rotary pairs (0: written as given).
    permute_heads: int = 0


# -- the config --------------------------------------------------------------------


def _as_dict(config: object) -> dict[str, Any]:
    if isinstance(config, Mapping):
        out = dict(config)
    elif callable(to_dict := getattr(config, "to_dict", None)):
        out = to_dict()
        if not isinstance(out, dict):
            raise TypeError(f"config.to_dict() returned {type(out).__name__}, not a dict")
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        out = dataclasses.asdict(config)
    else:
        raise TypeError(
            "config must be a dict of Hugging Face or llama2.c keys, a transformers config "
            f"or a ModelArgs dataclass, not {type(config).__name__}"
        )
    for key in out:
        if not isinstance(key, str):
            raise TypeError(f"config keys must be strings, found {key!r}")
    return out


def _or(value: object, default: object) -> object:
    return default if value is None else value


def _positive_int(c: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = c.get(key)
    if value is None:
        if default is None:
            raise ValueError(f"config: {key!r} is missing")
        return default
    try:
        number = operator.index(value)  # ints and NumPy integers
    except TypeError:
        number = 0
    if isinstance(value, bool) or number < 1:
        raise ValueError(f"config: {key!r} must be a positive integer, not {value!r}")
    return number


def _positive_float(c: Mapping[str, Any], key: str) -> float | None:
    value = c.get(key)
    if value is None:
        return None
    try:
        number = float(value)  # also NumPy scalars
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, (bool, str)) or not number > 0 or number == float("inf"):
        raise ValueError(f"config: {key!r} must be a positive number, not {value!r}")
    return number


def hf_config(config: object) -> dict[str, Any]:
    """The Hugging Face ``config.json`` (as a dict) of ``config``: a dict of
    Hugging Face keys or of llama2.c's ``ModelArgs`` keys, a ``transformers``
    config, or a ``ModelArgs`` dataclass. Without ``tie_word_embeddings``
    when the config does not say (the weights decide, in :func:`export`).

    Raises:
        ValueError: a key is missing, out of range, unknown (llama2.c keys)
            or names a feature the engine does not run.
    """
    return _read_config(config).hf


def _read_config(config: object) -> _Config:
    c = _as_dict(config)
    if "hidden_size" in c:
        return _from_hf(c)
    if "dim" in c:
        return _from_hf(_llama2c_to_hf(c))
    raise ValueError(
        "config has neither 'hidden_size' (Hugging Face keys) nor 'dim' (llama2.c keys)"
    )


def _llama2c_to_hf(c: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(c) - LLAMA2C_KEYS)
    if unknown:
        raise ValueError(
            f"config: unknown llama2.c key(s) {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(LLAMA2C_KEYS))})"
        )
    if c.get("use_scaled_rope"):
        raise ValueError(
            "config: 'use_scaled_rope' is not supported with llama2.c keys; give a Hugging "
            "Face config with its 'rope_scaling' instead"
        )
    dim = _positive_int(c, "dim")
    n_heads = _positive_int(c, "n_heads")
    hidden = c.get("hidden_dim")
    if hidden is None:
        # The feed-forward width Meta's and llama2.c's model.py compute.
        multiple_of = _positive_int(c, "multiple_of", 256)
        hidden = int(2 * (4 * dim) / 3)
        if (mult := _positive_float(c, "ffn_dim_multiplier")) is not None:
            hidden = int(mult * hidden)
        hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
    if dim % n_heads:
        raise ValueError(f"config: 'dim' ({dim}) is not a multiple of 'n_heads' ({n_heads})")
    out = {
        "model_type": "llama",
        "hidden_size": dim,
        "intermediate_size": hidden,
        "num_hidden_layers": _positive_int(c, "n_layers"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": _positive_int(c, "n_kv_heads", n_heads),
        "vocab_size": c.get("vocab_size"),
        "max_position_embeddings": _positive_int(c, "max_seq_len", 2048),
        "rms_norm_eps": _or(c.get("norm_eps"), 1e-5),
        "rope_theta": _or(c.get("rope_theta"), 10000.0),
        "hidden_act": "silu",
    }
    return out


def _rope(c: Mapping[str, Any]) -> tuple[float | None, dict[str, Any] | None]:
    """``rope_theta`` and ``rope_scaling``, from the keys of transformers 4
    or from ``rope_parameters`` (transformers 5)."""
    theta = _positive_float(c, "rope_theta")
    scaling = c.get("rope_scaling")
    params = c.get("rope_parameters")
    if params is not None:
        if not isinstance(params, Mapping):
            raise ValueError(f"config: 'rope_parameters' must be a dict, not {params!r}")
        p_theta = _positive_float(params, "rope_theta")
        if theta is not None and p_theta is not None and theta != p_theta:
            raise ValueError(
                f"config: 'rope_theta' ({theta}) and rope_parameters' ({p_theta}) disagree"
            )
        theta = theta if theta is not None else p_theta
        rest = {k: v for k, v in params.items() if k != "rope_theta"}
        kind = rest.get("rope_type", rest.get("type", "default"))
        if scaling is None and kind != "default":
            scaling = rest
    if scaling is not None:
        if not isinstance(scaling, Mapping):
            raise ValueError(f"config: 'rope_scaling' must be a dict or None, not {scaling!r}")
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind not in ("default", "linear", "llama3", "longrope", "yarn"):
            raise ValueError(
                f"config: rope_scaling type {kind!r} is not supported "
                "(default, linear, llama3, longrope, yarn)"
            )
        scaling = None if kind == "default" else dict(scaling)
    return theta, scaling


def _from_hf(c: dict[str, Any]) -> _Config:
    model_type = c.get("model_type") or "llama"
    if model_type not in FAMILIES:
        raise ValueError(
            f"config: model_type {model_type!r} is not supported ({', '.join(FAMILIES)})"
        )
    dim = _positive_int(c, "hidden_size")
    n_heads = _positive_int(c, "num_attention_heads")
    n_kv_heads = _positive_int(c, "num_key_value_heads", n_heads)
    if c.get("head_dim") is None and dim % n_heads:
        raise ValueError(
            f"config: 'hidden_size' ({dim}) is not a multiple of "
            f"'num_attention_heads' ({n_heads}) and 'head_dim' is not given"
        )
    head_dim = _positive_int(c, "head_dim", dim // n_heads)
    if head_dim % 2:
        raise ValueError(f"config: the head dimension ({head_dim}) must be even for RoPE")
    if n_heads % n_kv_heads:
        raise ValueError(
            f"config: 'num_attention_heads' ({n_heads}) is not a multiple of "
            f"'num_key_value_heads' ({n_kv_heads})"
        )
    act_key = "hidden_activation" if c.get("hidden_activation") is not None else "hidden_act"
    act = c.get(act_key) or "silu"
    if act not in _ACTIVATIONS:
        raise ValueError(f"config: {act_key} {act!r} is not supported ({', '.join(_ACTIVATIONS)})")
    if c.get("mlp_bias"):
        raise ValueError("config: 'mlp_bias' is not supported")
    if c.get("attention_bias") and model_type != "qwen2":
        raise ValueError(f"config: 'attention_bias' is not supported for {model_type}")
    tied = c.get("tie_word_embeddings")
    if tied is not None and not isinstance(tied, bool):
        raise ValueError(f"config: 'tie_word_embeddings' must be true or false, not {tied!r}")
    eps = _positive_float(c, "rms_norm_eps")
    theta, scaling = _rope(c)
    hf: dict[str, Any] = {
        "model_type": model_type,
        "hidden_size": dim,
        "intermediate_size": _positive_int(c, "intermediate_size"),
        "num_hidden_layers": _positive_int(c, "num_hidden_layers"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "head_dim": head_dim,
        "vocab_size": _positive_int(c, "vocab_size"),
        "max_position_embeddings": _positive_int(c, "max_position_embeddings"),
        "hidden_act": act,
    }
    if eps is not None:
        hf["rms_norm_eps"] = eps
    if theta is not None:
        hf["rope_theta"] = theta
    if scaling is not None:
        hf["rope_scaling"] = scaling
    for key in ("sliding_window", "use_sliding_window"):
        value = c.get(key)
        if value is not None:
            if not isinstance(value, (bool, int)):
                raise ValueError(f"config: {key!r} must be an integer or a bool, not {value!r}")
            hf[key] = value
    if tied is not None:
        hf["tie_word_embeddings"] = tied
    for key in FAMILY_KEYS.get(model_type, ()):
        if c.get(key) is not None:
            hf[key] = c[key]
    return _Config(
        hf=hf,
        model_type=model_type,
        dim=dim,
        hidden_dim=hf["intermediate_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        vocab_size=hf["vocab_size"],
        head_dim=head_dim,
        tied=tied,
    )


# -- the tensors ---------------------------------------------------------------------


def _hf_shapes(c: _Config) -> dict[str, tuple[int, ...]]:
    """Every Hugging Face tensor of the model (the classifier included)."""
    d, f, v, hd = c.dim, c.hidden_dim, c.vocab_size, c.head_dim
    q, kv = c.n_heads * hd, c.n_kv_heads * hd
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, d)}
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        if c.model_type not in ("olmo2", "olmo3"):  # (OLMo has no pre-norms)
            out[p + "input_layernorm.weight"] = (d,)
        if c.model_type == "phi3":  # one matrix: rows q, then k, then v
            out[p + "self_attn.qkv_proj.weight"] = (q + 2 * kv, d)
        else:
            out[p + "self_attn.q_proj.weight"] = (q, d)
            out[p + "self_attn.k_proj.weight"] = (kv, d)
            out[p + "self_attn.v_proj.weight"] = (kv, d)
        if c.model_type == "qwen2":
            out[p + "self_attn.q_proj.bias"] = (q,)
            out[p + "self_attn.k_proj.bias"] = (kv,)
            out[p + "self_attn.v_proj.bias"] = (kv,)
        if c.model_type in ("qwen3", "gemma3_text"):
            out[p + "self_attn.q_norm.weight"] = (hd,)
            out[p + "self_attn.k_norm.weight"] = (hd,)
        if c.model_type in ("olmo2", "olmo3"):  # over all heads at once
            out[p + "self_attn.q_norm.weight"] = (q,)
            out[p + "self_attn.k_norm.weight"] = (kv,)
        out[p + "self_attn.o_proj.weight"] = (d, q)
        # (Gemma's and OLMo 2's is a norm of the attention's output.)
        out[p + "post_attention_layernorm.weight"] = (d,)
        if c.model_type in ("gemma2", "gemma3_text"):
            out[p + "pre_feedforward_layernorm.weight"] = (d,)
        if c.model_type in ("gemma2", "gemma3_text", "olmo2", "olmo3"):
            out[p + "post_feedforward_layernorm.weight"] = (d,)
        if c.model_type == "phi3":  # gate rows, then up rows
            out[p + "mlp.gate_up_proj.weight"] = (2 * f, d)
        else:
            out[p + "mlp.gate_proj.weight"] = (f, d)
            out[p + "mlp.up_proj.weight"] = (f, d)
        out[p + "mlp.down_proj.weight"] = (d, f)
    out["model.norm.weight"] = (d,)
    out["lm_head.weight"] = (v, d)
    return out


def _llama2c_names(c: _Config) -> dict[str, tuple[str, int]]:
    """llama2.c's name of every Hugging Face tensor, with the number of
    heads whose rotary rows must be reordered (0 for none)."""
    out = {hf: (ours, 0) for ours, hf in _LLAMA2C_TOP}
    for i in range(c.n_layers):
        for ours, hf in _LLAMA2C_LAYER:
            heads = {"attention.wq.weight": c.n_heads, "attention.wk.weight": c.n_kv_heads}
            out[f"model.layers.{i}.{hf}"] = (f"layers.{i}.{ours}", heads.get(ours, 0))
    return out


def to_hf_rope_layout(w: np.ndarray[Any, Any], n_heads: int) -> np.ndarray[Any, Any]:
    """The rows (or, for a vector, the elements) of a query or key
    projection that rotates interleaved pairs ``(2j, 2j + 1)`` of each head,
    reordered for half-split pairs ``(j, j + head_dim / 2)``: row ``2j + i``
    of a head becomes row ``i * head_dim / 2 + j``."""
    rows = w.shape[0]
    if rows % n_heads or (rows // n_heads) % 2:
        raise ValueError(f"{rows} rows are not {n_heads} heads of an even size")
    half = rows // n_heads // 2
    rest = w.shape[1:]
    # (head, j, i, ...) -> (head, i, j, ...)
    out: np.ndarray[Any, Any] = w.reshape(n_heads, half, 2, *rest).swapaxes(1, 2).reshape(w.shape)
    return out


def _is_torch(x: object) -> bool:
    return callable(getattr(x, "detach", None)) and callable(getattr(x, "is_floating_point", None))


def _describe(x: object) -> tuple[tuple[int, ...], str, bool] | None:
    """The shape, dtype name and whether it is a floating-point type, of a
    PyTorch tensor or a NumPy array (None for anything else)."""
    if _is_torch(x):
        t: Any = x
        return (
            tuple(int(s) for s in t.shape),
            str(t.dtype).removeprefix("torch."),
            bool(t.is_floating_point()),
        )
    if isinstance(x, np.ndarray):
        floating = x.dtype.kind == "f" or x.dtype.name == "bfloat16"
        return tuple(x.shape), x.dtype.name, floating
    return None


def _to_f32(t: _Tensor) -> np.ndarray[Any, Any]:
    x = t.value
    if _is_torch(x):
        x = x.detach().to(device="cpu").float().numpy()
    a = np.ascontiguousarray(np.asarray(x).astype(np.float32, copy=False))
    if not np.isfinite(a).all():
        raise ValueError(f"tensor {t.source_name!r} holds NaN or infinite values")
    if t.permute_heads:
        a = np.ascontiguousarray(to_hf_rope_layout(a, t.permute_heads))
    return a


def _same_values(a: _Tensor, b: _Tensor) -> bool:
    x, y = a.value, b.value
    if x is y:
        return True
    # One parameter under two names, as the state dict of a tied module holds it.
    if (
        _is_torch(x)
        and _is_torch(y)
        and (x.device, x.dtype, x.shape, x.stride()) == (y.device, y.dtype, y.shape, y.stride())
        and x.data_ptr() == y.data_ptr()
    ):
        return True
    return bool(np.array_equal(_to_f32(a), _to_f32(b)))


def _plan(weights: object, c: _Config) -> tuple[list[_Tensor], bool]:
    """The tensors to write, in Hugging Face's names and layout, and whether
    the classifier is the embedding table; every problem found is raised in
    one ValueError."""
    if not isinstance(weights, Mapping):
        raise TypeError(
            f"weights must be a mapping of names to arrays (a state dict), "
            f"not {type(weights).__name__}"
        )
    names = list(weights)
    for n in names:
        if not isinstance(n, str):
            raise TypeError(f"weight names must be strings, found {n!r}")
    shapes = _hf_shapes(c)
    llama2c = any(n.startswith("layers.") or n == "tok_embeddings.weight" for n in names)
    if llama2c and c.model_type not in ("llama", "mistral"):
        raise ValueError(
            f"llama2.c names carry no {c.model_type} tensors (biases, q/k norms): "
            "use Hugging Face names"
        )
    source = (
        _llama2c_names(c) if llama2c else {hf: (hf, 0) for hf in shapes}
    )  # HF name -> (given name, heads to reorder)
    by_source = {s: hf for hf, (s, _) in source.items()}
    out_hf = "lm_head.weight"
    out_name = source[out_hf][0]

    problems: list[str] = []
    plan: dict[str, _Tensor] = {}
    for name in names:
        if name not in by_source:
            if not name.endswith(_ROTARY_BUFFERS):
                problems.append(f"unknown tensor {name!r}")
            continue
        hf = by_source[name]
        value = weights[name]
        desc = _describe(value)
        if desc is None and hasattr(value, "__array__"):
            value = np.asarray(value)
            desc = _describe(value)
        if desc is None:
            problems.append(f"tensor {name!r} is a {type(value).__name__}, not an array")
            continue
        shape, dtype, floating = desc
        if not floating:
            problems.append(
                f"tensor {name!r} has dtype {dtype}: weights must be floating-point "
                "(float16, bfloat16, float32 or float64)"
            )
        if shape != shapes[hf]:
            problems.append(f"tensor {name!r} has shape {shape}, expected {shapes[hf]}")
        plan[hf] = _Tensor(name, hf, shapes[hf], value, source[hf][1])
    problems += [
        f"tensor {s!r} is missing"
        for hf, (s, _) in source.items()
        if hf not in plan and hf != out_hf
    ]
    if out_hf not in plan and c.tied is False:
        problems.append(
            f"tensor {out_name!r} is missing (the config says tie_word_embeddings is false)"
        )
    if problems:
        convention = "llama2.c" if llama2c else "Hugging Face"
        shown = problems[:_MAX_PROBLEMS]
        if len(problems) > len(shown):
            shown.append(f"... and {len(problems) - len(shown)} more")
        raise ValueError(
            f"the weights (under {convention} names) do not fit the config: " + "; ".join(shown)
        )

    embed = plan["model.embed_tokens.weight"]
    tied = True
    if out_hf in plan:
        if c.tied is False:
            tied = False
        elif not _same_values(plan[out_hf], embed):
            if c.tied:
                raise ValueError(
                    f"tensor {out_name!r} differs from {embed.source_name!r} but the config "
                    "says tie_word_embeddings is true"
                )
            tied = False
        if tied:
            del plan[out_hf]
    return [plan[hf] for hf in shapes if hf in plan], tied


# -- the vocabulary -----------------------------------------------------------------


def _vocabulary(tokenizer: object, scratch: Path) -> Tokenizer:
    """``tokenizer`` as a :class:`tinyllm.Tokenizer`."""
    if tokenizer is None:
        raise ValueError(
            "export needs the model's tokenizer (a tinyllm file stores its vocabulary): a "
            "tinyllm, tokenizers or transformers tokenizer, or a tokenizer file"
        )
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if isinstance(tokenizer, (str, os.PathLike)):
        return Tokenizer.from_file(tokenizer)
    save_pretrained = getattr(tokenizer, "save_pretrained", None)
    if callable(save_pretrained):  # a transformers tokenizer, with its config
        saved = scratch / "given-tokenizer"
        save_pretrained(str(saved))
        if not (saved / "tokenizer.json").is_file():
            raise ValueError(
                f"the {type(tokenizer).__name__} wrote no tokenizer.json: give the fast "
                "tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True))"
            )
        return Tokenizer.from_file(saved)
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    to_str = getattr(backend, "to_str", None)
    if callable(to_str):  # a tokenizers.Tokenizer
        text = to_str()
        if not isinstance(text, str):
            raise TypeError(f"{type(backend).__name__}.to_str() returned no text")
        given = scratch / "given-tokenizer"
        given.mkdir()
        (given / "tokenizer.json").write_text(text, encoding="utf-8")
        return Tokenizer.from_file(given)
    raise TypeError(
        "tokenizer must be a tinyllm.Tokenizer, a tokenizers.Tokenizer, a transformers "
        f"tokenizer or a path, not {type(tokenizer).__name__}"
    )


def _write_vocabulary(tok: Tokenizer, template: str | None, directory: Path) -> None:
    """``tokenizer.json``, ``tokenizer_config.json`` and
    ``generation_config.json`` from which tinyllm reads ``tok`` back."""
    text, special = tok.to_json_str()
    (directory / "tokenizer.json").write_text(text, encoding="utf-8")
    bos, eos = tok.bos_id, tok.eos_id
    config: dict[str, Any] = {
        "add_bos_token": bool(special["add_bos"]),
        "bos_token": None if bos is None else tok.id_to_token(bos),
        "eos_token": None if eos is None else tok.id_to_token(eos),
    }
    if template is not None:
        config["chat_template"] = template
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    generation = {"bos_token_id": bos, "eos_token_id": sorted(tok.eos_ids)}
    (directory / "generation_config.json").write_text(json.dumps(generation), encoding="utf-8")


# -- export ---------------------------------------------------------------------------


def export(
    weights: Mapping[str, Any],
    config: object,
    path: PathLike,
    *,
    tokenizer: object = None,
    chat_template: str | None = None,
    quant: str = "f16",
) -> dict[str, Any]:
    """Writes a model given as arrays as a tinyllm file at ``path``.

    Args:
        weights: names to arrays: PyTorch tensors (any floating dtype,
            bfloat16 included, on any device), NumPy arrays or anything
            with ``__array__``. Names are Hugging Face Llama's
            (``model.layers.0.self_attn.q_proj.weight``, ...) or Meta's and
            llama2.c's (``layers.0.attention.wq.weight``, ...), whose
            interleaved rotary rows are reordered into Hugging Face's layout.
            The classifier may be absent (or equal to the embeddings) when
            it is tied.
        config: a dict of Hugging Face ``config.json`` keys (``model_type``
            llama, mistral, qwen2 or qwen3) or of llama2.c's ``ModelArgs``
            keys (``dim``, ``n_layers``, ...), a ``transformers`` config, or
            a ``ModelArgs`` dataclass.
        path: the file to write (replaced only once complete).
        tokenizer: the vocabulary: a :class:`tinyllm.Tokenizer`, a
            ``tokenizers.Tokenizer``, a ``transformers`` tokenizer (fast), or
            a path (``tokenizer.json`` or its directory, a GGUF file, a
            llama2.c ``tokenizer.bin``). Required.
        chat_template: a Jinja chat template to store (default: the
            tokenizer's own, if any).
        quant: a recipe of :func:`tinyllm.convert` (``f32``, ``f16``,
            ``bf16``, ``q8_0``, ``q4``, ...).

    Returns:
        :func:`tinyllm.convert`'s summary.

    Raises:
        ValueError: a tensor is missing, unknown, of the wrong shape or not
            floating-point (all such problems are named in one message), or
            the config is incomplete or unsupported, or the vocabulary is
            larger than the model's.
        TypeError: an argument of the wrong kind.

    The weights go through a float32 Hugging Face directory made beside
    ``path`` (4 bytes per parameter on disk, removed afterwards), one tensor
    in memory at a time.
    """
    if quant not in QUANTS:
        raise ValueError(f"quant must be one of {', '.join(QUANTS)}, not {quant!r}")
    dst = Path(_path("path", path))
    if not dst.parent.is_dir():
        raise FileNotFoundError(2, f"no such directory: {str(dst.parent)!r}", str(dst.parent))
    if chat_template is not None:
        if not isinstance(chat_template, str):
            raise TypeError(f"chat_template must be a str, not {type(chat_template).__name__}")
        ChatTemplate(chat_template)  # a syntax error fails here
    c = _read_config(config)
    tensors, tied = _plan(weights, c)
    with tempfile.TemporaryDirectory(prefix=".tinyllm-export-", dir=dst.parent) as tmp:
        work = Path(tmp)
        tok = _vocabulary(tokenizer, work)
        if tok.vocab_size > c.vocab_size:
            raise ValueError(
                f"the tokenizer has {tok.vocab_size} tokens but the model's vocabulary "
                f"is {c.vocab_size}"
            )
        template = chat_template if chat_template is not None else tok.chat_template
        llama2c_vocab: str | None = None
        model_dir = work / "model"
        model_dir.mkdir()
        if tok.is_llama2c:
            if chat_template is not None:
                raise ValueError(
                    "a chat template is stored with a tokenizer.json vocabulary, not with a "
                    "llama2.c tokenizer.bin"
                )
            llama2c_vocab = tok.source
        else:
            _write_vocabulary(tok, template, model_dir)
        hf = {**c.hf, "tie_word_embeddings": tied, "torch_dtype": "float32"}
        (model_dir / "config.json").write_text(json.dumps(hf, indent=2), encoding="utf-8")
        entries: list[Entry] = [
            (t.hf_name, t.shape, functools.partial(_to_f32, t)) for t in tensors
        ]
        write_f32(model_dir / "model.safetensors", entries, {"format": "pt"})
        return convert(model_dir, dst, quant, tokenizer=llama2c_vocab)


def export_model(
    module: Any, tokenizer: object, path: PathLike, *, quant: str = "f16"
) -> dict[str, Any]:
    """Writes a PyTorch model as a tinyllm file at ``path``: a
    ``transformers`` ``LlamaForCausalLM`` (or Mistral, Qwen2, Qwen3) whose
    ``config`` says its shape, or a llama2.c-style ``Transformer`` whose
    ``params`` (or ``args``) are its ``ModelArgs``. The weights are its
    ``state_dict()``; see :func:`export` for the rest.
    """
    state_dict = getattr(module, "state_dict", None)
    if not callable(state_dict):
        raise TypeError(f"module must be a PyTorch module, not {type(module).__name__}")
    config = getattr(module, "config", None)
    if config is None or not callable(getattr(config, "to_dict", None)):
        config = getattr(module, "params", None) or getattr(module, "args", None)
    if config is None:
        raise TypeError(
            f"{type(module).__name__} has no 'config' (transformers) nor 'params' or 'args' "
            "(llama2.c ModelArgs) saying its shape"
        )
    return export(state_dict(), config, path, tokenizer=tokenizer, quant=quant)
