"""What a constrained generation must match, in the forms users write it:
OpenAI's ``response_format``, a JSON schema (or a pydantic model), a regular
expression, or a context-free grammar in Lark (llguidance's dialect) or
GBNF (llama.cpp's), which is translated to Lark here."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping

from tinyllm._errors import TinyLLMError

#: (kind, text) as the engine takes it: kind is json_schema, json_object,
#: regex or lark.
Spec = tuple[str, str]


def grammar_spec(response_format: object, grammar: object, regex: object) -> Spec | None:
    """The one constraint among the three arguments (at most one may be
    given), checked."""
    given = [
        name
        for name, v in [
            ("response_format", response_format),
            ("grammar", grammar),
            ("regex", regex),
        ]
        if v is not None
    ]
    if len(given) > 1:
        raise ValueError(f"give at most one of response_format, grammar and regex, not {given}")
    if regex is not None:
        if not isinstance(regex, str):
            raise TypeError(f"regex must be a str, not {type(regex).__name__}")
        return ("regex", regex)
    if grammar is not None:
        if not isinstance(grammar, str):
            raise TypeError(f"grammar must be a str, not {type(grammar).__name__}")
        return ("lark", gbnf_to_lark(grammar) if is_gbnf(grammar) else grammar)
    if response_format is not None:
        return _response_format(response_format)
    return None


def _response_format(rf: object) -> Spec | None:
    schema_of = getattr(rf, "model_json_schema", None)  # a pydantic model class
    if isinstance(rf, type) and callable(schema_of):
        return ("json_schema", json.dumps(schema_of()))
    if not isinstance(rf, Mapping):
        raise TypeError(
            "response_format must be a dict such as {'type': 'json_object'} or a pydantic "
            f"model class, not {type(rf).__name__}"
        )
    kind = rf.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return ("json_object", "")
    if kind == "json_schema":
        inner = rf.get("json_schema")
        schema = inner.get("schema") if isinstance(inner, Mapping) else rf.get("schema")
        if not isinstance(schema, Mapping) and not isinstance(schema, bool):
            raise ValueError(
                "response_format of type 'json_schema' needs {'json_schema': {'schema': {...}}}"
            )
        return ("json_schema", json.dumps(schema))
    raise ValueError(
        f"response_format type must be 'text', 'json_object' or 'json_schema', got {kind!r}"
    )


# -- GBNF --------------------------------------------------------------------

_RULE_DEF = re.compile(r"^\s*[a-zA-Z0-9-]+\s*::=", re.MULTILINE)


def is_gbnf(text: str) -> bool:
    """Whether ``text`` is written in GBNF (rules defined with ``::=``)."""
    return _RULE_DEF.search(text) is not None


class GbnfError(TinyLLMError, ValueError):
    """A GBNF grammar that does not parse."""


def gbnf_to_lark(text: str) -> str:
    """Translates a GBNF grammar into llguidance's Lark: ``root`` becomes
    ``start``, character classes and ``.`` become regular expressions,
    literals JSON strings; groups, alternatives and repetitions
    (``* + ? {m,n}``) carry over."""
    return _Gbnf(text).translate()


def _rule_name(name: str) -> str:
    return "start" if name == "root" else "r_" + name.lower().replace("-", "_")


class _Gbnf:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def fail(self, why: str) -> GbnfError:
        line = self.s.count("\n", 0, self.i) + 1
        col = self.i - (self.s.rfind("\n", 0, self.i) + 1) + 1
        return GbnfError(f"GBNF grammar, line {line} column {col}: {why}")

    def space(self, newlines: bool) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c == "#":
                while self.i < len(self.s) and self.s[self.i] != "\n":
                    self.i += 1
            elif c in " \t" or (newlines and c in "\r\n"):
                self.i += 1
            else:
                break

    def name(self) -> str:
        m = re.compile(r"[a-zA-Z0-9-]+").match(self.s, self.i)
        if not m:
            raise self.fail("a rule name was expected")
        self.i = m.end()
        return m.group()

    def translate(self) -> str:
        rules: list[str] = []
        defined: set[str] = set()
        used: set[str] = set()
        self.used = used
        while True:
            self.space(True)
            if self.i >= len(self.s):
                break
            name = self.name()
            self.space(False)
            if not self.s.startswith("::=", self.i):
                raise self.fail(f"'::=' was expected after the rule name {name!r}")
            self.i += 3
            self.space(True)
            body = self.alternatives(nested=False)
            if name in defined:
                raise self.fail(f"the rule {name!r} is defined twice")
            defined.add(name)
            rules.append(f"{_rule_name(name)}: {body}")
        if "root" not in defined:
            raise GbnfError("GBNF grammar: there is no 'root' rule")
        missing = sorted(used - defined)
        if missing:
            raise GbnfError(f"GBNF grammar: undefined rule(s) {', '.join(missing)}")
        return "\n".join(rules) + "\n"

    def alternatives(self, nested: bool) -> str:
        parts = [self.sequence(nested)]
        while self.i < len(self.s) and self.s[self.i] == "|":
            self.i += 1
            self.space(True)
            parts.append(self.sequence(nested))
        return " | ".join(parts)

    def sequence(self, nested: bool) -> str:
        items: list[str] = []
        while self.i < len(self.s):
            c = self.s[self.i]
            if c == '"':
                atom = json.dumps(self.literal())
            elif c == "[":
                atom = "/" + self.char_class() + "/"
            elif c == ".":
                self.i += 1
                atom = r"/(?s:.)/"
            elif c == "(":
                self.i += 1
                self.space(True)
                inner = self.alternatives(nested=True)
                if self.i >= len(self.s) or self.s[self.i] != ")":
                    raise self.fail("')' was expected")
                self.i += 1
                atom = f"({inner})"
            elif re.match(r"[a-zA-Z0-9-]", c):
                start = self.i
                ref = self.name()
                save = self.i
                self.space(False)
                if self.s.startswith("::=", self.i):  # the next rule begins
                    self.i = start
                    break
                self.i = save
                self.used.add(ref)
                atom = _rule_name(ref)
            else:
                break
            self.space(nested)
            atom += self.repetition(nested)
            items.append(atom)
        if not items:
            return '""'
        return " ".join(items)

    def repetition(self, nested: bool) -> str:
        out = ""
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in "*+?":
                self.i += 1
                out += c
            elif c == "{":
                m = re.compile(r"\{\s*(\d+)\s*(,\s*(\d*)\s*)?\}").match(self.s, self.i)
                if not m:
                    raise self.fail("a repetition {m}, {m,} or {m,n} was expected")
                self.i = m.end()
                lo, comma, hi = m.group(1), m.group(2), m.group(3)
                out += "{" + lo + ("," + (hi or "") if comma else "") + "}"
            else:
                break
            self.space(nested)
        if out.count("*") + out.count("+") + out.count("?") + out.count("{") > 1:
            raise self.fail("more than one repetition on one item")
        return out

    def escape(self) -> str:
        """One escape after a backslash, as the character it stands for."""
        c = self.s[self.i]
        simple = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "[": "[", "]": "]"}
        if c in simple:
            self.i += 1
            return simple[c]
        digits = {"x": 2, "u": 4, "U": 8}.get(c)
        if digits is None:
            raise self.fail(f"unknown escape '\\{c}'")
        hexa = self.s[self.i + 1 : self.i + 1 + digits]
        if len(hexa) != digits or not all(h in string.hexdigits for h in hexa):
            raise self.fail(f"'\\{c}' needs {digits} hex digits")
        self.i += 1 + digits
        code = int(hexa, 16)
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            raise self.fail(f"U+{code:X} is not a character")
        return chr(code)

    def literal(self) -> str:
        start = self.i
        self.i += 1  # "
        out: list[str] = []
        while True:
            if self.i >= len(self.s) or self.s[self.i] == "\n":
                self.i = start
                raise self.fail("an unterminated string")
            c = self.s[self.i]
            if c == '"':
                self.i += 1
                return "".join(out)
            if c == "\\":
                self.i += 1
                out.append(self.escape())
            else:
                out.append(c)
                self.i += 1

    def char_class(self) -> str:
        """A ``[...]`` class as a regular expression class."""
        start = self.i
        self.i += 1  # [
        out = ["["]
        if self.i < len(self.s) and self.s[self.i] == "^":
            out.append("^")
            self.i += 1
        first = True
        while True:
            if self.i >= len(self.s) or self.s[self.i] == "\n":
                self.i = start
                raise self.fail("an unterminated character class")
            if self.s[self.i] == "]" and not first:
                self.i += 1
                out.append("]")
                return "".join(out)
            first = False
            out.append(_class_char(self.class_char()))
            if self.s.startswith("-", self.i) and not self.s.startswith("-]", self.i):
                self.i += 1  # a range
                if self.i >= len(self.s) or self.s[self.i] == "\n":
                    raise self.fail("an unterminated character class")
                out.append("-" + _class_char(self.class_char()))

    def class_char(self) -> str:
        c = self.s[self.i]
        if c == "\\":
            self.i += 1
            return self.escape()
        self.i += 1
        return c


def _class_char(ch: str) -> str:
    """One character inside a regular expression class, escaped as needed
    (``/`` too: the class sits between slashes)."""
    if ch in "\\]^[-/&~":
        return "\\" + ch
    if ord(ch) < 0x20 or ord(ch) == 0x7F:
        return f"\\x{ord(ch):02x}"
    return ch
