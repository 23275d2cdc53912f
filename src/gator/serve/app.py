"""The FastAPI application: OpenAI-compatible routes, the chat page, health, metrics, and the guards.

    GET  /                       the chat page (static/index.html)
    GET  /v1/models              the served models (the base and its LoRA adapters)
    POST /v1/completions         text completion (prompt)            } streamed as server-sent events
    POST /v1/chat/completions    chat completion (messages)          } when "stream": true
    POST /tokenize, /detokenize  text <-> token ids with the model's tokenizer
    GET  /health, /metrics       liveness (JSON) and Prometheus metrics (text)

Guards run before any route (`_Guard`, plain ASGI): the API key (401), the body size (413, checked
while reading, so a huge body is never held in memory), and a last-resort handler that turns any
unexpected exception into a 500 in OpenAI's error shape, so nothing a client sends stops the server.
"""

from __future__ import annotations

import hmac
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gator.serve.generation import Job, Limits, chat_job, completion_job
from gator.serve.metrics import CONTENT_TYPE, Metrics
from gator.serve.models import ServedModel
from gator.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    validation_error,
)

log = logging.getLogger("gator.serve")
STATIC = Path(__file__).parent / "static"
OPEN_PATHS = ("/", "/health", "/favicon.ico")  # and /static/...: everything else needs the key when one is set
ROUTES = ("/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/tokenize",
          "/detokenize")


@dataclass
class ServeConfig:
    api_key: str | None = None  # when set, every API route needs "Authorization: Bearer <api_key>"
    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    max_prompt_tokens: int | None = None  # None: the model's context length - 1


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


class _Guard:
    """API key, body-size limit, request metrics and a last-resort 500, around the whole app."""

    def __init__(self, app: ASGIApp, config: ServeConfig, metrics: Metrics):
        self.app, self.config, self.metrics = app, config, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        status = {"code": 500}

        async def counted_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            err = self._check_key(scope, path)
            if err is None:
                receive, err = await self._read_body(scope, receive)
            if err is not None:
                await _error_response(err)(scope, receive, counted_send)
            else:
                await self.app(scope, receive, counted_send)
        except Exception:  # the routes' own handlers failed too: answer 500 if nothing was sent yet
            log.exception("unhandled error for %s", path)
            if status["code"] == 500:
                try:
                    await _error_response(APIError(500, "internal server error", type="server_error"))(
                        scope, receive, counted_send)
                except Exception:
                    pass
        finally:
            endpoint = path if path in ROUTES else "/static" if path.startswith("/static/") else "other"
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()

    def _check_key(self, scope: Scope, path: str) -> APIError | None:
        key = self.config.api_key
        if not key or path in OPEN_PATHS or path.startswith("/static/"):
            return None
        headers = dict(scope["headers"])
        given = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode()):
            return None
        return APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>' with the "
                        "key the server was started with", code="invalid_api_key")

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[Receive, APIError | None]:
        """Read the body up to the limit and replay it to the app; a longer one is a 413."""
        limit = self.config.max_body_bytes
        too_big = APIError(413, f"the request body is larger than this server's limit of {limit} bytes",
                           code="request_too_large")
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return receive, too_big
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return receive, None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return receive, too_big
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        return replay, None


def _parse(model: type[BaseModel], raw: bytes) -> Any:
    try:
        return model.model_validate_json(raw or b"")
    except ValidationError as err:
        raise validation_error(err) from None


def create_app(models: list[ServedModel], config: ServeConfig | None = None) -> FastAPI:
    """The server for `models` (the first is the default for /tokenize); engines start with the app."""
    config = config or ServeConfig()
    by_name = {m.name: m for m in models}
    metrics = Metrics(lambda: models)
    limits = Limits(max_prompt_tokens=config.max_prompt_tokens)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for m in models:
            m.engine.start()
        yield
        for m in models:
            m.engine.shutdown()

    app = FastAPI(title="gator", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.models, app.state.metrics = models, metrics

    def served(name: str | None, param: str = "model") -> ServedModel:
        if name is None:
            return models[0]
        if name not in by_name:
            raise APIError(404, f"the model {name!r} does not exist; this server has {', '.join(by_name)}",
                           param=param, code="model_not_found")
        return by_name[name]

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return _error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if err.status_code == 404 else "method_not_allowed" if err.status_code == 405 else None
        message = (f"no route {request.method} {request.url.path}; see /v1/models, /v1/completions, "
                   "/v1/chat/completions" if err.status_code in (404, 405) else str(err.detail))
        return _error_response(APIError(err.status_code, message, code=code))

    @app.exception_handler(Exception)
    async def server_error(request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error_response(APIError(500, "internal server error", type="server_error"))

    async def run(job: Job, request: Request) -> Response:
        job.submit()
        if job.body.stream:
            return StreamingResponse(job.stream(metrics), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            async for _ in job.events(request):
                pass
        finally:
            job.cancel()  # no-op when every choice finished; frees the slots of a client that left
        job.observe(metrics)
        return JSONResponse(job.response())

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = _parse(CompletionRequest, await request.body())
        return await run(completion_job(body, served(body.model), limits), request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = _parse(ChatCompletionRequest, await request.body())
        return await run(chat_job(body, served(body.model), limits), request)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [m.card() for m in models]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict[str, Any]:
        return served(name).card()

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        from gator.tokenizer.chat import apply_chat_template

        body = _parse(TokenizeRequest, await request.body())
        m = served(body.model)
        if m.tokenizer is None:
            raise APIError(400, f"the model {m.name!r} has no tokenizer")
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "give exactly one of 'prompt' (a string) or 'messages' (a chat)", param="prompt")
        if body.messages is not None:
            try:
                ids = apply_chat_template(m.tokenizer, [{"role": x.role, "content": x.text()} for x in body.messages],
                                          add_generation_prompt=body.add_generation_prompt)
            except ValueError as err:
                raise APIError(400, str(err), param="messages") from None
        else:
            ids = m.tokenizer.encode_ordinary(body.prompt)
        return {"tokens": ids, "count": len(ids), "max_model_len": m.context_length}

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict[str, Any]:
        body = _parse(DetokenizeRequest, await request.body())
        m = served(body.model)
        if m.tokenizer is None:
            raise APIError(400, f"the model {m.name!r} has no tokenizer")
        try:
            return {"prompt": m.tokenizer.decode(body.tokens)}
        except ValueError as err:
            raise APIError(400, str(err), param="tokens") from None

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": [m.name for m in models],
                "running": sum(m.engine.running for m in models), "waiting": sum(m.engine.waiting for m in models)}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(_Guard, config=config, metrics=metrics)
    return app
