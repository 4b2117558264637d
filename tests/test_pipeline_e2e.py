"""End to end: the real `dvc repro` in a temporary git repo with tiny params; the MLflow runs
it made; comparing two runs with DVC (exp show, metrics diff, plots diff); a reply from the
exported ONNX model; the same pipeline as a Prefect flow; a DVC remote and a fresh clone."""

import asyncio
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml
from conftest_server import free_port, params_styles

from tests.conftest import mirror_dir

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TINY = {
    "tokenizer": {"vocab_size": 300},
    "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 64},
    "pretrain": {
        "max_steps": 12,
        "batch_size": 4,
        "eval_interval": 6,
        "eval_batches": 2,
        "log_interval": 6,
        "warmup_steps": 2,
    },
    "sft": {
        "max_steps": 6,
        "batch_size": 4,
        "eval_interval": 3,
        "eval_batches": 2,
        "log_interval": 3,
        "warmup_steps": 1,
    },
    "evaluate": {"eval_batches": 4, "max_new_tokens": 8, "rouge_conversations": 2},
    "export": {"parity_steps": 8},
}


def run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI")  # the default: mlflow.db in the repo root
    env["BARDLET_DATA_MIRROR"] = str(mirror_dir())
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("PYTHONPATH", None)
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-8000:]}"
    return done


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", output))


STAGES = [
    "download",
    "prepare",
    "tokenizer",
    "shard",
    "pretrain",
    "teacher",
    "distill",
    "sft",
    "dpo",
    "index",
    "evaluate",
    "export",
    "web",
    "report",
]
PREFECT = str(Path(sys.executable).parent / "prefect")


def prefect_env(home: Path, **extra: str) -> dict[str, str]:
    """A real Prefect installation's environment: its own home, no telemetry, the pipeline's
    MLflow store (mlflow.db in the project: the stages' default)."""
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI")
    env.pop("PREFECT_API_URL", None)
    env.pop("PYTHONPATH", None)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="true",
        BARDLET_DATA_MIRROR=str(mirror_dir()),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        **extra,
    )
    return env


def stop_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@contextmanager
def prefect_server(home: Path) -> Iterator[tuple[str, Path]]:
    """`prefect server start` on a free loopback port (the scheduler and every service run,
    unlike in Prefect's test harness); yields (API URL, its log file)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = home / "server.log"
    home.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        server = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=prefect_env(home / "server", PREFECT_UI_ENABLED="false"),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, f"prefect server exited:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"no /health in 180 s:\n{log.read_text()}"
            time.sleep(1)
        yield url, log
    finally:
        stop_group(server)


async def scheduled_runs(deployment: str, timeout: float) -> list:
    """The deployment's flow runs, once the scheduler has created any."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    only = DeploymentFilter(name=DeploymentFilterName(any_=[deployment]))
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            runs = await client.read_flow_runs(deployment_filter=only)
            if runs or time.monotonic() > deadline:
                return runs
            await asyncio.sleep(1)


async def completed_run(deployment: str) -> dict:
    """The one finished run of the deployment: its state, task runs with their logs, and its
    artifacts."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterTaskRunId,
    )

    async with get_client() as client:
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment]))
        )
        finished = [r for r in runs if r.state is not None and r.state.is_final()]
        assert len(finished) == 1, [(r.name, r.state) for r in runs]
        run = finished[0]
        tasks = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        )
        logs = {}
        for task in tasks:
            lines = await client.read_logs(
                log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[task.id]))
            )
            logs[task.name] = "\n".join(line.message for line in lines)
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
        return {
            "state": run.state.type.value if run.state else None,
            "message": run.state.message if run.state else None,
            "work_pool": run.work_pool_name,
            "tasks": {t.name: t.state.type.value if t.state else None for t in tasks},
            "logs": logs,
            "artifacts": {a.key: a.data for a in artifacts},
        }


def build_by_the_nightly_deployment(root: Path, tmp: Path) -> dict:
    """The project's first build, as a user schedules it: a real Prefect server, the
    `nightly` deployment from prefect.yaml on a near schedule (every 10 s), and a process
    worker on the `local` pool that runs one scheduled run. Returns what the server recorded,
    and "server_log"."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with prefect_server(tmp / "prefect") as (url, server_log):
        client = prefect_env(tmp / "prefect/client", PREFECT_API_URL=url)
        for command in (
            [PREFECT, "work-pool", "create", "local", "--type", "process"],
            [PREFECT, "--no-prompt", "deploy", "--name", "nightly", "--interval", "10"],
        ):
            done = subprocess.run(
                command, cwd=root, env=client, capture_output=True, text=True, timeout=300
            )
            assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
        with temporary_settings({PREFECT_API_URL: url}):
            runs = asyncio.run(scheduled_runs("nightly", timeout=90))
            assert runs and runs[0].state_type.value == "SCHEDULED", (
                "the scheduler made no run:\n" + server_log.read_text()[-3000:]
            )
            worker_env = {
                **client,
                "BARDLET_PROJECT": str(root),  # prefect.yaml's pull step moves there
                "PREFECT_WORKER_PREFETCH_SECONDS": "30",
            }
            worker = subprocess.Popen(
                [PREFECT, "worker", "start", "--pool", "local", "--run-once", "--limit", "1"],
                cwd=tmp,
                env=worker_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            try:
                output, _ = worker.communicate(timeout=1200)
            finally:
                stop_group(worker)
            assert worker.returncode == 0, output[-5000:]
            found = asyncio.run(completed_run("nightly"))
        assert found["state"] == "COMPLETED", f"{found['message']}\n{output[-5000:]}"
        found["server_log"] = server_log.read_text()
        return found


def tiny_project(root: Path) -> None:
    """This repo's tracked files (without the committed results) in `root`, with TINY params,
    as a fresh git repository with DVC, committed."""
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in tracked:
        if name.startswith(("reports/", "dvc.lock")) or not (REPO / name).is_file():
            continue  # start without the committed results
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    if not (root / ".dvc").exists():
        run([sys.executable, "-m", "dvc", "init", "-q"], root)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "tiny"], cwd=root, check=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    tiny_project(root)
    first_commit = git(root, "rev-parse", "HEAD")
    first = build_by_the_nightly_deployment(root, tmp_path_factory.mktemp("nightly"))
    # Commit the results (dvc.lock, reports/): HEAD is then the baseline later runs compare to.
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "results"], cwd=root, check=True)
    (root / "first_run.json").write_text(json.dumps(first))
    (root / "first_commit").write_text(first_commit)
    return root


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def dvc_json(project: Path, *args: str):
    return json.loads(run([sys.executable, "-m", "dvc", *args, "--json"], project).stdout)


def mlflow_client(project: Path):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def test_the_scheduled_nightly_run_builds_every_stage_as_prefect_tasks(project):
    first = json.loads((project / "first_run.json").read_text())
    assert first["work_pool"] == "local"
    # One task run per DVC stage, in dvc.yaml's order of dependencies, each with its log.
    assert first["tasks"] == {f"dvc-{stage}": "COMPLETED" for stage in STAGES}
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first["logs"][f"dvc-{stage}"], stage
    # The run's Markdown artifact: what each stage did, the metrics and the MLflow run.
    summary = first["artifacts"]["bardlet-run"]
    chat_runs = json.loads((project / "models/chat/mlflow.json").read_text())
    assert f"MLflow run `{chat_runs['run_id']}`" in summary
    assert "| oasst.bpb |" in summary and "| pretrain | ran |" in summary
    errors = server_errors(first["server_log"])
    assert not errors, "\n\n".join(errors)


def server_errors(log: str) -> list[str]:
    """The ERROR entries (with their tracebacks) of a Prefect server log, less the one kind
    known to be harmless: on a loaded machine the server's SQLite store now and then answers
    "database is locked" (to a state change, a worker's heartbeat), which Prefect retries
    (PrefectHQ/prefect#17473, #19771; the runs above still completed). Anything else, such as
    the scheduler's bulk DML failure of issue 13, stays an error."""
    entries = re.split(r"\n(?=\d\d:\d\d:\d\d\.\d+ \| )", log)
    errors = [entry for entry in entries if "| ERROR" in entry.split("\n", 1)[0]]
    return [e for e in errors if "sqlite3.OperationalError: database is locked" not in e]


def test_repro_builds_every_stage(project):
    card = (project / "reports/report.md").read_text()
    assert "## Training" in card and (project / "reports/figures/curves_steps.png").exists()
    model_card = (project / "models/onnx/README.md").read_text()
    assert model_card.startswith("---\n") and "bits per byte" in model_card
    metrics = json.loads((project / "reports/metrics.json").read_text())
    for split in ("shakespeare", "oasst"):
        assert {"loss", "perplexity", "bpb"} <= metrics[split].keys()
        assert 0 < metrics[split]["bpb"] < 20
    assert 0 <= metrics["oasst"]["rouge_l"] <= 1
    assert (project / "models/onnx/model.onnx").exists()
    assert (project / "models/onnx/bpe.json").exists()
    saved_styles = json.loads((project / "models/onnx/styles.json").read_text())
    assert saved_styles == params_styles()  # params.yaml chat.styles travel with the model
    manifest = json.loads((project / "data/shards/pretrain/train/manifest.json").read_text())
    assert manifest["tokens"] > 100_000
    assert (
        json.loads((project / "reports/local/export.json").read_text())["parity_max_abs_diff"]
        < 1e-4
    )
    # Timings stay out of the committed reports: reports/local/ (git-ignored) has them.
    assert "train_seconds" not in (project / "reports/pretrain.json").read_text()
    assert "seconds" not in (project / "reports/plots/sft.csv").read_text()
    speed = json.loads((project / "reports/local/pretrain.json").read_text())
    assert speed["train_seconds"] > 0 and speed["tokens_per_second"] > 0
    assert git(project, "check-ignore", "reports/local/pretrain.json")


def test_mlflow_opens_on_named_training_runs_and_serves_the_champion(project):
    import mlflow
    import numpy as np

    client = mlflow_client(project)
    experiment = client.get_experiment_by_name("bardlet")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    params_hash = next(iter(runs.values())).data.tags["params.hash"]
    # <stage>-<params hash>: a rerun with other params, or a DVC experiment, reads differently.
    assert set(runs) == {f"pretrain-{params_hash[:8]}", f"sft-{params_hash[:8]}"}
    for run_ in runs.values():  # every training run records the model's shape
        assert run_.data.params["model.n_embd"] == "32"
        assert run_.data.params["model.vocab_size"] == "300"
    sft = runs[f"sft-{params_hash[:8]}"]
    metrics = sft.data.metrics
    assert {"val/bpb", "train/loss", "kept/val_bpb", "eval/oasst/bpb", "export/int8_bpb"} <= set(
        metrics
    )
    assert not [name for name in metrics if "_" in name.split("/")[0]]  # one naming scheme
    # The registered model: described, its champion metric named, loadable with pyfunc.
    model = client.get_registered_model("bardlet")
    assert "OASST1" in model.description
    champion = client.get_model_version_by_alias("bardlet", "champion")
    assert int(champion.version) == 1 and champion.description
    assert float(champion.tags["eval/oasst/bpb"]) == pytest.approx(metrics["eval/oasst/bpb"])
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    try:
        loaded = mlflow.pyfunc.load_model("models:/bardlet@champion")
        signature = loaded.metadata.get_input_schema().input_names()
        assert signature[0] == "input_ids" and "past.0.key" in signature
        example = loaded.input_example
        assert example["past.0.key"].shape[2] > 0  # a real cache: a decoding step
        out = loaded.predict(example)
        assert out["logits"].shape == (1, 1, 300) and np.isfinite(out["logits"]).all()
    finally:
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])


def test_dvc_metrics_show_lists_the_models_numbers_only(project):
    (workspace,) = dvc_json(project, "metrics", "show").values()
    files = set(workspace["data"])
    assert files == {
        "reports/pretrain.json",
        "reports/sft.json",
        "reports/metrics.json",
        "reports/export.json",
        "reports/dpo.json",  # {} while dpo.enabled is false
        "reports/teacher.json",  # {} while distill.enabled is false
        "reports/distill.json",
        "reports/local/pretrain.json",  # training time and tokens/s (top-level metrics)
        "reports/local/sft.json",
        "reports/local/export.json",  # what onnxruntime measured here: parity, int8
    }
    data = {name: workspace["data"][name]["data"] for name in files}
    assert {"bpb", "loss", "perplexity", "rouge_l"} <= set(data["reports/metrics.json"]["oasst"])
    assert {"parity_max_abs_diff", "int8_bpb_delta_percent"} <= set(
        data["reports/local/export.json"]
    )
    assert {"onnx_bytes", "int8_bytes"} <= set(data["reports/export.json"])
    assert set(data["reports/local/sft.json"]) == {"train_seconds", "tokens_per_second"}
    table = run([sys.executable, "-m", "dvc", "metrics", "show"], project).stdout
    assert max(map(len, table.splitlines())) < 500  # 441 now; 1,786 with data statistics


def test_dvc_plots_show_draws_every_plot_with_no_network(project, tmp_path):
    """`dvc plots show` with the committed offline template, opened in headless Chromium
    with every request outside the page's own files refused."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright")
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    if chromium is None:
        pytest.skip("needs a Chromium binary (apt-get install chromium)")
    out = tmp_path / "plots"
    run([sys.executable, "-m", "dvc", "plots", "show", "-o", str(out)], project)
    page_file = out / "index.html"
    assert "cdn.jsdelivr" not in page_file.read_text()
    args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update",
            "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9"]  # fmt: skip
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=args)
        try:
            context = browser.new_context(offline=True, viewport={"width": 1400, "height": 900})
            outside: list[str] = []

            def refuse(route) -> None:
                outside.append(route.request.url)
                route.abort()

            context.route(re.compile(r"^(?!file:|data:|blob:).*"), refuse)
            tab = context.new_page()
            errors: list[str] = []
            tab.on("pageerror", lambda error: errors.append(str(error)))
            tab.goto(page_file.as_uri())
            for plot in ("pretrain", "sft", "wall_clock"):
                # vega-embed draws an SVG with one path per line in the plot.
                tab.wait_for_selector(f"[id='{plot}'] g.mark-line path", timeout=30_000)
            images = tab.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
            tab.screenshot(path=str(tmp_path / "dvc-plots.png"), full_page=True)
        finally:
            browser.close()
    figures = list((project / "reports/figures").glob("*.png"))  # the report card's figures
    assert len(images) == len(figures) > 0 and all(width > 0 for width in images)
    assert not outside and not errors, (outside, errors)


def test_second_repro_is_a_no_op(project):
    out = run([sys.executable, "-m", "dvc", "repro"], project).stdout
    assert ran_stages(out) == set(), out
    status = run([sys.executable, "-m", "dvc", "status"], project).stdout
    assert "up to date" in status
    # The MLflow run ids beside a model are out of its hash (.dvcignore): another run's
    # ids change nothing.
    runs = project / "models/chat/mlflow.json"
    saved = runs.read_bytes()
    try:
        runs.write_text('{"run_id": "another"}\n')
        assert dvc_json(project, "status") == {}
    finally:
        runs.write_bytes(saved)


def test_your_own_files_rerun_prepare_and_what_depends_on_it_nothing_else(project):
    """data/own is prepare's dependency: a file there changes prepare, and once prepare has
    run, the stages that read its output; download and the rest never."""
    own = project / "data/own/mine.jsonl"
    params_file = project / "params.yaml"
    saved = params_file.read_text()
    try:
        shutil.copy(REPO / "examples/chats/openai.jsonl", own)
        assert set(dvc_json(project, "status")) == {"prepare"}
        params = yaml.safe_load(saved)
        params["prepare"]["chats"] = ["oasst1", {"path": "data/own/mine.jsonl"}]
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        out = run([sys.executable, "-m", "dvc", "repro", "prepare"], project).stdout
        assert ran_stages(out) == {"prepare"}, out
        mine = json.loads((project / "reports/prepare.json").read_text())["chats"]["mine.jsonl"]
        assert mine["train_conversations"] + mine["val_conversations"] == 3
        # What reads data/prepared (and the report, which shows prepare.json) is now out of
        # date; download, pretrain (the shards have not changed yet) and the rest are not.
        readers = {"tokenizer", "shard", "evaluate", "report"}
        assert set(dvc_json(project, "status")) == readers
        own.write_text(own.read_text().replace("Sirius", "Sirius A"))
        assert set(dvc_json(project, "status")) == {"prepare", *readers}
    finally:  # back as it was (DVC's run cache), even when an assert failed: later tests
        own.unlink(missing_ok=True)  # start from the first run's outputs
        params_file.write_text(saved)
        out = run([sys.executable, "-m", "dvc", "repro", "prepare"], project).stdout
    assert dvc_json(project, "status") == {}, out


DISK_FULL = """
set -e
real=$(mktemp -d)
cp -a "$TARGET/." "$real/"                      # what the folder holds now
mount -t tmpfs -o size=1G tmpfs "$TARGET"
cp -a "$real/." "$TARGET/"
used=$(df -k --output=used "$TARGET" | tail -1 | tr -d " ")
mount -o remount,size="${used}k" "$TARGET"   # full: the next page written fails
set +e
"$PYTHON" -m "stages.$STAGE" > "$LOG" 2>&1
echo "exit $?" >> "$LOG"
"$PYTHON" - "$real" "$TARGET" >> "$LOG" <<'CHECK'
import hashlib, pathlib, sys
def tree(root):
    root = pathlib.Path(root)
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}
before, after = tree(sys.argv[1]), tree(sys.argv[2])
print("changed", sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k)))
CHECK
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux's unshare")
@pytest.mark.parametrize(
    ("stage", "folder"),
    [
        ("prepare", "data"),
        ("tokenizer", "models"),
        ("shard", "data"),
        ("pretrain", "models"),
        ("export", "models"),
        ("report", "reports"),
    ],
)
def test_a_full_disk_leaves_the_previous_outputs_whole(project, tmp_path, stage, folder):
    """A stage of each way of writing (sft and dpo save as pretrain does, evaluate writes its
    reports as report does), run by hand as `python -m stages.<name>`, on a disk that fills
    up while it writes (a small tmpfs over its output folder, in a private mount namespace):
    it fails, and every file it had made before is byte-identical, with no temporary file
    left behind.
    (`dvc repro` itself deletes a stage's outs before running it; they stay in DVC's cache,
    and `dvc checkout` brings them back.)"""
    log = tmp_path / "stage.log"
    env = {
        **os.environ,
        "TARGET": str(project / folder),
        "STAGE": stage,
        "PYTHON": sys.executable,
        "LOG": str(log),
        "BARDLET_DATA_MIRROR": str(mirror_dir()),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",  # not the project's
    }
    done = subprocess.run(
        ["unshare", "--map-root-user", "--mount", "sh", "-c", DISK_FULL],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"no private mount namespace here: {done.stderr.strip()}")
    assert log.exists(), done.stdout + done.stderr  # the set-up ran to the stage
    out = log.read_text()
    assert "exit 0" not in out, out[-3000:]
    assert "No space left on device" in out, out[-3000:]  # the disk filled, nothing else
    assert "changed []" in out, out[-3000:]


def test_a_diverged_model_is_never_exported_or_registered(project, tmp_path):
    """A chat model with NaN weights (what a diverged run would have made): export fails on
    parity, models/onnx stays as it was, and no model version is registered."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = project / "models/chat/model.safetensors"
    saved = tmp_path / "model.safetensors"
    shutil.copy2(weights, saved)
    before = {p.name: p.read_bytes() for p in (project / "models/onnx").iterdir()}
    versions = len(mlflow_client(project).search_model_versions("name='bardlet'"))
    tensors = load_file(str(weights))
    tensors = {k: torch.full_like(v, float("nan")) for k, v in tensors.items()}
    save_file(tensors, str(weights))
    try:
        env = {**os.environ, "BARDLET_DATA_MIRROR": str(mirror_dir())}
        env.pop("MLFLOW_TRACKING_URI")  # the project's own store
        done = subprocess.run(
            [sys.executable, "-m", "stages.export"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        shutil.copy2(saved, weights)
    assert done.returncode != 0
    assert "parity failed" in done.stderr and "not finite" in done.stderr, done.stderr[-2000:]
    after = {p.name: p.read_bytes() for p in (project / "models/onnx").iterdir()}
    assert after == before
    assert not list((project / "models").glob(".*.staging"))  # nothing left behind
    assert len(mlflow_client(project).search_model_versions("name='bardlet'")) == versions


def test_changing_one_key_reruns_only_dependent_stages(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["sft"]["max_steps"] = 4
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run([sys.executable, "-m", "dvc", "repro"], project).stdout
    assert ran_stages(out) == {"sft", "dpo", "evaluate", "export", "web", "report"}, out


def test_mlflow_runs_nest_under_the_base_model_with_provenance_and_artifacts(project):
    """One parent run per base model (pretrain), a nested child per fine-tune (the first
    repro's sft and the sft.max_steps=4 one); tags say what made each run."""
    client = mlflow_client(project)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], order_by=["attributes.start_time"]
    )
    pretrain = [r for r in runs if r.info.run_name.startswith("pretrain-")]
    sft = [r for r in runs if r.info.run_name.startswith("sft-")]
    assert len(pretrain) == 1 and len(sft) == 2
    parent = pretrain[0]
    # The runs are recorded beside each model, not in its config.json (same bytes every run).
    base_runs = json.loads((project / "models/base/mlflow.json").read_text())
    chat_runs = json.loads((project / "models/chat/mlflow.json").read_text())
    assert base_runs == {"run_id": parent.info.run_id}
    assert chat_runs == {"run_id": sft[-1].info.run_id, "base_run_id": parent.info.run_id}
    assert "run_id" not in json.loads((project / "models/chat/config.json").read_text())
    for child in sft:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.experiment_id == parent.info.experiment_id

    from bardlet.tokenizer import Tokenizer

    tokenizer_hash = Tokenizer.load(project / "models/tokenizer/bpe.json").hash
    first_commit = (project / "first_commit").read_text()
    tags = parent.data.tags
    assert tags["git.commit"] == first_commit and tags["git.dirty"] == "false"
    assert tags["tokenizer.hash"] == tokenizer_hash and tags["dvc.stage"] == "pretrain"
    assert re.fullmatch("[0-9a-f]{64}", tags["data.hash"])
    assert re.fullmatch("[0-9a-f]{64}", tags["params.hash"])
    # The second fine-tune ran on the results commit with params.yaml edited (not committed).
    latest = sft[-1].data.tags
    assert latest["git.commit"] == git(project, "rev-parse", "HEAD") != first_commit
    assert latest["git.dirty"] == "true"
    assert latest["params.hash"] != tags["params.hash"]
    assert latest["data.hash"] == tags["data.hash"]
    assert latest["tokenizer.hash"] == tokenizer_hash

    def artifacts(run_id: str, folder: str) -> set[str]:
        return {a.path for a in client.list_artifacts(run_id, folder)}

    assert artifacts(parent.info.run_id, "tokenizer") == {
        "tokenizer/bpe.json",
        "tokenizer/tokenizer.json",
    }
    assert "plots/pretrain.csv" in artifacts(parent.info.run_id, "plots")
    assert "plots/sft.csv" in artifacts(sft[-1].info.run_id, "plots")
    assert {"reports/metrics.json", "reports/samples.md"} <= artifacts(
        sft[-1].info.run_id, "reports"
    )
    assert "eval/oasst/bpb" in client.get_run(sft[-1].info.run_id).data.metrics


def test_compare_runs_with_dvc_exp_show_metrics_diff_and_plots_diff(project, tmp_path):
    """The workspace holds the sft.max_steps=4 results; HEAD the first (max_steps=6)."""
    run([sys.executable, "-m", "dvc", "exp", "save", "--name", "steps4"], project)
    rows = {}
    for baseline in dvc_json(project, "exp", "show"):
        revs = [baseline] + [r for e in baseline.get("experiments") or [] for r in e["revs"]]
        for rev in revs:
            rows[rev.get("name") or rev["rev"]] = rev["data"]
    for name, steps in (("steps4", 4), (git(project, "branch", "--show-current"), 6)):
        data = rows[name]
        assert data["params"]["params.yaml"]["data"]["sft"]["max_steps"] == steps
        metrics = data["metrics"]["reports/metrics.json"]["data"]
        assert metrics["oasst"]["bpb"] > 0 and metrics["shakespeare"]["bpb"] > 0
        assert data["metrics"]["reports/sft.json"]["data"]["steps"] == steps

    # HEAD (max_steps=6) against the workspace (4): the changed param and metrics.
    params = dvc_json(project, "params", "diff")
    assert params["params.yaml"]["sft.max_steps"] == {"old": 6, "new": 4, "diff": -2}
    metrics = dvc_json(project, "metrics", "diff")
    assert metrics["reports/sft.json"]["steps"]["old"] == 6
    assert metrics["reports/sft.json"]["steps"]["new"] == 4
    assert {"oasst.bpb", "shakespeare.bpb"} <= set(metrics["reports/metrics.json"])
    assert "reports/pretrain.json" not in metrics  # the base model did not change

    # The declared plots, rendered for both revisions (vega specs with the data inline).
    plots = dvc_json(project, "plots", "diff", "HEAD")["data"]
    assert {"pretrain", "sft", "wall_clock", "reports/figures/curves_steps.png"} <= set(plots)
    spec = plots["sft"][0]
    assert set(spec["revisions"]) == {"HEAD", "workspace"}
    points = spec["content"]["data"]["values"]
    assert {p["field"] for p in points} == {"train_loss", "val_bpb"}  # two lines a revision
    last = {p["rev"]: float(p["step"]) for p in points}  # the last point of each revision
    assert last == {"HEAD": 6.0, "workspace": 4.0}


def test_the_readme_exp_show_command_fits_a_120_column_terminal(project):
    readme = (REPO / "README.md").read_text()
    command = re.search(r"^(dvc exp show --only-changed .*?)\s*$", readme, re.M)
    assert command, "README shows a narrow `dvc exp show`"
    table = run([sys.executable, "-m", *shlex.split(command.group(1))], project).stdout
    rows = [line for line in table.splitlines() if line.strip()]
    assert "oasst.bpb" in rows[1] and "sft.max_steps" in rows[1]  # what differs is there
    assert max(len(line) for line in rows) <= 120, table


def test_generate_from_the_exported_model_with_no_model_argument(project):
    args = [
        sys.executable,
        "-m",
        "bardlet.cli",
        "generate",
        "ROMEO:",
        "--max-new-tokens",
        "8",
        "--seed",
        "1",
        "--ignore-end",  # eight tokens whatever the tiny model samples
    ]
    first = run(args, project).stdout
    assert first.strip()
    assert run(args, project).stdout == first


def test_samples_are_what_generate_says_for_the_same_prompt(project):
    """One generation path: the evaluate stage's greedy samples are the ONNX runtime's reply,
    so `bardlet generate --chat --temperature 0` prints the same text."""
    from bardlet.report import parse_samples

    params = yaml.safe_load((project / "params.yaml").read_text())["evaluate"]
    samples = dict(parse_samples((project / "reports/samples.md").read_text()))
    for prompt in params["prompts"][:2]:
        greedy = dict(samples[prompt])["greedy"]
        args = ["generate", "--chat", "--temperature", "0", "-n", str(params["max_new_tokens"])]
        said = run([sys.executable, "-m", "bardlet.cli", *args, prompt], project).stdout
        assert said.strip() == ("" if greedy == "(empty)" else greedy), prompt


def test_dvc_remote_push_then_pull_in_a_fresh_clone(project, tmp_path):
    """The growth path's first step: a DVC remote (here a local folder; s3://, ssh://... the
    same way) and a git remote; a fresh clone gets data and models back with `dvc pull`."""
    dvc = [sys.executable, "-m", "dvc"]
    run([*dvc, "remote", "add", "--force", "-d", "local", str(tmp_path / "remote")], project)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-qm", "remote, sft.max_steps=4"], cwd=project, check=True)
    run([*dvc, "push"], project)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    assert not (clone / "models/chat").exists()
    run([*dvc, "pull"], clone)
    for path in (
        "data/shards/pretrain/train/manifest.json",
        "models/tokenizer/bpe.json",
        "models/base/model.safetensors",
        "models/chat/model.safetensors",
        "models/onnx/model.onnx",
    ):
        original, pulled = (project / path).read_bytes(), (clone / path).read_bytes()
        assert hashlib.sha256(original).digest() == hashlib.sha256(pulled).digest(), path
    assert "in sync" in run([*dvc, "status", "--cloud"], clone).stdout
    # The MLflow run ids stay with the store they name: not pushed with the model.
    assert (project / "models/chat/mlflow.json").exists()
    assert not (clone / "models/chat/mlflow.json").exists()
    # Up to date as it is: `dvc repro` in the clone would run nothing (resume checkpoints
    # are not DVC outs, so their absence changes nothing).
    assert dvc_json(clone, "status") == {}, "a pulled clone must be up to date"


def test_the_optional_chain_teacher_distill_dpo_in_one_exp_run(project):
    """`dvc exp run -S distill.enabled=true -S dpo.enabled=true`: the teacher stage trains
    teacher.model, distill trains the `model` shape with it (its MLflow run nested under the
    teacher's), sft starts from models/distill, dpo tunes that chat model on the OASST1 pairs
    (measured before and after on held-out pairs, its run nested under sft's) and export takes
    the dpo model; a teacher with another tokenizer is refused by name."""
    sets = ["-S", "distill.enabled=true", "-S", "teacher.model.n_layer=2",
            "-S", "dpo.enabled=true", "-S", "dpo.max_steps=3", "-S", "dpo.batch_size=2"]  # fmt: skip
    out = run([sys.executable, "-m", "dvc", "exp", "run", *sets], project, timeout=900).stdout
    assert {"teacher", "distill", "sft", "dpo", "export", "report"} <= ran_stages(out), out
    assert "pretrain" not in ran_stages(out)

    teacher, student = (json.loads((project / f"reports/{n}.json").read_text())
                        for n in ("teacher", "distill"))  # fmt: skip
    assert teacher["params"] > student["params"] and 0 < student["val_bpb"] < 20

    def sha(path: str) -> str:
        return hashlib.sha256((project / path).read_bytes()).hexdigest()

    distilled = json.loads((project / "models/distill/config.json").read_text())
    assert distilled["teacher"] == {"model": sha("models/teacher/model.safetensors"),
                                    "alpha": 0.5, "temperature": 2.0}  # fmt: skip
    chat = json.loads((project / "models/chat/config.json").read_text())
    assert chat["base_model"] == sha("models/distill/model.safetensors")

    numbers = json.loads((project / "reports/dpo.json").read_text())
    assert numbers["before"]["accuracy"] == 0.5 and numbers["before"]["margin"] == 0.0
    assert numbers["before"]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert numbers["after"]["loss"] != numbers["before"]["loss"]
    assert numbers["train_pairs"] > 0 and numbers["val_pairs"] > 0
    assert numbers["after"]["oasst_bpb"] > 0
    dpo = (project / "models/dpo/model.safetensors").read_bytes()
    assert dpo != (project / "models/chat/model.safetensors").read_bytes()

    run_ids = {name: json.loads((project / f"models/{name}/mlflow.json").read_text())["run_id"]
               for name in ("teacher", "distill", "chat", "dpo")}  # fmt: skip
    client = mlflow_client(project)
    distill_run = client.get_run(run_ids["distill"]).data
    assert distill_run.tags["mlflow.parentRunId"] == run_ids["teacher"]
    assert distill_run.tags["teacher_run_id"] == run_ids["teacher"]
    assert client.get_run(run_ids["chat"]).data.tags["mlflow.parentRunId"] == run_ids["distill"]
    assert client.get_run(run_ids["dpo"]).data.tags["mlflow.parentRunId"] == run_ids["chat"]
    assert "export/onnx_bytes" in client.get_run(run_ids["dpo"]).data.metrics  # its export

    config_path = project / "models/teacher/config.json"
    original = config_path.read_text()
    try:
        config_path.write_text(original.replace(distilled["tokenizer_hash"], "0" * 64))
        refused = subprocess.run([sys.executable, "-m", "stages.distill"], cwd=project,
                                 capture_output=True, text=True, timeout=300)  # fmt: skip
    finally:
        config_path.write_text(original)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "another tokenizer" in refused.stderr and "share" in refused.stderr


def test_pretrain_stage_runs_under_torchrun_with_two_processes(project):
    """Last: it retrains models/base outside DVC. Rank 0 alone writes and tracks."""
    before = (project / "models/base/model.safetensors").stat().st_mtime_ns
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["pretrain"]["resume"] = "never"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "stages.pretrain",
        ],
        project,
    ).stdout
    # Both ranks started (their lines may interleave: two processes write to one pipe).
    assert len(re.findall(r"pretrain: [\d,]+ parameters", out)) == 2
    assert (project / "models/base/model.safetensors").stat().st_mtime_ns > before
    with sqlite3.connect(project / "mlflow.db") as db:
        runs = [row[0] for row in db.execute("select name from runs where name like 'pretrain-%'")]
    assert len(runs) == 2  # the dvc repro run and this one, not one per rank
