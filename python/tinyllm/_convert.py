"""Converting models to tinyllm files, and describing model files."""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any, TextIO

from tinyllm import _tinyllm
from tinyllm._model import Model, PathLike, _int, _path

#: The quantization recipes ``convert`` takes.
QUANTS = ("f32", "f16", "bf16", "q8_0", "q4", "q4_1", "q4_mixed")


class _Bar:
    """A one-line progress bar on a terminal stream, for when tqdm is not
    installed."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def __call__(self, done: int, total: int, name: str) -> None:
        width = 30
        filled = width * done // max(total, 1)
        line = f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {name:<28}"
        self.out.write(line[:80])
        if done == total:
            self.out.write("\n")
        self.out.flush()

    def close(self) -> None:
        pass


class _TqdmBar:
    """The engine's ``(done, total, name)`` reports shown by tqdm."""

    def __init__(self, tqdm: Any, out: TextIO) -> None:
        self._make = tqdm
        self._out = out
        self._bar: Any = None

    def __call__(self, done: int, total: int, name: str) -> None:
        if self._bar is None:
            self._bar = self._make(total=total, desc="converting", unit="tensor", file=self._out)
        self._bar.set_postfix_str(name, refresh=False)
        self._bar.update(done - self._bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _progress_bar(show: bool, out: TextIO) -> _Bar | _TqdmBar | None:
    """What shows conversion progress on ``out``: tqdm's bar, or a plain
    one without tqdm; nothing unless ``show`` and ``out`` is a terminal."""
    if not show or not out.isatty():
        return None
    try:  # imported by name: tqdm ships no type stubs
        tqdm = importlib.import_module("tqdm").tqdm
    except ImportError:
        return _Bar(out)
    return _TqdmBar(tqdm, out)


def convert(
    src: PathLike,
    dst: PathLike,
    quant: str = "q4",
    *,
    tokenizer: PathLike | None = None,
    n_threads: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Writes the model at ``src`` as a tinyllm file at ``dst``.

    Args:
        src: a model :class:`tinyllm.Model` opens: a Hugging Face directory
            (f32, f16 or bf16 safetensors), a GGUF file, a llama2.c file or a
            tinyllm file.
        dst: the file to write (replaced only once complete).
        quant: ``f32``, ``f16``, ``bf16``, ``q8_0`` (8 bits), ``q4`` (4 bits,
            one scale per 32 weights), ``q4_1`` (4 bits with an offset), or
            ``q4_mixed`` (``q4`` with 8-bit embeddings, classifier and
            attention values). Matrices whose rows are not a multiple of 32
            values are stored as f16 under the 8- and 4-bit recipes.
        tokenizer: the source's tokenizer (default: as ``Model`` finds it);
            it is stored in the new file, which then opens on its own, with
            the chat template the source has.
        n_threads: threads to quantize with (default: all cores).
        progress: show a progress bar on stderr (tqdm's, when it is
            installed), if stderr is a terminal; False keeps quiet.

    Returns:
        A summary: ``file_bytes``, ``bits_per_weight``, ``parameters``,
        ``tensors``, ``dtypes`` (matrices per type), ``seconds``.
    """
    if quant not in QUANTS:
        raise ValueError(f"quant must be one of {', '.join(QUANTS)}, not {quant!r}")
    if n_threads is not None:
        _int("n_threads", n_threads, minimum=1)
    src, dst = _path("src", src), _path("dst", dst)
    tok_path = None if tokenizer is None else _path("tokenizer", tokenizer)
    # The source's vocabulary and template, found as Model finds them.
    # (one thread, a one-position context: no buffers sized for generating)
    source = Model(src, tok_path, n_threads=1, context_length=1)
    hf_tokenizer = None
    chat_template = source.tokenizer.chat_template or source.info.get("chat_template")
    if not source.tokenizer.is_llama2c:
        text, special = source.tokenizer.to_json_str()
        hf_tokenizer = (text, json.dumps(special))
    del source
    bar = _progress_bar(progress, sys.stderr)
    try:
        return _tinyllm.convert(
            src,
            dst,
            quant,
            tok_path if hf_tokenizer is None else None,
            n_threads,
            bar,
            hf_tokenizer,
            chat_template,
        )
    finally:
        if bar is not None:
            bar.close()


def info(path: PathLike) -> dict[str, Any]:
    """What the model file at ``path`` holds: ``format``, ``config``,
    ``tensors`` (name, dtype, shape, bytes), ``file_bytes``,
    ``bytes_per_token``, and for tinyllm files ``source`` and
    ``quantization``."""
    return _tinyllm.file_info(_path("path", path))


def format_info(i: dict[str, Any]) -> str:
    """``info()`` as the text ``tinyllm info`` prints."""
    lines = [
        f"{i['path']}: {i['format']}, {i['file_bytes'] / 1e6:.1f} MB, "
        f"{i['bytes_per_token'] / 1e6:.1f} MB read per token",
        "config: " + ", ".join(f"{k}={v}" for k, v in i["config"].items()),
    ]
    if "quantization" in i:
        lines.append(f"quantization: {i['quantization']}")
        lines.append(f"source: {i['source']}")
    lines.append(f"tokenizer: {'in the file' if i['has_tokenizer'] else 'separate file'}")
    lines.append(f"{'tensor':<24} {'dtype':<6} {'shape':<14} {'bytes':>12}")
    for name, dtype, shape, nbytes in i["tensors"]:
        lines.append(f"{name:<24} {dtype:<6} {'x'.join(map(str, shape)):<14} {nbytes:>12,}")
    return os.linesep.join(lines)
