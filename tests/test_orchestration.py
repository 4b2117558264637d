"""The Prefect flow and its deployments against a real Prefect server (the test harness).

The flow runs in a toy DVC project (three quick stages shaped like the real ones: download,
sft writing models/chat/config.json and, through bardlet.tracking, a real MLflow run whose id
goes to models/chat/mlflow.json, evaluate writing reports/metrics.json), so DVC, git, MLflow
and Prefect are real but no model trains; the real pipeline under the flow is
tests/test_pipeline_e2e.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pipelines.flow import flatten, parse_cli, pipeline, set_param_args

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TOY_STAGE = """\
import json, os, sys
from pathlib import Path

import yaml

params = yaml.safe_load(Path("params.yaml").read_text())
step = sys.argv[1]
if step == "download":
    Path("data/raw").mkdir(parents=True, exist_ok=True)
    Path("data/raw/text.txt").write_text(params["download"]["text"])
elif step == "sft":
    from bardlet import tracking

    Path("models/chat").mkdir(parents=True, exist_ok=True)
    info = {
        "max_steps": params["sft"]["max_steps"],
        "learning_rate": params["sft"]["learning_rate"],
        "schedule": params["sft"]["schedule"],
        "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI"),
        "text": Path("data/raw/text.txt").read_text(),
    }
    with tracking.run("sft", {"sft": params["sft"]}) as run_id:
        Path("models/chat/mlflow.json").write_text(json.dumps({"run_id": run_id}))
    Path("models/chat/config.json").write_text(json.dumps(info))
elif step == "evaluate":
    info = json.loads(Path("models/chat/config.json").read_text())
    Path("reports").mkdir(exist_ok=True)
    score = info["max_steps"] * info["learning_rate"]
    Path("reports/metrics.json").write_text(json.dumps({"toy": {"score": score}}))
"""

TOY_DVC = {
    "stages": {
        # Written out of order on purpose: the flow sorts by deps and outs.
        "evaluate": {
            "cmd": "python toy.py evaluate",
            "deps": ["toy.py", "models/chat"],
            "metrics": [{"reports/metrics.json": {"cache": False}}],
        },
        "download": {
            "cmd": "python toy.py download",
            "deps": ["toy.py"],
            "params": ["download"],
            "outs": ["data/raw"],
        },
        "sft": {
            "cmd": "python toy.py sft",
            "deps": ["toy.py", "data/raw"],
            "params": ["sft"],
            "outs": ["models/chat"],
        },
    }
}
TOY_PARAMS = {
    "download": {"text": "to be or not to be"},
    "sft": {"max_steps": 10, "learning_rate": 0.001, "schedule": "cosine"},
}


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=60
    ).stdout


def dvc(root: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def mlflow_client(root: Path):
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{root.resolve() / 'mlflow.db'}")


def experiments(root: Path) -> dict[str, dict]:
    """name -> reports/metrics.json of every experiment `dvc exp show` lists."""
    found = {}
    for baseline in json.loads(dvc(root, "exp", "show", "--json")):
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                metrics = rev["data"]["metrics"]["reports/metrics.json"]["data"]
                found[rev["name"]] = metrics
    return found


@pytest.fixture(scope="module", autouse=True)
def environment() -> Iterator[None]:
    """`python` in dvc.yaml is this venv's, and MLflow's store is the project default."""
    saved = dict(os.environ)
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def prefect_server(environment) -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        url = PREFECT_API_URL.value()
        assert url and url.startswith("http://127.0.0.1")
        yield url


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    (root / "toy.py").write_text(TOY_STAGE)
    (root / "dvc.yaml").write_text(yaml.safe_dump(TOY_DVC, sort_keys=False))
    (root / "params.yaml").write_text(yaml.safe_dump(TOY_PARAMS, sort_keys=False))
    (root / ".gitignore").write_text("/mlflow.db\n/mlartifacts\n")
    (root / ".dvcignore").write_text((REPO / ".dvcignore").read_text())  # mlflow.json
    git(root, "init", "-q")
    dvc(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "toy")
    return root


def test_overrides_become_set_param_arguments(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(TOY_PARAMS))
    assert flatten({"sft": {"max_steps": 4}, "download.text": "x"}) == {
        "sft.max_steps": 4,
        "download.text": "x",
    }
    args = set_param_args({"sft": {"max_steps": 4, "schedule": "wsd"}}, params)
    assert args == ["--set-param", "sft.max_steps=4", "--set-param", 'sft.schedule="wsd"']
    with pytest.raises(ValueError, match=r"'sft\.max_stepz'.*max_steps"):
        set_param_args({"sft.max_stepz": 4}, params)
    with pytest.raises(ValueError, match="'nope.x'"):
        set_param_args({"nope.x": 1}, params)
    assert parse_cli(["sft.max_steps=4", "sft.schedule=wsd"]) == (
        {"sft.max_steps": 4, "sft.schedule": "wsd"},
        None,
    )
    # A preset file: its keys, then key=value on the command line wins; its name leads.
    preset = tmp_path / "tiny.yaml"
    preset.write_text("sft:\n  max_steps: 9\n  schedule: wsd\n")
    assert parse_cli([str(preset), "sft.max_steps=4"]) == (
        {"sft.max_steps": 4, "sft.schedule": "wsd"},
        "tiny",
    )
    with pytest.raises(SystemExit, match="no such preset file"):
        parse_cli([str(tmp_path / "missing.yaml")])
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(SystemExit, match="YAML mapping"):
        parse_cli([str(tmp_path / "empty.yaml")])


def test_flow_without_overrides_runs_each_stage_in_order_then_caches(prefect_server, toy):
    first = pipeline(workdir=str(toy))
    assert first["experiment"] is None
    assert list(first["stages"]) == ["download", "sft", "evaluate"]
    assert set(first["stages"].values()) == {"ran"}
    info = json.loads((toy / "models/chat/config.json").read_text())
    runs = json.loads((toy / "models/chat/mlflow.json").read_text())
    assert first["run_id"] == runs["run_id"] and len(runs["run_id"]) == 32
    assert first["metrics"] == {"toy": {"score": 10 * 0.001}}
    # Without MLFLOW_TRACKING_URI the stages use the project's own store.
    assert info["tracking_uri"] == f"sqlite:///{toy.resolve() / 'mlflow.db'}"

    # Again, the way the README runs it: `python -m pipelines.flow`, which prints its result.
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": prefect_server}
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.flow"],
        cwd=toy, env=env, capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    second = json.loads(out.strip().splitlines()[-1])
    assert list(second["stages"]) == ["download", "sft", "evaluate"]
    assert set(second["stages"].values()) == {"skipped (cached)"}
    assert second["run_id"] == first["run_id"] and second["experiment"] is None
    git(toy, "add", "-A")  # dvc.lock, .gitignore files, reports: the baseline commit
    git(toy, "commit", "-qm", "baseline")


def test_flow_with_overrides_records_a_dvc_experiment_and_leaves_the_tree_clean(
    prefect_server, toy
):
    params_before = (toy / "params.yaml").read_bytes()
    baseline = json.loads((toy / "models/chat/config.json").read_text())
    baseline_run = json.loads((toy / "models/chat/mlflow.json").read_text())["run_id"]
    result = pipeline(
        overrides={"sft.max_steps": 4, "sft": {"learning_rate": 0.5, "schedule": "wsd"}},
        experiment="toy-exp",
        workdir=str(toy),
    )
    assert result["experiment"] == "toy-exp"
    assert result["metrics"] == {"toy": {"score": 4 * 0.5}}
    assert result["overrides"] == {
        "sft.max_steps": 4,
        "sft.learning_rate": 0.5,
        "sft.schedule": "wsd",
    }
    assert len(result["run_id"]) == 32 and result["run_id"] != baseline_run
    # The run the flow reports is the experiment's sft run, in the project's MLflow store.
    run = mlflow_client(toy).get_run(result["run_id"])
    assert run.data.tags["dvc.exp_name"] == "toy-exp" and run.data.tags["dvc.stage"] == "sft"
    assert run.data.params["sft.max_steps"] == "4"
    # The work tree did not move: same params.yaml, nothing modified or untracked.
    assert (toy / "params.yaml").read_bytes() == params_before
    assert git(toy, "status", "--porcelain") == ""
    assert json.loads((toy / "models/chat/config.json").read_text()) == baseline
    assert experiments(toy)["toy-exp"] == {"toy": {"score": 2.0}}

    # Applying the experiment brings in exactly what the flow reported.
    dvc(toy, "exp", "apply", "toy-exp")
    applied = json.loads((toy / "models/chat/config.json").read_text())
    assert (applied["max_steps"], applied["learning_rate"], applied["schedule"]) == (4, 0.5, "wsd")
    assert applied["text"] == TOY_PARAMS["download"]["text"]
    # The experiment ran in a temporary copy, yet MLflow pointed at the project's store.
    assert applied["tracking_uri"] == f"sqlite:///{toy.resolve() / 'mlflow.db'}"
    git(toy, "checkout", "--", ".")
    dvc(toy, "checkout", "--force")
    assert git(toy, "status", "--porcelain") == ""


def test_unknown_override_fails_before_anything_runs(prefect_server, toy):
    before = experiments(toy)
    with pytest.raises(ValueError, match="sft.max_stepz"):
        pipeline(overrides={"sft.max_stepz": 4}, workdir=str(toy))
    assert experiments(toy) == before


@pytest.fixture
def served(prefect_server, toy, tmp_path) -> Iterator[Path]:
    """`python -m pipelines.deploy` serving both deployments against the test server."""
    # The runner polls for scheduled runs every second, not every 10 (prefect's default).
    env = dict(
        os.environ,
        PREFECT_API_URL=prefect_server,
        PYTHONPATH=str(REPO),
        PREFECT_RUNNER_POLL_FREQUENCY="1",
    )
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.deploy", "--workdir", str(toy)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield log_path
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def test_served_deployments_run_on_demand(served, toy):
    import asyncio

    from prefect import get_client
    from prefect.deployments import run_deployment

    async def read_deployments() -> dict:
        async with get_client() as client:
            found = {}
            for name in ("bardlet-pipeline/nightly", "bardlet-sweep/sweep"):
                found[name] = await client.read_deployment_by_name(name)
            return found

    deadline = time.monotonic() + 90
    while True:
        try:
            deployments = asyncio.run(read_deployments())
            break
        except Exception:
            if time.monotonic() > deadline:
                pytest.fail("deployments never appeared:\n" + served.read_text()[-3000:])
            time.sleep(1)
    nightly = deployments["bardlet-pipeline/nightly"]
    assert [s.schedule.cron for s in nightly.schedules] == ["0 3 * * *"]
    assert nightly.parameters == {"workdir": str(toy.resolve())}
    assert len(deployments["bardlet-sweep/sweep"].parameters["overrides"]) == 3

    run = run_deployment(
        "bardlet-pipeline/nightly",
        parameters={"overrides": {"sft.max_steps": 3}, "experiment": "nightly-test"},
        timeout=600,  # generous for a slow runner; pytest-timeout is the backstop
        poll_interval=1,
    )
    assert run.state is not None and run.state.is_completed(), (
        f"{run.state}\n" + served.read_text()[-3000:]
    )
    assert experiments(toy)["nightly-test"] == {"toy": {"score": 3 * 0.001}}

    before = set(experiments(toy))
    run = run_deployment(
        "bardlet-sweep/sweep",
        parameters={"overrides": [{"sft.max_steps": 7}, {"sft.learning_rate": 0.01}]},
        timeout=600,
        poll_interval=1,
    )
    assert run.state is not None and run.state.is_completed(), (
        f"{run.state}\n" + served.read_text()[-3000:]
    )
    after = experiments(toy)
    new = [after[name] for name in set(after) - before]
    scores = sorted(m["toy"]["score"] for m in new)
    assert scores == pytest.approx([7 * 0.001, 10 * 0.01])
    assert git(toy, "status", "--porcelain") == ""
