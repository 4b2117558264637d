"""Writing files so that a crash, a kill or a full disk never leaves half of one behind.

Every output of bardlet goes through `write_bytes_atomic`: the data goes to a temporary file
in the same folder, is flushed to disk (fsync), and only then renamed over the target. A
rename within one filesystem is atomic, so readers see the old file or the complete new one,
never a mix; when anything fails the temporary file is removed and the old file is untouched.

Standard library only, so any layer may use it (the runtime, the stages, the tokenizer).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` atomically (the folder is created if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary readable files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
