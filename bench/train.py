"""Benchmark bardlet's training step against nanoGPT's GPT-2 (`NanoGPT`, written as its model.py).

    .venv/bin/python bench/train.py --json bench/results/train.json   # 10-15 minutes
    .venv/bin/python bench/train.py --quick     # about a minute: 1 thread, few steps, no compile

Whole training steps on CPU in fp32 (forward with loss, backward, clip, AdamW) at params.yaml's
shape and nanoGPT's baby-GPT, each row in its own process once per round (lowest round median),
MFU against the best 2048x2048 fp32 matmul of the same run.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

import common  # bench/common.py: this script's folder is on sys.path
import torch
import torch.nn.functional as F
from torch import nn

from bardlet.config import load_params
from bardlet.model import GPT, GPTConfig
from bardlet.training import loop

REPO = common.REPO
PEAK_SIZE = 2048


@dataclass(frozen=True)
class Shape:
    name: str
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    vocab_size: int
    mlp_ratio: float = 8 / 3

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.block_size


def default_shape() -> Shape:
    params = load_params(REPO / "params.yaml")
    m = params.model
    sizes = (m.n_layer, m.n_head, m.n_embd, m.block_size, params.pretrain.batch_size)
    return Shape("default", *sizes, params.tokenizer.vocab_size, m.mlp_ratio)


BABY_GPT = Shape("baby-GPT", 4, 4, 128, 64, 12, 65)


class NanoGPT(nn.Module):
    """The baseline: GPT-2 the way nanoGPT's model.py writes it (LayerNorm, learned
    positions, one matrix for q, k and v, SDPA with is_causal, a GELU MLP 4x wide, the head
    tied to the embedding, no biases as in its Shakespeare configs), trained by the same loop
    settings as bardlet's model: AdamW with decay on matrices (multi-tensor on the CPU, as
    nanoGPT's configure_optimizers fuses only on CUDA), clip 1.0, fp32."""

    def __init__(self, shape: Shape, dropout: float) -> None:
        super().__init__()
        width = shape.n_embd
        self.n_head, self.dropout = shape.n_head, dropout
        self.tok_emb = nn.Embedding(shape.vocab_size, width)
        self.pos_emb = nn.Embedding(shape.block_size, width)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "ln_1": nn.LayerNorm(width, bias=False),
                    "c_attn": nn.Linear(width, 3 * width, bias=False),
                    "c_proj": nn.Linear(width, width, bias=False),
                    "ln_2": nn.LayerNorm(width, bias=False),
                    "c_fc": nn.Linear(width, 4 * width, bias=False),
                    "mlp_proj": nn.Linear(4 * width, width, bias=False),
                }
            )
            for _ in range(shape.n_layer)
        )
        self.ln_f = nn.LayerNorm(width, bias=False)
        self.head = nn.Linear(width, shape.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight

    def attention(self, block: nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
        batch, time_, width = x.shape
        q, k, v = block["c_attn"](x).split(width, dim=2)
        q, k, v = (t.view(batch, time_, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(batch, time_, width)
        return F.dropout(block["c_proj"](y), drop, self.training)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = F.dropout(self.tok_emb(idx) + self.pos_emb(positions), self.dropout, self.training)
        for block in self.blocks:
            x = x + self.attention(block, block["ln_1"](x))
            hidden = F.gelu(block["c_fc"](block["ln_2"](x)))
            x = x + F.dropout(block["mlp_proj"](hidden), self.dropout, self.training)
        logits = self.head(self.ln_f(x))
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss


def build_model(kind: str, shape: Shape, dropout: float) -> nn.Module:
    if kind == "baseline":
        return NanoGPT(shape, dropout)
    sizes = {k: v for k, v in asdict(shape).items() if k not in ("name", "batch_size")}
    return GPT(GPTConfig(**sizes, dropout=dropout, tie_embeddings=True))


def matmul_params(model: nn.Module) -> int:
    """Parameters that do matmul work: all but position-embedding tables (tied counted once)."""
    total = sum(p.numel() for p in model.parameters())
    pos_emb = getattr(model, "pos_emb", None)
    return total - (pos_emb.weight.numel() if pos_emb is not None else 0)


def max_rss_mb() -> float:
    return common.peak_rss_bytes(inherited=True) / 2**20


def worker(job: dict[str, Any]) -> dict[str, Any]:
    return worker_peak(job["threads"], job["peak"]) if "peak" in job else worker_row(job)


def worker_peak(threads: int, repeats: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    a = torch.randn(PEAK_SIZE, PEAK_SIZE)
    b = torch.randn(PEAK_SIZE, PEAK_SIZE)
    out = torch.empty(PEAK_SIZE, PEAK_SIZE)
    torch.mm(a, b, out=out)  # warm up MKL
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return {"threads": threads, "gflops": 2 * PEAK_SIZE**3 / best / 1e9, "best_s": best}


def worker_row(job: dict[str, Any]) -> dict[str, Any]:
    threads, shape = job["threads"], Shape(**job["shape"])
    torch.set_num_threads(threads)
    rss_import = max_rss_mb()
    torch.manual_seed(0)
    model = build_model(job["kind"], shape, job["dropout"])
    model.train()
    forward = torch.compile(model) if job["compile"] else model
    pretrain = load_params(REPO / "params.yaml").pretrain  # the loop's optimizer and settings
    optimizer = loop.make_optimizer(model, pretrain, torch.device("cpu"))
    if job["fused"]:  # the lever: one fused kernel for every tensor instead of multi-tensor ops
        groups = [{k: v for k, v in g.items() if k != "fused"} for g in optimizer.param_groups]
        optimizer = torch.optim.AdamW(groups, fused=True)
    generator = torch.Generator().manual_seed(0)
    batch_shape = (shape.batch_size, shape.block_size + 1)
    batches = [torch.randint(shape.vocab_size, batch_shape, generator=generator) for _ in range(4)]

    def step(i: int) -> float:
        batch = batches[i % len(batches)]
        _, loss, *_ = forward(batch[:, :-1], batch[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    start = time.perf_counter()
    first_loss = step(0)
    first_step_s = time.perf_counter() - start
    for i in range(1, job["warmup"]):
        step(i)
    times_ms = []
    for i in range(job["iters"]):
        start = time.perf_counter()
        last_loss = step(job["warmup"] + i)
        times_ms.append((time.perf_counter() - start) * 1000)
    n_matmul = matmul_params(model)
    kernels = kernel_times(lambda: step(0), steps=5)
    return {
        "kernel_ms": kernels,
        "params": sum(p.numel() for p in model.parameters()),
        "matmul_params": n_matmul,
        "flops_per_token": 6 * n_matmul + 12 * shape.n_layer * shape.n_embd * shape.block_size,
        "first_step_s": first_step_s,
        "times_ms": times_ms,
        "loss_first": first_loss,
        "loss_last": last_loss,
        "rss_import_mb": rss_import,
        "rss_peak_mb": max_rss_mb(),
    }


def kernel_times(step: Any, steps: int) -> dict[str, float]:
    """ms per step in matrix multiplications and in attention kernels (forward and backward,
    PyTorch's profiler, self time): the floor no rewrite of the other ops can go below."""
    from torch.profiler import profile

    with profile() as prof:
        for _ in range(steps):
            step()
    spent = {"matmul": 0.0, "attention": 0.0, "all": 0.0}
    for event in prof.key_averages():
        ms = event.self_cpu_time_total / 1000 / steps
        spent["all"] += ms
        if event.key in ("aten::mm", "aten::addmm", "aten::bmm"):
            spent["matmul"] += ms
        elif "scaled_dot_product" in event.key:
            spent["attention"] += ms
    return spent


def run_worker(job: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as cache:  # cold compile every time
        env = {"OMP_NUM_THREADS": str(job["threads"]), "TORCHINDUCTOR_CACHE_DIR": cache}
        return common.run_worker(__file__, job, timeout, env)


@dataclass
class RowSpec:
    shape: Shape
    kind: str  # "bardlet" or "baseline"
    threads: int
    compile: bool = False
    dropout: float = 0.0
    fused: bool = False  # fused AdamW on the CPU

    @property
    def label(self) -> str:
        extras = " + torch.compile" * self.compile + " + fused AdamW" * self.fused
        return model_label(self.kind, self.dropout) + extras


def model_label(kind: str, dropout: float) -> str:
    return kind + (f", dropout {dropout}" if dropout else "")


def measure(specs: list[RowSpec], rounds: int, warmup: int, iters: dict[str, int]) -> list[dict]:
    def run(spec: RowSpec) -> dict[str, Any]:
        job = asdict(spec) | {"warmup": warmup + 2 * spec.compile, "iters": iters[spec.shape.name]}
        return run_worker(job, timeout=600 if spec.compile else 900)

    def status(spec: RowSpec, r: dict[str, Any]) -> str:
        result = r.get("error") or f"{statistics.median(r['times_ms']):.1f} ms/iter"
        return f"{spec.shape.name} {spec.label} {spec.threads}T: {result}"

    return [pool(spec, runs) for spec, runs in common.rounds_of(specs, rounds, run, status)]


def pool(spec: RowSpec, runs: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "shape": spec.shape.name,
        "model": spec.label,
        "threads": spec.threads,
        "dropout": spec.dropout,
        "batch": spec.shape.batch_size,
        "context": spec.shape.block_size,
    }
    ok = [r for r in runs if "error" not in r]
    if not ok:
        row["error"] = runs[0]["error"] if runs else "not run"
        return row
    # Other jobs come and go on this machine: a round they disturb is slower as a whole, so
    # the least-disturbed round (lowest median) is the estimate; all rounds stay in the JSON.
    round_medians = [statistics.median(r["times_ms"]) for r in ok]
    ms = min(round_medians)
    row.update(
        params=ok[0]["params"],
        matmul_params=ok[0]["matmul_params"],
        flops_per_token=ok[0]["flops_per_token"],
        ms_per_iter=ms,
        round_medians_ms=round_medians,
        timed_steps_per_round=len(ok[0]["times_ms"]),
        tokens_per_s=spec.shape.tokens_per_step / (ms / 1000),
        rss_peak_mb=max(r["rss_peak_mb"] for r in ok),
        rss_above_import_mb=max(r["rss_peak_mb"] - r["rss_import_mb"] for r in ok),
        kernel_ms=min((r["kernel_ms"] for r in ok), key=lambda k: k["all"]),
        loss_first=ok[0]["loss_first"],
        loss_last=ok[0]["loss_last"],
    )
    if spec.compile:
        row["compile_s"] = statistics.median(r["first_step_s"] - ms / 1000 for r in ok)
    return row


def annotate(rows: list[dict[str, Any]], peaks: dict[int, float]) -> None:
    """Add MFU and the tokens/s ratio to the eager baseline (and eager bardlet for compile)."""
    by_key = {(r["shape"], r["model"], r["threads"]): r for r in rows}
    for row in rows:
        if "error" in row:
            continue
        peak = peaks[row["threads"]]
        row["peak_gflops"] = peak
        row["mfu"] = row["flops_per_token"] * row["tokens_per_s"] / (peak * 1e9)
        refs = [(model_label("baseline", row["dropout"]), "vs_baseline")]
        if row["model"] != "bardlet" and row["model"].startswith("bardlet +"):
            refs.append(("bardlet", "vs_bardlet_eager"))
        for ref_name, key in refs:
            ref = by_key.get((row["shape"], ref_name, row["threads"]))
            if ref is not None and ref is not row and "error" not in ref:
                row[key] = row["tokens_per_s"] / ref["tokens_per_s"]


def markdown(rows: list[dict[str, Any]], shapes: list[Shape], peaks: dict[int, float]) -> str:
    lines = [
        f"- {s.name}: {s.n_layer} layers, {s.n_head} heads, {s.n_embd} wide, context "
        f"{s.block_size}, batch {s.batch_size}, vocab {s.vocab_size} ({s.tokens_per_step} "
        "tokens/step)"
        for s in shapes
    ]
    peak_text = ", ".join(f"{t} thread{'s' * (t > 1)}: {g:.1f}" for t, g in peaks.items())
    lines.append(f"- fp32 matmul peak ({PEAK_SIZE}x{PEAK_SIZE}, best of run), GFLOP/s: {peak_text}")

    def note(row: dict[str, Any]) -> str:
        rounds = row["round_medians_ms"]
        note = ["rounds " + " / ".join(f"{m:.0f}" for m in rounds)] if len(rounds) > 1 else []
        if "compile_s" in row:
            note.append(f"compile {row['compile_s']:.0f} s")
        if "vs_bardlet_eager" in row:
            note.append(f"{row['vs_bardlet_eager']:.2f}x bardlet as it trains")
        return "; ".join(note)

    columns = [
        ("shape", "{shape}"),
        ("model", "{model}"),
        ("threads", "{threads}"),
        ("params", lambda r: f"{r['params'] / 1e6:.3f}M"),
        ("ms/iter", "{ms_per_iter:.1f}"),
        ("tokens/s", "{tokens_per_s:,.0f}"),
        ("MFU", "{mfu:.1%}"),
        ("x baseline", lambda r: f"{r.get('vs_baseline', 1):.2f}x"),
        (
            "matmul + attention ms",
            lambda r: "{matmul:.1f} + {attention:.1f}".format(**r["kernel_ms"]),
        ),
        ("peak RSS MB (+ above import)", "{rss_peak_mb:.0f} (+{rss_above_import_mb:.0f})"),
        ("note", note),
    ]
    ok = [row for row in rows if "error" not in row]
    lines += ["", common.rows_table(ok, columns, align="llrrrrrrrrl"), ""]
    lines += [
        f"{r['shape']} {r['model']} {r['threads']}T failed: {r['error']}"
        for r in rows
        if "error" in r
    ]
    lines += [
        "ms/iter: the lowest of the per-round medians (rounds: each round's median, ms).",
        "FLOPs/token = 6 N + 12 n_layer n_embd context, N = parameters without position "
        "embeddings (tied token embedding once).",
        "matmul + attention ms: time per step inside matrix multiplications and attention "
        "kernels (forward and backward; PyTorch's profiler over 5 more steps, its own overhead "
        "included): what a faster step cannot go below without less arithmetic.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = common.parser(__doc__, "few steps, one round, no compile")
    parser.add_argument("--threads", help="comma-separated thread counts (1,2; quick: 1)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    args = common.parse(parser, worker)

    threads = [int(t) for t in (args.threads or ("1" if args.quick else "1,2")).split(",")]
    shapes = [default_shape(), BABY_GPT]
    trained_dropout = load_params(REPO / "params.yaml").model.dropout
    with_compile = not (args.quick or args.no_compile)
    if args.quick:
        rounds, warmup, iters = 1, 1, {"default": 3, "baby-GPT": 10}
    else:
        rounds, warmup, iters = 2, 2, {"default": 10, "baby-GPT": 40}
    specs = []
    for n in threads:
        for shape in shapes:
            specs += [RowSpec(shape, "bardlet", n), RowSpec(shape, "baseline", n)]
            specs.append(RowSpec(shape, "bardlet", n, fused=True))
            if with_compile and shape.name == "default":
                specs.append(RowSpec(shape, "bardlet", n, compile=True))
            if shape.name == "default" and trained_dropout > 0:
                specs += [
                    RowSpec(shape, "bardlet", n, dropout=trained_dropout),
                    RowSpec(shape, "baseline", n, dropout=trained_dropout),
                ]

    print(f"cpu: {os.cpu_count()} cores, load average {os.getloadavg()}", file=sys.stderr)
    start = time.perf_counter()
    peaks: dict[int, float] = {}
    for n in threads:  # before and after the rows: the best is the peak
        peaks[n] = run_worker({"threads": n, "peak": 5 if args.quick else 20})["gflops"]
    rows = measure(specs, rounds, warmup, iters)
    if not args.quick:
        for n in threads:
            peaks[n] = max(peaks[n], run_worker({"threads": n, "peak": 20})["gflops"])
    annotate(rows, peaks)
    text = markdown(rows, shapes, peaks)
    print(text)
    elapsed = time.perf_counter() - start
    print(f"\n({elapsed:.0f} s; load average {os.getloadavg()})", file=sys.stderr)
    if args.json:
        meta = {
            **common.run_info(),
            "torch": torch.__version__,
            "rounds": rounds,
            "warmup": warmup,
            "iters_per_round": iters,
            "peak_gflops": peaks,
            "flops_formula": "6*N + 12*n_layer*n_embd*context per token; N excludes "
            "position embeddings, counts the tied token embedding once",
            "shapes": [asdict(s) for s in shapes],
            "load_average_end": os.getloadavg(),
            "seconds": elapsed,
        }
        common.save(args.json, {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
