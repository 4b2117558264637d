"""Your documents as text with places: what `bardlet index` reads before splitting.

Each reader turns a file's bytes into blocks of (place, text) pieces, where the place is what
a citation names: a line in a text, Markdown or HTML file, a row in a CSV file (a row is a
passage of its own, its header beside each value), a page in a PDF. A file that cannot give
text (binary, not UTF-8, an encrypted or image-only PDF, too big) raises `Skipped` with the
reason, and the index counts it and goes on.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

SUFFIXES = {".txt": "line", ".md": "line", ".csv": "row", ".pdf": "page", ".html": "line"}
SUFFIXES[".htm"] = "line"

Piece = tuple[int, str]  # (its line, row or page number; its text)
Block = list[Piece]  # text that may be split into passages; blocks are never joined


class Skipped(Exception):
    """This file gives no text; the message says why (counted by reason in the report)."""


def unit_of(path: Path) -> str:
    """What a number in a citation of this file counts: line, row or page."""
    return SUFFIXES.get(path.suffix.lower(), "line")


def read_blocks(path: Path, data: bytes) -> list[Block]:
    """The text of a file's bytes, by its suffix."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise Skipped(f"unsupported type {suffix or '(no suffix)'}")
    if suffix == ".pdf":
        return _pdf(data)
    if b"\0" in data[:8192]:
        raise Skipped("binary, not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Skipped("not UTF-8 text (convert it: iconv -t utf-8)") from None
    if suffix == ".csv":
        return _csv(text)
    if suffix in (".html", ".htm"):
        return [_html(text)]
    return [[(number, line) for number, line in enumerate(text.splitlines(), 1)]]


def _csv(text: str) -> list[Block]:
    """A row a block: "column: value" for each column, so a passage keeps its header."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        return []
    rows = []
    for row in reader:
        fields = [f"{name}: {value}" for name, value in zip(header, row, strict=False) if value]
        if fields:
            rows.append([(reader.line_num, "; ".join(fields))])
    return rows


class _Text(HTMLParser):
    """The visible text of an HTML page with its line numbers (scripts and styles left out)."""

    HIDDEN = {"script", "style", "head", "template", "noscript"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: Block = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN and self.hidden:
            self.hidden -= 1

    def handle_data(self, data: str) -> None:
        line = self.getpos()[0]
        for offset, text in enumerate(data.split("\n")):
            if text.strip() and not self.hidden:
                self.pieces.append((line + offset, " ".join(text.split())))


def _html(text: str) -> Block:
    parser = _Text()
    parser.feed(text)
    parser.close()
    return parser.pieces


def _pdf(data: bytes) -> list[Block]:
    from pypdf import PdfReader  # here: only PDFs need it
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise Skipped("encrypted PDF (save a copy without a password)")
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError) as error:
        raise Skipped(f"unreadable PDF ({type(error).__name__})") from None
    if not any(text.strip() for text in pages):
        raise Skipped("no text in the PDF (scanned images? run OCR first)")
    return [[(number, text)] for number, text in enumerate(pages, 1) if text.strip()]


def split_passages(
    block: Block, count_tokens: Callable[[str], int], size: int, overlap: int
) -> list[tuple[int, int, str]]:
    """(first place, last place, text) passages of at most `size` tokens (a word longer than
    that is a passage of its own), each starting with about `overlap` tokens of the previous
    one, so a sentence cut at a border is whole in one of them."""
    words: list[tuple[int, str, int]] = []  # (place, the word with its space before, tokens)
    for place, text in block:
        for i, word in enumerate(text.split()):
            spaced = (" " if i else "\n") + word
            words.append((place, spaced, count_tokens(spaced)))
    passages: list[tuple[int, int, str]] = []
    start = 0
    while start < len(words):
        end, used = start, 0
        while end < len(words) and (used + words[end][2] <= size or end == start):
            used += words[end][2]
            end += 1
        text = "".join(word for _, word, _ in words[start:end]).strip()
        passages.append((words[start][0], words[end - 1][0], text))
        if end == len(words):
            break
        back, kept = end, 0  # the next passage starts `overlap` tokens back, and moves on
        while back - 1 > start and kept + words[back - 1][2] <= overlap:
            back -= 1
            kept += words[back][2]
        start = back
    return passages
