"""Train a tiny Llama with PyTorch, export it with tinyllm, and let it write.

    pip install "tinyllm[train]"                     # adds torch
    python examples/train_tiny.py                    # a few minutes on a laptop CPU
    python examples/train_tiny.py --text book.txt --steps 2000 --out book.tllm

Without ``--text`` the training text is made on the spot: stories told by
the model built into tinyllm (stories260K), so nothing is downloaded. A
byte-level BPE vocabulary is trained on the same text with the
``tokenizers`` package; the model is Llama's block in the layout of
llama2.c's ``model.py`` (its tensor names, its interleaved rotary pairs,
the classifier tied to the embeddings), about a million parameters by
default. After training, ``tinyllm.export_model`` writes it as a tinyllm
file, whose logits are checked against PyTorch's, and tinyllm generates
from it.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from torch import nn

import tinyllm

QUANTS = ["f32", "f16", "bf16", "q8_0", "q4", "q4_1", "q4_mixed"]
# -- the model: Llama's block, with llama2.c's names and rotary layout -------------


@dataclass
class ModelArgs:
    """The shape of the model (llama2.c's ``ModelArgs`` keys, which
    ``tinyllm.export`` reads)."""

    dim: int = 128
    n_layers: int = 5
    n_heads: int = 4
    n_kv_heads: int = 2
    vocab_size: int = 1024
    hidden_dim: int | None = None  # None: 2/3 of 4 * dim, rounded up to multiple_of
    multiple_of: int = 32
    norm_eps: float = 1e-5
    max_seq_len: int = 256


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (x.float() * scale).type_as(x) * self.weight


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` (batch, time, heads, head_dim): elements
    ``2j`` and ``2j + 1`` of a head turn together by angle ``pos * f_j``."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (B, T, H, hd/2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    c, s = cos[:, None, :], sin[:, None, :]  # (T, 1, hd/2)
    out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1)
    return out.flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads = args.n_heads
        self.n_kv_heads = args.n_kv_heads
        self.head_dim = args.dim // args.n_heads
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim)
        k = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        # query head h reads key/value head h // (n_heads / n_kv_heads)
        group = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(group, dim=2)
        v = v.repeat_interleave(group, dim=2)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, hidden_dim: int) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args.dim, hidden_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin)
        return x + self.feed_forward(self.ffn_norm(x))


def feed_forward_width(args: ModelArgs) -> int:
    if args.hidden_dim is not None:
        return args.hidden_dim
    width = int(2 * 4 * args.dim / 3)
    return args.multiple_of * ((width + args.multiple_of - 1) // args.multiple_of)


class Transformer(nn.Module):
    """A Llama model under llama2.c's names (``tok_embeddings``,
    ``layers.{i}.attention.wq``, ..., ``output``); ``params`` says its
    shape, which is what ``tinyllm.export_model`` reads."""

    def __init__(self, params: ModelArgs) -> None:
        super().__init__()
        self.params = params
        hidden = feed_forward_width(params)
        self.tok_embeddings = nn.Embedding(params.vocab_size, params.dim)
        self.layers = nn.ModuleList(
            TransformerBlock(params, hidden) for _ in range(params.n_layers)
        )
        self.norm = RMSNorm(params.dim, params.norm_eps)
        self.output = nn.Linear(params.dim, params.vocab_size, bias=False)
        self.output.weight = self.tok_embeddings.weight  # tied, as in llama2.c
        head_dim = params.dim // params.n_heads
        freqs = 10000.0 ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.outer(torch.arange(params.max_seq_len, dtype=torch.float64), freqs)
        self.register_buffer("freqs_cos", angles.cos().float(), persistent=False)
        self.register_buffer("freqs_sin", angles.sin().float(), persistent=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # smaller residual branches, as GPT-2
            if name.endswith(("wo.weight", "w2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * params.n_layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (batch, time, vocab) after every position of ``tokens``."""
        t = tokens.shape[1]
        cos, sin = self.freqs_cos[:t], self.freqs_sin[:t]
        x = self.tok_embeddings(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin)
        out: torch.Tensor = self.output(self.norm(x))
        return out


# -- the text and its vocabulary ------------------------------------------------------


def builtin_stories(count: int, seed: int = 0) -> list[str]:
    """``count`` stories told by the model built into tinyllm."""
    teller = tinyllm.Model.default()
    openings = ["Once upon a time", "One day", "Lily", "Tom and his mom", "The little bird"]
    stories = []
    for i in range(count):
        start = openings[i % len(openings)]
        body = teller.generate(start, max_tokens=256, temperature=0.9, seed=seed + i)
        stories.append((start + body).strip())
    return stories


def read_text(path: Path) -> list[str]:
    """The paragraphs (separated by blank lines) of a text file."""
    text = path.read_text(encoding="utf-8")
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
    return [p for p in paragraphs if p]


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE vocabulary of ``texts``, with ``<s>`` put before
    every text and ``</s>`` to end one."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return tok


def encode_corpus(tok: Tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """All texts as one stream of ids: ``<s>`` text ``</s>`` ..."""
    eos = tok.token_to_id("</s>")
    ids: list[int] = []
    for enc in tok.encode_batch(list(texts)):
        ids += [*enc.ids, eos]
    return torch.tensor(ids, dtype=torch.long)


# -- training -------------------------------------------------------------------------


def progress(steps: int) -> Any:
    """tqdm's bar if it is installed, else a plain one."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _PlainBar(steps)
    return tqdm(total=steps, unit="step", dynamic_ncols=True)


class _PlainBar:
    def __init__(self, total: int) -> None:
        self.total, self.n, self.start, self.text = total, 0, time.monotonic(), ""

    def set_postfix_str(self, text: str) -> None:
        self.text = text

    def update(self, n: int) -> None:
        self.n += n
        filled = 30 * self.n // self.total
        rate = self.n / max(time.monotonic() - self.start, 1e-9)
        bar = "#" * filled + "." * (30 - filled)
        print(f"\r[{bar}] {self.n}/{self.total} {rate:.1f} step/s {self.text}", end="")
        sys.stdout.flush()

    def close(self) -> None:
        print()


def batches(
    data: torch.Tensor, batch: int, seq_len: int, gen: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Random windows of the id stream: inputs and the ids that follow."""
    if len(data) <= seq_len + 1:
        raise ValueError(f"the text has {len(data)} tokens: too few for windows of {seq_len}")
    while True:
        starts = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=gen)
        window = torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()])
        yield window[:, :-1], window[:, 1:]


def train(
    model: Transformer,
    data: torch.Tensor,
    *,
    steps: int,
    batch: int,
    seq_len: int,
    lr: float,
    seed: int,
) -> list[float]:
    """AdamW with a short warm-up and a cosine decay; returns the losses."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, min(100, steps // 10))
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    bar = progress(steps)
    model.train()
    windows = batches(data, batch, seq_len, gen)
    for step in range(steps):
        x, y = next(windows)
        scale = (
            (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * step / steps))
        )
        for group in opt.param_groups:
            group["lr"] = lr * max(scale, 0.05)
        logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        recent = losses[-20:]
        bar.set_postfix_str(f"loss {sum(recent) / len(recent):.3f}")
        bar.update(1)
    bar.close()
    model.eval()
    return losses


# -- putting it together ----------------------------------------------------------------


@dataclass
class Result:
    model: Transformer
    tokenizer: Tokenizer
    path: Path
    losses: list[float]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text", type=Path, help="a UTF-8 text file (default: built-in stories)")
    p.add_argument("--stories", type=int, default=400, help="built-in stories to make")
    p.add_argument("--out", type=Path, default=Path("tiny.tllm"), help="the tinyllm file")
    p.add_argument("--quant", default="f16", choices=QUANTS, help="weights (default f16)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--vocab", type=int, default=1024, help="BPE vocabulary size")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", default="Once upon a time")
    p.add_argument("--threads", type=int, help="PyTorch threads (default: PyTorch's choice)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> Result:
    """Makes or reads the text, trains the vocabulary and the model, and
    exports it."""
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.text is not None:
        texts = read_text(args.text)
        print(f"{args.text}: {len(texts)} paragraphs")
    else:
        t0 = time.monotonic()
        texts = builtin_stories(args.stories, args.seed)
        print(f"{len(texts)} stories told by stories260K in {time.monotonic() - t0:.0f} s")
    tok = train_tokenizer(texts, args.vocab)
    data = encode_corpus(tok, texts)
    params = ModelArgs(
        dim=args.dim,
        n_layers=args.layers,
        n_heads=args.heads,
        n_kv_heads=args.kv_heads,
        vocab_size=tok.get_vocab_size(),
        max_seq_len=args.seq_len,
    )
    model = Transformer(params)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{len(data):,} tokens, vocabulary {params.vocab_size}, {n_params / 1e6:.2f} M parameters"
    )
    losses = train(
        model,
        data,
        steps=args.steps,
        batch=args.batch,
        seq_len=args.seq_len,
        lr=args.lr,
        seed=args.seed,
    )
    print(f"loss {losses[0]:.3f} -> {np.mean(losses[-20:]):.3f}")
    report = tinyllm.export_model(model, tok, args.out, quant=args.quant)
    print(f"wrote {args.out} ({report['file_bytes'] / 1e6:.1f} MB, {args.quant})")
    return Result(model, tok, args.out, losses)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    m = tinyllm.Model(result.path)
    ids = m.tokenize(args.prompt)
    with torch.no_grad():
        want = result.model(torch.tensor([ids]))[0].numpy()
    diff = np.abs(m.logits(ids) - want).max() / np.abs(want).max()
    print(f"tinyllm's logits vs PyTorch's: largest difference {diff:.1e} of the largest logit")
    print(args.prompt, end="", flush=True)
    for piece in m.stream(args.prompt, max_tokens=200, temperature=0.8, seed=args.seed):
        print(piece, end="", flush=True)
    print()


if __name__ == "__main__":
    main()
