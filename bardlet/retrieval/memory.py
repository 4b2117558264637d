"""A chat's memory: every turn of every conversation in one SQLite file, searchable.

`bardlet chat --memory FILE` stores each turn as it happens, one transaction a turn, so Ctrl-C
or a crash loses nothing said before it. When a conversation outgrows the model's context,
the oldest turns leave the prompt, but not the memory: the stored turns that best match the
new message (BM25 over FTS5, as for documents), from this conversation and earlier ones, are
put back into the prompt instead.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from bardlet.retrieval.index import match_query

SCHEMA = """
CREATE VIRTUAL TABLE IF NOT EXISTS turns USING fts5(
    content, session UNINDEXED, role UNINDEXED, tokenize = 'porter unicode61'
);
"""


@dataclass(frozen=True)
class Turn:
    id: int
    session: str
    role: str
    content: str


def new_session() -> str:
    """A conversation's id: when it started, and a few random letters (sorts by time)."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


class Memory:
    """The turns stored in `path` (created if missing); `session` is this conversation's id."""

    def __init__(self, path: str | Path, session: str | None = None) -> None:
        self.path = Path(path)
        try:
            self.connection = sqlite3.connect(self.path, check_same_thread=False)
            self.connection.executescript(SCHEMA)
        except sqlite3.DatabaseError as error:
            raise ValueError(f"{self.path}: cannot use it as a memory file ({error})") from None
        self.session = session or new_session()
        self.lock = threading.Lock()  # the server stores and searches from several threads

    def add(self, role: str, content: str, session: str | None = None) -> int:
        """Store a turn of this session (or `session`) now, committed before this returns."""
        with self.lock, self.connection:
            cursor = self.connection.execute(
                "INSERT INTO turns (content, session, role) VALUES (?, ?, ?)",
                (content, session or self.session, role),
            )
        return int(cursor.lastrowid or 0)

    def recall(
        self,
        text: str,
        k: int,
        leave_out: Collection[tuple[str, str]] = (),
        only_session: str | None = None,
    ) -> list[Turn]:
        """The `k` stored turns that best match `text`, best first, except those whose
        (role, content) is in `leave_out` (the turns the prompt holds anyway); from every
        session, or `only_session` (the server: one client's conversation, never another's)."""
        query = match_query(text)
        if not query or k <= 0:
            return []
        where = "turns MATCH ?" + (" AND session = ?" if only_session else "")
        values = (query, only_session) if only_session else (query,)
        with self.lock:
            rows = self.connection.execute(
                f"SELECT rowid, session, role, content FROM turns WHERE {where} "
                "ORDER BY bm25(turns) LIMIT ?",
                (*values, k + len(leave_out)),
            ).fetchall()
        turns = [Turn(*row) for row in rows if (row[2], row[3]) not in leave_out]
        return turns[:k]

    def sessions(self) -> list[tuple[str, int, str]]:
        """(session, its number of turns, its first message), oldest first."""
        rows = self.connection.execute(
            "SELECT session, count(*), min(rowid) FROM turns GROUP BY session ORDER BY min(rowid)"
        ).fetchall()
        first = dict(self.connection.execute(
            "SELECT rowid, content FROM turns WHERE rowid IN (SELECT min(rowid) FROM turns GROUP BY session)"
        ).fetchall())  # fmt: skip
        return [(session, count, first[row]) for session, count, row in rows]

    def turns(self, session: str | None = None) -> list[Turn]:
        """Every stored turn of `session` (default: this one), in the order said."""
        rows = self.connection.execute(
            "SELECT rowid, session, role, content FROM turns WHERE session = ? ORDER BY rowid",
            (session or self.session,),
        ).fetchall()
        return [Turn(*row) for row in rows]

    def forget(self, session: str | None = None) -> int:
        """Delete one session's turns, or every turn (session "all"); how many went."""
        with self.connection:
            if session == "all":
                cursor = self.connection.execute("DELETE FROM turns")
            else:
                cursor = self.connection.execute(
                    "DELETE FROM turns WHERE session = ?", (session or self.session,)
                )
        return cursor.rowcount

    def close(self) -> None:
        self.connection.close()
