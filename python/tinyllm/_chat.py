"""The interactive terminal chat of :meth:`tinyllm.Model.chat`.

Conversations use Llama 2's chat format as llama2.c's ``run.c`` writes it:
each turn is ``<s>[INST] {user} [/INST] {reply}</s>``, and the first turn
carries the system prompt as ``<<SYS>>\\n{system}\\n<</SYS>>\\n\\n`` before
the user's text. The KV cache keeps earlier turns, so each turn only computes
its own new tokens.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from tinyllm._model import Model

EOS = 2

HELP = "Commands: /reset, /system TEXT, /quit. Ctrl-C stops a reply, Ctrl-D leaves."


def llama2_turn(user: str, system: str | None) -> str:
    """One user turn in Llama 2's ``[INST]`` format (BOS is added when encoding)."""
    if system:
        return f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]"
    return f"[INST] {user} [/INST]"


def chat(
    model: Model,
    system: str | None = None,
    *,
    read: Callable[[str], str] = input,
    out: TextIO | None = None,
    err: TextIO | None = None,
    **options: Any,
) -> None:
    """Runs the chat loop until ``/quit`` or end of input."""
    out = out or sys.stdout
    err = err or sys.stderr
    options.setdefault("max_tokens", model.context_length)
    history: list[int] = []
    print(HELP, file=err)
    while True:
        try:
            user = read("User: ")
        except EOFError:
            print(file=out)
            return
        except KeyboardInterrupt:
            print(file=out)
            continue
        text = user.strip()
        if text in ("/quit", "/exit"):
            return
        if text == "/reset":
            history = []
            print("(conversation forgotten)", file=err)
            continue
        if text.startswith("/system"):
            system = text[len("/system") :].strip() or None
            history = []
            print(f"(system prompt {'set' if system else 'cleared'}; conversation reset)", file=err)
            continue
        if not text:
            continue

        turn = model.tokenize(llama2_turn(text, system if not history else None))
        ids = history + turn
        if len(ids) >= model.context_length:
            print("(the conversation filled the context; starting over)", file=err)
            ids = model.tokenize(llama2_turn(text, system))
            if len(ids) >= model.context_length:
                print("(that message alone is longer than the context)", file=err)
                history = []
                continue
        budget = model.context_length - len(ids)
        stream = model.stream(ids, **{**options, "max_tokens": min(options["max_tokens"], budget)})
        print("Assistant: ", end="", file=out, flush=True)
        try:
            for piece in stream:
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:
            out.write(" [stopped]")
        print(file=out)
        stats = stream.stats
        n, secs = stats["generated_tokens"], stats["generate_seconds"]
        if n and secs > 0:
            print(f"({n} tokens, {n / secs:.1f} tokens/s)", file=err)
        history = ids + stream.tokens + [EOS]
