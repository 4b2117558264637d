"""The chatbot in a browser: the web stage's page in headless Chromium (onnxruntime-web,
WebAssembly) beside the Python runtime (onnxruntime), on the same model and prompt.

    .venv/bin/python bench/web.py --root PROJECT --json bench/results/web.json   # ~1 minute
    .venv/bin/python bench/web.py --root PROJECT --quick                        # ~20 s

PROJECT is a folder after `make pipeline` (its models/web and models/onnx). models/web is
served on loopback with the cross-origin isolation headers (COOP/COEP) that WebAssembly
threads need. Greedy decoding of NEW tokens after a PROMPT-token prompt, stop tokens ignored;
each row once per round, rounds alternating in order, the best round reported. Also: the time
from opening the page to a loaded model, and the size of models/web.
"""

from __future__ import annotations

import functools
import http.server
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import common  # bench/common.py: this script's folder is on sys.path

PROMPT, NEW = 64, 128
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"]


class IsolatedHandler(http.server.SimpleHTTPRequestHandler):
    """A static server whose pages are cross-origin isolated: WebAssembly may use threads."""

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, *args: Any) -> None:
        pass


GENERATE = """async ([prompt, count]) => {
    const model = window.bardlet.model;
    const ids = [];
    const started = performance.now();
    for await (const id of model.generate(prompt, count, {stops: new Set()})) ids.push(id);
    return [ids, (performance.now() - started) / 1000];
}"""


def main() -> None:
    parser = common.parser(__doc__ or "", "1 round, 32 new tokens")
    parser.add_argument(
        "--root", type=Path, default=common.REPO, help="a project after make pipeline"
    )
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = common.parse(parser)
    web = args.root.resolve() / "models/web"
    common.require(args.root, "models/web/model.json")
    sys.path.insert(0, str(common.REPO))
    from playwright.sync_api import sync_playwright

    from bardlet.runtime.sampling import Sampling
    from bardlet.runtime.session import OnnxLM

    rounds, new = (1, 32) if args.quick else (3, NEW)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(IsolatedHandler, directory=str(web))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    lms = {n: OnnxLM(args.root.resolve() / "models/onnx/model.onnx", threads=n) for n in (1, 2)}
    text = (common.REPO / "docs/walkthrough.md").read_text(encoding="utf-8")
    prompt = [lms[1].tokenizer.special_id("<|bos|>"), *lms[1].tokenizer.encode(text)[: PROMPT - 1]]
    greedy = Sampling(temperature=0)
    expected = list(lms[1].stream(prompt, new, greedy))
    runs: dict[str, list[dict[str, Any]]] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        pages = {}
        for threads in (1, 2):
            page = browser.new_context().new_page()
            opened = time.perf_counter()
            page.goto(f"{url}/?threads={threads}")
            page.wait_for_function("window.bardlet !== undefined", timeout=120_000)
            loaded = time.perf_counter() - opened
            assert page.evaluate("self.crossOriginIsolated"), (
                "the page is not cross-origin isolated"
            )
            pages[threads] = (page, loaded)

        def browser_row(threads: int) -> dict[str, Any]:
            ids, seconds = pages[threads][0].evaluate(GENERATE, [prompt, new])
            return {"tokens": len(ids), "seconds": seconds, "same_tokens": ids == expected}

        def python_row(threads: int) -> dict[str, Any]:
            started = time.perf_counter()
            ids = list(lms[threads].stream(prompt, new, greedy))
            return {
                "tokens": len(ids),
                "seconds": time.perf_counter() - started,
                "same_tokens": True,
            }

        rows = [("browser", 1), ("browser", 2), ("python", 1), ("python", 2)]
        for r in range(rounds):
            for where, threads in rows if r % 2 == 0 else rows[::-1]:
                run = (browser_row if where == "browser" else python_row)(threads)
                runs.setdefault(f"{where}-{threads}", []).append(run)
        browser.close()
    server.shutdown()

    table = []
    for where, threads in rows:
        done = runs[f"{where}-{threads}"]
        best = min(done, key=lambda run: run["seconds"])
        table.append(
            {
                "runtime": "onnxruntime-web (WebAssembly, Chromium)"
                if where == "browser"
                else "onnxruntime (Python)",
                "threads": threads,
                "tokens": best["tokens"],
                "tokens_per_s": round(best["tokens"] / best["seconds"], 1),
                "median_tokens_per_s": round(
                    statistics.median(run["tokens"] / run["seconds"] for run in done), 1
                ),
                "same_tokens_as_python": all(run["same_tokens"] for run in done),
            }
        )
    size = sum(p.stat().st_size for p in web.rglob("*") if p.is_file())
    loads = {threads: round(loaded, 2) for threads, (_, loaded) in pages.items()}
    print(common.rows_table(table, [
        ("runtime", "{runtime}"), ("threads", "{threads}"), ("new tokens", "{tokens}"),
        ("tokens/s (best)", "{tokens_per_s:.0f}"), ("tokens/s (median)", "{median_tokens_per_s:.0f}"),
        ("greedy = Python", "{same_tokens_as_python}"),
    ]))  # fmt: skip
    print(f"\nopen the page to a loaded model: {loads[1]} s (1 thread), {loads[2]} s (2 threads)")
    print(f"models/web: {size / 1e6:.1f} MB")
    meta = {**common.run_info(), "prompt_tokens": PROMPT, "new_tokens": new, "rounds": rounds}
    output = {"meta": meta, "rows": table, "load_seconds": loads, "web_bytes": size, "runs": runs}
    common.save(args.json, output)


if __name__ == "__main__":
    main()
