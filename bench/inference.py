"""Benchmark generation: ONNX Runtime with the KV cache vs recomputing the context vs PyTorch,
and the exported graph (ONNX's Attention and RotaryEmbedding operators) beside the graph bardlet
exported before them (the same weights, the cache path traced from PyTorch ops).

    .venv/bin/python bench/inference.py --json bench/results/inference.json   # ~10 minutes
    .venv/bin/python bench/inference.py --quick    # under a minute: 1 thread, 1 round

Greedy generation at batch 1 after a 64-token prompt, each path (PATHS) and thread count in its
own process once per round (lowest round median); the pipeline's chat model, and in a full run
random weights with a 512 context; bits per byte of fp32 and int8 on the validation shards;
and where one step of the chat model's graph spends its time (`step_breakdown`).
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import common  # bench/common.py: this script's folder is on sys.path

REPO = common.REPO
ONNX_DIR = REPO / "models" / "onnx"
PROMPT_TOKENS = 64
ORT_ENV = {"ORT_DISABLE_TELEMETRY": "1"}
PATHS = {
    "onnx-kv": "ONNX fp32, KV cache",
    "onnx-kv-lookup": "ONNX fp32, KV cache, prompt lookup",
    "onnx-traced-kv": "ONNX fp32, KV cache, traced attention (before)",
    "onnx-int8-kv": "ONNX int8, KV cache",
    "onnx-recompute": "ONNX fp32, recompute",
    "torch-kv": "PyTorch eager, KV cache",
}


def max_rss_mb() -> float:
    return common.peak_rss_bytes() / 2**20


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """Load one model on one path, generate `reps` times after a warm-up: TTFT (prompt forward +
    first token), ms/token ((total - TTFT) / (new tokens - 1)), RSS (the process's own)."""
    path, threads, prompt, new = job["path"], job["threads"], job["prompt"], job["new_tokens"]
    started = time.perf_counter()
    if path == "torch-kv":
        import torch

        from bardlet.training import checkpoint

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        rss_import = max_rss_mb()
        model, _ = checkpoint.load(Path(job["torch_dir"]))

        def tokens() -> Iterator[int]:
            with torch.inference_mode():
                ids, past = torch.tensor([prompt]), None
                for _ in range(new):
                    logits, _, past = model(ids, past=past)
                    token = int(logits[0, -1].argmax())
                    yield token
                    ids = torch.tensor([[token]])

    else:
        import numpy as np

        from bardlet.runtime.sampling import Sampling
        from bardlet.runtime.session import LOOKUP_TOKENS, OnnxLM

        rss_import = max_rss_mb()
        graph = {"onnx-int8-kv": "onnx_int8", "onnx-traced-kv": "onnx_traced"}.get(path, "onnx")
        # Guessed tokens only on the lookup paths: the others are one token a pass.
        lm = OnnxLM(
            job[graph], threads=threads, lookup_tokens=LOOKUP_TOKENS if "lookup" in path else 0
        )
        greedy = Sampling(temperature=0)

        def tokens() -> Iterator[int]:
            if path != "onnx-recompute":
                yield from lm.stream(prompt, new, greedy)
                return
            ids, empty = list(prompt), lm.empty_cache(1)
            for _ in range(new):
                logits, _ = lm.forward(np.array([ids]), empty)
                ids.append(int(np.argmax(logits[0, -1])))
                yield ids[-1]

    def generate() -> tuple[list[int], float]:
        """The tokens, and the seconds to the first."""
        start = time.perf_counter()
        out: list[int] = []
        first = 0.0
        for token in tokens():
            if not out:
                first = time.perf_counter() - start
            out.append(token)
        return out, first

    rss_loaded = max_rss_mb()
    load_s = time.perf_counter() - started
    generated, _ = generate()  # warm-up: first-run allocations, thread pools
    totals, firsts = [], []
    for _ in range(job["reps"]):
        start = time.perf_counter()
        again, first = generate()
        totals.append(time.perf_counter() - start)
        firsts.append(first)
        assert again == generated, "greedy generation is not deterministic"
    assert len(generated) == new, f"{len(generated)} tokens, expected {new}"
    decode = [(t - f) / (new - 1) for t, f in zip(totals, firsts, strict=True)]
    return {
        "ttft_ms": statistics.median(firsts) * 1e3,
        "ms_per_token": statistics.median(decode) * 1e3,
        "total_s": statistics.median(totals),
        "load_s": load_s,
        "rss_import_mb": rss_import,
        "rss_loaded_mb": rss_loaded,
        "peak_rss_mb": max_rss_mb(),
        "tokens": generated,
    }


def export_traced(model: Any, path: Path, like: Path) -> None:
    """The graph as bardlet exported it before ONNX's Attention and RotaryEmbedding operators:
    the cache path as PyTorch ops (rotary as multiply-adds, SDPA with a mask), traced by the
    TorchScript exporter at opset 17, with `like`'s metadata. The peer of `onnx-kv`."""
    import onnx
    import torch
    import torch.nn.functional as F

    from bardlet import model as model_module
    from bardlet.export import _WithFlatCache, cache_names

    def traced_attention(self, q, k, v, rope, past, attend):  # type: ignore[no-untyped-def]
        batch, time_, channels = q.shape
        q = q.view(batch, time_, self.n_head, self.head_dim).transpose(1, 2)
        k, v = (t.view(batch, time_, self.n_kv_head, self.head_dim).transpose(1, 2) for t in (k, v))
        if self.rotary:
            cos = torch.cat([rope.cos, rope.cos], -1)[rope.positions].unsqueeze(1)
            sin = torch.cat([rope.sin, rope.sin], -1)[rope.positions].unsqueeze(1)
            q, k = model_module.apply_rotary(q, cos, sin), model_module.apply_rotary(k, cos, sin)
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        scale = self.head_dim**-0.5
        y = F.scaled_dot_product_attention(q, *self.share(k, v), attn_mask=attend, scale=scale)
        return self.proj(y.transpose(1, 2).reshape(batch, time_, channels)), (k, v)

    config = model.config
    inputs, outputs = cache_names(config.n_layer, "past"), cache_names(config.n_layer, "present")
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"}}
    axes |= {"logits": {0: "batch", 1: "seq"}} | {n: {0: "batch", 2: "past"} for n in inputs}
    axes |= {n: {0: "batch", 2: "total"} for n in outputs}
    dummy = (torch.zeros((1, 3), dtype=torch.long), torch.ones((1, 5), dtype=torch.long))
    dummy += tuple(torch.zeros(1, config.kv_heads, 2, config.head_dim) for _ in inputs)
    original = model_module.Attention.with_cache
    model_module.Attention.with_cache = traced_attention  # type: ignore[method-assign]
    try:
        torch.onnx.export(
            _WithFlatCache(model.eval()), dummy, str(path), input_names=[
                "input_ids", "attention_mask", *inputs
            ], output_names=["logits", *outputs], dynamic_axes=axes, opset_version=17,
            dynamo=False,
        )  # fmt: skip
    finally:
        model_module.Attention.with_cache = original  # type: ignore[method-assign]
    proto = onnx.load(str(path))
    proto.metadata_props.extend(onnx.load(str(like)).metadata_props)
    onnx.save(proto, str(path))


def prepare_models(work: Path, wide: bool) -> list[dict[str, Any]]:
    """The models to time: the pipeline's chat model, and optionally a random 512-context one."""
    from bardlet.export import export_onnx, quantize_int8
    from bardlet.tokenizer import Tokenizer
    from bardlet.training import checkpoint

    def model(name: str, folder: Path, torch_dir: Path, block_size: int) -> dict[str, Any]:
        """An entry for the folder that holds model.onnx: copies bpe.json, adds the int8 copy
        and the traced graph of the same weights."""
        shutil.copy(ONNX_DIR / "bpe.json", folder / "bpe.json")
        quantize_int8(folder / "model.onnx", folder / "model.int8.onnx")
        gpt, _ = checkpoint.load(torch_dir)
        export_traced(gpt, folder / "model.traced.onnx", like=folder / "model.onnx")
        return {
            "name": name,
            "onnx": str(folder / "model.onnx"),
            "onnx_int8": str(folder / "model.int8.onnx"),
            "onnx_traced": str(folder / "model.traced.onnx"),
            "torch_dir": str(torch_dir),
            "block_size": block_size,
            "nodes": {kind: graph_nodes(folder / f"model{kind}.onnx") for kind in ("", ".traced")},
        }

    (work / "chat").mkdir()
    shutil.copy(ONNX_DIR / "model.onnx", work / "chat" / "model.onnx")
    models = [model("chat", work / "chat", REPO / "models" / "chat", 256)]
    if wide:
        import torch

        from bardlet.config import load_params
        from bardlet.model import GPT, GPTConfig

        tokenizer = Tokenizer.load(ONNX_DIR / "bpe.json")
        shape = load_params(REPO / "params.yaml").model.model_dump() | {"block_size": 512}
        torch.manual_seed(0)
        gpt = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, **shape | {"dropout": 0.0})).eval()
        meta = {"tokenizer_hash": tokenizer.hash}
        checkpoint.save(gpt, work / "wide" / "torch", meta)
        export_onnx(gpt, work / "wide" / "model.onnx", 23, meta)
        models.append(model("wide-512", work / "wide", work / "wide" / "torch", 512))
    return models


def graph_nodes(path: Path) -> int:
    """Nodes of the graph onnxruntime runs, after its own fusions."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return len(onnx.load(options.optimized_model_filepath).graph.node)


def step_breakdown(path: str, repeats: int) -> dict[str, Any]:
    """Where one decoding step's time goes, in this process at 1 thread: the graph alone
    (a token per row in, logits out, random cache) at several cache lengths, so the fixed cost
    and the cost per cached position show apart, for 16 rows at once (the batcher's step) and
    for several new positions in one row (a pass that checks prompt lookup's guesses);
    each operator type's share of kernel time in onnxruntime's profiler at a cache of 128, for
    1 row and for 16; and the fp32 weights a step reads (the MatMuls stream them all, so
    bytes / step time is the memory bandwidth they need)."""
    import json

    import numpy as np
    import onnx
    import onnxruntime as ort

    from bardlet.export import cache_names
    from bardlet.runtime.session import OnnxLM, session_options

    lm = OnnxLM(path, threads=1)
    past_names = cache_names(lm.n_layer, "past")

    def feeds(cached: int, rows: int = 1, positions: int = 1) -> dict[str, np.ndarray]:
        shape = (rows, lm.cache_heads, cached, lm.head_dim)
        rng = np.random.default_rng(0)
        out = {n: rng.random(shape, dtype=np.float32) for n in past_names}
        out["input_ids"] = np.full((rows, positions), 7, dtype=np.int64)
        out["attention_mask"] = np.ones((rows, cached + positions), dtype=np.int64)
        return out

    def step_us(inputs: dict[str, np.ndarray]) -> float:
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(repeats):
                lm.session.run(["logits"], inputs)
            best = min(best, (time.perf_counter() - start) / repeats)
        return best * 1e6

    def kernel_shares(inputs: dict[str, np.ndarray]) -> dict[str, float]:
        options = session_options(1)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "bardlet-ort-profile")
        profiled = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        for _ in range(repeats):
            profiled.run(["logits"], inputs)
        trace = profiled.end_profiling()
        kernel_us: dict[str, float] = {}
        with open(trace) as file:
            for event in json.load(file):
                if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                    op = event["args"]["op_name"]
                    kernel_us[op] = kernel_us.get(op, 0.0) + event["dur"]
        os.remove(trace)
        total = sum(kernel_us.values())
        return {op: us / total for op, us in sorted(kernel_us.items(), key=lambda kv: -kv[1])}

    caches = (1, 64, 128, min(255, lm.block_size - 1))
    weights = onnx.load(path).graph.initializer
    return {
        "us_by_cache": {cached: step_us(feeds(cached)) for cached in caches},
        "us_16_rows_cache_128": step_us(feeds(128, rows=16)),
        # A pass that checks guessed tokens (prompt lookup): 1 row, several new positions.
        "us_by_positions_cache_128": {n: step_us(feeds(128, positions=n)) for n in (1, 3, 5, 9)},
        "kernel_share": kernel_shares(feeds(128)),
        "kernel_share_16_rows": kernel_shares(feeds(128, rows=16)),
        "weight_bytes": sum(
            4 * int(np.prod(w.dims)) for w in weights if len(w.dims) == 2 and w.data_type == 1
        ),
    }


def lookup_spread(path: str, rounds: int) -> list[dict[str, Any]]:
    """Prompt lookup beyond the one prompt: greedy, 192 new tokens after each of 10 prompts
    (64 tokens each, every 6,000 characters of the validation text), one token a pass and
    with guesses, alternating, 1 thread; the best round of each. How much it gains depends on
    how often the reply repeats earlier text, so this is the spread over different texts."""
    from bardlet.runtime.sampling import Sampling
    from bardlet.runtime.session import OnnxLM
    from bardlet.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(ONNX_DIR / "bpe.json")
    text = (REPO / "data" / "prepared" / "corpus" / "tinyshakespeare" / "val.txt").read_text()
    bos = tokenizer.special_id("<|bos|>")
    prompts = [
        [bos, *tokenizer.encode(text[at : at + 1500])[: PROMPT_TOKENS - 1]]
        for at in range(0, 60_000, 6_000)
    ]
    lms = {k: OnnxLM(path, threads=1, lookup_tokens=k) for k in (0, 8)}
    greedy = Sampling(temperature=0)
    seconds: dict[tuple[int, int], float] = {}
    passes: dict[int, int] = {}
    replies: dict[tuple[int, int], list[int]] = {}
    for _ in range(rounds):
        for i, prompt in enumerate(prompts):
            for k, lm in lms.items():
                forward, fed = lm.forward, []
                lm.forward = lambda ids, past, f=forward, n=fed: n.append(1) or f(ids, past)  # type: ignore[method-assign]
                start = time.perf_counter()
                replies[(i, k)] = list(lm.stream(prompt, 192, greedy))
                took = time.perf_counter() - start
                lm.forward = forward  # type: ignore[method-assign]
                seconds[(i, k)] = min(seconds.get((i, k), float("inf")), took)
                passes[i] = len(fed) if k else passes.get(i, 0)
    rows = []
    for i in range(len(prompts)):
        made = len(replies[(i, 0)])
        rows.append(
            {
                "prompt": i,
                "new_tokens": made,
                "plain_tokens_per_s": made / seconds[(i, 0)],
                "lookup_tokens_per_s": made / seconds[(i, 8)],
                "speedup": seconds[(i, 0)] / seconds[(i, 8)],
                "tokens_per_pass": made / passes[i],
                "same_reply": replies[(i, 0)] == replies[(i, 8)],
            }
        )
    total = {k: sum(seconds[(i, k)] for i in range(len(prompts))) for k in (0, 8)}
    made = sum(r["new_tokens"] for r in rows)
    rows.append(
        {
            "prompt": "all",
            "new_tokens": made,
            "plain_tokens_per_s": made / total[0],
            "lookup_tokens_per_s": made / total[8],
            "speedup": total[0] / total[8],
            "tokens_per_pass": made / sum(passes.values()),
            "same_reply": all(r["same_reply"] for r in rows),
        }
    )
    return rows


def make_prompt() -> list[int]:
    """<|bos|> + the first 63 tokens of Tiny Shakespeare's validation text."""
    from bardlet.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(ONNX_DIR / "bpe.json")
    source = REPO / "data" / "prepared" / "corpus" / "tinyshakespeare" / "val.txt"
    text = (
        source.read_text(encoding="utf-8")[:2000]
        if source.exists()
        else "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20
    )
    ids = tokenizer.encode(text)[: PROMPT_TOKENS - 1]
    return [tokenizer.special_id("<|bos|>"), *ids]


def quality(models: dict[str, Any], max_batches: int | None) -> dict[str, Any]:
    """Bits per byte of fp32 and int8 graphs on the validation shards."""
    import numpy as np

    from bardlet.data.loaders import PackedConversations, TokenWindows
    from bardlet.data.shards import read_tokens
    from bardlet.runtime.evaluate import measure_onnx_bpb
    from bardlet.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(ONNX_DIR / "bpe.json")
    lengths = np.array(tokenizer.byte_lengths())
    shards = REPO / "data" / "shards"
    if not (shards / "pretrain" / "val").exists():
        return {"skipped": "no data/shards: run the pipeline first"}
    tokens = read_tokens(shards / "pretrain" / "val", tokenizer.hash)[0]
    sets = {
        "shakespeare": lambda: TokenWindows(tokens, 256, 16, 0).sequential(),
        "oasst": lambda: PackedConversations.from_split(
            shards / "sft" / "val", tokenizer, 256, 16, 0
        ).sequential(),
    }
    out: dict[str, Any] = {}
    for name, batches in sets.items():
        fp32, int8 = (
            measure_onnx_bpb(models[graph], batches(), lengths, max_batches=max_batches)
            for graph in ("onnx", "onnx_int8")
        )
        out[name] = {
            "fp32_bpb": fp32["bpb"],
            "int8_bpb": int8["bpb"],
            "int8_bpb_delta_percent": 100 * (int8["bpb"] / fp32["bpb"] - 1),
            "tokens": fp32["tokens"],
        }
    return out


def measure(
    models: list[dict[str, Any]], threads: list[int], rounds: int, reps: int, prompt: list[int]
) -> list[dict[str, Any]]:
    specs = [(m, p, t) for m in models for t in threads for p in PATHS]

    def run(spec: tuple[dict[str, Any], str, int]) -> dict[str, Any]:
        model, path, t = spec
        new = min(256, model["block_size"] - len(prompt))
        job = {**model, "path": path, "threads": t, "prompt": prompt, "new_tokens": new}
        result = common.run_worker(__file__, job | {"reps": reps}, 900, ORT_ENV)
        if "error" in result:
            raise RuntimeError(f"worker {path} failed: {result['error']}")
        return result

    def status(spec: tuple[dict[str, Any], str, int], r: dict[str, Any]) -> str:
        return (
            f"{spec[0]['name']:8s} {spec[1]:15s} {spec[2]}t: {r['ms_per_token']:7.3f} ms/token, "
            f"TTFT {r['ttft_ms']:7.2f} ms, peak {r['peak_rss_mb']:.0f} MB"
        )

    found = common.rounds_of(specs, rounds, run, status)
    runs = {(m["name"], p, t): results for (m, p, t), results in found}
    rows = []
    for model, path, t in specs:
        results = runs[(model["name"], path, t)]
        best = min(results, key=lambda x: x["ms_per_token"])
        # Greedy agreement with the fp32 KV path (one token a pass) of the same model and
        # thread count.
        ref = min(runs[(model["name"], "onnx-kv", t)], key=lambda x: x["ms_per_token"])
        pairs = list(zip(best["tokens"], ref["tokens"], strict=True))
        rows.append(
            {
                "model": model["name"],
                "path": path,
                "threads": t,
                "prompt_tokens": len(prompt),
                "new_tokens": len(best["tokens"]),
                "ms_per_token": best["ms_per_token"],
                "tokens_per_s": 1e3 / best["ms_per_token"],
                "ttft_ms": min(x["ttft_ms"] for x in results),
                "total_s": min(x["total_s"] for x in results),
                "peak_rss_mb": max(x["peak_rss_mb"] for x in results),
                "rss_import_mb": best["rss_import_mb"],
                "rss_loaded_mb": best["rss_loaded_mb"],
                "rounds": [{k: v for k, v in x.items() if k != "tokens"} for x in results],
                "same_tokens_as_onnx_kv": sum(a == b for a, b in pairs) / len(pairs),
                "first_divergence": next((i for i, (a, b) in enumerate(pairs) if a != b), None),
            }
        )
    return rows


def speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's three targets, per model and thread count."""
    out = []
    for model in sorted({r["model"] for r in rows}):
        for t in sorted({r["threads"] for r in rows}):
            by = {r["path"]: r for r in rows if r["model"] == model and r["threads"] == t}
            if len(by) < len(PATHS):
                continue
            kv, int8 = by["onnx-kv"], by["onnx-int8-kv"]
            out.append(
                {
                    "model": model,
                    "threads": t,
                    "kv_vs_recompute_total": by["onnx-recompute"]["total_s"] / kv["total_s"],
                    "kv_vs_recompute_per_token": by["onnx-recompute"]["ms_per_token"]
                    / kv["ms_per_token"],
                    "onnx_vs_torch_per_token": by["torch-kv"]["ms_per_token"] / kv["ms_per_token"],
                    "vs_traced_per_token": by["onnx-traced-kv"]["ms_per_token"]
                    / kv["ms_per_token"],
                    "int8_vs_fp32_per_token": kv["ms_per_token"] / int8["ms_per_token"],
                    "int8_vs_fp32_total": kv["total_s"] / int8["total_s"],
                    "lookup_vs_plain_per_token": kv["ms_per_token"]
                    / by["onnx-kv-lookup"]["ms_per_token"],
                }
            )
    return out


def markdown(result: dict[str, Any]) -> str:
    runs = [
        ("model", "{model}"),
        ("path", lambda r: PATHS[r["path"]]),
        ("threads", "{threads}"),
        ("new tokens", "{new_tokens}"),
        ("ms/token", "{ms_per_token:.2f}"),
        ("tokens/s", "{tokens_per_s:.0f}"),
        ("TTFT ms", "{ttft_ms:.1f}"),
        ("total s", "{total_s:.2f}"),
        ("peak RSS MB", "{peak_rss_mb:.0f}"),
        ("greedy = fp32 KV", lambda r: f"{100 * r['same_tokens_as_onnx_kv']:.0f}%"),
    ]
    speeds = [
        ("model", "{model}"),
        ("threads", "{threads}"),
        ("prompt lookup vs one token a pass", "{lookup_vs_plain_per_token:.2f}x"),
        ("ONNX operators vs traced (per token)", "{vs_traced_per_token:.2f}x"),
        ("KV vs recompute (total)", "{kv_vs_recompute_total:.1f}x"),
        ("ONNX vs PyTorch (per token)", "{onnx_vs_torch_per_token:.2f}x"),
        ("int8 vs fp32 (per token)", "{int8_vs_fp32_per_token:.2f}x"),
    ]
    graphs = [
        ("model", "{name}"),
        ("graph nodes, ONNX operators", lambda m: str(m["nodes"][""])),
        ("graph nodes, traced (before)", lambda m: str(m["nodes"][".traced"])),
    ]
    tables = [
        common.rows_table(result["models"], graphs, align="lrr"),
        common.rows_table(result["rows"], runs, align="llr"),
        common.rows_table(result["speedups"], speeds, align="lr"),
    ]
    q = result.get("quality", {})
    if q and "skipped" not in q:
        columns = [
            ("val set (chat model)", "{name}"),
            ("fp32 bpb", "{fp32_bpb:.4f}"),
            ("int8 bpb", "{int8_bpb:.4f}"),
            ("delta", "{int8_bpb_delta_percent:+.3f}%"),
        ]
        sets = [{"name": name, **v} for name, v in q.items()]
        tables.append(common.rows_table(sets, columns, align="lr"))
    if "step_breakdown" in result:
        tables.append(breakdown_table(result["step_breakdown"]))
    if "lookup_spread" in result:
        columns = [
            ("prompt (greedy, 1 thread)", "{prompt}"),
            ("new tokens", "{new_tokens}"),
            ("tokens/s, one a pass", "{plain_tokens_per_s:.0f}"),
            ("tokens/s, prompt lookup", "{lookup_tokens_per_s:.0f}"),
            ("speedup", "{speedup:.2f}x"),
            ("tokens a pass", "{tokens_per_pass:.2f}"),
            ("same reply", "{same_reply}"),
        ]
        tables.append(common.rows_table(result["lookup_spread"], columns, align="lr"))
    return "\n\n".join(tables)


def breakdown_table(found: dict[str, Any]) -> str:
    """The chat model's step, graph alone at 1 thread: µs at each cache length, the biggest
    operator types' shares, the bandwidth the weights need, and the same for 16 rows."""
    by_cache = {int(k): v for k, v in found["us_by_cache"].items()}
    first, last = min(by_cache), max(by_cache)
    rows = [{"what": f"1 row, cache of {k}", "value": f"{v:.0f} µs"} for k, v in by_cache.items()]
    slope = (by_cache[last] - by_cache[first]) / (last - first)
    rows.append({"what": "each cached position adds", "value": f"{slope:.2f} µs"})
    rows.append(
        {"what": "fp32 weights a step reads", "value": f"{found['weight_bytes'] / 1e6:.1f} MB"}
    )
    gbps = found["weight_bytes"] / (by_cache[first] * 1e-6) / 1e9
    rows.append({"what": "weights ÷ the step at a cache of 1", "value": f"{gbps:.0f} GB/s"})
    for op, share in list(found["kernel_share"].items())[:6]:
        rows.append({"what": f"{op}, share of kernel time (1 row)", "value": f"{share:.0%}"})
    for n, us in found.get("us_by_positions_cache_128", {}).items():
        if int(n) > 1:
            rows.append(
                {"what": f"1 row, {n} new positions, cache of 128", "value": f"{us:.0f} µs"}
            )
    batched = found["us_16_rows_cache_128"]
    rows.append({"what": "16 rows, cache of 128", "value": f"{batched:.0f} µs"})
    rows.append({"what": "16 rows: per row", "value": f"{batched / 16:.0f} µs"})
    for op, share in list(found["kernel_share_16_rows"].items())[:3]:
        rows.append({"what": f"{op}, share of kernel time (16 rows)", "value": f"{share:.0%}"})
    return common.rows_table(rows, [("chat model, one step", "{what}"), ("", "{value}")], "lr")


def main() -> None:
    parser = common.parser(__doc__, "1 thread, 1 round (< 1 minute)")
    parser.add_argument("--rounds", type=int, help="rounds (default 3; quick: 1)")
    parser.add_argument("--reps", type=int, help="repetitions per run (default 3; quick: 1)")
    parser.add_argument("--threads", type=int, nargs="+", help="default 1 2 (quick: 1)")
    args = common.parse(parser, worker)
    common.require(REPO, "models/onnx/model.onnx", "models/chat/model.safetensors")
    rounds = args.rounds or (1 if args.quick else 3)
    reps = args.reps or (1 if args.quick else 3)
    threads = args.threads or ([1] if args.quick else [1, 2])
    started = time.time()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bardlet-bench-") as tmp:
        models = prepare_models(Path(tmp), wide=not args.quick)
        prompt = make_prompt()
        print(f"prompt: {len(prompt)} tokens; rows: {len(models) * len(threads) * len(PATHS)}")
        rows = measure(models, threads, rounds, reps, prompt)
        print("quality: bits per byte, fp32 vs int8", flush=True)
        quality_result = quality(models[0], max_batches=2 if args.quick else None)
        print("a step's time: the graph alone, and by operator", flush=True)
        breakdown = step_breakdown(models[0]["onnx"], 100 if args.quick else 300)
        print("prompt lookup over 10 prompts", flush=True)
        spread = lookup_spread(models[0]["onnx"], 1 if args.quick else 3)
    import numpy
    import onnxruntime
    import torch

    result = {
        "command": common.command(),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "settings": {"rounds": rounds, "reps": reps, "threads": threads, "batch": 1},
        "seconds": time.time() - started,
        "models": [{"name": m["name"], "nodes": m["nodes"]} for m in models],
        "rows": rows,
        "speedups": speedups(rows),
        "quality": quality_result,
        "step_breakdown": breakdown,
        "lookup_spread": spread,
    }
    print()
    print(markdown(result))
    print(f"\n{result['seconds']:.0f} s; load average {load_before} -> {os.getloadavg()}")
    common.save(args.json, result)


if __name__ == "__main__":
    main()
