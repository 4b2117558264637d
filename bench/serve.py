"""Load-test `bardlet serve`: N concurrent streaming clients on loopback for a bounded time.

    .venv/bin/python bench/serve.py --json bench/results/serve.json   # ~2.5 min: 2 rounds x 4 x 15 s
    .venv/bin/python bench/serve.py --quick                          # < 1 minute: 1 round, 5 s
    .venv/bin/python bench/serve.py --no-stream    # whole replies in one response (the issue's measure)

Per level, N client threads send streamed chat completions one after another until its time is
up; the best round per level (most tokens/s in total) is reported, every round is in the JSON.
The server decodes every running reply in one batch (continuous batching), so its throughput
should grow with the clients: the target is 16 clients >= 4x the requests/s of 1 client.
Latency is a whole request (sent to last token); TTFT is sent to first text (with
`--no-stream`, the whole reply: TTFT is the latency).

A second table runs the same requests through the decode loop alone, in this process (a
`Batcher` and N threads, no HTTP): what batching gives before the server's own costs. Last,
32 replies to lines of docs/ (half greedy, half seeded sampling), computed one by one
and then all at once in a batch: how many are identical, and the largest logit difference.
Then what one decoding step costs per row at batch sizes 1-64 (graph call and sampling):
the floor under what batching can give on this machine.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import common  # bench/common.py: this script's folder is on sys.path
import httpx

sys.path.insert(0, str(common.REPO / "tests"))
from conftest_server import Server  # noqa: E402  (`bardlet serve` in a subprocess, as the tests run it)

MAX_TOKENS = 64
MESSAGES = [{"role": "user", "content": "Good morrow! What news from the court?"}]


def new_client() -> httpx.Client:
    """One keep-alive connection with TCP_NODELAY, as browsers use: without it the request's
    body waits for the ACK of its headers (Nagle), which adds up to 40 ms to the TTFT."""
    options = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    transport = httpx.HTTPTransport(socket_options=options)
    return httpx.Client(transport=transport, timeout=httpx.Timeout(120.0))


def one_request(client: httpx.Client, url: str, seed: int, stream: bool = True) -> dict[str, Any]:
    """One chat completion: send time, first-text time, end time, token count."""
    body = {"model": "bardlet", "messages": MESSAGES, "max_tokens": MAX_TOKENS, "seed": seed}
    sent = time.perf_counter()
    if not stream:
        response = client.post(url + "/v1/chat/completions", json=body)
        response.raise_for_status()
        end = time.perf_counter()
        tokens = response.json()["usage"]["completion_tokens"]
        return {"sent": sent, "first": end, "end": end, "tokens": tokens}
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    first, tokens, done = None, None, False
    with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if chunk.get("error"):
                raise RuntimeError(chunk["error"].get("message"))
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or []:
                if first is None and (choice.get("delta") or {}).get("content"):
                    first = time.perf_counter()
    end = time.perf_counter()
    if not done or tokens is None:
        raise RuntimeError("the stream ended without [DONE] or usage")
    return {
        "sent": sent,
        "first": first if first is not None else end,
        "end": end,
        "tokens": tokens,
    }


def percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def run_level(
    url: str, clients: int, seconds: float, seed_base: int, stream: bool
) -> dict[str, Any]:
    results: list[list[dict[str, Any]]] = [[] for _ in range(clients)]
    errors: list[str] = []
    barrier = threading.Barrier(clients)
    stop_at: list[float] = []

    def client_loop(index: int) -> None:
        with new_client() as client:
            barrier.wait()
            if index == 0:
                stop_at.append(time.perf_counter() + seconds)
            barrier.wait()
            n = 0
            while time.perf_counter() < stop_at[0]:
                n += 1
                try:
                    seed = seed_base + 1000 * index + n
                    results[index].append(one_request(client, url, seed, stream))
                except (httpx.HTTPError, RuntimeError, ValueError) as error:
                    errors.append(f"client {index}: {error!r}")

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = [r for per_client in results for r in per_client]
    if not done:
        raise SystemExit(f"no request completed with {clients} clients: {errors[:3]}")
    wall = max(r["end"] for r in done) - min(r["sent"] for r in done)
    ttft = [(r["first"] - r["sent"]) * 1000 for r in done]
    latency = [(r["end"] - r["sent"]) * 1000 for r in done]
    per_client = [sum(r["tokens"] for r in rs) / wall for rs in results]
    return {
        "clients": clients,
        "seconds": round(wall, 2),
        "requests": len(done),
        "errors": len(errors),
        "error_samples": errors[:3],
        "requests_per_s": round(len(done) / wall, 3),
        "ttft_ms_p50": round(percentile(ttft, 50), 1),
        "ttft_ms_p95": round(percentile(ttft, 95), 1),
        "latency_ms_p50": round(percentile(latency, 50), 1),
        "latency_ms_p99": round(percentile(latency, 99), 1),
        "tokens_per_s_per_client": round(statistics.fmean(per_client), 1),
        "tokens_per_s_per_client_min": round(min(per_client), 1),
        "tokens_per_s_total": round(sum(per_client), 1),
        "completion_tokens": sum(r["tokens"] for r in done),
        "mean_tokens_per_request": round(statistics.fmean(r["tokens"] for r in done), 1),
    }


COLUMNS = [
    ("clients", "{clients}"),
    ("requests", "{requests}"),
    ("req/s", "{requests_per_s:.2f}"),
    ("TTFT p50 (ms)", "{ttft_ms_p50:.0f}"),
    ("TTFT p95 (ms)", "{ttft_ms_p95:.0f}"),
    ("latency p50 (ms)", "{latency_ms_p50:.0f}"),
    ("latency p99 (ms)", "{latency_ms_p99:.0f}"),
    ("tok/s per client", "{tokens_per_s_per_client:.0f}"),
    ("tok/s total", "{tokens_per_s_total:.0f}"),
    ("tokens/request", "{mean_tokens_per_request:.1f}"),
    ("errors", "{errors}"),
]


def run_engine_level(model: Path, clients: int, seconds: float) -> dict[str, Any]:
    """N threads sending the chat request straight to a `Batcher` for `seconds`."""
    sys.path.insert(0, str(common.REPO))
    from bardlet.data.chat_template import render_prompt
    from bardlet.runtime.batching import Batcher
    from bardlet.runtime.conversation import load_styles, reply
    from bardlet.runtime.session import OnnxLM

    lm = OnnxLM(model)
    batcher = Batcher(lm, max_batch=max(clients, 1), max_waiting=clients)
    style = load_styles(lm.path)["default"]
    prompt = render_prompt(lm.tokenizer, MESSAGES, style.system)
    tokens = [0] * clients
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    def client_loop(index: int) -> None:
        n = 0
        while time.perf_counter() < stop_at:
            n += 1
            settings = style.sampling().model_copy(update={"seed": 1000 * index + n})
            sent = time.perf_counter()
            gen = reply(lm, prompt, MAX_TOKENS, settings, stream=batcher.stream)
            gen.text()
            latencies.append((time.perf_counter() - sent) * 1000)
            tokens[index] += len(gen.tokens)

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / wall, 2),
        "latency_ms_p50": round(percentile(latencies, 50), 1),
        "latency_ms_p99": round(percentile(latencies, 99), 1),
        "tokens_per_s_total": round(sum(tokens) / wall, 1),
    }


def batched_vs_alone(model: Path, replies: int = 32) -> dict[str, Any]:
    """The same replies alone and inside a batch of 16: identical replies, max logit gap."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from bardlet.data.chat_template import render_prompt
    from bardlet.runtime.batching import Batcher
    from bardlet.runtime.sampling import Sampling
    from bardlet.runtime.session import OnnxLM

    lm = OnnxLM(model, threads=1)
    stops = sorted(lm.tokenizer.special_tokens.values())
    docs = sorted((common.REPO / "docs").glob("*.md"))
    text = "\n".join(path.read_text(encoding="utf-8") for path in docs)
    lines = [line for line in text.splitlines() if len(line) > 20][:replies]
    jobs = []
    for i, line in enumerate(lines):
        prompt = render_prompt(lm.tokenizer, [{"role": "user", "content": line}])
        seeded = Sampling(temperature=0.8, top_k=40, top_p=0.95, seed=i)
        jobs.append((prompt, MAX_TOKENS, Sampling(temperature=0) if i % 2 else seeded))

    def run(source: Any, job: tuple) -> tuple[list[int], list[Any]]:
        scores: list[Any] = []
        return list(source(*job, stop_ids=stops, scores=scores)), scores

    alone = [run(lm.stream, job) for job in jobs]
    batcher = Batcher(lm, max_batch=16, max_waiting=len(jobs))
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda job: run(batcher.stream, job), jobs))
    gaps = [
        float(np.abs(a - b).max())
        for (_, ours), (_, theirs) in zip(alone, together, strict=True)
        for a, b in zip(ours, theirs, strict=False)
    ]
    return {
        "replies": len(jobs),
        "tokens": sum(len(tokens) for tokens, _ in alone),
        "identical_replies": sum(a[0] == b[0] for a, b in zip(alone, together, strict=True)),
        "max_logit_difference": max(gaps),
    }


def step_costs(
    model: Path, threads: int, batches: tuple[int, ...] = (1, 4, 16, 32, 64)
) -> list[dict[str, Any]]:
    """What one decoding step costs per row at each batch size, on a cache of 64 positions:
    the graph call, and `sample` at the default style (the batcher samples row by row).
    The floor under any batching: a row can never cost less than these two."""
    import numpy as np

    from bardlet.runtime.conversation import load_styles
    from bardlet.runtime.sampling import sample
    from bardlet.runtime.session import OnnxLM

    lm = OnnxLM(model, threads=threads)
    settings = load_styles(lm.path)["default"].sampling()
    rows = []
    for batch in batches:
        ids = np.zeros((batch, 1), dtype=np.int64)
        _, past = lm.forward(np.zeros((batch, 64), dtype=np.int64), lm.empty_cache(batch))
        calls = []
        for _ in range(max(20, 400 // batch)):
            started = time.perf_counter()
            logits, _ = lm.forward(ids, past)
            calls.append(time.perf_counter() - started)
        rng = np.random.default_rng(0)
        started = time.perf_counter()
        for _ in range(10):
            for row in logits[:, -1]:
                sample(row, settings, rng)
        sampling = (time.perf_counter() - started) / (10 * batch)
        graph = statistics.median(calls)
        rows.append(
            {
                "rows": batch,
                "graph_ms": graph * 1e3,
                "graph_us_per_row": graph / batch * 1e6,
                "sample_us_per_row": sampling * 1e6,
                "us_per_row": (graph / batch + sampling) * 1e6,
            }
        )
    return rows


STEP_COLUMNS = [
    ("rows", "{rows}"),
    ("graph call (ms)", "{graph_ms:.2f}"),
    ("graph per row (us)", "{graph_us_per_row:.0f}"),
    ("sampling per row (us)", "{sample_us_per_row:.0f}"),
    ("step per row (us)", "{us_per_row:.0f}"),
]


ENGINE_COLUMNS = [
    ("clients", "{clients}"),
    ("requests", "{requests}"),
    ("req/s", "{requests_per_s:.2f}"),
    ("latency p50 (ms)", "{latency_ms_p50:.0f}"),
    ("latency p99 (ms)", "{latency_ms_p99:.0f}"),
    ("tok/s total", "{tokens_per_s_total:.0f}"),
]


def main() -> None:
    parser = common.parser(__doc__, "1 round, 5 s per level (< 1 min)")
    parser.add_argument("--model", type=Path, default=common.REPO / "models/onnx/model.onnx")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=float, help="time per level (default 15; quick: 5)")
    parser.add_argument("--rounds", type=int, help="rounds (default 2; quick: 1)")
    parser.add_argument("--threads", type=int, default=0, help="server ONNX threads (0 = all)")
    parser.add_argument("--no-stream", action="store_true", help="whole replies, not streamed")
    args = common.parse(parser)
    seconds = args.seconds or (5.0 if args.quick else 15.0)
    rounds = args.rounds or (1 if args.quick else 2)
    if not args.model.exists():
        raise SystemExit(f"{args.model} not found: run `make pipeline` first")

    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bardlet-bench-serve-{os.getpid()}.log"
    server = Server(args.model, threads=args.threads, log=log)
    try:
        server.wait_healthy()
        context = httpx.get(server.url + "/health", timeout=10).json()["context"]
        with new_client() as client:
            one_request(client, server.url, 0)  # warm-up: first-request costs, untimed
        load_before = os.getloadavg()
        found = common.rounds_of(
            args.clients,
            rounds,
            lambda n: run_level(server.url, n, seconds, 1_000_000 * n, not args.no_stream),
            lambda n, r: f"{n} clients: {r['tokens_per_s_total']:.0f} tok/s in total",
        )
        runs = {n: [r | {"round": i + 1} for i, r in enumerate(results)] for n, results in found}
        load_after = os.getloadavg()
    finally:
        server.stop()
        log.unlink(missing_ok=True)

    engine = [run_engine_level(args.model, n, seconds) for n in args.clients]
    same = batched_vs_alone(args.model)
    steps = step_costs(args.model, args.threads)
    levels = [max(runs[n], key=lambda run: run["tokens_per_s_total"]) for n in args.clients]
    print(f"bardlet serve, {'non-' * args.no_stream}streaming clients over HTTP:")
    print(common.rows_table(levels, COLUMNS, align="r"))
    print("\nthe decode loop alone, in process (no HTTP):")
    print(common.rows_table(engine, ENGINE_COLUMNS, align="r"))
    print(
        f"\nbatched vs alone: {same['identical_replies']}/{same['replies']} replies identical "
        f"({same['tokens']} tokens), max logit difference {same['max_logit_difference']:.1e}"
    )
    one_client = levels[0]["tokens_per_s_total"] if args.clients[0] == 1 else None
    print("\none decoding step by batch size (graph call + sampling, per row):")
    print(common.rows_table(steps, STEP_COLUMNS, align="r"))
    if one_client:
        print(
            f"4x one client's {one_client:.0f} tok/s allows {1e6 / (4 * one_client):.0f} us a "
            "token for everything: the step above, text pieces, HTTP and the clients"
        )
    meta = {
        **common.run_info(),
        "model": os.path.relpath(args.model.resolve(), common.REPO),
        "context": context,
        "server_threads": args.threads,
        "seconds_per_level": seconds,
        "rounds": rounds,
        "load_average_1m_before_after": [load_before[0], load_after[0]],
        "max_tokens": MAX_TOKENS,
        "messages": MESSAGES,
        "stream": not args.no_stream,
    }
    rounds_of = {str(n): runs[n] for n in args.clients}
    output = {"meta": meta, "levels": levels, "engine": engine, "batched_vs_alone": same}
    output["step_costs"] = steps
    output["rounds"] = rounds_of
    common.save(args.json, output)


if __name__ == "__main__":
    main()
