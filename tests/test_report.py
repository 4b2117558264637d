"""The report card: sections and numbers from a fake project, valid PNGs, missing pieces,
the split between the reproducible page (reports/report.md) and this machine's page
(reports/local/report.md), the `bardlet report` command, MLflow artifacts."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from bardlet import report
from bardlet.markdown import fenced, fmt_bytes, table
from bardlet.report import ReportPaths, make_report, write_report
from bardlet.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS = ("Summary", "Data", "Tokenizer", "Model", "Training", "Evaluation", "Export")
LOCAL_SECTIONS = ("Training speed", "ONNX generation speed", "Environment")
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind.\n" * 20
# What may only ever appear on this machine's page: timings, speed, the machine itself.
MACHINE_WORDS = ("tokens/s", "seconds", "GFLOP", "MFU", "wall-clock", "Environment",
                 "git commit", "params hash", "python", "CPU", "GPU", "onnxruntime")  # fmt: skip

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


def write_timings(root: Path, seconds: float) -> None:
    """reports/local/: what the training stages leave about this machine (pretrain trains
    20,480 tokens, sft 5,120, both in `seconds`)."""
    local = root / "reports/local"
    checks = {
        "fp32_bpb": 2.7029,
        "int8_bpb": 2.7037 + seconds / 1e6,
        "parity_max_abs_diff": 6.2e-06,
    }
    write(local / "export.json", {**checks, "int8_bpb_delta_percent": 0.0271 + seconds / 1e4})
    for stage, tokens in (("pretrain", 20_480), ("sft", 5_120)):
        write(local / f"{stage}.json", {"train_seconds": seconds, "tokens_per_second": tokens / seconds})  # fmt: skip
        rows = "".join(f"{step},{seconds * step / 40},{2.9 - step / 100}\n" for step in (20, 40))
        write(local / f"{stage}.csv", "step,seconds,val_bpb\n" + rows)


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
            "corpus": {"tinyshakespeare": {"files": 1, "documents": 1, "train_bytes": 1003854,
                                           "val_bytes": 111540}},
            "chats": {
                "oasst1": {"messages": 2022, "deleted": 40, "rejected": 46, "orphans": 3,
                           "trees": 188, "conversations": 188, "dropped": {},
                           "train_conversations": 172, "val_conversations": 16},
                "mine": {"files": 2, "dropped": {"empty_turn": 3}, "train_conversations": 9,
                         "val_conversations": 1},
            },
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
    # tokens = steps x batch_size x grad_accum x block_size x processes
    write(reports / "pretrain.json", {"params": 13_568, "step": 40.0, "steps": 40.0,
          "tokens": 40 * 4 * 2 * 64, "val_bpb": 2.3056, "val_loss": 5.0774})  # fmt: skip
    write(reports / "sft.json", {"params": 13_568, "step": 20.0, "steps": 20.0,
          "tokens": 20 * 4 * 1 * 64, "val_bpb": 2.4242, "val_loss": 5.43})  # fmt: skip
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
        {"int8_bytes": 2132167, "onnx_bytes": 7573363, "parity_tolerance": 1e-4,
         "int8_max_bpb_delta_percent": 2.0},
    )  # fmt: skip
    write(reports / "samples.md", SAMPLES_MD)
    header = "step,train_loss,val_loss,val_bpb\n"
    write(reports / "plots/pretrain.csv", header + "20.0,6.2,6.01,2.73\n40.0,5.2,5.08,2.31\n")
    write(reports / "plots/sft.csv", header + "10.0,5.9,5.71,2.55\n20.0,5.5,5.43,2.42\n")
    write_timings(root, seconds=8.0)
    tokenizer.save(root / "models/tokenizer/bpe.json")
    model = {"vocab_size": 300, "block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 32}
    write(root / "models/chat/config.json", {"model": model})
    write(root / "models/chat/mlflow.json", {"run_id": "nope"})
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


def pages(root: Path) -> tuple[str, str]:
    reports = root / "reports"
    card = (reports / "report.md").read_text(encoding="utf-8")
    return card, (reports / "local/report.md").read_text(encoding="utf-8")


def snapshot(root: Path) -> dict[str, bytes]:
    """The committed part of the report: reports/report.md and reports/figures/*."""
    reports = root / "reports"
    files = [reports / "report.md", *sorted((reports / "figures").iterdir())]
    return {path.relative_to(reports).as_posix(): path.read_bytes() for path in files}


def test_report_has_every_section_and_the_numbers(project: Path) -> None:
    files = write_report(ReportPaths.under(project), measure_speed=False)
    reports = project / "reports"
    assert [p.relative_to(reports).as_posix() for p in files] == [
        "report.md", "figures/curves_steps.png", "figures/lengths.png",
        "local/report.md", "local/figures/curves_time.png",
    ]  # fmt: skip
    card, local = pages(project)
    for section in SECTIONS:
        assert f"\n## {section}\n" in card
    # data
    assert "tinyshakespeare" in card and "1.1 MB" in card
    assert "2,022 messages" in card
    assert "| sft/train | 172 | 91,242 | 77,012 | 273.7 KB | 3 | 530.5 | 2 | 1.2 KB |" in card
    assert "| pretrain/train | 6,285 | 284,125 | - |" in card
    # tokenizer: vocab and a segmentation that decodes back to the line
    assert "300 tokens = 256 bytes + 38 merges + 6 special tokens" in card
    assert "`To be, or not to be, that is the question:` ->" in card
    # model: 2 x 96 x 32 + 300 x 32 parameters, grouped by block
    assert f"{2 * 96 * 32 + 300 * 32:,} parameters" in card
    assert "| `blocks.*.attn.qkv.weight` | 96 x 32 | x2 | 6,144 |" in card
    # training: steps, kept step, validation and tokens; no clock anywhere on the card
    assert "| pretrain | 40 | 40 | 5.077 | 2.306 | 20,480 |" in card
    assert "| sft | 20 | 20 | 5.43 | 2.424 | 5,120 |" in card
    # evaluation, samples (the reply's backticks cannot close its fence)
    assert "| chat model | OASST1 val (assistant) | 5.44 | 230.1 | 2.427 | 0.0673 | 5,383 |" in card
    assert "| base model | Tiny Shakespeare val | 5.077 | 160.4 | 2.306 | - | n/a |" in card
    # What prepare made of each source, and what it left out.
    assert "| tinyshakespeare | pretrain | 1.0 MB | 111.5 KB | 1 file(s) |" in card
    assert (
        "| oasst1 | sft | 172 conversations | 16 conversations | 2,022 messages (40 deleted, "
        "46 rejected, 3 orphans) in 188 trees; left out: none |"
    ) in card
    assert (
        "| mine | sft | 9 conversations | 1 conversations | 2 file(s); left out: empty_turn 3 |"
        in card
    )
    assert "### ROMEO:" in card and "````text\nGood morrow, ```fenced``` cousin.\n````" in card
    # export
    assert "| size ratio fp32 / int8 | 3.55x |" in card and "| +2.000% |" in card
    assert "int8 delta" not in card and "6.2e-06" not in card  # onnxruntime's: per machine
    # the card links this machine's page; figures are referenced relative to each page
    assert "[local/report.md](local/report.md)" in card
    assert "](figures/curves_steps.png)" in card and "](figures/lengths.png)" in card
    assert "curves_time" not in card
    # this machine's page: 20,480 tokens in 8 s; no peak FLOP/s on CPU
    assert local.startswith("# This machine's run\n")
    assert "[the report card](../report.md)" in local
    for section in LOCAL_SECTIONS:
        assert f"\n## {section}\n" in local
    assert "| pretrain | 8 | 20,480 | 2,560 |" in local and "n/a on CPU" in local
    assert "| int8 delta | +0.028% |" in local and "6.200e-06" in local
    assert "| sft | 8 | 5,120 | 640 |" in local
    assert "](figures/curves_time.png)" in local
    assert "Not measured (`--no-speed`)." in local
    assert "| git commit | unknown |" in local  # tmp_path is no git repository
    params = yaml.safe_load(PARAMS_YAML)
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
    assert f"| params hash | {hashlib.sha256(canonical).hexdigest()} |" in local
    for path in files[1:]:
        if path.suffix == ".png":
            check_png(path)


def test_the_card_is_the_same_bytes_whatever_the_machine(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reproducibility contract: reports/report.md and reports/figures/ depend only on
    what the pipeline made, never on timings, ONNX speed, the git commit or the machine."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    for command in (["init", "-q"], ["add", "params.yaml"], ["commit", "-qm", "x"]):
        subprocess.run(["git", *command], cwd=project, check=True, env=env)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, check=True
    ).stdout.strip()

    monkeypatch.setattr(report, "onnx_speed", lambda path, *a: {"tokens": 64, "seconds": 0.04,
                        "tokens_per_s": 1600.0} if path.suffix == ".onnx" else None)  # fmt: skip
    write_report(ReportPaths.under(project), measure_speed=True)
    first, first_local = snapshot(project), pages(project)[1]

    # another machine: slower training, a different ONNX speed, a peak FLOP/s, a new commit
    write_timings(project, seconds=31.5)
    monkeypatch.setattr(report, "onnx_speed", lambda path, *a: {"tokens": 64, "seconds": 0.4,
                        "tokens_per_s": 160.0} if path.suffix == ".onnx" else None)  # fmt: skip
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "y"], cwd=project, env=env)
    write_report(ReportPaths.under(project), measure_speed=True, peak_flops=1e9)
    assert snapshot(project) == first
    second_local = pages(project)[1]
    assert second_local != first_local
    assert "| fp32 | 64 | 0.04 | 1,600 |" in first_local
    assert "| fp32 | 64 | 0.4 | 160 |" in second_local
    assert f"| git commit | {commit} |" in first_local and commit not in second_local

    # and without any local file or speed measurement at all (a fresh clone after dvc pull)
    local = project / "reports/local"
    for name in ("pretrain.json", "sft.json", "pretrain.csv", "sft.csv"):
        (local / name).unlink()
    write_report(ReportPaths.under(project), measure_speed=False)
    assert snapshot(project) == first
    assert not (local / "figures/curves_time.png").exists()  # no stale figure either

    card = first["report.md"].decode("utf-8")
    for word in (*MACHINE_WORDS, commit, commit[:7], platform.platform(), platform.node()):
        assert word not in card, word


def test_figures_are_identical_bytes_on_a_second_run(project: Path, tmp_path: Path) -> None:
    first = write_report(ReportPaths.under(project), measure_speed=False)
    blobs = {p.name: p.read_bytes() for p in first if p.suffix == ".png"}
    second = write_report(ReportPaths.under(project, tmp_path / "again/report.md"), False)
    assert {p.name: p.read_bytes() for p in second if p.suffix == ".png"} == blobs
    assert second[3] == tmp_path / "again/local/report.md"  # local/ goes beside --out
    assert not list((project / "reports").rglob("*.tmp"))  # atomic writes leave no temp files


def test_a_figure_from_an_older_run_does_not_linger(project: Path) -> None:
    stale = project / "reports/figures/curves_time.png"  # where older versions drew it
    write(stale, "old")
    (project / "reports/data.json").unlink()
    write(project / "reports/figures/lengths.png", "old")
    write_report(ReportPaths.under(project), measure_speed=False)
    assert sorted(p.name for p in (project / "reports/figures").iterdir()) == ["curves_steps.png"]


def test_peak_flops_gives_mfu() -> None:
    speed = report.train_speed(
        {"steps": 10, "tokens": 160, "params": 1000},
        {"train_seconds": 2.0},  # tokens per second from tokens / seconds
        {"block_size": 8, "n_layer": 1, "n_embd": 4},
        peak=1e6,
    )
    assert speed["tokens"] == 160 and speed["tokens_per_s"] == 80
    assert speed["flops_per_token"] == 6 * 1000 + 12 * 1 * 4 * 8
    assert speed["mfu"] == pytest.approx(6384 * 80 / 1e6)
    measured = report.train_speed({"tokens": 160}, {"tokens_per_second": 75.0}, {}, None)
    assert measured["tokens_per_s"] == 75.0 and "mfu" not in measured  # no params: no FLOPs
    assert report.train_speed({"tokens": 160}, None, {}, None)["tokens_per_s"] is None


def test_markdown_tables_and_numbers() -> None:
    """The one table helper (report, model card, bench scripts): alignment, formatting, `|`."""
    rows = [("a | b", 1234, 0.5, None), ("c", 2.0, 1e-5, True)]
    assert table("name | n | x | flag", rows, align="lr").splitlines() == [
        "| name | n | x | flag |",
        "| --- | ---: | ---: | ---: |",
        "| a \\| b | 1,234 | 0.5 | n/a |",
        "| c | 2 | 1.000e-05 | true |",
    ]
    assert table(("k", "v"), [("x", "y")]).splitlines()[1] == "| --- | --- |"  # all left
    assert table(["t", "k", "c", "n"], [], align="rllr").endswith("| ---: | --- | --- | ---: |")
    assert [fmt_bytes(n) for n in (999, 273_700, 7_573_363, None)] == [
        "999 B", "273.7 KB", "7.6 MB", "n/a"]  # fmt: skip
    assert fenced("x ```y```") == "````text\nx ```y```\n````"


def test_missing_pieces_say_not_available(project: Path) -> None:
    for name in ("data.json", "metrics.json", "export.json", "samples.md", "plots/sft.csv"):
        (project / "reports" / name).unlink()
    (project / "models/chat/model.safetensors").unlink()
    write(project / "reports/prepare.json", "{ not json")
    write(project / "reports/plots/pretrain.csv", "step,val_loss,val_bpb\n20,6.0,2.7\n")
    write(project / "reports/local/sft.csv", "step,val_bpb\n20,2.7\n")  # no seconds: not drawn
    (project / "reports/local/pretrain.csv").unlink()
    (project / "reports/local/sft.json").unlink()
    paths = ReportPaths.under(project)
    files = write_report(paths, measure_speed=True)  # no ONNX model either
    card, local = pages(project)
    for what in ("token counts", "preparation counts", "metrics", "samples", "export results"):
        assert f"_not available: {what} (" in card
    assert "13,568 parameters (shapes not available" in card  # from reports/pretrain.json
    assert "| pretrain | 40 | 40 | 5.077 |" in card  # the rest is there
    assert "_not available: ONNX speed" in local
    assert "_not available: curves against time (reports/local/*.csv" in local
    assert "| sft | n/a | 5,120 | n/a | n/a | n/a |" in local  # no timing for sft
    assert [p.name for p in files] == ["report.md", "curves_steps.png", "report.md"]
    check_png(files[1])


def test_an_empty_folder_still_gives_a_report(tmp_path: Path) -> None:
    paths = ReportPaths.under(tmp_path)
    assert write_report(paths, measure_speed=True) == [paths.out, paths.local / "report.md"]
    card, local = pages(tmp_path)
    for section in SECTIONS:
        assert f"\n## {section}\n" in card
    assert card.count("not available") >= 9
    assert "_not available: timings (" in local
    assert "| params hash | not available |" in local


def test_a_broken_input_spoils_only_its_section(project: Path) -> None:
    write(project / "models/tokenizer/bpe.json", '{"merges": "nonsense"}')
    write_report(ReportPaths.under(project), measure_speed=False)
    card = pages(project)[0]
    assert "## Tokenizer\n\n_not available: TokenizerFileError" in card
    assert "| pretrain | 40 |" in card and "\n## Model\n" in card  # the rest is there


def test_onnx_speed_on_a_tiny_export(tmp_path: Path, tokenizer: Tokenizer) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest_server import build_tiny_model

    folder = build_tiny_model(tmp_path / "onnx", tokenizer, logit_scale=8.0)
    speed = report.onnx_speed(folder / "model.onnx", new_tokens=16)
    assert speed is not None and 0 < speed["tokens"] <= 16 and speed["tokens_per_s"] > 0
    assert report.onnx_speed(folder / "model.int8.onnx") is None  # not exported
    write(tmp_path / "broken.onnx", "not a model")
    assert report.onnx_speed(tmp_path / "broken.onnx") is None


def test_cli_writes_the_report(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere/card.md"
    done = subprocess.run(
        [sys.executable, "-m", "bardlet.cli", "report", "--root", str(project), "--out", str(out),
         "--no-speed", "--peak-flops", "1e9"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout
    assert "\n## Training\n" in out.read_text(encoding="utf-8")
    local = (out.parent / "local/report.md").read_text(encoding="utf-8")
    # MFU: (6 x 13,568 + 12 x 2 x 32 x 64) FLOPs x 2,560 tokens/s over 1e9 FLOP/s
    assert "| pretrain | 8 | 20,480 | 2,560 | 0.33 | 33.4% |" in local
    assert (out.parent / "figures/curves_steps.png").read_bytes()[:8] == PNG_MAGIC
    assert (out.parent / "local/figures/curves_time.png").read_bytes()[:8] == PNG_MAGIC
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
    write(project / "models/chat/mlflow.json", {"run_id": run_id})

    make_report(ReportPaths.under(project), measure_speed=False, mlflow=True)

    client = mlflow.MlflowClient(tracking_uri=uri)

    def listed(folder: str) -> set[str]:
        return {a.path for a in client.list_artifacts(run_id, folder)}

    assert listed("report") == {"report/report.md", "report/figures", "report/local"}
    assert listed("report/figures") == {"report/figures/curves_steps.png", "report/figures/lengths.png"}  # fmt: skip
    assert listed("report/local") == {"report/local/report.md", "report/local/figures"}
    assert listed("report/local/figures") == {"report/local/figures/curves_time.png"}
    assert len(client.search_runs(client.get_run(run_id).info.experiment_id)) == 1  # no new run


def test_report_without_a_known_run_gets_its_own(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    make_report(ReportPaths.under(project), measure_speed=False, mlflow=True)  # run_id "nope"
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.run_name.startswith("report")
    logged = {a.path for a in client.list_artifacts(runs[0].info.run_id, "report")}
    assert logged == {"report/report.md", "report/figures", "report/local"}
