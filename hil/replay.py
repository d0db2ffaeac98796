"""Replays a recorded CSV through the register map: a `Plant` whose values are recorded rows.

Never reacts to the agent (a recording cannot): writes to the override are only remembered.
Never reads the wall clock. The column-to-tag mapping is data, in `hil/data/replay-map.toml`;
a bad map gets a one-line error naming the key.
"""

from __future__ import annotations

import csv
import math
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.registers import Tag
from edge_agent.tomlcheck import read_toml_text
from hil.codec import as_registered
from hil.plant import NotWritable
from hil.register_map import AGENT_OVERRIDE, AGENT_OVERRIDE_RANGE_PCT, TAGS

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_MAP = DATA_DIR / "replay-map.toml"
RECORDINGS_DIR = DATA_DIR / "cnc-mill-tool-wear"
#: The pseudo-column: seconds since the recording started.
TIME_COLUMN = "#time_s"

_TOP_KEYS = {"period_s", "tags"}
_TAG_KEYS = {"column", "scale", "offset", "codes", "value", "threshold"}


class ReplayMapError(ValueError):
    """A replay map or recording that cannot be served; the message is one line."""


@dataclass(frozen=True)
class TagSource:
    """Where one tag's value comes from: a column (scaled, thresholded or coded) or a constant."""

    column: str | None = None
    scale: float = 1.0
    offset: float = 0.0
    threshold: float | None = None
    codes: dict[str, float] | None = None
    value: float | None = None


@dataclass(frozen=True)
class ReplayMap:
    period_s: float
    sources: dict[str, TagSource] = field(default_factory=dict)


def recording_path(name_or_path: str | Path) -> Path:
    """A recording by name (`experiment_01`) from the bundled data, or a path to a CSV."""
    path = Path(name_or_path)
    if path.suffix != ".csv" and not path.exists():
        path = RECORDINGS_DIR / f"{name_or_path}.csv"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in RECORDINGS_DIR.glob("*.csv")))
        raise ReplayMapError(f"{name_or_path}: no such recording (bundled: {known})")
    return path


def load_replay_map(path: str | Path = DEFAULT_MAP, tags: Iterable[Tag] = TAGS) -> ReplayMap:
    return parse_replay_map(read_toml_text(path, ReplayMapError), str(path), tags)


def parse_replay_map(
    text: str, where: str = "replay-map.toml", tags: Iterable[Tag] = TAGS
) -> ReplayMap:
    """Parse and validate a replay map; every tag of `tags` needs a source, nothing else may."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ReplayMapError(f"{where}: {exc}") from None
    for key in doc.keys() - _TOP_KEYS:
        raise ReplayMapError(f"{where}: {key}: unknown key (known: period_s, tags)")
    period_s = doc.get("period_s", 0.1)
    if not _is_number(period_s) or period_s <= 0:
        raise ReplayMapError(f"{where}: period_s: must be a number > 0, got {period_s!r}")
    table = doc.get("tags", {})
    if not isinstance(table, dict):
        raise ReplayMapError(f"{where}: tags: must be a table of [tags.<name>]")
    names = [tag.name for tag in tags]
    for name in table:
        if name not in names:
            raise ReplayMapError(f"{where}: tags.{name}: not a tag of the register map")
    sources = {}
    for name in names:
        if name not in table:
            raise ReplayMapError(f"{where}: tags.{name}: missing (every tag needs a source)")
        sources[name] = _parse_source(table[name], f"{where}: tags.{name}")
    return ReplayMap(float(period_s), sources)


def _parse_source(entry: object, where: str) -> TagSource:
    if not isinstance(entry, dict):
        raise ReplayMapError(f"{where}: must be a table")
    for key in entry.keys() - _TAG_KEYS:
        raise ReplayMapError(f"{where}.{key}: unknown key (known: {', '.join(sorted(_TAG_KEYS))})")
    if ("column" in entry) == ("value" in entry):
        raise ReplayMapError(f"{where}: needs exactly one of column or value")
    for key in ("scale", "offset", "threshold", "value"):
        if key in entry and not _is_number(entry[key]):
            raise ReplayMapError(f"{where}.{key}: must be a number, got {entry[key]!r}")
    if "value" in entry:
        if entry.keys() - {"value"}:
            raise ReplayMapError(f"{where}: value is a constant; it takes no other key")
        return TagSource(value=float(entry["value"]))
    column = entry["column"]
    if not isinstance(column, str) or not column:
        raise ReplayMapError(f"{where}.column: must be a column name, got {column!r}")
    codes = entry.get("codes")
    if codes is not None:
        if entry.keys() & {"scale", "offset", "threshold"}:
            raise ReplayMapError(f"{where}.codes: cannot be combined with scale/offset/threshold")
        if not isinstance(codes, dict) or not codes:
            raise ReplayMapError(f"{where}.codes: must be a table of text = number")
        for text, number in codes.items():
            if not _is_number(number):
                raise ReplayMapError(f"{where}.codes.{text}: must be a number, got {number!r}")
        codes = {text: float(number) for text, number in codes.items()}
    threshold = entry.get("threshold")
    return TagSource(
        column=column,
        scale=float(entry.get("scale", 1.0)),
        offset=float(entry.get("offset", 0.0)),
        threshold=None if threshold is None else float(threshold),
        codes=codes,
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(cell: str) -> float:
    """A recorded cell; one that is not a number is carried as NaN, not an error."""
    try:
        return float(cell)
    except ValueError:
        return math.nan


class ReplayPlant:
    """Serves a recording's rows: row i holds from t = i x period_s.

    Past the last row it holds the last row, or with `loop=True` starts again from row 0.
    """

    def __init__(
        self,
        csv_path: str | Path,
        *,
        replay_map: ReplayMap | str | Path = DEFAULT_MAP,
        loop: bool = False,
        tags: Iterable[Tag] = TAGS,
    ) -> None:
        self.tags = tuple(tags)
        if not isinstance(replay_map, ReplayMap):
            replay_map = load_replay_map(replay_map, self.tags)
        self.map = replay_map
        self.path = Path(csv_path)
        self.loop = loop
        self._columns = self._load(self.path)
        self.rows = len(next(iter(self._columns.values()), []))
        if self.rows == 0:
            raise ReplayMapError(f"{self.path}: the recording has no rows")
        self._t = 0.0
        start = self.map.sources.get(AGENT_OVERRIDE, TagSource(value=100.0)).value
        self._override = 100.0 if start is None else start

    @property
    def duration_s(self) -> float:
        return self.rows * self.map.period_s

    def row_at(self, t_s: float) -> int:
        row = max(0, math.floor(t_s / self.map.period_s + 1e-9))
        return row % self.rows if self.loop else min(row, self.rows - 1)

    def advance_to(self, t_s: float) -> None:
        self._t = max(self._t, t_s)

    def values(self) -> dict[str, float]:
        return self._values_at(self.row_at(self._t))

    def write(self, name: str, value: float) -> None:
        if name != AGENT_OVERRIDE:
            raise NotWritable(f"{name}: read-only, only {AGENT_OVERRIDE} is writable")
        lo, hi = AGENT_OVERRIDE_RANGE_PCT
        self._override = min(hi, max(lo, float(value)))

    def expected(self, t_s: float) -> dict[str, float]:
        """What the registers decode to at `t_s`: each value rounded to its register."""
        values = self._values_at(self.row_at(t_s))
        return {tag.name: as_registered(tag, values[tag.name]) for tag in self.tags}

    def _values_at(self, row: int) -> dict[str, float]:
        out = {name: column[row] for name, column in self._columns.items()}
        out[AGENT_OVERRIDE] = self._override
        return out

    def _load(self, path: Path) -> dict[str, list[float]]:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = set(reader.fieldnames or ())
            records = list(reader)
        n = len(records)
        columns: dict[str, list[float]] = {}
        for name, source in self.map.sources.items():
            where = f"{path}: tags.{name}"
            if source.value is not None:
                columns[name] = [source.value] * n
            elif source.column == TIME_COLUMN:
                columns[name] = [i * self.map.period_s for i in range(n)]
            elif source.column not in header:
                raise ReplayMapError(
                    f"{where}.column: no column {source.column!r} in the recording"
                )
            elif source.codes is not None:
                columns[name] = _coded(records, source.column, source.codes, where)
            else:
                raw = [_number(r[source.column]) * source.scale + source.offset for r in records]
                if source.threshold is not None:
                    raw = [1.0 if v > source.threshold else 0.0 for v in raw]
                columns[name] = raw
        return columns


def _coded(records: list[dict], column: str, codes: dict[str, float], where: str) -> list[float]:
    out = []
    for i, record in enumerate(records):
        text = record[column]
        if text not in codes:
            raise ReplayMapError(f"{where}.codes: row {i}: no code for {text!r}")
        out.append(codes[text])
    return out
