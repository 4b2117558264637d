"""What pinning the CPU kernels to AVX2 (stages/__init__.py) costs: the default training step,
timed with the pins and without (BARDLET_NATIVE_KERNELS=1).

    .venv/bin/python bench/kernels.py --json bench/results/kernels.json   # about 5 minutes
    .venv/bin/python bench/kernels.py --quick                              # under a minute

Each setting runs in its own process (torch picks its kernels when it starts), once per round;
ms/step is the lowest round median. Equal losses after the steps mean both computed the same.
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from typing import Any

import common  # bench/common.py: this script's folder is on sys.path

# "0": pinned even where the caller's environment says otherwise.
SETTINGS = {"pinned to AVX2": "0", "native": "1"}


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """One setting: time `steps` training steps of the default model (after 3 warm-up steps)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    import stages  # noqa: F401  (the pins, exactly as every stage applies them)
    from bardlet.config import load_params
    from bardlet.model import GPT, GPTConfig
    from bardlet.training.loop import make_optimizer

    torch.set_num_threads(job["threads"])
    params = load_params(common.REPO / "params.yaml")
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
    for step in range(job["steps"] + 3):  # 3 warm-up steps
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
    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "ms_per_step": 1000 * statistics.median(timings),
        "loss": loss,
    }


def main() -> None:
    parser = common.parser(__doc__, "2 rounds of 10 steps, 1 thread")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = 1 and 2)")
    args = common.parse(parser, worker)
    rounds, steps = (2, 10) if args.quick else (5, 30)
    thread_counts = [args.threads] if args.threads else ([1] if args.quick else [1, 2])
    specs = [(threads, name) for threads in thread_counts for name in SETTINGS]

    def run(spec: tuple[int, str]) -> dict[str, Any]:
        job, env = (
            {"steps": steps, "threads": spec[0]},
            {"BARDLET_NATIVE_KERNELS": SETTINGS[spec[1]]},
        )
        result = common.run_worker(__file__, job, 1800, env)
        if "error" in result:
            sys.exit(f"{spec[1]}, {spec[0]} threads: {result['error']}")
        return result

    def status(spec: tuple[int, str], result: dict[str, Any]) -> str:
        return f"{spec[1]}, {spec[0]} threads: {result['ms_per_step']:.1f} ms/step"

    rows = [
        {
            "threads": threads,
            "kernels": name,
            "capability": results[0]["capability"],
            "ms_per_step": min(r["ms_per_step"] for r in results),
            "rounds_ms": [round(r["ms_per_step"], 2) for r in results],
            "loss": results[0]["loss"],
        }
        for (threads, name), results in common.rounds_of(specs, rounds, run, status)
    ]
    native = {r["threads"]: r["ms_per_step"] for r in rows if r["kernels"] == "native"}
    columns = [
        ("threads", "{threads}"),
        ("kernels", "{kernels}"),
        ("torch capability", "{capability}"),
        ("ms/step", "{ms_per_step:.1f}"),
        ("vs native", lambda r: f"{r['ms_per_step'] / native[r['threads']]:.2f}x"),
        ("loss after the steps", "{loss:.6f}"),
    ]
    print(f"CPU: {platform.processor() or platform.machine()}, {steps} steps x {rounds} rounds")
    print(common.rows_table(rows, columns, align="rllr"))
    common.save(args.json, rows)


if __name__ == "__main__":
    main()
