"""The report card: two Markdown pages with PNG figures, from what the stages wrote.

- reports/report.md + figures/: what the pipeline made and how well it does. Committed: no
  clock, machine, git commit or version goes in, so every machine writes the same bytes.
- reports/local/report.md + local/figures/: this machine's run (training and ONNX speed,
  curves against wall-clock time, environment). Git-ignored.

Nothing is trained or evaluated again (the one measurement: ONNX tokens per second), nothing
needs torch, and a missing or broken input blanks only its own section ("not available").
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import json
import math
import os
import platform
import re
import shutil
import statistics
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bardlet.defaults import CHAT_MODEL, ONNX_MODEL, PLOTS, REPORTS, TOKENIZER
from bardlet.files import output, sha256_json, write_bytes_atomic
from bardlet.markdown import fenced, fmt, fmt_bytes, table

NA = "not available"
STAGES = ("pretrain", "sft")
READABLE = {"tinyshakespeare": "Tiny Shakespeare", "oasst1": "OASST1"}  # the built-in sources
SAMPLE_TEXTS = ("To be, or not to be, that is the question:", "Hello! How can I help you today?")
SPEED_PROMPT, SPEED_TOKENS = "ROMEO:", 64
PACKAGES: tuple[str, ...] = ("torch", "onnxruntime", "onnx", "numpy", "mlflow", "dvc", "prefect")
PACKAGES += ("polars", "pyarrow", "matplotlib")
FIGURE_SIZE, FIGURE_DPI = (8.0, 4.5), 100  # 800 x 450 pixels

Json = dict[str, Any]
Rows = list[dict[str, float]]
Parts = list[str]  # a section's paragraphs; empty ones are left out


@dataclass(frozen=True)
class ReportPaths:
    """Every file the report reads, and where it writes."""

    reports: Path  # prepare.json, data.json, ...; local/: this machine's timings and curves
    plots: Path  # pretrain.csv, sft.csv: curves against steps
    tokenizer: Path  # bpe.json
    chat_model: Path  # config.json, model.safetensors
    onnx_model: Path  # model.onnx (model.int8.onnx beside it, if exported)
    params: Path  # params.yaml
    out: Path  # report.md: the reproducible page
    figures: Path  # its *.png
    local: Path  # this machine's page: report.md and figures/*.png

    @classmethod
    def under(cls, root: Path, out: Path | None = None) -> ReportPaths:
        """The pipeline's layout below a project folder; figures/ and local/ go beside `out`."""
        reports = root / REPORTS
        out = out if out is not None else reports / "report.md"
        return cls(
            reports=reports,
            plots=root / PLOTS,
            tokenizer=root / TOKENIZER,
            chat_model=root / CHAT_MODEL,
            onnx_model=root / ONNX_MODEL,
            params=root / "params.yaml",
            out=out,
            figures=out.parent / "figures",
            local=out.parent / "local",
        )


# ---------------------------------------------------------------------------- reading, formatting


def read_json(path: Path, parse: Callable[[str], Any] = json.loads) -> Json | None:
    """The object in a JSON (or, with yaml.safe_load, YAML) file; None if there is none."""
    try:
        data = parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def read_curve(path: Path) -> Rows | None:
    """A curve CSV (step, val_loss, val_bpb, ... or step, seconds, val_bpb) as rows of floats."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [{k: float(v) for k, v in row.items() if k and v} for row in csv.DictReader(f)]
    except (OSError, ValueError):
        return None
    return rows or None


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
    """reports/samples.md (`## prompt`, `**label:**` reply, ...) -> [(prompt, [(label, reply)])]."""
    samples = []
    for block in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        prompt, _, body = block.partition("\n")
        pieces = re.split(r"^(\*\*.*)$", body, flags=re.MULTILINE)[1:]  # label, reply, ...
        labels = [p.replace("**", "").rstrip(":").strip() for p in pieces[::2]]
        replies = [reply.strip() for reply in pieces[1::2]]
        samples.append((prompt.strip(), list(zip(labels, replies, strict=True))))
    return samples


class Inputs:
    """What the pages show, read once (None: missing or unreadable), and figures, speeds."""

    def __init__(self, paths: ReportPaths, peak_flops: float | None = None) -> None:
        local, chat = paths.reports / "local", paths.chat_model
        self.paths, self.peak_flops = paths, peak_flops
        self.speeds: dict[str, Json | None] | None = None  # None: not measured (--no-speed)
        self.figures: dict[str, Path | None] = {}
        names = ("prepare", "data", *STAGES, "metrics", "export")
        self.results = {name: read_json(paths.reports / f"{name}.json") for name in names}
        self.timings = {s: read_json(local / f"{s}.json") for s in STAGES}  # this machine's
        self.curves = {s: read_curve(paths.plots / f"{s}.csv") for s in STAGES}  # against steps
        self.time_curves = {s: read_curve(local / f"{s}.csv") for s in STAGES}  # and seconds
        samples = paths.reports / "samples.md"
        self.samples = samples.read_text(encoding="utf-8") if samples.is_file() else None
        self.params = read_json(paths.params, yaml.safe_load)
        self.data = data_names(self.params)  # {"pretrain": "Tiny Shakespeare", "sft": "OASST1"}
        config = _get(read_json(chat / "config.json"), "model")  # else what params.yaml says
        self.model = config if isinstance(config, dict) else _get(self.params, "model") or {}
        self.shapes = safetensors_shapes(chat / "model.safetensors")
        count = self.get("pretrain", "params") or self.get("sft", "params")  # if no shapes
        self.num_params = sum(math.prod(s) for s in self.shapes.values()) if self.shapes else count
        splits = [(f"{c}/{s}", self.get("data", c, s)) for c in STAGES for s in ("train", "val")]
        self.splits: dict[str, Json] = {k: v for k, v in splits if isinstance(v, dict)}

    def get(self, *keys: str) -> Any:  # get("metrics", "oasst", "bpb"): the value, or None
        return _get(self.results, *keys)


def data_names(params: Json | None) -> dict[str, str]:
    """What each training stage learned from, for labels: "Tiny Shakespeare" and "OASST1" by
    default, else the sources' names from params.yaml's prepare section."""
    from pydantic import ValidationError

    from bardlet.config import PrepareParams

    try:
        prepare = PrepareParams.model_validate(_get(params, "prepare"))
    except ValidationError:
        return {"pretrain": "Tiny Shakespeare", "sft": "OASST1"}

    def names(sources: list) -> str:
        return " + ".join(READABLE.get(s, s) if isinstance(s, str) else s.label for s in sources)

    return {"pretrain": names(prepare.corpus), "sft": names(prepare.chats)}


def missing(what: str, hint: str) -> str:
    """The one way to say an input is not there: what is missing, and what makes it."""
    return f"_{NA}: {what} ({hint})._"


def link(title: str, target: Path, page: Path, image: bool = True) -> str:
    """A Markdown image (or link) to `target`, relative to `page` so the folder can move."""
    href = Path(os.path.relpath(target, page.parent)).as_posix()
    return f"{'!' if image else ''}[{title}]({href})"


def section(title: str) -> Callable[[Callable[[Inputs], Parts]], Callable[[Inputs], str]]:
    """`## title` and the function's paragraphs, or why it failed: one bad file sinks no page."""

    def decorate(build: Callable[[Inputs], Parts]) -> Callable[[Inputs], str]:
        def render(r: Inputs) -> str:
            try:
                parts = build(r)
            except Exception as error:  # noqa: BLE001 (the report shows whatever it can)
                parts = [f"_{NA}: {type(error).__name__}: {error}._"]
            return "\n\n".join([f"## {title}", *filter(None, parts)])

        return render

    return decorate


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _percent(value: Any) -> str:
    return f"{value:+.3f}%" if isinstance(value, int | float) else "n/a"


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


# ---------------------------------------------------------------------------- figures, measuring


def save_figure(figure: Any, path: Path) -> Path | None:
    """PNG without the Software tag (the matplotlib version); None (no data) deletes it."""
    if figure is None:
        path.unlink(missing_ok=True)
        return None
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI, metadata={"Software": None})
    write_bytes_atomic(path, buffer.getvalue())
    return path


def _figure(columns: int) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)  # no pyplot: no global state, no GUI backend
    return figure, [figure.add_subplot(1, columns, i + 1) for i in range(columns)]


def plot_curves(curves: dict[str, Rows | None], x: str, labels: dict[str, str]) -> Any:
    """Validation loss (training loss dashed) and bits per byte against `x`: one line per
    stage, one panel per quantity the CSVs have. None if no curve has the `x` column."""
    usable = {name: rows for name, rows in curves.items() if rows and all(x in r for r in rows)}
    panels = {"val_loss": "loss (nats per token)", "val_bpb": "bits per byte"}
    panels = {k: t for k, t in panels.items() if any(k in r for v in usable.values() for r in v)}
    if not panels:
        return None
    figure, axes = _figure(len(panels))
    for axis, (key, title) in zip(axes, panels.items(), strict=True):
        for (name, rows), color in zip(usable.items(), ("tab:blue", "tab:orange"), strict=False):
            for column in (key, "train_loss") if key == "val_loss" else (key,):
                kind, style = ("val", "o-") if column == key else ("train", "--")
                if points := [(r[x], r[column]) for r in rows if column in r]:
                    label = f"{name} ({labels[name]}) {kind}"
                    axis.plot(*zip(*points, strict=True), style, color=color, label=label)
        axis.set(title=title, xlabel={"step": "optimizer step"}.get(x, f"wall-clock {x}"))
        axis.grid(True, alpha=0.3)
        axis.legend()
    return figure


def plot_lengths(data: Json | None, labels: dict[str, str]) -> Any:
    """Histograms of tokens per row (document or conversation) of each training split."""
    splits = {c: _get(data, c, "train", "length_histogram") for c in STAGES}
    splits = {corpus: bins for corpus, bins in splits.items() if isinstance(bins, list) and bins}
    if not splits:
        return None
    figure, axes = _figure(len(splits))
    for axis, (corpus, bins) in zip(axes, splits.items(), strict=True):
        used = [i for i, b in enumerate(bins) if b.get("rows")] or [0]
        shown = bins[used[0] : used[-1] + 1]  # without the empty bins at both ends
        axis.bar(range(len(shown)), [b["rows"] for b in shown], color="tab:blue")
        axis.set_xticks(range(len(shown)), [f"<{b['hi']}" for b in shown], rotation=45)
        axis.set(title=f"{corpus} ({labels[corpus]}) train: tokens per row", ylabel="rows")
        axis.grid(True, axis="y", alpha=0.3)
    return figure


def onnx_speed(model_path: Path, new_tokens: int = SPEED_TOKENS, repeats: int = 3) -> Json | None:
    """Greedy generation speed: the median of `repeats` timings of `new_tokens` tokens after a
    warm-up (well under a second on a laptop CPU). None without a (working) model."""
    from bardlet.runtime.sampling import Sampling
    from bardlet.runtime.session import OnnxLM

    try:
        lm, greedy = OnnxLM(model_path), Sampling(temperature=0.0)
        prompt = [lm.tokenizer.special_id("<|bos|>"), *lm.tokenizer.encode(SPEED_PROMPT)]
        list(lm.stream(prompt, 8, greedy))  # warm-up: the first runs allocate
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            tokens = list(lm.stream(prompt, new_tokens, greedy))
            timings.append(time.perf_counter() - started)
    except Exception:  # noqa: BLE001 (no model, or a broken one: reported, not raised)
        return None
    seconds = statistics.median(timings)
    return {"tokens": len(tokens), "seconds": seconds, "tokens_per_s": len(tokens) / seconds}


def train_speed(summary: Json | None, timing: Json | None, model: Json, peak: float | None) -> Json:
    """A stage's tokens (reports/<stage>.json), seconds and tokens/s (reports/local/<stage>.json)
    and the model FLOPs/s that makes. FLOPs per token = 6 N + 12 L C T (weights forward and
    backward, plus attention over a context of T; PaLM's appendix B, as nanoGPT's MFU). MFU
    divides that by the hardware's `peak` FLOP/s; None without one (CPUs publish none)."""
    tokens, n = _get(summary, "tokens"), _get(summary, "params")
    seconds, rate = _get(timing, "train_seconds"), _get(timing, "tokens_per_second")
    if not _positive(rate):
        rate = tokens / seconds if _positive(tokens) and _positive(seconds) else None
    result: Json = {"tokens": tokens, "train_seconds": seconds, "tokens_per_s": rate}
    if rate is None or not _positive(n):
        return result
    layers, width, block = (model.get(k) for k in ("n_layer", "n_embd", "block_size"))
    per_token = 6 * n + (12 * layers * width * block if layers and width and block else 0)
    result.update(flops_per_token=per_token, flops_per_s=per_token * rate)
    result["mfu"] = per_token * rate / peak if peak else None
    return result


# ---------------------------------------------------------------------------- the report card


@section("Summary")
def summary_section(r: Inputs) -> Parts:
    text, chats = r.data["pretrain"], r.data["sft"]
    rows = [
        ("parameters", r.num_params),
        (f"base model, {text} val bits per byte", r.get("pretrain", "val_bpb")),
        (f"chat model, {text} val bits per byte", r.get("metrics", "shakespeare", "bpb")),
        (f"chat model, {chats} val bits per byte", r.get("metrics", "oasst", "bpb")),
        (f"chat model, {chats} ROUGE-L", r.get("metrics", "oasst", "rouge_l")),
    ]
    return [table(("what", "value"), rows)]


@section("Data")
def data_section(r: Inputs) -> Parts:
    sources, parts = _get(r.params, "download", "sources"), Parts()
    if isinstance(sources, list) and sources:
        rows = [(s.get("name", "?"), s.get("path", "?"), fmt_bytes(s.get("size"))) for s in sources]
        listed = table(("name", "file", "size"), rows)
        parts.append(f"Sources (pinned, sha256 checked):\n\n{listed}")
        if _get(r.params, "download", "oasst1_full"):
            parts.append("Plus the full OASST1 release (`download.oasst1_full: true`).")
    else:
        parts.append(missing("sources", "params.yaml has no download.sources"))
    if (p := r.results["prepare"]) is None:
        parts.append(missing("preparation counts", "reports/prepare.json: `dvc repro prepare`"))
    else:
        parts.append(f"Prepared (reports/prepare.json):\n\n{prepared_table(p)}")
    if r.results["data"] is None:
        return [*parts, missing("token counts", "reports/data.json: `dvc repro shard`")]
    cols = "rows tokens assistant_tokens text_bytes bytes_per_token mean_len max_len parquet_bytes"
    header = "shards|rows|tokens|assistant tokens|text|bytes/token|mean tokens/row|max|parquet"
    shard_rows: list[list[Any]] = [[name] for name in r.splits]
    for row, s in zip(shard_rows, r.splits.values(), strict=True):
        row += [fmt_bytes(s.get(k)) if k.endswith("bytes") else s.get(k, "-") for k in cols.split()]
    shards = table(header.split("|"), shard_rows)
    what = f"`pretrain` = {r.data['pretrain']}, `sft` = {r.data['sft']}"
    parts.append(f"Token shards ({what}):\n\n{shards}")
    if top := r.get("data", "pretrain", "train", "top_tokens"):
        shown = ", ".join(f"`{t.get('text')!r}` {100 * t.get('share', 0):.1f}%" for t in top[:8])
        parts.append(f"Most frequent tokens in {r.data['pretrain']} train: {shown}.")
    if figure := r.figures.get("lengths"):
        parts.append(link("Tokens per row", figure, r.paths.out))
    return parts


def prepared_table(prepared: Json) -> str:
    """One row per source: what it is for, its train and val sizes, what was left out."""
    rows = []
    for name, c in (_get(prepared, "corpus") or {}).items():
        split = [fmt_bytes(_get(c, f"{s}_bytes")) for s in ("train", "val")]
        rows.append((name, "pretrain", *split, f"{fmt(_get(c, 'files'))} file(s)"))
    for name, c in (_get(prepared, "chats") or {}).items():
        split = [f"{fmt(_get(c, f'{s}_conversations'))} conversations" for s in ("train", "val")]
        notes = [f"{fmt(_get(c, 'files'))} file(s)"] if _get(c, "files") else []
        if _get(c, "trees") is not None:  # OASST1: what happened to its messages
            counts = [fmt(_get(c, k)) for k in ("messages", "deleted", "rejected", "orphans")]
            notes.append("{} messages ({} deleted, {} rejected, {} orphans)".format(*counts))
            notes[-1] += f" in {fmt(_get(c, 'trees'))} trees"
        dropped = _get(c, "dropped") or {}
        notes.append("left out: " + (", ".join(f"{k} {v}" for k, v in dropped.items()) or "none"))
        rows.append((name, "sft", *split, "; ".join(notes)))
    for name, c in (_get(prepared, "prefs") or {}).items():  # preference pairs (dpo stage)
        pairs = [f"{fmt(_get(c, f'{s}_pairs'))} pairs" for s in ("train", "val")]
        rows.append((name, "dpo", *pairs, ""))
    return table(("source", "for", "train", "val", "notes"), rows)


@section("Tokenizer")
def tokenizer_section(r: Inputs) -> Parts:
    from bardlet.tokenizer import Tokenizer, load_tokenizer

    if not r.paths.tokenizer.parent.is_dir():  # bpe.json, or a pretrained tokenizer.json
        return [missing("tokenizer", "models/tokenizer: `dvc repro tokenizer`")]
    tok = load_tokenizer(r.paths.tokenizer.parent)
    ratios = [f"{name} {fmt(s.get('bytes_per_token'))}" for name, s in r.splits.items()]
    count = f"{len(tok.special_tokens)} special tokens ({', '.join(f'`{t}`' for t in tok.special_tokens)})"
    what = f"The pretrained model's tokenizer.json: {fmt(tok.vocab_size)} tokens, {count}"
    if isinstance(tok, Tokenizer):
        what = f"Byte-level BPE: {fmt(tok.vocab_size)} tokens = 256 bytes + {fmt(len(tok.merges))} merges + {count}"
    parts = [f"{what}. Hash `{tok.hash[:16]}`.\n\nBytes per token: {'; '.join(ratios) or NA}."]
    for text in SAMPLE_TEXTS:  # how a line splits, piece by piece, with the ids
        ids = tok.encode(text)
        pieces = [tok.token_bytes(i).decode("utf-8", errors="backslashreplace") for i in ids]
        rate = len(text.encode("utf-8")) / max(len(ids), 1)
        shown = " ".join(map(repr, pieces)) + "\n" + " ".join(map(str, ids))
        parts.append(f"`{text}` -> {len(ids)} tokens ({rate:.2f} bytes/token):\n\n{fenced(shown)}")
    return parts


@section("Model")
def model_section(r: Inputs) -> Parts:
    n, parts = r.num_params, [missing("model config", "models/chat/config.json: `dvc repro sft`")]
    if r.model:
        parts = [table(("setting", "value"), [(k, fmt(v)) for k, v in r.model.items()])]
    if r.shapes:  # blocks repeat: one row per tensor of a block, with how many blocks have it
        grouped: dict[str, tuple[list[int], int]] = {}
        for name, shape in r.shapes.items():
            key = re.sub(r"^blocks\.\d+\.", "blocks.*.", name)
            grouped[key] = (shape, grouped.get(key, (shape, 0))[1] + 1)
        rows = [
            (f"`{k}`", " x ".join(map(str, shape)), f"x{c}" if c > 1 else "", math.prod(shape) * c)
            for k, (shape, c) in grouped.items()
        ]
        parts.append(
            f"{fmt(n)} parameters (from the safetensors header of models/chat; tied embeddings "
            f"stored once):\n\n{table(('tensor', 'shape', 'copies', 'parameters'), rows)}"
        )
    elif n is not None:
        parts.append(f"{fmt(n)} parameters (shapes {NA}: no model.safetensors).")
    else:
        parts.append(missing("parameter count", "models/chat: `dvc repro sft`"))
    return parts


@section("Training")
def training_section(r: Inputs) -> Parts:
    if not any(r.results[stage] for stage in STAGES):
        return [missing("training results", "reports/pretrain.json, sft.json")]
    keys = ("steps", "step", "val_loss", "val_bpb", "tokens")
    rows = [(stage, *(r.get(stage, k) for k in keys)) for stage in STAGES]
    figure = r.figures.get("steps")
    return [
        table(("stage", "steps", "kept step", "val loss", "val bpb", "tokens"), rows),
        "Tokens = steps x batch_size x grad_accum x block_size x processes. The kept step is "
        "the one whose weights the stage saved; val loss and bpb are its numbers.",
        link("Validation loss and bits per byte against steps", figure, r.paths.out)
        if figure
        else missing("curves", "reports/plots/*.csv: `dvc repro pretrain sft`"),
    ]


@section("Evaluation")
def evaluation_section(r: Inputs) -> Parts:
    if (metrics := r.results["metrics"]) is None:
        parts: Parts = [missing("metrics", "reports/metrics.json: `dvc repro evaluate`")]
    else:
        loss = r.get("pretrain", "val_loss")
        base = {"loss": loss, "bpb": r.get("pretrain", "val_bpb")}
        base["perplexity"] = math.exp(loss) if isinstance(loss, int | float) else None
        text, chats = f"{r.data['pretrain']} val", f"{r.data['sft']} val (assistant)"
        models = [("base model", text, base)]
        models.append(("chat model", text, metrics.get("shakespeare") or {}))
        models.append(("chat model", chats, metrics.get("oasst") or {}))
        keys = ("loss", "perplexity", "bpb", "rouge_l", "tokens")
        rows = [(a, b, *(({"rouge_l": "-"} | m).get(k) for k in keys)) for a, b, m in models]
        header = ("model", "data", "loss", "perplexity", "bits/byte", "ROUGE-L", "tokens")
        parts = [table(header, rows)]
    samples = parse_samples(r.samples or "")
    if r.samples is None:
        parts.append(missing("samples", "reports/samples.md: `dvc repro evaluate`"))
    elif not samples:
        parts.append("Samples (reports/samples.md):\n\n" + fenced(r.samples.strip()))
    for prompt, replies in samples:
        parts.append(f"### {prompt}")
        parts += [f"{label}:\n\n{fenced(reply or '(empty)')}" for label, reply in replies]
    return parts


@section("Export")
def export_section(r: Inputs) -> Parts:
    if (export := r.results["export"]) is None:
        return [missing("export results", "reports/export.json: `dvc repro export`")]
    onnx, int8 = export.get("onnx_bytes"), export.get("int8_bytes")
    tolerance, int8_delta = export.get("parity_tolerance"), export.get("int8_max_bpb_delta_percent")
    rows: list[tuple[str, Any]] = [("model.onnx size", fmt_bytes(onnx))]
    rows += [("model.int8.onnx size", fmt_bytes(int8))]
    rows.append(("parity checked: max abs logit difference vs PyTorch below", tolerance))
    rows.append(("int8 checked: bits per byte within, of fp32", _percent(int8_delta)))
    if isinstance(onnx, int | float) and isinstance(int8, int | float) and int8:
        rows.insert(2, ("size ratio fp32 / int8", f"{onnx / int8:.2f}x"))
    return [
        table(("what", "value"), rows),
        "What ONNX Runtime measured (it picks kernels by the processor, so the exact numbers "
        "differ per machine) is on this machine's page.",
    ]


# ---------------------------------------------------------------------------- this machine's page


@section("Training speed")
def speed_section(r: Inputs) -> Parts:
    if not any(r.timings.values()):
        return [missing("timings", "reports/local/*.json: `dvc repro pretrain sft` here")]
    rows = []
    for stage in STAGES:
        s = train_speed(r.results[stage], r.timings[stage], r.model, r.peak_flops)
        flops, mfu = s.get("flops_per_s"), s.get("mfu")
        mfu_text = f"{100 * mfu:.1f}%" if mfu else ("n/a on CPU" if flops else "n/a")
        gflops = f"{flops / 1e9:.2f}" if flops else "n/a"
        rate = fmt(s["tokens_per_s"], 3)
        rows.append((stage, fmt(s["train_seconds"], 3), s["tokens"], rate, gflops, mfu_text))
    if r.peak_flops:
        mfu_note = f"MFU divides that by the given peak of {r.peak_flops:.3g} FLOP/s."
    else:
        mfu_note = "MFU needs the hardware's peak FLOP/s, which a CPU does not publish: hence "
        mfu_note += "n/a on CPU (`bardlet report --peak-flops` sets one)."
    figure, page = r.figures.get("time"), r.paths.local / "report.md"
    return [
        table(("stage", "seconds", "tokens", "tokens/s", "GFLOP/s", "MFU"), rows),
        "Seconds are wall-clock, evaluation pauses included. FLOPs per token = 6 N + 12 x "
        f"layers x width x context (weights forward and backward, plus attention). {mfu_note}",
        link("Validation bits per byte against wall-clock time", figure, page)
        if figure
        else missing("curves against time", "reports/local/*.csv with a `seconds` column"),
    ]


@section("ONNX checks, as measured here")
def onnx_checks_section(r: Inputs) -> Parts:
    checks = read_json(r.paths.reports / "local" / "export.json")
    if checks is None:
        return [missing("ONNX checks", "reports/local/export.json: `dvc repro export` here")]
    rows = [
        ("parity: max abs logit difference vs PyTorch", checks.get("parity_max_abs_diff")),
        (f"fp32 bits per byte ({r.data['pretrain']} val)", checks.get("fp32_bpb")),
        ("int8 bits per byte", checks.get("int8_bpb")),
        ("int8 delta", _percent(checks.get("int8_bpb_delta_percent"))),
    ]
    return [table(("what", "value"), rows)]


@section("ONNX generation speed")
def onnx_speed_section(r: Inputs) -> Parts:
    if r.speeds is None:
        return ["Not measured (`--no-speed`)."]
    if not any(r.speeds.values()):
        return [missing("ONNX speed", "no models/onnx/model.onnx: `dvc repro export`")]
    rows = [(k, s["tokens"], s["seconds"], s["tokens_per_s"]) for k, s in r.speeds.items() if s]
    return [
        f"ONNX Runtime, greedy, prompt `{SPEED_PROMPT}`, batch 1, KV cache, after a warm-up "
        "(median of 3 runs; it varies with the machine's load):\n\n"
        + table(("model", "new tokens", "seconds", "tokens/s"), rows)
    ]


@section("Environment")
def environment_section(r: Inputs) -> Parts:
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text(encoding="utf-8") if cpuinfo.is_file() else ""
    cpus = re.findall(r"^(?:model name|hardware|cpu model)\s*:\s*(.+)$", text, re.M | re.I)
    affinity = getattr(os, "sched_getaffinity", None)
    usable = len(affinity(0)) if affinity else os.cpu_count()
    smi, root = shutil.which("nvidia-smi"), r.paths.params.parent  # nvidia-smi: no torch
    gpu = output(smi, "--query-gpu=name,memory.total", "--format=csv,noheader") if smi else None
    dists = importlib.metadata.distributions()
    versions = {(d.metadata["Name"] or "").lower(): d.version for d in dists}
    rows = [
        ("python", platform.python_version()),
        ("platform", platform.platform()),
        ("CPU", cpus[0] if cpus else platform.processor() or platform.machine() or "unknown"),
        ("CPU cores", f"{os.cpu_count()} ({usable} usable by this process)"),
        ("GPU", "; ".join(gpu.splitlines()) if gpu else "none found" if smi else "no nvidia-smi"),
        *((package, versions.get(package, "not installed")) for package in PACKAGES),
        ("git commit", output("git", "rev-parse", "HEAD", cwd=root) or "unknown"),
        ("params hash", NA if r.params is None else sha256_json(r.params)),
    ]
    return [table(("what", "value"), rows)]


# ---------------------------------------------------------------------------- both pages

CARD = """# bardlet report card

What the pipeline made and how well it does, from the stages' outputs (`bardlet report` or \
`dvc repro report` writes this page); nothing here depends on the clock, the machine or the \
installed versions. Speed and environment of the machine that made this run: {} (not \
committed: it differs per machine)."""
CARD_SECTIONS = [summary_section, data_section, tokenizer_section, model_section]
CARD_SECTIONS += [training_section, evaluation_section, export_section]
LOCAL_SECTIONS = (speed_section, onnx_checks_section, onnx_speed_section, environment_section)
LOCAL = """# This machine's run

This machine's speed and environment (git-ignored: they differ per machine); the rest is on {}."""


def write_report(
    paths: ReportPaths, measure_speed: bool = True, peak_flops: float | None = None
) -> list[Path]:
    """Write both pages; returns the files: card, its figures, local page, its figures."""
    r, onnx, page = Inputs(paths, peak_flops), paths.onnx_model, paths.local / "report.md"
    if measure_speed:
        r.speeds = {"fp32": onnx_speed(onnx), "int8": onnx_speed(onnx.with_suffix(".int8.onnx"))}
    card, local = paths.figures, paths.local / "figures"
    for key, figure, path in [
        ("steps", plot_curves(r.curves, "step", r.data), card / "curves_steps.png"),
        ("lengths", plot_lengths(r.results["data"], r.data), card / "lengths.png"),
        ("time", plot_curves(r.time_curves, "seconds", r.data), local / "curves_time.png"),
        ("moved", None, card / "curves_time.png"),  # to local/: it is not reproducible
    ]:
        r.figures[key] = save_figure(figure, path)
    for path, intro, sections in [
        (paths.out, CARD.format(link("local/report.md", page, paths.out, False)), CARD_SECTIONS),
        (page, LOCAL.format(link("the report card", paths.out, page, False)), LOCAL_SECTIONS),
    ]:
        text = "\n\n".join([intro, *(build(r) for build in sections)]) + "\n"
        write_bytes_atomic(path, text.encode("utf-8"))
    files = [paths.out, r.figures["steps"], r.figures["lengths"], page, r.figures["time"]]
    return [f for f in files if f is not None]


def log_to_mlflow(paths: ReportPaths, files: Sequence[Path]) -> str:
    """Attach the card (under `report/`) and this machine's page (`report/local/`) to the run
    that trained the chat model (models/chat/config.json), else to a new run `report`."""
    from bardlet import tracking

    run = _get(read_json(paths.chat_model / "mlflow.json"), "run_id")  # the sft run
    try:
        tracking.get_run(run)  # fails without a run_id, or if this store does not have it
    except Exception:  # noqa: BLE001 (then the report gets a run of its own)
        run = None
    with tracking.run("report", run_id=run) as active:
        for path in files:
            folder = "report/local" if path.is_relative_to(paths.local) else "report"
            tracking.log_artifact(path, folder if path.suffix == ".md" else f"{folder}/figures")
    return active


def make_report(
    paths: ReportPaths,
    measure_speed: bool = True,
    peak_flops: float | None = None,
    mlflow: bool = False,
) -> list[Path]:
    """write_report, then (mlflow=True) log_to_mlflow."""
    files = write_report(paths, measure_speed, peak_flops)
    if mlflow:
        log_to_mlflow(paths, files)
    return files
