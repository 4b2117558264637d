"""Saving and loading models: safetensors weights plus a JSON config, never pickle.

A model directory holds `model.safetensors` and `config.json` ({"model": GPTConfig fields,
plus what the stage records: tokenizer hash, what it was trained from, metrics}): the same
bytes from the same data and code, on every machine. The MLflow run that made the model is
per run, so it goes to `mlflow.json` beside them, which .dvcignore leaves out of the folder's
hash (a later stage still finds the run there). A LoRA fine-tune adds its adapter,
`adapter.safetensors` and `adapter_config.json` (bardlet/training/lora.py). Loading parses
JSON and raw tensors only, so a downloaded checkpoint cannot run code on your machine.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch.optim.swa_utils import AveragedModel

from bardlet.files import new_folder, write_bytes_atomic, write_text_atomic
from bardlet.model import GPT, GPTConfig
from bardlet.training import distributed

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
RUNS = "mlflow.json"  # {"run_id": ..., ...}: per run, not part of the model (see .dvcignore)


def save(
    model: GPT,
    out_dir: Path,
    info: dict[str, Any],
    runs: dict[str, str] | None = None,
    files: Mapping[str, bytes] | None = None,
) -> None:
    """Write weights, config (with `info`), the MLflow `runs` and any other `files` (name ->
    bytes: a LoRA adapter) into a folder beside `out_dir`, then swap it in: a crash or a full
    disk leaves the previous model whole."""
    with new_folder(out_dir) as folder:
        save_model(model, str(folder / WEIGHTS))  # handles the tied embedding / head weight
        _fsync(folder / WEIGHTS)
        config = json.dumps({"model": model.config.to_dict(), **info}, indent=2) + "\n"
        write_text_atomic(folder / CONFIG, config)
        if runs:
            write_text_atomic(folder / RUNS, json.dumps(runs, indent=2) + "\n")
        for name, data in (files or {}).items():
            write_bytes_atomic(folder / name, data)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _damaged(path: Path, error: Exception, model_dir: Path) -> ValueError:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
    return ValueError(
        f"{path} is damaged ({reason}): restore it with `dvc checkout {model_dir}`, or "
        "rebuild it with `dvc repro --force` on the stage that writes it "
        "(pretrain: models/base, sft: models/chat)"
    )


def read_info(model_dir: Path) -> dict[str, Any]:
    path = model_dir / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: is {model_dir} a bardlet model directory?")
    try:
        info = json.loads(path.read_bytes())
        GPTConfig(**info["model"])
    except (ValueError, KeyError, TypeError) as error:
        raise _damaged(path, error, model_dir) from None
    if not isinstance(info, dict):
        raise _damaged(path, ValueError("not a JSON object"), model_dir)
    return {**info, **runs_of(model_dir)}


def runs_of(model_dir: Path) -> dict[str, str]:
    """The MLflow runs recorded beside a model ({} if none: pulled from a DVC remote, say)."""
    try:
        runs = json.loads((model_dir / RUNS).read_bytes())
    except (OSError, ValueError):
        return {}
    return runs if isinstance(runs, dict) else {}


def load(model_dir: Path, device: str | torch.device = "cpu") -> tuple[GPT, dict[str, Any]]:
    """The model (in eval mode) and its config.json contents, with its MLflow runs."""
    info = read_info(model_dir)
    model = GPT(GPTConfig(**info["model"]))
    try:
        load_model(model, str(model_dir / WEIGHTS), device=str(device))
    except (OSError, RuntimeError, ValueError, SafetensorError) as error:  # cut short, other shapes
        raise _damaged(model_dir / WEIGHTS, error, model_dir) from None
    model.to(device).eval()
    return model, info


# --- Resumable training state -------------------------------------------------------------
# A training checkpoint is a folder `step-000123/` holding the weights, the optimizer's
# tensors, the moving average of the weights if there is one, the best weights so far
# (safetensors), and state.json: step, RNG state, history, best score, and a fingerprint of
# the settings, so a run never resumes from a checkpoint made with other params or data.

STATE = "state.json"
OPTIMIZER = "optimizer.safetensors"
EMA = "ema.safetensors"
BEST = "best.safetensors"


@dataclass
class TrainState:
    """Where training is, besides the weights and optimizer: what a checkpoint restores."""

    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # one row per evaluation
    best_val_loss: float = math.inf
    best_step: int = 0
    best_weights: dict[str, torch.Tensor] | None = None
    loss_sum: float = 0.0  # training loss summed since the last evaluation (for the curves)
    loss_steps: int = 0


def checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a crash mid-write leaves only a .tmp- folder)."""
    if not root.exists():
        return []
    return sorted(p for p in root.glob("step-*") if (p / STATE).exists())


def resume(root: Path, fingerprint: str, allowed: bool, log: Callable[[str], None]) -> Path | None:
    """The newest checkpoint under `root` made with the same `fingerprint`, if resuming is
    `allowed`; otherwise the old checkpoints (another run's) are removed and None returned."""
    found = checkpoints(root)
    if not found:
        return None
    newest = found[-1]
    state = json.loads((newest / STATE).read_text(encoding="utf-8"))
    if allowed and state.get("fingerprint") == fingerprint:
        log(f"resuming from {newest} (step {state['step']})")
        return newest
    log(f"starting afresh: removing {len(found)} old checkpoint(s) in {root}")
    distributed.barrier()  # every rank has read state.json before rank 0 deletes it
    if distributed.rank() == 0:
        for folder in found:
            shutil.rmtree(folder)
    return None


def save_state(
    root: Path,
    state: TrainState,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    ema: AveragedModel | None,
    fingerprint: str,
    keep: int,
) -> Path:
    """Write checkpoint `root/step-XXXXXX` atomically (temp folder + rename); keep the last `keep`."""
    final = root / f"step-{state.step:06d}"
    tmp = root / f".tmp-step-{state.step:06d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        _write_state(tmp, state, model, optimizer, ema, fingerprint)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no half checkpoint
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoints(root)[:-keep]:
        shutil.rmtree(old)
    return final


def _write_state(
    tmp: Path,
    state: TrainState,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    ema: AveragedModel | None,
    fingerprint: str,
) -> None:
    save_model(model, str(tmp / WEIGHTS))
    optimizer_state = optimizer.state_dict()
    tensors = {
        f"{index}.{name}": value.contiguous()
        for index, slots in optimizer_state["state"].items()
        for name, value in slots.items()
    }
    save_file(tensors, str(tmp / OPTIMIZER))
    if ema is not None:
        save_model(ema.module, str(tmp / EMA))
    if state.best_weights is not None:
        save_file(state.best_weights, str(tmp / BEST))
    payload = {
        "step": state.step,
        "fingerprint": fingerprint,
        "history": state.history,
        "best_val_loss": state.best_val_loss,
        "best_step": state.best_step,
        "train_window": {"loss_sum": state.loss_sum, "steps": state.loss_steps},
        "ema_updates": int(ema.n_averaged) if ema is not None else None,
        "param_groups": optimizer_state["param_groups"],
        "torch_rng": torch.get_rng_state().tolist(),
    }
    for name in (WEIGHTS, OPTIMIZER, EMA, BEST):
        if (tmp / name).exists():
            _fsync(tmp / name)
    write_text_atomic(tmp / STATE, json.dumps(payload) + "\n")


def load_state(
    folder: Path, model: GPT, optimizer: torch.optim.Optimizer, ema: AveragedModel | None
) -> TrainState:
    """Restore model, optimizer, moving average and RNG from a checkpoint."""
    saved: dict[str, Any] = json.loads((folder / STATE).read_text(encoding="utf-8"))
    load_model(model, str(folder / WEIGHTS))
    tensors = load_file(str(folder / OPTIMIZER))
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        slots.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": saved["param_groups"]})
    if ema is not None:
        load_model(ema.module, str(folder / EMA))
        ema.n_averaged.fill_(saved["ema_updates"])
    torch.set_rng_state(torch.tensor(saved["torch_rng"], dtype=torch.uint8))
    window = saved.get("train_window", {})
    return TrainState(
        step=saved["step"],
        history=saved["history"],
        best_val_loss=saved["best_val_loss"],
        best_step=saved["best_step"],
        best_weights=load_file(str(folder / BEST)) if (folder / BEST).exists() else None,
        loss_sum=window.get("loss_sum", 0.0),
        loss_steps=window.get("steps", 0),
    )
