"""Chat on top of :class:`tinyllm.Model`: prompts from the model's chat
template, OpenAI-style completions, sessions that keep their history, and the
interactive terminal chat.

Every path turns a conversation into token ids with :func:`encode_chat`. The
template is rendered to text, and only what the template wrote itself may
become special tokens: the text of the messages is tokenized as plain text,
so a user who types ``<|im_end|>`` or ``</s>`` cannot end a turn or forge a
system prompt.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import sys
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, TextIO, cast, overload

from tinyllm import _tools
from tinyllm._errors import ContextLengthError
from tinyllm._template import ChatTemplate, TemplateError
from tinyllm._tinyllm import Stream
from tinyllm._tokenizer import Tokenizer
from tinyllm._types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionDelta,
    ChatCompletionMessage,
    CompletionUsage,
    FinishReason,
)

if TYPE_CHECKING:
    from tinyllm._model import Model

__all__ = [
    "ChatReply",
    "ChatSession",
    "chat",
    "chat_completion",
    "encode_chat",
    "model_chat_template",
]

Message = dict[str, Any]

HELP: Final = "Commands: /reset, /system TEXT, /quit. Ctrl-C stops a reply, Ctrl-D leaves."


# -- the template ------------------------------------------------------------


def model_chat_template(model: Model) -> ChatTemplate:
    """The chat template of ``model``: its own (``tokenizer_config.json``, the
    GGUF metadata or the tinyllm header), given the vocabulary's BOS and EOS
    spellings, else the built-in format that fits its special tokens (Llama
    2's ``[INST]`` for a vocabulary with no chat markers, as llama2.c's)."""
    tok = model.tokenizer
    bos = _spelling(tok, tok.bos_id)
    eos = _spelling(tok, tok.eos_id)
    source = tok.chat_template or model.info.get("chat_template")
    if isinstance(source, str) and source.strip():
        try:
            return ChatTemplate(source, bos, eos)
        except TemplateError as exc:
            fallback = _guess(tok, bos, eos)
            warnings.warn(
                f"{tok.source}: the model's chat template cannot be used ({exc}); "
                f"using the built-in {fallback.name!r} format",
                stacklevel=3,
            )
            return fallback
    return _guess(tok, bos, eos)


def _guess(tok: Tokenizer, bos: str | None, eos: str | None) -> ChatTemplate:
    specials = _specials(tok)[1]
    template = ChatTemplate.guess(specials)
    if template.name == "llama2":
        # [INST] is text in any vocabulary; a turn ends with this vocabulary's EOS.
        template = ChatTemplate.builtin("llama2", bos_token=bos or "", eos_token=eos or "")
    return template


def _spelling(tok: Tokenizer, token_id: int | None) -> str | None:
    """How the special token ``token_id`` is written in template text."""
    if token_id is None or token_id not in tok.special_ids:
        return None
    return tok.id_to_token(token_id) or None


#: Per tokenizer: a regex of its special tokens' spellings (longest first) and
#: the id of each spelling.
_SPECIALS: weakref.WeakKeyDictionary[Tokenizer, tuple[re.Pattern[str] | None, dict[str, int]]]
_SPECIALS = weakref.WeakKeyDictionary()


def _specials(tok: Tokenizer) -> tuple[re.Pattern[str] | None, dict[str, int]]:
    found = _SPECIALS.get(tok)
    if found is None:
        special = tok.special_ids
        ids: dict[str, int] = {}
        for i in sorted(special):
            text = tok.id_to_token(i)
            if text and text not in ids:
                own = tok.token_to_id(text)
                ids[text] = own if own is not None and own in special else i
        order = sorted(ids, key=lambda s: (-len(s), s))
        pattern = re.compile("|".join(map(re.escape, order))) if order else None
        found = (pattern, ids)
        _SPECIALS[tok] = found
    return found


# -- conversation to token ids -----------------------------------------------


def encode_chat(
    model: Model,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> list[int]:
    """The token ids of ``messages`` as the chat path feeds them to ``model``.

    The template renders the whole prompt. Special-token spellings count only
    where the template wrote them (see :meth:`ChatTemplate.render_segments`);
    everywhere else they are plain text. BOS comes first when the vocabulary
    asks for it, unless the template already wrote it there.
    """
    segments = model.chat_template.render_segments(messages, add_generation_prompt, tools=tools)
    return encode_segments(model.tokenizer, segments)


def encode_segments(tok: Tokenizer, segments: Sequence[tuple[str, bool]]) -> list[int]:
    """The token ids of a rendered prompt given as ``(text, from_template)``
    pieces: special tokens only where a ``from_template`` piece spells one."""
    text, marks = template_marks(tok, segments)
    pattern = _specials(tok)[0]
    if not any(t for _, t in segments) and pattern is not None and pattern.search(text):
        warnings.warn(
            "the chat template's own text could not be told apart from the messages, so all "
            "of the prompt is read as plain text, without special tokens",
            RuntimeWarning,
            stacklevel=3,
        )
    ids = _encode_whole(tok, text, marks)
    if ids is None:
        ids = encode_between(tok, text, marks)
    bos = tok.bos_id
    starts_with_bos = bool(marks) and marks[0][0] == 0 and marks[0][2] == bos
    if bos is not None and tok.add_bos and not starts_with_bos:
        ids.insert(0, bos)
    return ids


def template_marks(
    tok: Tokenizer, segments: Sequence[tuple[str, bool]]
) -> tuple[str, list[tuple[int, int, int]]]:
    """The whole prompt, and the ``(start, end, id)`` of each special token
    the template wrote in it: the spellings of the vocabulary's special tokens
    (the longest first) inside ``from_template`` pieces."""
    pattern, ids_of = _specials(tok)
    marks: list[tuple[int, int, int]] = []
    at = 0
    for piece, from_template in segments:
        if from_template and pattern is not None:
            marks += [(at + m.start(), at + m.end(), ids_of[m[0]]) for m in pattern.finditer(piece)]
        at += len(piece)
    return "".join(piece for piece, _ in segments), marks


def _encode_whole(tok: Tokenizer, text: str, marks: list[tuple[int, int, int]]) -> list[int] | None:
    """The tokenizer's own reading of the whole prompt with special tokens
    parsed (as ``transformers`` tokenizes a rendered template), when that is
    safe: every special-token spelling in it is one the template wrote, and
    the tokenizer found exactly those. None otherwise."""
    pattern = _specials(tok)[0]
    if pattern is None:
        return tok.encode(text, add_special_tokens=False)
    spans = [(m.start(), m.end()) for m in pattern.finditer(text)]
    if spans != [(start, end) for start, end, _ in marks]:
        return None
    ids = tok.encode(text, add_special_tokens=False, parse_special=True)
    special = tok.special_ids
    if [i for i in ids if i in special] != [i for _, _, i in marks]:
        return None
    return ids


def encode_between(tok: Tokenizer, text: str, marks: list[tuple[int, int, int]]) -> list[int]:
    """The template's special tokens at ``marks``, and each run of text
    between them encoded as plain text in one piece."""
    ids: list[int] = []
    at = 0
    for start, end, token in marks:
        if start > at:
            ids += tok.encode(text[at:start], add_special_tokens=False)
        ids.append(token)
        at = end
    if at < len(text):
        ids += tok.encode(text[at:], add_special_tokens=False)
    return ids


# -- generation ----------------------------------------------------------------


class ChatReply:
    """An assistant's reply as it is generated: iterate it for the pieces of
    text. Leading whitespace is left out (SentencePiece models tend to start
    a reply with a space).

    Attributes:
        content: the text so far.
        prompt_tokens: the tokens of the conversation that was replied to.
    """

    def __init__(
        self,
        stream: Stream,
        prompt_tokens: int,
        on_text: Callable[[str], None] | None = None,
    ) -> None:
        self._stream = stream
        self._on_text = on_text
        self.prompt_tokens = prompt_tokens
        self.content = ""

    def __iter__(self) -> ChatReply:
        return self

    def __repr__(self) -> str:
        state = self.finish_reason or "running"
        return f"ChatReply({state}, {self.completion_tokens} tokens, {len(self.content)} chars)"

    def __next__(self) -> str:
        while True:
            piece = next(self._stream)
            if not self.content:
                piece = piece.lstrip()
                if not piece:
                    continue
            self.content += piece
            if self._on_text is not None:
                self._on_text(self.content)
            return piece

    @property
    def finish_reason(self) -> str | None:
        """``"stop"`` (end of turn or a stop string), ``"length"``
        (``max_tokens`` or a full context), or None while running."""
        return self._stream.finish_reason

    def cancel(self) -> None:
        """Stops the reply where it is (``finish_reason`` stays None)."""
        self._stream.cancel()

    def take_logprobs(self) -> list[tuple[int, float, list[tuple[int, float]]]]:
        """The log-probability records of the tokens generated since the
        last call, if the reply was started with ``logprobs`` (see
        :meth:`Model.stream`)."""
        return self._stream.take_logprobs()

    @property
    def tokens(self) -> list[int]:
        """The token ids generated so far (an end-of-turn token that ended
        the reply is not among them)."""
        return self._stream.tokens

    @property
    def completion_tokens(self) -> int:
        """How many tokens were generated so far."""
        return len(self._stream.tokens)

    @property
    def stats(self) -> dict[str, Any]:
        """The stream's token counts and times (``reused_tokens`` counts the
        prompt tokens the KV cache already held)."""
        return self._stream.stats

    def usage(self) -> CompletionUsage:
        """Token counts as OpenAI reports them."""
        done = self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": done,
            "total_tokens": self.prompt_tokens + done,
        }


def _reply(
    model: Model,
    ids: list[int],
    options: Mapping[str, Any],
    on_text: Callable[[str], None] | None = None,
    pin: int | None = None,
) -> ChatReply:
    """Starts generating a reply to the prompt ``ids``."""
    n = model.context_length
    if len(ids) >= n:
        raise ContextLengthError(
            f"the conversation is {len(ids)} tokens long, which leaves no room for a reply "
            f"in the context of {n} tokens"
        )
    opts = dict(options)
    if opts.get("max_tokens") is None:
        opts["max_tokens"] = n  # the engine stops when the context is full
    opts["stop"] = _stops(model.chat_template, opts.get("stop"))
    return ChatReply(model.stream(ids, **opts, _pin=pin), len(ids), on_text)


def _stops(template: ChatTemplate, extra: object) -> list[str]:
    if extra is None:
        given: list[str] = []
    elif isinstance(extra, str):
        given = [extra]
    elif isinstance(extra, Sequence) and all(isinstance(s, str) for s in extra):
        given = list(extra)
    else:
        raise TypeError("stop must be a str, a sequence of str, or None")
    return list(dict.fromkeys([*template.stop_strings, *given]))


class ToolPlan:
    """How one reply deals with ``tools``: what the template is given, the
    grammar the reply follows, and how calls are read back out of it (see
    :mod:`tinyllm._tools`)."""

    def __init__(
        self,
        model: Model,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        tool_choice: object = None,
        parallel_tool_calls: bool = True,
    ) -> None:
        fns = _tools.functions(tools)
        self.format, renders = _tools.detect(model.chat_template.source)
        self.allowed, required = _tools.chosen(fns, tool_choice)
        self.messages = _tools.prepare_messages(messages, tools, self.allowed, renders)
        self.template_tools = list(tools) if renders else None
        trigger = None
        if self.format == "mistral":
            tok = model.tokenizer
            found = tok.token_to_id("[TOOL_CALLS]")
            if found is not None and found in tok.special_ids:
                self.format, trigger = "mistral-token", found
        self.grammar = _tools.grammar(
            self.format, self.allowed, required, parallel_tool_calls, trigger
        )

    def options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The generation options with the tools' grammar."""
        opts = dict(options)
        if self.grammar is not None:
            taken = [k for k in ("response_format", "grammar", "regex") if opts.get(k) is not None]
            if taken:
                raise ValueError(f"tools cannot be combined with {', '.join(taken)}")
            opts["grammar"] = self.grammar
        return opts

    def splitter(self) -> _tools.CallSplitter | None:
        return _tools.CallSplitter(self.format) if self.allowed else None

    def message(
        self, text: str, finish_reason: str | None
    ) -> tuple[ChatCompletionMessage, str | None]:
        """The assistant message of a whole reply, and its finish reason
        (``"tool_calls"`` when it made calls)."""
        content, calls = _tools.parse(self.format, text) if self.allowed else (text, [])
        if not calls:
            return {"role": "assistant", "content": text}, finish_reason
        # Cut off by max_tokens, the complete calls still count (and "length"
        # tells the client a further one may be missing).
        msg: ChatCompletionMessage = {
            "role": "assistant",
            "content": content,
            "tool_calls": cast(Any, calls),
        }
        return msg, "tool_calls" if finish_reason == "stop" else finish_reason


@overload
def chat_completion(
    model: Model,
    messages: Sequence[Mapping[str, Any]],
    *,
    stream: Literal[False] = ...,
    tools: Sequence[Mapping[str, Any]] | None = ...,
    tool_choice: object = ...,
    parallel_tool_calls: bool = ...,
    **options: Any,
) -> ChatCompletion: ...


@overload
def chat_completion(
    model: Model,
    messages: Sequence[Mapping[str, Any]],
    *,
    stream: Literal[True],
    tools: Sequence[Mapping[str, Any]] | None = ...,
    tool_choice: object = ...,
    parallel_tool_calls: bool = ...,
    **options: Any,
) -> Iterator[ChatCompletionChunk]: ...


@overload
def chat_completion(
    model: Model,
    messages: Sequence[Mapping[str, Any]],
    *,
    stream: bool,
    tools: Sequence[Mapping[str, Any]] | None = ...,
    tool_choice: object = ...,
    parallel_tool_calls: bool = ...,
    **options: Any,
) -> ChatCompletion | Iterator[ChatCompletionChunk]: ...


def chat_completion(
    model: Model,
    messages: Sequence[Mapping[str, Any]],
    *,
    stream: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
    tool_choice: object = None,
    parallel_tool_calls: bool = True,
    **options: Any,
) -> ChatCompletion | Iterator[ChatCompletionChunk]:
    """The model's reply to ``messages``, shaped as OpenAI's chat completions
    API shapes it.

    ``options`` go to :meth:`Model.stream` (``max_tokens``, default: until the
    context is full; ``temperature``, ``seed``, ``stop``, ``response_format``,
    ...). The reply ends at an end-of-turn token, at one of the template's
    end-of-turn strings or ``stop``, or after ``max_tokens``. With
    ``stream=True`` the result is an iterator of ``chat.completion.chunk``
    dicts: the first delta has the role, the next ones the text, the last one
    ``finish_reason`` (and ``usage``).

    ``tools`` (OpenAI's ``[{"type": "function", "function": {"name",
    "description", "parameters"}}]``) are shown to the model through its
    template, and its reply is held to text or well-formed calls of them
    (``tool_choice``: ``"auto"``, ``"required"``, ``"none"`` or one function);
    calls come back as ``message["tool_calls"]`` with finish reason
    ``"tool_calls"``.

    Raises:
        ContextLengthError: the conversation leaves no room in the context.
        TemplateError: the chat template refused the conversation.
    """
    plan = ToolPlan(model, messages, tools, tool_choice, parallel_tool_calls) if tools else None
    if plan is None:
        ids = encode_chat(model, messages)
    else:
        ids = encode_chat(model, plan.messages, tools=plan.template_tools)
        options = plan.options(options)
    reply = _reply(model, ids, options)
    head = _Head(
        "chatcmpl-" + secrets.token_hex(12),
        int(time.time()),
        os.path.basename(str(model.info.get("path", ""))),
    )
    if stream:
        return _chunks(reply, head, plan)
    text = "".join(reply)
    message: ChatCompletionMessage = {"role": "assistant", "content": text}
    finish_reason = reply.finish_reason
    if plan is not None:
        message, finish_reason = plan.message(text, finish_reason)
    return {
        "id": head.id,
        "object": "chat.completion",
        "created": head.created,
        "model": head.model,
        "choices": [{"index": 0, "message": message, "finish_reason": _reason(finish_reason)}],
        "usage": reply.usage(),
    }


class _Head(NamedTuple):
    """What every chunk of one reply repeats."""

    id: str
    created: int
    model: str


def _reason(finish_reason: str | None) -> FinishReason | None:
    """A finish reason as the result types name it (the engine gives only
    ``"stop"`` and ``"length"``; tool plans add ``"tool_calls"``)."""
    return cast("FinishReason | None", finish_reason)


class Deltas:
    """The deltas of a streamed reply: its text as it comes, except that
    what may be a tool call goes out as ``tool_calls`` deltas (a call's
    head, then its arguments in fragments) and the reply then finishes with
    ``"tool_calls"``."""

    def __init__(self, plan: ToolPlan | None) -> None:
        self._splitter = plan.splitter() if plan is not None else None

    def push(self, piece: str) -> list[dict[str, Any]]:
        """The deltas ``piece`` makes ready: content, or tool calls."""
        if self._splitter is None:
            return [{"content": piece}] if piece else []
        text = self._splitter.push(piece)
        out: list[dict[str, Any]] = [{"content": text}] if text else []
        out += [{"tool_calls": [c]} for c in self._splitter.call_deltas()]
        return out

    def finish(self, finish_reason: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """The last deltas, and the reply's finish reason."""
        if self._splitter is None:
            return [], finish_reason
        rest, call_deltas, calls = self._splitter.finish()
        deltas: list[dict[str, Any]] = [{"content": rest}] if rest else []
        deltas += [{"tool_calls": [c]} for c in call_deltas]
        if (calls or self._splitter.streamed) and finish_reason == "stop":
            finish_reason = "tool_calls"
        return deltas, finish_reason


def _chunks(
    reply: ChatReply, head: _Head, plan: ToolPlan | None = None
) -> Iterator[ChatCompletionChunk]:
    def chunk(delta: ChatCompletionDelta, finish_reason: str | None = None) -> ChatCompletionChunk:
        return {
            "id": head.id,
            "object": "chat.completion.chunk",
            "created": head.created,
            "model": head.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": _reason(finish_reason)}],
        }

    deltas = Deltas(plan)
    yield chunk({"role": "assistant", "content": ""})
    for piece in reply:
        for delta in deltas.push(piece):
            yield chunk(cast(ChatCompletionDelta, delta))
    last_deltas, finish_reason = deltas.finish(reply.finish_reason)
    for delta in last_deltas:
        yield chunk(cast(ChatCompletionDelta, delta))
    last = chunk({}, finish_reason)
    last["usage"] = reply.usage()
    yield last


# -- sessions ----------------------------------------------------------------


#: Ids that tie a chat session to the KV cache the engine keeps for it.
_PINS = itertools.count(1)


class ChatSession:
    """A conversation with ``model`` that keeps its history.

    ``send(text)`` returns the reply; ``stream(text)`` yields it piece by
    piece. Each turn renders the whole history with the model's template;
    the engine reuses the KV cache of the tokens it shares with the turn
    before, so a turn mostly processes only its own new tokens.

    When the history no longer leaves room for a reply (``max_tokens``, or a
    quarter of the context up to 512 tokens), the oldest exchanges are
    dropped, the system prompt kept; ``dropped`` counts the messages the last
    turn dropped. The cache of what stays in front (the system prompt) is
    still reused.

    Args:
        model: the model.
        system: a system prompt (the first message of the history).
        options: generation options of :meth:`Model.stream` for every turn
            (``temperature``, ``max_tokens``, ``seed``, ...).
    """

    def __init__(self, model: Model, system: str | None = None, **options: Any) -> None:
        if system is not None and not isinstance(system, str):
            raise TypeError(f"system must be a str or None, not {type(system).__name__}")
        self.model = model
        #: The system prompt :meth:`reset` starts the history with.
        self.system = system
        self.options = options
        self.messages: list[Message] = []
        #: How many of the oldest messages the last turn dropped to fit.
        self.dropped = 0
        # The engine keeps this conversation's KV cache for its next turn.
        self._pin = next(_PINS)
        self._engine = model._engine
        self.reset()

    def __repr__(self) -> str:
        system = "no system prompt"
        if self.system:
            short = self.system if len(self.system) <= 30 else self.system[:27] + "..."
            system = f"system={short!r}"
        return (
            f"ChatSession({self.model._label!r}, {len(self.messages)} messages, {system}, "
            f"{self.dropped} dropped)"
        )

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.unpin(self._pin)

    def reset(self) -> None:
        """Forgets the conversation (keeping the system prompt)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def stream(self, text: str) -> ChatReply:
        """Sends the user message ``text``; returns the reply as an iterator
        of text pieces. The history gets the message and the reply as it
        grows (a reply cut short stays as far as it went).

        Raises:
            ContextLengthError: the message does not fit the context even
                with only the system prompt before it (the history is left
                as it was).
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        user: Message = {"role": "user", "content": text}
        n = self.model.context_length
        limit = self.options.get("max_tokens")
        room = min(limit if isinstance(limit, int) and limit > 0 else min(n // 4, 512), n // 2)
        history = list(self.messages)
        keep = 1 if history and history[0].get("role") == "system" else 0
        dropped = 0
        while True:
            ids = encode_chat(self.model, [*history, user])
            if len(ids) + room <= n or len(history) == keep:
                break
            # The oldest exchange: a user message and all that answered it.
            end = keep + 1
            while end < len(history) and history[end].get("role") != "user":
                end += 1
            dropped += end - keep
            del history[keep:end]
        answer: Message = {"role": "assistant", "content": ""}

        def grow(content: str) -> None:
            answer["content"] = content

        reply = _reply(self.model, ids, self.options, grow, pin=self._pin)
        self.messages = [*history, user, answer]
        self.dropped = dropped
        return reply

    def send(self, text: str) -> str:
        """Sends the user message ``text`` and returns the whole reply."""
        return "".join(self.stream(text))


# -- the terminal ------------------------------------------------------------


def chat(
    model: Model,
    system: str | None = None,
    *,
    read: Callable[[str], str] = input,
    out: TextIO | None = None,
    err: TextIO | None = None,
    **options: Any,
) -> None:
    """Runs an interactive chat until ``/quit`` or end of input. Replies go
    to ``out`` as they are generated, notes and speeds to ``err``; ``read``
    asks for the next line (``input`` by default)."""
    out = out or sys.stdout
    err = err or sys.stderr
    session = ChatSession(model, system, **options)
    print(HELP, file=err)
    while True:
        try:
            line = read("User: ")
        except EOFError:
            print(file=out)
            return
        except KeyboardInterrupt:
            print(file=out)
            continue
        text = line.strip()
        if text in ("/quit", "/exit"):
            return
        if text == "/reset":
            session.reset()
            print("(conversation forgotten)", file=err)
            continue
        if text == "/system" or text.startswith("/system "):
            session.system = text[len("/system") :].strip() or None
            session.reset()
            state = "set" if session.system else "cleared"
            print(f"(system prompt {state}; conversation reset)", file=err)
            continue
        if not text:
            continue
        reply = _start_turn(session, text, err)
        if reply is None:
            continue
        print("Assistant: ", end="", file=out, flush=True)
        try:
            for piece in reply:
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:
            reply.cancel()
            out.write(" [stopped]")
        print(file=out)
        stats = reply.stats
        n, seconds = stats["generated_tokens"], stats["generate_seconds"]
        if n and seconds > 0:
            print(f"({n} tokens, {n / seconds:.1f} tokens/s)", file=err)


def _start_turn(session: ChatSession, text: str, err: TextIO) -> ChatReply | None:
    """The reply to ``text`` (the session drops the oldest turns that no
    longer fit, and this says so on ``err``). None (with a note on ``err``)
    if there is no reply."""
    try:
        reply = session.stream(text)
        if session.dropped:
            n = session.dropped
            print(
                f"(the conversation outgrew the context: the oldest {n} message"
                f"{'s' if n > 1 else ''} dropped)",
                file=err,
            )
        return reply
    except ContextLengthError:
        print("(that message is too long for the context)", file=err)
    except TemplateError as exc:
        print(f"(the chat template refused the conversation: {exc})", file=err)
    return None
