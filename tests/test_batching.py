"""Continuous batching (bardlet/runtime/batching.py): a reply computed inside a batch is the
reply computed alone, and the server's queue is bounded and forgets clients that leave."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
import torch
from conftest_server import Server, build_tiny_model, tiny_gpt
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import OpenAI

from bardlet.runtime.batching import Batcher, Busy
from bardlet.runtime.sampling import Sampling
from bardlet.runtime.session import OnnxLM

TEXTS = [
    "ROMEO:",
    "Who art thou?",
    "O, she doth teach the torches to burn bright!",
    "Now is the winter of our discontent made glorious summer by this sun of York;",
    "To be, or not to be",
    "KING HENRY:\nOnce more unto the breach, dear friends, once more;",
    "A",
    "What light through yonder window breaks? It is the east, and Juliet is the sun.",
]


@pytest.fixture(scope="module")
def lm(tmp_path_factory, small_tokenizer) -> OnnxLM:
    folder = build_tiny_model(
        tmp_path_factory.mktemp("batched"), small_tokenizer, block_size=96, logit_scale=4.0
    )
    return OnnxLM(folder, threads=1)


def requests(lm: OnnxLM) -> list[tuple[list[int], int, Sampling]]:
    """16 requests of different prompt lengths and budgets: half greedy, half seeded."""
    out = []
    for i in range(16):
        prompt = [
            lm.tokenizer.special_id("<|bos|>"),
            *lm.tokenizer.encode(TEXTS[i % 8] * (1 + i // 8)),
        ]
        settings = Sampling(temperature=0) if i % 2 else Sampling(temperature=1.0, seed=i)
        out.append((prompt, 5 + 3 * i, settings))
    return out


@settings(max_examples=20, deadline=None)
@given(lengths=st.lists(st.integers(1, 20), min_size=2, max_size=4), new=st.integers(1, 3))
def test_left_padding_with_a_key_mask_computes_what_each_row_computes_alone(
    small_tokenizer, lengths, new
):
    """The model's side of batching: rows padded on the left to one length, with a key mask,
    get the logits they get alone (rotary and learned positions count their own tokens)."""
    model = tiny_gpt(small_tokenizer, block_size=32)
    rng = np.random.default_rng(sum(lengths))
    rows = [rng.integers(0, 300, size=n).tolist() for n in lengths]
    width = max(lengths)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        empty = [(torch.zeros(len(rows), 2, 0, 16),) * 2 for _ in range(2)]
        batched, _, past = model(ids, past=empty, key_mask=mask)
        step = torch.tensor([[7]] * len(rows))
        for _ in range(new):  # and a few decoding steps on the padded cache
            mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=mask.dtype)], dim=1)
            stepped, _, past = model(step, past=past, key_mask=mask)
        for i, row in enumerate(rows):
            alone, _, alone_past = model(torch.tensor([row]))
            assert torch.allclose(batched[i, width - len(row) :], alone[0], atol=1e-5)
            for _ in range(new):
                last, _, alone_past = model(torch.tensor([[7]]), past=alone_past)
            assert torch.allclose(stepped[i], last[0], atol=1e-5)


def test_sixteen_concurrent_requests_get_the_replies_they_get_alone(lm):
    """Greedy and seeded replies, with their per-step logits: the same tokens in a batch of 16
    that joined at different steps as one by one. The logits may differ by rounding (a batched
    matrix product adds in another order); measured here at under 1e-5, far below the gap
    between the two best tokens that would change a choice, so the tokens must be equal."""
    batcher = Batcher(lm, max_batch=16)
    jobs = requests(lm)

    def alone(job):
        scores: list[np.ndarray] = []
        return list(lm.stream(*job, scores=scores)), scores

    def batched(job):
        scores: list[np.ndarray] = []
        return list(batcher.stream(*job, scores=scores)), scores

    expected = [alone(job) for job in jobs]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(batched, jobs))
    assert [tokens for tokens, _ in got] == [tokens for tokens, _ in expected]
    worst = max(
        float(np.abs(a - b).max())
        for (_, ours), (_, theirs) in zip(got, expected, strict=True)
        for a, b in zip(ours, theirs, strict=True)
    )
    assert worst < 1e-4
    budgets = [min(n, lm.block_size - len(prompt)) for prompt, n, _ in jobs]
    assert [len(tokens) for tokens, _ in got] == budgets  # no stop token: each ran its budget
    assert batcher.load()["running"] == 0


def test_a_full_queue_refuses_at_once_and_a_closed_reader_leaves_the_batch(lm):
    batcher = Batcher(lm, max_batch=1, max_waiting=1)
    prompt = [lm.tokenizer.special_id("<|bos|>"), *lm.tokenizer.encode("ROMEO:")]
    # Hold the decode loop at the door (it takes requests under this lock), so the first
    # request cannot finish its 80 tokens before the third arrives, however slow this thread.
    with batcher._wake:
        first = batcher.stream(prompt, 80, Sampling(temperature=0))
        second = batcher.stream(prompt, 80, Sampling(temperature=0))
        with pytest.raises(Busy, match="busy"):
            batcher.stream(prompt, 80, Sampling(temperature=0))
    next(first)
    first.close()
    second.close()
    deadline = time.monotonic() + 5
    while batcher.load() != {"running": 0, "waiting": 0, "tokens_drawn": batcher.tokens_drawn}:
        assert time.monotonic() < deadline, batcher.load()
        time.sleep(0.01)
    settled = batcher.tokens_drawn
    time.sleep(0.2)
    assert batcher.tokens_drawn == settled < 160  # neither request ran to its 80 tokens


def test_a_request_still_in_prefill_holds_its_batch_slot(lm, monkeypatch):
    """The loop takes a request from the queue, then runs its prompt: until it joins the batch
    it is in neither list, yet its slot is taken. Counted or not, a burst arriving meanwhile
    would be admitted past max_batch + max_waiting."""
    in_prefill, release = threading.Event(), threading.Event()
    forward = lm.forward

    def held_forward(*args, **kwargs):
        in_prefill.set()
        assert release.wait(10)
        return forward(*args, **kwargs)

    monkeypatch.setattr(lm, "forward", held_forward)
    batcher = Batcher(lm, max_batch=1, max_waiting=0)
    prompt = [lm.tokenizer.special_id("<|bos|>"), *lm.tokenizer.encode("ROMEO:")]
    first = batcher.stream(prompt, 3, Sampling(temperature=0))
    assert in_prefill.wait(10)  # off the queue, not yet running: the one slot is still taken
    try:
        with pytest.raises(Busy):
            batcher.stream(prompt, 3, Sampling(temperature=0))
    finally:
        release.set()
    assert len(list(first)) == 3
    assert len(list(batcher.stream(prompt, 3, Sampling(temperature=0)))) == 3  # a free slot


def test_a_reader_that_leaves_the_queue_frees_its_place_at_once(lm):
    """A waiting request whose reader is gone leaves the queue when it closes, not when a
    batch slot frees: its place goes to the next request, and it is never prefilled."""
    batcher = Batcher(lm, max_batch=1, max_waiting=1)
    prompt = [lm.tokenizer.special_id("<|bos|>"), *lm.tokenizer.encode("ROMEO:")]
    with batcher._wake:  # the loop cannot take any of them meanwhile
        first = batcher.stream(prompt, 4, Sampling(temperature=0))
        second = batcher.stream(prompt, 4, Sampling(temperature=0))
        with pytest.raises(Busy):
            batcher.stream(prompt, 4, Sampling(temperature=0))
        second.close()
        assert second.ready() and list(second) == []  # ended, without a token
        third = batcher.stream(prompt, 4, Sampling(temperature=0))  # its place
    assert len(list(first)) == len(list(third)) == 4
    assert batcher.tokens_drawn == 8


def test_kept_scores_are_copies_not_views_of_a_whole_step(lm):
    """Log-probs keep each step's logits row; a view would keep the step's whole (rows,
    positions, vocab) array alive, for every row of the batch and every prompt position."""
    prompt = [lm.tokenizer.special_id("<|bos|>"), *lm.tokenizer.encode("ROMEO: a long prompt")]
    alone: list[np.ndarray] = []
    batched: list[np.ndarray] = []
    list(lm.stream(prompt, 3, Sampling(temperature=0), scores=alone))
    list(Batcher(lm).stream(prompt, 3, Sampling(temperature=0), scores=batched))
    for score in alone + batched:
        assert score.shape == (lm.tokenizer.vocab_size,) and score.base is None


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory, small_tokenizer):
    """A server with one batch slot and no queue, and a model slow enough (1024 context,
    256 wide) that a 900-token reply holds its slot for a while."""
    folder = build_tiny_model(
        tmp_path_factory.mktemp("busy"),
        small_tokenizer,
        block_size=1024,
        n_embd=256,
        logit_scale=8.0,
    )
    server = Server(folder, "--batch", "1", "--queue", "0")
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()


def health(server: Server) -> dict:
    return httpx.get(server.url + "/health", timeout=10).json()


def wait_idle(server: Server) -> int:
    """Wait until nothing runs or waits; the tokens drawn so far."""
    deadline = time.monotonic() + 10
    while (now := health(server))["running"] or now["waiting"]:
        assert time.monotonic() < deadline, now
        time.sleep(0.02)
    return now["tokens_drawn"]


LONG = {"model": "bardlet", "messages": [{"role": "user", "content": "Speak."}], "max_tokens": 900}


def test_past_the_queue_a_request_gets_429_with_retry_after(busy_server):
    client = OpenAI(base_url=busy_server.url + "/v1", api_key="x", max_retries=0, timeout=30)
    with httpx.stream(
        "POST", busy_server.url + "/v1/chat/completions", json=LONG | {"stream": True}, timeout=30
    ) as holding:
        lines = holding.iter_lines()  # kept: a dropped iterator closes the connection
        next(lines)  # the reply has started: the one slot is taken
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(**LONG)
    assert refused.value.response.headers["retry-after"] == "1"
    assert refused.value.body["code"] == "server_busy"
    wait_idle(busy_server)
    assert client.chat.completions.create(**LONG | {"max_tokens": 3}).choices[0].message.content


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_frees_its_slot_and_costs_nothing_after(busy_server, stream):
    before = wait_idle(busy_server)
    url = busy_server.url + "/v1/chat/completions"
    if stream:
        with httpx.stream("POST", url, json=LONG | {"stream": True}, timeout=30) as leaving:
            for _ in zip(range(3), leaving.iter_lines(), strict=False):
                pass  # a few tokens, then the client goes away mid-reply
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json=LONG, timeout=httpx.Timeout(30, read=0.1))
    settled = wait_idle(busy_server)
    time.sleep(0.3)
    assert health(busy_server)["tokens_drawn"] == settled  # no CPU spent on it afterwards
    assert settled - before < 700  # it did not run to its 900 tokens
