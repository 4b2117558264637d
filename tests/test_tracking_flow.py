"""MLflow on a real SQLite store (runs, nesting, provenance tags), and the Prefect flow's
stage order from dvc.yaml."""

import json
import subprocess
from pathlib import Path

import mlflow
import yaml

from bardlet import tracking
from pipelines.flow import stage_order

REPO = Path(__file__).resolve().parents[1]


def test_run_logs_flattened_params_metrics_and_reopens():
    with tracking.run("pretrain", {"model": {"n_layer": 4}}, {"stage": "pretrain"}) as run_id:
        tracking.log_metrics({"train_loss": 2.5}, step=10)
    with tracking.run("evaluate", run_id=run_id):
        tracking.log_metrics({"eval.shakespeare.bpb": 2.2})
    run = tracking.get_run(run_id)
    assert run.data.params["model.n_layer"] == "4"
    assert run.data.tags["stage"] == "pretrain"
    assert run.data.metrics["train_loss"] == 2.5
    assert run.data.metrics["eval.shakespeare.bpb"] == 2.2
    assert tracking.tracking_uri().startswith("sqlite:///")
    # Named <stage>-<params hash>, in an experiment marked as model training (not GenAI).
    assert run.info.run_name == f"pretrain-{run.data.tags['params.hash'][:8]}"
    experiment = mlflow.MlflowClient().get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert tracking.ui_url(experiment.experiment_id).endswith(
        f"/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
    )


def make_project(root: Path) -> None:
    """A git repo shaped like the pipeline's: params.yaml, two shard manifests."""
    (root / "params.yaml").write_text("# a comment\nsft:\n  max_steps: 4\n")
    for split in ("pretrain/train", "sft/val"):
        folder = root / "data/shards" / split
        folder.mkdir(parents=True)
        manifest = {"files": [{"file": "a.parquet", "sha256": split}], "tokenizer_hash": "tok"}
        (folder / "manifest.json").write_text(json.dumps(manifest))
    (root / "reports").mkdir()
    (root / "reports/metrics.json").write_text("{}")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "params.yaml", "reports"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "p"], cwd=root, check=True)


def test_provenance_tags_git_dvc_and_hashes(tmp_path, monkeypatch):
    make_project(tmp_path)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.strip()
    for variable in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE"):
        monkeypatch.delenv(variable, raising=False)
    tags = tracking.provenance(tmp_path)
    assert tags["git.commit"] == head and tags["git.dirty"] == "false"
    assert tags["tokenizer.hash"] == "tok"  # from the manifests when not given
    assert len(tags["data.hash"]) == len(tags["params.hash"]) == 64
    assert "dvc.exp_name" not in tags

    # Outputs the pipeline rewrites (reports/, dvc.lock) are not "dirty"; params are.
    (tmp_path / "reports/metrics.json").write_text('{"bpb": 2}')
    assert tracking.provenance(tmp_path)["git.dirty"] == "false"
    (tmp_path / "params.yaml").write_text("sft:\n  max_steps: 4\n")  # only the comment went
    again = tracking.provenance(tmp_path, tokenizer_hash="given")
    assert again["git.dirty"] == "true"
    assert again["params.hash"] == tags["params.hash"]  # same content, same hash
    assert again["data.hash"] == tags["data.hash"] and again["tokenizer.hash"] == "given"
    (tmp_path / "params.yaml").write_text("sft:\n  max_steps: 5\n")
    assert tracking.provenance(tmp_path)["params.hash"] != tags["params.hash"]
    manifest = tmp_path / "data/shards/sft/val/manifest.json"
    manifest.write_text(manifest.read_text().replace("sft/val", "changed"))
    assert tracking.provenance(tmp_path)["data.hash"] != tags["data.hash"]

    # `dvc exp run` sets these in the stage's environment (dvc/repo/experiments/queue/base.py).
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", head)
    monkeypatch.setenv("DVC_STAGE", "sft")
    tags = tracking.provenance(tmp_path)
    assert tags["dvc.exp_name"] == "exp-1" and tags["dvc.exp_baseline_rev"] == head
    assert tags["dvc.stage"] == "sft"


def test_provenance_outside_git_is_unknown(tmp_path):
    tags = tracking.provenance(tmp_path)
    assert tags["git.commit"] == tags["git.dirty"] == "unknown"
    assert tags["data.hash"] == tags["tokenizer.hash"] == tags["params.hash"] == "unknown"


def test_sft_runs_nest_under_their_pretrain_run_and_evaluate_reopens(tmp_path, monkeypatch):
    make_project(tmp_path)
    monkeypatch.chdir(tmp_path)  # provenance reads the project in the working directory
    with tracking.run("pretrain", tags={"stage": "pretrain"}, tokenizer_hash="t") as parent:
        pass
    children = []
    for steps in (4, 8):  # two fine-tunes of one base model
        with tracking.run(
            "sft", {"sft": {"max_steps": steps}}, {"stage": "sft"}, parent_run_id=parent
        ) as child:
            children.append(child)
    client = mlflow.MlflowClient(tracking.tracking_uri())
    pretrain = client.get_run(parent)
    assert pretrain.data.tags["tokenizer.hash"] == "t"
    assert "mlflow.parentRunId" not in pretrain.data.tags
    for child in children:
        run = client.get_run(child)
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.info.experiment_id == pretrain.info.experiment_id
        assert run.data.tags["git.commit"] == pretrain.data.tags["git.commit"] != "unknown"
    found = client.search_runs(
        [pretrain.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert {r.info.run_id for r in found} == set(children)

    # evaluate reopens the sft run; it adds `evaluate.<tag>` only where its value differs.
    with tracking.run("evaluate", run_id=children[0]):
        pass
    assert not any(k.startswith("evaluate.") for k in client.get_run(children[0]).data.tags)
    (tmp_path / "params.yaml").write_text("sft:\n  max_steps: 9\n")
    with tracking.run("evaluate", run_id=children[0]):
        pass
    tags = client.get_run(children[0]).data.tags
    assert tags["evaluate.params.hash"] != tags["params.hash"]
    assert tags["evaluate.git.dirty"] == "true"


def test_sft_without_its_parent_in_the_store_is_a_top_level_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # models/base pulled from a DVC remote, trained against another MLflow store.
    with tracking.run("sft", parent_run_id="0" * 32) as run_id:
        pass
    tags = mlflow.MlflowClient(tracking.tracking_uri()).get_run(run_id).data.tags
    assert "mlflow.parentRunId" not in tags


def test_flatten():
    assert tracking.flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {
        "a.b": 1,
        "a.c.d": 2,
        "e": 3,
    }


def test_stage_order_follows_dvc_yaml_dependencies():
    order = stage_order(REPO / "dvc.yaml")
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert sorted(order) == sorted(stages)
    for before, after in [
        ("download", "prepare"),
        ("tokenizer", "shard"),
        ("shard", "pretrain"),
        ("pretrain", "sft"),
        ("sft", "evaluate"),
        ("sft", "export"),
    ]:
        assert order.index(before) < order.index(after)


def test_stage_order_detects_reordering(tmp_path):
    # Write the stages backwards: the order must still put producers first.
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    reversed_yaml = {"stages": dict(reversed(list(stages.items())))}
    path = tmp_path / "dvc.yaml"
    path.write_text(yaml.safe_dump(reversed_yaml, sort_keys=False))
    order = stage_order(path)
    assert order[0] == "download"
    assert order.index("pretrain") < order.index("sft")


def test_onnx_model_is_registered_and_champion_moves_only_on_improvement(tmp_path):
    import mlflow
    import numpy as np
    import torch

    from bardlet.export import cache_names, export_onnx
    from bardlet.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(
        GPTConfig(
            vocab_size=40,
            block_size=16,
            n_layer=1,
            n_head=2,
            n_embd=16,
            mlp_ratio=8 / 3,
            dropout=0.0,
            tie_embeddings=True,
        )
    )
    path = tmp_path / "model.onnx"
    export_onnx(model, path, 23, {"tokenizer_hash": "h"})
    # A decoding step: one new token after a cache of two.
    example = {
        "input_ids": np.array([[3]], dtype=np.int64),
        "attention_mask": np.ones((1, 3), dtype=np.int64),
    }
    example.update({n: np.zeros((1, 2, 2, 8), np.float32) for n in cache_names(1, "past")})

    results = []
    for bpb in (2.0, 2.5, 1.5):
        with tracking.run("export"):
            results.append(tracking.log_onnx_model(path, example, bpb, f"scores {bpb}"))
    versions = [v for v, _ in results]
    assert versions == sorted(versions) and len(set(versions)) == 3
    assert [champion for _, champion in results] == [True, False, True]
    client = mlflow.MlflowClient()
    alias = client.get_model_version_by_alias(tracking.REGISTERED_MODEL, tracking.CHAMPION)
    assert int(alias.version) == versions[2]
    assert alias.description == "scores 1.5"
    assert alias.tags[tracking.CHAMPION_METRIC] == "1.5"

    # The logged model runs through the generic pyfunc interface with its KV-cache inputs;
    # the signature leaves batch, sequence and cache length free (a prompt has no cache).
    loaded = mlflow.pyfunc.load_model(f"models:/{tracking.REGISTERED_MODEL}@champion")
    shapes = {s.name: s.shape for s in loaded.metadata.get_input_schema().inputs}
    assert shapes == {
        "input_ids": (-1, -1),
        "attention_mask": (-1, -1),
        "past.0.key": (-1, 2, -1, 8),
        "past.0.value": (-1, 2, -1, 8),
    }
    assert loaded.predict(example)["logits"].shape == (1, 1, 40)
    prompt = {
        "input_ids": np.array([[1, 2, 3]], dtype=np.int64),
        "attention_mask": np.ones((1, 3), dtype=np.int64),
    }
    prompt.update({n: np.zeros((1, 2, 0, 8), np.float32) for n in cache_names(1, "past")})
    assert loaded.predict(prompt)["logits"].shape == (1, 3, 40)


def test_prefect_yaml_declares_the_deployments_deploy_py_serves(monkeypatch):
    """prefect.yaml (work pools, `prefect deploy --all`) and pipelines/deploy.py (`serve`)
    declare the same deployments: names, entrypoints, schedule, parameters, tags."""
    import inspect

    from prefect.flows import load_flow_from_entrypoint

    from pipelines import deploy

    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    declared = {d["name"]: d for d in config["deployments"]}
    assert set(declared) == set(deploy.DEPLOYMENTS)
    steps = config["pull"]
    assert steps[0]["prefect.deployments.steps.set_working_directory"]["directory"]
    monkeypatch.chdir(REPO)  # where a worker's pull step leaves it
    for name, spec in deploy.DEPLOYMENTS.items():
        entry = declared[name]
        assert entry["entrypoint"] == spec["entrypoint"]
        crons = [s["cron"] for s in entry.get("schedules") or []]
        assert crons == ([spec["cron"]] if spec["cron"] else [])
        assert entry["parameters"] == {**spec["parameters"], "workdir": "."}
        assert entry["tags"] == spec["tags"] and entry["description"] == spec["description"]
        assert entry["work_pool"]["name"] == deploy.WORK_POOL
        # The entrypoint loads, by path, the flow deploy.py serves; the parameters fit it.
        flow = load_flow_from_entrypoint(entry["entrypoint"])
        assert flow.name == spec["flow"] == deploy.FLOWS[name].name
        assert set(entry["parameters"]) <= set(inspect.signature(flow.fn).parameters)
    assert deploy.DEPLOYMENTS["nightly"]["cron"] == deploy.DEFAULT_NIGHTLY_CRON == "0 3 * * *"


def test_served_deployments_match_the_shared_table(tmp_path):
    from pipelines import deploy

    made = {d.name: d for d in deploy.deployments(str(tmp_path))}
    assert set(made) == set(deploy.DEPLOYMENTS)
    assert made["sweep"].parameters == {
        "overrides": deploy.DEFAULT_SWEEP,
        "workdir": str(tmp_path),
    }
    assert made["nightly"].parameters == {"workdir": str(tmp_path)}
    assert made["nightly"].schedules[0].schedule.cron == deploy.NIGHTLY_CRON
    assert not made["sweep"].schedules


def test_run_names_tell_reruns_and_experiments_apart():
    tags = {"params.hash": "1a2b3c4d" + "0" * 56}
    assert tracking.run_name("sft", tags) == "sft-1a2b3c4d"
    assert tracking.run_name("sft", {**tags, "dvc.exp_name": "bardlet-20260101-0300"}) == (
        "sft-bardlet-20260101-0300"
    )
