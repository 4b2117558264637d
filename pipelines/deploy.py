"""Deployments of the pipeline, served from this process: a nightly retrain on a cron, and a
parameter sweep (a list of params.yaml overrides, one DVC experiment each, one after another).

    prefect server start --host 127.0.0.1          # the API and UI: http://127.0.0.1:4200
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m pipelines.deploy
    prefect deployment run 'bardlet-pipeline/nightly'
    prefect deployment run 'bardlet-sweep/sweep' --param 'overrides=[{"sft.max_steps": 100}]'

`python -m pipelines.deploy --workdir DIR` runs the flows in another project directory.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, cast

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from pipelines.flow import pipeline, sweep

NIGHTLY_CRON = os.environ.get("BARDLET_NIGHTLY_CRON", "0 3 * * *")  # 03:00 every night
DEFAULT_SWEEP: list[dict[str, Any]] = [
    {"sft.learning_rate": 0.0005},
    {"sft.learning_rate": 0.001},
    {"sft.learning_rate": 0.002},
]


def deployments(workdir: str | Path = ".") -> list[RunnerDeployment]:
    where = str(Path(workdir).resolve())
    nightly = pipeline.to_deployment(
        name="nightly",
        cron=NIGHTLY_CRON,
        parameters={"workdir": where},
        description="Retrain every night: dvc repro, stage by stage (DVC skips what is cached).",
        tags=["bardlet", "nightly"],
    )
    parameter_sweep = sweep.to_deployment(
        name="sweep",
        parameters={"overrides": DEFAULT_SWEEP, "workdir": where},
        description="One DVC experiment per override dict (`dvc exp show` lists them).",
        tags=["bardlet", "sweep"],
    )
    # to_deployment is sync here (called outside an event loop), not a coroutine.
    return [cast(RunnerDeployment, nightly), cast(RunnerDeployment, parameter_sweep)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".", help="the DVC project to run in")
    args = parser.parse_args(argv)
    serve(*deployments(args.workdir))


if __name__ == "__main__":
    main()
