"""The report card: sections and numbers from a fake project, valid PNGs, missing pieces,
the `bardlet report` command, MLflow artifacts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bardlet import report
from bardlet.report import ReportPaths, make_report, write_report
from bardlet.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS = ("Summary", "Data", "Tokenizer", "Model", "Training", "Evaluation", "Export")
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind.\n" * 20

PARAMS_YAML = """\
download:
  sources:
    - name: tinyshakespeare
      path: tinyshakespeare/input.txt
      url: https://example.invalid/input.txt
      sha256: 86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed
      size: 1115394
  oasst1_full: false
model: {n_layer: 2, n_head: 2, n_embd: 32, block_size: 64}
pretrain: {max_steps: 40, batch_size: 4, grad_accum: 2}
sft: {max_steps: 20, batch_size: 4, grad_accum: 1}
"""
SAMPLES_MD = """\
# Samples from the chat model

## ROMEO:

**greedy:**

Good morrow, ```fenced``` cousin.

**sampled** (temperature 0.8, top-k 50, seed 1234):

(empty)
"""


def split(tokens: int, rows: int, **extra: float) -> dict:
    histogram = [{"lo": 0, "hi": 1, "rows": 0}, {"lo": 1, "hi": 2, "rows": rows}]
    return {
        "rows": rows,
        "tokens": tokens,
        "text_bytes": tokens * 3,
        "bytes_per_token": 3.0,
        "files": 1,
        "mean_len": tokens / rows,
        "median_len": 1.0,
        "min_len": 1,
        "max_len": 2,
        "parquet_bytes": 1234,
        "length_histogram": histogram,
        "top_tokens": [{"id": 44, "text": ",", "count": 7, "share": 0.0425}],
        **extra,
    }


def write(path: Path, content: str | dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = content if isinstance(content, str) else json.dumps(content)
    path.write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train([TEXT], vocab_size=300)


@pytest.fixture()
def project(tmp_path: Path, tokenizer: Tokenizer) -> Path:
    """A project folder with every input the report reads, in the shapes the stages write."""
    from safetensors.numpy import save_file

    root = tmp_path / "project"
    reports = root / "reports"
    write(root / "params.yaml", PARAMS_YAML)
    write(
        reports / "prepare.json",
        {
            "shakespeare": {"train_chars": 1003854, "val_chars": 111540},
            "oasst": {"messages": 2022, "deleted": 40, "rejected": 46, "orphans": 3,
                      "trees": 188, "conversations": 188, "train_conversations": 172,
                      "val_conversations": 16},
        },
    )  # fmt: skip
    write(
        reports / "data.json",
        {
            "pretrain": {"train": split(284125, 6285), "val": split(35067, 940)},
            "sft": {
                "train": split(91242, 172, assistant_tokens=77012, assistant_share=0.844),
                "val": split(6060, 16, assistant_tokens=5404, assistant_share=0.89),
            },
        },
    )
    summary = {"params": 13_568, "step": 40.0, "steps": 40.0, "train_seconds": 8.0}
    write(reports / "pretrain.json", {**summary, "val_bpb": 2.3056, "val_loss": 5.0774})
    write(
        reports / "sft.json",
        {**summary, "steps": 20.0, "step": 20.0, "val_bpb": 2.4242, "val_loss": 5.43},
    )
    write(
        reports / "metrics.json",
        {
            "shakespeare": {"loss": 5.96, "perplexity": 387.86, "bpb": 2.7029, "tokens": 34816.0},
            "oasst": {"loss": 5.44, "perplexity": 230.1, "bpb": 2.4271, "rouge_l": 0.0673,
                      "tokens": 5383.0},
        },
    )  # fmt: skip
    write(
        reports / "export.json",
        {"fp32_bpb": 2.7029, "int8_bpb": 2.7037, "int8_bpb_delta_percent": 0.0271,
         "int8_bytes": 2132167, "onnx_bytes": 7573363, "parity_max_abs_diff": 6.2e-06},
    )  # fmt: skip
    write(reports / "samples.md", SAMPLES_MD)
    header = "step,seconds,val_loss,val_bpb\n"
    write(reports / "plots/pretrain.csv", header + "20.0,4.0,6.01,2.73\n40.0,8.0,5.08,2.31\n")
    write(reports / "plots/sft.csv", header + "10.0,2.5,5.71,2.55\n20.0,5.0,5.43,2.42\n")
    tokenizer.save(root / "models/tokenizer/bpe.json")
    model = {"vocab_size": 300, "block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 32}
    write(root / "models/chat/config.json", {"model": model, "run_id": "nope"})
    save_file(
        {
            "blocks.0.attn.qkv.weight": np.zeros((96, 32), np.float32),
            "blocks.1.attn.qkv.weight": np.zeros((96, 32), np.float32),
            "lm_head.weight": np.zeros((300, 32), np.float32),
        },
        str(root / "models/chat/model.safetensors"),
    )
    return root


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (800, 450)


def test_report_has_every_section_and_the_numbers(project: Path) -> None:
    files = write_report(ReportPaths.under(project), measure_speed=False)
    out = project / "reports/report.md"
    assert files[0] == out
    text = out.read_text(encoding="utf-8")
    for section in (*SECTIONS, "Environment"):
        assert f"\n## {section}\n" in text
    # data
    assert "tinyshakespeare" in text and "1.1 MB" in text
    assert "2,022 messages" in text and "172 train, 16 val" in text
    assert "| sft/train | 172 | 91,242 | 77,012 |" in text
    # tokenizer: vocab and a segmentation that decodes back to the line
    assert "300 tokens = 256 bytes + 38 merges + 6 special tokens" in text
    assert "`To be, or not to be, that is the question:` ->" in text
    # model: 2 x 96 x 32 + 300 x 32 parameters, grouped by block
    assert f"{2 * 96 * 32 + 300 * 32:,} parameters" in text
    assert "| `blocks.*.attn.qkv.weight` | 96 x 32 | x2 | 6,144 |" in text
    # training: 40 steps x 4 x 2 x 64 tokens in 8 s; no peak FLOP/s on CPU
    assert "| pretrain | 40 | 40 | 5.077 | 2.306 | 8 | 20,480 | 2,560 |" in text
    assert "| sft | 20 | 20 | 5.43 | 2.424 | 8 | 5,120 | 640 |" in text
    assert "n/a on CPU" in text
    # evaluation, samples (the reply's backticks cannot close its fence)
    assert "| chat model | OASST1 val (assistant) | 5.44 | 230.1 | 2.427 | 0.0673 | 5,383 |" in text
    assert "### ROMEO:" in text and "````text\nGood morrow, ```fenced``` cousin.\n````" in text
    # export
    assert "| int8 delta | +0.027% |" in text and "| size ratio fp32 / int8 | 3.55x |" in text
    assert "ONNX speed: not measured" in text
    # environment
    assert "| git commit | unknown |" in text  # tmp_path is no git repository
    assert f"| params hash | {report.params_hash(report.read_params(project / 'params.yaml'))} |"
    # figures: referenced relative to the page, valid PNGs of the stated size
    figures = sorted(p.name for p in files[1:])
    assert figures == ["curves_steps.png", "curves_time.png", "lengths.png"]
    for path in files[1:]:
        assert f"](figures/{path.name})" in text
        check_png(path)


def test_figures_are_identical_bytes_on_a_second_run(project: Path, tmp_path: Path) -> None:
    first = write_report(ReportPaths.under(project), measure_speed=False)
    blobs = {p.name: p.read_bytes() for p in first[1:]}
    second = write_report(ReportPaths.under(project, tmp_path / "again/report.md"), False)
    assert {p.name: p.read_bytes() for p in second[1:]} == blobs
    assert not list((project / "reports").rglob("*.tmp"))  # atomic writes leave no temp files


def test_peak_flops_gives_mfu() -> None:
    speed = report.train_speed(
        {"steps": 10, "train_seconds": 2.0, "params": 1000},
        {"batch_size": 2, "grad_accum": 1},
        {"block_size": 8, "n_layer": 1, "n_embd": 4},
        peak_flops=1e6,
    )
    assert speed["tokens"] == 160 and speed["tokens_per_s"] == 80
    assert speed["flops_per_token"] == 6 * 1000 + 12 * 1 * 4 * 8
    assert speed["mfu"] == pytest.approx(6384 * 80 / 1e6)


def test_missing_pieces_say_not_available(project: Path) -> None:
    for name in ("data.json", "metrics.json", "export.json", "samples.md", "plots/sft.csv"):
        (project / "reports" / name).unlink()
    (project / "models/chat/model.safetensors").unlink()
    write(project / "reports/prepare.json", "{ not json")
    write(project / "reports/plots/pretrain.csv", "step,val_loss,val_bpb\n20,6.0,2.7\n")
    paths = ReportPaths.under(project)
    files = write_report(paths, measure_speed=True)  # no ONNX model either
    text = paths.out.read_text(encoding="utf-8")
    for what in ("token counts", "preparation counts", "metrics", "samples", "export results"):
        assert f"_not available: {what} (" in text
    assert "_not available: ONNX speed" in text
    assert "_not available: curves against time (the curve CSVs have no `seconds` column)" in text
    assert "13,568 parameters (shapes not available" in text  # from reports/pretrain.json
    assert [p.name for p in files[1:]] == ["curves_steps.png"]  # no lengths, no time axis
    check_png(files[1])


def test_an_empty_folder_still_gives_a_report(tmp_path: Path) -> None:
    paths = ReportPaths.under(tmp_path)
    assert write_report(paths, measure_speed=True) == [paths.out]
    text = paths.out.read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f"\n## {section}\n" in text
    assert text.count("not available") >= 10
    assert "| params hash | not available |" in text


def test_a_broken_input_spoils_only_its_section(project: Path) -> None:
    write(project / "models/tokenizer/bpe.json", '{"merges": "nonsense"}')
    paths = ReportPaths.under(project)
    write_report(paths, measure_speed=False)
    text = paths.out.read_text(encoding="utf-8")
    assert "## Tokenizer\n\n_not available: TokenizerFileError" in text
    assert "| pretrain | 40 |" in text  # the rest is there


def test_onnx_speed_on_a_tiny_export(tmp_path: Path, tokenizer: Tokenizer) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest_server import build_tiny_model

    folder = build_tiny_model(tmp_path / "onnx", tokenizer, logit_scale=8.0)
    speed = report.onnx_speed(folder / "model.onnx", new_tokens=16)
    assert speed is not None and 0 < speed["tokens"] <= 16 and speed["tokens_per_s"] > 0


def test_cli_writes_the_report(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere/card.md"
    done = subprocess.run(
        [sys.executable, "-m", "bardlet.cli", "report", "--root", str(project), "--out", str(out),
         "--no-speed", "--peak-flops", "1e9"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"wrote {out} and 3 figure(s)" in done.stdout
    text = out.read_text(encoding="utf-8")
    # MFU: (6 x 13,568 + 12 x 2 x 32 x 64) FLOPs x 2,560 tokens/s over 1e9 FLOP/s
    assert "| pretrain | 40 | 40 | 5.077 | 2.306 | 8 | 20,480 | 2,560 | 0.33 | 33.4% |" in text
    assert (out.parent / "figures/curves_steps.png").read_bytes()[:8] == PNG_MAGIC
    assert not (tmp_path / "mlflow.db").exists()  # --no-mlflow is the default


def test_report_is_logged_to_the_chat_models_mlflow_run(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from bardlet import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # the store's artifacts go below the working directory
    with tracking.run("sft") as run_id:
        pass
    config = json.loads((project / "models/chat/config.json").read_text())
    write(project / "models/chat/config.json", {**config, "run_id": run_id})

    make_report(ReportPaths.under(project), measure_speed=False, mlflow=True)

    client = mlflow.MlflowClient(tracking_uri=uri)
    logged = {a.path for a in client.list_artifacts(run_id, "report")}
    assert logged == {"report/report.md", "report/figures"}
    figures = {a.path for a in client.list_artifacts(run_id, "report/figures")}
    assert figures == {
        f"report/figures/{n}.png" for n in ("curves_steps", "curves_time", "lengths")
    }
    assert len(client.search_runs(client.get_run(run_id).info.experiment_id)) == 1  # no new run
