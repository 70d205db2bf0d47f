"""The OpenAI-compatible HTTP API of `rduflow serve` (starlette; uvicorn runs it).

Endpoints: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions`
(`stream: true` sends server-sent events in OpenAI's chunk format, ending with
`data: [DONE]`), `GET /health` and `GET /metrics` (Prometheus). Requests run on a
`runtime.serving.Engine` thread; its token callbacks hand text to each request's
asyncio queue. Errors are OpenAI error objects: 400 bad parameters (including the
ones not implemented, `UNSUPPORTED`) or a request beyond the context, 404 an unknown
model or path, 429 a full queue, 500 a bug.

`completion_tokens` counts every token the model generated for the request,
including an EOS id and the token that completed a stop string.
"""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

import attrs
import pydantic
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ir.errors import DataError, ExecutionError
from runtime.chat_template import ChatTemplate
from runtime.sampling import SamplingOptions
from runtime.serving import CANCELLED, ERROR, LENGTH, Engine, QueueFull, Request
from runtime.text_stream import TextStream
from runtime.tokenizer import Tokenizer

log = logging.getLogger("rduflow.serve")


@attrs.frozen
class Model:
    """What the server serves: a name, the text side of the checkpoint and the engine."""

    name: str
    tokenizer: Tokenizer
    chat_template: ChatTemplate | None
    eos_ids: frozenset[int]
    engine: Engine


class APIError(Exception):
    """An error answered as an OpenAI error object."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


# --- request bodies ------------------------------------------------------------------------
class _Body(pydantic.BaseModel):
    """The parameters shared by both endpoints; unknown fields are ignored, as OpenAI's defaults."""

    model_config = pydantic.ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = pydantic.Field(None, ge=1)
    temperature: float | None = pydantic.Field(None, ge=0.0, le=2.0)
    top_p: float | None = pydantic.Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    n: Literal[1] | None = 1

    @pydantic.field_validator("stop")
    @classmethod
    def _at_most_four(cls, stop):
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError("at most 4 stop sequences")
        return stop

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or ())

    def sampling(self) -> SamplingOptions:
        temperature = 1.0 if self.temperature is None else self.temperature
        return SamplingOptions(temperature=temperature, top_p=1.0 if self.top_p is None else self.top_p,
                               seed=secrets.randbits(63) if self.seed is None else self.seed)

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionBody(_Body):
    prompt: str | list[int] | list[str] | list[list[int]]


class _TextPart(pydantic.BaseModel):
    type: Literal["text"]
    text: str


class _Message(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")

    role: str
    content: str | list[_TextPart] | None = None

    def as_dict(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        return {**(self.model_extra or {}), "role": self.role, "content": content}


class ChatBody(_Body):
    messages: list[_Message] = pydantic.Field(min_length=1)
    max_completion_tokens: int | None = pydantic.Field(None, ge=1)


#: OpenAI parameters this server does not implement: refused unless off (absent, null, false, 0, empty)
UNSUPPORTED = ("logprobs", "top_logprobs", "echo", "best_of", "suffix", "frequency_penalty", "presence_penalty",
               "logit_bias", "tools", "response_format")


def _is_off(name: str, value: Any) -> bool:
    return value in (None, False, 0, "", [], {}) or (name == "best_of" and value == 1)


async def _parse(request: HTTPRequest, body_type: type[_Body]) -> _Body:
    try:
        data = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise APIError(400, f"the request body is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    unsupported = next((name for name in UNSUPPORTED if not _is_off(name, data.get(name))), None)
    if unsupported is not None:
        raise APIError(400, f"{unsupported} is not supported by rduflow serve", param=unsupported)
    try:
        return body_type.model_validate(data)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise APIError(400, f"{where}: {first['msg']}", param=str(first["loc"][0]) if first["loc"] else None) \
            from None


# --- metrics ---------------------------------------------------------------------------------
class Metrics:
    """The Prometheus metrics of one server (its own registry)."""

    def __init__(self, engine: Engine):
        self.registry = CollectorRegistry()
        reg = {"registry": self.registry}
        self.requests = Counter("rduflow_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], **reg)
        self.prompt_tokens = Counter("rduflow_prompt_tokens", "prompt tokens of accepted requests", **reg)
        self.generation_tokens = Counter("rduflow_generation_tokens", "tokens generated", **reg)
        self.cancelled = Counter("rduflow_cancelled_requests", "requests ended early because the client left",
                                 **reg)
        Gauge("rduflow_queue_depth", "requests waiting for a slot", **reg).set_function(lambda: engine.queued)
        Gauge("rduflow_running_requests", "requests in a batch slot", **reg).set_function(lambda: engine.running)
        self.ttft = Histogram("rduflow_time_to_first_token_seconds", "from arrival to the first token",
                              buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30), **reg)
        self.per_token = Histogram("rduflow_time_per_output_token_seconds", "time between two tokens",
                                   buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1), **reg)
        self.latency = Histogram("rduflow_request_latency_seconds", "from arrival to the last token",
                                 buckets=(.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60), **reg)


# --- one generation ------------------------------------------------------------------------
class Job:
    """One request on the engine: its text arrives on an asyncio queue, then the finish reason."""

    def __init__(self, model: Model, metrics: Metrics, prompt: list[int], max_tokens: int, body: _Body):
        self.model, self.metrics = model, metrics
        self.prompt = prompt
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[str | _Finished] = asyncio.Queue()
        self.text = TextStream(model.tokenizer, body.stops())
        self.request = Request(tuple(prompt), max_tokens, body.sampling(), model.eos_ids,
                               self._on_token, self._on_finish)
        self.arrived = self.last = time.perf_counter()
        self.finish_reason: str | None = None

    def submit(self) -> None:
        try:
            self.model.engine.submit(self.request)
        except QueueFull as err:
            raise APIError(429, err.message, type="rate_limit_error", code="queue_full") from None
        except ExecutionError as err:
            raise APIError(400, err.message, param="max_tokens" if "max_tokens" in err.message else "prompt") \
                from None
        self.metrics.prompt_tokens.inc(len(self.prompt))

    @property
    def usage(self) -> dict[str, int]:
        done = len(self.request.tokens)
        return {"prompt_tokens": len(self.prompt), "completion_tokens": done, "total_tokens": len(self.prompt) + done}

    def _on_token(self, token: int) -> bool:  # on the engine's thread
        now = time.perf_counter()
        (self.metrics.ttft if len(self.request.tokens) == 1 else self.metrics.per_token).observe(
            now - (self.arrived if len(self.request.tokens) == 1 else self.last))
        self.last = now
        self.metrics.generation_tokens.inc()
        self._send(self.text.push(token))
        return not self.text.stopped

    def _on_finish(self, reason: str) -> None:  # on the engine's thread
        if reason == CANCELLED:
            self.metrics.cancelled.inc()
        elif reason != ERROR:
            self._send(self.text.flush())
            self.metrics.latency.observe(time.perf_counter() - self.arrived)
        self._send(_Finished(reason))

    def _send(self, event: str | _Finished) -> None:
        if event != "":
            try:
                self.loop.call_soon_threadsafe(self.events.put_nowait, event)
            except RuntimeError:  # the event loop is closed: the server has stopped
                pass

    async def deltas(self) -> AsyncIterator[str]:
        """The text as it comes; sets `finish_reason` (OpenAI's: "stop" or "length")."""
        while True:
            event = await self.events.get()
            if isinstance(event, _Finished):
                if event.reason == ERROR:
                    raise APIError(500, "generation failed; see the server log", type="internal_error")
                self.finish_reason = "length" if event.reason == LENGTH else "stop"
                return
            yield event

    def cancel(self) -> None:
        self.model.engine.cancel(self.request)


@attrs.frozen
class _Finished:
    reason: str


# --- the endpoints ---------------------------------------------------------------------------
class API:
    """The routes of one served model."""

    def __init__(self, model: Model):
        self.model = model
        self.metrics = Metrics(model.engine)
        self.created = int(time.time())

    def routes(self) -> list[Route]:
        endpoints = {"/v1/models": (self.models, ["GET"]), "/v1/completions": (self.completions, ["POST"]),
                     "/v1/chat/completions": (self.chat, ["POST"]), "/health": (self.health, ["GET"]),
                     "/metrics": (self.metrics_text, ["GET"])}
        return [Route(path, self._counted(path, handler), methods=methods)
                for path, (handler, methods) in endpoints.items()]

    def _counted(self, path: str, handler: Callable[[HTTPRequest], Awaitable[Response]]):
        async def endpoint(request: HTTPRequest) -> Response:
            try:
                response = await handler(request)
            except APIError as err:
                response = err.response()
            except Exception:  # noqa: BLE001 - a bug answers 500 and the server keeps serving
                log.exception("%s failed", path)
                response = APIError(500, "internal error; see the server log", type="internal_error").response()
            self.metrics.requests.labels(path, str(response.status_code)).inc()
            return response
        return endpoint

    async def health(self, request: HTTPRequest) -> Response:
        return JSONResponse({"status": "ok", "running": self.model.engine.running,
                             "queued": self.model.engine.queued})

    async def metrics_text(self, request: HTTPRequest) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def models(self, request: HTTPRequest) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model.name, "object": "model", "created": self.created, "owned_by": "rduflow",
                "max_model_len": self.model.engine.limits.max_seq_length}

    async def completions(self, request: HTTPRequest) -> Response:
        body = await _parse(request, CompletionBody)
        self._check_model(body)
        prompt = self._prompt_ids(body.prompt)
        job = self._start(prompt, body.max_tokens, body)
        shape = _completion_shape(self.model.name)
        return await self._answer(request, job, body, shape)

    async def chat(self, request: HTTPRequest) -> Response:
        body = await _parse(request, ChatBody)
        self._check_model(body)
        if self.model.chat_template is None:
            raise APIError(400, f"model {self.model.name} has no chat template: use /v1/completions", param="messages")
        try:
            text = self.model.chat_template.render([m.as_dict() for m in body.messages])
        except DataError as err:
            raise APIError(400, err.message, param="messages") from None
        job = self._start(self.model.tokenizer.encode(text), body.max_completion_tokens or body.max_tokens, body)
        return await self._answer(request, job, body, _chat_shape(self.model.name))

    def _check_model(self, body: _Body) -> None:
        if body.model != self.model.name:
            raise APIError(404, f"The model `{body.model}` does not exist (this server serves "
                                f"`{self.model.name}`).", param="model", code="model_not_found")

    def _prompt_ids(self, prompt: str | list) -> list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise APIError(400, f"one prompt per request, got {len(prompt)}", param="prompt")
            prompt = prompt[0]
        return self.model.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)

    def _start(self, prompt: list[int], max_tokens: int | None, body: _Body) -> Job:
        if max_tokens is None:
            max_tokens = max(1, self.model.engine.limits.max_seq_length - len(prompt))
        job = Job(self.model, self.metrics, prompt, max_tokens, body)
        job.submit()
        return job

    async def _answer(self, request: HTTPRequest, job: Job, body: _Body, shape: _Shape) -> Response:
        if body.stream:
            return StreamingResponse(_events(job, shape, body.include_usage()), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        text = await _collect(request, job)
        if text is None:  # the client left
            return Response(status_code=499)
        return JSONResponse(shape.whole(text, job.finish_reason, job.usage))


async def _collect(request: HTTPRequest, job: Job) -> str | None:
    """The whole text, or None if the client disconnects first (the request is cancelled)."""
    async def whole() -> str:
        return "".join([delta async for delta in job.deltas()])

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    text, gone = asyncio.ensure_future(whole()), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({text, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not text.done():
        job.cancel()
        text.cancel()
        return None
    return text.result()


async def _events(job: Job, shape: _Shape, include_usage: bool) -> AsyncIterator[str]:
    """The server-sent events of a streamed answer; a client that leaves cancels the request."""
    try:
        for chunk in shape.opening():
            yield _sse(chunk)
        async for delta in job.deltas():
            yield _sse(shape.chunk(delta, None))
        yield _sse(shape.chunk("", job.finish_reason))
        if include_usage:
            yield _sse(shape.usage_chunk(job.usage))
    except APIError as err:
        yield _sse(json.loads(err.response().body))
    finally:
        if job.finish_reason is None:
            job.cancel()
    yield "data: [DONE]\n\n"


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


@attrs.frozen
class _Shape:
    """The JSON shapes of one endpoint's answers (whole, and streamed chunks)."""

    id: str
    model: str
    object: str
    chunk_object: str
    created: int = attrs.field(factory=lambda: int(time.time()))

    def _base(self, object: str) -> dict[str, Any]:
        return {"id": self.id, "object": object, "created": self.created, "model": self.model}

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        return {**self._base(self.chunk_object), "choices": [], "usage": usage}


class _CompletionShape(_Shape):
    def opening(self) -> list[dict[str, Any]]:
        return []

    def whole(self, text: str, finish_reason: str, usage: dict[str, int]) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return {**self._base(self.object), "choices": [choice], "usage": usage}

    def chunk(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return {**self._base(self.chunk_object), "choices": [choice]}


class _ChatShape(_Shape):
    def opening(self) -> list[dict[str, Any]]:
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                  "finish_reason": None}
        return [{**self._base(self.chunk_object), "choices": [choice]}]

    def whole(self, text: str, finish_reason: str, usage: dict[str, int]) -> dict[str, Any]:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": finish_reason}
        return {**self._base(self.object), "choices": [choice], "usage": usage}

    def chunk(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        delta = {"content": text} if finish_reason is None else {}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**self._base(self.chunk_object), "choices": [choice]}


def _completion_shape(model: str) -> _Shape:
    return _CompletionShape(f"cmpl-{secrets.token_hex(12)}", model, "text_completion", "text_completion")


def _chat_shape(model: str) -> _Shape:
    return _ChatShape(f"chatcmpl-{secrets.token_hex(12)}", model, "chat.completion", "chat.completion.chunk")


# --- the application ---------------------------------------------------------------------------
def create_app(model: Model) -> Starlette:
    """The ASGI application; the engine's thread runs while the application does."""
    api = API(model)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        model.engine.start()
        try:
            yield
        finally:
            model.engine.stop(timeout=10)

    async def http_error(request: HTTPRequest, err: HTTPException) -> Response:
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return APIError(err.status_code, f"{request.method} {request.url.path}: {err.detail}", type=kind).response()

    app = Starlette(routes=api.routes(), lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.api = api
    return app
