"""The Python face: one base exception, typed chat results, short reprs,
``--version``, the ``tinyllm`` logger and conversion progress."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

import tinyllm
from tinyllm import _convert, _tinyllm
from tinyllm._grammar import GbnfError

from conftest import FIXTURES, MODELS, ROOT

HELLO = [{"role": "user", "content": "Hello"}]


# -- exceptions --------------------------------------------------------------


@pytest.mark.parametrize(
    "cls",
    [tinyllm.ModelFormatError, tinyllm.ContextLengthError, tinyllm.TemplateError, GbnfError],
)
def test_every_error_of_tinyllm_is_a_tinyllm_error_and_still_a_value_error(cls: type) -> None:
    assert issubclass(cls, tinyllm.TinyLLMError)
    assert issubclass(cls, ValueError)
    assert not issubclass(tinyllm.TinyLLMError, ValueError)  # the base promises no built-in


def test_the_compiled_module_raises_the_python_classes(tmp_path: Path) -> None:
    # One class, wherever it is imported from.
    assert _tinyllm.ModelFormatError is tinyllm.ModelFormatError
    assert _tinyllm.ContextLengthError is tinyllm.ContextLengthError
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 20)  # a header cut short
    with pytest.raises(tinyllm.TinyLLMError) as e:
        tinyllm.Model(bad)
    assert type(e.value) is tinyllm.ModelFormatError and str(bad) in str(e.value)
    assert repr(e.value).startswith("ModelFormatError(")
    assert type(e.value).__module__ == "tinyllm"
    m = tinyllm.Model(MODELS / "stories260K.bin", MODELS / "tok512.bin", context_length=8)
    with pytest.raises(tinyllm.TinyLLMError) as e2:  # checked by the engine
        m.generate(list(range(1, 20)), max_tokens=2)
    assert type(e2.value) is tinyllm.ContextLengthError


def test_python_side_errors_are_tinyllm_errors(stories: tinyllm.Model) -> None:
    with pytest.raises(tinyllm.TinyLLMError):
        tinyllm.ChatTemplate("{% if %}")
    with pytest.raises(tinyllm.TinyLLMError):
        stories.generate("a", grammar='root ::= "(" [0-9')


# -- typed results -------------------------------------------------------------


def test_chat_results_have_the_keys_their_types_declare(stories: tinyllm.Model) -> None:
    r = stories.chat_completion(HELLO, max_tokens=5, seed=1)
    assert set(r) == tinyllm.ChatCompletion.__required_keys__
    choice = r["choices"][0]
    assert set(choice["message"]) == tinyllm.ChatCompletionMessage.__required_keys__
    assert set(r["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    chunks = list(stories.chat_completion(HELLO, max_tokens=5, seed=1, stream=True))
    required = tinyllm.ChatCompletionChunk.__required_keys__
    optional = tinyllm.ChatCompletionChunk.__optional_keys__
    assert optional == {"usage"}
    for c in chunks[:-1]:
        assert set(c) == required
    assert set(chunks[-1]) == required | optional
    for c in chunks:
        assert set(c["choices"][0]["delta"]) <= {"role", "content", "tool_calls"}


def test_mypy_sees_the_result_types(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    user = tmp_path / "user_code.py"
    user.write_text(
        textwrap.dedent(
            """
            from collections.abc import Iterator
            import tinyllm

            m = tinyllm.Model.default()
            r = m.chat_completion([{"role": "user", "content": "Hi"}], max_tokens=4)
            text: str | None = r["choices"][0]["message"]["content"]
            n: int = r["usage"]["total_tokens"]
            reveal_type(r["choices"][0]["finish_reason"])
            chunks = m.chat_completion([{"role": "user", "content": "Hi"}], stream=True)
            for c in chunks:
                piece: str = c["choices"][0]["delta"].get("content", "")
            flag = bool(n)
            either = m.chat_completion([], stream=flag)
            reveal_type(either)
            r["choices"][0]["mesage"]
            """
        ),
        encoding="utf-8",
    )
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(user)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": ""},
    ).stdout
    notes = [line for line in out.splitlines() if "note: Revealed type" in line]
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert all(f"{v}" in notes[0] for v in ("'stop'", "'length'", "'tool_calls'", "None")), out
    assert "ChatCompletion" in notes[1] and "Iterator[" in notes[1], out
    # The one mistake, and only it: the keys are known, not Any.
    assert len(errors) == 1 and '"mesage"' in errors[0], out


# -- repr ----------------------------------------------------------------------


def _parameters(c: tinyllm.ModelConfig, tied: bool) -> int:
    """Weights of a Llama model of config ``c``, counted from its shapes."""
    kv = c.n_kv_heads * c.head_dim
    q = c.n_heads * c.head_dim
    layer = 2 * q * c.dim + 2 * kv * c.dim + 3 * c.hidden_dim * c.dim + 2 * c.dim
    head = 0 if tied else c.vocab_size * c.dim
    return c.vocab_size * c.dim + c.n_layers * layer + c.dim + head


def test_model_repr_is_short_and_says_what_runs(stories: tinyllm.Model) -> None:
    n = _parameters(stories.config, tied=True)
    assert stories.info["parameters"] == n == 260_032
    text = repr(stories)
    assert (
        text == f"Model('stories260K.bin', llama, 260K params, f32, ctx 512, {stories.info['isa']})"
    )
    q4 = tinyllm.Model(FIXTURES / "gguf" / "stories260K-Q4_0.gguf")
    assert q4.info["weight_type"] == "q4_0"
    # This file has its own classifier (not tied to the embedding).
    assert q4.info["parameters"] == _parameters(q4.config, tied=False)
    assert "'stories260K-Q4_0.gguf', llama, 293K params, q4_0, ctx 2048" in repr(q4)


def test_repr_of_streams_and_sessions(stories: tinyllm.Model) -> None:
    s = stories.stream("Once", max_tokens=3, temperature=0)
    # The engine decodes on its own thread: tokens may arrive before the read.
    assert re.fullmatch(r"Stream\(running, \d+ tokens?\)", repr(s)), repr(s)
    text = "".join(s)
    assert repr(s) == "Stream('length', 3 tokens)" and text
    cancelled = stories.stream("Once", max_tokens=50)
    next(cancelled)
    cancelled.cancel()
    assert repr(cancelled).startswith("Stream(cancelled, ")
    session = stories.chat_session(system="You are a storyteller who tells long tales.")
    session.send("Hi")
    assert (
        repr(session) == "ChatSession('stories260K.bin', 3 messages, "
        "system='You are a storyteller who t...', 0 dropped)"
    )
    reply = session.stream("More")
    assert re.fullmatch(r"ChatReply\(running, \d+ tokens, 0 chars\)", repr(reply)), repr(reply)
    for _ in reply:
        pass
    assert repr(reply).startswith(f"ChatReply({reply.finish_reason}, {reply.completion_tokens} ")


def test_repr_of_tokenizers_and_stream_decoders(stories: tinyllm.Model) -> None:
    tok = stories.tokenizer
    assert repr(tok) == "Tokenizer('tok512.bin', llama2.c, vocab_size=512, bos_id=1, eos_id=2)"
    d = tok.decoder()
    d.push(tok.encode("Hi", add_special_tokens=False)[0])
    assert repr(d) == "StreamDecoder(1 ids, 0 held back)"


# -- --version and logging -------------------------------------------------------


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tinyllm", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=ROOT,
    )


def test_version_names_the_package_and_the_kernels(stories: tinyllm.Model) -> None:
    r = _cli("--version")
    assert r.returncode == 0, r.stderr
    version = metadata.version("tinyllm")
    assert tinyllm.__version__ == version
    line = r.stdout.strip()
    assert line.startswith(f"tinyllm {version} (device cpu, kernels {stories.info['isa']};")
    assert all(isa in line for isa in tinyllm.available_isas())
    forced = _cli("--version", TINYLLM_ISA="portable")
    assert "kernels portable;" in forced.stdout


def test_opening_a_model_logs_what_it_picked(caplog: pytest.LogCaptureFixture) -> None:
    assert logging.getLogger("tinyllm").handlers == []  # the library adds none
    with caplog.at_level(logging.INFO, logger="tinyllm"):
        m = tinyllm.Model(MODELS / "stories260K.gguf", n_threads=1)
        m.chat_template  # noqa: B018 - picked at first use, and logged then
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "tinyllm")
    assert f"kernels {m.info['isa']}" in text and "device: cpu" in text
    assert f"{m.tokenizer.vocab_size} tokens, from {MODELS / 'stories260K.gguf'}" in text
    assert "chat template: built-in 'llama2'" in text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tinyllm"):
        tinyllm.Model(MODELS / "stories260K.gguf", n_threads=1)
    assert not caplog.records


def test_cli_verbose_shows_the_log_on_stderr() -> None:
    quiet = _cli("run", "-n", "2", "-t", "0")
    loud = _cli("run", "-v", "-n", "2", "-t", "0")
    assert quiet.returncode == loud.returncode == 0, loud.stderr
    assert "tinyllm: device: cpu" not in quiet.stderr
    assert "tinyllm: device: cpu, kernels" in loud.stderr
    assert "tinyllm: tokenizer: llama2.c, 512 tokens" in loud.stderr
    assert loud.stdout == quiet.stdout


# -- conversion progress ---------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _convert_with(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, progress: bool = True) -> str:
    err = _Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    src = MODELS / "stories260K.bin"
    tinyllm.convert(
        src, tmp_path / "o.tllm", "q8_0", tokenizer=MODELS / "tok512.bin", progress=progress
    )
    return err.getvalue()


def test_conversion_progress_is_tqdm_s_bar_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("tqdm")
    shown = _convert_with(monkeypatch, tmp_path)
    assert shown.count("converting") >= 2 and "100%|" in shown  # drawn as it went
    done = shown.rsplit("100%|", 1)[1].split("|", 1)[1].split()[0]
    assert _convert_with(monkeypatch, tmp_path, progress=False) == ""
    # Without tqdm, the plain bar counts the same tensors.
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now fails
    plain = _convert_with(monkeypatch, tmp_path)
    assert "converting" not in plain and f"] {done} " in plain
    n, total = map(int, done.split("/"))
    assert n == total > 1
    assert _convert._progress_bar(True, io.StringIO()) is None  # not a terminal
