"""The ``tinyllm`` command (also ``python -m tinyllm``).

``tinyllm run`` streams a continuation to stdout (the prompt first, as
llama2.c's ``run.c`` prints it) and its speed to stderr; ``tinyllm chat``
opens an interactive chat. With no MODEL both use the built-in model.
``tinyllm serve`` answers OpenAI-style HTTP requests.
``tinyllm convert`` writes a tinyllm file, quantized; ``tinyllm info``
describes a model file; ``tinyllm eval`` measures a quantized model against
its original.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from tinyllm._convert import QUANTS, convert, format_info, info
from tinyllm._errors import TinyLLMError
from tinyllm._eval import eval as evaluate
from tinyllm._model import Model


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        nargs="?",
        help="a model file (tinyllm, GGUF, llama2.c) or Hugging Face model directory "
        "(default: the built-in stories260K)",
    )
    p.add_argument(
        "--hf",
        metavar="OWNER/NAME",
        help="a model of the Hugging Face hub (downloaded; safetensors converted once)",
    )
    p.add_argument(
        "--hf-file",
        metavar="FILE",
        help="with --hf: the repository's file to run, or a glob that one file matches, "
        "e.g. '*Q4_K_M.gguf'",
    )
    p.add_argument(
        "--quant",
        default="auto",
        choices=("auto", "none", *QUANTS),
        help="with --hf: the weight types to convert to; 'none' runs the files as they are "
        "(default 'auto': a GGUF file as it is, safetensors converted to q4)",
    )
    p.add_argument("--tokenizer", "-z", help="tokenizer file (default: the model's own)")
    p.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    p.add_argument(
        "--context",
        "--ctx",
        type=int,
        default=None,
        help="context length per sequence (default: the model's)",
    )
    p.add_argument(
        "--kv-cache",
        default="f16",
        choices=["f16", "f32", "q8_0"],
        help="how the KV cache stores keys and values (default f16)",
    )
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "metal"],
        help="what computes: a Mac's GPU where it runs the model, else the CPU (auto, the "
        "default); the CPU; or a Mac's GPU",
    )


def _sampling_args(p: argparse.ArgumentParser, max_tokens: int | None) -> None:
    p.add_argument(
        "-n", "--max-tokens", type=int, default=max_tokens, help="most tokens to generate"
    )
    p.add_argument("-t", "--temperature", type=float, default=0.8, help="0 is greedy (default 0.8)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default 0.95)")
    p.add_argument("--top-k", type=int, default=0, help="top-k sampling (default 0: off)")
    p.add_argument("--min-p", type=float, default=0.0, help="min-p sampling (default 0: off)")
    p.add_argument("--repeat-penalty", type=float, default=1.0, help="(default 1: off)")
    p.add_argument("--seed", "-s", type=int, default=None, help="random seed (default: random)")


def version_text() -> str:
    """What ``tinyllm --version`` prints: the package's version, the device
    ``"auto"`` picks here and the kernels the engine runs on this CPU."""
    from tinyllm import __version__, _tinyllm

    tiers = ", ".join(_tinyllm.available_isas())
    device = "metal" if _tinyllm.metal_available() else "cpu"
    kernels = _tinyllm.isa()
    return f"tinyllm {__version__} (device {device}, kernels {kernels}; this CPU runs {tiers})"


class _Version(argparse.Action):
    """``--version``, worked out only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kw: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(version_text())
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyllm", description="Run language models on your own machine."
    )
    parser.add_argument("--version", action=_Version)
    # -v after the command: `tinyllm chat -v`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log what the model picked (kernels, tokenizer, template) to stderr",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="continue a prompt (default: tell a story)")
    _model_args(run)
    run.add_argument("-p", "--prompt", default="", help="the text to continue")
    _sampling_args(run, max_tokens=256)
    chat = sub.add_parser("chat", parents=[common], help="chat in the terminal")
    _model_args(chat)
    chat.add_argument("--system", default=None, help="system prompt")
    _sampling_args(chat, max_tokens=None)
    srv = sub.add_parser(
        "serve", parents=[common], help="serve the model over an OpenAI-compatible HTTP API"
    )
    _model_args(srv)
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    srv.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    srv.add_argument(
        "--api-key", default=None, help="require 'Authorization: Bearer API_KEY' (default: none)"
    )
    srv.add_argument(
        "--parallel",
        type=int,
        default=None,
        metavar="N",
        help="requests decoded at once; more wait (default: chosen from memory, up to 16)",
    )
    srv.add_argument("--name", default=None, help="the model id to report (default: file name)")
    conv = sub.add_parser(
        "convert", parents=[common], help="write a model as a tinyllm file, quantized"
    )
    conv.add_argument(
        "src", help="model file (tinyllm, GGUF, llama2.c) or Hugging Face model directory"
    )
    conv.add_argument("-o", "--output", required=True, help="the tinyllm file to write")
    conv.add_argument("--quant", default="q4", choices=QUANTS, help="weight types (default q4)")
    conv.add_argument("--tokenizer", "-z", help="tokenizer file (default: found beside the model)")
    conv.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    conv.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    info_p = sub.add_parser(
        "info", parents=[common], help="describe a model file: header and tensors"
    )
    info_p.add_argument("file", help="model file")
    ev = sub.add_parser(
        "eval", parents=[common], help="KL divergence, top-1 and perplexity against a reference"
    )
    ev.add_argument("model", help="the model to measure (e.g. a quantized tinyllm file)")
    ev.add_argument("--reference", required=True, help="the reference (e.g. the f32 original)")
    ev.add_argument("--text", required=True, help="a UTF-8 text file to score")
    ev.add_argument("--ctx", type=int, default=128, help="tokens per chunk (default 128)")
    ev.add_argument("--chunks", type=int, default=None, help="score at most this many chunks")
    ev.add_argument("--tokenizer", "-z", help="tokenizer of the reference, if not beside it")
    ev.add_argument(
        "--kv-cache",
        default="f16",
        choices=["f16", "f32", "q8_0"],
        help="the measured model's KV cache (default f16; the reference's is f32)",
    )
    return parser


def _open(args: argparse.Namespace) -> Model:
    kw = {
        "n_threads": args.threads,
        "context_length": args.context,
        "kv_cache": args.kv_cache,
        "device": args.device,
    }
    if getattr(args, "parallel", None) is not None:
        kw["max_sequences"] = args.parallel
    if args.hf is not None:
        if args.model is not None:
            raise SystemExit("tinyllm: give a model file or --hf, not both")
        quant = None if args.quant == "none" else args.quant
        return Model.from_pretrained(args.hf, quant=quant, filename=args.hf_file, **kw)
    if args.hf_file is not None or args.quant != "auto":
        raise SystemExit("tinyllm: --hf-file and --quant go with --hf")
    if args.model is None:
        return Model.default(**kw)
    return Model(args.model, args.tokenizer, **kw)


def _sampling(args: argparse.Namespace) -> dict[str, object]:
    options: dict[str, object] = {
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "min_p": args.min_p,
        "repeat_penalty": args.repeat_penalty,
        "seed": args.seed,
    }
    if args.max_tokens is not None:
        options["max_tokens"] = args.max_tokens
    return options


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.1f} tokens/s" if n and seconds > 0 else "-"


def _count(n: int) -> str:
    return f"{n} token" if n == 1 else f"{n} tokens"


def _run(args: argparse.Namespace) -> None:
    model = _open(args)
    ids = model.tokenize(args.prompt)
    stream = model.stream(ids, **_sampling(args))  # type: ignore[arg-type]
    out = sys.stdout
    out.write(model.detokenize(ids))
    out.flush()
    for piece in stream:
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    s = stream.stats
    print(
        f"prompt: {_count(s['prompt_tokens'])}, "
        f"{_rate(s['prompt_tokens'], s['prompt_seconds'])} | "
        f"generation: {_count(s['generated_tokens'])}, "
        f"{_rate(s['generated_tokens'], s['generate_seconds'])} "
        f"({model.info['n_threads']} threads, {model.info['isa']})",
        file=sys.stderr,
    )


def _chat(args: argparse.Namespace) -> None:
    model = _open(args)
    model.chat(system=args.system, **_sampling(args))


def _serve(args: argparse.Namespace) -> None:
    try:
        from tinyllm.server import serve
    except ImportError as e:
        raise SystemExit(
            f"tinyllm: serving needs the server extra ({e}): pip install 'tinyllm[server]'"
        ) from None
    model = _open(args)
    serve(model, args.host, args.port, api_key=args.api_key, name=args.name)


def _convert(args: argparse.Namespace) -> None:
    r = convert(
        args.src,
        args.output,
        args.quant,
        tokenizer=args.tokenizer,
        n_threads=args.threads,
        progress=not args.quiet,
    )
    dtypes = ", ".join(f"{n} {t}" for t, n in r["dtypes"].items())
    print(
        f"wrote {r['path']}: {r['file_bytes'] / 1e6:.1f} MB, {r['bits_per_weight']:.2f} bits per "
        f"weight over {r['parameters']:,} weights ({dtypes}), in {r['seconds']:.1f} s",
        file=sys.stderr,
    )


def _info(args: argparse.Namespace) -> None:
    print(format_info(info(args.file)))


def _eval(args: argparse.Namespace) -> None:
    ref = Model(args.reference, args.tokenizer, kv_cache="f32")
    tok = args.tokenizer if args.model.endswith(".bin") else None
    test = Model(args.model, tok, kv_cache=args.kv_cache)
    r = evaluate(test, ref, args.text, ctx=args.ctx, max_chunks=args.chunks)
    print(
        f"{args.model} (KV cache {args.kv_cache}) against {args.reference} (f32), "
        f"{r['positions']} predictions:\n"
        f"  mean KL divergence {r['kl_mean']:.5f} (99th percentile {r['kl_p99']:.4f})\n"
        f"  same top token     {100 * r['top1']:.2f}%\n"
        f"  perplexity         {r['ppl']:.4f} (reference {r['ppl_reference']:.4f})"
    )


def _log_to_stderr() -> None:
    """Shows the ``tinyllm`` logger's INFO records on stderr (the library
    itself configures no handler)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("tinyllm: %(message)s"))
    log = logging.getLogger("tinyllm")
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.verbose:
        _log_to_stderr()
    try:
        commands = {
            "run": _run,
            "chat": _chat,
            "serve": _serve,
            "convert": _convert,
            "info": _info,
            "eval": _eval,
        }
        commands[args.command](args)
    except (OSError, TinyLLMError, ValueError, TypeError) as e:
        if isinstance(e, BrokenPipeError):
            return 0
        print(f"tinyllm: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
