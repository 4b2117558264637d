"""Benchmark the data stages: prepare + shard on the mirror data, and loading a split for training.

    PYTHONPATH=. python bench/data.py --json bench/results/data.json   # medians of 3, ~1-2 min
    PYTHONPATH=. python bench/data.py --quick                          # one run each, < 1 min

Data: Tiny Shakespeare and the OASST1 English validation slice from $BARDLET_DATA_MIRROR or
../shared/data. It calls the same library functions as `stages/prepare.py` and
`stages/shard.py`, with the prepare and shard sections of params.yaml, in a temporary directory:

- prepare: split Tiny Shakespeare 90/10 and write it; read the OASST1 messages, rebuild the
  trees into conversations, split them by tree and write the JSONL files.
- shard <dataset>: encode (chat template for sft) and write the zstd Parquet shards and the
  manifest of both splits. tokens/s = tokens written / wall time. The tokenizer is loaded
  afresh before every run (outside the timer), so its chunk cache starts cold as in the stage.
- write only: `write_split` alone on rows already encoded: what Parquet + sha256 cost.
- load: what training does before its first step: `read_split` (manifest, sha256 of every
  file, Parquet read) + `concat_tokens` (pretrain) or `rows_as_arrays` of tokens and mask (sft).
- report: `data_report` over all four splits (polars).

The tokenizer (vocab 4096) is models/tokenizer/bpe.json when present, else trained here like
the tokenizer stage does, outside any timing. Times are medians of several runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import polars as pl
import pyarrow as pa
from common import data_dir  # bench/common.py: this script's folder is on sys.path

from bardlet.data.chat_template import render
from bardlet.data.oasst import build_conversations, read_messages, tree_split
from bardlet.data.report import data_report
from bardlet.data.shards import (
    Row,
    concat_tokens,
    read_split,
    rows_as_arrays,
    write_split,
)
from bardlet.files import write_json_atomic
from bardlet.markdown import table
from bardlet.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
VOCAB_SIZE = 4096
T = TypeVar("T")


def stage_params() -> dict[str, Any]:
    """The prepare and shard sections of params.yaml (the defaults if it does not validate)."""
    defaults = {
        "shakespeare_val_fraction": 0.1,
        "oasst_lang": "en",
        "oasst_mode": "best",
        "oasst_val_percent": 10.0,
        "rows_per_file": 50_000,
        "row_group_size": 1024,
    }
    try:
        from bardlet.config import load_params

        params = load_params(REPO / "params.yaml")
        return {**params.prepare.model_dump(), **params.shard.model_dump()}
    except Exception as err:  # the benchmark still runs with the documented defaults
        print(f"params.yaml not used ({err}); using defaults", file=sys.stderr)
        return defaults


# --- what the stages do (same library calls as stages/prepare.py and stages/shard.py) --------


def split_text(data: bytes, val_fraction: float) -> tuple[str, str]:
    cut = int(len(data) * (1 - val_fraction))
    while cut < len(data) and (data[cut] & 0xC0) == 0x80:
        cut += 1
    return data[:cut].decode("utf-8"), data[cut:].decode("utf-8")


def prepare(raw: Path, out: Path, p: dict[str, Any]) -> dict[str, int]:
    train, val = split_text(
        (raw / "tinyshakespeare/input.txt").read_bytes(), p["shakespeare_val_fraction"]
    )
    (out / "shakespeare").mkdir(parents=True, exist_ok=True)
    (out / "shakespeare/train.txt").write_text(train, encoding="utf-8")
    (out / "shakespeare/val.txt").write_text(val, encoding="utf-8")
    messages, stats = read_messages(raw / "oasst1/en-validation.jsonl", lang=p["oasst_lang"])
    conversations = build_conversations(messages, mode=p["oasst_mode"], stats=stats)
    splits: dict[str, list[dict]] = {"train": [], "val": []}
    for conversation in conversations:
        splits[tree_split(conversation["id"], p["oasst_val_percent"])].append(conversation)
    (out / "oasst").mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
        (out / "oasst" / f"{name}.jsonl").write_text("".join(lines), encoding="utf-8")
    write_json_atomic(out / "prepare.json", stats.as_dict())
    return {"conversations": len(conversations), "messages": stats.messages}


def text_rows(tokenizer: Tokenizer, prepared: Path, split: str) -> Iterator[Row]:
    import re

    text = (prepared / "shakespeare" / f"{split}.txt").read_text(encoding="utf-8")
    documents = [d for d in re.split(r"(?<=\n\n)", text) if d]
    for i, ids in enumerate(tokenizer.encode_batch(documents)):
        yield Row(source_id=f"shakespeare/{split}/{i}", tokens=ids)


def chat_rows(tokenizer: Tokenizer, prepared: Path, split: str) -> Iterator[Row]:
    for line in (prepared / "oasst" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
        conversation = json.loads(line)
        ids, mask = render(tokenizer, conversation["messages"])
        yield Row(source_id=f"oasst/{conversation['id']}", tokens=ids, loss_mask=mask)


ROW_MAKERS: dict[str, Callable[[Tokenizer, Path, str], Iterator[Row]]] = {
    "pretrain": text_rows,
    "sft": chat_rows,
}


def shard(
    tokenizer: Tokenizer, prepared: Path, shards: Path, dataset: str, p: dict[str, Any]
) -> int:
    """Both splits of one dataset, as the shard stage writes them; returns the tokens written."""
    tokens = 0
    for split in ("train", "val"):
        manifest = write_split(
            ROW_MAKERS[dataset](tokenizer, prepared, split),
            shards / dataset / split,
            tokenizer_hash=tokenizer.hash,
            vocab_size=tokenizer.vocab_size,
            rows_per_file=p["rows_per_file"],
            row_group_size=p["row_group_size"],
        )
        tokens += manifest["tokens"]
    return tokens


def load_pretrain(split_dir: Path, tokenizer_hash: str) -> np.ndarray:
    return concat_tokens(read_split(split_dir, tokenizer_hash))


def load_sft(split_dir: Path, tokenizer_hash: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    split = read_split(split_dir, tokenizer_hash)
    return rows_as_arrays(split, "tokens"), rows_as_arrays(split, "loss_mask")


# --- measuring --------------------------------------------------------------------------------


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def get_tokenizer(raw: Path, p: dict[str, Any], work: Path) -> tuple[Path, str]:
    """Path of a vocab-4096 tokenizer file, and where it came from (never timed)."""
    existing = REPO / "models/tokenizer/bpe.json"
    if existing.is_file() and Tokenizer.load(existing).vocab_size == VOCAB_SIZE:
        return existing, "models/tokenizer/bpe.json"
    prepared = work / "tok-prepared"
    prepare(raw, prepared, p)
    texts = [(prepared / "shakespeare/train.txt").read_text(encoding="utf-8")]
    for line in (prepared / "oasst/train.jsonl").read_text(encoding="utf-8").splitlines():
        texts.extend(m["content"] for m in json.loads(line)["messages"])
    path = work / "bpe.json"
    Tokenizer.train(texts, vocab_size=VOCAB_SIZE).save(path)
    return path, f"trained here (vocab {VOCAB_SIZE})"


def run_once(raw: Path, tok_path: Path, work: Path, p: dict[str, Any]) -> dict[str, Any]:
    shutil.rmtree(work, ignore_errors=True)
    prepared, shards = work / "prepared", work / "shards"
    out: dict[str, Any] = {}
    out["prepare_s"], counts = timed(lambda: prepare(raw, prepared, p))
    out.update(counts)

    tokenizer = Tokenizer.load(tok_path)  # fresh: cold chunk cache, as in the stage
    for dataset in ("pretrain", "sft"):
        seconds, tokens = timed(partial(shard, tokenizer, prepared, shards, dataset, p))
        out[f"shard_{dataset}_s"], out[f"shard_{dataset}_tokens"] = seconds, tokens

    # write_split alone, on rows already encoded (the encoding above is most of the shard time)
    rows = list(text_rows(tokenizer, prepared, "train"))
    seconds, manifest = timed(
        lambda: write_split(
            rows, work / "write-only", tokenizer.hash, tokenizer.vocab_size, p["rows_per_file"]
        )
    )
    out["write_only_s"], out["write_only_tokens"] = seconds, manifest["tokens"]

    out["load_pretrain_train_s"], tokens_array = timed(
        lambda: load_pretrain(shards / "pretrain/train", tokenizer.hash)
    )
    out["load_pretrain_train_tokens"] = int(tokens_array.size)
    out["load_sft_train_s"], (convs, _) = timed(
        lambda: load_sft(shards / "sft/train", tokenizer.hash)
    )
    out["load_sft_train_rows"] = len(convs)
    out["report_s"], _ = timed(lambda: data_report(shards, tokenizer))
    return out


def median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    first = runs[0]
    shard_tokens = first["shard_pretrain_tokens"] + first["shard_sft_tokens"]
    shard_s = median(runs, "shard_pretrain_s") + median(runs, "shard_sft_s")
    prepare_shard_s = median(runs, "prepare_s") + shard_s
    steps = [
        ("prepare (Shakespeare split + OASST1 trees)", "prepare_s", None),
        ("shard pretrain (encode + write, 2 splits)", "shard_pretrain_s", "shard_pretrain_tokens"),
        ("shard sft (chat template + write, 2 splits)", "shard_sft_s", "shard_sft_tokens"),
        ("write_split only (pretrain/train, pre-encoded)", "write_only_s", "write_only_tokens"),
        ("load pretrain/train (read_split + concat_tokens)", "load_pretrain_train_s", None),
        ("load sft/train (read_split + rows_as_arrays x2)", "load_sft_train_s", None),
        ("data report (polars, 4 splits)", "report_s", None),
    ]
    rows: list[dict[str, Any]] = []
    for label, time_key, token_key in steps:
        seconds = median(runs, time_key)
        tokens = first[token_key] if token_key else None
        rows.append({"step": label, "seconds": seconds, "tokens": tokens})
    rows.insert(3, {"step": "shard total", "seconds": shard_s, "tokens": shard_tokens})
    rows.insert(4, {"step": "prepare + shard", "seconds": prepare_shard_s, "tokens": None})
    # The first run pays one-off costs (imports, first use of numpy/pyarrow paths) that a
    # stage, a fresh process, pays too: shown apart so the medians stay comparable.
    first_s = first["prepare_s"] + first["shard_pretrain_s"] + first["shard_sft_s"]
    rows.insert(5, {"step": "prepare + shard, first run", "seconds": first_s, "tokens": None})
    for row in rows:
        row["tokens_per_s"] = row["tokens"] / row["seconds"] if row["tokens"] else None
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    cells = [
        (
            r["step"],
            f"{r['seconds']:.3f}",
            f"{r['tokens']:,}" if r["tokens"] else "",
            f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "",
        )
        for r in rows
    ]
    return table("step | median s | tokens | tokens/s", cells, align="lr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run of each (under a minute)")
    parser.add_argument("--runs", type=int, default=None, help="runs per measure (default 3)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    n_runs = args.runs or (1 if args.quick else 3)

    raw = data_dir()
    p = stage_params()
    with tempfile.TemporaryDirectory(prefix="bardlet-bench-data-") as tmp:
        tok_path, tok_origin = get_tokenizer(raw, p, Path(tmp))
        runs = []
        for i in range(n_runs):
            runs.append(run_once(raw, tok_path, Path(tmp) / "work", p))
            print(
                f"run {i + 1}/{n_runs}: prepare+shard {runs[-1]['prepare_s'] + runs[-1]['shard_pretrain_s'] + runs[-1]['shard_sft_s']:.2f} s",
                file=sys.stderr,
            )

    rows = summarize(runs)
    env = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "pyarrow": pa.__version__,
        "polars": pl.__version__,
        "numpy": np.__version__,
        "tokenizer": tok_origin,
        "runs": n_runs,
        "load_average": os.getloadavg(),
        "params": p,
    }
    text = markdown(rows)
    print(text)
    print(
        f"\n{n_runs} run(s), medians; {env['cpus']} CPUs, Python {env['python']}, "
        f"pyarrow {env['pyarrow']}, polars {env['polars']}; tokenizer: {tok_origin}; "
        f"load average {os.getloadavg()[0]:.1f}; "
        f"{runs[0]['conversations']} conversations from {runs[0]['messages']} messages"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {"environment": env, "results": rows, "runs": runs, "table": text}
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
