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
MAX_FILE_TOKENS = 1 << 24  # a shard file holds at most this many tokens: memory stays small


@dataclass
class Row:
    source_id: str  # "<source>/...": the name of the data it came from first
    tokens: list[int] | np.ndarray
    loss_mask: list[bool] | np.ndarray | None = None  # chat data only


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
        offsets = pa.array(np.cumsum([0] + [len(r.tokens) for r in pending]), pa.int32())
        values = np.concatenate([_token_ids(r, vocab_size) for r in pending])
        _check_token_range(values, offsets.to_numpy(), pending, vocab_size)
        tokens = pa.ListArray.from_arrays(offsets, pa.array(values.astype(dtype.to_pandas_dtype())))
        columns = {
            "source_id": pa.array([r.source_id for r in pending], pa.string()),
            "tokens": tokens,
        }
        if has_mask:
            masks = np.concatenate([np.asarray(r.loss_mask, dtype=bool) for r in pending])
            columns["loss_mask"] = pa.ListArray.from_arrays(offsets, pa.array(masks))
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
        pending_tokens = 0
        for row in rows:
            pending.append(row)
            pending_tokens += len(row.tokens)
            if len(pending) >= rows_per_file or pending_tokens >= MAX_FILE_TOKENS:
                flush()
                pending_tokens = 0
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


def _check_token_range(
    values: np.ndarray, offsets: np.ndarray, rows: list[Row], vocab_size: int
) -> None:
    """Every id must be a token of the vocabulary (0..vocab_size-1): one vectorized check."""
    bad = np.flatnonzero((values < 0) | (values >= vocab_size))
    if bad.size:
        row = int(np.searchsorted(offsets, bad[0], side="right")) - 1
        raise ShardError(
            f"row {rows[row].source_id!r}: token id {int(values[bad[0]])} is outside the "
            f"vocabulary (vocab_size {vocab_size})"
        )


def _token_ids(row: Row, vocab_size: int) -> np.ndarray:
    """A row's tokens as int64, or ShardError if they are not whole numbers."""
    try:
        ids = np.asarray(row.tokens)
    except (OverflowError, TypeError, ValueError):
        ids = np.asarray([], dtype=object)
    if ids.size == 0 and len(row.tokens) == 0:
        return np.zeros(0, dtype=np.int64)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        bad = next((t for t in row.tokens if not isinstance(t, int | np.integer)), row.tokens)
        raise ShardError(
            f"row {row.source_id!r}: token id {bad!r} is outside the vocabulary "
            f"(vocab_size {vocab_size})"
        )
    return ids.astype(np.int64)


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


def checked_files(split_dir: Path, tokenizer_hash: str) -> tuple[dict, list[Path]]:
    """The split's manifest and shard paths, after checking the manifest, the tokenizer and
    each file's sha256. Any problem (a missing, corrupt or foreign manifest, a shard cut short
    or changed on disk) raises ShardError naming the file and saying to re-run the stage."""
    split_dir = Path(split_dir)
    manifest = read_manifest(split_dir)
    if manifest["tokenizer_hash"] != tokenizer_hash:
        raise _rerun(
            f"{split_dir} was written by tokenizer {manifest['tokenizer_hash'][:12]}, "
            f"but the current tokenizer is {tokenizer_hash[:12]}"
        )
    paths = []
    for entry in manifest["files"]:
        path = split_dir / entry["file"]
        if not path.exists() or sha256_file(path) != entry["sha256"]:
            raise _rerun(f"{path} is missing or does not match its manifest sha256")
        paths.append(path)
    if not paths:
        raise ShardError(f"{split_dir} has no shards: check the prepare stage's output")
    return manifest, paths


def read_split(split_dir: Path, tokenizer_hash: str) -> pa.Table:
    """All rows of a split (chat data: a few MB), checked as `checked_files` says."""
    _, paths = checked_files(split_dir, tokenizer_hash)
    tables = []
    for path in paths:
        try:
            tables.append(pq.read_table(path, memory_map=True))
        except (pa.ArrowException, OSError) as err:
            raise _rerun(f"{path} is not a readable Parquet shard ({err})") from None
    try:
        return pa.concat_tables(tables)
    except pa.ArrowException as err:
        raise _rerun(f"the shards in {split_dir} do not share one schema ({err})") from None


def read_tokens(split_dir: Path, tokenizer_hash: str) -> tuple[np.ndarray, dict[str, range]]:
    """Every row's tokens end to end, as one flat array (what pretraining draws windows from),
    and where each source's rows lie in it ({"tinyshakespeare": range(0, 300_000)}). Read a
    record batch at a time into one array of the manifest's size: memory holds the token ids
    (2 bytes each), never a table of the whole split."""
    manifest, paths = checked_files(split_dir, tokenizer_hash)
    dtype = token_type(int(manifest.get("vocab_size", 1 << 16))).to_pandas_dtype()
    tokens = np.empty(int(manifest.get("tokens", 0)), dtype=dtype)
    starts: dict[str, int] = {}
    at = 0
    for path in paths:
        try:
            batches = pq.ParquetFile(path).iter_batches(columns=["source_id", "tokens"])
            for batch in batches:
                column = batch.column("tokens")
                values = column.flatten().to_numpy(zero_copy_only=False)
                if at + len(values) > len(tokens):
                    raise _rerun(f"{path} holds more tokens than its manifest says")
                lengths = np.diff(column.offsets.to_numpy())
                names = batch.column("source_id").to_pylist()
                for source_id, length in zip(names, lengths, strict=True):
                    name = source_id.split("/", 1)[0]
                    if name in starts and name != list(starts)[-1]:
                        raise _rerun(f"{split_dir}: the rows of source {name} are not together")
                    starts.setdefault(name, at)
                    at += int(length)
                tokens[at - len(values) : at] = values
        except (pa.ArrowException, OSError, KeyError) as err:
            raise _rerun(f"{path} is not a readable Parquet shard ({err})") from None
    if at != len(tokens):
        raise _rerun(f"{split_dir} holds {at:,} tokens, its manifest says {len(tokens):,}")
    ends = [*list(starts.values())[1:], at]
    spans = zip(starts.items(), ends, strict=True)
    return tokens, {name: range(start, end) for (name, start), end in spans}


def rows_as_arrays(table: pa.Table, column: str) -> list[np.ndarray]:
    """One numpy array per row of a list column."""
    chunked = table.column(column).combine_chunks()
    values = chunked.values.to_numpy(zero_copy_only=False)
    offsets = chunked.offsets.to_numpy()
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
