"""Text to pretrain on: your files in, train and validation text out, streamed.

A source is a file, a folder (every file in it, recursively, in name order) or a glob; its
files are read as documents, never all at once:

- `text` (`.txt`, `.md`, anything else under `auto`): the whole file is one document, read in
  pieces of CHUNK bytes;
- `jsonl`: one document per line, the string under `column` ("text" unless set);
- `parquet`: one document per row of `column`, read a record batch at a time.

A source's text is its documents joined by a blank line. The split is one rule for every
source: the last `val_fraction` of that text's bytes is validation, cut at a character
boundary (for Tiny Shakespeare, one file, that is nanoGPT's split). Two passes over the files
(count, then write) keep memory flat whatever the corpus size.

`paragraphs` reads the prepared text back for the shard stage the same way: a piece at a time.
"""

from __future__ import annotations

import codecs
import glob
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from bardlet.files import atomic_path

CHUNK = 1 << 20  # bytes read at a time from a text file
MAX_PIECE = 1 << 20  # a paragraph longer than this ends at its next line end anyway
SEPARATOR = b"\n\n"  # between two documents of a source
FORMATS = ("text", "jsonl", "parquet")


class DataFileError(ValueError):
    """A data file is not what it should be; the message names the file, the line and the fix."""


def source_files(path: str | Path) -> list[Path]:
    """The files a source names: a file, every file in a folder (dot files aside), or the
    files a glob matches; in name order. FileNotFoundError if that is none."""
    target = Path(path)
    if target.is_file():
        return [target]
    if target.is_dir():
        found = [p for p in target.rglob("*") if p.is_file()]
    else:
        found = [Path(p) for p in glob.glob(str(target), recursive=True) if Path(p).is_file()]
    files = sorted(p for p in found if not any(part.startswith(".") for part in p.parts[-1:]))
    if not files:
        raise FileNotFoundError(
            f"{path}: no such file, or no files in it: check the source's `path` in params.yaml"
        )
    return files


def file_format(path: Path, fmt: str) -> str:
    """`fmt`, or under "auto" the format the file's ending says."""
    if fmt != "auto":
        return fmt
    return {".jsonl": "jsonl", ".parquet": "parquet"}.get(path.suffix.lower(), "text")


def write_split_text(
    files: list[Path], fmt: str, column: str, val_fraction: float, folder: Path
) -> dict[str, int]:
    """folder/train.txt and folder/val.txt from a source (see the module docstring); returns
    {"files", "documents", "train_bytes", "val_bytes"}. Each file is written atomically."""
    counted = _Count()
    total = sum(len(data) for data in _joined(files, fmt, column, counted))
    if total == 0:
        raise DataFileError(f"{files[0]}: the source has no text (empty files or records)")
    cut = int(total * (1 - val_fraction))
    written = 0
    with (
        atomic_path(folder / "train.txt") as train_path,
        atomic_path(folder / "val.txt") as val_path,
        open(train_path, "wb") as train,
        open(val_path, "wb") as val,
    ):
        out: BinaryIO = train
        for data in _joined(files, fmt, column, _Count()):
            if out is train and written + len(data) > cut:
                at = max(cut - written, 0)
                while at < len(data) and (data[at] & 0xC0) == 0x80:
                    at += 1  # never cut inside a character
                if at < len(data):
                    train.write(data[:at])
                    written += at
                    out, data = val, data[at:]
            out.write(data)
            if out is train:
                written += len(data)
    return {
        "files": len(files),
        "documents": counted.documents,
        "train_bytes": written,
        "val_bytes": total - written,
    }


class _Count:
    documents = 0


def _joined(files: list[Path], fmt: str, column: str, count: _Count) -> Iterator[bytes]:
    """A source's text as bytes: documents joined by SEPARATOR, each checked to be UTF-8."""
    first = True
    for path in files:
        kind = file_format(path, fmt)
        if kind not in FORMATS:
            raise DataFileError(f"{path}: unknown format {kind!r} (use one of {FORMATS})")
        if kind == "text":
            if path.stat().st_size == 0:
                continue
            if not first:
                yield SEPARATOR
            first = False
            count.documents += 1
            yield from _text_chunks(path)
            continue
        records = _jsonl_texts(path, column) if kind == "jsonl" else _parquet_texts(path, column)
        for where, text in records:
            if not text:
                continue
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError:
                raise DataFileError(
                    f"{where}: the text holds a lone surrogate (an escape such as \\ud800 "
                    "that is not a character): fix or remove that record"
                ) from None
            if not first:
                yield SEPARATOR
            first = False
            count.documents += 1
            yield data


def _text_chunks(path: Path) -> Iterator[bytes]:
    """A text file in CHUNK-byte pieces, checked to be UTF-8 as it goes."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                raise _not_utf8(path, offset + error.start) from None
            offset += len(chunk)
            yield chunk
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise _not_utf8(path, offset) from None


def _not_utf8(path: Path, byte: int) -> DataFileError:
    return DataFileError(f"{path}: not UTF-8 text at byte {byte}: save the file as UTF-8")


def json_lines(path: Path) -> Iterator[tuple[str, Any]]:
    """("file, line N", record) for each non-blank line of a JSON lines file, one at a time;
    a line that is not JSON or not UTF-8 is a DataFileError naming it."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path}, line {number}"
            try:
                record = json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
            except UnicodeDecodeError as error:
                raise DataFileError(f"{where}: not UTF-8 text (byte {error.start})") from None
            except json.JSONDecodeError as error:
                raise DataFileError(
                    f"{where}: not JSON ({error.msg}); a JSON lines file holds one object a line"
                ) from None
            yield where, record


def _jsonl_texts(path: Path, column: str) -> Iterator[tuple[str, str]]:
    """("file, line N", text) for each record of a JSON lines file."""
    for where, record in json_lines(path):
        text = record.get(column) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise DataFileError(
                f'{where}: expected an object with a string under "{column}": set the '
                "source's `column` to the key that holds the text"
            )
        yield where, text


def _parquet_texts(path: Path, column: str) -> Iterator[tuple[str, str]]:
    """("file, row N", text) for each row of a Parquet file's `column`, a batch at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise DataFileError(f"{path}: not a readable Parquet file ({error})") from None
    names = parquet.schema_arrow.names
    if column not in names:
        raise DataFileError(
            f"{path}: no column {column!r} (it has {names}): set the source's `column`"
        )
    if not pa.types.is_string(parquet.schema_arrow.field(column).type) and not (
        pa.types.is_large_string(parquet.schema_arrow.field(column).type)
    ):
        raise DataFileError(f"{path}: column {column!r} does not hold text")
    row = 0
    for batch in parquet.iter_batches(columns=[column], batch_size=1024):
        for text in batch.column(0).to_pylist():
            row += 1
            if text is not None:
                yield f"{path}, row {row}", text


def paragraphs(path: Path) -> Iterator[str]:
    """The text of a file in pieces that end after a blank line (or at the first line end past
    MAX_PIECE bytes), read a line at a time. The pieces concatenate back to the file, and for
    paragraphs shorter than MAX_PIECE they are `re.split(r"(?<=\\n\\n)", text)`'s."""
    piece: list[bytes] = []
    size = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f):
            piece.append(line)
            size += len(line)
            if (line == b"\n" and number > 0) or size > MAX_PIECE:
                yield b"".join(piece).decode("utf-8")
                piece, size = [], 0
    if piece:
        yield b"".join(piece).decode("utf-8")
