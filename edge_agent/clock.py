"""The agent's time: monotonic intervals and wall-clock stamps taken against a monotonic base.

A Pi has no real-time clock: its wall clock starts wherever it was last saved and jumps
when NTP first syncs. Stamps are therefore `wall at base + (monotonic now - monotonic at
base)`; `check_jump` compares that with the real wall clock, re-bases on a jump and returns
it so the caller records an event. Stamps never go backwards within a boot.
Never sleeps: whoever schedules owns the waiting.
"""

from __future__ import annotations

import time


class Clock:
    """Stamps against a monotonic base; subclasses supply the two raw clocks."""

    #: A difference under this is drift or scheduling noise, not a jump. NTP slews small
    #: offsets itself; a first sync after boot on a Pi is typically seconds to years.
    JUMP_TOLERANCE_NS = 1_000_000_000

    def __init__(self) -> None:
        self._base_mono = self.monotonic_ns()
        self._base_wall = self.wall_ns()
        self._last_stamp = 0

    def monotonic_ns(self) -> int:
        raise NotImplementedError

    def wall_ns(self) -> int:
        raise NotImplementedError

    def stamp_ns(self) -> int:
        """Wall-clock time in ns since the epoch, continuous with the monotonic clock."""
        stamp = self._base_wall + (self.monotonic_ns() - self._base_mono)
        self._last_stamp = max(stamp, self._last_stamp)
        return self._last_stamp

    def check_jump(self, tolerance_ns: int | None = None) -> int:
        """The wall-clock jump (ns, signed) since the base, re-basing on it; 0 if none.

        After a backward jump, stamps hold at the last one issued until the new base
        catches up: they never go backwards within a boot.
        """
        tolerance = self.JUMP_TOLERANCE_NS if tolerance_ns is None else tolerance_ns
        mono, wall = self.monotonic_ns(), self.wall_ns()
        jump = wall - (self._base_wall + (mono - self._base_mono))
        if abs(jump) <= tolerance:
            return 0
        self._base_mono, self._base_wall = mono, wall
        return jump


class SystemClock(Clock):
    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def wall_ns(self) -> int:
        return time.time_ns()


class FakeClock(Clock):
    """A clock the test advances: `advance(s)` moves both clocks, `jump_wall(s)` the wall
    clock alone (what NTP does)."""

    def __init__(self, wall_s: float = 1_800_000_000.0, monotonic_s: float = 1000.0):
        self._mono = round(monotonic_s * 1e9)
        self._wall = round(wall_s * 1e9)
        super().__init__()

    def monotonic_ns(self) -> int:
        return self._mono

    def wall_ns(self) -> int:
        return self._wall

    def advance(self, seconds: float) -> None:
        step = round(seconds * 1e9)
        self._mono += step
        self._wall += step

    def jump_wall(self, seconds: float) -> None:
        self._wall += round(seconds * 1e9)
