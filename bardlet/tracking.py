"""The only place that talks to MLflow.

Default store: a SQLite file `mlflow.db` in the directory the pipeline runs from (the repo
root); `MLFLOW_TRACKING_URI` points it anywhere else (a tracking server, another database).
Each training stage opens a run; its id is written into the stage's outs (`run.json` beside
the model), so later stages attach their metrics to the run that made the model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow

EXPERIMENT = "bardlet"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"n_layer": 4}} -> {"model.n_layer": 4}, the keys MLflow shows."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


@contextmanager
def run(
    name: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
    enabled: bool = True,
) -> Iterator[str]:
    """Start (or, with run_id, reopen) an MLflow run; yields its id.

    enabled=False yields "" and records nothing (the other ranks of a torchrun job)."""
    if not enabled:
        yield ""
        return
    mlflow.set_tracking_uri(tracking_uri())
    if run_id is None:
        mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else name) as active:
        if params:
            # MLflow caps a param value at a few thousand characters: long lists are cut.
            mlflow.log_params({k: str(v)[:500] for k, v in flatten(params).items()})
        if tags:
            mlflow.set_tags(dict(tags))
        yield active.info.run_id


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log to the open run; without one (a notebook, a test) this does nothing."""
    if mlflow.active_run() is None:
        return
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    if mlflow.active_run() is None:
        return
    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def get_run(run_id: str) -> mlflow.entities.Run:
    mlflow.set_tracking_uri(tracking_uri())
    return mlflow.get_run(run_id)
