"""One training loop for both stages: pretraining on text windows and SFT on conversations.

The loop only sees batches of (inputs, targets) with -1 where no loss is taken, so the same
code trains the base model and the chat model. On CUDA it uses bf16 autocast and
torch.compile; on CPU plain fp32 eager.

Resuming is exact: batches are a pure function of (seed, step), the learning rate a function
of the step, and a checkpoint holds weights, optimizer moments, the RNG state and the moving
average of the weights (ema_decay > 0), so a run killed at any point and resumed ends with
the same weights, bit for bit, as one that never stopped. SIGINT / SIGTERM finish the
current step, save a checkpoint and exit.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from bardlet import tracking
from bardlet.config import TrainParams
from bardlet.data.loaders import Batch, BatchSource
from bardlet.evaluation import measure
from bardlet.model import GPT
from bardlet.training import checkpoint, distributed


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def learning_rate(step: int, params: TrainParams) -> float:
    """Linear warmup, then either cosine decay to min_lr_ratio * peak, or warmup-stable-decay:
    hold the peak, then decay linearly to the floor over the last decay_fraction of steps."""
    peak = params.learning_rate
    floor = peak * params.min_lr_ratio
    if step < params.warmup_steps:
        return peak * (step + 1) / params.warmup_steps
    if params.schedule == "wsd":
        decay_steps = max(int(params.max_steps * params.decay_fraction), 1)
        decay_start = params.max_steps - decay_steps
        if step < decay_start:
            return peak
        return peak - (peak - floor) * min((step - decay_start) / decay_steps, 1.0)
    decay_steps = max(params.max_steps - params.warmup_steps, 1)
    progress = min((step - params.warmup_steps) / decay_steps, 1.0)
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
    final: dict[str, float] = field(default_factory=dict)  # the kept weights' numbers
    speed: dict[str, float] = field(default_factory=dict)  # wall-clock: differs per machine


class Interrupted(SystemExit):
    """SIGINT/SIGTERM arrived: a checkpoint was saved; run the stage again to resume."""


def _format_eta(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


def fingerprint(params: TrainParams, model: GPT, extra: dict[str, Any]) -> str:
    """What a checkpoint must agree on to be resumed: settings (not the resume policy itself),
    model shape, and whatever the caller adds (tokenizer, data)."""
    settings = params.model_dump(exclude={"resume", "threads", "keep_checkpoints"})
    blob = json.dumps([settings, model.config.to_dict(), extra], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def train(
    model: GPT,
    train_data: BatchSource,
    val_batches: Callable[[], list[Batch]],
    params: TrainParams,
    byte_lengths: np.ndarray,
    checkpoint_dir: Path | None = None,
    run_identity: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train `model` in place for params.max_steps optimizer steps.

    train_data.batch(step) gives the batch of a micro-step; val_batches() the fixed validation
    batches measured every eval_interval steps. With checkpoint_dir, training state is saved
    every checkpoint_interval steps and (resume: auto) picked up from the newest checkpoint
    that matches these settings. At the end the model holds the weights with the best
    validation loss (keep_best) or the last ones; with ema_decay > 0, their moving average.
    """
    device = next(model.parameters()).device
    if params.threads:
        torch.set_num_threads(params.threads)
    torch.manual_seed(params.seed)
    optimizer = make_optimizer(model, params, device)
    use_cuda = device.type == "cuda"
    world, rank = distributed.world_size(), distributed.rank()
    # DDP averages gradients across ranks during backward; the bare model stays `model`.
    wrapped = DistributedDataParallel(model) if world > 1 else model
    forward = torch.compile(wrapped) if use_cuda else wrapped
    log = log if rank == 0 else (lambda _line: None)
    # The moving average of the weights (ema_decay > 0) smooths out the noise of small
    # batches; it is what gets evaluated, kept as best, and returned.
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(params.ema_decay))
        if params.ema_decay > 0
        else None
    )
    evaluated = model if ema is None else cast(GPT, ema.module)
    result = TrainResult()
    identity = fingerprint(params, model, run_identity or {})
    best: dict[str, Any] = {"val_loss": math.inf, "step": 0, "weights": None}
    # Training loss summed since the last evaluation: the curves show its mean beside val loss.
    window = {"loss_sum": 0.0, "steps": 0}

    start_step = 0
    found = checkpoint.checkpoints(checkpoint_dir) if checkpoint_dir is not None else []
    if found:
        newest = found[-1]
        state = json.loads((newest / checkpoint.STATE).read_text(encoding="utf-8"))
        if params.resume == "auto" and state.get("fingerprint") == identity:
            state = checkpoint.load_state(newest, model, optimizer, ema)
            start_step = state["step"]
            result.history = state["history"]
            best.update(val_loss=state["best_val_loss"], step=state["best_step"])
            window.update(state.get("train_window", window))
            if (newest / "best.safetensors").exists():
                best["weights"] = checkpoint.load_file(str(newest / "best.safetensors"))
            log(f"resuming from {newest} (step {start_step})")
        else:
            # Another run's state (other settings, or resume: never): start afresh.
            log(f"starting afresh: removing {len(found)} old checkpoint(s) in {checkpoint_dir}")
            distributed.barrier()  # every rank has read state.json before rank 0 deletes it
            if rank == 0:
                for folder in found:
                    shutil.rmtree(folder)

    # Finish the step in progress, save, then exit: Ctrl-C never loses more than one step.
    stop: list[int] = []

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.append(signum)

    previous_handlers = {}
    if threading.current_thread() is threading.main_thread():  # signals reach only the main one
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous_handlers[sig] = signal.signal(sig, request_stop)

    def save(step: int) -> None:
        if checkpoint_dir is None or rank != 0:
            return
        folder = checkpoint.save_state(
            checkpoint_dir,
            step,
            model,
            optimizer,
            ema,
            {
                "fingerprint": identity,
                "history": result.history,
                "train_window": window,
                "best_val_loss": best["val_loss"],
                "best_step": best["step"],
            },
            keep=params.keep_checkpoints,
        )
        if best["weights"] is not None:
            checkpoint.save_file(best["weights"], str(folder / "best.safetensors"))

    def evaluate(step: int) -> None:
        metrics = measure(evaluated, val_batches(), byte_lengths, device)
        row = {
            "step": float(step),
            "seconds": time.perf_counter() - started + elapsed_before,
            "val_loss": metrics["loss"],
            "val_bpb": metrics["bpb"],
            "train_loss": window["loss_sum"] / max(window["steps"], 1),
        }
        window.update(loss_sum=0.0, steps=0)
        result.history.append(row)
        if metrics["loss"] < best["val_loss"]:
            weights = evaluated.state_dict()
            best.update(
                val_loss=metrics["loss"],
                step=step,
                weights={k: v.detach().clone().contiguous() for k, v in weights.items()},
            )
        tracking.log_metrics({"val/loss": metrics["loss"], "val/bpb": metrics["bpb"]}, step)
        log(f"step {step:>5} | val loss {metrics['loss']:.4f} | val bpb {metrics['bpb']:.4f}")

    elapsed_before = result.history[-1]["seconds"] if result.history else 0.0
    started = time.perf_counter()
    model.train()
    try:
        for step in range(start_step, params.max_steps):
            lr = learning_rate(step, params)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for micro in range(params.grad_accum):
                # Each rank its own share: the same global batch at any number of processes.
                index = (step * params.grad_accum + micro) * world + rank
                inputs, targets = train_data.batch(index)
                x = torch.from_numpy(inputs).to(device, non_blocking=True)
                y = torch.from_numpy(targets).to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_cuda):
                    logits, _, _ = forward(x)
                loss = F.cross_entropy(
                    logits.float().reshape(-1, logits.shape[-1]),
                    y.reshape(-1),
                    ignore_index=-1,
                    label_smoothing=params.label_smoothing,
                )
                (loss / params.grad_accum).backward()
                loss_sum += float(loss.detach())
            if params.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update_parameters(model)
            window["loss_sum"] += loss_sum / params.grad_accum
            window["steps"] += 1

            done = step + 1
            if done % params.log_interval == 0 or done == params.max_steps:
                seconds = time.perf_counter() - started
                tokens_per_s = (done - start_step) * x.numel() * params.grad_accum * world / seconds
                train_loss = loss_sum / params.grad_accum
                tracking.log_metrics(
                    {"train/loss": train_loss, "train/lr": lr, "train/tokens_per_s": tokens_per_s},
                    done,
                )
                eta = seconds / (done - start_step) * (params.max_steps - done)
                log(
                    f"step {done:>5}/{params.max_steps} | loss {train_loss:.4f} | lr {lr:.2e} | "
                    f"{tokens_per_s:,.0f} tok/s | eta {_format_eta(eta)}"
                )
            if done % params.eval_interval == 0 or done == params.max_steps:
                evaluate(done)
            if done % params.checkpoint_interval == 0 or done == params.max_steps:
                save(done)
            if distributed.any_rank(bool(stop)):
                save(done)
                signum = stop[0] if stop else signal.SIGTERM
                log(
                    f"{signal.Signals(signum).name}: checkpoint saved at step {done}; "
                    "run again to resume"
                )
                raise Interrupted(128 + signum)
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)

    last = result.history[-1]
    chosen = last
    if params.keep_best and best["weights"] is not None:
        model.load_state_dict(best["weights"])
        chosen = next(r for r in result.history if r["step"] == best["step"])
    elif ema is not None:
        model.load_state_dict(ema.module.state_dict())
    # Batches are pure functions of the step, so the first one tells the size of every one.
    tokens = params.max_steps * params.grad_accum * world * train_data.batch(0)[0].size
    result.final = {
        "val_loss": chosen["val_loss"],
        "val_bpb": chosen["val_bpb"],
        "step": chosen["step"],
        "steps": float(params.max_steps),
        "tokens": tokens,
    }
    result.speed = {"train_seconds": last["seconds"], "tokens_per_second": tokens / last["seconds"]}
    return result
