"""Parquet token shards: one row per document or conversation, plus a manifest per split.

A split directory holds `shard-00000.parquet`, ... and `manifest.json` with each file's
rows, tokens and sha256, and the hash of the tokenizer that produced the ids. Readers verify
both, so a shard written by another tokenizer, or cut short on disk, is refused with a clear
message instead of training on garbage. Writing is all or nothing: the manifest comes last,
and a write that fails halfway removes what it wrote, so no reader ever sees half a split.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bardlet.files import atomic_path, sha256_file, write_json_atomic

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


def write_split(
    rows: Iterable[Row],
    out_dir: Path,
    tokenizer_hash: str,
    vocab_size: int,
    rows_per_file: int = 50_000,
    row_group_size: int = 1024,
) -> dict:
    """Write rows as zstd Parquet shards and a manifest; returns the manifest.

    All or nothing: the manifest (what readers trust) is written last, after every shard is in
    place. The split's previous manifest and shards are removed first, so if anything fails
    halfway (a bad row, a full disk, an exception in `rows`) the directory holds no manifest and
    no shards of this run, and readers refuse it instead of reading a mix of old and new files.
    (The shard stage writes into a new folder and swaps it in, so it keeps the old shards.)
    A token id outside 0..vocab_size-1, or a loss mask that does not match its tokens, raises
    ShardError naming the row.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_split_files(out_dir)
    files: list[dict] = []
    pending: list[Row] = []
    dtype = token_type(vocab_size)
    chat: list[bool] = []  # [whether the split's rows carry a loss mask], set by the first row

    def flush() -> None:
        if not pending:
            return
        if not chat:
            chat.append(pending[0].loss_mask is not None)
        has_mask = chat[0]
        for row in pending:
            _check_row(row, has_mask)
        try:
            tokens = pa.array([r.tokens for r in pending], pa.list_(dtype))
        except (pa.ArrowException, OverflowError, TypeError) as err:
            raise _bad_tokens(pending, vocab_size, err) from None
        _check_token_range(tokens, pending, vocab_size)
        columns = {
            "source_id": pa.array([r.source_id for r in pending], pa.string()),
            "tokens": tokens,
        }
        if has_mask:
            columns["loss_mask"] = pa.array([r.loss_mask for r in pending], pa.list_(pa.bool_()))
        name = f"shard-{len(files):05d}.parquet"
        with atomic_path(out_dir / name) as tmp:
            pq.write_table(
                pa.table(columns), tmp, compression="zstd", row_group_size=row_group_size
            )
        files.append(
            {
                "file": name,
                "rows": len(pending),
                "tokens": sum(len(r.tokens) for r in pending),
                "sha256": sha256_file(out_dir / name),
            }
        )
        pending.clear()

    try:
        for row in rows:
            pending.append(row)
            if len(pending) >= rows_per_file:
                flush()
        flush()
    except BaseException:
        _remove_split_files(out_dir)  # nothing half-written stays behind
        raise
    manifest = {
        "tokenizer_hash": tokenizer_hash,
        "vocab_size": vocab_size,
        "files": files,
        "rows": sum(f["rows"] for f in files),
        "tokens": sum(f["tokens"] for f in files),
    }
    write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest


def _remove_split_files(out_dir: Path) -> None:
    """Delete what write_split writes in a split directory: manifest first, then shards."""
    for pattern in (MANIFEST, MANIFEST + ".tmp", "shard-*.parquet", "shard-*.parquet.tmp"):
        for path in sorted(out_dir.glob(pattern)):
            path.unlink(missing_ok=True)


def _check_row(row: Row, has_mask: bool) -> None:
    if (row.loss_mask is not None) != has_mask:
        raise ShardError(
            f"row {row.source_id!r}: a split holds either chat rows (with loss_mask) or plain "
            "rows (without), not both"
        )
    if row.loss_mask is not None and len(row.loss_mask) != len(row.tokens):
        raise ShardError(
            f"row {row.source_id!r}: {len(row.loss_mask)} loss_mask values for "
            f"{len(row.tokens)} tokens"
        )


def _check_token_range(tokens: pa.ListArray, rows: list[Row], vocab_size: int) -> None:
    """Every id must be a token of the vocabulary (0..vocab_size-1): one vectorized check."""
    values = tokens.flatten().to_numpy(zero_copy_only=False)
    if values.size == 0:
        return
    bad = np.flatnonzero((values < 0) | (values >= vocab_size))
    if bad.size:
        offsets = tokens.offsets.to_numpy()
        row = int(np.searchsorted(offsets, bad[0], side="right")) - 1
        raise ShardError(
            f"row {rows[row].source_id!r}: token id {int(values[bad[0]])} is outside the "
            f"vocabulary (vocab_size {vocab_size})"
        )


def _bad_tokens(rows: list[Row], vocab_size: int, err: Exception) -> ShardError:
    """The error for rows Arrow could not convert (only on that path: a Python scan is fine)."""
    for row in rows:
        for token in row.tokens:
            if not isinstance(token, int | np.integer) or not 0 <= token < vocab_size:
                return ShardError(
                    f"row {row.source_id!r}: token id {token!r} is outside the vocabulary "
                    f"(vocab_size {vocab_size})"
                )
    return ShardError(f"token ids that do not fit the shard's integer type ({err})")


def _rerun(problem: str) -> ShardError:
    return ShardError(f"{problem}: re-run `dvc repro shard`")


def read_manifest(split_dir: Path) -> dict:
    """The split's manifest, checked for the fields readers use; ShardError if unreadable."""
    manifest_path = split_dir / MANIFEST
    if not manifest_path.exists():
        raise _rerun(f"{manifest_path} is missing")
    try:
        manifest = json.loads(manifest_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _rerun(f"{manifest_path} is not a JSON manifest ({err})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    well_formed = (
        isinstance(manifest, dict)
        and isinstance(manifest.get("tokenizer_hash"), str)
        and isinstance(files, list)
        and all(
            isinstance(f, dict)
            and isinstance(f.get("file"), str)
            and "/" not in f["file"]
            and "\\" not in f["file"]
            and f["file"] not in ("", ".", "..")
            and isinstance(f.get("sha256"), str)
            for f in files
        )
    )
    if not well_formed:
        raise _rerun(f"{manifest_path} lacks tokenizer_hash or a valid list of files")
    return manifest


def read_split(split_dir: Path, tokenizer_hash: str) -> pa.Table:
    """All rows of a split, after checking the manifest, each file's sha256 and the tokenizer.

    Any problem (a missing, corrupt or foreign manifest, a shard cut short or changed on
    disk) raises ShardError naming the file and saying to re-run `dvc repro shard`.
    """
    split_dir = Path(split_dir)
    manifest = read_manifest(split_dir)
    if manifest["tokenizer_hash"] != tokenizer_hash:
        raise _rerun(
            f"{split_dir} was written by tokenizer {manifest['tokenizer_hash'][:12]}, "
            f"but the current tokenizer is {tokenizer_hash[:12]}"
        )
    tables = []
    for entry in manifest["files"]:
        path = split_dir / entry["file"]
        if not path.exists() or sha256_file(path) != entry["sha256"]:
            raise _rerun(f"{path} is missing or does not match its manifest sha256")
        try:
            tables.append(pq.read_table(path, memory_map=True))
        except (pa.ArrowException, OSError) as err:
            raise _rerun(f"{path} is not a readable Parquet shard ({err})") from None
    if not tables:
        raise ShardError(f"{split_dir} has no shards: check the prepare stage's output")
    try:
        return pa.concat_tables(tables)
    except pa.ArrowException as err:
        raise _rerun(f"the shards in {split_dir} do not share one schema ({err})") from None


def concat_tokens(table: pa.Table) -> np.ndarray:
    """Every row's tokens end to end, as one flat array (no Python loop over tokens)."""
    return table.column("tokens").combine_chunks().values.to_numpy()


def rows_as_arrays(table: pa.Table, column: str) -> list[np.ndarray]:
    """One numpy array per row of a list column."""
    chunked = table.column(column).combine_chunks()
    values = chunked.values.to_numpy(zero_copy_only=False)
    offsets = chunked.offsets.to_numpy()
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
