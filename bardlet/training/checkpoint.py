"""Saving and loading models: safetensors weights plus a JSON config, never pickle.

A model directory holds `model.safetensors` and `config.json` ({"model": GPTConfig fields,
plus whatever the stage records: run id, tokenizer hash, step, metrics}). Loading parses
JSON and raw tensors only, so a downloaded checkpoint cannot run code on your machine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

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
