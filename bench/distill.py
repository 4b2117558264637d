"""Distillation against plain training: the same student, the same wall-clock budget.

    PYTHONPATH=. .venv/bin/python bench/distill.py --root PROJECT --json bench/results/distill.json
    PYTHONPATH=. .venv/bin/python bench/distill.py --root PROJECT --quick   # under a minute

PROJECT is a folder after `make pipeline`: its shards, tokenizer and params.yaml are used.

1. The teacher: `teacher.model` trained as the teacher stage trains it (kept in --work and
   reused while its settings match), and its own validation bits per byte.
2. The cost of a step, rounds alternating: plain; with the teacher run on the fly (what the
   distill stage does); reading the teacher's top-k logits cached in Parquet beforehand (one
   teacher pass over the training text, each window position conditioned on its own chunk).
3. The budget: --steps plain steps (default pretrain.max_steps) at the plain step's cost. Each
   way trains for as many steps as fit in it (the cached one less the cache's build time),
   with pretrain's settings and schedule over its own steps, and is scored as the stage keeps
   it: validation bits per byte of the best weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common  # bench/common.py: this script's folder is on sys.path

from bardlet.markdown import fmt_bytes

TOP_K = 32  # cached logits per position


def main() -> None:
    parser = common.parser(__doc__ or "", "20 teacher steps, 30 student steps, 50k tokens")
    parser.add_argument(
        "--root", type=Path, default=common.REPO, help="a project after make pipeline"
    )
    work = Path(tempfile.gettempdir()) / "bardlet-distill-bench"  # $TMPDIR, else the system's
    parser.add_argument("--work", type=Path, default=work)
    parser.add_argument("--steps", type=int, help="the plain student's steps: the budget")
    args = common.parse(parser)
    common.require(args.root, "models/tokenizer/bpe.json", "data/shards/pretrain/train")
    os.chdir(args.root)  # the stages' paths are relative to the project
    sys.path.insert(0, str(common.REPO))
    import stages  # noqa: F401  (before torch: pins the CPU kernels, as every stage does)

    # isort: split
    import numpy as np
    import torch

    from bardlet.config import load_params
    from bardlet.data.loaders import TokenWindows
    from bardlet.evaluation import measure
    from bardlet.model import GPT, GPTConfig
    from bardlet.tokenizer import load_tokenizer
    from bardlet.training import checkpoint
    from bardlet.training.distill import Teacher
    from bardlet.training.loop import train
    from stages.pretrain import corpus_batches

    params = load_params()
    tokenizer = load_tokenizer(Path("models/tokenizer"))
    lengths = np.array(tokenizer.byte_lengths())
    quick = args.quick
    student_settings = params.pretrain
    teacher_settings = params.teacher_training()
    if quick:
        student_settings = student_settings.model_copy(
            update={"eval_batches": 5, "eval_interval": 10}
        )
        teacher_settings = teacher_settings.model_copy(
            update={"max_steps": 20, "eval_batches": 5, "eval_interval": 10, "warmup_steps": 5}
        )
    block = params.model.block_size
    train_data, val_batches, _ = corpus_batches(params, tokenizer, student_settings, block)
    if quick:
        train_data.tokens = train_data.tokens[:50_000]
    tokens = train_data.tokens

    def new_model(shape: Any, seed: int) -> GPT:
        torch.manual_seed(seed)
        return GPT(GPTConfig(vocab_size=tokenizer.vocab_size, **shape.model_dump()))

    def quiet(_line: str) -> None:
        pass

    # 1. The teacher, trained once per setting and kept.
    identity = json.dumps(
        [
            params.teacher.model.model_dump(),
            teacher_settings.model_dump(),
            tokenizer.hash,
            len(tokens),
        ],
        sort_keys=True,
    )
    teacher_dir = args.work / ("teacher-" + hashlib.sha256(identity.encode()).hexdigest()[:12])
    if (teacher_dir / checkpoint.WEIGHTS).exists():
        teacher_model, info = checkpoint.load(teacher_dir)
        teacher_seconds = info["seconds"]
        print(f"teacher: reused {teacher_dir}", file=sys.stderr)
    else:
        print(f"teacher: training {teacher_settings.max_steps} steps", file=sys.stderr, flush=True)
        teacher_data, teacher_val, _ = corpus_batches(params, tokenizer, teacher_settings, block)
        teacher_data.tokens = tokens
        teacher_model = new_model(params.teacher.model, teacher_settings.seed)
        result = train(
            teacher_model, teacher_data, teacher_val, teacher_settings, lengths, log=quiet
        )
        teacher_seconds = result.speed["train_seconds"]
        checkpoint.save(teacher_model, teacher_dir, {"seconds": teacher_seconds})
    with torch.no_grad():
        teacher_bpb = measure(teacher_model.eval(), val_batches, lengths)["bpb"]

    # 2. The top-k cache: the teacher over the training text in consecutive chunks of `block`,
    # the last chunk ending at the text's end; Parquet, then read back whole.
    started = time.perf_counter()
    cache_path = args.work / "topk.parquet"
    write_topk_cache(teacher_model, tokens, block, cache_path)
    top_ids, top_logits = read_topk_cache(cache_path)
    cache_seconds = time.perf_counter() - started
    cache_bytes = cache_path.stat().st_size

    class StartsRecorded(TokenWindows):
        """The training windows, remembering where the last batch's windows start."""

        starts = np.zeros(0, dtype=np.int64)

        def batch(self, step: int) -> Any:
            rng = np.random.default_rng([self.seed, step])
            self.starts = rng.integers(0, len(self.tokens) - self.block_size - 1, self.batch_size)
            inputs, targets = super().batch(step)
            assert (inputs[:, 0] == self.tokens[self.starts]).all()  # the same draw (no mix)
            return inputs, targets

    windows = StartsRecorded(tokens, block, student_settings.batch_size, student_settings.seed)
    positions = np.arange(block)

    class CachedTeacher(Teacher):
        """The teacher's logits read from the cache: its top k at each position, the rest
        so low that they weigh nothing at any temperature used here."""

        def logits(self, inputs: torch.Tensor) -> torch.Tensor:
            rows = windows.starts[:, None] + positions
            dense = torch.full((*inputs.shape, tokenizer.vocab_size), -1e4)
            ids = torch.from_numpy(top_ids[rows].astype(np.int64))
            return dense.scatter_(-1, ids, torch.from_numpy(top_logits[rows]))

    distill = params.distill
    ways: dict[str, Teacher | None] = {
        "plain": None,
        "teacher on the fly": Teacher(teacher_model, distill.alpha, distill.temperature),
        "cached top-k": CachedTeacher(teacher_model, distill.alpha, distill.temperature),
    }

    # 3. Milliseconds a step, rounds alternating.
    calibration = {"max_steps": 4 if quick else 12, "eval_interval": 10**6, "keep_best": False}
    calibrate = student_settings.model_copy(update={**calibration, "eval_batches": 1})
    step_ms: dict[str, list[float]] = {name: [] for name in ways}

    def time_steps(name: str) -> dict[str, Any]:
        model = new_model(params.model, calibrate.seed)
        started = time.perf_counter()
        train(model, windows, val_batches[:1], calibrate, lengths, log=quiet, teacher=ways[name])
        ms = 1000 * (time.perf_counter() - started) / calibrate.max_steps
        step_ms[name].append(ms)
        return {"ms": ms}

    common.rounds_of(list(ways), 2, time_steps, lambda name, r: f"{name}: {r['ms']:.0f} ms/step")
    ms = {name: float(np.median(values)) for name, values in step_ms.items()}

    # 4. The same budget for each way.
    plain_steps = args.steps or (30 if quick else student_settings.max_steps)
    budget = plain_steps * ms["plain"] / 1000
    rows = [{"way": "teacher", "params": teacher_model.num_params(), "steps": teacher_settings.max_steps,
             "ms": float("nan"), "seconds": teacher_seconds, "bpb": teacher_bpb}]  # fmt: skip
    for name, teacher in ways.items():
        spend = budget - (cache_seconds if name == "cached top-k" else 0.0)
        steps = max(int(spend * 1000 / ms[name]), 1)
        warmup = min(student_settings.warmup_steps, steps // 4)
        settings = student_settings.model_copy(update={"max_steps": steps, "warmup_steps": warmup})
        print(f"{name}: {steps} steps", file=sys.stderr, flush=True)
        model = new_model(params.model, settings.seed)
        result = train(model, windows, val_batches, settings, lengths, log=quiet, teacher=teacher)
        rows.append({"way": name, "params": model.num_params(), "steps": steps, "ms": ms[name],
                     "seconds": result.speed["train_seconds"], "bpb": result.final["val_bpb"]})  # fmt: skip

    output = {
        "command": common.command(),
        "threads": torch.get_num_threads(),
        "budget_seconds": budget,
        "student": params.model.model_dump(),
        "teacher": params.teacher.model.model_dump(),
        "alpha": distill.alpha,
        "temperature": distill.temperature,
        "cache": {"top_k": TOP_K, "bytes": cache_bytes, "seconds": cache_seconds, "positions": len(tokens)},
        "rows": rows,
    }  # fmt: skip
    print(markdown(output))
    common.save(args.json, output)


def write_topk_cache(teacher: Any, tokens: Any, block: int, path: Path) -> None:
    """Top-k logits of the teacher at every position of `tokens`, to Parquet (atomically)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    count = len(tokens)
    ids = np.zeros((count, TOP_K), dtype=np.int32)
    logits = np.zeros((count, TOP_K), dtype=np.float32)
    starts = list(range(0, count - block, block)) + [count - block]
    with torch.no_grad():
        for first in range(0, len(starts), 16):
            chunk = np.array(starts[first : first + 16])
            x = torch.from_numpy(tokens[chunk[:, None] + np.arange(block)].astype(np.int64))
            out, _, _ = teacher(x)
            values, indices = out.topk(TOP_K, dim=-1)
            for row, start in enumerate(chunk):
                ids[start : start + block] = indices[row].numpy()
                logits[start : start + block] = values[row].numpy()

    def column(values: Any, kind: Any) -> Any:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), kind), TOP_K)

    table = pa.table({"ids": column(ids, pa.int32()), "logits": column(logits, pa.float32())})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def read_topk_cache(path: Path) -> tuple[Any, Any]:
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(path)

    def flat(name: str) -> Any:
        return np.asarray(table[name].combine_chunks().flatten()).reshape(-1, TOP_K)

    return flat("ids"), flat("logits")


def markdown(output: dict[str, Any]) -> str:
    cache = output["cache"]
    lines = [
        f"Budget {output['budget_seconds']:.0f} s a student, {output['threads']} threads; "
        f"alpha {output['alpha']}, temperature {output['temperature']}; top-{cache['top_k']} "
        f"cache of {cache['positions']:,} positions: {fmt_bytes(cache['bytes'])}, built and read "
        f"in {cache['seconds']:.1f} s (charged to the cached way's budget).",
        "",
        common.rows_table(
            output["rows"],
            [
                ("trained", "{way}"),
                ("parameters", "{params:,}"),
                ("steps", "{steps:,}"),
                ("ms/step", lambda r: "" if r["ms"] != r["ms"] else f"{r['ms']:.0f}"),
                ("train s", "{seconds:.0f}"),
                ("val bits per byte", "{bpb:.4f}"),
            ],
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
