"""Load-test `bardlet serve`: N concurrent streaming clients on loopback for a bounded time.

    .venv/bin/python bench/serve.py --json bench/results/serve.json   # ~2.5 min: 2 rounds x 4 x 15 s
    .venv/bin/python bench/serve.py --quick                          # < 1 minute: 1 round, 5 s

The real server runs as a subprocess (`python -m bardlet.cli serve --model models/onnx/model.onnx
--port <free port>`, in its own process group, killed at the end). For each level N (default
1, 2, 4, 8) N client threads, each with its own HTTP connection, send chat completions one
after another with stream=true, max_tokens 64 and `stream_options.include_usage`, until the
level's time is up (a request started before the end runs to completion). One warm-up request
runs first, untimed. The machine may be shared: a full run does every level once per round
(2 rounds, the second in reverse order) and reports, per level, the round with the most tokens/s
in total (the least-disturbed one); every round is in the JSON, with the load average.

Per level:
- requests/s:      completed requests / the level's wall time (first request sent to last
                   reply finished).
- TTFT p50 / p95:  time from sending the request to the first chunk with text in it.
- tok/s per client: each client's completion tokens (the server's `usage` count) / wall time,
                   averaged over the clients; tok/s total is the sum over clients.
- errors:          requests that failed (HTTP error, broken stream, no usage).
The prompt is a fixed one-line question with the model's default style settings
(temperature 0.7, top-k 50) and a per-request seed, so every run asks the same things.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bardlet.markdown import table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest_server import Server  # noqa: E402  (`bardlet serve` in a subprocess, as the tests run it)

MAX_TOKENS = 64
MESSAGES = [{"role": "user", "content": "Good morrow! What news from the court?"}]


def new_client() -> httpx.Client:
    """One keep-alive connection with TCP_NODELAY, as browsers use: without it the request's
    body waits for the ACK of its headers (Nagle), which adds up to 40 ms to the TTFT."""
    options = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    transport = httpx.HTTPTransport(socket_options=options)
    return httpx.Client(transport=transport, timeout=httpx.Timeout(120.0))


def one_request(client: httpx.Client, url: str, seed: int) -> dict[str, Any]:
    """One streamed chat completion: send time, first-text time, end time, token count."""
    body = {
        "model": "bardlet",
        "messages": MESSAGES,
        "stream": True,
        "max_tokens": MAX_TOKENS,
        "seed": seed,
        "stream_options": {"include_usage": True},
    }
    sent = time.perf_counter()
    first = None
    tokens = None
    done = False
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


def run_level(url: str, clients: int, seconds: float, seed_base: int) -> dict[str, Any]:
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
                    results[index].append(one_request(client, url, seed_base + 1000 * index + n))
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
        "tokens_per_s_per_client": round(statistics.fmean(per_client), 1),
        "tokens_per_s_per_client_min": round(min(per_client), 1),
        "tokens_per_s_total": round(sum(per_client), 1),
        "completion_tokens": sum(r["tokens"] for r in done),
        "mean_tokens_per_request": round(statistics.fmean(r["tokens"] for r in done), 1),
    }


# (column title, key in a level's result, format)
COLUMNS = [
    ("clients", "clients", "{}"),
    ("requests", "requests", "{}"),
    ("req/s", "requests_per_s", "{:.2f}"),
    ("TTFT p50 (ms)", "ttft_ms_p50", "{:.0f}"),
    ("TTFT p95 (ms)", "ttft_ms_p95", "{:.0f}"),
    ("tok/s per client", "tokens_per_s_per_client", "{:.0f}"),
    ("tok/s total", "tokens_per_s_total", "{:.0f}"),
    ("tokens/request", "mean_tokens_per_request", "{:.1f}"),
    ("errors", "errors", "{}"),
]


def markdown(levels: list[dict[str, Any]]) -> str:
    rows = [[form.format(level[key]) for _, key, form in COLUMNS] for level in levels]
    return table([title for title, _, _ in COLUMNS], rows, align="r")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "onnx" / "model.onnx")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, help="time per level (default 15; quick: 5)")
    parser.add_argument("--rounds", type=int, help="rounds (default 2; quick: 1)")
    parser.add_argument("--quick", action="store_true", help="1 round, 5 s per level (< 1 min)")
    parser.add_argument("--threads", type=int, default=0, help="server ONNX threads (0 = all)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
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
        runs: dict[int, list[dict[str, Any]]] = {n: [] for n in args.clients}
        for round_index in range(rounds):
            order = args.clients if round_index % 2 == 0 else args.clients[::-1]
            for clients in order:
                run = run_level(server.url, clients, seconds, 1_000_000 * clients)
                runs[clients].append(run | {"round": round_index + 1})
                print(
                    f"round {round_index + 1}, {clients} clients: "
                    f"{run['tokens_per_s_total']:.0f} tok/s in total",
                    file=sys.stderr,
                )
        load_after = os.getloadavg()
    finally:
        server.stop()
        log.unlink(missing_ok=True)

    levels = [max(runs[n], key=lambda run: run["tokens_per_s_total"]) for n in args.clients]
    print(markdown(levels))
    if args.json:
        result = {
            "meta": {
                "command": "python bench/serve.py " + " ".join(sys.argv[1:]),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "python": platform.python_version(),
                "model": os.path.relpath(args.model.resolve(), REPO),
                "context": context,
                "server_threads": args.threads,
                "seconds_per_level": seconds,
                "rounds": rounds,
                "load_average_1m_before_after": [load_before[0], load_after[0]],
                "max_tokens": MAX_TOKENS,
                "messages": MESSAGES,
                "stream": True,
            },
            "levels": levels,
            "rounds": {str(n): runs[n] for n in args.clients},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
