"""Teach-in, as Heidenhain AFC does it: the first cut with a tool runs at the programmed feed
while the load is recorded; later cuts with that tool aim at a fraction of the learned peak.

`TeachIn` is the recorder: sans-IO, it reads no clock and touches no file; the caller passes
every value in. `TeachStore` keeps every tool's record in one human-readable JSON file, written
atomically (a crash leaves the old file or the new one, never half of either). A file it cannot
read is an error the operator resolves: it is never silently replaced.
Never writes to the machine.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..durable import replace_atomically

#: The teach file's format version; a file of another version is refused, not guessed at.
TEACH_FILE_VERSION = 1
#: Digits of a tool number: a controller reports it in at most a 32-bit register pair
#: (4294967295). Longer is refused before int() (Python refuses over 4300 digits).
TOOL_DIGITS = 10
#: How much of a key or value from the file an error line quotes.
_QUOTE = 60

#: The target stays this far (load percentage points) above the idle load; see `target_pct`.
IDLE_MARGIN_PCT = 5.0
#: The target stays at or below this share of the hard limit; see `target_pct`.
HARD_LIMIT_SHARE = 0.9


class TeachError(ValueError):
    """The teach file cannot be used: one line naming the file and what is wrong."""


@dataclass(frozen=True)
class ToolRecord:
    """What one teach-in cut learned about one tool."""

    tool: int
    peak_load_pct: float  # highest (filtered) spindle load seen while cutting
    idle_load_pct: float  # spindle load turning in air, as given by the caller
    cut_blocks: tuple[int, ...]  # sorted block numbers in which the tool cut
    program: int
    samples: int  # cutting samples the record is made of
    learned_at: str  # ISO 8601 UTC, given by the caller

    def target_pct(self, fraction: float, hard_limit_pct: float) -> float:
        """The load to hold for later cuts: `fraction` x the learned peak, with two guards.

        Never above 90 % of the hard limit: the loop holds its target with some ripple, and a
        target at the limit would trip the overload fault on ordinary ripple (a tool taught
        at a heavy peak would otherwise be stopped by its own target).
        Never below idle + 5 %: the load cannot fall below what the spindle draws turning in
        air however slow the feed, so a target near idle (a teach cut that barely touched
        the material) is one the loop chases by cutting the override to its minimum forever,
        and it sits inside the band the entry/exit detection treats as air.
        When the two guards cross (a hard limit below idle + 5 %), the hard limit wins.
        """
        ceiling = HARD_LIMIT_SHARE * hard_limit_pct
        floor = self.idle_load_pct + IDLE_MARGIN_PCT
        return min(ceiling, max(floor, fraction * self.peak_load_pct))


class TeachIn:
    """Records one tool's teach-in cut; `finish` turns it into a `ToolRecord`."""

    def __init__(self, tool: int, program: int, idle_load_pct: float):
        if not math.isfinite(idle_load_pct):
            raise ValueError(f"idle_load_pct must be finite, got {idle_load_pct!r}")
        self.tool = tool
        self.program = program
        self.idle_load_pct = float(idle_load_pct)
        self.peak_load_pct = -math.inf
        self.samples = 0  # cutting samples taken
        self.ignored = 0  # non-finite loads dropped (a sensor glitch is not a peak)
        self._blocks: set[int] = set()

    def observe(self, load_pct: float, block: int, cutting: bool) -> None:
        """One sample: the (filtered) load, the block it came from, and whether the tool cut."""
        if not math.isfinite(load_pct):
            self.ignored += 1
            return
        if not cutting:
            return
        self.samples += 1
        if load_pct > self.peak_load_pct:
            self.peak_load_pct = float(load_pct)
        self._blocks.add(block)

    def finish(self, learned_at: str, min_samples: int = 10) -> ToolRecord | None:
        """The record, or None when fewer than `min_samples` cutting samples were taken.

        An aborted run or one that only cut air teaches nothing: the tool stays untaught and
        its next cut teaches again. Ten samples is 0.1 s at the loop's default 100 Hz.
        """
        if self.samples < max(min_samples, 1):
            return None
        return ToolRecord(
            tool=self.tool,
            peak_load_pct=self.peak_load_pct,
            idle_load_pct=self.idle_load_pct,
            cut_blocks=tuple(sorted(self._blocks)),
            program=self.program,
            samples=self.samples,
            learned_at=learned_at,
        )


#: A record's fields in the file, in the order written, with their JSON kinds.
_FIELDS: dict[str, type] = {
    "peak_load_pct": float,
    "idle_load_pct": float,
    "cut_blocks": list,
    "program": int,
    "samples": int,
    "learned_at": str,
}


def to_json(records: dict[int, ToolRecord]) -> str:
    """The teach file's text for these records: tools in numeric order, a field a line.

    Written by hand rather than by `json.dumps(indent=...)` so a tool's cut blocks stay on
    one line however many there are.
    """
    entries = []
    for tool in sorted(records):
        record = records[tool]
        if record.tool != tool:
            raise ValueError(f"record of tool {record.tool} filed under tool {tool}")
        fields = {
            "peak_load_pct": float(record.peak_load_pct),
            "idle_load_pct": float(record.idle_load_pct),
            "cut_blocks": list(record.cut_blocks),
            "program": record.program,
            "samples": record.samples,
            "learned_at": record.learned_at,
        }
        try:
            body = ",\n".join(
                f"      {json.dumps(k)}: {json.dumps(v, allow_nan=False)}"
                for k, v in fields.items()
            )
        except ValueError:
            raise ValueError(f"tool {tool}'s record holds a non-finite load") from None
        entries.append(f'    "{tool}": {{\n{body}\n    }}')
    tools = "{\n" + ",\n".join(entries) + "\n  }" if entries else "{}"
    return f'{{\n  "version": {TEACH_FILE_VERSION},\n  "tools": {tools}\n}}\n'


class TeachStore:
    """Every tool's learned record, in one JSON file (``[control] teach_file``).

    ``{"version": 1, "tools": {"<tool>": {record without the tool}}}``. Both the running agent
    (after a teach cut) and the CLI (list, reset, export) use it; `changed_since` lets the
    agent notice the CLI's edits without reading the file every cycle.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # -- reading --------------------------------------------------------------------

    def load(self) -> dict[int, ToolRecord]:
        """Every tool's record; {} when the file does not exist (nothing taught yet)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise TeachError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise TeachError(f"{self.path}: not a teach file: not UTF-8 text") from None
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, a 5000-digit integer
            raise TeachError(f"{self.path}: not a teach file: invalid JSON: {exc}") from None
        return self._records(data)

    def changed_since(self, stamp: object) -> tuple[bool, object]:
        """Whether the file differs from when `stamp` was taken; (changed, the new stamp).

        Pass None the first time (a file that exists then counts as changed). Cheap: one
        stat, no read. The inode is in the stamp because every save replaces the file (a
        new inode) and so is noticed even within the file system's mtime granularity. Take
        the stamp before loading: an edit between the two is then seen at the next check.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            new: object = None
        except OSError as exc:
            raise TeachError(f"{self.path}: cannot stat: {exc.strerror or exc}") from None
        else:
            new = (st.st_ino, st.st_mtime_ns, st.st_size)
        return new != stamp, new

    # -- writing --------------------------------------------------------------------

    def save(self, records: dict[int, ToolRecord]) -> None:
        """Replace the file with these records, atomically and durably (`durable.py`): on
        any failure the old file is untouched."""
        try:
            text = to_json(records)
        except ValueError as exc:
            raise TeachError(f"{self.path}: cannot save: {exc}") from None
        try:
            # 0o644: the agent's user writes it, the CLI and the operator may read it.
            replace_atomically(self.path, text, 0o644)
        except OSError as exc:
            raise TeachError(f"{self.path}: cannot save: {exc.strerror or exc}") from None

    def put(self, record: ToolRecord) -> None:
        """Store one tool's record, replacing any earlier one (a corrupt file: TeachError)."""
        records = self.load()
        records[record.tool] = record
        self.save(records)

    def reset(self, tool: int) -> bool:
        """Forget one tool, so its next cut teaches again; False if it was not taught."""
        records = self.load()
        if records.pop(tool, None) is None:
            return False
        self.save(records)
        return True

    # -- validation -----------------------------------------------------------------

    def _records(self, data: Any) -> dict[int, ToolRecord]:
        if not isinstance(data, dict):
            raise TeachError(f"{self.path}: not a teach file: top level must be an object")
        version = data.get("version")
        if _is_int(version) and version > TEACH_FILE_VERSION:
            raise TeachError(
                f"{self.path}: teach file version {version} is newer than this agent's "
                f"({TEACH_FILE_VERSION}); upgrade the agent"
            )
        if not _is_int(version) or version != TEACH_FILE_VERSION:
            raise TeachError(
                f"{self.path}: not a teach file of version {TEACH_FILE_VERSION} "
                f"(version: {_cut(json.dumps(version))})"
            )
        unknown = sorted(set(data) - {"version", "tools"})
        if unknown:
            raise TeachError(
                f"{self.path}: {_quoted(unknown[0])}: unknown key (allowed: tools, version)"
            )
        tools = data.get("tools")
        if not isinstance(tools, dict):
            raise TeachError(f"{self.path}: tools: must be an object of tool number -> record")
        return {tool: record for tool, record in map(self._record, tools.items())}

    def _record(self, item: tuple[str, Any]) -> tuple[int, ToolRecord]:
        key, raw = item
        where = f"{self.path}: tools.{_quoted(key)}"
        if not (
            key.isascii() and key.isdigit() and len(key) <= TOOL_DIGITS and str(int(key)) == key
        ):
            raise TeachError(f"{where}: the key must be a tool number (0, 1, 2, ...)")
        if not isinstance(raw, dict):
            raise TeachError(f"{where}: must be an object, got {_kind(raw)}")
        for name in raw:
            if name not in _FIELDS:
                raise TeachError(
                    f"{where}.{_quoted(name)}: unknown key (allowed: {', '.join(sorted(_FIELDS))})"
                )
        values = {}
        for name, kind in _FIELDS.items():
            if name not in raw:
                raise TeachError(f"{where}.{name}: missing")
            value = raw[name]
            if kind is float:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise TeachError(f"{where}.{name}: must be a number, got {_kind(value)}")
                try:
                    value = float(value)
                except OverflowError:  # an integer of 400 digits
                    value = math.inf
                if not math.isfinite(value):  # json reads NaN and Infinity
                    raise TeachError(f"{where}.{name}: must be finite, got {value}")
            elif kind is list:
                if not isinstance(value, list) or not all(_is_int(b) for b in value):
                    raise TeachError(f"{where}.{name}: must be a list of block numbers")
                value = tuple(sorted(set(value)))
            elif not (_is_int(value) if kind is int else isinstance(value, kind)):
                raise TeachError(f"{where}.{name}: must be {_KIND_NAMES[kind]}, got {_kind(value)}")
            values[name] = value
        if values["samples"] < 1:
            raise TeachError(
                f"{where}.samples: must be at least 1, got {_cut(str(values['samples']))}"
            )
        return int(key), ToolRecord(tool=int(key), **values)


_KIND_NAMES = {int: "an integer", str: "a string"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _quoted(name: str) -> str:
    """A key from the file for an error line: as it is when short and printable, else
    JSON-quoted and cut, so that the line stays one line whatever the file holds."""
    return name if name.isprintable() and len(name) <= _QUOTE else _cut(json.dumps(name))


def _cut(text: str) -> str:
    return text if len(text) <= _QUOTE else text[: _QUOTE - 3] + "..."


def _kind(value: Any) -> str:
    """The JSON name of a value's kind, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
