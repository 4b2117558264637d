"""An OpenAI-compatible HTTP API and a chat page for an exported bardlet model.

The routes are module-level functions over the app's `state`: one `OnnxLM` and its `Batcher`,
the one decode loop every reply joins (continuous batching: bardlet/runtime/batching.py).
Past its queue a request gets 429 with Retry-After; a client that goes away leaves the batch
at the next token. CPU work (tokenizing, fitting) runs in the thread pool, so `/health` and
other requests stay answered during a long one.
Guards against clients: a body limit, deadlines for the request head and body, a Host check
on loopback (DNS rebinding), and a 400 naming the field for text that is not valid Unicode.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
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
from bardlet.defaults import READ_TIMEOUT
from bardlet.retrieval.index import Index, Passage
from bardlet.retrieval.memory import Memory
from bardlet.runtime.batching import Batcher, Busy
from bardlet.runtime.beams import MAX_BEAMS, beams
from bardlet.runtime.conversation import (
    fit_conversation,
    load_styles,
    pick_recalled,
    pick_sources,
    reply,
    system_with,
    with_settings,
)
from bardlet.runtime.generation import Generation, TokenSource
from bardlet.runtime.sampling import Style
from bardlet.runtime.session import OnnxLM

STATIC = Path(__file__).parent / "static"
MODEL_ID = "bardlet"
MAX_BODY_BYTES = 1_000_000
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
_bearer = HTTPBearer(auto_error=False, description="The server's --api-key, if it has one")
NO_CACHE = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
PAGE_HEADERS = {
    # Same-origin scripts, styles and requests only: the page works offline, loads nothing else.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
}

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
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = {"message": message, "type": type_, "param": param, "code": code}
        self.headers = headers

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(
            {"error": self.error}, status_code=self.status, headers=headers or self.headers
        )


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
        429: "Every batch slot and queue place is taken: retry after Retry-After seconds",
    }.items()
}


class Guard:
    """ASGI middleware in front of every route. Refuses a Host not in `allowed_hosts` (when
    given; 400), and a body larger than MAX_BODY_BYTES (413) or slower than `read_timeout` to
    arrive (408) before anything parses it; marks every response `nosniff`."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...], read_timeout: float) -> None:
        self.app, self.allowed_hosts, self.read_timeout = app, allowed_hosts, read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body = await self.read(scope, receive)
        if isinstance(body, APIError):
            closing = {"Connection": "close"} if body.status == 408 else None
            return await body.response(closing)(scope, receive, send)
        first = iter([{"type": "http.request", "body": body, "more_body": False}])

        async def replay() -> Message:  # the body read here, then whatever comes next
            return next(first, None) or await receive()

        async def send_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, replay, send_nosniff)

    async def read(self, scope: Scope, receive: Receive) -> bytes | APIError:
        """The whole body, bounded in size and time; or the error that refuses the request."""
        headers = dict(scope.get("headers", []))
        host = headers.get(b"host", b"").decode("latin-1")
        name = host if host.endswith("]") else host.rsplit(":", 1)[0]
        if self.allowed_hosts and name not in self.allowed_hosts:
            return APIError(
                400,
                f"Host {host!r} is not this server's: it serves on loopback, for "
                f"{', '.join(self.allowed_hosts)} (use --host to serve other names)",
                code="invalid_host",
            )
        too_large = APIError(
            413, f"the request body is larger than {MAX_BODY_BYTES} bytes", code="request_too_large"
        )
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return too_large
        body = bytearray()
        try:
            async with asyncio.timeout(self.read_timeout):
                while (message := await receive())["type"] == "http.request":  # or a disconnect
                    body += message.get("body", b"")
                    if len(body) > MAX_BODY_BYTES:
                        return too_large
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            return APIError(
                408,
                f"the request body took longer than {self.read_timeout:g} s to arrive",
                code="request_timeout",
            )
        return bytes(body)


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for the request head. uvicorn waits for
    headers forever, so slow clients (a "slowloris") would pile up until sockets run out;
    here a connection that has not sent its head in `read_timeout` seconds is closed."""

    read_timeout = READ_TIMEOUT  # `bardlet serve --read-timeout` makes a subclass

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_deadline = self.loop.call_later(self.read_timeout, self.too_slow)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Keep-alive: the next request's head gets the same deadline. (uvicorn's own
        # keep-alive timer stops at the first byte, so it cannot stop a trickle.)
        self.head_deadline.cancel()
        self.head_deadline = self.loop.call_later(self.read_timeout, self.too_slow)

    def waiting_for_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.waiting_for_head():  # cancelling twice does nothing
            self.head_deadline.cancel()

    def connection_lost(self, exc: Exception | None) -> None:
        self.head_deadline.cancel()
        super().connection_lost(exc)

    def too_slow(self) -> None:
        if self.waiting_for_head() and not self.transport.is_closing():
            self.transport.close()


# ---------------------------------------------------------------------------- request bodies


def _valid_text(text: str) -> str:
    """JSON may carry lone surrogates ("\\ud800"): not Unicode text, no UTF-8 bytes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise PydanticCustomError(
            "invalid_text",
            "not valid Unicode text: a lone surrogate (U+{code:04X}) at character {at}",
            {"code": ord(text[error.start]), "at": error.start},
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
    # Accepted so that a request using them is refused by name (400), not silently ignored.
    tools: list[Any] | None = Field(None, description="not supported: a 400 if not empty")
    response_format: dict[str, Any] | None = Field(None, description='only {"type": "text"}')
    num_beams: int | None = Field(
        None,
        ge=1,
        le=MAX_BEAMS,
        description=(
            "bardlet extension: beam search with this many beams (deterministic: temperature, "
            "top_k, top_p and seed do not apply; the reply comes when the search ends)"
        ),
    )
    length_penalty: float | None = Field(
        None,
        ge=-10.0,
        le=10.0,
        description=(
            "bardlet extension, with num_beams: a hypothesis scores log-prob / length ** "
            "length_penalty (default 1; 0 favours short replies, above 1 long ones)"
        ),
    )


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_completion_tokens: int | None = Field(None, ge=1)
    truncation: Literal["auto", "disabled"] = Field(
        "disabled",
        description=(
            "bardlet extension, named as in OpenAI's Responses API: 'auto' drops the oldest "
            "turns (never system messages or the newest message) so the prompt leaves room "
            "for the reply; 'disabled' refuses a prompt that does not fit"
        ),
    )
    conversation_id: Text | None = Field(
        None,
        max_length=128,
        description=(
            "bardlet extension, with `bardlet serve --memory FILE`: the turns of this "
            "conversation are stored, and stored turns that match a new message (of this "
            "conversation only) come back into the prompt; ignored without --memory"
        ),
    )


class CompletionRequest(_Common):
    prompt: Text | list[Text] = ""
    logprobs: int | None = Field(None, description="not supported here (chat completions have it)")


# ---------------------------------------------------------------------------- state and replies


@dataclass
class ServerState:
    """What every route shares: `request.app.state.bardlet`."""

    lm: OnnxLM
    batcher: Batcher
    styles: dict[str, Style]
    api_key: bytes | None
    created: int
    docs: Index | None = None  # serve --docs: passages matching the last user message
    memory: Memory | None = None  # serve --memory: turns per conversation_id


def state(request: Request) -> ServerState:
    served: ServerState = request.app.state.bardlet
    return served


async def check_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    expected = state(request).api_key
    given = credentials.credentials.encode() if credentials else b""
    if expected is not None and not hmac.compare_digest(given, expected):
        raise APIError(
            401,
            "missing or incorrect API key: send `Authorization: Bearer <key>`",
            type_="authentication_error",
            code="invalid_api_key",
        )


def chat_prompt(
    served: ServerState, body: ChatCompletionRequest, limit: int
) -> tuple[list[int], list[Passage]]:
    """The prompt ids of a chat request, and the passages put into it (with --docs: those
    matching the last user message, after the system message). In a worker thread: a long
    history takes time."""
    messages = []
    for m in body.messages:
        text = m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)
        messages.append({"role": "system" if m.role == "developer" else m.role, "content": text})
    lm = served.lm
    sources: list[Passage] = []
    asked = [m["content"] for m in messages if m["role"] == "user"]
    if served.docs is not None and asked:
        sources = pick_sources(lm.tokenizer, served.docs.search(asked[-1], k=4), lm.block_size)
    recalled = []
    if served.memory is not None and body.conversation_id and asked:
        in_request = {(m["role"], m["content"]) for m in messages}
        found = served.memory.recall(asked[-1], 4, in_request, only_session=body.conversation_id)
        recalled = pick_recalled(lm.tokenizer, found, lm.block_size)
    if sources or recalled:  # after the system message, or as one
        given = messages.pop(0)["content"] if messages[0]["role"] == "system" else None
        messages.insert(
            0, {"role": "system", "content": system_with(given, sources, recalled) or ""}
        )
    if body.truncation == "disabled":
        return render_prompt(lm.tokenizer, messages), sources
    reply_room = min(limit, lm.block_size // 4)
    try:
        return fit_conversation(lm.tokenizer, messages, None, lm.block_size, reply_room)[1], sources
    except ValueError as error:
        raise APIError(400, str(error), param="messages", code="context_length_exceeded") from None


def coalesced(gen: Generation) -> Generator[str, None, None]:
    """The reply's pieces, each joined with those already made after it. A stream's event
    then carries every token made since the last one: under load, fewer and larger events
    instead of a backlog of one event per token. If making the reply fails, the text made
    before the failure comes first, then the error."""
    pieces, text = gen.pieces(), ""
    try:
        for piece in pieces:
            text += piece
            if not gen.ready():
                yield text
                text = ""
    except Exception:
        if text:
            yield text
        raise
    finally:
        pieces.close()
    if text:
        yield text


def cited(sources: list[Passage]) -> list[dict[str, Any]]:
    """The `sources` extension of a reply: what it was given to read, numbered as in the
    prompt ([1], [2], ...), with the file and the lines (rows, pages) to cite."""
    return [
        {"index": i, "place": p.place(), "path": p.path, "unit": p.unit, "start": p.start,
         "end": p.end, "text": p.text}
        for i, p in enumerate(sources, 1)
    ]  # fmt: skip


def refuse_unsupported(body: _Common) -> None:
    """A 400 naming the parameter a request uses that bardlet does not do, as OpenAI answers
    for a model without the feature: ignoring it would answer a different question."""
    refusals = {
        "n": (body.n not in (None, 1), "only n=1 is supported"),
        "tools": (bool(body.tools), "this model cannot call tools"),
        "response_format": (
            body.response_format not in (None, {"type": "text"}),
            'only {"type": "text"} is supported: this model cannot promise JSON',
        ),
        "logprobs": (
            isinstance(body, CompletionRequest) and body.logprobs is not None,
            "logprobs are supported on /v1/chat/completions, not here",
        ),
        "top_logprobs": (
            isinstance(body, ChatCompletionRequest)
            and body.top_logprobs is not None
            and not body.logprobs,
            "top_logprobs needs logprobs: true",
        ),
    }
    for param, (refused, why) in refusals.items():
        if refused:
            raise APIError(400, why, param=param, code="unsupported_parameter")


def check_model(name: str | None) -> None:
    if name not in (None, MODEL_ID):
        raise APIError(
            404,
            f"The model `{name}` does not exist: this server has `{MODEL_ID}` (GET /v1/models)",
            type_="invalid_request_error",
            param="model",
            code="model_not_found",
        )


async def answer(
    request: Request,
    served: ServerState,
    body: _Common,
    prompt: list[int],
    limit: int,
    sources: list[Passage] | None = None,
) -> Any:
    """Generate the reply to `prompt` and answer in OpenAI's shape for a chat or a text
    completion: one JSON object, or (`stream`) server-sent events of its pieces. `sources`
    (serve --docs) go on the message, and on the last chunk's delta."""
    chat = isinstance(body, ChatCompletionRequest)
    if len(prompt) >= served.lm.block_size:
        raise APIError(
            400,
            f"the prompt is {len(prompt)} tokens but the model's context is "
            f"{served.lm.block_size} tokens including the reply: shorten the messages",
            param="messages" if chat else "prompt",
            code="context_length_exceeded",
        )
    # What the request leaves out comes from the default style, as in `bardlet chat`.
    stops = [body.stop] if isinstance(body.stop, str) else body.stop or []
    given = {"temperature": body.temperature, "top_k": body.top_k, "top_p": body.top_p}
    try:
        style = with_settings(
            served.styles["default"], **given, seed=body.seed, stop=tuple(stops) or None
        )
    except ValidationError as error:
        first = error.errors()[0]
        param = str(first["loc"][0]) if first["loc"] else None
        raise APIError(400, f"{param}: {first['msg']}", param=param) from None
    wants_logprobs = isinstance(body, ChatCompletionRequest) and bool(body.logprobs)
    top = (body.top_logprobs or 0) if isinstance(body, ChatCompletionRequest) else 0
    source: TokenSource = served.batcher.stream  # the shared decode loop
    if body.num_beams and body.num_beams > 1:  # beams run on their own, on the loop's rows
        penalty = 1.0 if body.length_penalty is None else body.length_penalty  # 0 is a value
        source = beams(served.lm, body.num_beams, penalty, served.batcher)
    try:
        gen = reply(
            served.lm, prompt, limit, style.sampling(), top if wants_logprobs else None, source
        )
    except Busy as busy:
        retry = {"Retry-After": str(busy.retry_after)}
        raise APIError(
            429, str(busy), "rate_limit_error", code="server_busy", headers=retry
        ) from None

    def remember(said: str) -> None:  # serve --memory: the newest message and its reply
        conversation = getattr(body, "conversation_id", None)
        if served.memory is None or not conversation or not isinstance(body, ChatCompletionRequest):
            return
        last = body.messages[-1].content
        text = last if isinstance(last, str) else "".join(part.text for part in last)
        served.memory.add(body.messages[-1].role, text, session=conversation)
        served.memory.add("assistant", said, session=conversation)

    head: dict[str, Any] = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": MODEL_ID,
    } | ({"system_fingerprint": None} if chat else {})

    extension = {"sources": cited(sources or [])} if served.docs is not None and chat else {}

    def choice(text: str | None, finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
        if not chat:
            said: dict[str, Any] = {"text": text or ""}
        elif body.stream:  # a chunk: its new text; in the last one, only the sources if any
            said = {
                "delta": ({} if finish is None else extension)
                if text is None
                else {"content": text}
            }
        else:
            said = {"message": {"role": "assistant", "content": text, **extension}}
        return {"index": 0, **said, "logprobs": logprobs, "finish_reason": finish}

    def logprobs_since(first: int) -> dict[str, Any] | None:
        return {"content": gen.logprobs(first)} if wants_logprobs else None

    if not body.stream:
        # Wait for the reply while watching the connection: a client that gives up frees
        # its batch slot at the next token.
        making = asyncio.ensure_future(run_in_threadpool(gen.text))
        while not (await asyncio.wait({making}, timeout=0.25))[0]:
            if await request.is_disconnected():
                gen.cancel()
        text = making.result()
        await run_in_threadpool(remember, text)
        done = choice(text, gen.finish_reason, logprobs_since(0))
        return head | {"choices": [done], "usage": gen.usage()}
    if chat:
        head["object"] = "chat.completion.chunk"
    # With include_usage every chunk has "usage": null, and one more chunk before [DONE] has it.
    usage = {"usage": None} if body.stream_options and body.stream_options.include_usage else {}

    def event(*choices: dict[str, Any], **extra: Any) -> str:
        data = head | {"choices": list(choices)} | usage | extra
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    async def events() -> AsyncIterator[str]:
        if chat:  # the first chunk says who speaks
            yield event(choice(None) | {"delta": {"role": "assistant", "content": ""}})
        # Each piece is waited for in a worker thread. A client that goes away cancels the
        # wait at once (the thread is left to end by itself): its request leaves the queue,
        # or its row the batch at the next token.
        pieces, said, sent = coalesced(gen), [], 0
        try:
            while (
                piece := await anyio.to_thread.run_sync(next, pieces, None, abandon_on_cancel=True)
            ) is not None:
                said.append(piece)
                # A chunk's log-probs: the tokens drawn since the chunk before.
                yield event(choice(piece, logprobs=logprobs_since(sent)))
                sent = len(gen.tokens)
        except Exception as error:  # the decode loop failed mid-reply: the headers are sent,
            # so the stream says so (the openai client raises it) instead of just stopping
            yield event(error={"message": f"generation failed: {error}", "type": "server_error"})
            yield "data: [DONE]\n\n"
            return
        finally:
            gen.cancel()
            with contextlib.suppress(ValueError):  # still running in its thread: it ends there
                pieces.close()
            # What was sent, also to a client that left; in a thread: a database write
            # must not hold up the event loop (and cannot be awaited once cancelled).
            remembered = asyncio.get_running_loop().run_in_executor(None, remember, "".join(said))
        await remembered  # before the end: the conversation's next message may recall it
        yield event(choice(None, gen.finish_reason, logprobs_since(sent)))
        if usage:
            yield event(usage=gen.usage())
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers=NO_CACHE)


# ---------------------------------------------------------------------------- routes

router = APIRouter()
V1 = [Depends(check_key)]


@router.get("/health", tags=["service"])
async def health(request: Request) -> dict[str, Any]:
    served = state(request)
    return {
        "status": "ok",
        "model": MODEL_ID,
        "context": served.lm.block_size,
    } | served.batcher.load()


@router.get("/v1/models", tags=["openai"], dependencies=V1, responses=ERRORS)
async def list_models(request: Request) -> dict[str, Any]:
    served = state(request)
    model = {"id": MODEL_ID, "object": "model", "created": served.created, "owned_by": "bardlet"}
    return {"object": "list", "data": [model | {"context_length": served.lm.block_size}]}


@router.get("/v1/models/{model}", tags=["openai"], dependencies=V1, responses=ERRORS)
async def get_model(request: Request, model: str) -> dict[str, Any]:
    check_model(model)
    listed: dict[str, Any] = (await list_models(request))["data"][0]
    return listed


@router.get("/v1/styles", tags=["bardlet"], dependencies=V1, responses=ERRORS)
async def list_styles(request: Request) -> dict[str, Any]:
    """The chat style presets (system prompt + sampling) the terminal chat also offers."""
    styles = state(request).styles
    return {"object": "list", "data": [{"id": k, **v.model_dump()} for k, v in styles.items()]}


@router.post("/v1/chat/completions", tags=["openai"], dependencies=V1, responses=ERRORS)
async def chat_completions(request: Request, body: ChatCompletionRequest) -> Any:
    check_model(body.model)
    refuse_unsupported(body)  # before the prompt is built: a refusal costs nothing
    served = state(request)
    limit = body.max_completion_tokens or body.max_tokens or served.lm.block_size
    prompt, sources = await run_in_threadpool(chat_prompt, served, body, limit)
    return await answer(request, served, body, prompt, limit, sources)


@router.post("/v1/completions", tags=["openai"], dependencies=V1, responses=ERRORS)
async def completions(request: Request, body: CompletionRequest) -> Any:
    check_model(body.model)
    refuse_unsupported(body)
    if isinstance(body.prompt, list) and len(body.prompt) != 1:
        raise APIError(400, "give exactly one prompt", param="prompt")
    text = body.prompt[0] if isinstance(body.prompt, list) else body.prompt
    served = state(request)
    tokenizer = served.lm.tokenizer
    prompt = [tokenizer.special_id("<|bos|>"), *await run_in_threadpool(tokenizer.encode, text)]
    return await answer(
        request, served, body, prompt, body.max_tokens or 16
    )  # OpenAI's default: 16


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=PAGE_HEADERS)


# ---------------------------------------------------------------------------- errors as JSON


async def _invalid(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = list(error.errors())
    first = problems[0] if problems else {}
    param = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        reason = first.get("ctx", {}).get("error", first.get("msg", ""))
        message = f"the request body is not valid JSON: {reason}"
        return APIError(400, message, code="invalid_json").response()
    if kind == "missing" and not param:  # no body at all
        return APIError(400, "the request body is not valid JSON", code="invalid_json").response()
    # A union (str | list) reports each branch; the text check is the one that matters.
    for problem in problems:
        if problem.get("type") == "invalid_text":
            where = ".".join(str(part) for part in problem["loc"] if part != "body")
            field = where.removesuffix(".str").replace(".function-after[_valid_text(), str]", "")
            message = f"{field}: {problem['msg']}"
            return APIError(400, message, param=field, code="invalid_text").response()
    message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem(s))"
    return APIError(422, message, param=param, code=kind or None).response()


async def _as_json(_request: Request, error: Exception) -> JSONResponse:
    """Every other error in OpenAI's shape too: ours, routing's and static files', a crash."""
    if isinstance(error, StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        refused = APIError(error.status_code, str(error.detail), code=code)
        return refused.response(dict(error.headers) if error.headers else None)
    if not isinstance(error, APIError):
        error = APIError(500, "internal server error", "server_error")
    return error.response({"WWW-Authenticate": "Bearer"} if error.status == 401 else None)


# ---------------------------------------------------------------------------- the app


def create_app(
    lm: OnnxLM,
    api_key: str | None = None,
    *,
    allowed_hosts: tuple[str, ...] = (),
    read_timeout: float = READ_TIMEOUT,
    docs: Index | None = None,
    memory: Memory | None = None,
    max_batch: int = 32,
    max_waiting: int = 64,
) -> FastAPI:
    """The FastAPI app: /v1 (OpenAI-compatible), /health, /openapi.json and the page at /.
    `allowed_hosts`: the only Host names answered (without port), if given. `docs`: an index
    whose passages go into chat prompts and come back as each reply's `sources`. `memory`:
    where requests with a `conversation_id` keep their turns. `max_batch` replies decode
    together; `max_waiting` more may queue, and past that a request gets 429."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # A reply waits in a worker thread (queued or decoding) for its whole life: anyio's
        # 40 threads would queue requests the batcher admits, where they get no 429.
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, max_batch + max_waiting + 16)
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="bardlet",
        version="1",
        description="OpenAI-compatible API for a small GPT trained from scratch with bardlet.",
        docs_url=None,  # Swagger UI loads from a CDN; the schema is at /openapi.json
        redoc_url=None,
    )
    key = api_key.encode() if api_key else None
    styles = load_styles(lm.path)
    batcher = Batcher(lm, max_batch, max_waiting)
    app.state.bardlet = ServerState(lm, batcher, styles, key, int(time.time()), docs, memory)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(RequestValidationError, _invalid)
    for kind in (APIError, StarletteHTTPException, Exception):
        app.add_exception_handler(kind, _as_json)
    app.add_middleware(Guard, allowed_hosts=allowed_hosts, read_timeout=read_timeout)
    return app
