"""A search index of your documents: one SQLite file, full-text search with BM25 ranking.

`build_index` splits every readable file into passages of a few dozen tokens (with overlap)
and stores them in an FTS5 table; run it again and only files whose content changed (sha256)
are read again, files that are gone are dropped, and the whole update is one transaction: a
crash or Ctrl-C leaves the index as it was. `Index.search` returns the passages that best
match a message, each with the file and lines (rows, pages) a citation names.

No server and no embedding model: SQLite's FTS5 (in Python's standard library) ranks by
BM25, which is what a model this small can use well (BENCHMARKS.md measures both recall and
whether the model makes use of what it is given).
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bardlet.retrieval.documents import SUFFIXES, Skipped, read_blocks, split_passages, unit_of

VERSION = "1"
MAX_FILE_BYTES = 20 * 1024 * 1024  # a bigger file is skipped (say so with --max-mb)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, unit TEXT NOT NULL, passages INTEGER NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS passages USING fts5(
    text, path UNINDEXED, start UNINDEXED, end UNINDEXED, tokenize = 'porter unicode61'
);
"""


@dataclass(frozen=True)
class Passage:
    """A piece of a document: its text and where it is."""

    path: str
    unit: str  # line, row or page
    start: int
    end: int
    text: str
    score: float = 0.0  # BM25 (higher is a better match)

    def place(self) -> str:
        """What a citation shows: docs/walkthrough.md:120-128, data.csv row 5, a.pdf page 3."""
        if self.unit == "line":
            lines = f"{self.start}" if self.start == self.end else f"{self.start}-{self.end}"
            return f"{self.path}:{lines}"
        numbers = f"{self.start}" if self.start == self.end else f"{self.start}-{self.end}"
        return f"{self.path} {self.unit} {numbers}"


@dataclass
class IndexReport:
    """What a build did, file by file."""

    added: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    passages: int = 0  # in the index after the build
    bytes_read: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> files

    def summary(self) -> str:
        done = (
            f"{self.passages:,} passages; files: {self.added} added, {self.changed} changed, "
            f"{self.unchanged} unchanged, {self.removed} removed"
        )
        for reason, paths in sorted(self.skipped.items()):
            done += f"\n  skipped {len(paths)} ({reason}): {', '.join(paths[:3])}"
            done += " ..." if len(paths) > 3 else ""
        return done


def files_under(paths: Iterable[str | Path]) -> list[Path]:
    """The files to index: each file given, and every file in each folder given (sorted;
    hidden ones left out). A path that does not exist is an error that names it."""
    found: list[Path] = []
    for given in map(Path, paths):
        if given.is_file():
            found.append(given)
        elif given.is_dir():
            inside = sorted(p for p in given.rglob("*") if p.is_file())
            found += [p for p in inside if not any(part.startswith(".") for part in p.parts)]
        else:
            raise FileNotFoundError(f"{given}: no such file or folder to index")
    return list(dict.fromkeys(found))


def connect(path: str | Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path)
    connection.executescript(SCHEMA)
    return connection


def build_index(
    out: str | Path,
    paths: Sequence[str | Path],
    count_tokens: Callable[[str], int],
    tokenizer_hash: str,
    passage_tokens: int = 48,
    overlap: int = 8,
    max_bytes: int = MAX_FILE_BYTES,
    fresh: bool = False,
) -> IndexReport:
    """Bring the index at `out` up to date with the files under `paths` (see the module doc).
    Passages are at most `passage_tokens` tokens as `count_tokens` counts them. `fresh`: build
    a new index beside `out` and rename it into place (the index stage: never half a file)."""
    if fresh:
        out = Path(out)
        building = out.with_name(f".{out.name}.building")
        building.unlink(missing_ok=True)
        try:
            report = build_index(
                building, paths, count_tokens, tokenizer_hash, passage_tokens, overlap, max_bytes
            )
            os.replace(building, out)
        finally:
            building.unlink(missing_ok=True)
        return report
    if not 0 <= overlap < passage_tokens:
        raise ValueError(f"overlap ({overlap}) must be at least 0 and below passage_tokens")
    files = files_under(paths)
    report = IndexReport()
    settings = {"version": VERSION, "tokenizer": tokenizer_hash,
                "passage_tokens": str(passage_tokens), "overlap": str(overlap)}  # fmt: skip
    counted: dict[str, int] = {}

    def cached_count(text: str) -> int:  # documents repeat their words: count each once
        if text not in counted:
            counted[text] = count_tokens(text)
        return counted[text]

    connection = connect(out)
    try:
        with connection:  # one transaction: all of it, or (on any error) none of it
            stored = dict(connection.execute("SELECT key, value FROM meta"))
            if stored and stored != settings:  # other passages: start afresh
                connection.execute("DELETE FROM files")
                connection.execute("DELETE FROM passages")
            connection.executemany("REPLACE INTO meta VALUES (?, ?)", settings.items())
            known = dict(connection.execute("SELECT path, sha256 FROM files"))
            wanted = {p.as_posix() for p in files}
            for gone in sorted(set(known) - wanted):
                _forget(connection, gone)
                report.removed += 1
            for path in files:
                name = path.as_posix()
                data = path.read_bytes() if path.stat().st_size <= max_bytes else None
                digest = hashlib.sha256(data).hexdigest() if data is not None else ""
                if data is not None and known.get(name) == digest:
                    report.unchanged += 1
                    continue
                try:
                    if data is None:
                        raise Skipped(f"over {max_bytes / 1e6:g} MB")
                    blocks = read_blocks(path, data)
                except Skipped as why:  # counted; an older version of it leaves the index
                    report.skipped.setdefault(str(why), []).append(name)
                    if name in known:
                        _forget(connection, name)
                        report.removed += 1  # said: the summary must not read "0 removed"
                    continue
                report.bytes_read += len(data)
                rows = [
                    (text, name, start, end)
                    for block in blocks
                    for start, end, text in split_passages(
                        block, cached_count, passage_tokens, overlap
                    )
                ]
                if name in known:
                    _forget(connection, name)
                    report.changed += 1
                else:
                    report.added += 1
                connection.executemany("INSERT INTO passages VALUES (?, ?, ?, ?)", rows)
                connection.execute(
                    "INSERT INTO files VALUES (?, ?, ?, ?)",
                    (name, digest, unit_of(path), len(rows)),
                )
            report.passages = connection.execute("SELECT count(*) FROM passages").fetchone()[0]
    finally:
        connection.close()
    return report


def _forget(connection: sqlite3.Connection, name: str) -> None:
    connection.execute("DELETE FROM passages WHERE path = ?", (name,))
    connection.execute("DELETE FROM files WHERE path = ?", (name,))


# Words that say little about what a question is about: left out of queries, so that "how do
# I resume training?" is matched on "resume training", not on every "how do I" in the docs.
COMMON_WORDS = (
    "a an and are as at be but by can could do does for from had has have how i if in into is "
    "it its me my no not of on or our so than that the their them then there these they this "
    "to was we were what when where which who why will with would you your"
)
STOPWORDS = frozenset(COMMON_WORDS.split())


def match_query(text: str, most: int = 32) -> str:
    """An FTS5 query from free text: any of its words but the commonest (each quoted, so no
    word is read as an operator), the rarer ones counting more through BM25."""
    words = [w for w in dict.fromkeys(re.findall(r"\w+", text.lower())) if w not in STOPWORDS]
    return " OR ".join(f'"{word}"' for word in words[:most])


class Index:
    """An index built by `build_index`, opened read-only for searching."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no index there; build one with `bardlet index DOCS... --out {path}`"
            )
        self.path = path
        self.connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        try:
            meta = dict(self.connection.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError as error:
            raise ValueError(f"{path} is not a bardlet index ({error})") from None
        if meta.get("version") != VERSION:
            raise ValueError(f"{path} was built by another version: build it again")
        self.units = dict(self.connection.execute("SELECT path, unit FROM files"))
        self.lock = threading.Lock()  # one connection, searched from the server's threads

    def __len__(self) -> int:
        return int(self.connection.execute("SELECT count(*) FROM passages").fetchone()[0])

    def search(self, text: str, k: int = 3) -> list[Passage]:
        """The `k` passages that best match `text` (BM25), best first; none if no word does."""
        query = match_query(text)
        if not query or k <= 0:
            return []
        with self.lock:
            rows = self.connection.execute(
                "SELECT path, start, end, text, bm25(passages) AS rank FROM passages "
                "WHERE passages MATCH ? ORDER BY rank LIMIT ?",
                (query, k),
            ).fetchall()
        return [
            Passage(path, self.units.get(path, "line"), start, end, text, -rank)
            for path, start, end, text, rank in rows
        ]

    def close(self) -> None:
        self.connection.close()


__all__ = ["SUFFIXES", "Index", "IndexReport", "Passage", "build_index"]
