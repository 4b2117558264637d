"""An OpenAI-compatible HTTP API and a chat page for an exported bardlet model.

One `OnnxLM` serves every request: ONNX Runtime sessions are thread-safe, and each request
keeps its own KV cache inside `OnnxLM.stream`. Generation runs in the thread pool, so the
event loop stays free; a streamed reply pulls one text piece at a time from a worker thread.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Generator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bardlet.chat import decode_pieces, fit_conversation, load_styles, special_ids
from bardlet.data.chat_template import render_prompt
from bardlet.runtime import OnnxLM, Sampling

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 1_000_000
MAX_STOP = 4
_bearer = HTTPBearer(auto_error=False, description="The server's --api-key, if it has one")

# ---------------------------------------------------------------------------- errors


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type_,
            param,
            code,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Bad request: invalid JSON, unsupported option, or a prompt too long",
        401: "Missing or wrong API key",
        413: "Request body too large",
        422: "A field has the wrong type or value",
    }.items()
}

_STATUS_TYPES = {
    401: ("authentication_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
}


class BodyLimit:
    """ASGI middleware: refuse request bodies above `limit` bytes with 413 before anything
    parses them, and mark every response `X-Content-Type-Options: nosniff`."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = APIError(
            413, f"the request body is larger than {self.limit} bytes", code="request_too_large"
        )
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    await too_large.response()(scope, receive, send)
                    return
        # Read the body here (bounded), then hand it to the app unchanged.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # http.disconnect
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await too_large.response()(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, replay, send_with_headers)


# ---------------------------------------------------------------------------- request bodies


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")  # unknown OpenAI options are accepted, unused

    model: str | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, description="bardlet extension: keep the k best tokens")
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    n: int | None = Field(None, ge=1, description="only 1 is supported")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    truncation: Literal["auto", "disabled"] = Field(
        "disabled",
        description=(
            "bardlet extension, named as in OpenAI's Responses API: 'auto' drops the oldest "
            "turns (never system messages or the newest message) so the prompt leaves room "
            "for the reply; 'disabled' refuses a prompt that does not fit"
        ),
    )


class CompletionRequest(_Common):
    prompt: str | list[str] = ""


# ---------------------------------------------------------------------------- generation


def _stop_list(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP:
        raise APIError(400, f"'stop' takes at most {MAX_STOP} sequences", param="stop")
    if any(not s for s in stops):
        raise APIError(400, "'stop' sequences must not be empty", param="stop")
    return stops


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of `text` could begin a stop sequence."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class Generation:
    """One request's generation: text pieces, then `finish_reason` and token counts."""

    def __init__(
        self,
        lm: OnnxLM,
        prompt: list[int],
        max_tokens: int,
        settings: Sampling,
        stops: list[str],
        stop_ids: Sequence[int],
    ) -> None:
        self.lm, self.prompt, self.settings = lm, prompt, settings
        self.stops, self.stop_ids = stops, tuple(stop_ids)
        self.budget = min(max_tokens, lm.block_size - len(prompt))
        self.completion_tokens = 0
        self.finish_reason = "stop"

    def _tokens(self) -> Generator[int, None, None]:
        for token in self.lm.stream(self.prompt, self.budget, self.settings, self.stop_ids):
            self.completion_tokens += 1
            yield token

    def pieces(self) -> Generator[str, None, None]:
        text = ""
        sent = 0
        stopped = False
        tokens = self._tokens()
        for piece in decode_pieces(self.lm.tokenizer, tokens):
            text += piece
            if self.stops:
                # Cut at the first stop sequence that appears; hold back a possible start of one.
                hits = [i for i in (text.find(s, max(0, sent - len(s))) for s in self.stops)]
                found = [i for i in hits if i >= 0]
                if found:
                    cut = min(found)
                    if cut > sent:
                        yield text[sent:cut]
                    stopped = True
                    break
                safe = len(text) - _held_back(text, self.stops)
            else:
                safe = len(text)
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        if stopped:
            tokens.close()
            self.finish_reason = "stop"
            return
        if len(text) > sent:
            yield text[sent:]
        self.finish_reason = "length" if self.completion_tokens >= self.budget else "stop"

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": len(self.prompt),
            "completion_tokens": self.completion_tokens,
            "total_tokens": len(self.prompt) + self.completion_tokens,
        }


def _next_piece(pieces: Generator[str, None, None]) -> str | None:
    return next(pieces, None)


async def _pull(pieces: Generator[str, None, None]) -> AsyncIterator[str]:
    """Text pieces produced in a worker thread, one thread hop per piece. When the client
    goes away the consumer is cancelled between pieces and generation stops there."""
    try:
        while True:
            piece = await run_in_threadpool(_next_piece, pieces)
            if piece is None:
                return
            yield piece
    finally:
        pieces.close()


def _sse(data: dict[str, Any] | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n"


# ---------------------------------------------------------------------------- the app


def create_app(
    lm: OnnxLM,
    api_key: str | None = None,
    *,
    model_id: str = "bardlet",
    max_body_bytes: int = MAX_BODY_BYTES,
    styles: dict[str, dict[str, Any]] | None = None,
) -> FastAPI:
    """The FastAPI app: /v1 (OpenAI-compatible), /health, /openapi.json and the page at /."""
    app = FastAPI(
        title="bardlet",
        version="1",
        description="OpenAI-compatible API for a small GPT trained from scratch with bardlet.",
        docs_url=None,  # Swagger UI loads from a CDN; the schema is at /openapi.json
        redoc_url=None,
    )
    created = int(time.time())
    tokenizer = lm.tokenizer
    bos = tokenizer.special_id("<|bos|>")
    chat_stops = special_ids(tokenizer)
    expected_key = api_key.encode() if api_key else None
    styles = styles if styles is not None else load_styles(lm.path)

    async def check_key(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if expected_key is None:
            return
        given = credentials.credentials.encode() if credentials else b""
        if not hmac.compare_digest(given, expected_key):
            raise APIError(
                401,
                "missing or incorrect API key: send `Authorization: Bearer <key>`",
                type_="authentication_error",
                code="invalid_api_key",
            )

    # -------------------------------------------------------------- error handlers

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, error: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return error.response(headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = list(error.errors())
        first = problems[0] if problems else {}
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        kind = first.get("type", "")
        if kind == "json_invalid" or (kind == "missing" and not loc):
            message = "the request body is not valid JSON"
            if kind == "json_invalid":
                message += f": {first.get('ctx', {}).get('error', first.get('msg', ''))}"
            return APIError(400, message, code="invalid_json").response()
        param = ".".join(loc) or None
        message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
        if len(problems) > 1:
            message += f" (and {len(problems) - 1} more problem(s))"
        return APIError(422, message, param=param, code=kind or None).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        type_, code = _STATUS_TYPES.get(error.status_code, ("invalid_request_error", None))
        return APIError(error.status_code, str(error.detail), type_, code=code).response(
            dict(error.headers) if error.headers else None
        )

    @app.exception_handler(Exception)
    async def _crash(_request: Request, error: Exception) -> JSONResponse:
        return APIError(500, "internal server error", "server_error").response()

    # -------------------------------------------------------------- helpers

    def settings_for(body: _Common) -> Sampling:
        default = styles["default"]
        return Sampling(
            temperature=default["temperature"] if body.temperature is None else body.temperature,
            top_k=default["top_k"] if body.top_k is None else body.top_k,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
        )

    def check_common(body: _Common, prompt: list[int]) -> None:
        if body.n not in (None, 1):
            raise APIError(400, "only n=1 is supported", param="n", code="unsupported_value")
        if len(prompt) >= lm.block_size:
            raise APIError(
                400,
                f"the prompt is {len(prompt)} tokens but the model's context is {lm.block_size} "
                "tokens including the reply: shorten the messages",
                param="messages" if isinstance(body, ChatCompletionRequest) else "prompt",
                code="context_length_exceeded",
            )

    def new_id(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:24]}"

    # -------------------------------------------------------------- routes

    @app.get("/health", tags=["service"])
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_id, "context": lm.block_size}

    v1 = [Depends(check_key)]

    @app.get("/v1/models", tags=["openai"], dependencies=v1, responses=ERRORS)
    async def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": model_id,
                    "object": "model",
                    "created": created,
                    "owned_by": "bardlet",
                    "context_length": lm.block_size,
                }
            ],
        }

    @app.get("/v1/styles", tags=["bardlet"], dependencies=v1, responses=ERRORS)
    async def list_styles() -> dict[str, Any]:
        """The chat style presets (system prompt + sampling) the terminal chat also offers."""
        return {"object": "list", "data": [{"id": k, **v} for k, v in styles.items()]}

    @app.post("/v1/chat/completions", tags=["openai"], dependencies=v1, responses=ERRORS)
    async def chat_completions(body: ChatCompletionRequest) -> Any:
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ]
        limit = body.max_completion_tokens or body.max_tokens or lm.block_size
        if body.truncation == "auto":
            reply_room = min(limit, lm.block_size // 4)
            try:
                _, prompt = fit_conversation(tokenizer, messages, None, lm.block_size, reply_room)
            except ValueError as error:
                raise APIError(
                    400, str(error), param="messages", code="context_length_exceeded"
                ) from None
        else:
            prompt = render_prompt(tokenizer, messages)
        check_common(body, prompt)
        stops = _stop_list(body.stop)
        gen = Generation(lm, prompt, limit, settings_for(body), stops, chat_stops)
        ident, now = new_id("chatcmpl"), int(time.time())
        if not body.stream:
            text = await run_in_threadpool(lambda: "".join(gen.pieces()))
            return {
                "id": ident,
                "object": "chat.completion",
                "created": now,
                "model": model_id,
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": gen.finish_reason,
                    }
                ],
                "usage": gen.usage(),
            }
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            data: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": now,
                "model": model_id,
                "system_fingerprint": None,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                data["usage"] = None
            return data

        async def events() -> AsyncIterator[str]:
            yield _sse(chunk({"role": "assistant", "content": ""}, None))
            async for piece in _pull(gen.pieces()):
                yield _sse(chunk({"content": piece}, None))
            yield _sse(chunk({}, gen.finish_reason))
            if include_usage:
                usage = chunk({}, None) | {"choices": [], "usage": gen.usage()}
                yield _sse(usage)
            yield _sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream", headers=_NO_CACHE)

    @app.post("/v1/completions", tags=["openai"], dependencies=v1, responses=ERRORS)
    async def completions(body: CompletionRequest) -> Any:
        if isinstance(body.prompt, list):
            if len(body.prompt) != 1:
                raise APIError(400, "give exactly one prompt", param="prompt")
            text_prompt = body.prompt[0]
        else:
            text_prompt = body.prompt
        prompt = [bos, *tokenizer.encode(text_prompt)]
        check_common(body, prompt)
        stops = _stop_list(body.stop)
        limit = body.max_tokens or 16  # OpenAI's default for this endpoint
        gen = Generation(lm, prompt, limit, settings_for(body), stops, chat_stops)
        ident, now = new_id("cmpl"), int(time.time())

        def result(text: str, finish: str | None) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "text_completion",
                "created": now,
                "model": model_id,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            }

        if not body.stream:
            text = await run_in_threadpool(lambda: "".join(gen.pieces()))
            return result(text, gen.finish_reason) | {"usage": gen.usage()}

        async def events() -> AsyncIterator[str]:
            async for piece in _pull(gen.pieces()):
                yield _sse(result(piece, None))
            yield _sse(result("", gen.finish_reason))
            if body.stream_options and body.stream_options.include_usage:
                yield _sse(result("", None) | {"choices": [], "usage": gen.usage()})
            yield _sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream", headers=_NO_CACHE)

    # -------------------------------------------------------------- the web page

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=_PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    app.add_middleware(BodyLimit, limit=max_body_bytes)
    return app


_NO_CACHE = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_PAGE_HEADERS = {
    # Only same-origin scripts, styles and requests: the page works offline and loads nothing
    # from anywhere else.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
}
