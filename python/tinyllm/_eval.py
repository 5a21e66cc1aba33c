"""Measuring a quantized model against its original: ``tinyllm.eval``."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from tinyllm._model import Model, PathLike, _int


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    out: np.ndarray = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return out


def eval(
    model: Model | PathLike,
    reference: Model | PathLike,
    text: str | PathLike,
    *,
    ctx: int = 128,
    max_chunks: int | None = None,
) -> dict[str, Any]:
    """Compares ``model`` with ``reference`` (usually the f32 original, which
    a path opens with an f32 KV cache) on
    the same token sequences, the way llama.cpp's ``llama-perplexity
    --kl-divergence`` does.

    The text (a string, or a path to a UTF-8 file) is tokenized once with the
    reference's tokenizer, BOS first if the vocabulary adds it
    (``Tokenizer.add_bos``: Llama 2, Llama 3, llama2.c models; not SmolLM2 or
    Qwen), and cut into chunks of ``ctx`` tokens; with such a vocabulary each
    chunk's first token then becomes BOS. In each chunk the predictions for
    the second half are scored (the first half is context). These are
    llama.cpp's ``llama-perplexity``'s chunks and positions, token for token.

    Returns:
        ``kl_mean``: mean KL divergence of the next-token distributions,
        reference to model (nats); ``kl_p99``: its 99th percentile;
        ``top1``: the fraction of positions where both predict the same
        most likely token; ``ppl`` and ``ppl_reference``: the perplexity of
        each on the text; ``positions``: how many predictions were scored;
        ``chunks``.
    """
    _int("ctx", ctx, minimum=4)
    test = model if isinstance(model, Model) else Model(model)
    ref = reference if isinstance(reference, Model) else Model(reference, kv_cache="f32")
    if test.config.vocab_size != ref.config.vocab_size:
        raise ValueError(
            f"the models' vocabularies differ ({test.config.vocab_size} and "
            f"{ref.config.vocab_size} tokens)"
        )
    if not isinstance(text, str) or os.path.isfile(text):
        with open(os.fspath(text), encoding="utf-8") as f:
            text = f.read()
    bos = ref.tokenizer.bos_id if ref.tokenizer.add_bos else None
    ids = ref.tokenize(text, add_bos=bos is not None)
    n_chunks = len(ids) // ctx
    if max_chunks is not None:
        n_chunks = min(n_chunks, max_chunks)
    if n_chunks == 0:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one chunk of {ctx}")

    kls: list[np.ndarray] = []
    same = 0
    nll = nll_ref = 0.0
    first = ctx // 2
    for c in range(n_chunks):
        chunk = ids[c * ctx : (c + 1) * ctx]
        if bos is not None:
            chunk = [bos, *chunk[1:]]
        lp = _log_softmax(ref.logits(chunk)[first:-1])
        lq = _log_softmax(test.logits(chunk)[first:-1])
        targets = np.array(chunk[first + 1 :])
        rows = np.arange(len(targets))
        p = np.exp(lp)
        kls.append((p * (lp - lq)).sum(axis=-1))
        same += int((lp.argmax(-1) == lq.argmax(-1)).sum())
        nll -= float(lq[rows, targets].sum())
        nll_ref -= float(lp[rows, targets].sum())
    kl = np.concatenate(kls)
    n = len(kl)
    return {
        "kl_mean": float(kl.mean()),
        "kl_p99": float(np.percentile(kl, 99)),
        "top1": same / n,
        "ppl": math.exp(nll / n),
        "ppl_reference": math.exp(nll_ref / n),
        "positions": n,
        "chunks": n_chunks,
    }
