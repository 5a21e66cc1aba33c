"""The Python face of the engine: :class:`Model`."""

from __future__ import annotations

import fnmatch
import json
import logging
import operator
import os
import secrets
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from tinyllm import _tinyllm
from tinyllm._errors import ModelFormatError
from tinyllm._grammar import grammar_spec
from tinyllm._template import ChatTemplate
from tinyllm._tokenizer import Tokenizer

if TYPE_CHECKING:
    from tinyllm._chat import ChatSession
    from tinyllm._types import ChatCompletion, ChatCompletionChunk

PathLike = str | os.PathLike[str]
Prompt = str | Sequence[int]

#: Says at INFO what a model picked when it opened: its kernels (ISA), the
#: device, its tokenizer and its chat template. tinyllm adds no handler:
#: ``logging.basicConfig(level=logging.INFO)`` (or ``tinyllm -v``) shows it.
log = logging.getLogger("tinyllm")

#: The model shipped inside the package (see NOTICE): Karpathy's stories260K.
BUILTIN_MODEL = "stories260K.bin"
BUILTIN_TOKENIZER = "tok512.bin"


@dataclass(frozen=True)
class ModelConfig:
    """The dimensions of a model."""

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    head_dim: int
    rope_theta: float
    norm_eps: float


class Model:
    """A language model loaded from a file, ready to generate text.

    Args:
        path: the model file. llama2.c files are read in all three layouts
            (legacy f32, ``export.py`` version 1 f32 and version 2 int8). The
            weights are memory-mapped, not copied: a model costs its file size
            in page cache plus the KV cache and a few buffers.
        tokenizer: the llama2.c ``tokenizer.bin`` of the model. If None,
            ``tokenizer.bin`` or ``tok{vocab_size}.bin`` beside the model.
        n_threads: threads to compute with (default: ``TINYLLM_NUM_THREADS``
            if set, else the physical cores this process may use).
        context_length: the most tokens a sequence may hold (default and
            maximum: the model's ``seq_len``).
        max_sequences: the most generations decoded together; more wait
            their turn (default: up to 16, as many as half the available
            memory holds at full context).
        kv_cache: how the KV cache stores keys and values: ``"f16"``
            (default), ``"f32"`` or ``"q8_0"`` (needs a ``head_dim`` that is
            a multiple of 32).
        device: what computes: ``"auto"`` (default: Metal on a Mac whose
            GPU runs this model, else the CPU), ``"cpu"``, or ``"metal"``
            (the GPU of a Mac; weight types without a GPU kernel, llama2.c's
            int8 groups, and ``kv_cache="q8_0"`` raise ``ValueError``, where
            ``"auto"`` runs them on the CPU). ``info["device"]`` says which
            runs the model.

    Any number of threads may call :meth:`generate`, :meth:`stream`,
    :meth:`logits` and the chat methods of one model at once: calls that
    overlap are decoded together, in the same forward passes, and each gets
    what it would have got alone.

    Raises:
        FileNotFoundError: a file does not exist.
        ModelFormatError: a file is truncated, corrupt, of an unknown kind, or
            the tokenizer does not match the model's vocabulary.

    Example:
        >>> import tinyllm
        >>> m = tinyllm.Model.default()
        >>> text = m.generate("Once upon a time", max_tokens=20, temperature=0)
    """

    def __init__(
        self,
        path: PathLike,
        tokenizer: PathLike | Tokenizer | None = None,
        *,
        n_threads: int | None = None,
        context_length: int | None = None,
        max_sequences: int | None = None,
        kv_cache: str = "f16",
        device: str = "auto",
    ) -> None:
        path = _path("path", path)
        if n_threads is not None:
            _int("n_threads", n_threads, minimum=1)
        if context_length is not None:
            _int("context_length", context_length, minimum=1)
        if max_sequences is not None:
            _int("max_sequences", max_sequences, minimum=1)
        if not isinstance(kv_cache, str):
            raise TypeError(f"kv_cache must be a str, not {type(kv_cache).__name__}")
        if not isinstance(device, str):
            raise TypeError(f"device must be a str, not {type(device).__name__}")
        if tokenizer is not None and not isinstance(tokenizer, Tokenizer):
            tokenizer = _path("tokenizer", tokenizer)
        self._open_engine: _tinyllm.Engine | None = _tinyllm.Engine(
            path,
            n_threads=n_threads,
            context_length=context_length,
            max_sequences=max_sequences,
            kv_cache=kv_cache,
            device=device,
        )
        self.config = ModelConfig(**self._engine.config())
        self._tokenizer = self._attach_tokenizer(path, tokenizer)
        self._chat_template: ChatTemplate | None = None
        self._grammar_lock = threading.Lock()
        self._grammars_ready = False
        self._pooling: str | None = None
        #: How ``repr`` names the model (``from_pretrained`` gives the repo).
        self._label = os.path.basename(os.path.normpath(path)) or path
        if log.isEnabledFor(logging.INFO):
            self._log_opened()

    @property
    def _engine(self) -> _tinyllm.Engine:
        engine = self._open_engine
        if engine is None:
            raise ValueError(f"the model {self._label!r} is closed")
        return engine

    def close(self) -> None:
        """Releases the model: generations still running in other threads
        fail with ``ValueError("the model was closed")``, the engine's thread
        stops, its KV cache and buffers are freed and the thread pool is let
        go (it ends with its last model). The file is unmapped once no call
        still runs. Any later call raises ``ValueError``; closing twice is
        harmless. ``with tinyllm.Model(...) as m:`` closes on leaving."""
        engine, self._open_engine = self._open_engine, None
        if engine is not None:
            engine.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _log_opened(self) -> None:
        """Logs what this model picked (see :data:`log`)."""
        i = self.info
        log.info(
            "opened %s: %s, %s %s, %s parameters; context %d, KV cache %s",
            i["path"],
            i["format"],
            i["family"],
            i["weight_type"],
            _count(i["parameters"]),
            i["context_length"],
            i["kv_cache"],
        )
        log.info("device: %s, kernels %s, %d threads", i["device"], i["isa"], i["n_threads"])
        tok = self.tokenizer
        kind = "llama2.c" if tok.is_llama2c else "Hugging Face"
        log.info("tokenizer: %s, %d tokens, from %s", kind, tok.vocab_size, tok.source)
        if self._chat_template_source() is not None:
            log.info("chat template: the model's own (picked at the first chat)")
        else:
            log.info("chat template: none in the model; a built-in one at the first chat")

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer (see :class:`tinyllm.Tokenizer`); fixed when
        the model opens, since the engine streams text with its tokens."""
        return self._tokenizer

    def _attach_tokenizer(self, path: str, given: str | Tokenizer | None) -> Tokenizer:
        """Finds the model's vocabulary and hands the engine what streaming
        text needs: llama2.c's tokenizer runs in the engine itself; any other
        gives the engine the bytes of each of its tokens."""
        info = self._engine.info()
        if isinstance(given, Tokenizer):
            tok = given
        elif given is not None and not _is_llama2c_tokenizer(given):
            tok = Tokenizer.from_file(given)
        elif given is not None:
            impl = self._engine.use_llama2c_tokenizer(given)
            return Tokenizer._from_llama2c_impl(impl, source=given)
        elif (embedded := self._engine.embedded_tokenizer()) is not None:
            tok = Tokenizer.from_json_str(embedded[0], json.loads(embedded[1]), source=path)
        elif info["format"] == "GGUF" or os.path.isdir(path):
            tok = Tokenizer.from_file(path)
        else:
            impl = self._engine.use_llama2c_tokenizer(None)
            source = info.get("tokenizer_path") or path
            return Tokenizer._from_llama2c_impl(impl, source=source)
        if tok.vocab_size > self.config.vocab_size:
            raise ModelFormatError(
                f"{tok.source}: the tokenizer has {tok.vocab_size} tokens but the model "
                f"{path} has a vocabulary of {self.config.vocab_size}"
            )
        pieces, strip = tok.token_bytes_table()
        self._engine.set_pieces(pieces, strip, tok.bos_id)
        return tok

    @classmethod
    def default(cls, **kwargs: Any) -> Model:
        """The small model built into the package (stories260K, which tells
        children's stories), for trying tinyllm out offline."""
        base = resources.files("tinyllm") / "models"
        with (
            resources.as_file(base / BUILTIN_MODEL) as model,
            resources.as_file(base / BUILTIN_TOKENIZER) as tok,
        ):
            return cls(model, tok, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        repo_id: str,
        *,
        quant: str | None = "auto",
        revision: str | None = None,
        filename: str | None = None,
        cache_dir: PathLike | None = None,
        token: str | bool | None = None,
        **kwargs: Any,
    ) -> Model:
        """Downloads a model from the Hugging Face hub (with
        ``huggingface_hub``: its cache, progress bars, tokens, and
        ``HF_HUB_OFFLINE=1`` to work from the cache alone) and opens it. A
        model that is converted is converted once, and kept in tinyllm's
        cache (``$TINYLLM_CACHE``, else ``~/.cache/tinyllm``) for next time.

        Args:
            repo_id: ``"owner/name"`` of a model repository with
                ``config.json``, safetensors and ``tokenizer.json``, or (with
                ``filename``) of one holding GGUF files.
            quant: ``"auto"`` (default): a GGUF file runs as it is (its own
                quantization, Q4_K_M say, is kept), safetensors weights are
                converted to ``"q4"``. None runs the downloaded weights as
                they are; a recipe of :func:`tinyllm.convert` (``"q8_0"``,
                ``"q4"``, ...) converts to it.
            revision: a branch, tag or commit (default: the main branch).
            filename: a file of the repository to use, a GGUF file say, or a
                glob such as ``"*Q4_K_M.gguf"`` (matched without regard to
                case against the repository's files, or the cached ones
                under ``HF_HUB_OFFLINE=1``) that exactly one file must match.
            cache_dir: the hub cache (default: ``huggingface_hub``'s).
            token: a hub token for private or gated models.
            kwargs: passed to :class:`Model` (``n_threads``, ...).

        Only the files a model needs are downloaded: the configuration,
        tokenizer and template files, and the safetensors shards that
        ``model.safetensors.index.json`` lists (not a ``consolidated``
        copy of the same weights beside them).

        Raises:
            ValueError: a bad ``repo_id`` or ``quant``, or a ``filename``
                glob that matches no file or more than one (the message lists
                the candidates).
        """
        from tinyllm._convert import QUANTS

        if not isinstance(repo_id, str) or repo_id.count("/") != 1:
            raise ValueError(f"repo_id must be 'owner/name', not {repo_id!r}")
        if quant is not None and quant != "auto" and quant not in QUANTS:
            raise ValueError(
                f"quant must be 'auto', None or one of {', '.join(QUANTS)}, not {quant!r}"
            )
        if filename is not None and not isinstance(filename, str):
            raise TypeError(f"filename must be a str, not {type(filename).__name__}")
        try:
            import huggingface_hub as hub
        except ImportError as e:  # pragma: no cover - a dependency of tinyllm
            raise ImportError("from_pretrained needs the huggingface-hub package") from e
        cache = None if cache_dir is None else _path("cache_dir", cache_dir)
        if filename is not None:
            if _is_glob(filename):
                files = _hub_files(hub, repo_id, revision, cache, token)
                filename = _match_one(repo_id, filename, files)
            local = hub.hf_hub_download(
                repo_id, filename, revision=revision, cache_dir=cache, token=token
            )
            # .../snapshots/<commit>/<filename, perhaps in a folder>
            commit = Path(local).parents[len(Path(filename).parts) - 1].name
        else:
            local = _download_weights(hub, repo_id, revision, cache, token)
            commit = Path(local).name
        if quant == "auto":
            quant = None if filename is not None else "q4"
        if quant is None:
            model = cls(local, **kwargs)
        else:
            from tinyllm._convert import convert

            stem = Path(filename).stem if filename else "model"
            dst = _cache_root() / repo_id.replace("/", "--") / commit / f"{stem}-{quant}.tllm"
            if not dst.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                log.info("converting %s to %s (once): %s", repo_id, quant, dst)
                convert(local, dst, quant)
            model = cls(dst, **kwargs)
        model._label = f"{repo_id}/{filename}" if filename else repo_id
        return model

    # -- facts ---------------------------------------------------------------

    @property
    def info(self) -> dict[str, Any]:
        """The file's format and size, bytes streamed per token, the KV cache
        (its type, ``kv_cache_bytes`` in use now, ``kv_bytes_per_token``),
        ``max_sequences`` and ``active_sequences``, threads, the kernel
        instruction set, the ``device`` that runs the model (``"cpu"`` or the
        GPU's name), and so on."""
        return self._engine.info()

    @property
    def context_length(self) -> int:
        """The most tokens a sequence may hold."""
        return int(self.info["context_length"])

    def __repr__(self) -> str:
        i = self.info
        return (
            f"Model({self._label!r}, {i['family']}, {_count(i['parameters'])} params, "
            f"{i['weight_type']}, ctx {i['context_length']}, {i['isa']})"
        )

    def reset(self) -> None:
        """Forgets the keys and values that finished generations left in the
        KV cache. (A new prompt reuses the longest prefix it shares with a
        running or recent sequence; this makes the next call start from
        nothing, as when timing prompt processing.)"""
        self._engine.reset()

    # -- tokens --------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool = True) -> list[int]:
        """Token ids of ``text`` as plain text (special-token spellings stay
        text), with what the vocabulary puts first (BOS) if ``add_bos``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        return self.tokenizer.encode(text, add_special_tokens=add_bos)

    def detokenize(self, ids: Iterable[int]) -> str:
        """The text of token ``ids`` (special tokens such as BOS and EOS give
        no text)."""
        return self.tokenizer.decode(_ids("ids", ids))

    def logits(self, ids: Sequence[int]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The next-token logits after each position of ``ids``, as a float32
        array of shape ``(len(ids), vocab_size)``, computed from an empty KV
        cache."""
        return self._engine.logits(_ids("ids", ids))

    # -- embeddings ----------------------------------------------------------

    @property
    def pooling(self) -> str:
        """How :meth:`embed` pools a text's hidden states by default: what the
        model's files ask for (``"last"`` for decoder embedding models such
        as Qwen3-Embedding, from a GGUF's ``pooling_type`` or a Hugging Face
        directory's ``1_Pooling/config.json``), else ``"mean"``."""
        if self._pooling is None:
            self._pooling = _pooling_of(str(self.info["path"]))
        return self._pooling

    def embed(
        self,
        input: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]],
        *,
        pooling: str | None = None,
        normalize: bool = True,
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Embeddings of ``input``: a text, token ids, or a list of either,
        ``(n, dim)`` float32, one row per input in order.

        Each input is run through the model on its own (several inputs are
        decoded together) and its final hidden states (after the last norm)
        are pooled: ``"mean"`` over the tokens, ``"last"`` token, or
        ``"cls"`` (the first); default :attr:`pooling`. Rows are scaled to
        length 1 unless ``normalize=False``.
        """
        how = self.pooling if pooling is None else pooling
        if how not in ("mean", "last", "cls"):
            raise ValueError(f"pooling must be 'mean', 'last' or 'cls', got {how!r}")
        single = isinstance(input, str) or (
            isinstance(input, Sequence) and len(input) > 0 and isinstance(input[0], int)
        )
        items = [input] if single else list(input)
        if not items:
            raise ValueError("input must not be empty")
        ids = [
            self.tokenize(x) if isinstance(x, str) else _ids(f"input[{i}]", x)
            for i, x in enumerate(items)
        ]
        for i, row in enumerate(ids):
            if not row:
                raise ValueError(f"input[{i}] has no tokens")
        if len(ids) == 1:
            states = [self._engine.hidden(ids[0])]
        else:  # from threads, so the engine runs them together
            with ThreadPoolExecutor(max_workers=min(len(ids), 16)) as pool:
                states = list(pool.map(self._engine.hidden, ids))
        out = np.empty((len(ids), self.config.dim), dtype=np.float32)
        for i, h in enumerate(states):
            v = h.mean(axis=0) if how == "mean" else h[-1] if how == "last" else h[0]
            if normalize:
                v = v / max(float(np.linalg.norm(v)), 1e-12)
            out[i] = v
        return out

    # -- generation ----------------------------------------------------------

    def stream(
        self,
        prompt: Prompt,
        max_tokens: int = 256,
        temperature: float = 0.8,
        top_k: int = 0,
        top_p: float = 0.95,
        min_p: float = 0.0,
        repeat_penalty: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        logit_bias: Mapping[int, float] | None = None,
        logprobs: int | None = None,
        response_format: Mapping[str, Any] | type | None = None,
        grammar: str | None = None,
        regex: str | None = None,
        _pin: int | None = None,
    ) -> Stream:
        """Like :meth:`generate`, but returns an iterator over the new text
        as it decodes (never a split UTF-8 character). After the loop the
        stream's ``finish_reason``, ``tokens`` and ``stats`` tell what
        happened. Ctrl-C raises ``KeyboardInterrupt`` between tokens and
        stops this generation (``cancel()`` or dropping the stream does the
        same); the model and its other generations go on.

        With ``logprobs=n`` (0 to 20), ``stream.take_logprobs()`` hands out
        a record per generated token: ``(token, logprob, top)``, where
        ``top`` lists the ``n`` most likely tokens with their logprobs. They
        are the model's own log-probabilities (before ``logit_bias``,
        penalties and temperature)."""
        ids = self.tokenize(prompt) if isinstance(prompt, str) else _ids("prompt", prompt)
        spec = grammar_spec(response_format, grammar, regex)
        if spec is not None:
            self._enable_grammars()
        return self._engine.generate(
            ids,
            max_tokens=_int("max_tokens", max_tokens, minimum=0),
            temperature=_float("temperature", temperature),
            top_k=_int("top_k", top_k, minimum=0),
            top_p=_float("top_p", top_p),
            min_p=_float("min_p", min_p),
            repeat_penalty=_float("repeat_penalty", repeat_penalty),
            seed=secrets.randbits(64) if seed is None else _int("seed", seed, minimum=0),
            stop=_stops(stop),
            stop_ids=sorted(self.tokenizer.eos_ids),
            pin=_pin,
            presence_penalty=_float("presence_penalty", presence_penalty),
            frequency_penalty=_float("frequency_penalty", frequency_penalty),
            logit_bias=_logit_bias(logit_bias),
            logprobs=None if logprobs is None else _int("logprobs", logprobs, minimum=0),
            grammar=spec,
        )

    def _enable_grammars(self) -> None:
        """Hands the vocabulary's token bytes to the engine, once, for
        structured output."""
        with self._grammar_lock:
            if self._grammars_ready:
                return
            tok = self.tokenizer
            ends = tok.eos_ids
            special = tok.special_ids | ends
            tokens = [b"" if i in special else tok.token_bytes(i) for i in range(tok.vocab_size)]
            names = [(i, tok.id_to_token(i) or f"<special {i}>") for i in sorted(special)]
            self._engine.enable_grammars(tokens, names, sorted(ends))
            self._grammars_ready = True

    @overload
    def generate(
        self,
        prompt: Prompt,
        max_tokens: int = ...,
        temperature: float = ...,
        top_k: int = ...,
        top_p: float = ...,
        min_p: float = ...,
        repeat_penalty: float = ...,
        seed: int | None = ...,
        stop: str | Sequence[str] | None = ...,
        presence_penalty: float = ...,
        frequency_penalty: float = ...,
        logit_bias: Mapping[int, float] | None = ...,
        response_format: Mapping[str, Any] | type | None = ...,
        grammar: str | None = ...,
        regex: str | None = ...,
    ) -> str: ...

    @overload
    def generate(
        self,
        prompt: list[str] | list[list[int]] | list[Sequence[int]],
        max_tokens: int = ...,
        temperature: float = ...,
        top_k: int = ...,
        top_p: float = ...,
        min_p: float = ...,
        repeat_penalty: float = ...,
        seed: int | None = ...,
        stop: str | Sequence[str] | None = ...,
        presence_penalty: float = ...,
        frequency_penalty: float = ...,
        logit_bias: Mapping[int, float] | None = ...,
        response_format: Mapping[str, Any] | type | None = ...,
        grammar: str | None = ...,
        regex: str | None = ...,
    ) -> list[str]: ...

    def generate(
        self,
        prompt: Prompt | list[str] | list[list[int]] | list[Sequence[int]],
        max_tokens: int = 256,
        temperature: float = 0.8,
        top_k: int = 0,
        top_p: float = 0.95,
        min_p: float = 0.0,
        repeat_penalty: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        logit_bias: Mapping[int, float] | None = None,
        response_format: Mapping[str, Any] | type | None = None,
        grammar: str | None = None,
        regex: str | None = None,
    ) -> str | list[str]:
        """Continues ``prompt`` and returns the new text only.

        Args:
            prompt: text (encoded with BOS first), or token ids as they are;
                or a list of such prompts, which are decoded together and
                give a list of texts in the same order.
            max_tokens: the most tokens to generate.
            temperature: 0 picks the most likely token each time (greedy);
                higher values sample more freely.
            top_k: sample among the ``top_k`` most likely tokens (0: all).
            top_p: sample among the most likely tokens whose probabilities
                add up to ``top_p`` (1: all).
            min_p: drop tokens less likely than ``min_p`` times the most
                likely one (0: none).
            repeat_penalty: values above 1 make recent tokens less likely.
            seed: the same seed and settings give the same text; None draws one.
            stop: generation ends before the first of these strings appears.
            presence_penalty: subtracted (-2 to 2) from the logit of every
                token already generated, as in OpenAI's API.
            frequency_penalty: subtracted (-2 to 2) once per time a token
                was already generated.
            logit_bias: token id -> value (-100 to 100) added to its logit;
                -100 in effect bans a token.
            response_format: structured output, as OpenAI's API takes it:
                ``{"type": "json_object"}``, ``{"type": "json_schema",
                "json_schema": {"schema": {...}}}``, or a pydantic model
                class. Tokens that would break the format are never drawn,
                so a text that ends with finish reason "stop" parses and
                validates (one cut off by ``max_tokens`` may not).
            grammar: the same for a context-free grammar, in Lark
                (llguidance's dialect) or GBNF (llama.cpp's, rules with
                ``::=``, ``root`` first).
            regex: the same for a regular expression the text must match.

        The model stops at the end of its text (the vocabulary's EOS and
        end-of-turn tokens, and for llama2.c vocabularies BOS, as run.c
        does), at a stop string, after ``max_tokens``, or when the context
        is full. A prompt
        longer than the context raises :class:`ContextLengthError`.
        """
        options: dict[str, Any] = {
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "min_p": min_p,
            "repeat_penalty": repeat_penalty,
            "seed": seed,
            "stop": stop,
            "presence_penalty": presence_penalty,
            "frequency_penalty": frequency_penalty,
            "logit_bias": logit_bias,
            "response_format": response_format,
            "grammar": grammar,
            "regex": regex,
        }
        if not _is_prompt_list(prompt):
            return "".join(self.stream(prompt, **options))  # type: ignore[arg-type]
        # Start every stream before reading any, so they decode together.
        streams = [self.stream(p, **options) for p in prompt]  # type: ignore[arg-type]
        return ["".join(s) for s in streams]

    # -- chat ----------------------------------------------------------------

    @property
    def chat_template(self) -> ChatTemplate:
        """The model's chat template: its own (from ``tokenizer_config.json``,
        the GGUF metadata or the tinyllm header), else a built-in one chosen
        by the special tokens of the vocabulary (Llama 3, ChatML, or Llama
        2's ``[INST]``)."""
        if self._chat_template is None:
            from tinyllm._chat import model_chat_template

            template = model_chat_template(self)
            log.info(
                "chat template: %s",
                f"built-in {template.name!r}" if template.name else "the model's own",
            )
            self._chat_template = template
        return self._chat_template

    @chat_template.setter
    def chat_template(self, template: ChatTemplate | str) -> None:
        if isinstance(template, str):
            template = ChatTemplate(template)
        if not isinstance(template, ChatTemplate):
            raise TypeError(
                f"chat_template must be a ChatTemplate or str, not {type(template).__name__}"
            )
        self._chat_template = template

    def _chat_template_source(self) -> str | None:
        """The model's own chat template text, if its files have one."""
        source = self.tokenizer.chat_template or self.info.get("chat_template")
        return source if isinstance(source, str) and source.strip() else None

    def encode_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        """The token ids the chat path feeds the model for ``messages``
        (``[{"role": ..., "content": ...}, ...]``): the template's own markers
        as special tokens, the text of the messages as plain text only.
        ``tools`` go to the template as they are."""
        from tinyllm._chat import encode_chat

        return encode_chat(self, messages, add_generation_prompt=add_generation_prompt, tools=tools)

    @overload
    def chat_completion(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        stream: Literal[False] = ...,
        **options: Any,
    ) -> ChatCompletion: ...

    @overload
    def chat_completion(
        self, messages: Sequence[Mapping[str, Any]], *, stream: Literal[True], **options: Any
    ) -> Iterator[ChatCompletionChunk]: ...

    @overload
    def chat_completion(
        self, messages: Sequence[Mapping[str, Any]], *, stream: bool, **options: Any
    ) -> ChatCompletion | Iterator[ChatCompletionChunk]: ...

    def chat_completion(
        self, messages: Sequence[Mapping[str, Any]], *, stream: bool = False, **options: Any
    ) -> ChatCompletion | Iterator[ChatCompletionChunk]:
        """Replies to ``messages`` as OpenAI's chat completions API does: a
        dict with ``choices[0]["message"]["content"]``, ``finish_reason`` and
        ``usage`` (typed as :class:`tinyllm.ChatCompletion`), or with
        ``stream=True`` an iterator of chunk dicts
        (:class:`tinyllm.ChatCompletionChunk`).
        ``options`` are those of :meth:`stream` (``max_tokens``,
        ``temperature``, ``response_format``, ...), and ``tools``,
        ``tool_choice`` and ``parallel_tool_calls`` as OpenAI takes them."""
        from tinyllm._chat import chat_completion

        return chat_completion(self, messages, stream=stream, **options)

    def chat_session(self, system: str | None = None, **options: Any) -> ChatSession:
        """A conversation that keeps its history: ``send(text) -> str`` and
        ``stream(text)``. The KV cache keeps earlier turns, so each turn
        only processes its new tokens."""
        from tinyllm._chat import ChatSession

        return ChatSession(self, system=system, **options)

    def chat(self, system: str | None = None, **options: Any) -> None:
        """An interactive chat in the terminal with the model's template.

        Commands: ``/reset`` forgets the conversation, ``/system TEXT`` sets
        the system prompt (and resets), ``/quit`` (or Ctrl-D) leaves; Ctrl-C
        stops a reply. Shows tokens/s after each reply. ``options`` go to
        :meth:`stream` (``temperature``, ``max_tokens``, ...)."""
        from tinyllm._chat import chat

        chat(self, system=system, **options)


Stream = _tinyllm.Stream


#: What from_pretrained fetches of a Hugging Face model repository before
#: its weights: configuration, tokenizer, template and the shards' index.
_HUB_FILES = ["*.json", "*.jinja", "tokenizer.model"]

#: The most candidates a failed ``filename`` glob lists.
_MAX_LISTED = 12


def _download_weights(
    hub: Any, repo_id: str, revision: str | None, cache: str | None, token: str | bool | None
) -> str:
    """Downloads a safetensors repository's small files, then the weight
    files it uses: the shards its ``model.safetensors.index.json`` lists, else
    ``model.safetensors``. Returns the snapshot directory."""
    kw: dict[str, Any] = {"cache_dir": cache, "token": token}
    local = hub.snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_FILES, **kw)
    index = Path(local) / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelFormatError(f"{index}: not a safetensors index ({e!r})") from None
        if not shards or not all(isinstance(s, str) for s in shards):
            raise ModelFormatError(f"{index}: its weight_map names no shard files")
    else:
        shards = ["model.safetensors"]
    # The same commit as the small files, even if the branch moved meanwhile.
    found: str = hub.snapshot_download(
        repo_id, revision=Path(local).name, allow_patterns=shards, **kw
    )
    return found


def _is_glob(name: str) -> bool:
    return any(c in name for c in "*?[")


def _hub_files(
    hub: Any, repo_id: str, revision: str | None, cache: str | None, token: str | bool | None
) -> list[str]:
    """The files of a hub repository: as the hub lists them, or as its cache
    holds them when ``HF_HUB_OFFLINE=1`` (or the hub cannot be reached)."""
    from huggingface_hub import constants  # a submodule, not loaded with the package

    root = Path(cache or constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    offline = getattr(constants, "is_offline_mode", None)
    if not (offline() if callable(offline) else constants.HF_HUB_OFFLINE):
        try:
            return sorted(hub.list_repo_files(repo_id, revision=revision, token=token))
        except Exception as e:  # the hub's errors differ between its versions
            snapshot = _cached_snapshot(root, revision)
            if snapshot is None:
                raise
            log.warning("cannot list %s on the hub (%s); using the cached files", repo_id, e)
            return _files_under(snapshot)
    snapshot = _cached_snapshot(root, revision)
    if snapshot is None:
        raise FileNotFoundError(
            f"{repo_id} ({revision or 'main'}) is not in the hub cache {root.parent}, "
            "and HF_HUB_OFFLINE=1 forbids listing it on the hub"
        )
    return _files_under(snapshot)


def _cached_snapshot(root: Path, revision: str | None) -> Path | None:
    """The snapshot directory of ``revision`` in a repository's hub cache:
    a commit's own, or the one a branch or tag points to."""
    rev = revision or "main"
    ref = root / "refs" / rev
    if ref.is_file():
        rev = ref.read_text(encoding="utf-8").strip()
    snapshot = root / "snapshots" / rev
    return snapshot if snapshot.is_dir() else None


def _files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _match_one(repo_id: str, pattern: str, files: list[str]) -> str:
    """The one file of ``files`` that the glob ``pattern`` matches (case
    aside); a ValueError listing the candidates otherwise."""
    found = [f for f in files if fnmatch.fnmatchcase(f.lower(), pattern.lower())]
    if len(found) == 1:
        return found[0]
    if found:
        head = f"{len(found)} files of {repo_id} match {pattern!r}; give one of"
        candidates = found
    else:
        gguf = [f for f in files if f.lower().endswith(".gguf")]
        candidates = gguf or files
        what = "GGUF files" if gguf else "files"
        head = f"no file of {repo_id} matches {pattern!r}; its {what} are"
    shown = ", ".join(candidates[:_MAX_LISTED])
    if len(candidates) > _MAX_LISTED:
        shown += f", and {len(candidates) - _MAX_LISTED} more"
    raise ValueError(f"{head}: {shown or 'none'}")


def _count(n: int) -> str:
    """A parameter count in three digits: 260K, 135M, 1.54B."""
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size * 0.9995:  # 999,999 is 1M, not 1e+03K
            return f"{n / size:.3g}{unit}"
    return str(n)


def _cache_root() -> Path:
    """Where converted models are kept: ``$TINYLLM_CACHE``, else
    ``$XDG_CACHE_HOME/tinyllm``, else ``~/.cache/tinyllm``."""
    if env := os.environ.get("TINYLLM_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tinyllm"


#: llama.cpp's pooling types (GGUF ``{arch}.pooling_type``).
_GGUF_POOLING = {1: "mean", 2: "cls", 3: "last"}


def _pooling_of(path: str) -> str:
    """The pooling a model's files ask for (``"mean"`` when they do not say)."""
    p = Path(path)
    if p.is_dir():
        conf = p / "1_Pooling" / "config.json"
        if conf.is_file():
            try:
                modes = json.loads(conf.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ModelFormatError(f"{conf}: not a readable JSON file: {e}") from None
            for key, how in [
                ("pooling_mode_lasttoken", "last"),
                ("pooling_mode_cls_token", "cls"),
                ("pooling_mode_mean_tokens", "mean"),
            ]:
                if isinstance(modes, dict) and modes.get(key) is True:
                    return how
        return "mean"
    if p.suffix.lower() == ".gguf":
        meta = _tinyllm.gguf_metadata(path)
        arch = meta.get("general.architecture")
        kind = meta.get(f"{arch}.pooling_type")
        if isinstance(kind, int):
            return _GGUF_POOLING.get(kind, "mean")
    return "mean"


def _is_prompt_list(prompt: object) -> bool:
    """Whether ``prompt`` is a list of prompts (texts or id sequences)
    rather than one prompt (a text or one sequence of ids)."""
    if isinstance(prompt, (str, bytes)) or not isinstance(prompt, Sequence) or not prompt:
        return False
    first = prompt[0]
    return isinstance(first, str) or (isinstance(first, Sequence) and not isinstance(first, bytes))


def _is_llama2c_tokenizer(path: str) -> bool:
    """Whether ``path`` is a llama2.c ``tokenizer.bin`` (not a GGUF file, a
    ``tokenizer.json`` or a directory), judged by content."""
    if os.path.isdir(path):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return True  # let the engine report the missing file
    return head != b"GGUF" and not head.lstrip().startswith(b"{")


# -- argument checks: a clear TypeError or ValueError naming the argument ----


def _path(name: str, value: object) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), not {type(value).__name__}")
    path = os.fspath(value)
    if not isinstance(path, str):
        raise TypeError(f"{name} must be a text path, not bytes")
    return path


def _int(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    return float(value)


def _ids(name: str, value: object) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a sequence of token ids, not {type(value).__name__}")
    ids = []
    for i in value:
        if isinstance(i, bool):
            raise TypeError(f"{name} must hold ints, found bool")
        try:
            ids.append(operator.index(i))  # ints and numpy integers
        except TypeError:
            raise TypeError(f"{name} must hold ints, found {type(i).__name__}") from None
        if ids[-1] < 0:
            raise ValueError(f"{name} holds a negative token id {ids[-1]}")
    return ids


def _logit_bias(bias: object) -> list[tuple[int, float]]:
    if bias is None:
        return []
    if not isinstance(bias, Mapping):
        raise TypeError(f"logit_bias must map token ids to numbers, got {type(bias).__name__}")
    out = []
    for k, v in bias.items():
        token = int(k) if isinstance(k, str) and k.strip().lstrip("-").isdigit() else k
        token = _int("a logit_bias key", token, minimum=0)
        if token >= 1 << 32:
            raise ValueError(f"logit_bias names token {token}, outside any vocabulary")
        out.append((token, _float(f"logit_bias[{k!r}]", v)))
    return out


def _stops(stop: object) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, Sequence) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise TypeError("stop must be a str, a sequence of str, or None")
