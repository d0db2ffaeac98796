"""What `edge-agent probe` prints of one source: a title, a table of one row per channel, notes,
or the one line that says why the source could not be read at all.

Pure: strings in, lines out; never does I/O and never reads a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

GOOD = "GOOD"


@dataclass
class Report:
    """One source's round: `error` (one line) when it could not be reached or read, else its
    rows under `columns`; `failed` counts the rows that did not read good."""

    title: str
    columns: tuple[str, ...] = ()
    rows: list[tuple[str, ...]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str = ""
    failed: int = 0

    @property
    def ok(self) -> bool:
        return not self.error and not self.failed


def render(report: Report) -> list[str]:
    """The report as terminal lines: the title, the table with aligned columns (two spaces
    apart, no trailing blanks), then the notes; or the error line alone."""
    if report.error:
        return [report.error]
    lines = [report.title]
    if report.rows:
        lines += ["  " + line for line in table(report.columns, report.rows)]
    lines += [f"  {note}" for note in report.notes]
    return lines


def table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """A header and rows, each column as wide as its widest cell; a column empty in every row
    is left out (a source without control roles shows no `control` column)."""
    keep = [i for i in range(len(columns)) if any(row[i] for row in rows)]
    header = tuple(columns[i] for i in keep)
    body = [tuple(row[i] for i in keep) for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(header, *body, strict=True)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (header, *body)
    ]


def number(value: float, significant: int = 10) -> str:
    """A physical value as a person reads it: `significant` digits at most (10 keeps a 32-bit
    count exact and drops the scale's binary noise, 123.45600000000002 -> 123.456; a float32
    holds 7), an exponent only past them; "nan"/"inf" as they are."""
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    return f"{value:.{significant}g}"


def with_unit(text: str, unit: str) -> str:
    return f"{text} {unit}" if unit else text


def bad(why: str) -> str:
    """The quality cell of a row that did not read good."""
    return f"BAD: {why}"
