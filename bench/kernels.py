"""What pinning the CPU kernels to AVX2 (stages/__init__.py) costs: the default training step
and its validation pass, timed with the pins and without (BARDLET_NATIVE_KERNELS=1).

    .venv/bin/python bench/kernels.py --json bench/results/kernels.json   # about 5 minutes
    .venv/bin/python bench/kernels.py --quick                              # under a minute

Each setting runs in its own subprocess (the kernels are chosen when torch starts), one per
round, rounds alternating which goes first; ms/step is the median of a round's steps, and
the table shows the lowest round median (the least disturbed) and every round in the JSON.
It also prints the training loss after the timed steps: equal losses mean the two kernel
sets computed the same numbers on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bardlet.markdown import table

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"pinned to AVX2": {}, "native": {"BARDLET_NATIVE_KERNELS": "1"}}


def worker(steps: int, threads: int) -> None:
    """One setting, in a fresh process: time `steps` training steps of the default model."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    import stages  # noqa: F401  (the pins, exactly as every stage applies them)
    from bardlet.config import load_params
    from bardlet.model import GPT, GPTConfig
    from bardlet.training.loop import make_optimizer

    torch.set_num_threads(threads)
    params = load_params(REPO / "params.yaml")
    settings = params.pretrain
    config = GPTConfig(vocab_size=params.tokenizer.vocab_size, **params.model.model_dump())
    torch.manual_seed(0)
    model = GPT(config)
    optimizer = make_optimizer(model, settings, torch.device("cpu"))
    rng = np.random.default_rng(0)
    shape = (settings.batch_size, config.block_size + 1)
    batch = torch.from_numpy(rng.integers(0, config.vocab_size, size=shape))
    x, y = batch[:, :-1], batch[:, 1:]
    timings, loss = [], 0.0
    for step in range(steps + 3):  # 3 warm-up steps
        started = time.perf_counter()
        logits, _, _ = model(x)
        loss_t = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss_t.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = float(loss_t)
        if step >= 3:
            timings.append(time.perf_counter() - started)
    print(
        json.dumps(
            {
                "capability": torch.backends.cpu.get_cpu_capability(),
                "ms_per_step": 1000 * statistics.median(timings),
                "loss": loss,
            }
        )
    )


def run_setting(name: str, steps: int, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "BARDLET_NATIVE_KERNELS"}
    env.update(SETTINGS[name], PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, __file__, "--worker", str(steps), "--threads", str(threads)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict]) -> str:
    native = {r["threads"]: r["ms_per_step"] for r in rows if r["kernels"] == "native"}
    cells = [
        (
            str(r["threads"]),
            r["kernels"],
            r["capability"],
            f"{r['ms_per_step']:.1f}",
            f"{r['ms_per_step'] / native[r['threads']]:.2f}x",
            f"{r['loss']:.6f}",
        )
        for r in rows
    ]
    header = "threads | kernels | torch capability | ms/step | vs native | loss after the steps"
    return table(header, cells, align="rllr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 10 steps, 1 thread")
    parser.add_argument("--json", type=Path, help="also write the table as JSON to this file")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = 1 and 2)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.threads)
        return
    rounds, steps = (2, 10) if args.quick else (5, 30)
    thread_counts = [args.threads] if args.threads else ([1] if args.quick else [1, 2])
    rows = []
    for threads in thread_counts:
        per_round: dict[str, list[dict]] = {name: [] for name in SETTINGS}
        for r in range(rounds):
            order = list(SETTINGS) if r % 2 == 0 else list(reversed(SETTINGS))
            for name in order:
                per_round[name].append(run_setting(name, steps, threads))
        for name, results in per_round.items():
            rows.append(
                {
                    "threads": threads,
                    "kernels": name,
                    "capability": results[0]["capability"],
                    "ms_per_step": min(r["ms_per_step"] for r in results),
                    "rounds_ms": [round(r["ms_per_step"], 2) for r in results],
                    "loss": results[0]["loss"],
                }
            )
    print(f"CPU: {platform.processor() or platform.machine()}, {steps} steps x {rounds} rounds")
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
