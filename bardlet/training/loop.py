"""One training loop for both stages: pretraining on text windows and SFT on conversations.

The loop only sees batches of (inputs, targets) with -1 where no loss is taken, so the same
code trains the base model and the chat model. On CUDA it uses bf16 autocast and
torch.compile; on CPU plain fp32 eager.

Resuming is exact: batches are a pure function of (seed, step), the learning rate a function
of the step, and a checkpoint holds weights, optimizer moments, the RNG state and the moving
average of the weights (ema_decay > 0), so a run killed at any point and resumed ends with
the same weights, bit for bit, as one that never stopped. SIGINT / SIGTERM finish the
current step, save a checkpoint and exit.

The loop trains whatever requires a gradient: every weight, or only the LoRA adapters that
bardlet/training/lora.py puts on a frozen model (the optimizer gets only those). With a
`teacher` (bardlet/training/distill.py) the loss blends in the teacher's distribution.
"""

from __future__ import annotations

import hashlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from bardlet.config import DpoParams, TrainParams
from bardlet.data.loaders import Batch, BatchSource
from bardlet.evaluation import measure
from bardlet.model import GPT
from bardlet.training import checkpoint, distributed
from bardlet.training.distill import Teacher, distillation_loss


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


def make_optimizer(
    model: torch.nn.Module, params: TrainParams | DpoParams, device: torch.device
) -> torch.optim.AdamW:
    # Only what trains (LoRA freezes the base: its weights get no gradient and no moments).
    # Weight decay on matrices only: decaying norms' gains would just fight the normalisation.
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": params.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # Fused (one kernel for every tensor) on CUDA. On the CPU it would save 0.7% of a default
    # step and change the default run's numbers: measured in BENCHMARKS.md, not taken.
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


class Diverged(SystemExit):
    """The loss or the gradients stopped being finite numbers: training stops there, before
    the optimizer writes NaN into the weights, and the last checkpoint stays the good one."""


def _format_eta(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


# Settings that change how often things are logged, measured or saved, never the weights:
# a resumed run may change them freely.
COSMETIC = {
    "resume",
    "threads",
    "keep_checkpoints",
    "checkpoint_interval",
    "log_interval",
    "eval_interval",
    "eval_batches",
}


def fingerprint(params: TrainParams, model: GPT, extra: dict[str, Any]) -> str:
    """What a checkpoint must agree on to be resumed: the settings that change the math,
    the model's shape, and whatever the caller adds (tokenizer, data)."""
    settings = params.model_dump(exclude=COSMETIC)
    blob = json.dumps([settings, model.config.to_dict(), extra], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def train(
    model: GPT,
    train_data: BatchSource,
    val_batches: Sequence[Batch],
    params: TrainParams,
    byte_lengths: np.ndarray,
    checkpoint_dir: Path | None = None,
    run_identity: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    report: Callable[[dict[str, float], int], None] = lambda _metrics, _step: None,
    teacher: Teacher | None = None,
) -> TrainResult:
    """Train `model` in place for params.max_steps optimizer steps.

    train_data.batch(step) gives the batch of a micro-step; `val_batches` are measured every
    eval_interval steps. With checkpoint_dir, training state is saved every
    checkpoint_interval steps and (resume: auto) picked up from the newest checkpoint that
    matches these settings. At the end the model holds the weights with the best validation
    loss (keep_best) or the last ones; with ema_decay > 0, their moving average. Metrics leave
    through `report(metrics, step)` (the stages pass MLflow's logger) and `log` (the console).
    With a `teacher`, the training loss is the distillation loss (validation stays plain).
    """
    device = next(model.parameters()).device
    if params.threads:
        torch.set_num_threads(params.threads)
    torch.manual_seed(params.seed)
    optimizer = make_optimizer(model, params, device)
    use_cuda = device.type == "cuda"
    low_precision = distributed.autocast_dtype(device)
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
    identity = fingerprint(params, model, run_identity or {})
    state = checkpoint.TrainState()
    if checkpoint_dir is not None:
        resumed = checkpoint.resume(checkpoint_dir, identity, params.resume == "auto", log)
        if resumed is not None:
            state = checkpoint.load_state(resumed, model, optimizer, ema)

    # Finish the step in progress, save, then exit: Ctrl-C never loses more than one step.
    stop: list[int] = []

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.append(signum)

    previous_handlers = {}
    if threading.current_thread() is threading.main_thread():  # signals reach only the main one
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous_handlers[sig] = signal.signal(sig, request_stop)

    def save() -> None:
        if checkpoint_dir is not None and rank == 0:
            checkpoint.save_state(
                checkpoint_dir, state, model, optimizer, ema, identity, params.keep_checkpoints
            )

    def evaluate() -> None:
        metrics = measure(evaluated, val_batches, byte_lengths, device)
        state.history.append(
            {
                "step": float(state.step),
                "seconds": time.perf_counter() - started + elapsed_before,
                "val_loss": metrics["loss"],
                "val_bpb": metrics["bpb"],
                "train_loss": state.loss_sum / max(state.loss_steps, 1),
            }
        )
        state.loss_sum, state.loss_steps = 0.0, 0
        if metrics["loss"] < state.best_val_loss:
            weights = evaluated.state_dict()
            state.best_val_loss, state.best_step = metrics["loss"], state.step
            state.best_weights = {k: v.detach().clone().contiguous() for k, v in weights.items()}
        report({"val/loss": metrics["loss"], "val/bpb": metrics["bpb"]}, state.step)
        log(f"step {state.step:>5} | val loss {metrics['loss']:.4f} | val bpb {metrics['bpb']:.4f}")

    elapsed_before = state.history[-1]["seconds"] if state.history else 0.0
    start_step = state.step
    started = time.perf_counter()
    model.train()
    try:
        while state.step < params.max_steps:
            lr = learning_rate(state.step, params)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for micro in range(params.grad_accum):
                # Each rank its own share: the same global batch at any number of processes.
                index = (state.step * params.grad_accum + micro) * world + rank
                inputs, targets = train_data.batch(index)
                x = torch.from_numpy(inputs).to(device, non_blocking=True)
                y = torch.from_numpy(targets).to(device, non_blocking=True)
                with torch.autocast(
                    device.type, dtype=low_precision, enabled=low_precision is not None
                ):
                    logits, _, _ = forward(x)
                    taught = teacher.logits(x) if teacher is not None else None
                if teacher is None or taught is None:
                    loss = F.cross_entropy(
                        logits.float().reshape(-1, logits.shape[-1]),
                        y.reshape(-1),
                        ignore_index=-1,
                        label_smoothing=params.label_smoothing,
                    )
                else:
                    loss = distillation_loss(
                        logits, taught, y, teacher.alpha, teacher.temperature,
                        params.label_smoothing,
                    )  # fmt: skip
                (loss / params.grad_accum).backward()
                loss_sum += float(loss.detach())
            # The gradient norm, clipped to grad_clip (0: measured, not clipped).
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip or math.inf)
            if not (math.isfinite(loss_sum) and math.isfinite(float(norm))):
                what = "loss" if not math.isfinite(loss_sum) else "gradient norm"
                raise Diverged(
                    f"training diverged at step {state.step + 1}: the {what} is "
                    f"{loss_sum if what == 'loss' else float(norm)}. The likely cause is a "
                    f"learning rate too high for this model ({params.learning_rate:g}; the "
                    "defaults use 2e-3 and 1e-3): lower it, or add warmup_steps. The last "
                    "checkpoint before this step is kept; nothing was written."
                )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update_parameters(model)
            state.step += 1
            state.loss_sum += loss_sum / params.grad_accum
            state.loss_steps += 1

            done = state.step
            if done % params.log_interval == 0 or done == params.max_steps:
                seconds = time.perf_counter() - started
                tokens_per_s = (done - start_step) * x.numel() * params.grad_accum * world / seconds
                train_loss = loss_sum / params.grad_accum
                report(
                    {"train/loss": train_loss, "train/lr": lr, "train/tokens_per_s": tokens_per_s},
                    done,
                )
                eta = seconds / (done - start_step) * (params.max_steps - done)
                log(
                    f"step {done:>5}/{params.max_steps} | loss {train_loss:.4f} | lr {lr:.2e} | "
                    f"{tokens_per_s:,.0f} tok/s | eta {_format_eta(eta)}"
                )
            if done % params.eval_interval == 0 or done == params.max_steps:
                evaluate()
            if done % params.checkpoint_interval == 0 or done == params.max_steps:
                save()
            if distributed.any_rank(bool(stop)):
                save()
                signum = stop[0] if stop else signal.SIGTERM
                log(
                    f"{signal.Signals(signum).name}: checkpoint saved at step {done}; "
                    "run again to resume"
                )
                raise Interrupted(128 + signum)
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
    return finish(model, ema, state, params, train_data.batch(0)[0].size * world)


def finish(
    model: GPT,
    ema: AveragedModel | None,
    state: checkpoint.TrainState,
    params: TrainParams,
    tokens_per_micro_batch: int,
) -> TrainResult:
    """Put the kept weights into `model` and say what they scored."""
    last = chosen = state.history[-1]
    if params.keep_best and state.best_weights is not None:
        model.load_state_dict(state.best_weights)
        chosen = next(r for r in state.history if r["step"] == state.best_step)
    elif ema is not None:
        model.load_state_dict(ema.module.state_dict())
    tokens = params.max_steps * params.grad_accum * tokens_per_micro_batch
    return TrainResult(
        history=state.history,
        final={
            "val_loss": chosen["val_loss"],
            "val_bpb": chosen["val_bpb"],
            "step": chosen["step"],
            "steps": float(params.max_steps),
            "tokens": tokens,
        },
        speed={"train_seconds": last["seconds"], "tokens_per_second": tokens / last["seconds"]},
    )
