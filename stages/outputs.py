"""What both training stages write when they finish: model, metrics, loss curve."""

import csv
from pathlib import Path
from typing import Any

from bardlet import tracking
from bardlet.data.shards import write_json_atomic
from bardlet.model import GPT
from bardlet.training import checkpoint
from bardlet.training.loop import TrainResult
from stages.paths import PLOTS, REPORTS


def save_training(
    name: str, model: GPT, result: TrainResult, model_dir: Path, info: dict[str, Any]
) -> None:
    """models/<name>/, reports/<name>.json (dvc metrics) and reports/plots/<name>.csv (dvc plots)."""
    checkpoint.save(model, model_dir, {**info, "metrics": result.final})
    REPORTS.mkdir(exist_ok=True)
    write_json_atomic(REPORTS / f"{name}.json", {**result.final, "params": model.num_params()})
    PLOTS.mkdir(parents=True, exist_ok=True)
    with open(PLOTS / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(result.history[0]))
        writer.writeheader()
        writer.writerows(result.history)
    tracking.log_metrics({f"final_{k}": v for k, v in result.final.items()})
    tracking.log_artifact(PLOTS / f"{name}.csv", "plots")
