"""Benchmark onnxruntime's CPU attention kernels at one decoding step of the default model's
shape (4 heads of 32, one new token per row), alone in a one-node graph, at 1 thread.

    .venv/bin/python bench/attention.py --json bench/results/attention.json   # ~1 minute
    .venv/bin/python bench/attention.py --quick                                 # ~15 seconds

What a step of the exported graph could use for its attention, side by side in one process,
rounds alternating:

- `onnx-past`: ONNX's Attention (opset 23) with the cache as past_key/past_value: what
  bardlet's graph runs now. It returns present = past + the new key, a copy of the cache.
- `onnx-static`: ONNX's Attention (opset 24) over a cache of fixed length (256) whose first
  `nonpad_kv_seqlen` positions are real: no copy in the operator.
- `scatter-copy` / `scatter-in-place`: ONNX's TensorScatter (opset 24) writing one new position
  into that fixed cache, fed as a plain input (onnxruntime copies the cache) or bound with I/O
  binding to the same buffer as its output (written in place).
- `mha`, `gqa`: onnxruntime's contrib MultiHeadAttention and GroupQueryAttention with past.
- `call-overhead`: an Identity node, for what any `session.run` from Python costs.

Rows of 1 and 16 (the batcher's step), a cache of 128 positions (the static one holds 256).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import common  # bench/common.py: this script's folder is on sys.path
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

HEADS, HEAD_DIM, CACHED, STATIC = 4, 32, 128, 256
WIDTH = HEADS * HEAD_DIM
KINDS = [
    "call-overhead",
    "onnx-past",
    "onnx-static",
    "scatter-copy",
    "scatter-in-place",
    "mha",
    "gqa",
]


def graph(kind: str) -> bytes:
    """A one-node model for `kind`."""
    f32, i64, i32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32

    def value(name: str, dtype: int, shape: list[Any]) -> Any:
        return helper.make_tensor_value_info(name, dtype, shape)

    heads_layout = ["B", HEADS, 1, HEAD_DIM]  # (batch, heads, new tokens, head dim)
    past = ["B", HEADS, "P", HEAD_DIM]
    static = ["B", HEADS, STATIC, HEAD_DIM]
    flat = ["B", 1, WIDTH]  # (batch, new tokens, heads x head dim)
    opset, contrib = 23, False
    if kind == "call-overhead":
        inputs = [value("q", f32, heads_layout)]
        node = helper.make_node("Identity", ["q"], ["y"])
    elif kind == "onnx-past":
        inputs = [value(n, f32, heads_layout) for n in "qkv"] + [
            value(n, f32, past) for n in ("pk", "pv")
        ]
        node = helper.make_node("Attention", ["q", "k", "v", "", "pk", "pv"], ["y", "ok", "ov"])
    elif kind == "onnx-static":
        inputs = [value("q", f32, heads_layout), value("k", f32, static), value("v", f32, static)]
        inputs.append(value("n", i64, ["B"]))
        node = helper.make_node("Attention", ["q", "k", "v", "", "", "", "n"], ["y"])
        opset = 24
    elif kind.startswith("scatter"):
        inputs = [
            value("cache", f32, static),
            value("new", f32, heads_layout),
            value("at", i64, ["B"]),
        ]
        node = helper.make_node("TensorScatter", ["cache", "new", "at"], ["y"], axis=2)
        opset = 24
    elif kind == "mha":
        inputs = [value(n, f32, flat) for n in "qkv"] + [value(n, f32, past) for n in ("pk", "pv")]
        node = helper.make_node(
            "MultiHeadAttention", ["q", "k", "v", "", "", "", "pk", "pv"], ["y", "ok", "ov"],
            domain="com.microsoft", num_heads=HEADS,
        )  # fmt: skip
        contrib = True
    elif kind == "gqa":
        inputs = [value(n, f32, flat) for n in "qkv"] + [value(n, f32, past) for n in ("pk", "pv")]
        inputs += [value("seqlens_k", i32, ["B"]), value("total", i32, [])]
        node = helper.make_node(
            "GroupQueryAttention", ["q", "k", "v", "pk", "pv", "seqlens_k", "total"],
            ["y", "ok", "ov"], domain="com.microsoft", num_heads=HEADS, kv_num_heads=HEADS,
        )  # fmt: skip
        contrib = True
    else:
        raise ValueError(kind)
    outputs = [helper.make_tensor_value_info(n, f32, None) for n in node.output]
    imports = [helper.make_opsetid("", opset)]
    if contrib:
        imports.append(helper.make_opsetid("com.microsoft", 1))
    model = helper.make_model(
        helper.make_graph([node], kind, inputs, outputs), opset_imports=imports
    )
    model.ir_version = 10
    return model.SerializeToString()


def step(kind: str, rows: int) -> Callable[[], None]:
    """One call of `kind`'s graph for `rows` rows, ready to time."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(graph(kind), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)

    def tensor(*shape: int) -> np.ndarray:
        return rng.random(shape, dtype=np.float32)

    one, flat = (rows, HEADS, 1, HEAD_DIM), (rows, 1, WIDTH)
    if kind == "call-overhead":
        feeds = {"q": tensor(*one)}
    elif kind == "onnx-past":
        feeds = {"q": tensor(*one), "k": tensor(*one), "v": tensor(*one)}
        feeds |= {
            "pk": tensor(rows, HEADS, CACHED, HEAD_DIM),
            "pv": tensor(rows, HEADS, CACHED, HEAD_DIM),
        }
    elif kind == "onnx-static":
        feeds = {"q": tensor(*one), "k": tensor(rows, HEADS, STATIC, HEAD_DIM)}
        feeds |= {"v": tensor(rows, HEADS, STATIC, HEAD_DIM), "n": np.full(rows, CACHED + 1)}
    elif kind.startswith("scatter"):
        feeds = {"cache": tensor(rows, HEADS, STATIC, HEAD_DIM), "new": tensor(*one)}
        feeds["at"] = np.full(rows, CACHED, dtype=np.int64)
        if kind == "scatter-in-place":
            cache = ort.OrtValue.ortvalue_from_numpy(feeds.pop("cache"))
            binding = session.io_binding()
            binding.bind_ortvalue_input("cache", cache)
            for name, array in feeds.items():
                binding.bind_cpu_input(name, array)
            binding.bind_ortvalue_output("y", cache)  # the output is the input's buffer
            return lambda: session.run_with_iobinding(binding)
    else:
        feeds = {"q": tensor(*flat), "k": tensor(*flat), "v": tensor(*flat)}
        feeds |= {
            "pk": tensor(rows, HEADS, CACHED, HEAD_DIM),
            "pv": tensor(rows, HEADS, CACHED, HEAD_DIM),
        }
        if kind == "gqa":
            feeds |= {
                "seqlens_k": np.full(rows, CACHED, np.int32),
                "total": np.array(CACHED + 1, np.int32),
            }
    return lambda: session.run(None, feeds)


def main() -> None:
    parser = common.parser(__doc__, "1 round of 100 calls instead of 5 of 300")
    args = common.parse(parser)
    rounds, calls = (1, 100) if args.quick else (5, 300)
    specs = [(kind, rows) for rows in (1, 16) for kind in KINDS]
    ort.set_default_logger_severity(3)  # TensorScatter warns on every copy it makes
    calls_of = {spec: step(*spec) for spec in specs}
    for call in calls_of.values():
        call()  # warm-up

    def run(spec: tuple[str, int]) -> dict[str, float]:
        call = calls_of[spec]
        start = time.perf_counter()
        for _ in range(calls):
            call()
        return {"us": (time.perf_counter() - start) / calls * 1e6}

    def status(spec: tuple[str, int], result: dict[str, float]) -> str:
        return f"{spec[0]:16s} {spec[1]:2d} rows: {result['us']:7.1f} µs"

    rows = []
    for (kind, n), results in common.rounds_of(specs, rounds, run, status):
        best = min(r["us"] for r in results)
        rows.append({"kernel": kind, "rows": n, "us_per_call": best, "us_per_row": best / n})
    columns = [
        ("kernel", "{kernel}"),
        ("rows", "{rows}"),
        ("µs a call (best round)", "{us_per_call:.1f}"),
        ("µs a row", "{us_per_row:.1f}"),
    ]
    print()
    print(common.rows_table(rows, columns, align="lrrr"))
    common.save(
        args.json, {"command": common.command(), "cached": CACHED, "static": STATIC, "rows": rows}
    )


if __name__ == "__main__":
    main()
