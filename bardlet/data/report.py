"""The data report: what the token shards hold, answered by polars from the Parquet files.

    report = data_report(Path("data/shards"), tokenizer)   # -> reports/data.json

For each `{pretrain,sft}/{train,val}` split it gives rows, tokens, row lengths (mean, median,
min, max), bytes of text per token, the on-disk size, for chat data the share of tokens that
carry loss (assistant tokens and their end token), a length histogram and the most frequent
tokens with their text.

The shard stage writes it to reports/data.json, which the report card reads (it is not a DVC
metric: `dvc metrics show` keeps to the quality numbers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl

DATASETS = ("pretrain", "sft")
SPLITS = ("train", "val")
TOP_TOKENS = 20

# Row-length buckets: (0, 1], (1, 2], (2, 4], ... (2**16, 2**17], then everything longer.
HISTOGRAM_EDGES: tuple[int, ...] = (0, *(2**k for k in range(18)))


class ReportTokenizer(Protocol):
    """What the report needs from a tokenizer (bardlet.tokenizer.Tokenizer has it)."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def special_tokens(self) -> dict[str, int]: ...

    def token_bytes(self, token_id: int) -> bytes: ...

    def byte_lengths(self) -> list[int]: ...


def data_report(shards_dir: Path, tokenizer: ReportTokenizer) -> dict[str, dict[str, Any]]:
    """`{dataset: {split: stats}}` for every split directory present under `shards_dir`.

    Raises FileNotFoundError if there is no split directory at all (run `dvc repro shard`).
    """
    shards_dir = Path(shards_dir)
    byte_lengths = np.array(tokenizer.byte_lengths(), dtype=np.int64)
    report: dict[str, dict[str, Any]] = {}
    for dataset in DATASETS:
        for split in SPLITS:
            split_dir = shards_dir / dataset / split
            if split_dir.is_dir():
                stats = split_report(split_dir, tokenizer, byte_lengths)
                report.setdefault(dataset, {})[split] = stats
    if not report:
        raise FileNotFoundError(
            f"no shard splits under {shards_dir} (expected {{pretrain,sft}}/{{train,val}}/): "
            "run `dvc repro shard`"
        )
    return report


def split_report(
    split_dir: Path, tokenizer: ReportTokenizer, byte_lengths: np.ndarray | None = None
) -> dict[str, Any]:
    """The statistics of one split directory of `*.parquet` shards."""
    if byte_lengths is None:
        byte_lengths = np.array(tokenizer.byte_lengths(), dtype=np.int64)
    files = sorted(Path(split_dir).glob("*.parquet"))
    stats: dict[str, Any] = {
        "files": len(files),
        "parquet_bytes": sum(f.stat().st_size for f in files),
    }
    if not files:
        return {**stats, **_length_stats(np.zeros(0, dtype=np.int64)), "tokens": 0}

    frame = pl.scan_parquet(files)
    has_mask = "loss_mask" in frame.collect_schema().names()
    per_row = [pl.col("tokens").list.len().alias("length")]
    if has_mask:
        per_row.append(pl.col("loss_mask").list.sum().alias("assistant"))
    rows = frame.select(per_row).collect()
    lengths = rows["length"].to_numpy().astype(np.int64)

    # Count every token id once: the top tokens and the text bytes come from these counts.
    counts_frame = (
        frame.select(pl.col("tokens").explode().alias("id"))
        .drop_nulls()
        .group_by("id")
        .len(name="count")
        .collect()
    )
    ids = counts_frame["id"].to_numpy().astype(np.int64)
    counts = counts_frame["count"].to_numpy().astype(np.int64)
    tokens = int(counts.sum())

    stats.update(_length_stats(lengths))
    stats["tokens"] = tokens
    known = ids < len(byte_lengths)
    text_bytes = int((byte_lengths[ids[known]] * counts[known]).sum())
    stats["text_bytes"] = text_bytes
    stats["bytes_per_token"] = round(text_bytes / tokens, 4) if tokens else 0.0
    if has_mask:
        assistant = int(rows["assistant"].sum())
        stats["assistant_tokens"] = assistant
        stats["assistant_share"] = round(assistant / tokens, 4) if tokens else 0.0
    stats["length_histogram"] = _histogram(lengths)
    stats["top_tokens"] = _top_tokens(ids, counts, tokenizer, tokens)
    return stats


def _length_stats(lengths: np.ndarray) -> dict[str, Any]:
    if lengths.size == 0:
        return {"rows": 0, "mean_len": 0.0, "median_len": 0.0, "min_len": 0, "max_len": 0}
    return {
        "rows": int(lengths.size),
        "mean_len": round(float(lengths.mean()), 2),
        "median_len": float(np.median(lengths)),
        "min_len": int(lengths.min()),
        "max_len": int(lengths.max()),
    }


def _histogram(lengths: np.ndarray) -> list[dict[str, int | None]]:
    """Rows per length bucket `lo < length <= hi` (the first bucket is length <= 1, empty rows
    included; the last one is open-ended, `hi` None). Every bucket is listed, empty or not, so
    reports of different runs line up."""
    edges = np.asarray(HISTOGRAM_EDGES, dtype=np.int64)
    # searchsorted(side="left") gives i with edges[i-1] < length <= edges[i]; 0 joins bucket 1.
    index = np.clip(np.searchsorted(edges, lengths, side="left"), 1, len(edges))
    per_bucket = np.bincount(index, minlength=len(edges) + 1)
    buckets: list[dict[str, int | None]] = []
    for i in range(1, len(edges)):
        buckets.append({"lo": int(edges[i - 1]), "hi": int(edges[i]), "rows": int(per_bucket[i])})
    buckets.append({"lo": int(edges[-1]), "hi": None, "rows": int(per_bucket[len(edges)])})
    return buckets


def _top_tokens(
    ids: np.ndarray, counts: np.ndarray, tokenizer: ReportTokenizer, total: int
) -> list[dict[str, Any]]:
    """The most frequent ids, ties broken by the smaller id so the report never varies."""
    order = np.lexsort((ids, -counts))[:TOP_TOKENS]
    top = []
    for i in order:
        token_id = int(ids[i])
        top.append(
            {
                "id": token_id,
                "text": _token_text(tokenizer, token_id),
                "count": int(counts[i]),
                "share": round(int(counts[i]) / total, 4),
            }
        )
    return top


def _token_text(tokenizer: ReportTokenizer, token_id: int) -> str:
    """A token's text; bytes that are not UTF-8 on their own (part of a character) as \\xNN."""
    try:
        return tokenizer.token_bytes(token_id).decode("utf-8", errors="backslashreplace")
    except ValueError:  # an id the tokenizer does not know: shards from another tokenizer
        return f"<unknown id {token_id}>"
