"""Markdown for the report, the model card and the bench scripts: numbers, tables, code fences.

Standard library only, so anything can import it cheaply.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any


def fmt(value: Any, digits: int = 4) -> str:
    """Integers with thousands separators, floats to `digits` significant places (whole
    numbers from 1,000 up), tiny or huge ones in scientific notation; None is n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return f"{int(value):,}"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e9):
            return f"{value:.{digits - 1}e}"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}g}"
    return str(value)


def fmt_bytes(n: Any) -> str:
    """A size in B, KB, MB or GB (powers of 1000); n/a if it is not a number."""
    if not isinstance(n, int | float):
        return "n/a"
    power = min(3, int(math.log10(abs(n)) // 3)) if abs(n) >= 1000 else 0
    return f"{n / 1000**power:.{min(power, 1)}f} {('B', 'KB', 'MB', 'GB')[power]}"


def table(header: str | Sequence[str], rows: Sequence[Sequence[Any]], align: str = "l") -> str:
    """A Markdown table. `header`: the column names, or one string of them between `|`s
    ("step | seconds"). Cells are formatted with `fmt` unless already strings; a `|` inside
    one is escaped. `align` has a letter per column, `l` (left) or `r` (right, for numbers),
    and its last letter goes for the columns after it: "lr" = the first left, the rest right."""
    if isinstance(header, str):
        header = [name.strip() for name in header.split("|")]
    cells = [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    kinds = (align + align[-1] * len(header))[: len(header)]  # the last letter repeats
    rule = "".join(" ---: |" if kind == "r" else " --- |" for kind in kinds)
    lines = ["| " + " | ".join(header) + " |", "|" + rule]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines)


def fenced(text: str) -> str:
    """`text` in a code fence longer than any run of backticks inside it."""
    ticks = "`" * max([3, *(len(run) + 1 for run in re.findall("`+", text))])
    return f"{ticks}text\n{text}\n{ticks}"
