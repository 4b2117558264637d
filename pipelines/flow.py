"""The pipeline as a Prefect flow: one task per DVC stage, in dvc.yaml's order.

DVC still decides what is cached: each task runs `dvc repro --single-item <stage>`, which
skips the stage when its deps and params are unchanged. Prefect adds what DVC lacks: retries
(the download can fail transiently), a run history, a UI, schedules.

With overrides of params.yaml (`{"sft.max_steps": 4}`) the run becomes a DVC experiment:
one task runs `dvc exp run --temp --name <name> --set-param k=v ...`, which copies the
project into a scratch folder inside `.dvc/`, reproduces what the overrides change there (the rest comes
from the DVC cache) and records the result as an experiment (`dvc exp show`). The work tree
and its params.yaml stay untouched; `dvc exp apply <name>` brings a result in.

The flow returns the experiment's name (None without overrides), the MLflow run id of the
chat model (models/chat/mlflow.json, or the experiment's sft run), the metrics
(reports/metrics.json) and, without overrides, what each stage did.

    python -m pipelines.flow                       # run once, offline (a temporary Prefect server)
    python -m pipelines.flow sft.max_steps=4       # the same as a DVC experiment
    python -m pipelines.flow presets/gpt-10m.yaml  # a preset file's overrides (and key=value)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from bardlet.tracking import flatten, run_of_experiment

# Stages that talk to the network get retries with back-off; the others fail fast.
RETRYING_STAGES = {"download"}
RETRY_DELAYS: list[float] = [5, 20, 60]

DVC = [sys.executable, "-m", "dvc"]
RUN_INFO = "models/chat/mlflow.json"  # written by the sft stage: its MLflow run id
METRICS = "reports/metrics.json"  # written by the evaluate stage


def stage_order(dvc_yaml: Path = Path("dvc.yaml")) -> list[str]:
    """Stage names sorted so each comes after the stages whose outs it depends on."""
    stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]

    def paths(entries: list) -> list[str]:
        return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]

    outs = {name: paths(s.get("outs", [])) for name, s in stages.items()}

    def upstream(name: str) -> set[str]:
        deps = paths(stages[name].get("deps", []))
        return {
            other
            for other, produced in outs.items()
            if other != name
            for dep in deps
            for out in produced
            if dep == out or dep.startswith(out + "/") or out.startswith(dep + "/")
        }

    ordered: list[str] = []
    while len(ordered) < len(stages):
        ready = [n for n in stages if n not in ordered and upstream(n) <= set(ordered)]
        if not ready:
            raise ValueError("dvc.yaml has a dependency cycle")
        ordered.append(ready[0])  # keep dvc.yaml's own order among ready stages
    return ordered


def set_param_args(overrides: dict[str, Any], params_yaml: Path) -> list[str]:
    """`--set-param key=value` arguments; every key must already exist in params.yaml
    (a typo fails here, before anything runs). Values are written as JSON, which the
    override grammar DVC uses (Hydra's) reads back with the same type."""
    params = yaml.safe_load(params_yaml.read_text(encoding="utf-8"))
    args: list[str] = []
    for key, value in flatten(overrides).items():
        node: Any = params
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                section = key.split(".")[0]
                known = sorted(node) if isinstance(node, dict) else []
                raise ValueError(
                    f"unknown parameter {key!r} (not in {params_yaml.name}; "
                    f"keys at that level: {', '.join(map(str, known)) or section})"
                )
            node = node[part]
        args += ["--set-param", f"{key}={json.dumps(value)}"]
    return args


def experiment_name(prefix: str = "bardlet") -> str:
    """A fresh, valid git ref name: bardlet-20260101-030000-1a2b."""
    return f"{prefix}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"


def dvc_env(workdir: Path) -> dict[str, str]:
    """The stages' environment. An experiment runs in a copy of the project inside
    .dvc/ (DVC's experiment scratch space), so MLflow's default store (mlflow.db in the working directory) would be
    thrown away with it: point it at the project's own store unless one is configured."""
    env = dict(os.environ)
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{workdir.resolve() / 'mlflow.db'}")
    return env


def stream(command: list[str], workdir: Path, what: str) -> list[str]:
    """Run a command in workdir, every output line into the Prefect logs; returns the
    last lines, or raises with them when it fails."""
    logger = get_run_logger()
    process = subprocess.Popen(
        command,
        cwd=workdir,
        env=dvc_env(workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    assert process.stdout is not None
    tail: list[str] = []
    for line in process.stdout:
        logger.info(line.rstrip())
        tail = (tail + [line.rstrip()])[-20:]
    if process.wait() != 0:
        raise RuntimeError(f"{what} failed:\n" + "\n".join(tail))
    return tail


@task(task_run_name="dvc-{stage}")
def run_stage(stage: str, workdir: str = ".") -> str:
    """Run one stage through DVC, streaming its output into the Prefect logs."""
    tail = stream([*DVC, "repro", "--single-item", stage], Path(workdir), f"stage {stage}")
    return "skipped (cached)" if any("didn't change" in line for line in tail) else "ran"


@task(task_run_name="dvc-exp-{name}")
def run_experiment(name: str, set_params: list[str], workdir: str = ".") -> dict[str, Any]:
    """`dvc exp run --temp`: the changed stages run in a temporary copy of the project;
    the work tree stays clean. Returns the experiment's git revision and metrics."""
    command = [*DVC, "exp", "run", "--temp", "--name", name, *set_params]
    stream(command, Path(workdir), f"experiment {name}")
    return experiment_info(name, Path(workdir))


def dvc_output(args: list[str], workdir: Path) -> str:
    """Run a quick DVC command in `workdir` and return what it printed (raises if it fails)."""
    done = subprocess.run(
        [*DVC, *args],
        cwd=workdir,
        env=dvc_env(workdir),
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return done.stdout


def experiment_info(name: str, workdir: Path) -> dict[str, Any]:
    """An experiment's revision and metrics from `dvc exp show --json`."""
    for baseline in json.loads(dvc_output(["exp", "show", "--json"], workdir)):
        for experiment in baseline.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                if rev.get("name") == name:
                    metrics = (rev.get("data") or {}).get("metrics") or {}
                    return {
                        "rev": rev["rev"],
                        "metrics": (metrics.get(METRICS) or {}).get("data") or {},
                    }
    raise RuntimeError(f"experiment {name!r} is not in `dvc exp show`")


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def run_summary(result: dict[str, Any], workdir: Path) -> str:
    """The run as Markdown for the Prefect UI (the flow run's Artifacts tab): what each stage
    did, the metrics, and where the MLflow run is."""
    lines = ["# bardlet pipeline run", ""]
    if result.get("experiment"):
        lines += [f"DVC experiment `{result['experiment']}` (`dvc exp show`), overrides:", ""]
        lines += [
            f"- `{key}` = `{json.dumps(value)}`" for key, value in result["overrides"].items()
        ]
        lines.append("")
    if result.get("stages"):
        lines += ["| DVC stage | result |", "| --- | --- |"]
        lines += [f"| {stage} | {done} |" for stage, done in result["stages"].items()]
        lines.append("")
    metrics = flatten(result.get("metrics") or {})
    if metrics:
        lines += [f"Metrics ({METRICS}):", "", "| metric | value |", "| --- | ---: |"]
        lines += [
            f"| {key} | {value:.4g} |" if isinstance(value, int | float) else f"| {key} | {value} |"
            for key, value in metrics.items()
        ]
        lines.append("")
    uri = dvc_env(workdir)["MLFLOW_TRACKING_URI"]
    lines.append(f"MLflow run `{result.get('run_id')}` in `{uri}` (experiment `bardlet`).")
    return "\n".join(lines) + "\n"


def publish(result: dict[str, Any], workdir: Path) -> dict[str, Any]:
    create_markdown_artifact(
        key="bardlet-run",
        markdown=run_summary(result, workdir),
        description="What the pipeline run did: stages, metrics, MLflow run",
    )
    return result


@flow(name="bardlet-pipeline", log_prints=True)
def pipeline(
    overrides: dict[str, Any] | None = None,
    experiment: str | None = None,
    workdir: str = ".",
) -> dict[str, Any]:
    """Every DVC stage in order. overrides: params.yaml keys to change for this run
    ({"sft.max_steps": 4}); with any, the run is the DVC experiment `experiment`
    (a generated name by default) and the work tree is left as it was."""
    root = Path(workdir)
    if not overrides:
        stages: dict[str, str] = {}
        for stage in stage_order(root / "dvc.yaml"):
            retries = 3 if stage in RETRYING_STAGES else 0
            stages[stage] = run_stage.with_options(
                retries=retries, retry_delay_seconds=RETRY_DELAYS
            )(stage, workdir)
        result = {
            "experiment": None,
            "run_id": read_json(root / RUN_INFO).get("run_id"),
            "metrics": read_json(root / METRICS),
            "stages": stages,
        }
        return publish(result, root)
    set_params = set_param_args(overrides, root / "params.yaml")
    name = experiment or experiment_name()
    info = run_experiment(name, set_params, workdir)
    rev = info["rev"]
    # The experiment's sft run, by its tag (mlflow.json is per run: not in the DVC cache).
    run_id = run_of_experiment(name, "sft", dvc_env(root)["MLFLOW_TRACKING_URI"])
    print(f"experiment {name} ({rev[:7]}): MLflow run {run_id}")
    result = {
        "experiment": name,
        "rev": rev,
        "overrides": flatten(overrides),
        "run_id": run_id,
        "metrics": info["metrics"],
    }
    return publish(result, root)


@flow(name="bardlet-sweep", log_prints=True)
def sweep(overrides: list[dict[str, Any]], workdir: str = ".") -> list[dict[str, Any]]:
    """One experiment per override dict, one after another (they share the DVC cache, so
    stages an override does not touch are not run again)."""
    return [pipeline(overrides=each, workdir=workdir) for each in overrides]


def parse_cli(args: list[str]) -> tuple[dict[str, Any], str | None]:
    """`sft.max_steps=4 model.n_layer=2` -> ({"sft.max_steps": 4, "model.n_layer": 2}, None).
    A YAML file (`presets/gpt-10m.yaml`: params.yaml's layout, only the keys it changes)
    adds its overrides, and its name starts the experiment's; key=value after it wins."""
    overrides: dict[str, Any] = {}
    preset = None
    for arg in args:
        if arg.endswith((".yaml", ".yml")) and "=" not in arg:
            path = Path(arg)
            if not path.is_file():
                raise SystemExit(
                    f"{arg}: no such preset file (see presets/ for the ones there are)"
                )
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
            if not isinstance(loaded, dict) or not loaded:
                raise SystemExit(f"{arg}: a preset is a YAML mapping of params.yaml keys to values")
            overrides |= flatten(loaded)
            preset = path.stem
            continue
        key, sep, value = arg.partition("=")
        if not sep:
            raise SystemExit(f"expected key=value or a preset .yaml file, got {arg!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides, preset


if __name__ == "__main__":
    overrides, preset = parse_cli(sys.argv[1:])
    name = experiment_name(preset) if preset else None
    print(json.dumps(pipeline(overrides=overrides or None, experiment=name)))
