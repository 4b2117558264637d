"""The only place that talks to MLflow.

Default store: a SQLite file `mlflow.db` in the directory the pipeline runs from (the repo
root); `MLFLOW_TRACKING_URI` points it anywhere else (a tracking server, another database).
Each training stage opens a run; its id is written into the stage's outs (`config.json` beside
the model), so later stages attach their metrics to the run that made the model.

Run structure: one parent run per base model. The pretrain run is the parent; each sft run is
a nested child of it (tag `mlflow.parentRunId`, read from models/base/config.json), so every
fine-tune of one base model groups under it in the UI and compares side by side. evaluate and
export reopen the sft run: their numbers belong to the chat model that run made.

Every stage run carries the tags of `provenance()`: git commit and dirty flag, the DVC
experiment (when run by `dvc exp run`), and hashes of the data shards, tokenizer and params.
Runs are named `<stage>-<DVC experiment name>` under `dvc exp run`, else
`<stage>-<first 8 hex digits of the params hash>`, so reruns and experiments tell apart.

Metric names are paths, one scheme everywhere, which the MLflow UI groups by their first
part: `train/loss`, `train/lr`, `train/tokens_per_s` and `val/loss`, `val/bpb` per step;
`kept/val_bpb` (the weights a stage kept); `speed/train_seconds`; `eval/oasst/bpb`,
`eval/shakespeare/bpb`, `eval/oasst/rouge_l`; `export/parity_max_abs_diff`, ...
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import mlflow.onnx
import yaml
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from bardlet.files import output, sha256_json

EXPERIMENT = "bardlet"
# MLflow 3's UI tells GenAI experiments (traces) from model training ones by this tag.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def flatten(params: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """{"model": {"n_layer": 4}} -> {"model.n_layer": 4}, the keys MLflow shows for params
    (and params.yaml's own dotted keys); sep="/" gives metric names."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}{sep}", sep))
        else:
            flat[name] = value
    return flat


UNKNOWN = "unknown"
# Files a pipeline run rewrites itself (dvc.lock; reports/ holds the uncached metrics and
# plots): changes there do not make the code a run used "dirty".
GENERATED = ("dvc.lock", "reports")


def provenance(root: str | Path = ".", tokenizer_hash: str | None = None) -> dict[str, str]:
    """The tags that say what made a run, read from the project at `root`:

    - `git.commit` (`git rev-parse HEAD`) and `git.dirty` ("true" when tracked files differ
      from it, the pipeline's own dvc.lock and reports/ aside); "unknown" outside git.
    - `dvc.exp_name`, `dvc.exp_baseline_rev`: set by DVC in the stages' environment during
      `dvc exp run` (DVC_EXP_NAME, DVC_EXP_BASELINE_REV); `dvc.stage` (DVC_STAGE) under any
      DVC run. Absent otherwise.
    - `data.hash`: sha256 over the shard manifests' file sha256s (data/shards/*/*/manifest.json).
    - `tokenizer.hash`: Tokenizer.hash, given or read from the shard manifests.
    - `params.hash`: sha256 of params.yaml's content as canonical JSON (comments and key
      order do not count).
    Cheap (two git calls and a few small files), so every stage run records it."""
    root = Path(root)
    tags: dict[str, str] = {}
    head = output("git", "rev-parse", "HEAD", cwd=root)
    tags["git.commit"] = tags["git.dirty"] = head or UNKNOWN
    if head:  # dirty: `git status` lists a changed tracked file (it prints nothing if clean)
        excluded = [f":(exclude){path}" for path in GENERATED]
        status = ["status", "--porcelain", "--untracked-files=no", "--", ".", *excluded]
        tags["git.dirty"] = str(output("git", *status, cwd=root) is not None).lower()
    for tag, variable in (
        ("dvc.exp_name", "DVC_EXP_NAME"),
        ("dvc.exp_baseline_rev", "DVC_EXP_BASELINE_REV"),
        ("dvc.stage", "DVC_STAGE"),
    ):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]

    manifests: dict[str, list[str]] = {}
    tokenizer_hashes = set()
    for path in sorted(root.glob("data/shards/*/*/manifest.json")):
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            manifests[path.parent.relative_to(root).as_posix()] = [
                f["sha256"] for f in manifest["files"]
            ]
            tokenizer_hashes.add(str(manifest["tokenizer_hash"]))
        except (OSError, ValueError, KeyError, TypeError):
            manifests[path.parent.relative_to(root).as_posix()] = [UNKNOWN]
    tags["data.hash"] = sha256_json(manifests) if manifests else UNKNOWN
    if tokenizer_hash is None and len(tokenizer_hashes) == 1:
        tokenizer_hash = tokenizer_hashes.pop()
    tags["tokenizer.hash"] = tokenizer_hash or UNKNOWN
    try:
        params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
        tags["params.hash"] = sha256_json(params)
    except (OSError, yaml.YAMLError):
        tags["params.hash"] = UNKNOWN
    return tags


def _parent_experiment(parent_run_id: str | None) -> str | None:
    """The experiment of the parent run when this store holds it (it may not: models/base
    can come from a DVC remote, trained against another store); None otherwise."""
    if not parent_run_id:
        return None
    try:
        parent = mlflow.MlflowClient().get_run(parent_run_id)
    except mlflow.exceptions.MlflowException:
        return None
    if parent.info.lifecycle_stage != "active":
        return None  # deleted
    return str(parent.info.experiment_id)


def experiment() -> str:
    """The id of the `bardlet` experiment (created, and marked as model training, if new)."""
    found = mlflow.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        return str(found.experiment_id)
    return str(mlflow.MlflowClient().create_experiment(EXPERIMENT, tags=EXPERIMENT_KIND))


def run_name(stage: str, tags: Mapping[str, str]) -> str:
    """`sft-bardlet-20260101-030000-1a2b` under `dvc exp run`, else `sft-1a2b3c4d` (params)."""
    return f"{stage}-{tags.get('dvc.exp_name') or tags.get('params.hash', UNKNOWN)[:8]}"


def ui_url(experiment_id: str, host: str = "http://127.0.0.1:5000") -> str:
    """Where `mlflow ui` shows the experiment's runs table. The workflowType parameter opens
    the "Machine learning" view: MLflow 3.17's UI starts in its GenAI view (traces) otherwise,
    whatever the experiment's kind tag says."""
    return f"{host}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


@contextmanager
def run(
    name: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
    enabled: bool = True,
    parent_run_id: str | None = None,
    tokenizer_hash: str | None = None,
) -> Iterator[str]:
    """Start (or, with run_id, reopen) an MLflow run; yields its id.

    A new run gets the tags of `provenance()` plus `tags`, and is nested under
    `parent_run_id` when the store holds that run. A reopened run (evaluate and export attach
    to the sft run) keeps its own provenance; the reopening stage adds `<name>.<tag>` only for
    values that differ (evaluate re-run after a commit, say).
    enabled=False yields "" and records nothing (the other ranks of a torchrun job)."""
    if not enabled:
        yield ""
        return
    mlflow.set_tracking_uri(tracking_uri())
    found = provenance(tokenizer_hash=tokenizer_hash)
    if run_id is None:
        experiment_id = _parent_experiment(parent_run_id)
        if experiment_id is None:
            experiment_id = experiment()
            parent_run_id = None
        start = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=run_name(name, found),
            parent_run_id=parent_run_id,
            tags={**found, **(tags or {})},
        )
    else:
        own = mlflow.MlflowClient().get_run(run_id).data.tags
        start = mlflow.start_run(run_id=run_id)
        differing = {
            f"{name}.{k}": v
            for k, v in found.items()
            if own.get(k) != v and k != "dvc.stage"  # the stage is in the key already
        }
        tags = {**differing, **(tags or {})}
    with start as active:
        if params:
            # MLflow caps a param value at a few thousand characters: long lists are cut.
            mlflow.log_params({k: str(v)[:500] for k, v in flatten(params).items()})
        if tags and run_id is not None:
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


def run_of_experiment(name: str, stage: str, uri: str | None = None) -> str | None:
    """The run that `stage` made under the DVC experiment `name` (its `dvc.exp_name` tag), or
    None: the stage did not run in it (DVC had it cached), or the store has no such run."""
    client = mlflow.MlflowClient(uri or tracking_uri())
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return None
    found = client.search_runs(
        [experiment.experiment_id],
        f"tags.`dvc.exp_name` = '{name}' and tags.`dvc.stage` = '{stage}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0].info.run_id if found else None


def get_run(run_id: str) -> mlflow.entities.Run:
    mlflow.set_tracking_uri(tracking_uri())
    return mlflow.get_run(run_id)


REGISTERED_MODEL = "bardlet"
CHAMPION = "champion"
# What makes a registered version the champion: bits per byte of the chat model on the
# OASST1 validation conversations (assistant tokens only; reports/metrics.json). Lower wins.
CHAMPION_METRIC = "eval/oasst/bpb"
MODEL_DESCRIPTION = (
    "bardlet's chat model: a small GPT exported to ONNX with a KV cache. Inputs: input_ids "
    "int64 [batch, new tokens], attention_mask int64 [batch, cached + new tokens] (1 = token, "
    "0 = left padding) and past.{layer}.{key,value} float32 [batch, heads, cached "
    "tokens, head dim] (0 cached tokens for a prompt); outputs: logits [batch, new tokens, "
    "vocab] and present.{layer}.{key,value}, the cache to feed back. The alias `champion` is "
    f"the version with the lowest {CHAMPION_METRIC} (OASST1 validation bits per byte)."
)


def onnx_signature(onnx_path: Path) -> ModelSignature:
    """The graph's inputs and outputs as an MLflow signature; named dimensions (batch,
    sequence, cache length) become -1, so any size validates."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph

    def spec(value: Any) -> TensorSpec:
        kind = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type)
        return TensorSpec(dtype, dims, value.name)

    return ModelSignature(
        inputs=Schema([spec(v) for v in graph.input]),
        outputs=Schema([spec(v) for v in graph.output]),
    )


def log_onnx_model(
    onnx_path: Path, input_example: dict[str, Any], score: float, description: str
) -> tuple[int, bool]:
    """Log the ONNX model (mlflow.onnx flavour, so `mlflow.pyfunc.load_model` runs it) to the
    open run, register it as `bardlet` with `description`, tag it with its CHAMPION_METRIC
    `score`, and move the `champion` alias to it when the score beats the current
    champion's. Returns (version, is_champion)."""
    import onnx

    info = mlflow.onnx.log_model(
        onnx.load(str(onnx_path)),
        name="model",
        signature=onnx_signature(onnx_path),
        input_example=input_example,
        pip_requirements=["onnxruntime", "numpy"],  # skips slow dependency inference
        onnx_execution_providers=["CPUExecutionProvider"],
        registered_model_name=REGISTERED_MODEL,
    )
    client = mlflow.MlflowClient()
    version = str(info.registered_model_version)
    client.update_registered_model(REGISTERED_MODEL, description=MODEL_DESCRIPTION)
    client.update_model_version(REGISTERED_MODEL, version, description=description)
    client.set_model_version_tag(REGISTERED_MODEL, version, CHAMPION_METRIC, str(score))
    try:
        champion = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION)
        best = float(champion.tags.get(CHAMPION_METRIC, "inf"))
    except mlflow.exceptions.MlflowException:
        best = float("inf")  # no champion yet
    if score < best:
        client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, version)
        return int(version), True
    return int(version), False
