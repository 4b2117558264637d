"""Parquet token shards: one row per document or conversation, plus a manifest per split.

A split directory holds `shard-00000.parquet`, ... and `manifest.json` with each file's
rows, tokens and sha256, and the hash of the tokenizer that produced the ids. Readers verify
both, so a shard written by another tokenizer, or cut short on disk, is refused with a clear
message instead of training on garbage.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "manifest.json"


@dataclass
class Row:
    source_id: str
    tokens: list[int]
    loss_mask: list[bool] | None = None  # chat data only


class ShardError(RuntimeError):
    """A shard or manifest is missing, corrupt or from another tokenizer."""


def token_type(vocab_size: int) -> pa.DataType:
    return pa.uint16() if vocab_size <= 65536 else pa.int32()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_split(
    rows: Iterable[Row],
    out_dir: Path,
    tokenizer_hash: str,
    vocab_size: int,
    rows_per_file: int = 50_000,
    row_group_size: int = 1024,
) -> dict:
    """Write rows as zstd Parquet shards and a manifest; returns the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[dict] = []
    pending: list[Row] = []

    def flush() -> None:
        if not pending:
            return
        has_mask = pending[0].loss_mask is not None
        columns = {
            "source_id": pa.array([r.source_id for r in pending], pa.string()),
            "tokens": pa.array([r.tokens for r in pending], pa.list_(token_type(vocab_size))),
        }
        if has_mask:
            columns["loss_mask"] = pa.array([r.loss_mask for r in pending], pa.list_(pa.bool_()))
        name = f"shard-{len(files):05d}.parquet"
        tmp = out_dir / (name + ".tmp")
        pq.write_table(pa.table(columns), tmp, compression="zstd", row_group_size=row_group_size)
        os.replace(tmp, out_dir / name)
        files.append(
            {
                "file": name,
                "rows": len(pending),
                "tokens": sum(len(r.tokens) for r in pending),
                "sha256": sha256_file(out_dir / name),
            }
        )
        pending.clear()

    for row in rows:
        pending.append(row)
        if len(pending) >= rows_per_file:
            flush()
    flush()
    manifest = {
        "tokenizer_hash": tokenizer_hash,
        "vocab_size": vocab_size,
        "files": files,
        "rows": sum(f["rows"] for f in files),
        "tokens": sum(f["tokens"] for f in files),
    }
    write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest


def read_split(split_dir: Path, tokenizer_hash: str) -> pa.Table:
    """All rows of a split, after checking the manifest, each file's sha256 and the tokenizer."""
    manifest_path = split_dir / MANIFEST
    if not manifest_path.exists():
        raise ShardError(f"{manifest_path} is missing: run `dvc repro shard`")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest["tokenizer_hash"] != tokenizer_hash:
        raise ShardError(
            f"{split_dir} was written by tokenizer {manifest['tokenizer_hash'][:12]}, "
            f"but the current tokenizer is {tokenizer_hash[:12]}: re-run `dvc repro shard`"
        )
    tables = []
    for entry in manifest["files"]:
        path = split_dir / entry["file"]
        if not path.exists() or sha256_file(path) != entry["sha256"]:
            raise ShardError(
                f"{path} is missing or does not match its manifest sha256: re-run `dvc repro shard`"
            )
        tables.append(pq.read_table(path, memory_map=True))
    if not tables:
        raise ShardError(f"{split_dir} has no shards: check the prepare stage's output")
    return pa.concat_tables(tables)


def concat_tokens(table: pa.Table) -> np.ndarray:
    """Every row's tokens end to end, as one flat array (no Python loop over tokens)."""
    return table.column("tokens").combine_chunks().values.to_numpy()


def rows_as_arrays(table: pa.Table, column: str) -> list[np.ndarray]:
    """One numpy array per row of a list column."""
    chunked = table.column(column).combine_chunks()
    values = chunked.values.to_numpy(zero_copy_only=False)
    offsets = chunked.offsets.to_numpy()
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
