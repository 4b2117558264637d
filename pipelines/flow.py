"""The pipeline as a Prefect flow: one task per DVC stage, in dvc.yaml's order.

DVC still decides what is cached: each task runs `dvc repro --single-item <stage>`, which
skips the stage when its deps and params are unchanged. Prefect adds what DVC lacks: retries
(the download can fail transiently), a run history, a UI, schedules.

    python -m pipelines.flow            # run once, offline (a temporary local Prefect server)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task

# Stages that talk to the network get retries with back-off; the others fail fast.
RETRYING_STAGES = {"download"}


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


@task(task_run_name="dvc-{stage}")
def run_stage(stage: str) -> str:
    """Run one stage through DVC, streaming its output into the Prefect logs."""
    logger = get_run_logger()
    command = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert process.stdout is not None
    tail: list[str] = []
    for line in process.stdout:
        logger.info(line.rstrip())
        tail = (tail + [line.rstrip()])[-20:]
    if process.wait() != 0:
        raise RuntimeError(f"stage {stage} failed:\n" + "\n".join(tail))
    return "skipped (cached)" if any("didn't change" in line for line in tail) else "ran"


@flow(name="bardlet-pipeline", log_prints=True)
def pipeline() -> dict[str, str]:
    """Every DVC stage in order; returns what each one did."""
    results: dict[str, str] = {}
    for stage in stage_order():
        retries = 3 if stage in RETRYING_STAGES else 0
        results[stage] = run_stage.with_options(retries=retries, retry_delay_seconds=[5, 20, 60])(
            stage
        )
    return results


if __name__ == "__main__":
    print(json.dumps(pipeline()))
