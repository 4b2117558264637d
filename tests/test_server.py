"""`bardlet serve` end to end: the real server in a subprocess, the official `openai` client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from conftest_server import REPO, STYLES, Server, build_tiny_model, child_env
from openai import OpenAI

from bardlet.chat import Chat
from bardlet.data.chat_template import render_prompt
from bardlet.runtime.generation import Generation
from bardlet.runtime.sampling import Sampling
from bardlet.runtime.session import OnnxLM

KEY = "s3cret-key"
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, small_tokenizer) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("served"), small_tokenizer)


@pytest.fixture(scope="module")
def servers(model_dir):
    """Two servers started together: an open one, and one that needs an API key (from env)."""
    open_server = Server(model_dir / "model.onnx")
    keyed = Server(model_dir, env=child_env(BARDLET_API_KEY=KEY))
    try:
        open_server.wait_healthy()
        keyed.wait_healthy()
        yield open_server, keyed
    finally:
        open_server.stop()
        keyed.stop()


@pytest.fixture(scope="module")
def server(servers) -> Server:
    return servers[0]


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def lm(model_dir) -> OnnxLM:
    return OnnxLM(model_dir)


def expected_reply(lm: OnnxLM, messages, max_tokens: int, settings: Sampling) -> str:
    """What the model says, computed in this process with the runtime alone."""
    prompt = render_prompt(lm.tokenizer, messages)
    stop_ids = sorted(lm.tokenizer.special_tokens.values())
    return Generation(lm, prompt, max_tokens, settings, stop_ids).text()


HELLO = [{"role": "user", "content": "Who art thou, and whence comest thou?"}]


def test_models_list_and_health(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == ["bardlet"]
    health = httpx.get(server.url + "/health", timeout=TIMEOUT).json()
    assert health["status"] == "ok" and health["context"] == 64


def test_chat_completion_is_the_models_reply(client, lm):
    done = client.chat.completions.create(
        model="bardlet", messages=HELLO, temperature=0, max_tokens=20
    )
    want = expected_reply(lm, HELLO, 20, Sampling(temperature=0))
    assert want, "the tiny model should say something to this prompt"
    assert done.choices[0].message.content == want
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].finish_reason in ("stop", "length")
    prompt_tokens = len(render_prompt(lm.tokenizer, HELLO))
    assert done.usage is not None and done.usage.prompt_tokens == prompt_tokens
    assert 0 < done.usage.completion_tokens <= 20
    assert done.object == "chat.completion" and done.id.startswith("chatcmpl-")


def test_seeded_sampling_is_reproducible_and_streams_the_same_text(client, lm):
    args = dict(model="bardlet", messages=HELLO, temperature=1.0, top_p=0.9, max_tokens=24)
    extra = {"top_k": 0}
    first = client.chat.completions.create(seed=11, extra_body=extra, **args)
    want = expected_reply(lm, HELLO, 24, Sampling(temperature=1.0, top_k=0, top_p=0.9, seed=11))
    assert first.choices[0].message.content == want
    other = client.chat.completions.create(seed=12, extra_body=extra, **args)
    assert other.choices[0].message.content != want

    pieces, finishes, roles = [], [], []
    stream = client.chat.completions.create(seed=11, extra_body=extra, stream=True, **args)
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        delta = chunk.choices[0].delta
        roles.append(delta.role)
        pieces.append(delta.content or "")
        finishes.append(chunk.choices[0].finish_reason)
    assert "".join(pieces) == want
    assert roles[0] == "assistant"
    assert finishes[-1] == first.choices[0].finish_reason and set(finishes[:-1]) == {None}
    assert len([p for p in pieces if p]) > 1, "the reply must arrive in several pieces"


def test_stream_is_server_sent_events_ending_in_done(server):
    body = {"messages": HELLO, "stream": True, "max_tokens": 8, "seed": 1}
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", json=body, timeout=TIMEOUT
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    for event in events[:-1]:
        json.loads(event[len("data: ") :])


def test_stop_sequences_cut_the_reply(client, lm):
    args = dict(model="bardlet", messages=HELLO, temperature=0, max_tokens=40)
    full = expected_reply(lm, HELLO, 40, Sampling(temperature=0))
    assert len(full) >= 12, full
    stop = full[6:9]
    cut = full.index(stop)
    done = client.chat.completions.create(stop=[stop, "\x00never"], **args)
    assert done.choices[0].message.content == full[:cut]
    assert done.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(stop=stop, stream=True, **args)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == full[:cut]


def test_completions_continue_plain_text(client, lm):
    done = client.completions.create(model="bardlet", prompt="ROMEO:", max_tokens=12, temperature=0)
    bos = lm.tokenizer.special_id("<|bos|>")
    ids = [bos, *lm.tokenizer.encode("ROMEO:")]
    stop_ids = sorted(lm.tokenizer.special_tokens.values())
    assert done.choices[0].text == Generation(lm, ids, 12, Sampling(temperature=0), stop_ids).text()
    streamed = client.completions.create(
        model="bardlet", prompt="ROMEO:", max_tokens=12, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == done.choices[0].text


def test_concurrent_requests_each_get_their_own_reply(client, lm):
    jobs = [
        ([{"role": "user", "content": f"Tell me of the {word}."}], seed, seed % 2 == 0)
        for seed, word in enumerate(["king", "queen", "sea", "moon", "war", "wine"])
    ]

    def ask(job):
        messages, seed, stream = job
        args = dict(model="bardlet", messages=messages, seed=seed, max_tokens=30)
        args |= dict(temperature=1.0, extra_body={"top_k": 0})
        if stream:
            chunks = client.chat.completions.create(stream=True, **args)
            return "".join(c.choices[0].delta.content or "" for c in chunks)
        return client.chat.completions.create(**args).choices[0].message.content

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        got = list(pool.map(ask, jobs, timeout=60))
    top_p = STYLES["default"]["top_p"]  # what the request leaves out comes from the style
    want = [
        expected_reply(lm, m, 30, Sampling(temperature=1.0, top_k=0, top_p=top_p, seed=s))
        for m, s, _ in jobs
    ]
    assert got == want
    assert len(set(got)) > 1


def test_the_api_and_the_terminal_chat_sample_alike_under_the_same_style(client, model_dir):
    """No sampling fields in the request: the server samples as `bardlet chat` does with its
    default style (temperature, top-k and top-p all from styles.json)."""
    assert {"temperature", "top_k", "top_p"} <= set(STYLES["default"])
    for seed in (1, 2, 3):
        done = client.chat.completions.create(
            model="bardlet", messages=HELLO, max_tokens=24, seed=seed
        )
        chat = Chat(OnnxLM(model_dir), max_new_tokens=24)  # starts in the default style
        chat.settings.seed = seed
        assert done.choices[0].message.content == "".join(chat.reply(HELLO[0]["content"]))


def test_a_request_completes_while_a_stream_is_open(client, server):
    args = dict(model="bardlet", messages=HELLO, temperature=0, max_tokens=30)
    with client.chat.completions.create(stream=True, **args) as stream:
        chunks = iter(stream)
        next(chunks)
        other = client.chat.completions.create(**args)
        rest = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert rest == other.choices[0].message.content
    # A client that hangs up mid-stream does not hurt the server.
    with httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        json={"messages": HELLO, "stream": True, "max_tokens": 40},
        timeout=TIMEOUT,
    ) as response:
        next(response.iter_lines())
    assert httpx.get(server.url + "/health", timeout=TIMEOUT).status_code == 200


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def test_error_statuses_and_shape(server):
    url = server.url + "/v1/chat/completions"

    def post(**kwargs) -> httpx.Response:
        return httpx.post(url, timeout=TIMEOUT, **kwargs)

    json_header = {"content-type": "application/json"}
    assert error_of(post(content=b"{not json", headers=json_header), 400)["code"] == "invalid_json"
    big = {"messages": [{"role": "user", "content": "x" * 1_100_000}]}
    assert error_of(post(json=big), 413)["code"] == "request_too_large"
    wrong = error_of(post(json={"messages": HELLO, "temperature": "hot"}), 422)
    assert wrong["param"] == "temperature"
    assert error_of(post(json={"messages": "hello"}), 422)["param"] == "messages"
    assert error_of(post(json={"messages": []}), 422)["param"] == "messages"
    assert error_of(post(json={"messages": HELLO, "n": 2}), 400)["param"] == "n"
    assert error_of(post(json={"messages": HELLO, "stop": ["a"] * 5}), 400)["param"] == "stop"
    long = {"messages": [{"role": "user", "content": "word " * 100}]}
    assert error_of(post(json=long), 400)["code"] == "context_length_exceeded"
    assert error_of(post(json={**long, "stream": True}), 400)["code"] == "context_length_exceeded"
    assert error_of(httpx.get(server.url + "/v1/nothing", timeout=TIMEOUT), 404)
    assert error_of(httpx.get(url, timeout=TIMEOUT), 405)


def test_truncation_auto_drops_the_oldest_turns_to_fit(client, lm):
    system = {"role": "system", "content": "Speak plainly."}
    old_turns = [
        {"role": "user", "content": "word " * 20},
        {"role": "assistant", "content": "word " * 20},
    ]
    messages = [system, *old_turns, *HELLO]
    assert len(render_prompt(lm.tokenizer, messages)) >= 64, "the test needs a prompt too long"
    with pytest.raises(openai.BadRequestError) as caught:  # the OpenAI default: refuse it
        client.chat.completions.create(model="bardlet", messages=messages, max_tokens=8)
    assert caught.value.code == "context_length_exceeded"

    done = client.chat.completions.create(
        model="bardlet",
        messages=messages,
        max_tokens=8,
        temperature=0,
        extra_body={"truncation": "auto"},
    )
    kept = [system, *HELLO]  # the old exchange is gone; the system prompt and question stay
    assert done.usage is not None
    assert done.usage.prompt_tokens == len(render_prompt(lm.tokenizer, kept))
    assert done.choices[0].message.content == expected_reply(lm, kept, 8, Sampling(temperature=0))
    alone = [{"role": "user", "content": "word " * 100}]  # the newest message alone is too long
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="bardlet", messages=alone, extra_body={"truncation": "auto"}
        )
    assert caught.value.code == "context_length_exceeded"


def test_openai_client_sees_typed_errors(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="bardlet", messages=[{"role": "user", "content": "word " * 100}]
        )
    assert caught.value.code == "context_length_exceeded"
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="bardlet", messages=HELLO, max_tokens=0)


def test_api_key_is_required_when_set(servers):
    _, keyed = servers
    url = keyed.url + "/v1"
    for wrong in ("", "s3cret-kez", KEY + "x"):
        bad = OpenAI(base_url=url, api_key=wrong or "none", max_retries=0, timeout=TIMEOUT)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    denied = httpx.post(url + "/chat/completions", json={"messages": HELLO}, timeout=TIMEOUT)
    assert error_of(denied, 401)["type"] == "authentication_error"
    good = OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=TIMEOUT)
    assert [m.id for m in good.models.list().data] == ["bardlet"]
    reply = good.chat.completions.create(model="bardlet", messages=HELLO, max_tokens=4)
    assert reply.choices[0].message.content is not None
    assert httpx.get(keyed.url + "/health", timeout=TIMEOUT).status_code == 200


def test_openapi_schema_describes_the_api(server):
    schema = httpx.get(server.url + "/openapi.json", timeout=TIMEOUT).json()
    assert schema["openapi"].startswith("3.")
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health"):
        assert path in schema["paths"]
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    assert {"400", "401", "413", "422"} <= set(chat["responses"])


def test_server_binds_loopback_by_default():
    from typer.testing import CliRunner

    from bardlet.cli import app

    text = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    assert "127.0.0.1" in text and "BARDLET_API_KEY" in text and "models/onnx" in text


def test_server_and_chat_do_not_import_torch():
    code = (
        "import sys, bardlet.runtime, bardlet.chat, bardlet.cli, bardlet.server\n"
        "from bardlet.server.app import create_app\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('clean')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "clean"


def test_fuzzed_requests_never_get_a_server_error(server):
    """Property test from the OpenAPI schema: ~50 generated requests, none may answer 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    seen: list[int] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    per_operation = max(4, 30 // len(operations))
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=per_operation,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case) -> None:
            response = case.call(timeout=TIMEOUT)
            seen.append(response.status_code)
            assert response.status_code < 500, (case.method, case.path, case.body)

        check()
    assert len(seen) >= 20


# ------------------------------------------------------------------ hardening


def test_text_that_is_not_unicode_is_a_400_naming_the_field(server):
    def post(path: str, body: str) -> httpx.Response:
        headers = {"content-type": "application/json"}
        return httpx.post(server.url + path, content=body, headers=headers, timeout=TIMEOUT)

    lone = '"a\\ud800b"'  # valid JSON, but no UTF-8 exists for a lone surrogate
    chat = error_of(
        post("/v1/chat/completions", f'{{"messages": [{{"role": "user", "content": {lone}}}]}}'),
        400,
    )
    assert chat["param"] == "messages.0.content" and chat["code"] == "invalid_text"
    assert "surrogate" in chat["message"]
    parts = f'{{"messages": [{{"role": "user", "content": [{{"type": "text", "text": {lone}}}]}}]}}'
    assert error_of(post("/v1/chat/completions", parts), 400)["code"] == "invalid_text"
    assert error_of(post("/v1/completions", f'{{"prompt": {lone}}}'), 400)["param"] == "prompt"
    stop = f'{{"messages": [{{"role": "user", "content": "hi"}}], "stop": [{lone}]}}'
    assert error_of(post("/v1/chat/completions", stop), 400)["code"] == "invalid_text"


def test_a_foreign_host_header_is_refused_on_loopback(server):
    """A page on evil.example whose DNS name turns into 127.0.0.1 (DNS rebinding) sends
    `Host: evil.example`: refused, while the local names work."""
    refused = httpx.get(server.url + "/v1/models", headers={"Host": "evil.example"}, timeout=30)
    assert error_of(refused, 400)["code"] == "invalid_host"
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "localhost"):
        ok = httpx.get(server.url + "/health", headers={"Host": host}, timeout=TIMEOUT)
        assert ok.status_code == 200, host


def test_a_slow_client_is_disconnected(model_dir):
    """A client that opens a connection and trickles its request head (a slowloris) is cut
    off after --read-timeout; so is one that never finishes its body (408)."""
    import socket

    served = Server(model_dir / "model.onnx", "--read-timeout", "1")
    try:
        served.wait_healthy()
        with socket.create_connection(("127.0.0.1", served.port), timeout=30) as head:
            head.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
            assert head.recv(1024) == b""  # the server closed it (recv would block otherwise)
        with socket.create_connection(("127.0.0.1", served.port), timeout=30) as body:
            body.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"prompt"'
            )
            answer = b""
            while chunk := body.recv(4096):  # until the server closes the connection
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer
        with socket.create_connection(("127.0.0.1", served.port), timeout=30) as kept:
            # Keep-alive: one whole request, then the next one's head trickles in.
            kept.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            first = b""
            while b"\r\n\r\n" not in first or not first.rstrip().endswith(b"}"):
                first += kept.recv(4096)
            assert first.startswith(b"HTTP/1.1 200")
            kept.sendall(b"GET /health HTTP/1.1\r\n")
            for _ in range(6):  # a byte every half second: past --read-timeout it is cut off
                time.sleep(0.5)
                with contextlib.suppress(OSError):
                    kept.sendall(b"X")
            kept.settimeout(5)
            assert kept.recv(1024) == b""  # closed (the read would time out otherwise)
        assert httpx.get(served.url + "/health", timeout=TIMEOUT).status_code == 200
    finally:
        served.stop()


def test_cpu_work_runs_off_the_event_loop(lm, monkeypatch):
    """Fitting a long conversation happens in a worker thread: while it runs (held here on an
    event), /health is answered. Were it on the event loop, /health would wait for it."""
    import asyncio
    import threading

    from bardlet.server import app as server_app

    started, release = threading.Event(), threading.Event()
    real = server_app.fit_conversation

    def slow_fit(*args, **kwargs):
        started.set()
        assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(server_app, "fit_conversation", slow_fit)
    application = server_app.create_app(lm)

    async def scenario() -> tuple[int, int]:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            body = {"messages": HELLO, "truncation": "auto", "max_tokens": 4, "temperature": 0}
            big = asyncio.create_task(client.post("/v1/chat/completions", json=body))
            while not started.is_set():
                await asyncio.sleep(0.01)
            health = await asyncio.wait_for(client.get("/health"), 30)
            assert not big.done()  # the long request is still being prepared
            release.set()
            return health.status_code, (await big).status_code

    assert asyncio.run(scenario()) == (200, 200)


def test_truncation_encodes_each_message_once(lm, monkeypatch):
    """8,000 short messages: fitting them is linear (each encoded once), not one re-render of
    the whole conversation per dropped pair."""
    from bardlet.runtime.conversation import fit_conversation

    messages = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"}
        for i in range(8_000)
    ]
    calls = []
    encode = lm.tokenizer.encode
    monkeypatch.setattr(lm.tokenizer, "encode", lambda text: calls.append(1) or encode(text))
    kept, ids = fit_conversation(lm.tokenizer, messages, None, lm.block_size, 16)
    assert len(calls) == len(messages)
    assert kept[-1] == messages[-1] and len(ids) + 16 <= lm.block_size
    assert ids == render_prompt(lm.tokenizer, kept)


def test_logprobs_are_the_models_in_openais_shape_streamed_or_not(client, lm):
    asked = dict(model="bardlet", messages=HELLO, max_tokens=12, temperature=0, seed=1)
    reply = client.chat.completions.create(**asked, logprobs=True, top_logprobs=3)
    choice = reply.choices[0]
    content = choice.logprobs.content
    assert content and len(content) <= 12
    # Greedy: each chosen token is the most likely one, and the bytes are the reply's text.
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        assert (item.top_logprobs[0].token, item.top_logprobs[0].logprob) == (
            item.token,
            item.logprob,
        )
        assert (
            item.top_logprobs[0].logprob
            >= item.top_logprobs[1].logprob
            >= item.top_logprobs[2].logprob
        )
    text = b"".join(bytes(item.bytes) for item in content).decode("utf-8", errors="replace")
    assert text == choice.message.content
    # The first token's log-probability is the model's own, computed here with the runtime.
    import numpy as np

    prompt = render_prompt(lm.tokenizer, HELLO)
    logits, _ = lm.forward(np.array([prompt]), lm.empty_cache())
    row = logits[0, -1].astype(np.float64)
    log_softmax = row - row.max() - np.log(np.exp(row - row.max()).sum())
    assert abs(content[0].logprob - float(log_softmax.max())) < 1e-4
    # Streamed, the chunks' log-probs add up to the same list.
    chunks = list(
        client.chat.completions.create(**asked, logprobs=True, top_logprobs=3, stream=True)
    )
    streamed = [item for c in chunks if c.choices and c.choices[0].logprobs
                for item in c.choices[0].logprobs.content]  # fmt: skip
    assert [(i.token, round(i.logprob, 5)) for i in streamed] == [
        (i.token, round(i.logprob, 5)) for i in content
    ]
    plain = client.chat.completions.create(**asked)
    assert plain.choices[0].logprobs is None


def test_models_by_name_and_what_is_not_supported_are_named(client, server):
    assert client.models.retrieve("bardlet").id == "bardlet"
    for call in (
        lambda: client.models.retrieve("gpt-4o"),
        lambda: client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=2),
        lambda: client.completions.create(model="gpt-4o", prompt="Hi", max_tokens=2),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        assert caught.value.code == "model_not_found" and "gpt-4o" in caught.value.message
    tool = {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}
    refused = {
        "tools": dict(tools=[tool]),
        "response_format": dict(response_format={"type": "json_object"}),
        "n": dict(n=2),
        "top_logprobs": dict(top_logprobs=2),
    }
    for param, extra in refused.items():
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="bardlet", messages=HELLO, max_tokens=2, **extra)
        assert caught.value.param == param and caught.value.code == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="bardlet", prompt="Hi", max_tokens=2, logprobs=2)
    assert caught.value.param == "logprobs"
    fine = client.chat.completions.create(
        model="bardlet", messages=HELLO, max_tokens=2, tools=[], response_format={"type": "text"}
    )
    assert fine.choices[0].finish_reason in ("stop", "length")


def test_a_reply_that_fails_mid_stream_says_so_in_the_stream(lm, monkeypatch):
    """The decode loop's graph call fails after the first tokens are sent (headers and all):
    the stream ends with an error event the openai client raises, then [DONE], not a cut."""
    from bardlet.server.app import create_app

    forward, calls = lm.forward, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # the prompt and two tokens went well
            raise RuntimeError("the graph broke")
        return forward(*args, **kwargs)

    monkeypatch.setattr(lm, "forward", failing)

    async def scenario() -> tuple[str, str]:
        transport = httpx.ASGITransport(app=create_app(lm))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            client = openai.AsyncOpenAI(base_url="http://127.0.0.1/v1", api_key="x",
                                        http_client=http, max_retries=0)  # fmt: skip
            said = ""
            with pytest.raises(openai.APIError, match="generation failed: the graph broke"):
                stream = await client.chat.completions.create(
                    model="bardlet", messages=[{"role": "user", "content": "Hi"}],
                    max_tokens=20, temperature=0, stream=True,
                )  # fmt: skip
                async for chunk in stream:
                    said += (chunk.choices[0].delta.content or "") if chunk.choices else ""
            monkeypatch.setattr(lm, "forward", forward)
            raw = await http.post("/v1/completions", json={"prompt": "A", "max_tokens": 3,
                                                          "stream": True})  # fmt: skip
            return said, raw.text

    said, after = asyncio.run(scenario())
    assert said  # the tokens before the failure were sent
    assert after.endswith("data: [DONE]\n\n") and "error" not in after  # the loop goes on


def test_text_made_before_a_failure_comes_before_the_error(lm):
    """Under load a stream's event joins every token already made; when the decode loop
    failed right after them, the joined text still goes out, and then the error."""
    from bardlet.server.app import coalesced

    made = lm.tokenizer.encode(" good morrow")

    class AllMadeThenFailed:
        def __init__(self, *_: object) -> None:
            self.left = list(made)

        def __iter__(self):
            return self

        def __next__(self) -> int:
            if self.left:
                return self.left.pop(0)
            raise RuntimeError("the graph broke")

        def ready(self) -> bool:
            return True  # every token is made before the stream reads the first

        def close(self) -> None:
            pass

    gen = Generation(lm, [1], 10, Sampling(temperature=0), stream=AllMadeThenFailed)
    pieces = coalesced(gen)
    assert next(pieces) == " good morrow"
    with pytest.raises(RuntimeError, match="the graph broke"):
        next(pieces)


def test_the_thread_pool_holds_every_request_the_batcher_admits(lm):
    """Each admitted reply waits in a worker thread; anyio's default of 40 would leave
    requests the batcher admitted queued for a thread, where they can neither run nor get
    a 429."""
    import anyio

    from bardlet.server.app import create_app

    application = create_app(lm, max_batch=32, max_waiting=64)

    async def inside() -> int:
        async with application.router.lifespan_context(application):
            return int(anyio.to_thread.current_default_thread_limiter().total_tokens)

    assert asyncio.run(inside()) >= 32 + 64
