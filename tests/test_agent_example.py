"""examples/agent.py: its tools (a calculator that never evaluates Python, a
sandboxed interpreter) and its loop, run through a real server with the
official client on a random-weight model with Qwen's template."""

from __future__ import annotations

import sys
from pathlib import Path

from test_chat import QWEN_CONFIG, write_hf_model
from test_server import Server
from test_tools import template

import tinyllm

from conftest import ROOT

sys.path.insert(0, str(ROOT / "examples"))
import agent


def test_the_calculator_does_arithmetic_only() -> None:
    assert agent.calculator("17 * 23 + 4") == "395"
    assert agent.calculator("(1 + 2) ** 3 / 4") == "6.75"
    assert agent.calculator("-7 // 2") == "-4"
    for bad in ["__import__('os').system('true')", "x + 1", "2 ** 100000", "1 / 0", "1 +"]:
        assert agent.calculator(bad).startswith("error:"), bad


def test_the_interpreter_is_sandboxed() -> None:
    assert agent.run_python("print(sum(range(10)))").strip() == "45"
    assert agent.run_python("import os; print(sorted(os.environ))").strip() in (
        "[]",
        "['LC_CTYPE']",
    )
    assert agent.run_python("import os; print(os.listdir('.'))").strip() == "[]"
    assert agent.run_python("raise SystemExit(3)").startswith("error (exit 3)")
    looping = agent.run_python("while True: pass", timeout=1.0)
    assert "timed out" in looping or "a time or memory limit" in looping
    assert "MemoryError" in agent.run_python("x = bytearray(2 << 30)")  # over 512 MB
    assert agent.call_tool("nothing", "{}").startswith("error: no tool")
    assert agent.call_tool("calculator", "{bad").startswith("error: arguments")


def test_the_agent_loop_runs_tools_through_the_server(tmp_path: Path) -> None:
    config = {**QWEN_CONFIG, "chat_template": template("Qwen-Qwen2.5-7B-Instruct.jinja")}
    model = tinyllm.Model(write_hf_model(tmp_path / "qwen", "qwen2", "qwen2", config), n_threads=2)
    server = Server(model)
    try:
        calls: list[str] = []
        answer = agent.agent(
            server.client(),
            "What is 2 + 3?",
            max_steps=3,
            tool_choice="required",  # a random model calls only when made to
            log=calls.append,
            seed=7,
            max_tokens=400,
        )
    finally:
        server.stop()
    assert calls and all(c.lstrip().startswith(("calculator(", "run_python(")) for c in calls)
    assert all(" -> " in c for c in calls)
    assert isinstance(answer, str)
