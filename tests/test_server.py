"""The OpenAI-compatible server, used as clients use it: through the official
``openai`` client (which parses every response into its own types), and with
raw HTTP for what that client will not send. The server runs in a thread of
this process on a free port, over the same model the tests call directly."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import openai
import pydantic
import pytest
import starlette.testclient
import uvicorn

import tinyllm
from tinyllm.server import create_app

KEY = "sk-test-key"
STORY = "Once upon a time, there was a little girl named Lily."


class Server:
    def __init__(self, model: tinyllm.Model, api_key: str | None = None) -> None:
        app = create_app(model, name="stories", api_key=api_key)
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def client(self, api_key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def model(stories_path: Path, tok512: Path) -> tinyllm.Model:
    return tinyllm.Model(stories_path, tok512, n_threads=2, max_sequences=4, kv_cache="f32")


@pytest.fixture(scope="module")
def server(model: tinyllm.Model) -> Iterator[Server]:
    s = Server(model, api_key=KEY)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return server.client()


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def wait_idle(model: tinyllm.Model, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while model.info["active_sequences"]:
        assert time.monotonic() < deadline, "generations still running"
        time.sleep(0.01)


# -- the endpoints -------------------------------------------------------------


def test_health_and_models(server: Server, client: openai.OpenAI, model: tinyllm.Model) -> None:
    r = httpx.get(server.url + "/health")  # no key needed
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    listed = client.models.list().data
    assert [m.id for m in listed] == ["stories"]
    assert listed[0].owned_by == "tinyllm"


def test_completion_is_the_models_own_greedy_text(
    client: openai.OpenAI, model: tinyllm.Model
) -> None:
    want = model.generate(STORY, max_tokens=40, temperature=0)
    r = client.completions.create(model="stories", prompt=STORY, max_tokens=40, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].text == want
    assert r.choices[0].finish_reason == "length"
    ids = model.tokenize(STORY)
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), 40)
    # Token ids as the prompt, several prompts, echo, and OpenAI's default of 16 tokens.
    r = client.completions.create(model="stories", prompt=ids, max_tokens=40, temperature=0)
    assert r.choices[0].text == want
    r = client.completions.create(
        model="stories", prompt=[STORY, "The cat"], temperature=0, echo=True
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].text == STORY + model.generate(STORY, max_tokens=16, temperature=0)
    assert r.choices[1].text == "The cat" + model.generate("The cat", max_tokens=16, temperature=0)


def test_chat_completion_matches_the_python_api(
    client: openai.OpenAI, model: tinyllm.Model
) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "You tell short stories."},
        {"role": "user", "content": "Tell me about a cat."},
    ]
    want = model.chat_completion(messages, temperature=0, max_tokens=50)
    r = client.chat.completions.create(
        model="stories", messages=messages, temperature=0, max_tokens=50
    )
    assert r.object == "chat.completion"
    msg = r.choices[0].message
    assert msg.role == "assistant"
    assert msg.content == want["choices"][0]["message"]["content"]
    assert r.choices[0].finish_reason == want["choices"][0]["finish_reason"]
    assert r.usage is not None and r.usage.prompt_tokens == len(model.encode_chat(messages))
    # content as a list of text parts; max_completion_tokens over max_tokens
    parts: list[Any] = [
        messages[0],
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Tell me "},
                {"type": "text", "text": "about a cat."},
            ],
        },
    ]
    r2 = client.chat.completions.create(
        model="stories", messages=parts, temperature=0, max_tokens=5, max_completion_tokens=50
    )
    assert r2.choices[0].message.content == msg.content


def test_streaming_sends_the_same_text_in_openai_chunks(client: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "Tell me about a dog."}]
    whole = client.chat.completions.create(
        model="stories", messages=messages, temperature=0, max_tokens=60
    )
    chunks = list(
        client.chat.completions.create(
            model="stories",
            messages=messages,
            temperature=0,
            max_tokens=60,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 5
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and not any(finishes[:-1])
    # include_usage: a last chunk with no choices and the usage; none before it
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])
    # text completions stream too
    pieces = client.completions.create(
        model="stories", prompt=STORY, max_tokens=30, temperature=0, stream=True
    )
    streamed = "".join(p.choices[0].text for p in pieces)
    whole_text = client.completions.create(
        model="stories", prompt=STORY, max_tokens=30, temperature=0
    )
    assert streamed == whole_text.choices[0].text


def test_logprobs_are_the_models_distribution(client: openai.OpenAI, model: tinyllm.Model) -> None:
    r = client.completions.create(
        model="stories", prompt=STORY, max_tokens=12, temperature=0, logprobs=3
    )
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    out = client.chat.completions.create(
        model="stories",
        messages=[{"role": "user", "content": "Hi"}],
        temperature=0.9,
        seed=5,
        max_tokens=12,
        logprobs=True,
        top_logprobs=4,
    )
    content = out.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == out.usage.completion_tokens  # type: ignore[union-attr]
    for entry in content:
        assert len(entry.top_logprobs) == 4
        tops = [t.logprob for t in entry.top_logprobs]
        assert tops == sorted(tops, reverse=True) and entry.logprob <= tops[0] <= 0
        assert bytes(entry.bytes or []).decode("utf-8", errors="replace") == entry.token
    # Against the model's logits computed over the whole text at once.
    ids = model.tokenize(STORY)
    gen = model.tokenize(STORY + r.choices[0].text)[len(ids) :]
    rows = log_softmax(model.logits(ids + gen))[len(ids) - 1 :]
    assert len(lp.tokens) == 12
    for k, (logprob, top) in enumerate(zip(lp.token_logprobs, lp.top_logprobs, strict=True)):
        best = np.argsort(-rows[k])[:3]
        assert logprob == pytest.approx(rows[k].max(), abs=2e-3)  # greedy: the top token
        want = {
            model.tokenizer.token_bytes(int(t)).decode("utf-8", "replace"): rows[k][t] for t in best
        }
        assert set(top) == set(want)
        for text, value in top.items():
            assert value == pytest.approx(want[text], abs=2e-3)


def test_echo_with_logprobs_scores_the_prompt_too(
    client: openai.OpenAI, model: tinyllm.Model
) -> None:
    ids = model.tokenize(STORY)  # BOS, then the text's tokens
    rows = log_softmax(model.logits(ids))
    r = client.completions.create(
        model="stories", prompt=STORY, max_tokens=5, temperature=0, logprobs=2, echo=True
    )
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.text_offset
    n = len(ids) - 1  # the prompt's tokens, BOS left out (the echoed text has none)
    assert len(lp.tokens) == n + 5
    text = r.choices[0].text
    assert text.startswith(STORY)
    # Offsets point into the echoed text: each token's text starts there.
    for token, at in zip(lp.tokens, lp.text_offset, strict=True):
        assert text[at : at + len(token)] == token
    for k in range(n):
        assert lp.token_logprobs[k] == pytest.approx(rows[k][ids[k + 1]], abs=1e-4)
        top = lp.top_logprobs[k]
        assert (
            top is not None
            and len(top) == 2
            and max(top.values()) == pytest.approx(rows[k].max(), abs=1e-4)
        )
    # Streamed: the prompt's scores arrive with the echoed text.
    chunks = list(
        client.completions.create(
            model="stories",
            prompt=STORY,
            max_tokens=5,
            temperature=0,
            logprobs=2,
            echo=True,
            stream=True,
        )
    )
    first = chunks[0].choices[0]
    assert first.text == STORY and first.logprobs is not None
    assert first.logprobs.token_logprobs == pytest.approx(lp.token_logprobs[:n])


def test_sampling_fields(client: openai.OpenAI, model: tinyllm.Model) -> None:
    def complete(**kw: Any) -> str:
        r = client.completions.create(model="stories", prompt=STORY, max_tokens=24, **kw)
        return r.choices[0].text

    # the same seed gives the same text; n choices differ from each other
    a, b = complete(temperature=1.0, seed=11), complete(temperature=1.0, seed=11)
    assert a == b
    r = client.completions.create(
        model="stories", prompt=STORY, max_tokens=24, temperature=1.0, seed=11, n=3
    )
    assert r.choices[0].text == a and len({c.text for c in r.choices}) == 3
    # logit_bias forces a token; stop cuts the text
    [the] = model.tokenize("the", add_bos=False)  # the dummy prefix makes it " the"
    assert model.tokenizer.token_bytes(the) == b" the"
    assert complete(temperature=0, logit_bias={str(the): 100}) == " the" * 24
    greedy = complete(temperature=0)
    cut = greedy.split()[3]
    assert complete(temperature=0, stop=[cut]) == greedy[: greedy.index(cut)]
    # penalties change a greedy text that repeats words
    assert complete(temperature=0, presence_penalty=2.0) != greedy
    assert complete(temperature=0, frequency_penalty=2.0) != greedy


class Pet(pydantic.BaseModel):
    kind: Literal["cat", "dog", "bird"]
    age: int = pydantic.Field(ge=0, le=30)


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=16)
    pets: list[Pet] = pydantic.Field(max_length=2)


def test_structured_output_parses_with_the_openai_client(client: openai.OpenAI) -> None:
    # The client sends the class as a strict json_schema and parses the reply.
    parsed = 0
    for seed in range(4):
        r = client.chat.completions.parse(
            model="stories",
            messages=[{"role": "user", "content": "Tell me about a girl."}],
            response_format=Person,
            seed=seed,
            max_tokens=480,
        )
        choice = r.choices[0]
        if choice.finish_reason == "stop":
            assert isinstance(choice.message.parsed, Person)
            parsed += 1
    assert parsed >= 2
    # json_object, a regex and a GBNF grammar (the last two: extensions), streamed too
    r2 = client.chat.completions.create(
        model="stories",
        messages=[{"role": "user", "content": "Hi"}],
        response_format={"type": "json_object"},
        seed=1,
        max_tokens=480,
    )
    content = r2.choices[0].message.content or ""
    if r2.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    assert content.startswith("{")
    text = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="stories",
            prompt="Is it",
            max_tokens=40,
            seed=2,
            stream=True,
            extra_body={"regex": r" (yes|no), [a-z]{3,8}\."},
        )
    )
    assert re.fullmatch(r" (yes|no), [a-z]{3,8}\.", text), text
    r3 = client.completions.create(
        model="stories",
        prompt="Count:",
        max_tokens=40,
        seed=3,
        extra_body={"grammar": 'root ::= " " [1-9] ("," [1-9]){2,4} "."'},
    )
    assert re.fullmatch(r" [1-9](,[1-9]){2,4}\.", r3.choices[0].text), r3.choices[0].text


ADD_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "add",
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


def test_tool_calls_through_the_openai_client(client: openai.OpenAI) -> None:
    hi: Any = [{"role": "user", "content": "Hi"}]
    kw: Any = {"tools": [ADD_TOOL], "tool_choice": "required", "parallel_tool_calls": False}
    for seed in range(6):
        r = client.chat.completions.create(model="stories", messages=hi, seed=seed, **kw)
        choice = r.choices[0]
        if choice.finish_reason != "tool_calls":
            continue
        assert choice.message.content is None and choice.message.tool_calls
        [call] = choice.message.tool_calls
        assert call.type == "function" and call.function.name == "add"  # type: ignore[union-attr]
        args = json.loads(call.function.arguments)  # type: ignore[union-attr]
        assert set(args) == {"a", "b"} and all(0 <= v <= 99 for v in args.values())
        # Streamed, the client puts the same call together from the deltas.
        names, arguments = {}, {}
        finish = None
        for chunk in client.chat.completions.create(
            model="stories", messages=hi, seed=seed, stream=True, **kw
        ):
            delta = chunk.choices[0].delta
            assert not delta.content
            for tc in delta.tool_calls or []:
                names[tc.index] = (names.get(tc.index) or "") + (tc.function.name or "")  # type: ignore[union-attr]
                arguments[tc.index] = (arguments.get(tc.index) or "") + (
                    tc.function.arguments or ""
                )  # type: ignore[union-attr]
            finish = chunk.choices[0].finish_reason or finish
        assert names == {0: "add"} and json.loads(arguments[0]) == args
        assert finish == "tool_calls"
        # The conversation goes on with the tool's result.
        history: Any = [
            *hi,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": str(args["a"] + args["b"])},
        ]
        r2 = client.chat.completions.create(
            model="stories", messages=history, tools=[ADD_TOOL], tool_choice="none", max_tokens=8
        )
        assert r2.choices[0].message.content and not r2.choices[0].message.tool_calls
        return
    pytest.fail("no seed made a call")


def test_embeddings_through_the_openai_client(client: openai.OpenAI, model: tinyllm.Model) -> None:
    texts = ["Once upon a time", "The cat sat.", "Lily"]
    want = model.embed(texts)
    r = client.embeddings.create(model="stories", input=texts)  # the client asks for base64
    got = np.array([d.embedding for d in r.data])
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert [d.index for d in r.data] == [0, 1, 2]
    assert r.usage.prompt_tokens == sum(len(model.tokenize(t)) for t in texts)
    r = client.embeddings.create(model="stories", input="Lily", encoding_format="float")
    np.testing.assert_allclose(r.data[0].embedding, want[2], atol=1e-6)
    # dimensions: the leading ones, scaled back to length 1
    r = client.embeddings.create(model="stories", input="Lily", dimensions=16)
    short = np.array(r.data[0].embedding)
    np.testing.assert_allclose(short, want[2][:16] / np.linalg.norm(want[2][:16]), atol=1e-6)
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        client.embeddings.create(model="stories", input="Lily", dimensions=100)
    with pytest.raises(openai.BadRequestError, match="input"):
        client.embeddings.create(model="stories", input=[])


def test_overlapping_requests_decode_together(
    server: Server, client: openai.OpenAI, model: tinyllm.Model
) -> None:
    # 8 streaming clients at once get what each gets alone (greedy).
    prompts = [
        f"Once upon a time, there was a {w}"
        for w in ["cat", "dog", "bird", "frog", "fish", "king", "girl", "boat"]
    ]

    def streamed(c: openai.OpenAI, prompt: str) -> str:
        chunks = c.chat.completions.create(
            model="stories",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=100,
            temperature=0,
            stream=True,
        )
        return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)

    serial = [streamed(client, p) for p in prompts]
    seen = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(model.info["active_sequences"])
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    results: list[str | None] = [None] * len(prompts)

    def run(i: int) -> None:
        results[i] = streamed(server.client(), prompts[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert results == serial
    assert max(seen) >= 2  # they shared steps (at most max_sequences=4 at once)
    assert max(seen) <= 4


def test_a_bounded_load(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    # 200 requests from 16 clients, a mix of streaming chat and completions;
    # no errors. The latencies are reported, not asserted.
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client_loop(k: int) -> None:
        c = server.client()
        for j in range(200 // 16 + (k < 200 % 16)):
            start = time.perf_counter()
            try:
                if (k + j) % 2:
                    r = c.completions.create(
                        model="stories", prompt=f"Tim {k} {j}", max_tokens=16, seed=j
                    )
                    assert r.choices[0].finish_reason == "length"
                else:
                    chunks = c.chat.completions.create(
                        model="stories",
                        messages=[{"role": "user", "content": f"Hi {k} {j}"}],
                        max_tokens=16,
                        stream=True,
                        seed=j,
                    )
                    assert [ch for ch in chunks if ch.choices][-1].choices[0].finish_reason
            except BaseException as e:  # collected and reported below
                with lock:
                    errors.append(e)
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[:3]
    assert len(latencies) == 200
    p50, p99 = np.percentile(latencies, [50, 99])
    with capsys.disabled():
        print(f"\n200 requests from 16 clients: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")


def test_a_client_that_goes_away_cancels_its_generation(
    server: Server, model: tinyllm.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Keep the server's streams alive here, so only an explicit cancel (not
    # the stream's own clean-up when dropped) can stop the generation.
    started: list[tinyllm.Stream] = []
    real = model.stream

    def recording(*args: Any, **kwargs: Any) -> tinyllm.Stream:
        started.append(real(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(model, "stream", recording)
    body = {"model": "stories", "prompt": "Once", "max_tokens": None, "temperature": 1.0}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream(
        "POST", server.url + "/v1/completions", json={**body, "stream": True}, headers=headers
    ) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [next(lines) for _ in range(4)]
        assert any(line.startswith("data: ") for line in got)
    wait_idle(model)
    [stream] = started
    room = model.context_length - len(model.tokenize("Once"))
    # Left alone it would fill the context (about a second of decoding).
    assert 2 <= len(stream.tokens) < room // 2


# -- bad requests ----------------------------------------------------------------


def test_an_api_key_is_required(server: Server) -> None:
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong").models.list()
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def raw(server: Server, path: str, body: Any) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    return httpx.post(server.url + path, content=data, headers=headers)


HI = [{"role": "user", "content": "hi"}]
CHAT, TEXT = "/v1/chat/completions", "/v1/completions"
TOOL = {"type": "function", "function": {"name": "f"}}
IMAGE = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        (CHAT, b"{not json", "not valid JSON"),
        (CHAT, {"model": "x"}, "messages"),
        (CHAT, {"messages": []}, "messages"),
        (CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
        (CHAT, {"messages": HI, "temperature": 3}, "temperature"),
        (CHAT, {"messages": HI, "top_logprobs": 50, "logprobs": True}, "top_logprobs"),
        (CHAT, {"messages": HI, "top_logprobs": 2}, "top_logprobs"),
        (CHAT, {"messages": HI, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        (CHAT, {"messages": HI, "logit_bias": {"5": 500}}, "logit_bias"),
        (CHAT, {"messages": HI, "logit_bias": {"99999": 1}}, "99999"),
        (CHAT, {"messages": HI, "tools": [{"type": "function", "function": {}}]}, "name"),
        (CHAT, {"messages": HI, "tools": [TOOL], "tool_choice": "always"}, "tool_choice"),
        (CHAT, {"messages": HI, "tools": [TOOL], "regex": "a"}, "cannot be combined"),
        (CHAT, {"messages": HI, "response_format": {"type": "json_schema"}}, "json_schema"),
        (CHAT, {"messages": HI, "response_format": {"type": "yaml"}}, "response_format"),
        (CHAT, {"messages": HI, "regex": "(a"}, "regular expression does not compile"),
        (CHAT, {"messages": HI, "regex": "a", "grammar": "start: /a/"}, "at most one of"),
        (CHAT, {"messages": IMAGE}, "content"),
        (TEXT, {"prompt": [1, "a"]}, "prompt"),
        (TEXT, {"prompt": [5, 99999]}, "99999"),
        (TEXT, {"prompt": "x", "max_tokens": -1}, "max_tokens"),
        (TEXT, {"prompt": "x", "suffix": "y"}, "suffix"),
    ],
)
def test_malformed_requests_get_a_clear_400(
    server: Server, client: openai.OpenAI, path: str, body: Any, needle: str
) -> None:
    r = raw(server, path, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and needle in err["message"], err
    # and the server goes on
    ok = client.completions.create(model="stories", prompt="Hi", max_tokens=3, temperature=0)
    assert ok.choices[0].finish_reason == "length"


def test_an_oversized_body_gets_413(model: tinyllm.Model) -> None:
    app = create_app(model, name="stories", max_body_bytes=1024)
    with starlette.testclient.TestClient(app) as tc:
        r = tc.post("/v1/completions", json={"prompt": "x" * 2000})
        assert r.status_code == 413 and "larger than 1024 bytes" in r.json()["error"]["message"]
        # Sent in chunks, with no Content-Length to refuse it by: counted as read.
        r = tc.post("/v1/completions", content=iter([b'{"prompt": "', b"x" * 2000, b'"}']))
        assert r.status_code == 413
        r = tc.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
        assert r.status_code == 200


def test_too_long_a_prompt_is_a_context_length_error(
    client: openai.OpenAI, model: tinyllm.Model
) -> None:
    long_prompt = " ".join(["story"] * (model.context_length + 10))
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="stories", prompt=long_prompt, max_tokens=5)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="stories", messages=[{"role": "user", "content": long_prompt}]
        )
    assert e.value.code == "context_length_exceeded"
    # A short prompt, but more tokens asked for than the context has room for.
    with pytest.raises(openai.BadRequestError, match="context is 512 tokens") as e:
        client.completions.create(model="stories", prompt="Hi", max_tokens=600)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="stories", messages=[{"role": "user", "content": "Hi"}], max_tokens=600
        )
    assert e.value.code == "context_length_exceeded" and e.value.param == "max_tokens"


def test_unknown_routes_and_methods(server: Server) -> None:
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and "no such endpoint" in r.json()["error"]["message"]
    r = httpx.get(server.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 405


# -- the command -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tinyllm_serve_command(stories_path: Path, tok512: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "tinyllm", "serve", str(stories_path), "-z", str(tok512)]
    cmd += ["--port", str(port), "--parallel", "2", "--ctx", "128", "--threads", "1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        assert c.models.list().data[0].context_length == 128  # type: ignore[attr-defined]
        r = c.completions.create(model="m", prompt=STORY, max_tokens=8, temperature=0)
        assert r.usage is not None and r.usage.completion_tokens == 8
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "serving stories260K.bin on http://127.0.0.1" in err
    assert "2 sequences at once, context 128" in err
    assert "POST /v1/completions 200 | prompt" in err and "tokens/s" in err
