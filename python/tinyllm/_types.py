"""The shapes of what :meth:`tinyllm.Model.chat_completion` returns, as
``TypedDict`` classes: at run time they are plain dicts (as OpenAI's chat
completions API shapes them), to a type checker they have named keys.

Keys that are only sometimes present (``tool_calls``, a delta's ``role``,
the last chunk's ``usage``) are declared in ``total=False`` subclasses,
since ``typing.NotRequired`` needs Python 3.11.
"""

from __future__ import annotations

from typing import Literal, TypedDict

__all__ = [
    "ChatCompletion",
    "ChatCompletionChoice",
    "ChatCompletionChunk",
    "ChatCompletionChunkChoice",
    "ChatCompletionDelta",
    "ChatCompletionMessage",
    "CompletionUsage",
    "FinishReason",
    "FunctionCall",
    "ToolCall",
    "ToolCallDelta",
]

#: Why a reply ended: an end of turn or a stop string, ``max_tokens`` or a
#: full context, or tool calls; None if it was cancelled (or, in a stream,
#: has not ended yet).
FinishReason = Literal["stop", "length", "tool_calls"]


class CompletionUsage(TypedDict):
    """Token counts as OpenAI reports them."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class FunctionCall(TypedDict):
    """The function a tool call names, its arguments as a JSON text."""

    name: str
    arguments: str


class ToolCall(TypedDict):
    """One call of a tool, with a fresh ``id`` to answer it by."""

    id: str
    type: Literal["function"]
    function: FunctionCall


class ToolCallDelta(ToolCall):
    """A tool call in a streamed reply (whole, in one delta), and its place
    among the reply's calls."""

    index: int


class _Message(TypedDict):
    role: Literal["assistant"]
    content: str | None


class ChatCompletionMessage(_Message, total=False):
    """The assistant's reply: its text (None when it only made calls), and
    ``tool_calls`` when it made any."""

    tool_calls: list[ToolCall]


class ChatCompletionChoice(TypedDict):
    index: int
    message: ChatCompletionMessage
    finish_reason: FinishReason | None


class ChatCompletion(TypedDict):
    """The result of ``chat_completion(messages)``."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: CompletionUsage


class ChatCompletionDelta(TypedDict, total=False):
    """What one chunk adds to the reply: the first has the ``role``, the next
    ones ``content``, tool calls come as ``tool_calls``; the last is empty."""

    role: Literal["assistant"]
    content: str
    tool_calls: list[ToolCallDelta]


class ChatCompletionChunkChoice(TypedDict):
    index: int
    delta: ChatCompletionDelta
    finish_reason: FinishReason | None


class _Chunk(TypedDict):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]


class ChatCompletionChunk(_Chunk, total=False):
    """One item of ``chat_completion(messages, stream=True)``; the last one
    carries ``usage``."""

    usage: CompletionUsage
