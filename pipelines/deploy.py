"""Deployments of the pipeline: a nightly retrain on a cron, and a parameter sweep (a list of
params.yaml overrides, one DVC experiment each, one after another).

Served from this process (one machine, no work pool):

    prefect server start --host 127.0.0.1          # the API and UI: http://127.0.0.1:4200
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m pipelines.deploy
    prefect deployment run 'bardlet-pipeline/nightly'
    prefect deployment run 'bardlet-sweep/sweep' --param 'overrides=[{"sft.max_steps": 100}]'

`python -m pipelines.deploy --workdir DIR` runs the flows in another project directory.

Or through a process work pool, so workers on other machines run them: `prefect.yaml` at the
repo root declares the same two deployments (a test keeps it in step with DEPLOYMENTS):

    prefect work-pool create local --type process
    prefect deploy --all                            # from the repo root
    BARDLET_PROJECT=/path/to/bardlet prefect worker start --pool local   # on each machine
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, cast

from prefect import Flow, serve
from prefect.deployments.runner import RunnerDeployment

from pipelines.flow import pipeline, sweep

DEFAULT_NIGHTLY_CRON = "0 3 * * *"  # 03:00 every night
NIGHTLY_CRON = os.environ.get("BARDLET_NIGHTLY_CRON", DEFAULT_NIGHTLY_CRON)
DEFAULT_SWEEP: list[dict[str, Any]] = [
    {"sft.learning_rate": 0.0005},
    {"sft.learning_rate": 0.001},
    {"sft.learning_rate": 0.002},
]
WORK_POOL = "local"  # the process work pool prefect.yaml deploys to

# name -> what both ways of deploying (serve here, `prefect deploy` from prefect.yaml) share.
# `parameters` leaves out `workdir`: the project directory, which differs per machine.
DEPLOYMENTS: dict[str, dict[str, Any]] = {
    "nightly": {
        "flow": "bardlet-pipeline",
        "entrypoint": "pipelines/flow.py:pipeline",
        "cron": DEFAULT_NIGHTLY_CRON,
        "parameters": {},
        "description": "Retrain every night: dvc repro, stage by stage (DVC skips what is cached).",
        "tags": ["bardlet", "nightly"],
    },
    "sweep": {
        "flow": "bardlet-sweep",
        "entrypoint": "pipelines/flow.py:sweep",
        "cron": None,  # on demand
        "parameters": {"overrides": DEFAULT_SWEEP},
        "description": "One DVC experiment per override dict (`dvc exp show` lists them).",
        "tags": ["bardlet", "sweep"],
    },
}
FLOWS: dict[str, Flow[..., Any]] = {"nightly": pipeline, "sweep": sweep}


def deployments(workdir: str | Path = ".") -> list[RunnerDeployment]:
    where = str(Path(workdir).resolve())
    made = []
    for name, spec in DEPLOYMENTS.items():
        cron = NIGHTLY_CRON if spec["cron"] else None  # BARDLET_NIGHTLY_CRON overrides
        deployment = FLOWS[name].to_deployment(
            name=name,
            cron=cron,
            parameters={**spec["parameters"], "workdir": where},
            description=spec["description"],
            tags=spec["tags"],
        )
        # to_deployment is sync here (called outside an event loop), not a coroutine.
        made.append(cast(RunnerDeployment, deployment))
    return made


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".", help="the DVC project to run in")
    args = parser.parse_args(argv)
    serve(*deployments(args.workdir))


if __name__ == "__main__":
    main()
