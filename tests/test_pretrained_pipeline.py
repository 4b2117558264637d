"""`init:` a pretrained model: the real `dvc repro` in a temporary git repo, from a small
random GPT-2 and a small random Llama (grouped-query attention) saved by transformers with a
tokenizer.json trained here, through sft, evaluate, export and report to a reply from ONNX."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_pipeline_e2e import REPO, TINY, ran_stages, run, tiny_project
from tests.test_pretrained import gpt2, llama, randomize
from tests.test_tokenizer_pretrained import byte_level

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pretrained")
    tiny_project(root)
    return root


def set_init(project: Path, init: str) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["init"] = init
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


# One design through the whole pipeline: the stages' path does not depend on it. What does
# (loading, the context cap, export, chat from ONNX) is tested for GPT-2 and Llama in
# tests/test_pretrained.py, in seconds instead of a pipeline run each.
@pytest.mark.parametrize("make", [llama])
def test_dvc_repro_from_a_pretrained_folder_ends_in_a_chat_reply(project, tmp_path, make):
    tokenizer = byte_level()
    longer = {"n_positions": 128} if make is gpt2 else {"max_position_embeddings": 128}
    theirs, _ = make(tmp_path, **longer)  # a longer context than params' model.block_size
    theirs.resize_token_embeddings(tokenizer.vocab_size)
    randomize(theirs)
    folder = project / "data/pretrained" / make.__name__
    theirs.save_pretrained(folder)
    tokenizer.save(folder / "tokenizer.json")
    set_init(project, f"data/pretrained/{make.__name__}")

    out = run([sys.executable, "-m", "dvc", "repro"], project, timeout=900).stdout
    assert {"tokenizer", "pretrain", "sft", "evaluate", "export", "report"} <= ran_stages(out)
    # the tokenizer is the model's own plus the six chat tokens, not a trained BPE
    assert sorted(p.name for p in (project / "models/tokenizer").iterdir()) == ["tokenizer.json"]
    chat_tokens = json.loads((project / "models/tokenizer/tokenizer.json").read_text())
    assert "<|assistant|>" in {t["content"] for t in chat_tokens["added_tokens"]}
    # pretrain took the weights instead of training: step 0, the checkpoint's own numbers
    pretrain = json.loads((project / "reports/pretrain.json").read_text())
    assert pretrain["steps"] == 0 and pretrain["val_bpb"] > 0
    base = json.loads((project / "models/base/config.json").read_text())
    assert base["init"] == f"data/pretrained/{make.__name__}"
    assert base["model"]["vocab_size"] == tokenizer.vocab_size + 6
    assert base["model"]["block_size"] == TINY["model"]["block_size"]  # capped to params
    design = ("layernorm", "learned") if make is gpt2 else ("rmsnorm", "rotary")
    assert (base["model"]["norm"], base["model"]["positions"]) == design
    # the fine-tuned model moved away from the checkpoint and exported with parity
    assert json.loads((project / "reports/sft.json").read_text())["steps"] == 6
    export = json.loads((project / "reports/local/export.json").read_text())
    assert export["parity_max_abs_diff"] < 1e-3
    onnx = sorted(p.name for p in (project / "models/onnx").iterdir())
    assert "tokenizer.json" in onnx and "bpe.json" not in onnx
    said = run(
        [sys.executable, "-m", "bardlet.cli", "generate", "--chat", "Hello", "-n", "6",
         "--ignore-end"], project,
    ).stdout  # fmt: skip
    assert said.strip()
    assert "The pretrained model's tokenizer.json" in (project / "reports/report.md").read_text()
    # nothing changed since: the run is complete
    assert "up to date" in run([sys.executable, "-m", "dvc", "status"], project).stdout


def test_init_errors_name_the_problem_before_any_work(project):
    set_init(project, "data/pretrained/nothing-here")
    done = subprocess.run(
        [sys.executable, "-m", "stages.tokenizer"], cwd=project, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "has no config.json" in done.stderr and "Traceback" not in done.stderr
    set_init(project, "openai-community/gpt2@607a30d783dfa663caf39e06633721c8d4cfcd7e")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    env["BARDLET_DATA_MIRROR"] = str(REPO.parent / "shared/data")
    done = subprocess.run(
        [sys.executable, "-m", "stages.download"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "HF_HUB_OFFLINE" in done.stderr
    assert "data/pretrained/" in done.stderr and "Traceback" not in done.stderr
    assert not (project / "data/pretrained/hub").exists()


def test_a_tokenizer_bigger_than_the_embedding_is_refused(project, tmp_path):
    theirs, _ = gpt2(tmp_path)  # 101 embedding rows; the tokenizer has about 300 tokens
    folder = project / "data/pretrained/mismatch"
    theirs.save_pretrained(folder)
    byte_level().save(folder / "tokenizer.json")
    set_init(project, "data/pretrained/mismatch")
    done = subprocess.run(
        [sys.executable, "-m", "stages.tokenizer"], cwd=project, capture_output=True, text=True
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "embedding has 101 rows" in done.stderr and "not this model's" in done.stderr
