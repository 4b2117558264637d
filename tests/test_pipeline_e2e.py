"""End to end: the real `dvc repro` in a temporary git repo with tiny params, then a reply
from the exported ONNX model, then the same pipeline as a Prefect flow."""

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
    first = run([sys.executable, "-m", "dvc", "repro"], root)
    (root / "first_repro.log").write_text(first.stdout)
    return root


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
    }
    assert ran_stages(log) == expected
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
    assert ran_stages(out) == {"sft", "evaluate", "export"}, out


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
    ]
    assert set(result["stages"].values()) == {"skipped (cached)"}
    assert result["experiment"] is None and len(result["run_id"]) == 32


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
