"""Bad input for the token shards: every failure is a ShardError that names the file and says
what to do, and a failed write leaves nothing that a reader could mistake for a split."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bardlet.data.shards import MANIFEST, Row, ShardError, read_split, write_split
from bardlet.files import sha256_file

RERUN = "re-run `dvc repro shard`"


def good_split(split: Path, n: int = 40) -> dict:
    rows = [Row(f"doc/{i}", [i % 300, (i * 7) % 300, 5]) for i in range(n)]
    return write_split(rows, split, "h", vocab_size=512, rows_per_file=n)


def files_in(split: Path) -> list[str]:
    return sorted(p.name for p in split.iterdir())


# --- a manifest that is not one ----------------------------------------------------------------

GARBAGE = bytes(random.Random(1).randrange(256) for _ in range(512))


@pytest.mark.parametrize(
    "content",
    [
        b"",  # empty
        GARBAGE,  # binary garbage
        b'{"tokenizer_hash": "h", "files": [\xff\xfe]}',  # invalid UTF-8
        b'{"tokenizer_hash": "h", "files": [',  # cut short: not JSON
        b"[1, 2, 3]",  # JSON, not an object
        b'{"tokenizer_hash": "h"}',  # no list of files
        b'{"tokenizer_hash": "h", "files": [{"file": "../escape.parquet", "sha256": "x"}]}',
        b'{"tokenizer_hash": 7, "files": []}',
    ],
    ids=["empty", "garbage", "not-utf8", "not-json", "list", "no-files", "escape", "hash-type"],
)
def test_bad_manifest_is_a_shard_error(tmp_path: Path, content: bytes) -> None:
    good_split(tmp_path)
    (tmp_path / MANIFEST).write_bytes(content)
    with pytest.raises(ShardError, match="manifest.json") as excinfo:
        read_split(tmp_path, "h")
    assert RERUN in str(excinfo.value)


def test_missing_manifest_is_a_shard_error(tmp_path: Path) -> None:
    with pytest.raises(ShardError, match=f"manifest.json is missing: {RERUN}"):
        read_split(tmp_path, "h")


# --- shards that are not Parquet, or not all of it ----------------------------------------------


@pytest.mark.parametrize("keep", [0, 4, 0.5, -8])
def test_shard_cut_short_is_a_shard_error_naming_the_file(tmp_path: Path, keep: float) -> None:
    """Cut short, and the manifest rewritten to match (as if a buggy tool had rehashed it):
    the sha256 check passes, so the Parquet reader itself must fail with our message."""
    good_split(tmp_path)
    shard = tmp_path / "shard-00000.parquet"
    data = shard.read_bytes()
    end = int(len(data) * keep) if isinstance(keep, float) else keep
    shard.write_bytes(data[:end])
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["files"][0]["sha256"] = sha256_file(shard)
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="not a readable Parquet shard") as excinfo:
        read_split(tmp_path, "h")
    assert str(shard) in str(excinfo.value) and RERUN in str(excinfo.value)


def test_shard_cut_short_on_disk_fails_its_checksum(tmp_path: Path) -> None:
    good_split(tmp_path)
    shard = tmp_path / "shard-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ShardError, match=f"{shard}.*sha256: {RERUN}"):
        read_split(tmp_path, "h")


def test_shard_replaced_by_garbage_is_a_shard_error(tmp_path: Path) -> None:
    good_split(tmp_path)
    shard = tmp_path / "shard-00000.parquet"
    shard.write_bytes(GARBAGE)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["files"][0]["sha256"] = sha256_file(shard)
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=RERUN):
        read_split(tmp_path, "h")


# --- writing: all or nothing ------------------------------------------------------------------


def rows_then_failure(n_good: int) -> Iterator[Row]:
    for i in range(n_good):
        yield Row(f"doc/{i}", [1, 2, 3])
    raise RuntimeError("the tokenizer blew up")


def test_failure_mid_write_leaves_no_manifest_and_no_shards(tmp_path: Path) -> None:
    split = tmp_path / "split"
    good_split(split, n=10)  # an earlier, complete run
    assert MANIFEST in files_in(split)
    with pytest.raises(RuntimeError, match="blew up"):
        # Two files get written before the failure.
        write_split(rows_then_failure(5), split, "h2", vocab_size=512, rows_per_file=2)
    assert files_in(split) == []  # neither the old split nor half of the new one
    with pytest.raises(ShardError, match="missing"):
        read_split(split, "h2")


def test_a_smaller_rewrite_leaves_no_stale_shards(tmp_path: Path) -> None:
    write_split([Row(str(i), [i]) for i in range(6)], tmp_path, "h", 512, rows_per_file=2)
    assert len(list(tmp_path.glob("shard-*.parquet"))) == 3
    write_split([Row("only", [1])], tmp_path, "h", 512, rows_per_file=2)
    assert files_in(tmp_path) == [MANIFEST, "shard-00000.parquet"]
    assert read_split(tmp_path, "h").num_rows == 1


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (Row("big", [1, 512]), "token id 512 is outside the vocabulary"),
        (Row("neg", [-1, 2]), "'neg'"),
        (Row("huge", [70_000]), "70000 is outside"),
        (Row("mask", [1, 2, 3], [True, False]), "2 loss_mask values for 3 tokens"),
    ],
    ids=["over-vocab", "negative", "over-uint16", "mask-length"],
)
def test_bad_rows_are_refused_before_anything_is_written(
    tmp_path: Path, row: Row, message: str
) -> None:
    good = [Row("ok", [1, 2, 3], [False, True, True] if row.loss_mask else None)]
    with pytest.raises(ShardError, match=message):
        write_split([*good, row], tmp_path, "h", vocab_size=512)
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("rows_per_file", [1, 10])  # in one file, or across files
def test_mixing_chat_and_plain_rows_is_refused(tmp_path: Path, rows_per_file: int) -> None:
    rows = [Row("chat", [1, 2], [False, True]), Row("plain", [3, 4])]
    with pytest.raises(ShardError, match="'plain'.*not both"):
        write_split(rows, tmp_path, "h", vocab_size=512, rows_per_file=rows_per_file)
    assert files_in(tmp_path) == []


def test_token_ids_at_the_edges_of_the_vocab_round_trip(tmp_path: Path) -> None:
    write_split([Row("edge", [0, 511])], tmp_path, "h", vocab_size=512)
    table = read_split(tmp_path, "h")
    assert table.column("tokens").to_pylist() == [[0, 511]]
    assert pq.read_metadata(tmp_path / "shard-00000.parquet").num_rows == 1
