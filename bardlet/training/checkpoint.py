"""Saving and loading models: safetensors weights plus a JSON config, never pickle.

A model directory holds `model.safetensors` and `config.json` ({"model": GPTConfig fields,
plus whatever the stage records: run id, tokenizer hash, step, metrics}). Loading parses
JSON and raw tensors only, so a downloaded checkpoint cannot run code on your machine.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch.optim.swa_utils import AveragedModel

from bardlet.model import GPT, GPTConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save(model: GPT, out_dir: Path, info: dict[str, Any]) -> None:
    """Write weights and config atomically (temp file + rename): a crash leaves the old pair."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_weights = out_dir / (WEIGHTS + ".tmp")
    save_model(model, str(tmp_weights))  # handles the tied embedding / head weight
    tmp_config = out_dir / (CONFIG + ".tmp")
    tmp_config.write_text(
        json.dumps({"model": model.config.to_dict(), **info}, indent=2) + "\n", encoding="utf-8"
    )
    os.replace(tmp_weights, out_dir / WEIGHTS)
    os.replace(tmp_config, out_dir / CONFIG)


def read_info(model_dir: Path) -> dict[str, Any]:
    path = model_dir / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: is {model_dir} a bardlet model directory?")
    info: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return info


def load(model_dir: Path, device: str | torch.device = "cpu") -> tuple[GPT, dict[str, Any]]:
    """The model (in eval mode) and its config.json contents."""
    info = read_info(model_dir)
    model = GPT(GPTConfig(**info["model"]))
    load_model(model, str(model_dir / WEIGHTS), device=str(device))
    model.to(device).eval()
    return model, info


# --- Resumable training state -------------------------------------------------------------
# A training checkpoint is a folder `step-000123/` holding the weights, the optimizer's
# tensors and the moving average of the weights if there is one (safetensors), and
# state.json: step, RNG state, history, and a fingerprint of the settings, so a run never
# resumes from a checkpoint made with other params or data.

STATE = "state.json"
OPTIMIZER = "optimizer.safetensors"
EMA = "ema.safetensors"


def save_state(
    root: Path,
    step: int,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    ema: AveragedModel | None,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint `root/step-XXXXXX` atomically (temp folder + rename); keep the last `keep`."""
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
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
        state = {**state, "ema_updates": int(ema.n_averaged)}
    payload = {
        "step": step,
        "param_groups": optimizer_state["param_groups"],
        "torch_rng": torch.get_rng_state().tolist(),
        **state,
    }
    (tmp / STATE).write_text(json.dumps(payload) + "\n", encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoints(root)[:-keep]:
        shutil.rmtree(old)
    return final


def checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a crash mid-write leaves only a .tmp- folder)."""
    if not root.exists():
        return []
    return sorted(p for p in root.glob("step-*") if (p / STATE).exists())


def load_state(
    folder: Path, model: GPT, optimizer: torch.optim.Optimizer, ema: AveragedModel | None
) -> dict[str, Any]:
    """Restore model, optimizer, moving average and RNG from a checkpoint; returns state.json."""
    state: dict[str, Any] = json.loads((folder / STATE).read_text(encoding="utf-8"))
    load_model(model, str(folder / WEIGHTS))
    tensors = load_file(str(folder / OPTIMIZER))
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        slots.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": state["param_groups"]})
    if ema is not None:
        load_model(ema.module, str(folder / EMA))
        ema.n_averaged.fill_(state["ema_updates"])
    torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    return state
