"""Pretraining sweep: which settings reach the lowest Tiny Shakespeare validation bits per byte.

    .venv/bin/python bench/pretrain_sweep.py --json bench/results/pretrain_sweep.json  # ~1.5 h
    .venv/bin/python bench/pretrain_sweep.py --quick         # about a minute: 1/100 of the steps
    .venv/bin/python bench/pretrain_sweep.py --runs batch-8 batch-8-dropout-0.2

Each run of RUNS is the pretrain stage's training on the pipeline's data with params.yaml
changed as it says, in its own process with one thread, validated on the same number of tokens.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import common  # bench/common.py: this script's folder is on sys.path

from bardlet.markdown import table

VAL_TOKENS = 40 * 8 * 256  # the default pretrain's validation sample
COMPARE_AT_TOKENS = 600 * 16 * 256  # runs are also compared at this many training tokens


def setting(
    vocab: int,
    dropout: float,
    weight_decay: float,
    batch: int,
    steps: int,
    lr: float,
    warmup: int,
    eval_every: int,
    width: int = 128,
    heads: int = 4,
    ema: float = 0.0,
) -> dict[str, dict[str, Any]]:
    """Everything a run sets explicitly, so the table stays true when params.yaml changes."""
    return {
        "tokenizer": {"vocab_size": vocab},
        "model": {"n_embd": width, "n_head": heads, "dropout": dropout},
        "pretrain": {
            "max_steps": steps,
            "batch_size": batch,
            "learning_rate": lr,
            "warmup_steps": warmup,
            "eval_interval": eval_every,
            "weight_decay": weight_decay,
            "ema_decay": ema,
        },
    }


# The runs, in the order they were tried. `batch-8-dropout-0.2-wd-0.5` is today's default.
RUNS: dict[str, dict[str, dict[str, Any]]] = {
    "previous-default": setting(4096, 0.0, 0.1, 16, 400, 3e-3, 40, 100),
    "wide-192": setting(4096, 0.0, 0.1, 16, 600, 3e-3, 40, 100, width=192, heads=6),
    "weight-decay-0.5": setting(4096, 0.1, 0.5, 16, 600, 3e-3, 40, 100),
    "batch-8": setting(4096, 0.1, 0.1, 8, 1200, 2e-3, 80, 200),
    "batch-4": setting(4096, 0.1, 0.1, 4, 2400, 1.5e-3, 100, 400),
    "batch-8-long": setting(4096, 0.1, 0.1, 8, 2400, 2e-3, 80, 300),
    "batch-8-dropout-0.2": setting(4096, 0.2, 0.1, 8, 2000, 2e-3, 80, 250),
    "batch-8-dropout-0.2-wd-0.5": setting(4096, 0.2, 0.5, 8, 2000, 2e-3, 80, 250),
    "vocab-2048": setting(2048, 0.2, 0.1, 8, 2000, 2e-3, 80, 250),
    "vocab-2048-wd-0.5": setting(2048, 0.2, 0.5, 8, 2600, 2e-3, 80, 200),
    "vocab-2048-wd-1.0": setting(2048, 0.2, 1.0, 8, 2600, 2e-3, 80, 200),
    "ema-0.998": setting(4096, 0.2, 0.5, 8, 2000, 2e-3, 80, 200, ema=0.998),
    "vocab-2048-ema-0.998": setting(2048, 0.2, 0.5, 8, 2600, 2e-3, 80, 200, ema=0.998),
    "ema-0.995": setting(4096, 0.2, 0.5, 8, 2000, 2e-3, 80, 200, ema=0.995),
    "ema-0.999": setting(4096, 0.2, 0.5, 8, 2000, 2e-3, 80, 200, ema=0.999),
    "ema-0.995-lr-3e-3": setting(4096, 0.2, 0.5, 8, 2000, 3e-3, 80, 200, ema=0.995),
    "ema-0.995-dropout-0.3": setting(4096, 0.3, 0.5, 8, 2000, 2e-3, 80, 200, ema=0.995),
}


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """One run, in this process: returns its evaluation history."""
    import numpy as np
    import torch

    from bardlet.config import load_params
    from bardlet.data.loaders import TokenWindows
    from bardlet.data.shards import read_tokens
    from bardlet.model import GPT, GPTConfig
    from bardlet.tokenizer import Tokenizer
    from bardlet.training.loop import train
    from stages.paths import CORPUS, SHARDS, TOKENIZER
    from stages.tokenizer import training_texts

    name, change = job["name"], RUNS[job["name"]]
    params = load_params(common.REPO / "params.yaml")
    model_params = params.model.model_copy(update=change["model"])
    steps = change["pretrain"]["max_steps"]
    update = dict(change["pretrain"], threads=1)
    val_tokens_wanted = VAL_TOKENS
    if job["quick"]:  # a smoke test: a few steps, one small evaluation at the end
        update.update(max_steps=max(steps // 100, 2), warmup_steps=1)
        update["eval_interval"] = update["max_steps"]
        val_tokens_wanted = VAL_TOKENS // 20
    settings = params.pretrain.model_copy(update=update)
    vocab_size = change["tokenizer"]["vocab_size"]
    tokenizer = Tokenizer.load(TOKENIZER)
    if tokenizer.vocab_size == vocab_size:  # the pipeline's own tokenizer and shards
        train_tokens = read_tokens(SHARDS / "pretrain/train", tokenizer.hash)[0]
        val_tokens = read_tokens(SHARDS / "pretrain/val", tokenizer.hash)[0]
    else:
        tokenizer = Tokenizer.train(
            training_texts(params.tokenizer.sample_chars),
            vocab_size,
            special_tokens=params.tokenizer.special_tokens,
        )
        train_tokens, val_tokens = (
            np.array(tokenizer.encode((CORPUS / f"tinyshakespeare/{split}.txt").read_text("utf-8")))
            for split in ("train", "val")
        )
    block = model_params.block_size
    train_data = TokenWindows(train_tokens, block, settings.batch_size, settings.seed)
    val_data = TokenWindows(val_tokens, block, settings.batch_size, settings.seed + 1)
    val_batches = [
        val_data.batch(i) for i in range(max(val_tokens_wanted // (settings.batch_size * block), 1))
    ]
    torch.manual_seed(settings.seed)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, **model_params.model_dump()))
    start = time.perf_counter()
    result = train(
        model,
        train_data,
        val_batches,
        settings,
        np.array(tokenizer.byte_lengths()),
        log=lambda line: print(f"{name}: {line}", file=sys.stderr, flush=True),
    )
    tokens_per_step = settings.batch_size * block * settings.grad_accum
    return {
        "name": name,
        "change": change,
        "params": model.num_params(),
        "vocab_size": tokenizer.vocab_size,
        "tokens_per_step": tokens_per_step,
        "seconds": time.perf_counter() - start,
        "history": result.history,
        "best": result.final,
    }


def run(name: str, quick: bool) -> dict[str, Any]:
    job = {"name": name, "quick": quick}
    result = common.run_worker(__file__, job, env={"OMP_NUM_THREADS": "1"})
    return {"name": name, **result} if "error" in result else result


def markdown(results: list[dict[str, Any]]) -> str:
    header = (
        "run | vocab | params | dropout | weight decay | EMA | batch x context | steps | tokens"
        " | best val bpb (at step) | val bpb at <= 2.46M tokens | train loss at the end"
    )
    rows: list[tuple[str, ...]] = []
    for r in results:
        if "error" in r:
            rows.append((r["name"], f"failed: {r['error']}"))
            continue
        model, train = r["change"]["model"], r["change"]["pretrain"]
        history = r["history"]
        steps = int(history[-1]["step"])
        early = [h for h in history if h["step"] * r["tokens_per_step"] <= COMPARE_AT_TOKENS]
        rows.append(
            (
                r["name"],
                str(r["vocab_size"]),
                f"{r['params'] / 1e6:.2f}M",
                str(model["dropout"]),
                str(train["weight_decay"]),
                str(train.get("ema_decay") or "-"),
                f"{train['batch_size']} x 256",
                str(steps),
                f"{steps * r['tokens_per_step'] / 1e6:.2f}M",
                f"{r['best']['val_bpb']:.3f} ({int(r['best']['step'])})",
                f"{early[-1]['val_bpb']:.3f}" if early else "",
                f"{history[-1]['train_loss']:.2f}",
            )
        )
    return table(header, rows, align="lr")


def main() -> None:
    parser = common.parser(__doc__, "1/100 of every run's steps")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    args = common.parse(parser, worker)
    started = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda name: run(name, args.quick), args.runs))
    text = markdown(results)
    print(text)
    seconds = time.perf_counter() - started
    result = {"command": common.command(), "seconds": seconds, "runs": results, "table": text}
    common.save(args.json, result)


if __name__ == "__main__":
    main()
