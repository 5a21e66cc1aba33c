"""Plain NumPy oracle of the Llama forward pass as llama2.c defines it.

`forward()` follows `transformer()`/`forward()` in Karpathy's run.c: RMSNorm,
interleaved-pair RoPE, grouped-query causal attention, SwiGLU FFN, residuals,
final norm and classifier. It recomputes every position (no KV cache) in
float64, so its logits are a high-precision reference for an fp32 runtime.

With `q8_group_size` it emulates runq.c (llama2.c's int8 "version 2" files):
each matmul whose weight is in `weights_q8` quantizes its input activation per
group (scale = max|x| / 127, C `round()`), takes int32 dots of the int8 groups
and accumulates `ival * w_scale * x_scale` in float32, group by group, as
runq.c does. The embedding row is dequantized; the norms stay unquantized.

Shapes below: T = len(tokens), D = dim, H = n_heads, KV = n_kv_heads,
hd = head_dim = D // H, F = hidden_dim, V = vocab_size, G = groups per row.
"""

from __future__ import annotations

import numpy as np


def quantize_q80(w: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantize a weight as llama2.c's export.py does (version 2 files).

    Returns (int8 array of w's shape, float32 scales of shape (w.size // gs,)).
    export.py rounds with torch.round, i.e. half to even, like np.round.
    """
    g = np.asarray(w, dtype=np.float32).reshape(-1, group_size)  # (w.size/gs, gs)
    scale = np.abs(g).max(axis=1) / np.float32(127.0)  # (w.size/gs,) float32
    safe = np.where(scale == 0, np.float32(1.0), scale)  # all-zero groups -> q = 0
    q = np.round(g / safe[:, None]).astype(np.int8)  # (w.size/gs, gs)
    return q.reshape(np.shape(w)), scale.astype(np.float32)


def _c_round(x: np.ndarray) -> np.ndarray:
    # C round(): halfway cases go away from zero (np.round goes to even).
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _quantize_act(x: np.ndarray, gs: int) -> tuple[np.ndarray, np.ndarray]:
    """runq.c quantize() on each row of x (T, n): float32 math like the C code."""
    t, n = x.shape
    g = x.astype(np.float32).reshape(t, n // gs, gs)  # (T, G, gs)
    scale = np.abs(g).max(axis=2) / np.float32(127.0)  # (T, G) float32
    safe = np.where(scale == 0, np.float32(1.0), scale)  # C would divide by 0
    q = np.clip(_c_round((g / safe[:, :, None]).astype(np.float64)), -128, 127)
    return q.astype(np.int8), scale  # (T, G, gs) int8, (T, G) float32


def _matmul_q8(x: np.ndarray, wq: np.ndarray, ws: np.ndarray, gs: int) -> np.ndarray:
    """runq.c matmul: x (T, n) float, wq (d, n) int8, ws scales -> (T, d)."""
    d, n = wq.shape
    ngroups = n // gs
    xq, xs = _quantize_act(x, gs)  # (T, G, gs), (T, G)
    wg = wq.reshape(d, ngroups, gs).astype(np.float64)  # (d, G, gs)
    w_s = np.asarray(ws, dtype=np.float32).reshape(d, ngroups)  # (d, G)
    # int32 dot per (position, row, group); exact in float64 (|sum| < 2^53)
    ival = np.einsum("tgk,dgk->tdg", xq.astype(np.float64), wg)  # (T, d, G)
    ival = ival.astype(np.float32)
    val = np.zeros((x.shape[0], d), dtype=np.float32)  # (T, d) float32 accumulator
    for j in range(ngroups):  # same summation order as the C loop over groups
        val = val + (ival[:, :, j] * w_s[None, :, j]) * xs[:, j, None]
    return val.astype(np.float64)


def _rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    # x (T, D), w (D,) -> (T, D): x * w / sqrt(mean(x^2) + eps)
    ms = np.mean(x * x, axis=-1, keepdims=True)  # (T, 1)
    return x / np.sqrt(ms + eps) * w.astype(np.float64)


def _rope(x: np.ndarray, theta: float) -> np.ndarray:
    """Rotate interleaved pairs (2j, 2j+1) of each head; x (T, nh, hd)."""
    t, _, hd = x.shape
    pos = np.arange(t, dtype=np.float64)  # (T,)
    freq = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)  # (hd/2,)
    ang = pos[:, None] * freq[None, :]  # (T, hd/2)
    cos = np.cos(ang)[:, None, :]  # (T, 1, hd/2)
    sin = np.sin(ang)[:, None, :]  # (T, 1, hd/2)
    x0, x1 = x[..., 0::2], x[..., 1::2]  # (T, nh, hd/2) each
    out = np.empty_like(x)  # (T, nh, hd)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def forward(
    config: dict,
    weights: dict[str, np.ndarray],
    tokens: list[int],
    *,
    q8_group_size: int | None = None,
    weights_q8: dict | None = None,
    hidden: bool = False,
) -> np.ndarray:
    """Logits (T, V) float64 for every position 0..T-1 of `tokens` (with
    `hidden`, the final hidden states after the last norm instead, (T, D)).

    `weights` uses the names tok_embeddings, layers.{i}.attention_norm,
    layers.{i}.attention.{wq,wk,wv,wo}, layers.{i}.ffn_norm,
    layers.{i}.feed_forward.{w1,w2,w3}, norm, output (output may be absent:
    the classifier is then shared with tok_embeddings, as in llama2.c).
    `weights_q8` maps any of those names to (int8 array of the weight's
    shape, float32 scales, one per q8_group_size consecutive elements);
    it is only used when q8_group_size is given.
    """
    dim, n_layers = config["dim"], config["n_layers"]
    n_heads, n_kv_heads = config["n_heads"], config["n_kv_heads"]
    theta = float(config.get("rope_theta", 10000.0))
    eps = float(config.get("norm_eps", 1e-5))
    hd = dim // n_heads  # head_dim
    kv_mul = n_heads // n_kv_heads  # query heads per kv head
    q8 = weights_q8 if (q8_group_size is not None and weights_q8) else {}
    if "output" not in weights and "output" not in q8 and "tok_embeddings" in q8:
        q8 = {**q8, "output": q8["tok_embeddings"]}  # shared classifier

    def weight(name: str) -> np.ndarray:
        if name == "output" and "output" not in weights:
            name = "tok_embeddings"
        return weights[name]

    def linear(x: np.ndarray, name: str) -> np.ndarray:
        # x (T, n) @ W(d, n)^T -> (T, d)
        if name in q8:
            wq, ws = q8[name]
            return _matmul_q8(x, np.asarray(wq), ws, q8_group_size)
        return x @ weight(name).astype(np.float64).T

    toks = np.asarray(tokens, dtype=np.int64)  # (T,)
    t = len(toks)
    if "tok_embeddings" in q8:  # runq.c dequantizes the int8 table in float32
        eq, es = q8["tok_embeddings"]
        rows = np.asarray(eq)[toks].astype(np.float32)  # (T, D)
        es = np.asarray(es, dtype=np.float32).reshape(len(eq), -1)  # (V, D/gs)
        x = (rows * np.repeat(es[toks], q8_group_size, axis=1)).astype(np.float64)
    else:
        x = weights["tok_embeddings"][toks].astype(np.float64)  # (T, D)

    causal = np.tril(np.ones((t, t), dtype=bool))  # (T, T): key s <= query t
    for i in range(n_layers):
        p = f"layers.{i}."
        # attention block
        xb = _rmsnorm(x, weights[p + "attention_norm"], eps)  # (T, D)
        q = linear(xb, p + "attention.wq").reshape(t, n_heads, hd)  # (T, H, hd)
        k = linear(xb, p + "attention.wk").reshape(t, n_kv_heads, hd)  # (T, KV, hd)
        v = linear(xb, p + "attention.wv").reshape(t, n_kv_heads, hd)  # (T, KV, hd)
        q, k = _rope(q, theta), _rope(k, theta)
        k = np.repeat(k, kv_mul, axis=1)  # (T, H, hd): head h uses kv head h//kv_mul
        v = np.repeat(v, kv_mul, axis=1)  # (T, H, hd)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)  # (H, T, T)
        scores = np.where(causal[None], scores, -np.inf)
        scores = scores - scores.max(axis=-1, keepdims=True)
        att = np.exp(scores)
        att = att / att.sum(axis=-1, keepdims=True)  # (H, T, T) softmax over s
        out = np.einsum("hts,shd->thd", att, v).reshape(t, n_heads * hd)  # (T, D)
        x = x + linear(out, p + "attention.wo")  # (T, D) residual
        # feed-forward block
        xb = _rmsnorm(x, weights[p + "ffn_norm"], eps)  # (T, D)
        h1 = linear(xb, p + "feed_forward.w1")  # (T, F)
        h3 = linear(xb, p + "feed_forward.w3")  # (T, F)
        hb = h1 / (1.0 + np.exp(-h1)) * h3  # (T, F) silu(w1 x) * w3 x
        x = x + linear(hb, p + "feed_forward.w2")  # (T, D) residual

    x = _rmsnorm(x, weights["norm"], eps)  # (T, D)
    if hidden:
        return x
    return linear(x, "output")  # (T, V)
