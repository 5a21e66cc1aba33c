"""The HTTP application: OpenAI's chat and text completion endpoints over
one :class:`tinyllm.Model`.

Each request starts its generations on the model and reads them in worker
threads, so requests that overlap are decoded together by the engine's
scheduler, not queued one behind another. A streaming response whose client
goes away cancels its generations.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from anyio import to_thread
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tinyllm._chat import ChatReply, Deltas, ToolPlan, _reply, encode_chat
from tinyllm._model import Model
from tinyllm._template import TemplateError
from tinyllm._tinyllm import ContextLengthError
from tinyllm._tokenizer import Tokenizer
from tinyllm._types import ChatCompletionMessage
from tinyllm.server._protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

log = logging.getLogger("tinyllm.server")

Records = list[tuple[int, float, list[tuple[int, float]]]]
#: A prompt's records: the first position has no log-probability.
PromptRecords = list[tuple[int, float | None, list[tuple[int, float]] | None]]


class ApiError(Exception):
    """An error to send as OpenAI sends them: ``{"error": {...}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"message": message, "type": kind, "param": param, "code": code}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.body}, status_code=self.status)


@dataclass
class _Usage:
    """What a request cost, for its response and its log line."""

    prompt: int = 0
    completion: int = 0
    started: float = field(default_factory=time.perf_counter)

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
        }

    def log(self, path: str, status: int) -> None:
        seconds = time.perf_counter() - self.started
        rate = self.completion / seconds if seconds > 0 else 0.0
        log.info(
            "POST %s %d | prompt %d tokens, completion %d tokens, %.2f s, %.1f tokens/s",
            path,
            status,
            self.prompt,
            self.completion,
            seconds,
            rate,
        )


def _seed(given: int | None, i: int) -> int:
    """Choice ``i``'s seed: the request's (plus ``i``, so choices differ), or
    a random one."""
    if given is None:
        return secrets.randbits(64)
    return (given + i) % (1 << 64)


def _token(tok: Tokenizer, token_id: int) -> tuple[str, list[int]]:
    raw = tok.token_bytes(token_id)
    return raw.decode("utf-8", errors="replace"), list(raw)


def _chat_logprobs(tok: Tokenizer, records: Records) -> list[dict[str, Any]]:
    out = []
    for token_id, logprob, top in records:
        text, raw = _token(tok, token_id)
        alternatives = []
        for alt_id, alt_logprob in top:
            alt_text, alt_raw = _token(tok, alt_id)
            alternatives.append({"token": alt_text, "logprob": alt_logprob, "bytes": alt_raw})
        out.append({"token": text, "logprob": logprob, "bytes": raw, "top_logprobs": alternatives})
    return out


def _completion_logprobs(
    tok: Tokenizer,
    records: Records | PromptRecords,
    offset: int,
    texts: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The legacy ``logprobs`` object; ``texts`` (what each token adds to
    the text) where a token's own spelling is not that (a prompt's first
    token loses SentencePiece's leading space)."""
    tokens: list[str] = []
    logprobs: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    for k, (token_id, logprob, top) in enumerate(records):
        text = _token(tok, token_id)[0] if texts is None else texts[k]
        tokens.append(text)
        logprobs.append(logprob)
        tops.append(None if top is None else {_token(tok, t)[0]: lp for t, lp in top})
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def _prompt_logprobs(model: Model, ids: list[int], n: int) -> tuple[PromptRecords, list[str]]:
    """Each prompt token's log-probability given the tokens before it, with
    the ``n`` likeliest alternatives there, from the model's logits (what
    ``echo`` with ``logprobs`` returns). Special tokens the tokenizer puts
    before the text (BOS) are conditioned on but not listed: the echoed text
    does not hold them. The very first position has no log-probability.
    Also returns what each listed token adds to the text, as decoded."""
    logits = model.logits(ids).astype(np.float64)
    top = logits.max(axis=1, keepdims=True)
    logp = logits - (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))
    special = model.tokenizer.special_ids
    start = 0
    while start < len(ids) and ids[start] in special:
        start += 1
    out: PromptRecords = []
    for i in range(start, len(ids)):
        if i == 0:
            out.append((ids[0], None, None))
            continue
        row = logp[i - 1]
        best = np.argsort(-row, kind="stable")[:n]
        out.append((ids[i], float(row[ids[i]]), [(int(t), float(row[t])) for t in best]))
    decoder = model.tokenizer.decoder()
    texts = [decoder.push(t) for t in ids]
    texts[-1] += decoder.flush()
    return out, texts[start:]


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _next(it: Any) -> str | None:
    return next(it, None)


class Api:
    """The endpoints over one model."""

    def __init__(
        self,
        model: Model,
        name: str | None = None,
        api_key: str | None = None,
        max_body_bytes: int = 16 << 20,
    ) -> None:
        self.model = model
        self.max_body_bytes = max_body_bytes
        self.name = name or os.path.basename(str(model.info.get("path", ""))) or "tinyllm"
        self.api_key = api_key
        self.created = int(time.time())

    # -- plumbing --------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), self.api_key):
            raise ApiError(
                401,
                "a valid API key is needed: send the header 'Authorization: Bearer KEY'",
                code="invalid_api_key",
            )

    def endpoint(
        self, handler: Callable[[Request], Awaitable[Response]], *, open_: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wraps a handler: the API key, and errors in OpenAI's shape."""

        async def run(request: Request) -> Response:
            try:
                if not open_:
                    self._authorize(request)
                return await handler(request)
            except ApiError as e:
                log.info("%s %s %d | %s", request.method, request.url.path, e.status, e)
                return e.response()
            except ValidationError as e:
                err = _validation_error(e)
                log.info("%s %s 400 | %s", request.method, request.url.path, err)
                return err.response()
            except ContextLengthError as e:
                log.info("%s %s 400 | %s", request.method, request.url.path, e)
                return ApiError(400, str(e), code="context_length_exceeded").response()
            except (TemplateError, ValueError, TypeError) as e:
                log.info("%s %s 400 | %s", request.method, request.url.path, e)
                return ApiError(400, str(e)).response()

        return run

    async def _body(self, request: Request) -> Any:
        limit = self.max_body_bytes
        too_big = ApiError(413, f"the request body is larger than {limit} bytes")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None

    def _check_room(self, prompt: int, max_tokens: int | None) -> None:
        """OpenAI's rule: the prompt and the tokens asked for must fit."""
        n = self.model.context_length
        if prompt + (max_tokens or 0) > n:
            asked = f"{prompt} in the prompt" + (
                f" and {max_tokens} for the completion" if max_tokens else ""
            )
            raise ApiError(
                400,
                f"the model's context is {n} tokens, but {asked} were requested",
                param="max_tokens" if max_tokens and prompt <= n else "messages",
                code="context_length_exceeded",
            )

    # -- endpoints -------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(self, request: Request) -> Response:
        info = self.model.info
        entry = {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "tinyllm",
            "context_length": self.model.context_length,
            "max_sequences": info.get("max_sequences"),
        }
        return JSONResponse({"object": "list", "data": [entry]})

    async def chat_completions(self, request: Request) -> Response:
        req = ChatCompletionRequest.model_validate(await self._body(request))
        if req.top_logprobs is not None and not req.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs to be true", param="top_logprobs")
        messages = [m.as_dict() for m in req.messages]
        options = req.sampling()
        options["max_tokens"] = req.limit()
        plan = None
        if req.tools:
            parallel = req.parallel_tool_calls is not False
            plan = ToolPlan(self.model, messages, req.tools, req.tool_choice, parallel)
            ids = encode_chat(self.model, plan.messages, tools=plan.template_tools)
            options = plan.options(options)
        else:
            ids = encode_chat(self.model, messages)
        if req.logprobs:
            options["logprobs"] = req.top_logprobs or 0
        self._check_room(len(ids), req.limit())
        replies: list[ChatReply] = []
        try:
            for i in range(req.n):
                replies.append(_reply(self.model, ids, {**options, "seed": _seed(req.seed, i)}))
        except BaseException:
            for r in replies:
                r.cancel()
            raise
        usage = _Usage(prompt=len(ids))
        head = {
            "id": "chatcmpl-" + secrets.token_hex(12),
            "created": int(time.time()),
            "model": self.name,
            "system_fingerprint": "tinyllm",
        }
        tok = self.model.tokenizer
        if req.stream:
            include_usage = req.stream_options is not None and req.stream_options.include_usage
            return _streaming(
                self._chat_events(replies, head, usage, include_usage, req.logprobs, tok, plan),
                replies,
            )

        def collect() -> list[dict[str, Any]]:
            choices = []
            for i, r in enumerate(replies):
                text = "".join(r)
                message: ChatCompletionMessage = {"role": "assistant", "content": text}
                finish_reason = r.finish_reason
                if plan is not None:
                    message, finish_reason = plan.message(text, finish_reason)
                logprobs = (
                    {"content": _chat_logprobs(tok, r.take_logprobs()), "refusal": None}
                    if req.logprobs
                    else None
                )
                choices.append(
                    {
                        "index": i,
                        "message": {**message, "refusal": None},
                        "logprobs": logprobs,
                        "finish_reason": finish_reason,
                    }
                )
                usage.completion += r.completion_tokens
            return choices

        try:
            choices = await to_thread.run_sync(collect)
        finally:
            for r in replies:
                r.cancel()
        usage.log(request.url.path, 200)
        body = {**head, "object": "chat.completion", "choices": choices, "usage": usage.as_dict()}
        return JSONResponse(body)

    async def _chat_events(
        self,
        replies: Sequence[ChatReply],
        head: dict[str, Any],
        usage: _Usage,
        include_usage: bool,
        logprobs: bool,
        tok: Tokenizer,
        plan: ToolPlan | None,
    ) -> AsyncIterator[str]:
        def chunk(i: int, delta: dict[str, Any], **extra: Any) -> dict[str, Any]:
            choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": None}
            choice.update(extra)
            body = {**head, "object": "chat.completion.chunk", "choices": [choice]}
            if include_usage:
                body["usage"] = None
            return body

        for i in range(len(replies)):
            yield _sse(chunk(i, {"role": "assistant", "content": ""}))
        for i, r in enumerate(replies):
            deltas = Deltas(plan)
            while (piece := await to_thread.run_sync(_next, r)) is not None:
                ready = deltas.push(piece)
                extra: dict[str, Any] = {}
                if logprobs:
                    extra["logprobs"] = {
                        "content": _chat_logprobs(tok, r.take_logprobs()),
                        "refusal": None,
                    }
                    ready = ready or [{"content": ""}]
                for j, delta in enumerate(ready):
                    yield _sse(chunk(i, delta, **(extra if j == 0 else {})))
            last_deltas, finish_reason = deltas.finish(r.finish_reason)
            for delta in last_deltas:
                yield _sse(chunk(i, delta))
            extra = {"finish_reason": finish_reason}  # and the records still held back
            if logprobs:
                rest = r.take_logprobs()
                if rest:
                    extra["logprobs"] = {"content": _chat_logprobs(tok, rest), "refusal": None}
            yield _sse(chunk(i, {}, **extra))
            usage.completion += r.completion_tokens
        if include_usage:
            yield _sse(
                {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage.as_dict()}
            )
        yield "data: [DONE]\n\n"
        usage.log("/v1/chat/completions", 200)

    async def embeddings(self, request: Request) -> Response:
        req = EmbeddingRequest.model_validate(await self._body(request))
        if isinstance(req.input, list) and not req.input:
            raise ApiError(400, "input must not be empty", param="input")
        dim = self.model.config.dim
        if req.dimensions is not None and req.dimensions > dim:
            raise ApiError(
                400,
                f"dimensions is {req.dimensions}, more than the model's {dim}",
                param="dimensions",
            )
        usage = _Usage()
        # Tokenized once: the ids are embedded and counted.
        ids = await to_thread.run_sync(_input_ids, self.model, req.input)
        vectors = await to_thread.run_sync(self.model.embed, ids)
        usage.prompt = sum(len(i) for i in ids)
        if req.dimensions is not None and req.dimensions < dim:
            # Matryoshka-style: the leading dimensions, scaled to length 1 again.
            vectors = vectors[:, : req.dimensions]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        data = []
        for i, v in enumerate(vectors):
            value: Any = (
                base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
                if req.encoding_format == "base64"
                else [float(x) for x in v]
            )
            data.append({"object": "embedding", "index": i, "embedding": value})
        usage.log(request.url.path, 200)
        body = {
            "object": "list",
            "data": data,
            "model": self.name,
            "usage": {"prompt_tokens": usage.prompt, "total_tokens": usage.prompt},
        }
        return JSONResponse(body)

    async def completions(self, request: Request) -> Response:
        req = CompletionRequest.model_validate(await self._body(request))
        if req.suffix:
            raise ApiError(400, "suffix (insertion) is not supported", param="suffix")
        if req.best_of is not None and req.best_of != req.n:
            raise ApiError(400, "best_of other than n is not supported", param="best_of")
        prompts = _prompts(self.model, req.prompt)
        options = req.sampling()
        options["max_tokens"] = (
            self.model.context_length if req.max_tokens is None else req.max_tokens
        )
        if req.logprobs is not None:
            options["logprobs"] = req.logprobs
        for ids, _ in prompts:
            self._check_room(len(ids), req.max_tokens)
        usage = _Usage(prompt=sum(len(ids) for ids, _ in prompts))
        streams: list[tuple[Any, str]] = []
        stream_ids: list[list[int]] = []
        try:
            for ids, text in prompts:
                for j in range(req.n):
                    seed = _seed(req.seed, j)
                    streams.append((self.model.stream(ids, **options, seed=seed), text))
                    stream_ids.append(ids)
        except BaseException:
            for s, _ in streams:
                s.cancel()
            raise
        head = {
            "id": "cmpl-" + secrets.token_hex(12),
            "created": int(time.time()),
            "model": self.name,
            "system_fingerprint": "tinyllm",
        }
        tok = self.model.tokenizer
        wants_logprobs = req.logprobs is not None

        def echoed(ids: list[int]) -> dict[str, Any] | None:
            """The prompt's own logprobs object, when echo asks for it."""
            if not (req.echo and wants_logprobs):
                return None
            records, texts = _prompt_logprobs(self.model, ids, req.logprobs or 0)
            return _completion_logprobs(tok, records, 0, texts)

        if req.stream:
            include_usage = req.stream_options is not None and req.stream_options.include_usage
            events = self._completion_events(
                streams,
                head,
                usage,
                include_usage,
                wants_logprobs,
                req.echo,
                tok,
                echoed,
                stream_ids,
            )
            return _streaming(events, [s for s, _ in streams])

        def collect() -> list[dict[str, Any]]:
            choices = []
            for i, ((s, prompt_text), ids) in enumerate(zip(streams, stream_ids, strict=True)):
                start = prompt_text if req.echo else ""
                text = start + "".join(s)
                logprobs = None
                if wants_logprobs:
                    logprobs = _completion_logprobs(tok, s.take_logprobs(), len(start))
                    if (prompt_lp := echoed(ids)) is not None:
                        for key in logprobs:
                            logprobs[key] = prompt_lp[key] + logprobs[key]
                choices.append(
                    {
                        "index": i,
                        "text": text,
                        "logprobs": logprobs,
                        "finish_reason": s.finish_reason,
                    }
                )
                usage.completion += len(s.tokens)
            return choices

        try:
            choices = await to_thread.run_sync(collect)
        finally:
            for s, _ in streams:
                s.cancel()
        usage.log(request.url.path, 200)
        body = {**head, "object": "text_completion", "choices": choices, "usage": usage.as_dict()}
        return JSONResponse(body)

    async def _completion_events(
        self,
        streams: Sequence[tuple[Any, str]],
        head: dict[str, Any],
        usage: _Usage,
        include_usage: bool,
        logprobs: bool,
        echo: bool,
        tok: Tokenizer,
        echoed: Callable[[list[int]], dict[str, Any] | None],
        stream_ids: Sequence[list[int]],
    ) -> AsyncIterator[str]:
        def chunk(
            i: int, text: str, finish: str | None, lp: dict[str, Any] | None
        ) -> dict[str, Any]:
            choice = {"index": i, "text": text, "logprobs": lp, "finish_reason": finish}
            body = {**head, "object": "text_completion", "choices": [choice]}
            if include_usage:
                body["usage"] = None
            return body

        for i, ((s, prompt_text), ids) in enumerate(zip(streams, stream_ids, strict=True)):
            offset = 0
            if echo and prompt_text:
                lp = await to_thread.run_sync(echoed, ids)
                yield _sse(chunk(i, prompt_text, None, lp))
                offset = len(prompt_text)
            while (piece := await to_thread.run_sync(_next, s)) is not None:
                lp = _completion_logprobs(tok, s.take_logprobs(), offset) if logprobs else None
                offset += len(piece)
                yield _sse(chunk(i, piece, None, lp))
            rest = _completion_logprobs(tok, s.take_logprobs(), offset) if logprobs else None
            yield _sse(chunk(i, "", s.finish_reason, rest))
            usage.completion += len(s.tokens)
        if include_usage:
            yield _sse(
                {**head, "object": "text_completion", "choices": [], "usage": usage.as_dict()}
            )
        yield "data: [DONE]\n\n"
        usage.log("/v1/completions", 200)


def _input_ids(model: Model, inputs: Any) -> list[list[int]]:
    """The token ids of each input of an embeddings request."""
    items = (
        [inputs] if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)) else inputs
    )
    return [model.tokenize(x) if isinstance(x, str) else list(x) for x in items]


def _prompts(model: Model, prompt: Any) -> list[tuple[list[int], str]]:
    """``(token ids, text)`` of each prompt of a completion request."""
    if isinstance(prompt, str):
        return [(model.tokenize(prompt), prompt)]
    if not prompt:
        raise ApiError(400, "prompt must not be an empty list", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [(list(prompt), model.detokenize(prompt))]
    if all(isinstance(p, str) for p in prompt):
        return [(model.tokenize(p), p) for p in prompt]
    if all(isinstance(p, list) for p in prompt):
        return [(list(p), model.detokenize(p)) for p in prompt]
    raise ApiError(400, "prompt must be a string, a list of strings, or token ids", param="prompt")


def _streaming(events: AsyncIterator[str], streams: Sequence[Any]) -> StreamingResponse:
    """Server-sent events; the generations are cancelled if the client goes
    away (or anything else ends the response early)."""

    async def guarded() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield event
        except Exception as e:  # after the headers went out: report in-band
            log.exception("a streaming response failed")
            yield _sse(
                {"error": {"message": str(e), "type": "server_error", "param": None, "code": None}}
            )
        finally:
            for s in streams:
                s.cancel()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(guarded(), media_type="text/event-stream", headers=headers)


def _validation_error(e: ValidationError) -> ApiError:
    problems = []
    param = None
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        param = param or (str(err["loc"][0]) if err["loc"] else None)
        problems.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return ApiError(400, "invalid request: " + "; ".join(problems[:5]), param=param)


def create_app(
    model: Model,
    *,
    name: str | None = None,
    api_key: str | None = None,
    max_body_bytes: int = 16 << 20,
) -> Starlette:
    """The ASGI application serving ``model`` (run it with any ASGI server;
    :func:`tinyllm.serve` runs it with uvicorn). Request bodies over
    ``max_body_bytes`` get a 413."""
    api = Api(model, name=name, api_key=api_key, max_body_bytes=max_body_bytes)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = {404: "no such endpoint", 405: "method not allowed"}.get(status, str(exc))
        return ApiError(status, f"{message}: {request.method} {request.url.path}").response()

    async def internal(request: Request, exc: Exception) -> Response:
        log.exception("request failed: %s %s", request.method, request.url.path)
        return ApiError(500, f"internal error: {exc}", kind="server_error").response()

    routes = [
        Route("/health", api.endpoint(api.health, open_=True), methods=["GET"]),
        Route("/v1/models", api.endpoint(api.models), methods=["GET"]),
        Route("/v1/chat/completions", api.endpoint(api.chat_completions), methods=["POST"]),
        Route("/v1/completions", api.endpoint(api.completions), methods=["POST"]),
        Route("/v1/embeddings", api.endpoint(api.embeddings), methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={404: not_found, 405: not_found, Exception: internal},
    )
    app.state.api = api
    return app
