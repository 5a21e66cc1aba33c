"""Structured output: JSON schemas, regular expressions, Lark and GBNF
grammars, enforced by llguidance's token masks. The outputs are checked by
validators tinyllm did not write (pydantic, ``json``, Python's ``re``), and
an unconstrained run shows the same checks fail without the constraint."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pydantic
import pytest

import tinyllm
from tinyllm._grammar import GbnfError, gbnf_to_lark

from conftest import write_random_model


class Pet(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    kind: Literal["cat", "dog", "bird"]
    name: str = pydantic.Field(max_length=12)
    age: int = pydantic.Field(ge=0, le=30)


class Person(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    name: str = pydantic.Field(max_length=16)
    happy: bool
    pets: list[Pet] = pydantic.Field(max_length=2)


SUM = """
root ::= expr "."
expr ::= term (ws ("+" | "-") ws term)*   # a comment
term ::= num | "(" expr ")"
num  ::= [1-9] [0-9]{0,2}
ws   ::= " "?
"""


def balanced_sum(text: str) -> bool:
    """Checks the language of SUM with a small recursive parser of our own."""
    pos = 0

    def num() -> bool:
        nonlocal pos
        m = re.compile(r"[1-9][0-9]{0,2}").match(text, pos)
        if not m:
            return False
        pos = m.end()
        return True

    def term() -> bool:
        nonlocal pos
        if text.startswith("(", pos):
            pos += 1
            if not expr() or not text.startswith(")", pos):
                return False
            pos += 1
            return True
        return num()

    def expr() -> bool:
        nonlocal pos
        if not term():
            return False
        while True:
            m = re.compile(r" ?[+-] ?").match(text, pos)
            if not m:
                return True
            save, pos = pos, m.end()
            if not term():
                pos = save
                return False

    return expr() and text[pos:] == "."


@pytest.fixture(scope="module")
def model(stories_path: Path, tok512: Path) -> tinyllm.Model:
    return tinyllm.Model(stories_path, tok512, n_threads=2)


# -- the GBNF translation ------------------------------------------------------


def test_gbnf_translates_to_lark() -> None:
    lark = gbnf_to_lark(SUM)
    assert lark.splitlines() == [
        'start: r_expr "."',
        'r_expr: r_term (r_ws ("+" | "-") r_ws r_term)*',
        'r_term: r_num | "(" r_expr ")"',
        "r_num: /[1-9]/ /[0-9]/{0,2}",
        'r_ws: " "?',
    ]
    assert gbnf_to_lark(r'root ::= [^"\\\x00-\x1F/] "\u00e9\n"') == (
        'start: /[^"\\\\\\x00-\\x1f\\/]/ "\\u00e9\\n"\n'
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('rot ::= "a"', "no 'root' rule"),
        ('root ::= a\nb ::= "x"', "undefined rule(s) a"),
        ('root ::= "abc', "line 1 column 10: an unterminated string"),
        ("root ::= [a-z", "unterminated character class"),
        ('root ::= "a"\nroot ::= "b"', "defined twice"),
        ('root ::= "a" \\q', "line 1"),
        ('root ::= "\\uZZZZ"', "needs 4 hex digits"),
    ],
)
def test_gbnf_errors_say_where(text: str, needle: str) -> None:
    with pytest.raises(GbnfError, match=re.escape(needle)):
        gbnf_to_lark(text)


# -- generation ------------------------------------------------------------------


def run(model: tinyllm.Model, prompt: str, seed: int, **kw: Any) -> tuple[str, str | None]:
    kw.setdefault("max_tokens", 150)
    s = model.stream(prompt, temperature=1.0, seed=seed, **kw)
    text = "".join(s)
    return text, s.finish_reason


def test_json_schema_outputs_validate(model: tinyllm.Model) -> None:
    # llguidance's own options in the schema: compact separators.
    schema = {
        **Person.model_json_schema(),
        "x-guidance": {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "},
    }
    compact = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    texts = []
    for seed in range(6):
        text, reason = run(model, "Once upon a time", seed, response_format=compact, max_tokens=250)
        assert reason == "stop", text
        Person.model_validate_json(text)  # raises if it does not validate
        texts.append(text)
    assert any(Person.model_validate_json(t).pets for t in texts)
    assert all('", "' in t for t in texts)  # the separators asked for
    # The default: a pydantic class, whitespace allowed (in bounded runs).
    stopped = 0
    for seed in range(4):
        text, reason = run(model, "Once upon a time", seed, response_format=Person, max_tokens=500)
        if reason == "stop":
            Person.model_validate_json(text)
            stopped += 1
        else:  # cut off by max_tokens: the start of a document
            assert reason == "length" and text.lstrip().startswith("{")
    assert stopped >= 2
    # Without the constraint the same check fails: it is not vacuous.
    text, _ = run(model, "Once upon a time", 0)
    with pytest.raises(pydantic.ValidationError):
        Person.model_validate_json(text)


def test_response_format_shapes(model: tinyllm.Model) -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4}
    rf = {"type": "json_schema", "json_schema": {"name": "ints", "schema": schema}}
    stopped = 0
    for seed in range(4):
        text, reason = run(model, "Tim", seed, response_format=rf)
        if reason == "stop":
            value = json.loads(text)
            assert isinstance(value, list) and 2 <= len(value) <= 4
            assert all(isinstance(v, int) for v in value)
            stopped += 1
    assert stopped >= 2
    # json_object: any object. A story model left alone keeps adding pairs
    # (valid, never closed); a bias towards "}" lets it finish, and the grammar
    # still decides where "}" may go.
    [close] = [i for i in range(512) if model.tokenizer.token_bytes(i) == b"}"]
    for seed in range(3):
        text, reason = run(
            model,
            "Tim",
            seed,
            response_format={"type": "json_object"},
            max_tokens=400,
            logit_bias={close: 8.0},
        )
        assert reason == "stop" and isinstance(json.loads(text), dict), text
    assert run(model, "Tim", 1, response_format={"type": "text"}) == run(model, "Tim", 1)


def test_regex_and_grammars(model: tinyllm.Model) -> None:
    pattern = r" (yes|no), [a-z]{3,8}( [a-z]{2,8}){0,3}\."
    for seed in range(4):
        text, reason = run(model, "Is it", seed, regex=pattern)
        assert reason == "stop" and re.fullmatch(pattern, text), text
    lark = gbnf_to_lark(SUM)
    for seed in range(4):
        for grammar in (SUM, lark):
            text, reason = run(model, "Tim", seed, grammar=grammar, max_tokens=60)
            if reason == "stop":
                assert balanced_sum(text), text
    assert not balanced_sum(run(model, "Tim", 0)[0])


def test_constrained_and_free_sequences_decode_together(model: tinyllm.Model) -> None:
    free = model.generate("Lily went", max_tokens=60, temperature=0)
    pattern = r"[A-Z][a-z]+ (ran|sat|sang)\."
    results: dict[str, Any] = {}

    def go(key: str, **kw: Any) -> None:
        results[key] = model.generate("Lily went", max_tokens=60, **kw)

    threads = [
        threading.Thread(target=go, args=("free",), kwargs={"temperature": 0}),
        threading.Thread(target=go, args=("regex",), kwargs={"temperature": 0.9, "regex": pattern}),
        threading.Thread(
            target=go, args=("json",), kwargs={"temperature": 0.9, "response_format": Person}
        ),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["free"] == free
    assert re.fullmatch(pattern, results["regex"])
    assert results["json"].lstrip().startswith("{")


def test_mask_costs_are_reported(model: tinyllm.Model) -> None:
    s = model.stream("Tim", regex=r" [a-z]{10,20}\.", temperature=1.0, seed=3)
    text = "".join(s)
    stats = s.stats
    assert stats["grammar_masks"] == len(s.tokens) > 0 and text
    assert stats["grammar_mask_seconds"] > 0
    plain = model.stream("Tim", max_tokens=5)
    list(plain)
    assert "grammar_masks" not in plain.stats


@pytest.mark.parametrize(
    ("kw", "error", "needle"),
    [
        ({"regex": "(unclosed"}, ValueError, "regular expression does not compile"),
        ({"grammar": "start: missing_rule"}, ValueError, "Lark grammar does not compile"),
        ({"grammar": 'root ::= "a'}, ValueError, "unterminated string"),
        ({"response_format": {"type": "xml"}}, ValueError, "'text', 'json_object' or"),
        ({"response_format": {"type": "json_schema"}}, ValueError, "needs {'json_schema'"),
        ({"response_format": "json"}, TypeError, "response_format must be a dict"),
        ({"regex": "a", "grammar": 'root ::= "a"'}, ValueError, "at most one of"),
        ({"regex": 5}, TypeError, "regex must be a str"),
    ],
)
def test_bad_constraints_are_clear_errors(
    model: tinyllm.Model, kw: dict[str, Any], error: type[Exception], needle: str
) -> None:
    with pytest.raises(error, match=re.escape(needle)):
        model.generate("Tim", max_tokens=5, **kw)
    assert model.generate("Tim", max_tokens=5, temperature=0)  # and the model goes on


NESTED = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
        "pos": {
            "type": "object",
            "properties": {
                "x": {"type": "integer", "minimum": -5, "maximum": 5},
                "ok": {"type": "boolean"},
            },
            "required": ["x", "ok"],
            "additionalProperties": False,
        },
        "note": {"type": ["string", "null"], "maxLength": 6},
    },
    "required": ["name", "pos", "tags"],
    "additionalProperties": False,
}


def test_a_random_model_writes_valid_json_only_when_held_to_it(
    tmp_path: Path, tok512: Path
) -> None:
    # Random weights: left alone, the text is never JSON.
    path = tmp_path / "random.bin"
    write_random_model(path, seq_len=512, seed=11)
    m = tinyllm.Model(path, tok512, n_threads=2)
    rf = {"type": "json_schema", "json_schema": {"name": "nested", "schema": NESTED}}
    stopped = 0
    for temperature in (0.5, 1.0, 1.5):
        for seed in range(6):
            s = m.stream("", temperature=temperature, seed=seed, max_tokens=300, response_format=rf)
            text = "".join(s)
            if s.finish_reason == "stop":
                jsonschema.validate(json.loads(text), NESTED)
                stopped += 1
            else:
                assert s.finish_reason == "length" and text.lstrip().startswith("{")
    assert stopped >= 12, stopped
    for seed in range(3):
        text = m.generate("", temperature=1.0, seed=seed, max_tokens=100)
        with pytest.raises((ValueError, jsonschema.ValidationError)):
            jsonschema.validate(json.loads(text), NESTED)
