"""Tool calls: the model is told about the tools, its reply is constrained to
either text or well-formed calls, and the calls are parsed out of it.

Models trained for tools write calls in their own format; the chat template
tells which. Supported here:

- ``hermes``: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``,
  one block per call (Qwen 2.5 and 3, SmolLM3, Hermes). It is also the format
  given to a model whose template knows nothing of tools: the tools and the
  format are then described in a system message.
- ``llama3``: a bare ``{"name": ..., "parameters": {...}}`` object (Llama
  3.1-3.3 with JSON tool calling).
- ``mistral``: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``
  (``mistral-token`` when ``[TOOL_CALLS]`` is a control token of the
  vocabulary, as in Mistral's own: the grammar then asks for that token,
  which adds no text, so the reply's text starts at the ``[`` of the list).

The constraint is a Lark grammar with the tools' parameter schemas inlined as
JSON schemas, so a reply that ended normally always parses, with arguments
that validate.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The trigger and closing text of the Hermes format.
OPEN, CLOSE = "<tool_call>", "</tool_call>"


@dataclass(frozen=True)
class Function:
    name: str
    parameters: Mapping[str, Any]


def functions(tools: Sequence[Mapping[str, Any]]) -> list[Function]:
    """The functions of OpenAI-style ``tools``, checked."""
    out = []
    if not isinstance(tools, Sequence) or isinstance(tools, (str, bytes)):
        raise TypeError("tools must be a list of {'type': 'function', 'function': {...}}")
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
            raise ValueError(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}")
        fn = tool.get("function")
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ValueError(f"tools[{i}].function needs a name")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, Mapping):
            raise ValueError(f"tools[{i}].function.parameters must be a JSON schema object")
        out.append(Function(fn["name"], params))
    names = [f.name for f in out]
    if len(set(names)) != len(names):
        raise ValueError(f"tool names must differ, got {names}")
    return out


def chosen(fns: list[Function], tool_choice: object) -> tuple[list[Function], bool]:
    """The functions the reply may call, and whether it must call one."""
    if tool_choice is None or tool_choice == "auto":
        return fns, False
    if tool_choice == "required":
        return fns, True
    if tool_choice == "none":
        return [], False
    if isinstance(tool_choice, Mapping):
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else None
        for f in fns:
            if f.name == name:
                return [f], True
        raise ValueError(f"tool_choice names {name!r}, which is not among the tools")
    raise ValueError(
        "tool_choice must be 'none', 'auto', 'required' or "
        f"{{'type': 'function', 'function': {{'name': ...}}}}, got {tool_choice!r}"
    )


def detect(template_source: str | None) -> tuple[str, bool]:
    """The call format a chat template's model was trained for, and whether
    the template itself renders the tools (else a system message does)."""
    src = template_source or ""
    renders = "tools" in src
    if "[TOOL_CALLS]" in src:
        return "mistral", renders
    if OPEN in src:
        return "hermes", renders
    if "<|python_tag|>" in src or ("ipython" in src and '"parameters"' in src):
        return "llama3", renders
    return "hermes", False


def _arguments(params: Mapping[str, Any]) -> dict[str, Any]:
    """A function's parameter schema as the calls must follow it: an object
    with declared properties takes no others unless it says so (as OpenAI's
    strict mode and llama.cpp's tool grammars treat it)."""
    out = dict(params)
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _call_schema(fns: list[Function], args_key: str) -> dict[str, Any]:
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": f.name}, args_key: _arguments(f.parameters)},
            "required": ["name", args_key],
            "additionalProperties": False,
        }
        for f in fns
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def _json(schema: Mapping[str, Any]) -> str:
    """An inline JSON schema of a Lark grammar, written compactly (``", "``
    and ``": "`` between items, no other whitespace), as models write calls."""
    compact = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}
    return "%json " + json.dumps({**schema, "x-guidance": compact})


#: What starts a call in the formats whose calls come first.
MARKERS = {"llama3": "{", "mistral": "[TOOL_CALLS]", "mistral-token": "["}


def grammar(
    fmt: str, fns: list[Function], required: bool, parallel: bool, trigger: int | None = None
) -> str | None:
    """A Lark grammar for a reply that is text or calls (just calls if
    ``required``); None when no function may be called. ``trigger`` is the
    id of the control token that opens calls (``mistral-token``)."""
    if not fns:
        return None
    if fmt == "llama3":
        call = _json(_call_schema(fns, "parameters"))
        return (
            f"start: call\ncall: {call}\n"
            if required
            else (f"start: TEXT | call\nTEXT: /[^{{](.|\\n)*/\ncall: {call}\n")
        )
    if fmt in ("mistral", "mistral-token"):
        body = _json(
            {
                "type": "array",
                "items": _call_schema(fns, "arguments"),
                "minItems": 1,
                **({} if parallel else {"maxItems": 1}),
            }
        )
        opener = f"<[{trigger}]>" if fmt == "mistral-token" else '"[TOOL_CALLS]"'
        calls = f"{opener} {body}"
        return (
            f"start: calls\ncalls: {calls}\n"
            if required
            else (f"start: TEXT | calls\nTEXT: /[^\\[](.|\\n)*/\ncalls: {calls}\n")
        )
    # hermes
    call_json = _json(_call_schema(fns, "arguments"))
    many = "+" if parallel else ""
    if required:
        return f'start: call{many}\ncall: /\\s{{0,3}}/ "{OPEN}\\n" {call_json} "\\n{CLOSE}"\n'
    # Text may come before the calls; once "<tool_call>" appears, a call
    # follows (the free text cannot hold the trigger itself).
    return (
        f"start: (call){'*' if parallel else '?'} TEXT\n"
        f"TEXT: /(?s:.*)/ & ~/(?s:.*){re.escape(OPEN)}(?s:.*)/\n"
        f'head[lazy]: TEXT "{OPEN}"\n'
        f'call: head "\\n" {call_json} "\\n{CLOSE}"\n'
    )


def system_prompt(fns: list[Function], tools: Sequence[Mapping[str, Any]]) -> str:
    """Describes the tools and the Hermes format to a model whose template
    does not."""
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return (
        f"You may call these functions:\n<tools>\n{listing}\n</tools>\n"
        f'To call one, reply with {OPEN}\n{{"name": <name>, "arguments": <arguments>}}\n{CLOSE}'
    )


def prepare_messages(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]],
    fns: list[Function],
    renders: bool,
) -> list[dict[str, Any]]:
    """The conversation as the template should see it: tool-call arguments as
    objects (templates write them with ``tojson``), and for a template that
    does not render tools, the tools in the system message and earlier calls
    and results as text."""
    out: list[dict[str, Any]] = []
    for m in messages:
        m = dict(m)
        calls = m.get("tool_calls")
        if calls:
            m["tool_calls"] = [_call_for_template(c) for c in calls]
        out.append(m)
    if renders:
        return out
    plain: list[dict[str, Any]] = []
    for m in out:
        if m.get("role") == "tool":
            text = f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"
            plain.append({"role": "user", "content": text})
        elif m.get("tool_calls"):
            blocks = [
                f"{OPEN}\n{json.dumps(c['function'], ensure_ascii=False)}\n{CLOSE}"
                for c in m["tool_calls"]
            ]
            text = "\n".join(filter(None, [m.get("content") or "", *blocks]))
            plain.append({"role": "assistant", "content": text})
        else:
            plain.append(m)
    if fns:
        intro = system_prompt(fns, tools)
        if plain and plain[0].get("role") == "system":
            plain[0] = {**plain[0], "content": f"{plain[0].get('content') or ''}\n\n{intro}"}
        else:
            plain.insert(0, {"role": "system", "content": intro})
    return plain


def _call_for_template(call: Mapping[str, Any]) -> dict[str, Any]:
    fn = dict(call.get("function") or {})
    args = fn.get("arguments")
    if isinstance(args, str):
        with contextlib.suppress(json.JSONDecodeError):  # else: as the text it is
            fn["arguments"] = json.loads(args)
    return {**call, "function": fn}


def _call_id(fmt: str) -> str:
    """A fresh call id (Mistral's template takes only 9 letters and digits)."""
    if fmt.startswith("mistral"):
        alphabet = string.ascii_letters + string.digits
        return "".join(secrets.choice(alphabet) for _ in range(9))
    return "call_" + secrets.token_hex(12)


_HERMES = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*" + re.escape(CLOSE), re.DOTALL)


def parse(fmt: str, text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """``(content, tool_calls)`` of a reply, the calls in OpenAI's shape (each
    with a fresh id, its arguments as a JSON string). A call that does not
    parse stays in the content."""
    raw: list[Any] = []
    content = text
    if fmt == "hermes":
        found = list(_HERMES.finditer(text))
        for m in found:
            try:
                raw.append(json.loads(m.group(1)))
            except json.JSONDecodeError:
                return text, []
        if found:
            content = text[: found[0].start()]
    elif fmt == "llama3":
        stripped = text.strip()
        if stripped.startswith("{"):
            try:
                raw = [json.loads(stripped)]
                content = ""
            except json.JSONDecodeError:
                return text, []
    elif fmt in ("mistral", "mistral-token"):
        stripped = text.strip()
        marker = "[TOOL_CALLS]" if fmt == "mistral" else ""
        if stripped.startswith(marker + "["):
            try:
                value = json.loads(stripped[len(marker) :])
            except json.JSONDecodeError:
                return text, []
            raw = value if isinstance(value, list) else [value]
            content = ""
    calls = []
    for r in raw:
        if not isinstance(r, Mapping) or not isinstance(r.get("name"), str):
            return text, []
        args = r.get("arguments", r.get("parameters", {}))
        calls.append(
            {
                "id": _call_id(fmt),
                "type": "function",
                "function": {"name": r["name"], "arguments": json.dumps(args, ensure_ascii=False)},
            }
        )
    content = content.strip()
    return (content or None) if calls else text, calls


#: The head of a call object up to its arguments' value (matched once the
#: value has begun): the name, then the arguments (``parameters`` in Llama
#: 3's calls), as the grammars order them.
_CALL_HEAD = re.compile(
    r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*(?=[{\[])'
)


class CallSplitter:
    """Streams a reply's text while holding back what may be the start of a
    tool call, so that calls go out as ``tool_calls`` deltas, never as
    content. A call goes out as OpenAI streams one: a first delta with its
    index, id and name once the name is complete, then its arguments' JSON
    text fragment by fragment as it is generated."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.text = ""
        self.sent = 0  # characters of self.text already handed out
        self.calling = False
        self.streamed: list[dict[str, Any]] = []  # the calls begun: id, name
        self._scan = 0  # where the next call's head is looked for
        self._args: tuple[int, int] | None = None  # (start, sent) of the open arguments

    def push(self, piece: str) -> str:
        """Takes the next piece; returns the content that may go out now
        (the call deltas it made ready wait in :meth:`call_deltas`)."""
        self.text += piece
        if self.calling:
            return ""
        if self.fmt == "hermes":
            at = self.text.find(OPEN, self.sent)
            if at >= 0:
                self.calling = True
                self._scan = at
                return self._send(at)
            return self._send(len(self.text) - _partial(self.text, OPEN))
        # The other formats put a call first: the reply's start decides.
        head = self.text.lstrip()
        marker = MARKERS[self.fmt]
        if len(head) < len(marker) and marker.startswith(head):
            return ""  # undecided
        if head.startswith(marker):
            self.calling = True
            self._scan = len(self.text) - len(head)
            return ""
        return self._send(len(self.text))

    def call_deltas(self) -> list[dict[str, Any]]:
        """The ``tool_calls`` delta entries the text so far completes: a
        call's head when its name is complete, then the new part of its
        arguments."""
        out: list[dict[str, Any]] = []
        while self.calling:
            if self._args is None:
                m = _CALL_HEAD.search(self.text, self._scan)
                if m is None:
                    break
                name = json.loads(f'"{m.group(1)}"')
                head = {"id": _call_id(self.fmt), "type": "function"}
                out.append(
                    {
                        "index": len(self.streamed),
                        **head,
                        "function": {"name": name, "arguments": ""},
                    }
                )
                self.streamed.append({**head, "function": {"name": name, "arguments": ""}})
                self._args = (m.end(), m.end())
            start, sent = self._args
            end = _json_value_end(self.text, start)
            upto = len(self.text) if end is None else end
            if upto > sent:
                fragment = self.text[sent:upto]
                self.streamed[-1]["function"]["arguments"] += fragment
                out.append({"index": len(self.streamed) - 1, "function": {"arguments": fragment}})
            if end is None:
                self._args = (start, upto)
                break
            self._args = None
            self._scan = end
        return out

    def finish(self) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
        """At the end: the content still to send, the call deltas still to
        send, and the calls (the complete ones, if the reply was cut off)."""
        deltas = self.call_deltas()
        calls = parse(self.fmt, self.text)[1]
        if not calls:
            return ("" if self.streamed else self._send(len(self.text))), deltas, []
        # Calls the stream did not make out (their arguments before their
        # name) go out whole; those it did keep the ids they went out with.
        for i, call in enumerate(calls):
            if i < len(self.streamed):
                call["id"] = self.streamed[i]["id"]
            else:
                deltas.append({"index": i, **call})
        return "", deltas, calls

    def _send(self, end: int) -> str:
        out = self.text[self.sent : end]
        self.sent = max(self.sent, end)
        return out


def _json_value_end(text: str, start: int) -> int | None:
    """Where the JSON object or array starting at ``text[start]`` (after any
    whitespace) ends, or None if ``text`` ends first."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _partial(text: str, marker: str) -> int:
    """The length of the longest end of ``text`` that starts ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0
