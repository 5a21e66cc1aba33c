"""A small agent: the model answers a question by calling two tools, a
calculator and a sandboxed Python evaluator, through tinyllm's
OpenAI-compatible server, with the official ``openai`` client.

    pip install '.[server]' openai
    python examples/agent.py MODEL "What is 17 * 23 + 4?"
    python examples/agent.py --base-url http://127.0.0.1:8000/v1 "..."   # a running server

MODEL is any chat model tinyllm opens (a GGUF file, a Hugging Face
directory); one trained for tools, such as Qwen2.5-Instruct, uses them well.
Without ``--base-url`` the server runs inside this process on a free port.
"""

from __future__ import annotations

import argparse
import ast
import json
import operator
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluates an arithmetic expression: numbers, + - * / // % ** and ().",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string", "maxLength": 200}},
                "required": ["expression"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "run_python",
            "description": "Runs a short Python program and returns what it prints.",
            "parameters": {
                "type": "object",
                "properties": {"code": {"type": "string", "maxLength": 2000}},
                "required": ["code"],
            },
        },
    },
]

_OPS: dict[type, Callable[..., Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def calculator(expression: str) -> str:
    """Arithmetic only: the expression's syntax tree is walked, never
    evaluated as Python."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 1000:
                raise ValueError("exponent too large")
            return _OPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.operand))
        raise ValueError(f"not arithmetic: {ast.dump(node)[:60]}")

    try:
        return str(value(ast.parse(expression, mode="eval").body))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError) as e:
        return f"error: {e}"


def run_python(code: str, timeout: float = 5.0) -> str:
    """Runs ``code`` in a separate interpreter: isolated mode (no site
    packages, no environment), an empty temporary directory, limits on CPU
    time and memory (where the OS has them), and a wall-clock timeout."""

    def limits() -> None:
        import resource

        cpu = max(1, int(timeout))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    with tempfile.TemporaryDirectory() as cwd:
        try:
            done = subprocess.run(
                [sys.executable, "-I", "-c", code],
                cwd=cwd,
                env={},
                capture_output=True,
                text=True,
                timeout=timeout,
                preexec_fn=limits if os.name == "posix" else None,
            )
        except subprocess.TimeoutExpired:
            return f"error: timed out after {timeout} s"
    out = (done.stdout + done.stderr)[-2000:]
    if done.returncode < 0:
        return f"error: stopped by signal {-done.returncode} (a time or memory limit)"
    return out if done.returncode == 0 else f"error (exit {done.returncode}): {out}"


def call_tool(name: str, arguments: str) -> str:
    try:
        args = json.loads(arguments)
    except json.JSONDecodeError as e:
        return f"error: arguments are not JSON: {e}"
    if name == "calculator":
        return calculator(str(args.get("expression", "")))
    if name == "run_python":
        return run_python(str(args.get("code", "")))
    return f"error: no tool named {name!r}"


def agent(
    client: Any,
    question: str,
    *,
    max_steps: int = 5,
    tool_choice: str = "auto",
    log: Callable[[str], None] = print,
    **options: Any,
) -> str:
    """Asks until the model answers in text (or ``max_steps`` run out),
    running each tool call it makes and giving it the result."""
    messages: list[Any] = [
        {"role": "system", "content": "Use the tools to compute; then answer briefly."},
        {"role": "user", "content": question},
    ]
    for step in range(max_steps):
        r = client.chat.completions.create(
            model="local",
            messages=messages,
            tools=TOOLS,
            tool_choice=tool_choice if step == 0 else "auto",
            **options,
        )
        msg = r.choices[0].message
        if not msg.tool_calls:
            return str(msg.content or "")
        messages.append(msg.model_dump(exclude_none=True))
        for call in msg.tool_calls:
            result = call_tool(call.function.name, call.function.arguments)
            log(f"  {call.function.name}({call.function.arguments}) -> {result.strip()[:200]}")
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    return "(no answer within the steps allowed)"


def start_server(model_path: str) -> tuple[str, Callable[[], None]]:
    """Serves the model from this process; returns its URL and a stop function."""
    import uvicorn

    import tinyllm
    from tinyllm.server import create_app

    model = tinyllm.Model(model_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(model), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = True
        thread.join()

    return f"http://127.0.0.1:{port}/v1", stop


def main() -> None:
    from openai import OpenAI

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", nargs="?", help="a model to serve here (unless --base-url)")
    p.add_argument("question", help="what to ask")
    p.add_argument("--base-url", help="a running server, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api-key", default="none")
    args = p.parse_args()
    if args.base_url is None and args.model is None:
        p.error("give a MODEL to serve, or --base-url")
    url, stop = (args.base_url, lambda: None) if args.base_url else start_server(args.model)
    try:
        client = OpenAI(base_url=url, api_key=args.api_key)
        print(agent(client, args.question, temperature=0))
    finally:
        stop()


if __name__ == "__main__":
    main()
