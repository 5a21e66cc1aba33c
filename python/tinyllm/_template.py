"""Chat templates: the Jinja programs that turn a conversation into a prompt.

A model trained for chat expects its conversations written in one exact
format (``<|im_start|>user\\n...<|im_end|>``, ``[INST] ... [/INST]``, ...).
Models ship that format as a Jinja template; :class:`ChatTemplate` renders it
the way Hugging Face ``transformers`` does (same Jinja options, globals and
filters), so a real template gives the same text here as there.

A template comes from a model file, which may be untrusted: it is rendered in
Jinja's immutable sandbox, which refuses private attributes (``__class__``,
``__globals__``, ...), internal attributes of functions, types and frames, and
methods that mutate lists, dicts and sets. Any refusal, and any other failure
while rendering, is raised as :class:`TemplateError`.

:meth:`ChatTemplate.render_segments` splits the rendered prompt into the text
the template wrote and the text that came from the conversation, so that a
caller can tokenize the latter as plain text: a message that contains
``<|im_end|>`` must not end its turn.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime
from typing import Any, Final, NoReturn

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.utils
import numpy as np
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, StrictUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tinyllm._errors import TinyLLMError

__all__ = ["ChatTemplate", "TemplateError"]


class TemplateError(TinyLLMError, ValueError):
    """A chat template could not be compiled, or could not render a conversation.

    When the template itself refused the conversation (with
    ``raise_exception(message)``), ``str(error)`` is the template's message.
    """

    __module__ = "tinyllm"


# --- the Jinja environment ---------------------------------------------------

#: The longest string or list that ``*`` may build, and the largest power (in
#: bits) that ``**`` may compute: a template must not exhaust memory or time.
_MAX_REPEAT: Final = 10_000_000
_MAX_POWER_BITS: Final = 65_536

#: Set while :meth:`ChatTemplate.render_segments` renders a conversation more
#: than once, so that ``strftime_now`` gives every rendering the same time.
_FROZEN_NOW: ContextVar[datetime | None] = ContextVar("tinyllm_template_now", default=None)


def _check_repeat(sequence: Any, count: Any) -> None:
    if (
        isinstance(sequence, (str, list, tuple))
        and isinstance(count, int)
        and len(sequence) * count > _MAX_REPEAT
    ):
        raise SecurityError(f"repeating a sequence {count} times is too large")


#: A width or precision of a million or more in a ``%`` or ``format`` spec.
_HUGE_PERCENT: Final = re.compile(r"%[-#0 +]*(\d{7,}|\d*\.\d{7,}|\*|\d*\.\*)")
_HUGE_FORMAT: Final = re.compile(r"\{[^{}]*:[^{}]*\d{7,}[^{}]*\}|\{[^{}]*:[^{}]*\{")


def _check_percent(spec: Any) -> None:
    if isinstance(spec, str) and _HUGE_PERCENT.search(spec):
        raise SecurityError("a format with a huge or computed width is not allowed")


def _check_power(base: Any, exponent: Any) -> None:
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and exponent > 0
        and abs(base) > 1
        and exponent * abs(base).bit_length() > _MAX_POWER_BITS
    ):
        raise SecurityError(f"the power {base} ** {exponent} is too large")


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, stricter in two ways: printing or testing an
    attribute it refused raises at once (the stock sandbox prints it as an empty
    string), and ``*``, ``**``, ``%`` and ``format`` cannot build huge values."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        return StrictUndefined(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe",
            obj=obj,
            name=attribute,
            exc=SecurityError,
        )

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _check_repeat(left, right)
            _check_repeat(right, left)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "%":
            _check_percent(left)
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)
        if wrapper is not None and _HUGE_FORMAT.search(value.__self__):
            raise SecurityError("a format with a huge or computed width is not allowed")
        return wrapper


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: transformers uses it to mark
    the assistant's text for training masks; when rendering it only passes its
    body through."""

    tags = {"generation"}  # noqa: RUF012 (Jinja's own class attribute)

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_body")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _body(self, caller: Callable[[], str]) -> str:
        return caller()


def _raise_exception(message: Any) -> NoReturn:
    raise TemplateError(str(message))


def _strftime_now(format: str) -> str:
    now = _FROZEN_NOW.get()
    return (now if now is not None else datetime.now()).strftime(format)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """``tojson`` as chat templates expect it: plain ``json.dumps`` (Jinja's own
    filter escapes ``<``, ``>``, ``&`` and ``'`` for HTML), non-ASCII kept as is."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _check_namespace_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise SecurityError(f"a chat template cannot store {name!r} in a namespace")


class _Namespace(jinja2.utils.Namespace):
    """``namespace()`` that refuses underscore names, as transformers' does."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _check_namespace_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_namespace_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


class _DictMaker:
    """``dict`` as templates see it: it builds dicts, and has nothing else to reach."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, keys: Iterable[Any], value: Any = None) -> dict[Any, Any]:
        return dict.fromkeys(keys, value)


#: Older Jinja releases have known ways out of the sandbox.
_MIN_JINJA: Final = (3, 1, 6)


@functools.cache
def _environment() -> _Sandbox:
    found = tuple(int(n) for n in re.findall(r"\d+", jinja2.__version__)[:3])
    if found < _MIN_JINJA:
        raise ImportError(
            f"chat templates need jinja2>={'.'.join(map(str, _MIN_JINJA))} (its sandbox is "
            f"unsafe before that); this is jinja2 {jinja2.__version__}"
        )
    env = _Sandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _DictMaker()
    env.globals["namespace"] = _Namespace
    return env


# --- built-in templates ------------------------------------------------------

# Each turns a message's content into text first: a string as it is, None as
# nothing, a list of parts as its text parts joined.
_CONTENT = r"""
{%- macro text(content) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- elif content is iterable and content is not mapping -%}
        {%- for part in content if part is mapping and part['type'] == 'text' -%}
            {{- part['text'] -}}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
"""

_LLAMA2 = (
    _CONTENT
    + r"""
{%- if messages and messages[0]['role'] == 'system' -%}
    {%- set system = text(messages[0]['content']) | trim -%}
    {%- set turns = messages[1:] -%}
{%- else -%}
    {%- set system = '' -%}
    {%- set turns = messages -%}
{%- endif -%}
{%- for message in turns -%}
    {%- if message['role'] not in ('user', 'assistant') -%}
        {{- raise_exception('The llama2 format has user and assistant turns after an '
            ~ "optional first system message, not '" ~ message['role'] ~ "'") -}}
    {%- endif -%}
    {%- if (message['role'] == 'user') != (loop.index0 is even) -%}
        {{- raise_exception('The llama2 format needs turns that alternate '
            ~ 'user/assistant/user/... after the system message') -}}
    {%- endif -%}
    {%- if message['role'] == 'user' -%}
        {{- bos_token ~ '[INST] ' -}}
        {%- if loop.first and system -%}
            {{- '<<SYS>>\n' ~ system ~ '\n<</SYS>>\n\n' -}}
        {%- endif -%}
        {{- text(message['content']) | trim ~ ' [/INST]' -}}
    {%- else -%}
        {{- ' ' ~ text(message['content']) | trim ~ ' ' ~ eos_token -}}
    {%- endif -%}
{%- endfor -%}
"""
)

_LLAMA3 = (
    _CONTENT
    + r"""
{{- bos_token -}}
{%- for message in messages -%}
    {{- '<|start_header_id|>' ~ message['role'] ~ '<|end_header_id|>\n\n' -}}
    {{- text(message['content']) | trim ~ '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
{%- endif -%}
"""
)

_CHATML = (
    _CONTENT
    + r"""
{%- for message in messages -%}
    {{- '<|im_start|>' ~ message['role'] ~ '\n' ~ text(message['content']) ~ '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
"""
)

#: name -> (source, usual BOS, usual end of turn)
_BUILTINS: Final[dict[str, tuple[str, str, str]]] = {
    "llama2": (_LLAMA2, "<s>", "</s>"),
    "llama3": (_LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
    "chatml": (_CHATML, "", "<|im_end|>"),
}

#: Strings that end an assistant turn in the chat formats we know of.
_END_OF_TURN: Final = (
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<end_of_turn>",
    "<|end|>",
    "<|eot|>",
    "<|EOT|>",
    "<|END_OF_TURN_TOKEN|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<|return|>",
    "<|call|>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>",
    "</s>",
)


# --- the public class --------------------------------------------------------


class ChatTemplate:
    """A chat template: ``ChatTemplate(source, bos_token, eos_token)``.

    ``source`` is the template's Jinja text (a model's
    ``tokenizer.chat_template``); ``bos_token`` and ``eos_token`` are the
    strings of the vocabulary's BOS and EOS tokens, given to the template as
    the variables ``bos_token`` and ``eos_token`` (left undefined when None).
    A syntax error in ``source`` raises :class:`TemplateError`.

    >>> t = ChatTemplate.builtin("chatml")
    >>> t.render([{"role": "user", "content": "Hi"}])
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """

    #: The names :meth:`builtin` knows.
    BUILTINS: Final = tuple(_BUILTINS)

    __slots__ = ("_bos", "_eos", "_name", "_source", "_template")

    def __init__(
        self, source: str, bos_token: str | None = None, eos_token: str | None = None
    ) -> None:
        if not isinstance(source, str):
            raise TypeError(f"source must be the template's text (str), not {_kind(source)}")
        for name, token in (("bos_token", bos_token), ("eos_token", eos_token)):
            if token is not None and not isinstance(token, str):
                raise TypeError(f"{name} must be a str or None, not {_kind(token)}")
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"the chat template has a syntax error on line {exc.lineno}: {exc.message}"
            ) from exc
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the chat template cannot be compiled: {exc}") from exc
        self._source = source
        self._bos = bos_token
        self._eos = eos_token
        self._name: str | None = None

    @classmethod
    def builtin(
        cls, name: str, *, bos_token: str | None = None, eos_token: str | None = None
    ) -> ChatTemplate:
        """A template of tinyllm's own for a model that ships none.

        ``"llama2"``: ``<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST]
        {reply} </s>``; ``"llama3"``: ``<|start_header_id|>{role}<|end_header_id|>
        \\n\\n{content}<|eot_id|>``; ``"chatml"``: ``<|im_start|>{role}\\n{content}
        <|im_end|>\\n``. ``bos_token`` and ``eos_token`` default to the format's
        usual ones (``<s>``/``</s>``, ``<|begin_of_text|>``/``<|eot_id|>``, none/
        ``<|im_end|>``); pass ``""`` for none.
        """
        if name not in _BUILTINS:
            raise ValueError(
                f"no built-in chat template {name!r}; there are {', '.join(_BUILTINS)}"
            )
        source, bos, eos = _BUILTINS[name]
        template = cls(
            source,
            bos if bos_token is None else bos_token,
            eos if eos_token is None else eos_token,
        )
        template._name = name
        return template

    @classmethod
    def guess(
        cls,
        special_tokens: Iterable[str],
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
    ) -> ChatTemplate:
        """The built-in template that fits a vocabulary with these special tokens.

        Llama 3's header tokens choose ``"llama3"``, ``<|im_start|>`` and
        ``<|im_end|>`` choose ``"chatml"``; anything else gets ``"llama2"``,
        whose ``[INST]`` markers are plain text in any vocabulary. BOS and EOS
        are ``bos_token`` and ``eos_token`` if given, else the format's usual
        ones when the vocabulary has them, else none.
        """
        if isinstance(special_tokens, (str, bytes)):
            raise TypeError("special_tokens must be an iterable of token strings, not one string")
        tokens = set(special_tokens)
        for token in tokens:
            if not isinstance(token, str):
                raise TypeError(f"special_tokens must hold strings, not {_kind(token)}")
        if {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"} <= tokens:
            name = "llama3"
        elif {"<|im_start|>", "<|im_end|>"} <= tokens:
            name = "chatml"
        else:
            name = "llama2"
        _, bos, eos = _BUILTINS[name]
        return cls.builtin(
            name,
            bos_token=bos_token if bos_token is not None else (bos if bos in tokens else ""),
            eos_token=eos_token if eos_token is not None else (eos if eos in tokens else ""),
        )

    @property
    def source(self) -> str:
        """The template's Jinja text."""
        return self._source

    @property
    def bos_token(self) -> str | None:
        return self._bos

    @property
    def eos_token(self) -> str | None:
        return self._eos

    @property
    def name(self) -> str | None:
        """The built-in template's name, or None for a model's own template."""
        return self._name

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """The strings that end an assistant turn in this template's format:
        the known end-of-turn markers that the template writes, and the EOS
        token. Generation should stop when the model emits one of them."""
        found = [marker for marker in _END_OF_TURN if marker in self._source]
        if self._eos and self._eos not in found:
            found.append(self._eos)
        return tuple(found)

    def __repr__(self) -> str:
        what = f"builtin {self._name!r}" if self._name else f"{len(self._source)} characters"
        return f"<ChatTemplate {what}, bos={self._bos!r}, eos={self._eos!r}>"

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        """The prompt for a conversation.

        ``messages`` is a list of ``{"role": ..., "content": ...}`` dicts.
        ``add_generation_prompt`` ends the prompt with the start of an
        assistant turn. ``tools`` (JSON schemas) and ``documents`` are given to
        the template as variables of those names, as are ``extra`` keywords
        (``enable_thinking=False``, ``date_string=...``; they may also replace
        ``bos_token`` and ``eos_token``). Raises :class:`TemplateError` when the
        template fails or refuses the conversation.
        """
        context = self._context(messages, add_generation_prompt, tools, documents, extra)
        return self._render(context)

    def render_segments(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        **extra: Any,
    ) -> list[tuple[str, bool]]:
        """The prompt of :meth:`render`, as ``(text, from_template)`` pieces.

        The pieces join to exactly what :meth:`render` returns. Text that came
        from the conversation (message contents, names, tool calls, documents)
        has ``from_template=False``: tokenize it as plain text, so that special
        token strings in it stay text. Only text the template wrote itself has
        ``from_template=True``. Where the split cannot be established for sure,
        the text is marked ``False``; at worst the whole prompt is one plain
        piece. Roles, ``type`` fields, tools, BOS/EOS and ``extra`` count as the
        caller's, not as the conversation's.

        The template and the conversation meet inside words and whitespace, so
        tokenize the joined text and use the pieces only to decide where
        special tokens may be matched: two pieces tokenized apart can give other
        tokens than the whole prompt.
        """
        context = self._context(messages, add_generation_prompt, tools, documents, extra)
        reset = _FROZEN_NOW.set(datetime.now())
        try:
            text = self._render(context)
            plain = self._conversation_spans(context, text) if text else []
        finally:
            _FROZEN_NOW.reset(reset)
        if plain is None:
            plain = [(0, len(text))]
        return _split(text, plain)

    # --- rendering -------------------------------------------------------

    def _context(
        self,
        messages: Any,
        add_generation_prompt: Any,
        tools: Any,
        documents: Any,
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        if not isinstance(add_generation_prompt, bool):
            raise TypeError(
                f"add_generation_prompt must be True or False, not {_kind(add_generation_prompt)}"
            )
        context: dict[str, Any] = {
            "messages": _checked_messages(messages),
            "tools": _checked_dicts(tools, "tools"),
            "documents": _checked_dicts(documents, "documents"),
            "add_generation_prompt": add_generation_prompt,
        }
        if self._bos is not None:
            context["bos_token"] = self._bos
        if self._eos is not None:
            context["eos_token"] = self._eos
        context.update(_plain(extra))
        return context

    def _render(self, context: Mapping[str, Any]) -> str:
        try:
            return self._template.render(context)
        except TemplateError:
            raise
        except SecurityError as exc:
            raise TemplateError(f"the chat template tried an unsafe operation: {exc}") from exc
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the chat template failed: {exc}") from exc
        except Exception as exc:
            raise TemplateError(f"the chat template failed: {type(exc).__name__}: {exc}") from exc

    # --- where the conversation's text is --------------------------------

    def _conversation_spans(
        self, context: dict[str, Any], text: str
    ) -> list[tuple[int, int]] | None:
        """The spans of ``text`` that came from the conversation, or None when
        they cannot be told apart from the template's text.

        The conversation is rendered again with each of its strings wrapped in
        a pair of markers made of private-use characters that occur nowhere in
        the input or the output: ``lead + OPEN i + core + CLOSE i + trail``,
        with the string's leading and trailing blanks outside the markers so
        that ``trim`` and ``strip`` act on it as on the bare string. The
        wrapped rendering, less its markers, must equal ``text`` exactly; the
        markers then show where each string went. A string cut by the
        template (a split, a slice) leaves one marker: the text from the
        neighbouring marker up to it counts as the conversation's. A string
        whose markers are both gone must not matter: rendering with it emptied
        must give ``text`` again. Blanks next to a string count as the
        string's if a rendering with the strings' blanks left out has them
        missing, or failing that, whenever they could be the string's.

        Strings that drive the template's logic (ids whose length it checks,
        say) can change its output when wrapped: then fewer kinds of strings
        are wrapped, the others being allowed only when they are plain names
        that no special token can hide in.
        """
        base = _marker_base(text, self._source, context)
        if base is None:
            return None
        for exact in (True, False):
            for wrapped_keys in _WRAP_LEVELS:
                spans = self._spans_at_level(context, text, base, wrapped_keys, exact)
                if spans is not None:
                    return spans
        return None

    def _spans_at_level(
        self,
        context: dict[str, Any],
        text: str,
        base: int,
        wrapped_keys: Callable[[str | None], bool],
        exact: bool,
    ) -> list[tuple[int, int]] | None:
        markers = _Markers(base)
        strings: list[tuple[str, str, str]] = []  # (leading blanks, core, trailing blanks)

        def wrap(index: int, value: str) -> str:
            core = value.strip()
            lead = value[: len(value) - len(value.lstrip())]
            trail = value[len(lead) + len(core) :]
            strings.append((lead, core, trail))
            return lead + markers.open(index) + core + markers.close(index) + trail

        def wrap_core(index: int, value: str) -> str:
            return markers.open(index) + value.strip() + markers.close(index)

        found = self._render_marked(_map_strings(context, wrapped_keys, wrap), markers)
        if found is None or (exact and found[0] != text):
            return None
        marked, places = found

        gone = set(range(len(strings))) - {index for _, _, index in places}
        if gone:
            emptied = _map_strings(
                context, wrapped_keys, lambda index, value: "" if index in gone else value
            )
            try:
                if emptied is None or self._render(emptied) != text:
                    return None
            except TemplateError:
                return None

        spans: list[tuple[int, int]] = []
        for k, (position, is_open, index) in enumerate(places):
            before = places[k - 1] if k > 0 else None
            after = places[k + 1] if k + 1 < len(places) else None
            if is_open:
                # up to its CLOSE, or if the template cut the string, to the next marker
                spans.append((position, after[0] if after is not None else len(marked)))
            elif before is None or not before[1] or before[2] != index:
                # cut before its end: from the previous marker on
                spans.append((0 if before is None else before[0], position))

        # The blanks around a string: the same conversation without them, if the
        # template writes everything else the same, shows which are whose.
        bare = self._render_marked(_map_strings(context, wrapped_keys, wrap_core), markers)
        if bare is not None and [p[1:] for p in bare[1]] != [p[1:] for p in places]:
            bare = None
        for k in range(len(places) + 1):
            left = places[k - 1] if k > 0 else None
            right = places[k] if k < len(places) else None
            if (left is not None and left[1]) or (right is not None and not right[1]):
                continue  # inside a string: all of it is the conversation's already
            trail = strings[left[2]][2] if left is not None else ""
            lead = strings[right[2]][0] if right is not None else ""
            if not trail and not lead:
                continue
            start = left[0] if left is not None else 0
            end = right[0] if right is not None else len(marked)
            split = None
            if bare is not None:
                bare_start = bare[1][k - 1][0] if left is not None else 0
                bare_end = bare[1][k][0] if right is not None else len(bare[0])
                split = _blank_split(marked[start:end], bare[0][bare_start:bare_end], trail, lead)
            if split is None:  # as many as could be theirs
                split = (_common_prefix(marked, start, trail), _common_suffix(marked, end, lead))
            spans.append((start, start + split[0]))
            spans.append((end - split[1], end))
        return spans if marked == text else _align(spans, marked, text)

    def _render_marked(
        self, context: dict[str, Any] | None, markers: _Markers
    ) -> tuple[str, list[tuple[int, bool, int]]] | None:
        if context is None:
            return None
        try:
            return markers.parse(self._render(context))
        except TemplateError:
            return None


def _align(spans: list[tuple[int, int]], marked: str, text: str) -> list[tuple[int, int]]:
    """``spans`` of ``marked`` moved onto ``text``, which differs from it in
    one stretch: the common start and end keep their spans, and all of the
    differing stretch of ``text`` counts as the conversation's."""
    limit = min(len(marked), len(text))
    head = 0
    while head < limit and marked[head] == text[head]:
        head += 1
    tail = 0
    while tail < limit - head and marked[-1 - tail] == text[-1 - tail]:
        tail += 1
    shift = len(text) - len(marked)
    moved = [(head, len(text) - tail)]
    for start, end in spans:
        if start < head:
            moved.append((start, min(end, head)))
        if max(start, len(marked) - tail) < end:
            moved.append((max(start, len(marked) - tail) + shift, end + shift))
    return moved


def _blank_split(gap: str, bare_gap: str, trail: str, lead: str) -> tuple[int, int] | None:
    """How many characters at the start of ``gap`` are the previous string's
    trailing blanks ``trail``, and how many at its end the next string's
    leading blanks ``lead``, given that the template wrote ``bare_gap`` there
    for the strings without blanks. When there is more than one answer, the
    most for the strings; None when there is none."""
    extra = len(gap) - len(bare_gap)
    best: tuple[int, int] | None = None
    for a in range(min(extra, len(trail)) + 1):
        b = extra - a
        if (
            b <= len(lead)
            and gap[:a] == trail[:a]
            and gap[len(gap) - b :] == lead[len(lead) - b :]
            and gap[a : len(gap) - b] == bare_gap
        ):
            best = (a, b) if best is None else (max(best[0], a), max(best[1], b))
    return best


# --- helpers -----------------------------------------------------------------


def _kind(value: Any) -> str:
    return type(value).__name__


def _plain(value: Any) -> Any:
    """``value`` rebuilt from plain JSON-like types, as transformers gives
    templates their data: subclasses of str, int and float become the base
    type, mappings dicts, dataclasses and pydantic models dicts of their fields,
    numpy scalars Python scalars, and anything else a placeholder string
    ``"<TypeName>"``, so that a template can reach no object's methods."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return _plain(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


#: The names a message's reasoning may come under; templates read the first
#: (gpt-oss's read ``thinking``).
_REASONING: Final = ("reasoning_content", "thinking", "reasoning")


def _checked_messages(messages: Any) -> list[dict[str, Any]]:
    """The conversation as templates get it in transformers: plain dicts
    without the keys whose value is None, reasoning under all its names."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(
            "messages must be a list of {'role': ..., 'content': ...} dicts, "
            f"not {_kind(messages)}"
        )
    if not messages:
        raise ValueError("messages is empty: a conversation needs at least one message")
    checked = []
    for i, original in enumerate(messages):
        message = _plain(original)
        if not isinstance(message, dict):
            raise TypeError(
                f"messages[{i}] must be a dict with 'role' and 'content', not {_kind(original)}"
            )
        if "role" not in message:
            raise ValueError(f"messages[{i}] has no 'role'")
        if not isinstance(message["role"], str):
            raise TypeError(f"messages[{i}]['role'] must be a str, not {_kind(message['role'])}")
        if "content" in message:
            content = message["content"]
            if not (content is None or isinstance(content, (str, list, tuple, dict))):
                raise TypeError(
                    f"messages[{i}]['content'] must be a str, a list of parts or None, "
                    f"not {_kind(content)}"
                )
        elif "tool_calls" not in message:
            raise ValueError(f"messages[{i}] has no 'content'")
        message = {k: v for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in _REASONING if k in message), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        checked.append(message)
    return checked


def _checked_dicts(value: Any, name: str) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a list of dicts or None, not {_kind(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise TypeError(f"{name}[{i}] must be a dict, not {_kind(item)}")
    return list(_plain(list(value)))


#: Strings in the conversation that need not be wrapped: names and ids that
#: no special token can hide in, and whitespace.
_PLAIN_NAME: Final = re.compile(r"[A-Za-z0-9_.:/ -]*|\s+")

#: Which strings of the conversation are wrapped, by the key they are under:
#: first all but roles and ``type`` fields; then not names and ids either
#: (templates test them: Mistral checks that tool call ids have 9 characters);
#: then only contents and texts.
_NEVER_WRAPPED: Final = frozenset({"role", "type"})
_NAMES: Final = _NEVER_WRAPPED | {"id", "tool_call_id", "name"}
_CONTENTS: Final = frozenset({"content", "text", "reasoning_content", "thinking"})
_WRAP_LEVELS: Final[tuple[Callable[[str | None], bool], ...]] = (
    lambda key: key not in _NEVER_WRAPPED,
    lambda key: key not in _NAMES,
    lambda key: key in _CONTENTS,
)


def _map_strings(
    context: dict[str, Any],
    wrapped_keys: Callable[[str | None], bool],
    change: Callable[[int, str], str],
) -> dict[str, Any] | None:
    """A copy of ``context`` whose conversation strings (in messages and
    documents) under keys that ``wrapped_keys`` accepts are replaced by
    ``change(index, string)``, numbered in a fixed order. Empty and blank
    strings are left alone. None if a string left alone could hide a special
    token, or the conversation holds values other than dicts, lists and
    scalars."""
    counter = 0

    def visit(value: Any, key: str | None) -> Any:
        nonlocal counter
        if isinstance(value, str):
            if value.strip() and wrapped_keys(key):
                counter += 1
                return change(counter - 1, value)
            if not _PLAIN_NAME.fullmatch(value):
                raise _Unsure
            return value
        if isinstance(value, Mapping):
            copy = {}
            for k, v in value.items():
                if isinstance(k, str) and not _PLAIN_NAME.fullmatch(k):
                    raise _Unsure
                copy[k] = visit(v, k if isinstance(k, str) else key)
            return copy
        if isinstance(value, (list, tuple)):
            items = [visit(v, key) for v in value]
            return items if isinstance(value, list) else tuple(items)
        if value is None or isinstance(value, (bool, int, float)):
            return value
        raise _Unsure

    try:
        copy = dict(context)
        copy["messages"] = visit(context["messages"], None)
        if context["documents"] is not None:
            copy["documents"] = visit(context["documents"], None)
    except _Unsure:
        return None
    return copy


class _Unsure(Exception):
    """The conversation holds something the segmentation cannot vouch for."""


class _Markers:
    """``OPEN i`` and ``CLOSE i`` markers made of characters base .. base+0x1F."""

    def __init__(self, base: int) -> None:
        self._open = chr(base)
        self._close = chr(base + 1)
        self._end = chr(base + 2)
        self._digit0 = base + 0x10
        digits = f"{chr(self._digit0)}-{chr(self._digit0 + 9)}"
        self._pattern = re.compile(f"([{self._open}{self._close}])([{digits}]+){self._end}")
        self._block = re.compile(f"[{chr(base)}-{chr(base + 0x1F)}]")

    def _number(self, index: int) -> str:
        return "".join(chr(self._digit0 + int(d)) for d in str(index)) + self._end

    def open(self, index: int) -> str:
        return self._open + self._number(index)

    def close(self, index: int) -> str:
        return self._close + self._number(index)

    def parse(self, marked: str) -> tuple[str, list[tuple[int, bool, int]]] | None:
        """The text without its markers, and each marker's (position in that
        text, is OPEN, index); None if a marker was broken."""
        pieces: list[str] = []
        places: list[tuple[int, bool, int]] = []
        length = 0
        last = 0
        for match in self._pattern.finditer(marked):
            pieces.append(marked[last : match.start()])
            length += match.start() - last
            last = match.end()
            index = int("".join(str(ord(c) - self._digit0) for c in match.group(2)))
            places.append((length, match.group(1) == self._open, index))
        pieces.append(marked[last:])
        text = "".join(pieces)
        if self._block.search(text):
            return None
        return text, places


def _marker_base(text: str, source: str, context: Mapping[str, Any]) -> int | None:
    """The first block of 256 private-use characters (planes 15 and 16) of
    which no character occurs in the output, the template or the input."""
    used: set[int] = set()

    def scan(value: Any) -> None:
        if isinstance(value, str):
            used.update(ord(c) >> 8 for c in value if ord(c) >= 0xF0000)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                scan(k)
                scan(v)
        elif isinstance(value, (list, tuple, set, frozenset)):
            for v in value:
                scan(v)

    scan(text)
    scan(source)
    scan(context)
    for block in range(0xF00, 0x1100):
        if block not in used:
            return block << 8
    return None


def _common_prefix(text: str, position: int, whitespace: str) -> int:
    """How many characters of ``text`` from ``position`` on are a start of
    ``whitespace``."""
    n = 0
    while n < len(whitespace) and position + n < len(text) and text[position + n] == whitespace[n]:
        n += 1
    return n


def _common_suffix(text: str, position: int, whitespace: str) -> int:
    """How many characters of ``text`` before ``position`` are an end of
    ``whitespace``."""
    n = 0
    while n < len(whitespace) and n < position and text[position - 1 - n] == whitespace[-1 - n]:
        n += 1
    return n


def _split(text: str, plain: list[tuple[int, int]]) -> list[tuple[str, bool]]:
    """``text`` cut into (piece, from_template) with the ``plain`` spans
    (which may overlap) marked False; no empty pieces, no two neighbours alike."""
    spans = sorted((max(0, a), min(len(text), b)) for a, b in plain if b > a)
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    pieces: list[tuple[str, bool]] = []
    at = 0
    for start, end in merged:
        if start > at:
            pieces.append((text[at:start], True))
        pieces.append((text[start:end], False))
        at = end
    if at < len(text):
        pieces.append((text[at:], True))
    return pieces
