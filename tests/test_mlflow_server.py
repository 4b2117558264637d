"""A real `mlflow server` on loopback with a SQLite backend: bardlet.tracking logs a run to it
over HTTP, and the run reads back through the REST client and a raw GET of the REST API."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bardlet import tracking

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group `pgid`, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members.append(int(entry.name))
    return members


@pytest.fixture
def mlflow_server(tmp_path) -> Iterator[str]:
    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: we kill the whole group
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a cold start runs the SQLite store's migrations
        while True:
            if process.poll() is not None:
                pytest.fail(f"mlflow server exited: {(tmp_path / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no /health in 60 s: {(tmp_path / 'server.log').read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        pgid = process.pid  # start_new_session: the group id is the leader's pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 10
            while group_members(pgid) and time.monotonic() < deadline:
                process.poll()  # reap the leader
                time.sleep(0.2)
            if not group_members(pgid):
                break
        process.wait(timeout=10)
        log.close()
        assert group_members(pgid) == [], "mlflow server left processes behind"


def test_run_logged_through_a_tracking_server_reads_back_over_rest(
    mlflow_server, tmp_path, monkeypatch
):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    assert tracking.tracking_uri() == mlflow_server
    note = tmp_path / "note.txt"
    note.write_text("hello from bardlet\n")
    with tracking.run("pretrain", {"model": {"n_layer": 2}}, {"stage": "pretrain"}) as run_id:
        tracking.log_metrics({"train_loss": 3.25}, step=1)
        tracking.log_metrics({"train_loss": 2.5}, step=2)
        tracking.log_artifact(note, "notes")
    with tracking.run("evaluate", run_id=run_id):
        tracking.log_metrics({"eval.shakespeare.bpb": 2.125})

    # The REST client, against the server (not a local file or database).
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.n_layer"] == "2"
    assert run.data.tags["stage"] == "pretrain"
    assert run.data.metrics == {"train_loss": 2.5, "eval.shakespeare.bpb": 2.125}
    history = client.get_metric_history(run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 3.25), (2, 2.5)]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == tracking.EXPERIMENT
    # The artifact went through the server's proxy into --artifacts-destination.
    local = client.download_artifacts(run_id, "notes/note.txt", str(tmp_path / "download"))
    assert Path(local).read_text() == "hello from bardlet\n"
    assert list((tmp_path / "artifacts").rglob("note.txt"))

    # Raw HTTP: the same run from the REST API itself.
    with urllib.request.urlopen(
        f"{mlflow_server}/api/2.0/mlflow/runs/get?run_id={run_id}", timeout=30
    ) as response:
        body = json.load(response)
    assert body["run"]["info"]["run_id"] == run_id
    metrics = {m["key"]: m["value"] for m in body["run"]["data"]["metrics"]}
    assert metrics == {"train_loss": 2.5, "eval.shakespeare.bpb": 2.125}
    params = {p["key"]: p["value"] for p in body["run"]["data"]["params"]}
    assert params == {"model.n_layer": "2"}

    # A fine-tune nests under its base model's run on the server too, with provenance tags.
    with tracking.run("sft", {"sft": {"max_steps": 4}}, parent_run_id=run_id) as child_id:
        pass
    child = client.get_run(child_id)
    assert child.data.tags["mlflow.parentRunId"] == run_id
    assert {"git.commit", "git.dirty", "data.hash", "params.hash"} <= set(child.data.tags)
