"""MLflow on a real SQLite store, and the Prefect flow's stage order from dvc.yaml."""

from pathlib import Path

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
