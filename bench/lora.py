"""LoRA adapters against full fine-tuning, on the pipeline's own base model and chat data.

    .venv/bin/python bench/lora.py --json bench/results/lora.json   # about 25 minutes here
    .venv/bin/python bench/lora.py --quick          # under a minute: 8 steps, one round
    .venv/bin/python bench/lora.py --root ../other-clone --runs full lora-8

Every run is the sft stage's training: `bardlet.training.loop.train` from the project's
models/base on its data/shards/sft, with its params.yaml `sft` section (run `make pipeline`
first; `--root` points at another project folder). Only the `lora` settings and, in the rows
that say so, the learning rate differ:

- full: every weight trains (`sft.lora.rank: 0`, today's default);
- lora-4, lora-8, lora-16: adapters of that rank on every linear layer of every block
  (params.yaml's alpha and targets), the base frozen, the same steps, data and learning rate;
- lora-8 at 3e-3 and 1e-2: LoRA is usually given a larger learning rate than full
  fine-tuning (its B starts at zero and the update is scaled by alpha / r).

Measured per run, each in its own process (so peak memory is the run's own):
- OASST1 val bits per byte of the weights the stage keeps (keep_best; LoRA: merged into the
  base), scored as the evaluate stage scores models/chat: every assistant token of the val split;
  and Tiny Shakespeare val bits per byte, what the fine-tune kept of pretraining;
- trainable parameters (the optimizer's);
- ms/step: the median time between two training batches (the few steps that also evaluate
  drop out of the median), the lowest of the rounds' medians;
- peak RSS (ru_maxrss), and its growth above the set-up (model and data loaded);
- file size: what a fine-tune adds to store or ship: adapter.safetensors for LoRA, the whole
  model.safetensors for full fine-tuning.

The machine is shared (other jobs may run beside the benchmark): every run runs once per
round, rounds in alternating order, and every round's median is in the JSON. The quality
numbers are seeded and the same in every round. The CPU kernels are pinned as in the stages.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import run_info, run_worker  # bench/common.py: this script's folder is on sys.path

REPO = Path(__file__).resolve().parents[1]


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


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


# ---------------------------------------------------------------- worker side (one subprocess)


class TimedBatches:
    """The training batches, with the time each is asked for: one step apart (grad_accum 1)."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.times: list[float] = []

    def batch(self, step: int) -> Any:
        self.times.append(time.perf_counter())
        return self.source.batch(step)


def worker(job: dict[str, Any]) -> dict[str, Any]:
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
    rss_setup = max_rss_mb()

    if job["rank"]:
        lora.add_adapters(model, lora_settings, settings.seed)
    trainable = lora.trainable_params(model)
    timed = TimedBatches(train_data)
    started = time.perf_counter()
    result = train(model, timed, val_batches, settings, lengths, log=lambda _line: None)
    train_seconds = time.perf_counter() - started
    rss_peak = max_rss_mb()

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


# ---------------------------------------------------------------- driver side


def measure_runs(runs: list[Run], rounds: int, base_job: dict[str, Any]) -> list[dict[str, Any]]:
    results: list[list[dict[str, Any]]] = [[] for _ in runs]
    for round_ in range(rounds):
        order = list(range(len(runs)))
        if round_ % 2:
            order.reverse()  # alternate the order so no run always goes first or last
        for index in order:
            run = runs[index]
            job = {**base_job, "rank": run.rank, "learning_rate": run.learning_rate}
            result = run_worker(__file__, job, 1800, {"OMP_NUM_THREADS": str(job["threads"])})
            results[index].append(result)
            status = result.get("error") or (
                f"{result['ms_per_step']:.0f} ms/step, oasst bpb {result['oasst_bpb']:.4f}"
            )
            print(f"  round {round_ + 1}: {run.name}: {status}", file=sys.stderr, flush=True)
    return [pool(run, found) for run, found in zip(runs, results, strict=True)]


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
    from bardlet.markdown import fmt_bytes, table

    full = next((r for r in rows if r["run"] == "full" and "error" not in r), None)
    cells = []
    for row in rows:
        lr = row["learning_rate"] or default_lr
        head = (row["run"], str(row["rank"] or "full"), f"{lr:g}")
        if "error" in row:
            cells.append((*head, "", "", "", "", "", "", f"failed: {row['error'][:80]}"))
            continue
        delta = (
            f" ({row['oasst_bpb'] - full['oasst_bpb']:+.3f})" if full and row is not full else ""
        )
        rounds = " / ".join(f"{m:.0f}" for m in row["round_medians_ms"])
        cells.append(
            (
                *head,
                f"{row['oasst_bpb']:.4f}{delta}",
                f"{row['shakespeare_bpb']:.4f}",
                f"{row['trainable_params']:,} ({100 * row['trainable_params'] / row['model_params']:.1f}%)",
                f"{row['ms_per_step']:.0f}",
                f"{row['rss_peak_mb']:.0f} (+{row['rss_above_setup_mb']:.0f})",
                fmt_bytes(row["file_bytes"]),
                f"rounds {rounds}; kept step {row['kept_step']:.0f}",
            )
        )
    header = (
        "run | rank | lr | OASST1 val bpb (vs full) | Shakespeare val bpb | trainable params"
        " | ms/step | peak RSS MB (+ above set-up) | file | note"
    )
    return table(header, cells, align="lrrrrrrrrl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 steps, one round: under a minute")
    parser.add_argument("--json", type=Path, help="also write the table as JSON to this file")
    parser.add_argument("--root", type=Path, default=REPO, help="the project whose data to use")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--rounds", type=int, help="default 2 (quick: 1)")
    parser.add_argument("--runs", nargs="+", choices=[r.name for r in RUNS], help="a subset")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import stages  # noqa: F401  (before torch: pins the CPU kernels, as every stage does)

        print(json.dumps(worker(json.loads(args.worker))))
        return

    from bardlet.config import load_params

    root = args.root.resolve()
    for needed in ("models/base/model.safetensors", "data/shards/sft/train/manifest.json"):
        if not (root / needed).exists():
            sys.exit(f"{root / needed} is missing: run `make pipeline` there first (or --root)")
    runs = [r for r in RUNS if not args.runs or r.name in args.runs]
    if args.quick:
        runs = [r for r in runs if r.learning_rate is None]
    overrides: dict[str, Any] = {}
    if args.quick:
        overrides = {"max_steps": 8, "warmup_steps": 2, "eval_interval": 4, "eval_batches": 2}
    rounds = args.rounds or (1 if args.quick else 2)
    base_job = {"root": str(root), "threads": args.threads, "overrides": overrides}
    sft = load_params(root / "params.yaml").sft

    print(f"cpu: {os.cpu_count()} cores, load average {os.getloadavg()}", file=sys.stderr)
    load_before = os.getloadavg()
    start = time.perf_counter()
    rows = measure_runs(runs, rounds, base_job)
    elapsed = time.perf_counter() - start
    steps = overrides.get("max_steps", sft.max_steps)
    print(
        f"{steps} steps of {sft.batch_size} x {load_params(root / 'params.yaml').model.block_size}"
        f" tokens, {args.threads} threads, alpha {sft.lora.alpha:g}, targets "
        f"{', '.join(sft.lora.targets)}, dropout {sft.lora.dropout:g}\n"
    )
    print(markdown(rows, sft.learning_rate))
    print(f"\n({elapsed:.0f} s; load average {os.getloadavg()})", file=sys.stderr)
    if args.json:
        import torch

        meta = {
            **run_info(),
            "torch": torch.__version__,
            "threads": args.threads,
            "rounds": rounds,
            "steps": steps,
            "sft": sft.model_dump(),
            "load_average_before": load_before,
            "load_average_end": os.getloadavg(),
            "seconds": elapsed,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
