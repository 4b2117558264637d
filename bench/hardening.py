"""What the server's guards cost and save: a huge conversation, and slow clients.

    .venv/bin/python bench/hardening.py --json bench/results/hardening.json
    .venv/bin/python bench/hardening.py --quick

`bardlet serve` on loopback: one request of 8,000 messages with `truncation: "auto"` while
/health is polled; then 300 connections that send half a request head and stop (slowloris,
--read-timeout 2 s): when the server has closed them all, and whether /health still answers.
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import common  # bench/common.py: this script's folder is on sys.path
import httpx

from bardlet.markdown import table

sys.path.insert(0, str(common.REPO / "tests"))
from conftest_server import Server  # noqa: E402  (`bardlet serve` in a subprocess, as the tests run it)


def huge_conversation(url: str, messages: int) -> dict[str, float]:
    body = {
        "messages": [
            {"role": "user" if i % 2 == 0 else "assistant", "content": f"message number {i}"}
            for i in range(messages)
        ],
        "truncation": "auto",
        "max_tokens": 8,
        "temperature": 0,
    }
    health: list[float] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            started = time.perf_counter()
            httpx.get(url + "/health", timeout=60)
            health.append(time.perf_counter() - started)
            time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    started = time.perf_counter()
    response = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
    seconds = time.perf_counter() - started
    done.set()
    poller.join()
    assert response.status_code == 200, response.text
    return {
        "body_kb": len(json.dumps(body)) / 1000,
        "request_s": seconds,
        "health_max_ms": 1000 * max(health),
        "health_median_ms": 1000 * statistics.median(health),
    }


def slow_clients(url: str, port: int, count: int) -> dict[str, float]:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        sockets.append(sock)
    started = time.perf_counter()
    health_ok = httpx.get(url + "/health", timeout=30).status_code == 200
    closed = 0
    for sock in sockets:  # recv returns b"" once the server has closed the connection
        closed += sock.recv(1024) == b""
        sock.close()
    return {
        "connections": count,
        "all_closed_after_s": time.perf_counter() - started,
        "closed": closed,
        "health_ok_meanwhile": float(health_ok),
    }


def main() -> None:
    parser = common.parser(__doc__, "2,000 messages, 50 connections")
    parser.add_argument("--model", type=Path, default=common.REPO / "models/onnx/model.onnx")
    args = common.parse(parser)
    messages, connections = (2_000, 50) if args.quick else (8_000, 300)
    log = Path(tempfile.mkdtemp(prefix="bardlet-hardening-")) / "server.log"
    server = Server(args.model, "--read-timeout", "2", threads=1, log=log)
    try:
        server.wait_healthy()
        huge = huge_conversation(server.url, messages)
        slow = slow_clients(server.url, server.port, connections)
    finally:
        server.stop()
    rows = [
        ("messages in one request", f"{messages:,} ({huge['body_kb']:.0f} KB)"),
        ("that request, truncation auto", f"{huge['request_s']:.2f} s"),
        (
            "/health meanwhile, median / max",
            f"{huge['health_median_ms']:.0f} / {huge['health_max_ms']:.0f} ms",
        ),
        ("slow connections opened", f"{connections}"),
        (
            "closed by the server after",
            f"{slow['all_closed_after_s']:.1f} s ({slow['closed']:.0f} closed)",
        ),
        ("/health answered while they were open", "yes" if slow["health_ok_meanwhile"] else "no"),
    ]
    print(table(("what", "measured"), rows))
    common.save(args.json, {"huge": huge, "slow": slow})


if __name__ == "__main__":
    main()
