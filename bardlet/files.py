"""Files and their fingerprints: atomic writes, sha256 hashes, the git commit.

Writing files so that a crash, a kill or a full disk never leaves half of one behind:

Every output of bardlet goes through `write_bytes_atomic`: the data goes to a temporary file
in the same folder, is flushed to disk (fsync), and only then renamed over the target. A
rename within one filesystem is atomic, so readers see the old file or the complete new one,
never a mix; when anything fails the temporary file is removed and the old file is untouched.

Standard library only, so any layer may use it (the runtime, the stages, the tokenizer).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path`, for code that writes the file itself (pyarrow,
    safetensors, onnx): when the block ends, the file is flushed to disk and renamed over
    `path`; if the block raises, the temporary file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary readable files
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` atomically (the folder is created if needed)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data: Any) -> None:
    """JSON with sorted keys and a final newline: the same data always gives the same bytes."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_csv_atomic(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Rows of one dict each; the first row's keys are the header."""
    rows = list(rows)
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


@contextmanager
def new_folder(target: str | Path) -> Iterator[Path]:
    """Build a folder output whole, then swap it in: the block writes into an empty folder
    beside `target`; when it ends without error that folder replaces `target` (the old one is
    moved aside, then deleted), and when it raises the new folder is deleted and `target` is
    untouched. Readers see the old folder or the new one, never a mix."""
    target = Path(target)
    staging = target.with_name(f".{target.name}.staging")
    previous = target.with_name(f".{target.name}.previous")
    for leftover in (staging, previous):  # from a run that was killed mid-swap
        shutil.rmtree(leftover, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        os.replace(target, previous)
    os.replace(staging, target)
    shutil.rmtree(previous, ignore_errors=True)


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks (shards, downloads)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(value: Any) -> str:
    """The sha256 of `value` as canonical JSON: key order and formatting do not count (a
    params.yaml with other comments or key order hashes the same)."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def output(*command: str, cwd: str | Path | None = None) -> str | None:
    """What a command prints, stripped; None if it is missing, fails or prints nothing."""
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None
