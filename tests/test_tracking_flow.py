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


def test_onnx_model_is_registered_and_champion_moves_only_on_improvement(tmp_path):
    import mlflow
    import numpy as np
    import torch

    from bardlet.export import cache_names, export_onnx
    from bardlet.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16))
    path = tmp_path / "model.onnx"
    export_onnx(model, path, 17, {"tokenizer_hash": "h"})
    example = {"input_ids": np.array([[1, 2, 3]], dtype=np.int64)}
    example.update({n: np.zeros((1, 2, 0, 8), np.float32) for n in cache_names(1, "past")})

    results = []
    for bpb in (2.0, 2.5, 1.5):
        with tracking.run("export"):
            results.append(tracking.log_onnx_model(path, example, bpb))
    versions = [v for v, _ in results]
    assert versions == sorted(versions) and len(set(versions)) == 3
    assert [champion for _, champion in results] == [True, False, True]
    client = mlflow.MlflowClient()
    alias = client.get_model_version_by_alias(tracking.REGISTERED_MODEL, tracking.CHAMPION)
    assert int(alias.version) == versions[2]

    # The logged model runs through the generic pyfunc interface with its KV-cache inputs.
    loaded = mlflow.pyfunc.load_model(f"models:/{tracking.REGISTERED_MODEL}/{versions[0]}")
    outputs = loaded.predict(example)
    assert outputs["logits"].shape == (1, 3, 40)
