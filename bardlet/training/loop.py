"""One training loop for both stages: pretraining on text windows and SFT on conversations.

The loop only sees batches of (inputs, targets) with -1 where no loss is taken, so the same
code trains the base model and the chat model. On CUDA it uses bf16 autocast and
torch.compile; on CPU plain fp32 eager (the fastest choice at this size, measured).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from bardlet import tracking
from bardlet.config import TrainParams
from bardlet.data.loaders import Batch, BatchSource
from bardlet.evaluation import measure
from bardlet.model import GPT


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def learning_rate(step: int, params: TrainParams) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio * learning_rate."""
    peak = params.learning_rate
    if step < params.warmup_steps:
        return peak * (step + 1) / params.warmup_steps
    decay_steps = max(params.max_steps - params.warmup_steps, 1)
    progress = min((step - params.warmup_steps) / decay_steps, 1.0)
    floor = peak * params.min_lr_ratio
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def make_optimizer(model: GPT, params: TrainParams, device: torch.device) -> torch.optim.AdamW:
    # Weight decay on matrices only: decaying norms' gains would just fight the normalisation.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": params.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=params.learning_rate, betas=(0.9, 0.95), fused=device.type == "cuda"
    )


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)  # one row per eval
    final: dict[str, float] = field(default_factory=dict)


def _format_eta(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


def train(
    model: GPT,
    train_data: BatchSource,
    val_batches: Callable[[], list[Batch]],
    params: TrainParams,
    byte_lengths: np.ndarray,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train `model` in place for params.max_steps optimizer steps.

    train_data.batch(step) gives the training batch of a micro-step; val_batches() the fixed
    validation batches measured every eval_interval steps (loss and bits per byte).
    """
    device = next(model.parameters()).device
    if params.threads:
        torch.set_num_threads(params.threads)
    torch.manual_seed(params.seed)
    optimizer = make_optimizer(model, params, device)
    use_cuda = device.type == "cuda"
    forward = torch.compile(model) if use_cuda else model
    result = TrainResult()
    tokens_per_step = 0
    start = time.perf_counter()
    model.train()

    def evaluate(step: int) -> None:
        metrics = measure(model, val_batches(), byte_lengths, device)
        row = {
            "step": float(step),
            "seconds": time.perf_counter() - start,
            "val_loss": metrics["loss"],
            "val_bpb": metrics["bpb"],
        }
        result.history.append(row)
        tracking.log_metrics({"val_loss": metrics["loss"], "val_bpb": metrics["bpb"]}, step)
        log(f"step {step:>5} | val loss {metrics['loss']:.4f} | val bpb {metrics['bpb']:.4f}")

    for step in range(params.max_steps):
        lr = learning_rate(step, params)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for micro in range(params.grad_accum):
            inputs, targets = train_data.batch(step * params.grad_accum + micro)
            x = torch.from_numpy(inputs).to(device, non_blocking=True)
            y = torch.from_numpy(targets).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_cuda):
                _, loss, _ = forward(x, y)
            assert loss is not None
            (loss / params.grad_accum).backward()
            loss_sum += float(loss.detach())
            tokens_per_step = x.numel() * params.grad_accum
        if params.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        done = step + 1
        if done % params.log_interval == 0 or done == params.max_steps:
            elapsed = time.perf_counter() - start
            tokens_per_s = done * tokens_per_step / elapsed
            train_loss = loss_sum / params.grad_accum
            tracking.log_metrics(
                {"train_loss": train_loss, "lr": lr, "tokens_per_s": tokens_per_s}, done
            )
            eta = elapsed / done * (params.max_steps - done)
            log(
                f"step {done:>5}/{params.max_steps} | loss {train_loss:.4f} | lr {lr:.2e} | "
                f"{tokens_per_s:,.0f} tok/s | eta {_format_eta(eta)}"
            )
        if done % params.eval_interval == 0 or done == params.max_steps:
            evaluate(done)

    result.final = {
        "val_loss": result.history[-1]["val_loss"],
        "val_bpb": result.history[-1]["val_bpb"],
        "train_seconds": time.perf_counter() - start,
        "steps": float(params.max_steps),
    }
    return result
