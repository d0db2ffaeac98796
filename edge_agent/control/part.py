"""One run of the program, recorded: from the program's start to its end, every load reading
with where the tool was along the path (`path.py`), the target in force, the override and knob
it ran at, the tool, and the control state; the time spent in each state; and, if the part
cannot be learned from (a fault, a feed hold), why. The learned profile (issue 19) learns from
records that were not rejected; the `part` event carries a record's summary to the plant.

Sans-IO: the controller feeds it; it never reads a clock.
"""

from __future__ import annotations

import array
from collections import Counter
from dataclasses import dataclass, field

from .path import PathTracker, Visit

NS = 1_000_000_000

#: A record keeps at most this many readings (about 70 minutes at 50 Hz, some 15 MB): a
#: program running longer is recorded no further and rejected as too long to learn from.
MAX_READINGS = 200_000

#: The columns of a record's readings, one `array('d')` each.
#: `target_pct`: the target load in force at the reading (`AdaptiveController.target_pct`);
#: `feed_pct`: the feed the axes ran at, % of the programmed (`AdaptiveController._feed_pct`);
#: `cutting`: 1 where the reading was over the idle load learned so far by the entry margin.
COLUMNS = (
    "t_s",
    "s_mm",
    "load_pct",
    "target_pct",
    "override_pct",
    "knob_pct",
    "feed_pct",
    "tool",
    "cutting",
)


@dataclass
class PartRecord:
    """What one program run did. `readings` holds COLUMNS, `t_s` from the program's start."""

    program: int
    started_ns: int
    ended_ns: int = 0
    visits: tuple[Visit, ...] = ()
    readings: dict[str, array.array] = field(
        default_factory=lambda: {name: array.array("d") for name in COLUMNS}
    )
    state_s: dict[str, float] = field(default_factory=dict)
    rejected: str = ""  # "" or why it cannot be learned from (the first reason)

    @property
    def cycle_s(self) -> float:
        return (self.ended_ns - self.started_ns) / NS

    @property
    def path_mm(self) -> float:
        return self.visits[-1].start_mm + self.visits[-1].length_mm if self.visits else 0.0

    @property
    def tools(self) -> list[int]:
        return sorted({int(t) for t in self.readings["tool"]})

    def summary(self) -> dict:
        """The `part` event's detail: what the plant needs to know of the part."""
        return {
            "program": self.program,
            "tools": self.tools,
            "cycle_s": round(self.cycle_s, 3),
            "path_mm": round(self.path_mm, 1),
            "blocks": len(self.visits),
            "readings": len(self.readings["t_s"]),
            "state_s": {k: round(v, 3) for k, v in sorted(self.state_s.items())},
            "rejected": self.rejected,
        }


class PartRecorder:
    """Opens a record when the program starts, fills it, closes it when the program ends."""

    def __init__(self) -> None:
        self.current: PartRecord | None = None
        self.path = PathTracker()
        self._state_since_ns = 0
        self._state = ""
        self._times: Counter[str] = Counter()

    def start(self, now_ns: int, program: int, state: str) -> None:
        self.current = PartRecord(program, now_ns)
        self.path = PathTracker()
        self._times = Counter()
        self._state, self._state_since_ns = state, now_ns

    def reject(self, why: str) -> None:
        """The part cannot be learned from (the first reason is kept)."""
        if self.current is not None and not self.current.rejected:
            self.current.rejected = why

    def state(self, now_ns: int, state: str) -> None:
        """The control state now: its time is counted from here."""
        if self.current is not None and state != self._state:
            self._times[self._state] += (now_ns - self._state_since_ns) / NS
            self._state, self._state_since_ns = state, now_ns

    def move(self, block: int | None, position: tuple[float, ...] | None) -> None:
        if self.current is not None:
            self.path.observe(block, position)

    def reading(
        self,
        t_ns: int,
        load: float,
        target: float,
        override: float,
        knob: float,
        feed: float,
        tool: int,
        cutting: bool,
    ) -> None:
        record = self.current
        if record is None:
            return
        columns = record.readings
        if len(columns["t_s"]) >= MAX_READINGS:
            self.reject(f"longer than {MAX_READINGS} readings")
            return
        t_s = (t_ns - record.started_ns) / NS
        row = (t_s, self.path.s_mm, load, target, override, knob, feed, tool, float(cutting))
        for name, value in zip(COLUMNS, row, strict=True):
            columns[name].append(value)

    def finish(self, now_ns: int) -> PartRecord | None:
        """The program ended: the record, closed (None if none was open)."""
        record, self.current = self.current, None
        if record is None:
            return None
        self._times[self._state] += (now_ns - self._state_since_ns) / NS
        record.ended_ns = now_ns
        record.visits = self.path.finish()
        record.state_s = {k: v for k, v in self._times.items() if v > 0}
        return record
