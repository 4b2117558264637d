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
import mlflow.onnx

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


REGISTERED_MODEL = "bardlet"
CHAMPION = "champion"


def log_onnx_model(
    onnx_path: Path, input_example: dict[str, Any], val_bpb: float
) -> tuple[int, bool]:
    """Log the ONNX model (mlflow.onnx flavour, so `mlflow.pyfunc.load_model` runs it) to the
    open run, register it as `bardlet`, and move the `champion` alias to it when its
    validation bits per byte beat the current champion's. Returns (version, is_champion)."""
    import onnx

    info = mlflow.onnx.log_model(
        onnx.load(str(onnx_path)),
        name="model",
        input_example=input_example,
        pip_requirements=["onnxruntime", "numpy"],  # skips slow dependency inference
        onnx_execution_providers=["CPUExecutionProvider"],
        registered_model_name=REGISTERED_MODEL,
    )
    client = mlflow.MlflowClient()
    version = int(info.registered_model_version)
    client.set_model_version_tag(REGISTERED_MODEL, str(version), "val_bpb", str(val_bpb))
    try:
        champion = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION)
        best = float(champion.tags.get("val_bpb", "inf"))
    except mlflow.exceptions.MlflowException:
        best = float("inf")  # no champion yet
    if val_bpb < best:
        client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, str(version))
        return version, True
    return version, False
