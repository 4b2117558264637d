"""LoRA adapters against full fine-tuning, on the pipeline's own base model and chat data.

    .venv/bin/python bench/lora.py --json bench/results/lora.json   # about 25 minutes here
    .venv/bin/python bench/lora.py --quick          # under a minute: 8 steps, one round
    .venv/bin/python bench/lora.py --root ../other-clone --runs full lora-8

Each run of RUNS is the sft stage's training with its LoRA rank (and learning rate), in its own
process: bits per byte as the evaluate stage scores, trainable parameters, ms/step, RSS, file.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common  # bench/common.py: this script's folder is on sys.path

from bardlet.markdown import fmt_bytes


@dataclass(frozen=True)
class Run:
    name: str
    rank: int  # 0 = full fine-tuning
    learning_rate: float | None = None  # None: params.yaml's sft.learning_rate


RUNS = [
    Run("full", 0),
    Run("lora-4", 4),
    Run("lora-8", 8),
    Run("lora-16", 16),
    Run("lora-8-lr-3e-3", 8, 3e-3),
    Run("lora-8-lr-1e-2", 8, 1e-2),
]


class TimedBatches:
    """The training batches, with the time each is asked for: one step apart (grad_accum 1)."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.times: list[float] = []

    def batch(self, step: int) -> Any:
        self.times.append(time.perf_counter())
        return self.source.batch(step)


def worker(job: dict[str, Any]) -> dict[str, Any]:
    import stages  # noqa: F401  (before torch: pins the CPU kernels, as every stage does)

    # isort: split
    import numpy as np
    import torch
    from safetensors.torch import save_model

    from bardlet.config import load_params
    from bardlet.data.loaders import PackedConversations, TokenWindows
    from bardlet.data.shards import read_split, rows_as_arrays
    from bardlet.evaluation import measure
    from bardlet.tokenizer import Tokenizer
    from bardlet.training import checkpoint, lora
    from bardlet.training.loop import train

    root = Path(job["root"])
    torch.set_num_threads(job["threads"])
    params = load_params(root / "params.yaml").sft
    changes: dict[str, Any] = {"threads": job["threads"], **job["overrides"]}
    if job["learning_rate"] is not None:
        changes["learning_rate"] = job["learning_rate"]
    settings = params.model_copy(update=changes)
    lora_settings = settings.lora.model_copy(update={"rank": job["rank"]})

    tokenizer = Tokenizer.load(root / "models/tokenizer/bpe.json")
    lengths = np.array(tokenizer.byte_lengths())
    model, _ = checkpoint.load(root / "models/base")
    block = model.config.block_size
    shards = root / "data/shards"
    train_data, val_data = (
        PackedConversations.from_split(
            shards / "sft" / split, tokenizer, block, settings.batch_size, settings.seed
        )
        for split in ("train", "val")
    )
    val_batches = list(val_data.sequential())[: settings.eval_batches]
    rss_setup = common.peak_rss_bytes(inherited=True) / 2**20

    if job["rank"]:
        lora.add_adapters(model, lora_settings, settings.seed)
    trainable = lora.trainable_params(model)
    timed = TimedBatches(train_data)
    started = time.perf_counter()
    result = train(model, timed, val_batches, settings, lengths, log=lambda _line: None)
    train_seconds = time.perf_counter() - started
    rss_peak = common.peak_rss_bytes(inherited=True) / 2**20

    kept = lora.merge(model) if job["rank"] else model
    with tempfile.TemporaryDirectory() as folder:
        if job["rank"]:
            files = lora.adapter_files(model, lora_settings, "not-measured")
            file_bytes = len(files[lora.ADAPTER])
        else:
            save_model(kept, f"{folder}/model.safetensors")
            file_bytes = os.path.getsize(f"{folder}/model.safetensors")
    # As the evaluate stage scores models/chat.
    chats = PackedConversations.from_split(shards / "sft/val", tokenizer, block, 16, 0)
    oasst = measure(kept, chats.sequential(), lengths)
    text = np.concatenate(
        rows_as_arrays(read_split(shards / "pretrain/val", tokenizer.hash), "tokens")
    )
    shakespeare = measure(kept, TokenWindows(text, block, 16, 0).sequential(), lengths)
    steps = np.diff(timed.times[: settings.max_steps])  # finish() asks for one more batch
    return {
        "oasst_bpb": oasst["bpb"],
        "shakespeare_bpb": shakespeare["bpb"],
        "kept_step": result.final["step"],
        "trainable_params": trainable,
        "model_params": kept.num_params(),
        "file_bytes": file_bytes,
        "ms_per_step": 1000 * float(np.median(steps)),
        "train_seconds": train_seconds,
        "rss_setup_mb": rss_setup,
        "rss_peak_mb": rss_peak,
        "val_curve": [(row["step"], row["val_bpb"]) for row in result.history],
    }


def measure_runs(runs: list[Run], rounds: int, base_job: dict[str, Any]) -> list[dict[str, Any]]:
    def run(run: Run) -> dict[str, Any]:
        job = {**base_job, "rank": run.rank, "learning_rate": run.learning_rate}
        return common.run_worker(__file__, job, 1800, {"OMP_NUM_THREADS": str(job["threads"])})

    def status(run: Run, r: dict[str, Any]) -> str:
        return f"{run.name}: " + (
            r.get("error") or f"{r['ms_per_step']:.0f} ms/step, oasst bpb {r['oasst_bpb']:.4f}"
        )

    return [pool(run, found) for run, found in common.rounds_of(runs, rounds, run, status)]


def pool(run: Run, found: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"run": run.name, "rank": run.rank, "learning_rate": run.learning_rate}
    ok = [r for r in found if "error" not in r]
    if not ok:
        row["error"] = found[0]["error"] if found else "not run"
        return row
    medians = [r["ms_per_step"] for r in ok]
    first = ok[0]
    row.update(
        {k: first[k] for k in ("oasst_bpb", "shakespeare_bpb", "kept_step", "val_curve")},
        trainable_params=first["trainable_params"],
        model_params=first["model_params"],
        file_bytes=first["file_bytes"],
        ms_per_step=min(medians),  # the least-disturbed round
        round_medians_ms=medians,
        rss_peak_mb=max(r["rss_peak_mb"] for r in ok),
        rss_above_setup_mb=max(r["rss_peak_mb"] - r["rss_setup_mb"] for r in ok),
        # Seeded: every round must score the same, or something is not deterministic.
        same_bpb_every_round=len({r["oasst_bpb"] for r in ok}) == 1,
    )
    return row


def markdown(rows: list[dict[str, Any]], default_lr: float) -> str:
    ok = [row for row in rows if "error" not in row]
    full = next((r for r in ok if r["run"] == "full"), None)

    def oasst(row: dict[str, Any]) -> str:
        delta = row["oasst_bpb"] - full["oasst_bpb"] if full and row is not full else None
        return f"{row['oasst_bpb']:.4f}" + (f" ({delta:+.3f})" if delta is not None else "")

    columns = [
        ("run", "{run}"),
        ("rank", lambda r: str(r["rank"] or "full")),
        ("lr", lambda r: f"{r['learning_rate'] or default_lr:g}"),
        ("OASST1 val bpb (vs full)", oasst),
        ("Shakespeare val bpb", "{shakespeare_bpb:.4f}"),
        (
            "trainable params",
            lambda r: (
                f"{r['trainable_params']:,} ({r['trainable_params'] / r['model_params']:.1%})"
            ),
        ),
        ("ms/step", "{ms_per_step:.0f}"),
        ("peak RSS MB (+ above set-up)", "{rss_peak_mb:.0f} (+{rss_above_setup_mb:.0f})"),
        ("file", lambda r: fmt_bytes(r["file_bytes"])),
        (
            "note",
            lambda r: (
                "rounds "
                + " / ".join(f"{m:.0f}" for m in r["round_medians_ms"])
                + f"; kept step {r['kept_step']:.0f}"
            ),
        ),
    ]
    failed = [f"\n{r['run']} failed: {r['error']}" for r in rows if "error" in r]
    return common.rows_table(ok, columns, align="lrrrrrrrrl") + "".join(failed)


def main() -> None:
    parser = common.parser(__doc__, "8 steps, one round: under a minute")
    parser.add_argument(
        "--root", type=Path, default=common.REPO, help="the project whose data to use"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--rounds", type=int, help="default 2 (quick: 1)")
    parser.add_argument("--runs", nargs="+", choices=[r.name for r in RUNS], help="a subset")
    args = common.parse(parser, worker)

    from bardlet.config import load_params

    root = args.root.resolve()
    common.require(root, "models/base/model.safetensors", "data/shards/sft/train/manifest.json")
    runs = [r for r in RUNS if not args.runs or r.name in args.runs]
    overrides: dict[str, Any] = {}
    if args.quick:
        runs = [r for r in runs if r.learning_rate is None]
        overrides = {"max_steps": 8, "warmup_steps": 2, "eval_interval": 4, "eval_batches": 2}
    rounds = args.rounds or (1 if args.quick else 2)
    base_job = {"root": str(root), "threads": args.threads, "overrides": overrides}
    params = load_params(root / "params.yaml")
    sft = params.sft

    print(f"cpu: {os.cpu_count()} cores, load average {os.getloadavg()}", file=sys.stderr)
    load_before = os.getloadavg()
    start = time.perf_counter()
    rows = measure_runs(runs, rounds, base_job)
    elapsed = time.perf_counter() - start
    steps = overrides.get("max_steps", sft.max_steps)
    print(
        f"{steps} steps of {sft.batch_size} x {params.model.block_size} tokens, {args.threads}"
        f" threads, alpha {sft.lora.alpha:g}, targets {', '.join(sft.lora.targets)}, dropout"
        f" {sft.lora.dropout:g}\n"
    )
    print(markdown(rows, sft.learning_rate))
    print(f"\n({elapsed:.0f} s; load average {os.getloadavg()})", file=sys.stderr)
    if args.json:
        import torch

        meta = {
            **common.run_info(),
            "torch": torch.__version__,
            "threads": args.threads,
            "rounds": rounds,
            "steps": steps,
            "sft": sft.model_dump(),
            "load_average_before": load_before,
            "load_average_end": os.getloadavg(),
            "seconds": elapsed,
        }
        common.save(args.json, {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
