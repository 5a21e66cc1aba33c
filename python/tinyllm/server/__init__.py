"""An OpenAI-compatible HTTP server over a :class:`tinyllm.Model`.

``tinyllm serve MODEL`` (or ``tinyllm.serve(model)``) answers
``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``
and ``GET /health`` in OpenAI's shapes, streaming as server-sent events.
Requests that overlap are decoded together. Needs the ``server`` extra:
``pip install 'tinyllm[server]'`` (Starlette, uvicorn, pydantic).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from tinyllm._model import Model
from tinyllm.server._app import create_app

__all__ = ["create_app", "serve"]


def serve(
    model: Model,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    api_key: str | None = None,
    name: str | None = None,
    log_level: str = "info",
    **uvicorn_options: Any,
) -> None:
    """Serves ``model`` over HTTP until interrupted.

    Args:
        model: the model to serve; its ``max_sequences`` is how many
            requests decode at once (more wait their turn).
        host: the address to bind (default: this machine only).
        port: the TCP port.
        api_key: if given, every endpoint but ``/health`` needs the header
            ``Authorization: Bearer API_KEY``.
        name: the model id the API reports (default: the file's name).
        log_level: uvicorn's and the request log's level.
    """
    import uvicorn

    app = create_app(model, name=name, api_key=api_key)
    logger = logging.getLogger("tinyllm.server")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(log_level.upper())
    api = app.state.api
    print(
        f"tinyllm: serving {api.name} on http://{host}:{port}/v1 "
        f"({model.info['max_sequences']} sequences at once, context {model.context_length})",
        file=sys.stderr,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, **uvicorn_options)
