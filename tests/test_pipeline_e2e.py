"""End to end: the real `dvc repro` in a temporary git repo with tiny params; the MLflow runs
it made; comparing two runs with DVC (exp show, metrics diff, plots diff); a reply from the
exported ONNX model; the same pipeline as a Prefect flow; a DVC remote and a fresh clone."""

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest_server import params_styles

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


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
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
    first_commit = git(root, "rev-parse", "HEAD")
    first = run([sys.executable, "-m", "dvc", "repro"], root)
    # Commit the results (dvc.lock, reports/): HEAD is then the baseline later runs compare to.
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "results"], cwd=root, check=True)
    (root / "first_repro.log").write_text(first.stdout)
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


def test_repro_builds_every_stage(project):
    log = (project / "first_repro.log").read_text()
    expected = {
        "download",
        "prepare",
        "tokenizer",
        "shard",
        "pretrain",
        "sft",
        "evaluate",
        "export",
        "report",
    }
    assert ran_stages(log) == expected
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
    assert json.loads((project / "reports/export.json").read_text())["parity_max_abs_diff"] < 1e-4
    # MLflow: the default store in the repo root holds the training runs with their params.
    with sqlite3.connect(project / "mlflow.db") as db:
        names = {row[0] for row in db.execute("select name from runs")}
        params = dict(db.execute("select key, value from params"))
    assert {"pretrain", "sft"} <= names
    assert params["model.n_embd"] == "32"
    # The export stage registered the ONNX model, and the first one is the champion.
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("bardlet", "champion")
    assert int(champion.version) == 1


def test_second_repro_is_a_no_op(project):
    out = run([sys.executable, "-m", "dvc", "repro"], project).stdout
    assert ran_stages(out) == set(), out
    status = run([sys.executable, "-m", "dvc", "status"], project).stdout
    assert "up to date" in status


def test_changing_one_key_reruns_only_dependent_stages(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["sft"]["max_steps"] = 4
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run([sys.executable, "-m", "dvc", "repro"], project).stdout
    assert ran_stages(out) == {"sft", "evaluate", "export", "report"}, out


def test_mlflow_runs_nest_under_the_base_model_with_provenance_and_artifacts(project):
    """One parent run per base model (pretrain), a nested child per fine-tune (the first
    repro's sft and the sft.max_steps=4 one); tags say what made each run."""
    client = mlflow_client(project)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], order_by=["attributes.start_time"]
    )
    pretrain = [r for r in runs if r.info.run_name == "pretrain"]
    sft = [r for r in runs if r.info.run_name == "sft"]
    assert len(pretrain) == 1 and len(sft) == 2
    parent = pretrain[0]
    base_info = json.loads((project / "models/base/config.json").read_text())
    chat_info = json.loads((project / "models/chat/config.json").read_text())
    assert base_info["run_id"] == parent.info.run_id
    assert chat_info["run_id"] == sft[-1].info.run_id  # evaluate and export attach here
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
    assert "eval.oasst.bpb" in client.get_run(sft[-1].info.run_id).data.metrics


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
    assert {"reports/plots/pretrain.csv", "reports/plots/sft.csv"} <= set(plots)
    spec = plots["reports/plots/sft.csv"][0]
    assert set(spec["revisions"]) == {"HEAD", "workspace"}
    points = spec["content"]["data"]["values"]
    last = {p["rev"]: float(p["step"]) for p in points}  # the last point of each revision
    assert last == {"HEAD": 6.0, "workspace": 4.0}
    assert all("val_bpb" in p for p in points)


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
    ]
    first = run(args, project).stdout
    assert first.strip()
    assert run(args, project).stdout == first


def test_prefect_flow_runs_the_stages_in_order(project):
    out = run([sys.executable, "-m", "pipelines.flow"], project, timeout=300).stdout
    result = json.loads(out.strip().splitlines()[-1])  # the flow prints its result as JSON
    assert list(result["stages"]) == [
        "download",
        "prepare",
        "tokenizer",
        "shard",
        "pretrain",
        "sft",
        "evaluate",
        "export",
        "report",
    ]
    assert set(result["stages"].values()) == {"skipped (cached)"}
    assert result["experiment"] is None and len(result["run_id"]) == 32


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
    # Up to date as it is: `dvc repro` in the clone would run nothing (resume checkpoints
    # are not DVC outs, so their absence changes nothing).
    assert dvc_json(clone, "status") == {}, "a pulled clone must be up to date"


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
    assert out.count("model: ") == 2  # both ranks started
    assert (project / "models/base/model.safetensors").stat().st_mtime_ns > before
    with sqlite3.connect(project / "mlflow.db") as db:
        runs = [row[0] for row in db.execute("select name from runs where name = 'pretrain'")]
    assert len(runs) == 2  # the dvc repro run and this one, not one per rank
