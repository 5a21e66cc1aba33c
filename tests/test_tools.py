"""Tool calls: the call format read from the real chat templates, replies
held to well-formed calls (validated by pydantic against each tool's
parameters), calls parsed into OpenAI's shape, streamed as ``tool_calls``
deltas, and through the server with the official client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pydantic
import pytest
from test_chat import QWEN_CONFIG, write_hf_model

import tinyllm
from tinyllm import _tools
from tinyllm._chat import ToolPlan

from conftest import MODELS


class AddArgs(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    a: int
    b: int


ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Adds two numbers",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": 0, "maximum": 99},
                "b": {"type": "integer", "minimum": 0, "maximum": 99},
            },
            "required": ["a", "b"],
        },
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "unit": {"enum": ["c", "f"]},
            },
            "required": ["city", "unit"],
        },
    },
}


class WeatherArgs(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    city: str = pydantic.Field(max_length=10)
    unit: Literal["c", "f"]


HI = [{"role": "user", "content": "Hi"}]


def template(name: str) -> str:
    return (MODELS / "templates" / name).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def stories(stories_path: Path, tok512: Path) -> tinyllm.Model:
    return tinyllm.Model(stories_path, tok512, n_threads=2)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> tinyllm.Model:
    config = {**QWEN_CONFIG, "chat_template": template("Qwen-Qwen2.5-7B-Instruct.jinja")}
    path = write_hf_model(tmp_path_factory.mktemp("qwen") / "m", "qwen2", "qwen2", config)
    return tinyllm.Model(path, n_threads=2)


# -- formats ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("Qwen-Qwen2.5-7B-Instruct.jinja", "hermes"),
        ("meta-llama-Llama-3.1-8B-Instruct.jinja", "llama3"),
        ("mistralai-Mistral-Nemo-Instruct-2407.jinja", "mistral"),
        # These render no tools: they are described in a system message.
        ("HuggingFaceTB-SmolLM3-3B.jinja", "hermes"),
        ("google-gemma-2-2b-it.jinja", "hermes"),
    ],
)
def test_the_format_comes_from_the_template(name: str, fmt: str) -> None:
    found, renders = _tools.detect(template(name))
    assert found == fmt
    assert renders == (fmt != "hermes" or name.startswith("Qwen"))


@pytest.mark.parametrize(
    ("fmt", "text", "content", "calls"),
    [
        (
            "hermes",
            'Sure.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n'
            '<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo", "unit": "c"}}\n'
            "</tool_call>",
            "Sure.",
            [("add", {"a": 1, "b": 2}), ("weather", {"city": "Oslo", "unit": "c"})],
        ),
        ("hermes", "No call here.", "No call here.", []),
        ("hermes", "<tool_call>\n{broken\n</tool_call>", "<tool_call>\n{broken\n</tool_call>", []),
        (
            "llama3",
            ' {"name": "add", "parameters": {"a": 1, "b": 2}}',
            None,
            [("add", {"a": 1, "b": 2})],
        ),
        ("llama3", "{not json", "{not json", []),
        (
            "mistral",
            '[TOOL_CALLS][{"name": "add", "arguments": {"a": 3, "b": 4}}]',
            None,
            [("add", {"a": 3, "b": 4})],
        ),
    ],
)
def test_calls_are_parsed_into_openai_shape(
    fmt: str, text: str, content: str | None, calls: list[tuple[str, dict[str, Any]]]
) -> None:
    got_content, got = _tools.parse(fmt, text)
    assert got_content == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got] == calls
    assert all(c["type"] == "function" for c in got)
    assert (
        all(len(c["id"]) == 9 and c["id"].isalnum() for c in got)
        if fmt == "mistral"
        else all(c["id"].startswith("call_") for c in got)
    )
    assert len({c["id"] for c in got}) == len(got)


def assemble(deltas: list[dict[str, Any]]) -> dict[int, dict[str, str]]:
    """Calls put together from ``tool_calls`` delta entries, as OpenAI's
    client does: the id, type and name of the first, arguments joined."""
    calls: dict[int, dict[str, str]] = {}
    for d in deltas:
        c = calls.setdefault(d["index"], {"id": "", "name": "", "arguments": ""})
        if "id" in d:
            assert not c["id"] and d["type"] == "function"
            c.update(id=d["id"], name=d["function"]["name"])
        c["arguments"] += d["function"]["arguments"]
    return calls


def test_the_splitter_never_streams_a_call_as_text() -> None:
    text = 'Let me add.<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    for size in (1, 2, 3, 5, 7):
        s = _tools.CallSplitter("hermes")
        sent = "".join(s.push(text[i : i + size]) for i in range(0, len(text), size))
        rest, _, calls = s.finish()
        assert sent + rest == "Let me add." and len(calls) == 1
    s = _tools.CallSplitter("hermes")
    sent = "".join(s.push(p) for p in ["a <tool", "_ca", "t> b"])  # not the trigger after all
    assert sent + s.finish()[0] == "a <tool_cat> b"


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        (
            "hermes",
            '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": "}{\\"]"}}\n</tool_call>'
            '<tool_call>\n{"name": "we\\"ird", "arguments": {"n": [1, {"x": 2}]}}\n</tool_call>',
        ),
        ("llama3", '{"name": "add", "parameters": {"a": 1, "b": 2}}'),
        (
            "mistral",
            '[TOOL_CALLS][{"name": "add", "arguments": {"a": 1}}, {"name": "f", "arguments": {}}]',
        ),
    ],
)
def test_streamed_arguments_go_out_in_fragments(fmt: str, text: str) -> None:
    want = _tools.parse(fmt, text)[1]
    assert want
    for size in (1, 2, 3, 7, len(text)):
        s = _tools.CallSplitter(fmt)
        deltas: list[dict[str, Any]] = []
        heads_before_end = 0
        for i in range(0, len(text), size):
            assert s.push(text[i : i + size]) == ""
            new = s.call_deltas()
            heads_before_end += sum("id" in d for d in new) if i + size < len(text) else 0
            deltas += new
        rest, last, calls = s.finish()
        deltas += last
        got = assemble(deltas)
        assert rest == "" and list(got) == list(range(len(want)))
        for i, w in enumerate(want):
            assert got[i]["name"] == w["function"]["name"]
            assert json.loads(got[i]["arguments"]) == json.loads(w["function"]["arguments"])
            assert got[i]["id"] == calls[i]["id"]  # the message's ids are the streamed ones
        if size == 1:
            # each call's head went out before the reply ended, and its
            # arguments in one fragment a character
            assert heads_before_end == len(want)
            n_args = sum(len(got[i]["arguments"]) for i in got)
            assert sum(1 for d in deltas if "id" not in d) == n_args
    s = _tools.CallSplitter("llama3")
    assert s.push("  ") == "" and s.push("Hello") == "  Hello"


@pytest.mark.parametrize(
    ("tools", "choice", "needle"),
    [
        ([{"type": "function", "function": {}}], None, "needs a name"),
        ([ADD, ADD], None, "must differ"),
        ([ADD], {"type": "function", "function": {"name": "sub"}}, "not among the tools"),
        ([ADD], "sometimes", "tool_choice must be"),
    ],
)
def test_bad_tools_are_clear_errors(
    stories: tinyllm.Model, tools: list[Any], choice: Any, needle: str
) -> None:
    with pytest.raises(ValueError, match=needle):
        stories.chat_completion(HI, tools=tools, tool_choice=choice, max_tokens=5)


# -- generation -------------------------------------------------------------------


def test_required_calls_validate(stories: tinyllm.Model) -> None:
    made = 0
    for seed in range(8):
        r = stories.chat_completion(
            HI,
            tools=[ADD],
            tool_choice="required",
            seed=seed,
            temperature=0.8,
            parallel_tool_calls=seed % 2 == 0,
        )
        choice = r["choices"][0]
        if choice["finish_reason"] == "length" and "tool_calls" not in choice["message"]:
            continue
        assert choice["finish_reason"] in ("tool_calls", "length")
        msg = choice["message"]
        assert msg["content"] is None and msg["tool_calls"]
        for call in msg["tool_calls"]:
            assert call["function"]["name"] == "add"
            AddArgs.model_validate_json(call["function"]["arguments"])
        made += 1
    assert made >= 4
    # Without the tools' grammar the same reply does not parse as a call.
    plain = stories.chat_completion(HI, seed=0, max_tokens=60, temperature=0.8)
    assert _tools.parse("hermes", plain["choices"][0]["message"]["content"] or "")[1] == []


def test_a_named_function_and_none(stories: tinyllm.Model) -> None:
    named = {"type": "function", "function": {"name": "weather"}}
    made = 0
    for seed in range(3):
        r = stories.chat_completion(
            HI,
            tools=[WEATHER],
            tool_choice=named,
            seed=seed,
            max_tokens=120,
            parallel_tool_calls=False,
        )
        choice = r["choices"][0]
        if choice["finish_reason"] == "tool_calls":
            [call] = choice["message"]["tool_calls"]
            assert call["function"]["name"] == "weather"
            WeatherArgs.model_validate_json(call["function"]["arguments"])
            made += 1
    assert made >= 1
    # "none": the tools are not offered, so the prompt and the reply are as without them.
    kw: dict[str, Any] = {"seed": 4, "max_tokens": 40, "temperature": 0.8}
    with_none = stories.chat_completion(HI, tools=[ADD], tool_choice="none", **kw)
    without = stories.chat_completion(HI, **kw)
    assert with_none["choices"][0]["message"] == without["choices"][0]["message"]


def test_streamed_calls_arrive_as_deltas(stories: tinyllm.Model) -> None:
    for seed in range(6):
        kw: dict[str, Any] = {"seed": seed, "temperature": 0.8, "parallel_tool_calls": False}
        whole = stories.chat_completion(HI, tools=[ADD], tool_choice="required", **kw)
        if whole["choices"][0]["finish_reason"] != "tool_calls":
            continue
        chunks = list(
            stories.chat_completion(HI, tools=[ADD], tool_choice="required", stream=True, **kw)
        )
        deltas = [c["choices"][0]["delta"] for c in chunks]
        assert not "".join(d.get("content") or "" for d in deltas)  # no call as text
        calls = assemble([tc for d in deltas for tc in d.get("tool_calls", [])])
        want = whole["choices"][0]["message"]["tool_calls"]
        assert list(calls) == list(range(len(want)))
        for i, w in enumerate(want):
            assert calls[i]["name"] == w["function"]["name"]
            assert json.loads(calls[i]["arguments"]) == json.loads(w["function"]["arguments"])
        # the arguments came as they were generated, in several deltas
        assert sum("tool_calls" in d for d in deltas) > 2
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
        return
    pytest.fail("no seed made a call")


def test_a_template_that_renders_tools(qwen: tinyllm.Model) -> None:
    plan = ToolPlan(qwen, HI, [ADD], "required")
    assert plan.format == "hermes" and plan.template_tools == [ADD]
    prompt = qwen.detokenize(qwen.encode_chat(plan.messages, tools=plan.template_tools))
    assert "<tools>" in prompt and '"name": "add"' in prompt
    r = qwen.chat_completion(
        HI, tools=[ADD], tool_choice="required", seed=1, max_tokens=80, parallel_tool_calls=False
    )
    choice = r["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    AddArgs.model_validate_json(choice["message"]["tool_calls"][0]["function"]["arguments"])
    # A conversation that goes on after a call, as an OpenAI client sends it:
    # arguments as a JSON string reach the template as an object.
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'},
    }
    history: list[dict[str, Any]] = [
        *HI,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "3"},
    ]
    plan = ToolPlan(qwen, history, [ADD])
    prompt = qwen.detokenize(qwen.encode_chat(plan.messages, tools=plan.template_tools))
    assert '{"name": "add", "arguments": {"a": 1, "b": 2}}' in prompt
    assert "<tool_response>\n3\n</tool_response>" in prompt


FAMILY_MODELS = {
    "llama3": (
        "llama3",
        "llama-bpe",
        "meta-llama-Llama-3.1-8B-Instruct.jinja",
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    ),
    "mistral": (
        "mistral",
        "llama-spm",
        "mistralai-Mistral-Nemo-Instruct-2407.jinja",
        {"bos_token": "<s>", "eos_token": "</s>"},
    ),
}


@pytest.mark.parametrize("fmt", sorted(FAMILY_MODELS))
def test_each_family_calls_in_its_own_format(fmt: str, tmp_path: Path) -> None:
    spec, vocab, name, special = FAMILY_MODELS[fmt]
    config = {**special, "chat_template": template(name)}
    m = tinyllm.Model(write_hf_model(tmp_path / fmt, spec, vocab, config), n_threads=2)
    plan = ToolPlan(m, HI, [ADD], "required")
    assert plan.format == fmt and plan.template_tools == [ADD]
    made = 0
    for seed in range(3):
        r = m.chat_completion(
            HI,
            tools=[ADD],
            tool_choice="required",
            seed=seed,
            max_tokens=120,
            parallel_tool_calls=False,
        )
        choice = r["choices"][0]
        if "tool_calls" not in choice["message"]:
            continue
        [call] = choice["message"]["tool_calls"]
        assert call["function"]["name"] == "add"
        AddArgs.model_validate_json(call["function"]["arguments"])
        made += 1
        # The call and its result go back through the template.
        history: list[dict[str, Any]] = [
            *HI,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "5"},
        ]
        again = ToolPlan(m, history, [ADD])
        prompt = m.detokenize(m.encode_chat(again.messages, tools=again.template_tools))
        assert '"a": ' in prompt and "5" in prompt
    assert made >= 2


def test_a_control_token_that_opens_calls(tmp_path: Path) -> None:
    # Mistral's own vocabulary has [TOOL_CALLS] as a control token: the
    # grammar asks for that token (it adds no text) before the list.
    spec, vocab, name, special = FAMILY_MODELS["mistral"]
    config = {**special, "chat_template": template(name)}
    d = write_hf_model(tmp_path / "m", spec, vocab, config)
    tj = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    tj["added_tokens"].append(
        {
            "id": 32000,
            "content": "[TOOL_CALLS]",
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
    )
    (d / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    m = tinyllm.Model(d, n_threads=2)
    plan = ToolPlan(m, HI, [ADD], "required", parallel_tool_calls=False)
    assert plan.format == "mistral-token" and "<[32000]>" in (plan.grammar or "")
    made = 0
    for seed in range(3):
        s = m.stream(
            m.encode_chat(plan.messages, tools=plan.template_tools),
            grammar=plan.grammar,
            seed=seed,
            max_tokens=120,
        )
        text = "".join(s)
        if s.finish_reason != "stop":
            continue
        assert s.tokens[0] == 32000 and text.lstrip().startswith("[")
        _, calls = _tools.parse(plan.format, text)
        assert calls
        for call in calls:
            AddArgs.model_validate_json(call["function"]["arguments"])
        made += 1
    assert made >= 2
