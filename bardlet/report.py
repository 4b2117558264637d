"""The report card: one Markdown page (reports/report.md) and its PNG figures about a run.

It reads what the stages already wrote (reports/*.json, reports/plots/*.csv, samples.md, the
tokenizer, the chat model's config.json and safetensors header, the ONNX model) and never
trains or evaluates anything itself; the one measurement it makes is a short ONNX generation
(64 greedy tokens) for tokens per second. A missing piece (a stage not run yet) shows up as
"not available" in its section, never as a crash.

Torch-free: the parameter shapes come from the safetensors header, the run id from
models/chat/config.json. Figures are drawn with matplotlib's Agg canvas and saved without a
timestamp or version, so the same inputs give the same PNG bytes.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import io
import json
import math
import os
import platform
import shutil
import statistics
import struct
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

NA = "not available"
SAMPLE_TEXTS = (
    "To be, or not to be, that is the question:",
    "Hello! How can I help you today?",
)
SPEED_PROMPT = "ROMEO:"
SPEED_TOKENS = 64
PACKAGES = (
    "torch",
    "onnxruntime",
    "onnx",
    "numpy",
    "mlflow",
    "dvc",
    "prefect",
    "polars",
    "pyarrow",
    "matplotlib",
)
CORPUS = {"pretrain": "pretrain (Shakespeare)", "sft": "sft (OASST1)"}
FIGURE_SIZE = (8.0, 4.5)  # inches at 100 dpi: 800 x 450 pixels
FIGURE_DPI = 100

Json = dict[str, Any]
Rows = list[dict[str, float]]


@dataclass(frozen=True)
class ReportPaths:
    """Every file the report reads, and where it writes."""

    reports: Path  # prepare.json, data.json, pretrain.json, sft.json, metrics.json, ...
    plots: Path  # pretrain.csv, sft.csv
    tokenizer: Path  # bpe.json
    chat_model: Path  # config.json, model.safetensors
    onnx_model: Path  # model.onnx (model.int8.onnx beside it, if exported)
    params: Path  # params.yaml
    out: Path  # report.md
    figures: Path  # *.png

    @classmethod
    def under(cls, root: Path, out: Path | None = None) -> ReportPaths:
        """The pipeline's layout below a project folder; figures go beside the report."""
        reports = root / "reports"
        out = out if out is not None else reports / "report.md"
        return cls(
            reports=reports,
            plots=reports / "plots",
            tokenizer=root / "models/tokenizer/bpe.json",
            chat_model=root / "models/chat",
            onnx_model=root / "models/onnx/model.onnx",
            params=root / "params.yaml",
            out=out,
            figures=out.parent / "figures",
        )


# ---------------------------------------------------------------------------- reading


def read_json(path: Path) -> Json | None:
    """The JSON object in `path`, or None if it is missing or not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_curve(path: Path) -> Rows | None:
    """A training curve CSV (step, seconds, val_loss, val_bpb, ...) as rows of floats."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [
                {k: float(v) for k, v in row.items() if k and v not in (None, "")}
                for row in csv.DictReader(f)
            ]
    except (OSError, ValueError):
        return None
    return rows or None


def read_params(path: Path) -> Json | None:
    """params.yaml as plain data (not validated: the report only looks things up)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def params_hash(params: Json) -> str:
    """sha256 of the parameters as canonical JSON: comments and key order do not count."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def safetensors_shapes(path: Path) -> dict[str, list[int]] | None:
    """Tensor name -> shape, from the safetensors header alone (no weights, no torch)."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return None
    return {k: list(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def parse_samples(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """reports/samples.md -> [(prompt, [(label, reply), ...]), ...]."""
    samples: list[tuple[str, list[tuple[str, str]]]] = []
    label: str | None = None
    lines: list[str] = []

    def flush() -> None:
        if samples and label is not None:
            samples[-1][1].append((label, "\n".join(lines).strip()))

    for line in text.splitlines():
        if line.startswith("## "):
            flush()
            samples.append((line[3:].strip(), []))
            label, lines = None, []
        elif line.startswith("**") and samples:
            flush()
            label, lines = line.replace("**", "").rstrip(":").strip(), []
        elif label is not None:
            lines.append(line)
    flush()
    return samples


# ---------------------------------------------------------------------------- formatting


def fmt(value: Any, digits: int = 4) -> str:
    """Integers with thousands separators, floats to `digits` significant places (whole
    numbers from 1,000 up), tiny or huge ones in scientific notation; None is n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return f"{int(value):,}"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e9):
            return f"{value:.{digits - 1}e}"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}g}"
    return str(value)


def fmt_bytes(n: Any) -> str:
    if not isinstance(n, int | float):
        return "n/a"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return "n/a"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; cells are formatted with `fmt` unless already strings."""
    cells = [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines)


def fenced(text: str) -> str:
    """`text` in a code fence longer than any run of backticks inside it."""
    ticks = max(3, _longest_backtick_run(text) + 1)
    return f"{'`' * ticks}text\n{text}\n{'`' * ticks}"


def _longest_backtick_run(text: str) -> int:
    best = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        best = max(best, run)
    return best


def missing(what: str, hint: str) -> str:
    return f"_{NA}: {what} ({hint})._"


def _get(data: Json | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


# ---------------------------------------------------------------------------- figures


def save_figure(figure: Any, path: Path) -> Path:
    """Write a matplotlib Figure as PNG, atomically and without a timestamp or version."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI, metadata={"Software": None})
    write_bytes_atomic(path, buffer.getvalue())
    return path


def _new_figure(columns: int) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = [figure.add_subplot(1, columns, i + 1) for i in range(columns)]
    return figure, axes


def plot_curves(curves: dict[str, Rows], x: str, path: Path, xlabel: str) -> Path | None:
    """Validation loss and bits per byte (and training loss, if the CSV has it) against `x`,
    one line per stage. None if no curve has the `x` column."""
    usable = {name: rows for name, rows in curves.items() if rows and all(x in r for r in rows)}
    if not usable:
        return None
    figure, (left, right) = _new_figure(2)
    for (name, rows), color in zip(
        usable.items(), ("tab:blue", "tab:orange", "tab:green"), strict=False
    ):
        xs = [r[x] for r in rows]
        for axis, key in ((left, "val_loss"), (right, "val_bpb")):
            points = [(a, r[key]) for a, r in zip(xs, rows, strict=True) if key in r]
            if points:
                label = f"{CORPUS.get(name, name)} val"
                axis.plot(*zip(*points, strict=True), marker="o", color=color, label=label)
        train = [(a, r["train_loss"]) for a, r in zip(xs, rows, strict=True) if "train_loss" in r]
        if train:
            left.plot(
                *zip(*train, strict=True),
                linestyle="--",
                color=color,
                label=f"{CORPUS.get(name, name)} train",
            )
    for axis, title in ((left, "loss (nats per token)"), (right, "bits per byte")):
        axis.set_title(title)
        axis.set_xlabel(xlabel)
        axis.grid(True, alpha=0.3)
        axis.legend()
    return save_figure(figure, path)


def plot_lengths(data: Json, path: Path) -> Path | None:
    """Histograms of tokens per row (document or conversation) of each training split."""
    splits = [
        (corpus, _get(data, corpus, "train", "length_histogram")) for corpus in ("pretrain", "sft")
    ]
    splits = [(corpus, bins) for corpus, bins in splits if isinstance(bins, list) and bins]
    if not splits:
        return None
    figure, axes = _new_figure(len(splits))
    for axis, (corpus, bins) in zip(axes, splits, strict=True):
        used = [b for b in bins if b.get("rows")]
        first, last = bins.index(used[0]) if used else 0, bins.index(used[-1]) if used else 0
        shown = bins[first : last + 1]
        axis.bar(range(len(shown)), [b["rows"] for b in shown], color="tab:blue")
        axis.set_xticks(range(len(shown)), [f"<{b['hi']}" for b in shown], rotation=45)
        axis.set_title(f"{CORPUS.get(corpus, corpus)} train: tokens per row")
        axis.set_ylabel("rows")
        axis.grid(True, axis="y", alpha=0.3)
    return save_figure(figure, path)


# ---------------------------------------------------------------------------- measuring


def onnx_speed(model_path: Path, new_tokens: int = SPEED_TOKENS, repeats: int = 3) -> Json | None:
    """Greedy generation speed of an exported model: the median of `repeats` timings of
    `new_tokens` tokens, after a warm-up (well under a second for the default model on a
    laptop CPU). None if there is no model file."""
    if not model_path.exists():
        return None
    from bardlet.runtime import OnnxLM, Sampling

    lm = OnnxLM(model_path)
    prompt = [lm.tokenizer.special_id("<|bos|>"), *lm.tokenizer.encode(SPEED_PROMPT)]
    greedy = Sampling(temperature=0.0)
    lm.generate(prompt, 8, greedy)  # warm-up: the first runs allocate
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        tokens = lm.generate(prompt, new_tokens, greedy)
        timings.append(time.perf_counter() - started)
    seconds = statistics.median(timings)
    return {"tokens": len(tokens), "seconds": seconds, "tokens_per_s": len(tokens) / seconds}


def train_speed(
    summary: Json | None, stage_params: Json | None, model: Json, peak_flops: float | None
) -> Json:
    """Tokens per second of a training stage and the model FLOPs it did per second.

    FLOPs per token = 6 N + 12 L C T (forward and backward through the weights, plus
    attention over a context of T; PaLM's appendix B, as in nanoGPT's MFU estimate). MFU is
    that over `peak_flops`, the hardware's peak; None when no peak is known (CPUs)."""
    steps, seconds, n = (_get(summary, k) for k in ("steps", "train_seconds", "params"))
    batch, accum = _get(stage_params, "batch_size"), _get(stage_params, "grad_accum") or 1
    block, layers, width = (model.get(k) for k in ("block_size", "n_layer", "n_embd"))
    result: Json = {"steps": steps, "train_seconds": seconds}
    numbers = (steps, seconds, batch, accum, block)
    if not all(isinstance(v, int | float) and v > 0 for v in numbers):
        return result
    tokens_per_step = int(batch) * int(accum) * int(block)  # type: ignore[arg-type]
    tokens_per_s = steps * tokens_per_step / seconds
    result.update(tokens_per_step=tokens_per_step, tokens=round(steps * tokens_per_step))
    result["tokens_per_s"] = tokens_per_s
    if not isinstance(n, int | float):
        return result
    attention = 12 * layers * width * block if layers and width else 0
    per_token = 6 * n + attention
    achieved = per_token * tokens_per_s
    result.update(flops_per_token=per_token, flops_per_s=achieved)
    result["mfu"] = achieved / peak_flops if peak_flops else None
    return result


def git_commit(root: Path) -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def gpus() -> str:
    """GPU names from nvidia-smi (torch-free), or a note that none was found."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "none found (no nvidia-smi)"
    try:
        done = subprocess.run(
            [smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown (nvidia-smi failed)"
    names = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return "; ".join(names) if done.returncode == 0 and names else "none found"


def environment(root: Path, params: Json | None) -> list[tuple[str, str]]:
    rows = [
        ("python", platform.python_version()),
        ("platform", platform.platform()),
        ("CPU", cpu_model()),
        ("CPU cores", f"{os.cpu_count()} ({len(_affinity())} usable by this process)"),
        ("GPU", gpus()),
    ]
    for package in PACKAGES:
        try:
            rows.append((package, importlib.metadata.version(package)))
        except importlib.metadata.PackageNotFoundError:
            rows.append((package, "not installed"))
    rows.append(("git commit", git_commit(root)))
    rows.append(("params hash", params_hash(params) if params is not None else NA))
    return rows


def _affinity() -> set[int]:
    getter = getattr(os, "sched_getaffinity", None)
    return set(getter(0)) if getter else set(range(os.cpu_count() or 1))


# ---------------------------------------------------------------------------- sections


@dataclass
class Inputs:
    """Everything the sections show, read once."""

    paths: ReportPaths
    prepare: Json | None
    data: Json | None
    pretrain: Json | None
    sft: Json | None
    metrics: Json | None
    export: Json | None
    samples: str | None
    curves: dict[str, Rows | None]
    config: Json | None
    shapes: dict[str, list[int]] | None
    params: Json | None

    @classmethod
    def read(cls, paths: ReportPaths) -> Inputs:
        try:
            samples: str | None = (paths.reports / "samples.md").read_text(encoding="utf-8")
        except OSError:
            samples = None
        return cls(
            paths=paths,
            prepare=read_json(paths.reports / "prepare.json"),
            data=read_json(paths.reports / "data.json"),
            pretrain=read_json(paths.reports / "pretrain.json"),
            sft=read_json(paths.reports / "sft.json"),
            metrics=read_json(paths.reports / "metrics.json"),
            export=read_json(paths.reports / "export.json"),
            samples=samples,
            curves={s: read_curve(paths.plots / f"{s}.csv") for s in ("pretrain", "sft")},
            config=read_json(paths.chat_model / "config.json"),
            shapes=safetensors_shapes(paths.chat_model / "model.safetensors"),
            params=read_params(paths.params),
        )

    @property
    def model_config(self) -> Json | None:
        config = _get(self.config, "model")
        return config if isinstance(config, dict) else _get(self.params, "model")

    @property
    def num_params(self) -> int | None:
        if self.shapes:
            return sum(math.prod(shape) for shape in self.shapes.values())
        count = _get(self.pretrain, "params") or _get(self.sft, "params")
        return int(count) if isinstance(count, int | float) else None


def summary_section(inputs: Inputs, speed: Json | None) -> str:
    metrics, export = inputs.metrics, inputs.export
    rows = [
        ("parameters", fmt(inputs.num_params)),
        ("base model, Tiny Shakespeare val bits per byte", fmt(_get(inputs.pretrain, "val_bpb"))),
        (
            "chat model, Tiny Shakespeare val bits per byte",
            fmt(_get(metrics, "shakespeare", "bpb")),
        ),
        ("chat model, OASST1 val bits per byte", fmt(_get(metrics, "oasst", "bpb"))),
        ("chat model, OASST1 ROUGE-L", fmt(_get(metrics, "oasst", "rouge_l"))),
        ("ONNX parity (max abs logit diff)", fmt(_get(export, "parity_max_abs_diff"))),
        ("ONNX greedy tokens/s", fmt(_get(speed, "tokens_per_s"), 3)),
    ]
    return "## Summary\n\n" + table(("what", "value"), rows)


def data_section(inputs: Inputs, figure: Path | None) -> str:
    parts = ["## Data"]
    sources = _get(inputs.params, "download", "sources")
    if isinstance(sources, list) and sources:
        listed = [
            (s.get("name", "?"), s.get("path", "?"), fmt_bytes(s.get("size"))) for s in sources
        ]
        parts.append(
            "Sources (pinned, sha256 checked):\n\n" + table(("name", "file", "size"), listed)
        )
        if _get(inputs.params, "download", "oasst1_full"):
            parts.append("Plus the full OASST1 release (`download.oasst1_full: true`).")
    else:
        parts.append(missing("sources", "params.yaml has no download.sources"))
    prepare = inputs.prepare
    if prepare is not None:
        shakespeare, oasst = prepare.get("shakespeare", {}), prepare.get("oasst", {})
        parts.append(
            "Prepared: Tiny Shakespeare "
            f"{fmt(shakespeare.get('train_chars'))} train / {fmt(shakespeare.get('val_chars'))} "
            f"val characters; OASST1 {fmt(oasst.get('messages'))} messages "
            f"({fmt(oasst.get('deleted'))} deleted, {fmt(oasst.get('rejected'))} rejected, "
            f"{fmt(oasst.get('orphans'))} orphans) in {fmt(oasst.get('trees'))} trees -> "
            f"{fmt(oasst.get('conversations'))} conversations "
            f"({fmt(oasst.get('train_conversations'))} train, "
            f"{fmt(oasst.get('val_conversations'))} val)."
        )
    else:
        parts.append(missing("preparation counts", "reports/prepare.json: `dvc repro prepare`"))
    data = inputs.data
    if data is not None:
        rows: list[tuple[Any, ...]] = []
        for corpus in ("pretrain", "sft"):
            for split in ("train", "val"):
                s = _get(data, corpus, split)
                if isinstance(s, dict):
                    rows.append(
                        (
                            f"{corpus}/{split}",
                            s.get("rows"),
                            s.get("tokens"),
                            s.get("assistant_tokens", "-"),
                            fmt_bytes(s.get("text_bytes")),
                            s.get("bytes_per_token"),
                            s.get("mean_len"),
                            s.get("max_len"),
                            fmt_bytes(s.get("parquet_bytes")),
                        )
                    )
        header: tuple[str, ...] = (
            "shards",
            "rows",
            "tokens",
            "assistant tokens",
            "text",
            "bytes/token",
        )
        header += ("mean tokens/row", "max", "parquet")
        parts.append("Token shards (`pretrain` = Tiny Shakespeare, `sft` = OASST1):\n\n")
        parts[-1] += table(header, rows)
        top = _get(data, "pretrain", "train", "top_tokens")
        if isinstance(top, list) and top:
            shown = ", ".join(
                f"`{t.get('text')!r}` {100 * t.get('share', 0):.1f}%" for t in top[:8]
            )
            parts.append(f"Most frequent tokens in Shakespeare train: {shown}.")
        if figure is not None:
            parts.append(_image("Tokens per row", figure, inputs.paths.out))
    else:
        parts.append(missing("token counts", "reports/data.json: `dvc repro shard`"))
    return "\n\n".join(parts)


def tokenizer_section(inputs: Inputs) -> str:
    from bardlet.tokenizer import Tokenizer

    if not inputs.paths.tokenizer.exists():
        return "## Tokenizer\n\n" + missing("tokenizer", "models/tokenizer: `dvc repro tokenizer`")
    tok = Tokenizer.load(inputs.paths.tokenizer)
    ratios = [
        f"{corpus}/{split} {fmt(_get(inputs.data, corpus, split, 'bytes_per_token'))}"
        for corpus in ("pretrain", "sft")
        for split in ("train", "val")
    ]
    lines = [
        "## Tokenizer",
        f"Byte-level BPE: {fmt(tok.vocab_size)} tokens = 256 bytes + {fmt(len(tok.merges))} "
        f"merges + {len(tok.special_tokens)} special tokens "
        f"({', '.join(f'`{name}`' for name in tok.special_tokens)}). "
        f"Hash `{tok.hash[:16]}`.",
        f"Bytes per token: {'; '.join(ratios)}.",
    ]
    for text in SAMPLE_TEXTS:
        ids = tok.encode(text)
        pieces = [tok.token_bytes(i).decode("utf-8", errors="backslashreplace") for i in ids]
        rate = len(text.encode("utf-8")) / max(len(ids), 1)
        lines.append(
            f"`{text}` -> {len(ids)} tokens ({rate:.2f} bytes/token):\n\n"
            + fenced(" ".join(repr(p) for p in pieces) + "\n" + " ".join(map(str, ids)))
        )
    return "\n\n".join(lines)


def model_section(inputs: Inputs) -> str:
    parts = ["## Model"]
    config = inputs.model_config
    if isinstance(config, dict):
        parts.append(table(("setting", "value"), [(k, fmt(v)) for k, v in config.items()]))
    else:
        parts.append(missing("model config", "models/chat/config.json: `dvc repro sft`"))
    shapes = inputs.shapes
    if shapes:
        grouped: dict[str, tuple[list[int], int]] = {}
        for name, shape in shapes.items():
            key = (
                ".".join(["blocks.*", *name.split(".")[2:]]) if name.startswith("blocks.") else name
            )
            count = grouped.get(key, (shape, 0))[1] + 1
            grouped[key] = (shape, count)
        rows = [
            (
                f"`{name}`",
                " x ".join(map(str, shape)),
                f"x{count}" if count > 1 else "",
                math.prod(shape) * count,
            )
            for name, (shape, count) in grouped.items()
        ]
        parts.append(
            f"{fmt(inputs.num_params)} parameters (from the safetensors header of "
            "models/chat; tied embeddings stored once):\n\n"
            + table(("tensor", "shape", "copies", "parameters"), rows)
        )
    elif inputs.num_params is not None:
        parts.append(f"{fmt(inputs.num_params)} parameters (shapes {NA}: no model.safetensors).")
    else:
        parts.append(missing("parameter count", "models/chat: `dvc repro sft`"))
    return "\n\n".join(parts)


def training_section(
    inputs: Inputs, figures: dict[str, Path | None], peak_flops: float | None
) -> str:
    parts = ["## Training"]
    config = inputs.model_config or {}
    rows: list[tuple[Any, ...]] = []
    for stage in ("pretrain", "sft"):
        summary = getattr(inputs, stage)
        if summary is None:
            rows.append((stage, NA, *["-"] * 8))
            continue
        speed = train_speed(summary, _get(inputs.params, stage), config, peak_flops)
        flops = speed.get("flops_per_s")
        mfu = speed.get("mfu")
        rows.append(
            (
                stage,
                summary.get("steps"),
                summary.get("step"),
                summary.get("val_loss"),
                summary.get("val_bpb"),
                fmt(summary.get("train_seconds"), 3),
                speed.get("tokens"),
                fmt(speed.get("tokens_per_s"), 3),
                f"{flops / 1e9:.2f}" if flops else "n/a",
                f"{100 * mfu:.1f}%" if mfu else ("n/a on CPU" if flops else "n/a"),
            )
        )
    header: tuple[str, ...] = (
        "stage",
        "steps",
        "kept step",
        "val loss",
        "val bpb",
        "seconds",
        "tokens",
    )
    header += ("tokens/s", "GFLOP/s", "MFU")
    if inputs.pretrain is None and inputs.sft is None:
        return "\n\n".join([*parts, missing("training results", "reports/pretrain.json, sft.json")])
    parts.append(table(header, rows))
    if peak_flops:
        mfu_note = f"MFU divides that by the given peak of {peak_flops:.3g} FLOP/s."
    else:
        mfu_note = (
            "MFU needs the hardware's peak FLOP/s, which a CPU does not publish: hence "
            "n/a on CPU (`bardlet report --peak-flops` sets one)."
        )
    parts.append(
        "Tokens = steps x batch_size x grad_accum x block_size (one process); seconds are "
        "wall-clock, evaluation pauses included. FLOPs per token = 6 N + 12 x layers x width x "
        f"context (weights forward and backward, plus attention). {mfu_note}"
    )
    for key, title in (("steps", "against steps"), ("time", "against wall-clock time")):
        figure = figures.get(key)
        if figure is not None:
            parts.append(
                _image(f"Validation loss and bits per byte {title}", figure, inputs.paths.out)
            )
        elif key == "time" and figures.get("steps") is not None:
            parts.append(missing("curves against time", "the curve CSVs have no `seconds` column"))
    if figures.get("steps") is None:
        parts.append(missing("curves", "reports/plots/*.csv: `dvc repro pretrain sft`"))
    return "\n\n".join(parts)


def evaluation_section(inputs: Inputs) -> str:
    parts = ["## Evaluation"]
    metrics = inputs.metrics
    if metrics is not None:
        rows = [
            (
                "base model",
                "Tiny Shakespeare val",
                _get(inputs.pretrain, "val_loss"),
                _exp(_get(inputs.pretrain, "val_loss")),
                _get(inputs.pretrain, "val_bpb"),
                "-",
                None,
            ),
        ]
        for name, label in (
            ("shakespeare", "Tiny Shakespeare val"),
            ("oasst", "OASST1 val (assistant)"),
        ):
            m = metrics.get(name) or {}
            rows.append(
                (
                    "chat model",
                    label,
                    m.get("loss"),
                    m.get("perplexity"),
                    m.get("bpb"),
                    m.get("rouge_l", "-"),
                    m.get("tokens"),
                )
            )
        parts.append(
            table(("model", "data", "loss", "perplexity", "bits/byte", "ROUGE-L", "tokens"), rows)
        )
    else:
        parts.append(missing("metrics", "reports/metrics.json: `dvc repro evaluate`"))
    if inputs.samples is None:
        parts.append(missing("samples", "reports/samples.md: `dvc repro evaluate`"))
        return "\n\n".join(parts)
    samples = parse_samples(inputs.samples)
    if not samples:
        parts.append("Samples (reports/samples.md):\n\n" + fenced(inputs.samples.strip()))
    for prompt, replies in samples:
        parts.append(f"### {prompt}")
        parts += [f"{label}:\n\n{fenced(reply or '(empty)')}" for label, reply in replies]
    return "\n\n".join(parts)


def export_section(inputs: Inputs, speeds: dict[str, Json | None] | None) -> str:
    parts = ["## Export"]
    export = inputs.export
    if export is not None:
        onnx, int8 = export.get("onnx_bytes"), export.get("int8_bytes")
        rows = [
            ("parity: max abs logit difference vs PyTorch", fmt(export.get("parity_max_abs_diff"))),
            ("model.onnx size", fmt_bytes(onnx)),
            ("model.int8.onnx size", fmt_bytes(int8)),
            ("fp32 bits per byte", fmt(export.get("fp32_bpb"))),
            ("int8 bits per byte", fmt(export.get("int8_bpb"))),
            (
                "int8 delta",
                f"{export['int8_bpb_delta_percent']:+.3f}%"
                if isinstance(export.get("int8_bpb_delta_percent"), int | float)
                else "n/a",
            ),
        ]
        if isinstance(onnx, int | float) and isinstance(int8, int | float) and int8:
            rows.insert(3, ("size ratio fp32 / int8", f"{onnx / int8:.2f}x"))
        parts.append(table(("what", "value"), rows))
    else:
        parts.append(missing("export results", "reports/export.json: `dvc repro export`"))
    if speeds is None:
        parts.append("ONNX speed: not measured (`--no-speed`).")
    elif not any(speeds.values()):
        parts.append(missing("ONNX speed", "no models/onnx/model.onnx: `dvc repro export`"))
    else:
        speed_rows = [
            (name, s["tokens"], fmt(s["seconds"], 3), fmt(s["tokens_per_s"], 3))
            for name, s in speeds.items()
            if s
        ]
        parts.append(
            f"ONNX Runtime, greedy, prompt `{SPEED_PROMPT}`, batch 1, KV cache, after a warm-up "
            "(median of 3 runs; it varies with the machine's load):\n\n"
            + table(("model", "new tokens", "seconds", "tokens/s"), speed_rows)
        )
    return "\n\n".join(parts)


def environment_section(rows: list[tuple[str, str]]) -> str:
    return "## Environment\n\n" + table(("what", "value"), rows)


def _exp(loss: Any) -> float | None:
    return math.exp(loss) if isinstance(loss, int | float) else None


def _image(title: str, figure: Path, out: Path) -> str:
    return f"![{title}]({Path(os.path.relpath(figure, out.parent)).as_posix()})"


def _safe(title: str, build: Callable[[], str]) -> str:
    """A section, or a note that it could not be made: one bad file never sinks the report."""
    try:
        return build()
    except Exception as error:  # noqa: BLE001 (the report shows whatever it can)
        return f"## {title}\n\n_{NA}: {type(error).__name__}: {error}._"


# ---------------------------------------------------------------------------- the report


def build_figures(inputs: Inputs) -> dict[str, Path | None]:
    """Draw every figure there is data for; remove stale ones that no longer have any."""
    inputs.paths.figures.mkdir(parents=True, exist_ok=True)
    curves = {name: rows for name, rows in inputs.curves.items() if rows}
    folder = inputs.paths.figures
    figures = {
        "steps": plot_curves(curves, "step", folder / "curves_steps.png", "optimizer step"),
        "time": plot_curves(curves, "seconds", folder / "curves_time.png", "wall-clock seconds"),
        "lengths": plot_lengths(inputs.data, folder / "lengths.png") if inputs.data else None,
    }
    for name, stale in (("steps", "curves_steps"), ("time", "curves_time"), ("lengths", "lengths")):
        if figures[name] is None:
            (folder / f"{stale}.png").unlink(missing_ok=True)
    return figures


def render(
    inputs: Inputs,
    figures: dict[str, Path | None],
    speeds: dict[str, Json | None] | None,
    env: list[tuple[str, str]],
    peak_flops: float | None = None,
) -> str:
    """The report as Markdown."""
    sections = [
        ("Summary", lambda: summary_section(inputs, (speeds or {}).get("fp32"))),
        ("Data", lambda: data_section(inputs, figures.get("lengths"))),
        ("Tokenizer", lambda: tokenizer_section(inputs)),
        ("Model", lambda: model_section(inputs)),
        ("Training", lambda: training_section(inputs, figures, peak_flops)),
        ("Evaluation", lambda: evaluation_section(inputs)),
        ("Export", lambda: export_section(inputs, speeds)),
        ("Environment", lambda: environment_section(env)),
    ]
    intro = (
        "# bardlet report card\n\n"
        "What the pipeline made and how well it does, from the stages' outputs "
        "(`bardlet report` or `dvc repro report` writes this page)."
    )
    return "\n\n".join([intro, *(_safe(title, build) for title, build in sections)]) + "\n"


def measure_speeds(onnx_model: Path) -> dict[str, Json | None]:
    """fp32 and (if exported) int8 ONNX generation speed; errors count as not available."""
    speeds: dict[str, Json | None] = {}
    for name, path in (("fp32", onnx_model), ("int8", onnx_model.with_suffix(".int8.onnx"))):
        try:
            speeds[name] = onnx_speed(path)
        except Exception:  # noqa: BLE001 (a broken model file is reported, not raised)
            speeds[name] = None
    return speeds


def write_report(
    paths: ReportPaths, measure_speed: bool = True, peak_flops: float | None = None
) -> list[Path]:
    """Write the report and its figures; returns the files written (report first)."""
    inputs = Inputs.read(paths)
    figures = build_figures(inputs)
    speeds = measure_speeds(paths.onnx_model) if measure_speed else None
    root = paths.params.parent
    text = render(inputs, figures, speeds, environment(root, inputs.params), peak_flops)
    paths.out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(paths.out, text.encode("utf-8"))
    return [paths.out, *(f for f in figures.values() if f is not None)]


def run_id(paths: ReportPaths) -> str | None:
    """The MLflow run that trained the chat model (models/chat/config.json), if known."""
    value = _get(read_json(paths.chat_model / "config.json"), "run_id")
    return value if isinstance(value, str) and value else None


def log_to_mlflow(files: Sequence[Path], run: str | None) -> str:
    """Attach the report (under `report/`) to run `run`, or to a new run named `report`."""
    from bardlet import tracking

    if run is not None:
        try:
            tracking.get_run(run)
        except Exception:  # noqa: BLE001 (not in this store: log to a run of its own)
            run = None
    with tracking.run("report", run_id=run) as active:
        for path in files:
            tracking.log_artifact(path, "report" if path.suffix == ".md" else "report/figures")
    return active


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def make_report(
    paths: ReportPaths,
    measure_speed: bool = True,
    peak_flops: float | None = None,
    mlflow: bool = False,
) -> list[Path]:
    """write_report, then (mlflow=True) log the files to the chat model's MLflow run."""
    files = write_report(paths, measure_speed, peak_flops)
    if mlflow:
        log_to_mlflow(files, run_id(paths))
    return files
