"""What both training stages write when they finish: model, metrics, loss curve, timings.

The model and its numbers are the same on every machine (seeded, CPU kernels pinned in
stages/__init__.py), so they are DVC outs and committed. Wall-clock timings are not: they go
to reports/local/ (git-ignored; dvc.yaml's top-level `metrics` shows them), so a fresh clone's
run leaves `git status` clean.
"""

from pathlib import Path
from typing import Any

from bardlet import tracking
from bardlet.files import write_csv_atomic, write_json_atomic
from bardlet.model import GPT
from bardlet.training import checkpoint
from bardlet.training.loop import TrainResult
from stages.paths import LOCAL_REPORTS, PLOTS, REPORTS


def save_training(
    name: str, model: GPT, result: TrainResult, model_dir: Path, info: dict[str, Any]
) -> None:
    """models/<name>/, reports/<name>.json (dvc metrics), reports/plots/<name>.csv (dvc plots),
    and the timings: reports/local/<name>.json and .csv."""
    checkpoint.save(model, model_dir, {**info, "metrics": result.final})
    write_json_atomic(REPORTS / f"{name}.json", {**result.final, "params": model.num_params()})
    curve = ("step", "train_loss", "val_loss", "val_bpb")
    write_csv_atomic(PLOTS / f"{name}.csv", [{k: row[k] for k in curve} for row in result.history])
    write_json_atomic(LOCAL_REPORTS / f"{name}.json", result.speed)
    timing = ("step", "seconds", "val_bpb")
    rows = [{k: row[k] for k in timing} for row in result.history]
    write_csv_atomic(LOCAL_REPORTS / f"{name}.csv", rows)
    tracking.log_metrics({f"kept/{k}": v for k, v in result.final.items()})
    tracking.log_metrics({f"speed/{k}": v for k, v in result.speed.items()})
    tracking.log_artifact(PLOTS / f"{name}.csv", "plots")
