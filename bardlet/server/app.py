"""An OpenAI-compatible HTTP API and a chat page for an exported bardlet model.

One `OnnxLM` serves every request: ONNX Runtime sessions are thread-safe, and each request
keeps its own KV cache. Nothing that costs CPU runs on the event loop: tokenizing and fitting
a conversation, and generating, happen in the thread pool (a streamed reply pulls one text
piece at a time from a worker thread), so `/health` and other requests stay answered while a
long one is being prepared. The routes are plain functions at module level; what they share
(the model, its style presets, the API key) is the app's `state`.

Guards against clients: a body limit, a deadline for the request head and body (a client
that connects and trickles bytes is cut off), a Host check when serving on loopback (a web
page elsewhere cannot reach the API through DNS rebinding), and text that is not valid
Unicode (a lone surrogate) answered with a 400 that names the field.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from bardlet.data.chat_template import render_prompt
from bardlet.runtime.conversation import fit_conversation, load_styles
from bardlet.runtime.generation import Generation
from bardlet.runtime.sampling import Sampling, Style
from bardlet.runtime.session import OnnxLM

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 1_000_000
READ_TIMEOUT = 10.0  # seconds a client may take to send the request head, and then the body
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
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


class Guard:
    """ASGI middleware in front of every route: with `allowed_hosts`, refuse a Host header
    that is not one of them (400); refuse bodies above `limit` bytes (413) and bodies that
    take longer than READ_TIMEOUT to arrive (408), before anything parses them; and mark
    every response `X-Content-Type-Options: nosniff`."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        allowed_hosts: tuple[str, ...] = (),
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.app, self.limit, self.allowed_hosts = app, limit, allowed_hosts
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        if self.allowed_hosts:
            host = headers.get(b"host", b"").decode("latin-1")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in self.allowed_hosts:
                refused = APIError(
                    400,
                    f"Host {host!r} is not this server's: it serves on loopback, for "
                    f"{', '.join(self.allowed_hosts)} (use --host to serve other names)",
                    code="invalid_host",
                )
                await refused.response()(scope, receive, send)
                return
        too_large = APIError(
            413, f"the request body is larger than {self.limit} bytes", code="request_too_large"
        )
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        if declared > self.limit:
            await too_large.response()(scope, receive, send)
            return
        # Read the body here (bounded in size and time), then hand it to the app unchanged.
        chunks: list[bytes] = []
        size = 0
        deadline = asyncio.get_running_loop().time() + self.read_timeout
        while True:
            try:
                left = deadline - asyncio.get_running_loop().time()
                message = await asyncio.wait_for(receive(), timeout=max(left, 0.001))
            except TimeoutError:
                slow = APIError(
                    408,
                    f"the request body took longer than {READ_TIMEOUT:g} s to arrive",
                    code="request_timeout",
                )
                await slow.response({"Connection": "close"})(scope, receive, send)
                return
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


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for the request head. uvicorn waits for
    headers forever, so clients that connect and send a byte now and then (a "slowloris")
    would pile up until the server runs out of sockets; here each gets READ_TIMEOUT seconds
    to finish its head, and is disconnected otherwise. (Idle keep-alive connections have
    uvicorn's own timeout.)"""

    read_timeout = READ_TIMEOUT  # `bardlet serve --read-timeout` makes a subclass

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_deadline: asyncio.TimerHandle | None = self.loop.call_later(
            self.read_timeout, self.too_slow
        )

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None and self.head_deadline is not None:  # the head is complete
            self.head_deadline.cancel()
            self.head_deadline = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
        super().connection_lost(exc)

    def too_slow(self) -> None:
        if self.cycle is None and not self.transport.is_closing():
            self.transport.close()


# ---------------------------------------------------------------------------- request bodies


def _valid_text(text: str) -> str:
    """Text the tokenizer can encode: JSON may carry lone surrogates ("\ud800"), which are
    not Unicode text and have no UTF-8 bytes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = text[error.start]
        raise PydanticCustomError(
            "invalid_text",
            "not valid Unicode text: a lone surrogate (U+{code:04X}) at character {at}",
            {"code": ord(bad), "at": error.start},
        ) from None
    return text


Text = Annotated[str, AfterValidator(_valid_text)]


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]
    name: Text | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")  # unknown OpenAI options are accepted, unused

    model: Text | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, description="bardlet extension: keep the k best tokens")
    max_tokens: int | None = Field(None, ge=1)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    n: int | None = Field(None, ge=1, description="only 1 is supported")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: Text | None = None


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
    prompt: Text | list[Text] = ""


# ---------------------------------------------------------------------------- helpers


@dataclass
class ServerState:
    """What every route shares: `request.app.state.bardlet`."""

    lm: OnnxLM
    styles: dict[str, Style]
    model_id: str
    api_key: bytes | None
    created: int

    @property
    def stop_ids(self) -> list[int]:
        return sorted(self.lm.tokenizer.special_tokens.values())  # any marker ends a reply


def state(request: Request) -> ServerState:
    served: ServerState = request.app.state.bardlet
    return served


async def check_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    expected = state(request).api_key
    if expected is None:
        return
    given = credentials.credentials.encode() if credentials else b""
    if not hmac.compare_digest(given, expected):
        raise APIError(
            401,
            "missing or incorrect API key: send `Authorization: Bearer <key>`",
            type_="authentication_error",
            code="invalid_api_key",
        )


def settings_for(served: ServerState, body: _Common) -> Sampling:
    """The default style's sampling, with what the request sets (OpenAI's names)."""
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    given = {
        "temperature": body.temperature,
        "top_k": body.top_k,
        "top_p": body.top_p,
        "seed": body.seed,
        "stop": tuple(stops) or None,
    }
    updates = {key: value for key, value in given.items() if value is not None}
    try:
        return Sampling(**{**served.styles["default"].sampling().model_dump(), **updates})
    except ValidationError as error:
        first = error.errors()[0]
        param = str(first["loc"][0]) if first["loc"] else None
        raise APIError(400, f"{param}: {first['msg']}", param=param) from None


def check_common(served: ServerState, body: _Common, prompt: list[int]) -> None:
    if body.n not in (None, 1):
        raise APIError(400, "only n=1 is supported", param="n", code="unsupported_value")
    block = served.lm.block_size
    if len(prompt) >= block:
        raise APIError(
            400,
            f"the prompt is {len(prompt)} tokens but the model's context is {block} "
            "tokens including the reply: shorten the messages",
            param="messages" if isinstance(body, ChatCompletionRequest) else "prompt",
            code="context_length_exceeded",
        )


def chat_prompt(served: ServerState, body: ChatCompletionRequest, limit: int) -> list[int]:
    """The prompt ids of a chat request (in a worker thread: a long history takes time)."""
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in body.messages
    ]
    lm = served.lm
    if body.truncation == "disabled":
        return render_prompt(lm.tokenizer, messages)
    reply_room = min(limit, lm.block_size // 4)
    try:
        return fit_conversation(lm.tokenizer, messages, None, lm.block_size, reply_room)[1]
    except ValueError as error:
        raise APIError(400, str(error), param="messages", code="context_length_exceeded") from None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


async def _pull(pieces: Generator[str, None, None]) -> AsyncIterator[str]:
    """Text pieces produced in a worker thread, one thread hop per piece. When the client
    goes away the consumer is cancelled between pieces and generation stops there."""
    try:
        while True:
            piece = await run_in_threadpool(next, pieces, None)
            if piece is None:
                return
            yield piece
    finally:
        pieces.close()


def _sse(data: dict[str, Any] | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n"


# ---------------------------------------------------------------------------- routes

router = APIRouter()
V1 = [Depends(check_key)]


@router.get("/health", tags=["service"])
async def health(request: Request) -> dict[str, Any]:
    served = state(request)
    return {"status": "ok", "model": served.model_id, "context": served.lm.block_size}


@router.get("/v1/models", tags=["openai"], dependencies=V1, responses=ERRORS)
async def list_models(request: Request) -> dict[str, Any]:
    served = state(request)
    model = {
        "id": served.model_id,
        "object": "model",
        "created": served.created,
        "owned_by": "bardlet",
        "context_length": served.lm.block_size,
    }
    return {"object": "list", "data": [model]}


@router.get("/v1/styles", tags=["bardlet"], dependencies=V1, responses=ERRORS)
async def list_styles(request: Request) -> dict[str, Any]:
    """The chat style presets (system prompt + sampling) the terminal chat also offers."""
    styles = state(request).styles
    return {"object": "list", "data": [{"id": k, **v.model_dump()} for k, v in styles.items()]}


@router.post("/v1/chat/completions", tags=["openai"], dependencies=V1, responses=ERRORS)
async def chat_completions(request: Request, body: ChatCompletionRequest) -> Any:
    served = state(request)
    limit = body.max_completion_tokens or body.max_tokens or served.lm.block_size
    prompt = await run_in_threadpool(chat_prompt, served, body, limit)
    check_common(served, body, prompt)
    gen = Generation(served.lm, prompt, limit, settings_for(served, body), served.stop_ids)
    ident, now = new_id("chatcmpl"), int(time.time())
    if not body.stream:
        text = await run_in_threadpool(gen.text)
        return {
            "id": ident,
            "object": "chat.completion",
            "created": now,
            "model": served.model_id,
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
            "model": served.model_id,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
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
            yield _sse(chunk({}, None) | {"choices": [], "usage": gen.usage()})
        yield _sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream", headers=_NO_CACHE)


@router.post("/v1/completions", tags=["openai"], dependencies=V1, responses=ERRORS)
async def completions(request: Request, body: CompletionRequest) -> Any:
    served = state(request)
    if isinstance(body.prompt, list):
        if len(body.prompt) != 1:
            raise APIError(400, "give exactly one prompt", param="prompt")
        text_prompt = body.prompt[0]
    else:
        text_prompt = body.prompt
    tokenizer = served.lm.tokenizer
    encoded = await run_in_threadpool(tokenizer.encode, text_prompt)
    prompt = [tokenizer.special_id("<|bos|>"), *encoded]
    check_common(served, body, prompt)
    limit = body.max_tokens or 16  # OpenAI's default for this endpoint
    gen = Generation(served.lm, prompt, limit, settings_for(served, body), served.stop_ids)
    ident, now = new_id("cmpl"), int(time.time())

    def result(text: str, finish: str | None) -> dict[str, Any]:
        return {
            "id": ident,
            "object": "text_completion",
            "created": now,
            "model": served.model_id,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        }

    if not body.stream:
        text = await run_in_threadpool(gen.text)
        return result(text, gen.finish_reason) | {"usage": gen.usage()}

    async def events() -> AsyncIterator[str]:
        async for piece in _pull(gen.pieces()):
            yield _sse(result(piece, None))
        yield _sse(result("", gen.finish_reason))
        if body.stream_options and body.stream_options.include_usage:
            yield _sse(result("", None) | {"choices": [], "usage": gen.usage()})
        yield _sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream", headers=_NO_CACHE)


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=_PAGE_HEADERS)


# ---------------------------------------------------------------------------- errors as JSON


async def _api_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, APIError)
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return error.response(headers)


async def _invalid(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = list(error.errors())
    first = problems[0] if problems else {}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    kind = first.get("type", "")
    if kind == "json_invalid" or (kind == "missing" and not loc):
        message = "the request body is not valid JSON"
        if kind == "json_invalid":
            message += f": {first.get('ctx', {}).get('error', first.get('msg', ''))}"
        return APIError(400, message, code="invalid_json").response()
    # A union (str | list) reports each branch; the text check is the one that matters.
    text_problem = next((p for p in problems if p.get("type") == "invalid_text"), None)
    if text_problem is not None:
        where = ".".join(str(part) for part in text_problem["loc"] if part != "body")
        field = where.removesuffix(".str").replace(".function-after[_valid_text(), str]", "")
        return APIError(
            400, f"{field}: {text_problem['msg']}", param=field, code="invalid_text"
        ).response()
    param = ".".join(loc) or None
    message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem(s))"
    return APIError(422, message, param=param, code=kind or None).response()


async def _http(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    type_, code = _STATUS_TYPES.get(error.status_code, ("invalid_request_error", None))
    return APIError(error.status_code, str(error.detail), type_, code=code).response(
        dict(error.headers) if error.headers else None
    )


async def _crash(_request: Request, _error: Exception) -> JSONResponse:
    return APIError(500, "internal server error", "server_error").response()


# ---------------------------------------------------------------------------- the app


def create_app(
    lm: OnnxLM,
    api_key: str | None = None,
    *,
    model_id: str = "bardlet",
    max_body_bytes: int = MAX_BODY_BYTES,
    styles: dict[str, Style] | None = None,
    allowed_hosts: tuple[str, ...] = (),
    read_timeout: float = READ_TIMEOUT,
) -> FastAPI:
    """The FastAPI app: /v1 (OpenAI-compatible), /health, /openapi.json and the page at /.
    `allowed_hosts` (host names without port): refuse requests whose Host is another;
    `read_timeout`: seconds a request body may take to arrive."""
    app = FastAPI(
        title="bardlet",
        version="1",
        description="OpenAI-compatible API for a small GPT trained from scratch with bardlet.",
        docs_url=None,  # Swagger UI loads from a CDN; the schema is at /openapi.json
        redoc_url=None,
    )
    app.state.bardlet = ServerState(
        lm=lm,
        styles=styles if styles is not None else load_styles(lm.path),
        model_id=model_id,
        api_key=api_key.encode() if api_key else None,
        created=int(time.time()),
    )
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _crash)
    app.add_middleware(
        Guard, limit=max_body_bytes, allowed_hosts=allowed_hosts, read_timeout=read_timeout
    )
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
