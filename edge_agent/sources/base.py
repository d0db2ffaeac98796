"""What a source of samples is to the agent: the one seam every machine input goes through.

A source (the Modbus controller, the sensor bridge, ...) declares its channels from its
configuration before it runs (the telemetry's channel table and the config's cross-checks are
built from the declarations alone), then runs, emitting samples through one callback, and
answers `stats()` with a typed snapshot that the health line, the metrics endpoint, systemd's
status and the demo all render. A controller source may also hand out the one writer to the
machine; no other source can write. `registry.py` says which kinds exist.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ..samples import Sample

#: A float value's default quantum, whatever its source: a thousandth of its unit (1 W of a
#: kW, 1 um of a mm).
FLOAT_QUANTUM = 0.001
#: The values of the integer types a written value must fit, by the type's lower-case name
#: (a Modbus tag's `type`, an OPC UA node's built-in type).
INTEGER_RANGES = {
    "sbyte": (-(1 << 7), (1 << 7) - 1),
    "byte": (0, (1 << 8) - 1),
    "int16": (-(1 << 15), (1 << 15) - 1),
    "uint16": (0, (1 << 16) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1),
    "uint32": (0, (1 << 32) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
    "uint64": (0, (1 << 64) - 1),
}
#: How a source hands its samples on: a list at a time, never waiting.
Emit = Callable[[list[Sample]], None]


@dataclass(frozen=True)
class SourceChannel:
    """One channel a source feeds: its name (unique across sources), unit, the quantum its
    values are integers of unless `[channels]` says otherwise, its sample period, its time
    group within the source (channels of one group are sampled together and share stamps),
    and where that period is configured (for errors: "poll_groups.fast", "the bridge")."""

    name: str
    unit: str
    quantum: float
    period_s: float
    time_group: str
    origin: str


@dataclass(frozen=True)
class Declaration:
    """What a configured source will feed: its time groups in the order the channel table
    numbers them, and its channels in the order they get their aliases."""

    time_groups: tuple[str, ...]
    channels: tuple[SourceChannel, ...]


@dataclass(frozen=True)
class GroupFigures:
    """A time group's work so far: cycles run, cycles skipped for lateness, and one cycle's
    duration (p50, p99, max over a recent window, s)."""

    cycles: int
    overruns: int
    latency_s: tuple[float, float, float]


@dataclass(frozen=True)
class SourceStats:
    """One source at one moment."""

    name: str  # the source's name, its config section: "controller", "bridge"
    where: str  # what it reads: "10.0.0.5:502 unit 1", "/dev/ttyACM0"
    state: str  # one word: "up", "down", "streaming", "lost", ...
    up: bool  # delivering samples
    samples: int  # samples emitted
    connects: int  # connections made
    disconnects: int  # connections lost after they were up
    counts: Mapping[str, int] = field(default_factory=dict)  # its work by kind (requests)
    faults: Mapping[str, int] = field(default_factory=dict)  # what went wrong, by kind
    groups: Mapping[str, GroupFigures] = field(default_factory=dict)  # by time group
    writes: Mapping[str, int] = field(default_factory=dict)  # the writer's, by outcome
    #: A count that moves while the source's loop works, the machine up or not (requests
    #: sent): the service watchdog's sign of life. None: not watched (not started, or a
    #: source whose loop may rightly wait, a bridge unplugged).
    progress: int | None = None

    def line(self) -> str:
        """This source in the health line: state, work, what went wrong, cycle times."""
        faults = {k: v for k, v in self.faults.items() if v}
        words = [
            f"{self.samples} samples",
            *(f"{v} {k}" for k, v in self.counts.items()),
            f"{self.disconnects} connections lost",
            "faults " + (", ".join(f"{k} {v}" for k, v in sorted(faults.items())) or "none"),
        ]
        if self.groups:
            words.append(
                "p99 "
                + ", ".join(f"{k} {g.latency_s[1] * 1e3:.1f} ms" for k, g in self.groups.items())
            )
        return f"{self.name} {self.state}: " + ", ".join(words)


class WriteTarget(Protocol):
    """What a controller source writes to (a holding register's tag, an OPC UA node)."""

    name: str

    @property
    def resolution(self) -> float:
        """The smallest step a written value can take."""


class Writer(Protocol):
    """The one path to the machine (docs/safety.md): the actuator's, never anyone else's.
    A write is sent without waiting for it; an urgent one goes before anything waiting."""

    def write(self, target: WriteTarget, value: float, urgent: bool = False) -> None: ...

    async def flush(self) -> None: ...


class Source(Protocol):
    """A running source; `registry.py` makes them from the configuration."""

    name: str
    #: Reads the machine's controller: the agent is ready (READY=1) only once it is up, and
    #: only such a source can hand out the writer.
    controller: bool

    @property
    def connected(self) -> bool:
        """Up now (the control loop's fault check asks this every tick)."""

    @property
    def identity(self) -> dict | None:
        """What the device said it is (a board's firmware), once it has; it goes in the
        birth."""

    async def run(self) -> None:
        """Until cancelled: connect, read, emit, reconnect. The machine's faults are
        counted and shown in `stats`, never raised."""

    #: How long the start gives the source to come up before it goes on without it (a reply
    #: timeout; the wait for a board to identify, whose firmware the birth names).
    ready_wait_s: float

    async def wait_ready(self, timeout_s: float | None) -> bool:
        """Whether the source is up within `timeout_s` (None: however long it takes)."""

    def stats(self) -> SourceStats: ...

    def take_writer(self, loop: asyncio.AbstractEventLoop) -> Writer:
        """The one writer to the machine; a second call, or a source that cannot write,
        raises RuntimeError."""

    def write_targets(self, control) -> Mapping[str, WriteTarget]:
        """`[control] writable`'s targets, each checked to be writable whole (a ConfigError,
        one line, names the first that is not); {} for a source that cannot write."""


class Deadlines:
    """An absolute-deadline schedule: cycle n is due at start + n periods; a late cycle skips
    ahead (the periods it missed are overruns) rather than bunching reads."""

    def __init__(self, period_s: float, start_ns: int):
        self.period_ns = round(period_s * 1e9)
        self.next_ns = start_ns

    def after_cycle(self, now_ns: int) -> tuple[float, int]:
        """A cycle ended at `now_ns`: (seconds until the next one is due, periods missed)."""
        self.next_ns += self.period_ns
        missed = 0
        if now_ns >= self.next_ns:
            missed = (now_ns - self.next_ns) // self.period_ns + 1
            self.next_ns += missed * self.period_ns
        return (self.next_ns - now_ns) / 1e9, missed
