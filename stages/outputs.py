"""What both training stages share: train with the loop, then write model, metrics, curves.

The model and its numbers are the same on every machine (seeded, CPU kernels pinned in
stages/__init__.py), so they are DVC outs and committed. Wall-clock timings are not: they go
to reports/local/ (git-ignored; dvc.yaml's top-level `metrics` shows them), so a fresh clone's
run leaves `git status` clean.
"""

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bardlet import tracking
from bardlet.config import Params, TrainParams
from bardlet.data.loaders import Batch, BatchSource
from bardlet.files import write_csv_atomic, write_json_atomic
from bardlet.model import GPT
from bardlet.tokenizer import AnyTokenizer
from bardlet.training import checkpoint, distributed
from bardlet.training.distill import Teacher
from bardlet.training.loop import TrainResult, train
from stages.paths import CHECKPOINTS, LOCAL_REPORTS, PLOTS, REPORTS


def training_device(params: Params) -> torch.device:
    """params.yaml's `device`, or `--device` given to the stage once
    (`python -m stages.pretrain --device cpu`); joins torchrun's process group if any."""
    parser = argparse.ArgumentParser(description="Run this training stage.")
    parser.add_argument("--device", choices=["auto", "cuda", "mps", "cpu"], default=params.device)
    return distributed.init(parser.parse_known_args()[0].device)


@dataclass
class Saved:
    """What goes into the model folder when it is not just the trained model: LoRA saves the
    merged weights, with the adapter's files beside them and its numbers in the report."""

    model: GPT  # written as model.safetensors + config.json
    files: dict[str, bytes] = field(default_factory=dict)  # more files for the folder
    metrics: dict[str, float] = field(default_factory=dict)  # more keys for reports/<name>.json


def train_and_save(
    name: str,
    model: GPT,
    data: tuple[BatchSource, list[Batch]],
    settings: TrainParams,
    tokenizer: AnyTokenizer,
    model_dir: Path,
    identity: dict[str, Any],
    runs: dict[str, str],
    *,
    to_save: Callable[[GPT], Saved] | None = None,
    teacher: Teacher | None = None,
) -> None:
    """Train on (training batches, validation batches), resumable from checkpoints/<name>/,
    then save what `save_training` lists. `identity` (what the model is trained from) must
    match for a checkpoint to be resumed, and goes into the model's config.json; `runs` (the
    MLflow run ids) into mlflow.json beside it. `to_save` turns the trained model into what
    is saved (default: the model itself); with a `teacher`, it is distilled."""
    result = train(
        model,
        *data,
        settings,
        np.array(tokenizer.byte_lengths()),
        checkpoint_dir=CHECKPOINTS / name,
        report=tracking.log_metrics,
        run_identity={"tokenizer": tokenizer.hash, **identity},
        teacher=teacher,
    )
    if distributed.is_main():  # under torchrun only rank 0 writes
        info = {"tokenizer_hash": tokenizer.hash, **identity}
        saved = to_save(model) if to_save is not None else Saved(model)
        save_training(name, saved, result, model_dir, info, runs)


def save_training(
    name: str,
    saved: Saved,
    result: TrainResult,
    model_dir: Path,
    info: dict[str, Any],
    runs: dict[str, str],
) -> None:
    """models/<name>/, reports/<name>.json (dvc metrics), reports/plots/<name>.csv (dvc plots),
    and the timings: reports/local/<name>.json and .csv."""
    model = saved.model
    checkpoint.save(model, model_dir, {**info, "metrics": result.final}, runs, saved.files)
    numbers = {**result.final, "params": model.num_params(), **saved.metrics}
    write_json_atomic(REPORTS / f"{name}.json", numbers)
    curve = ("step", "train_loss", "val_loss", "val_bpb")
    write_csv_atomic(PLOTS / f"{name}.csv", [{k: row[k] for k in curve} for row in result.history])
    write_json_atomic(LOCAL_REPORTS / f"{name}.json", result.speed)
    timing = ("step", "seconds", "val_bpb")
    rows = [{k: row[k] for k in timing} for row in result.history]
    write_csv_atomic(LOCAL_REPORTS / f"{name}.csv", rows)
    tracking.log_metrics({f"kept/{k}": v for k, v in result.final.items()})
    tracking.log_metrics({f"speed/{k}": v for k, v in result.speed.items()})
    tracking.log_artifact(PLOTS / f"{name}.csv", "plots")
