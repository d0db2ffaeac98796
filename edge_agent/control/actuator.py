"""The one actuator: the only code in the agent that writes to the machine.

It holds the one writer the controller source hands out (a second request is refused, so no
other code can write), and writes only what `[control] writable` whitelists, among the targets
the source found it can write whole (a Modbus holding register of its own: a bitfield tag, or
a tag whose registers another tag shares, is refused when the agent is made, since a
whole-register write would clobber the neighbours' bits; an OPC UA node marked writable;
docs/safety.md). Every value is clamped to [0, override_max] (0 is the feed hold), rises are
rate-limited (falls are not: cutting the feed is always allowed at once), a value is written
when it changes and, only where `refresh_s` > 0, re-written that often for a controller-side
watchdog; each write is checked against the target's read-back. A safe override or a feed hold
is asked for `urgent`: the source sends it before anything else waiting. Every refusal is
logged once per kind and counted. Sans-IO apart from the writer: the caller passes the time.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter, deque
from collections.abc import Mapping

from ..config import ConfigError, ControlConfig
from ..sources.base import Writer, WriteTarget

log = logging.getLogger(__name__)

NS = 1_000_000_000
#: Writes awaiting their read-back, per register: a 100 Hz ramp writes 50 in a default
#: verify_s; past this many the oldest are forgotten (a late alarm, never a false one).
UNVERIFIED_KEPT = 256


class Actuator:
    def __init__(self, cfg: ControlConfig, targets: Mapping[str, WriteTarget], writer: Writer):
        """`targets`: what the controller source can write, by name (the source checked each
        can be written whole); only those `[control] writable` names are whitelisted."""
        self.cfg = cfg
        for name in cfg.writable:
            if name not in targets:
                raise ConfigError(f"[control] writable: {name!r} cannot be written: refused")
        self.whitelist = {name: targets[name] for name in cfg.writable}
        self.writer = writer
        self.low, self.high = 0.0, cfg.override_max_pct
        self.counters: Counter[str] = Counter()
        self.value: dict[str, float] = {}  # what was last written, per register
        self._target: dict[str, float] = {}
        self._urgent: dict[str, bool] = {}  # register -> its target is a safe value or a hold
        self._written_ns: dict[str, int] = {}
        # register -> the writes not yet read back, oldest first: (value, when sent)
        self._unverified: dict[str, deque[tuple[float, int]]] = {}
        self._ramp: dict[str, tuple[float, int]] = {}  # register -> a rise's (position, when)
        self._logged: set[str] = set()
        # The control thread calls set/tick; the event loop calls close on the way out.
        self._lock = threading.Lock()
        self.closed = False

    def set(self, name: str, value: float, now_ns: int, urgent: bool = False) -> float | None:
        """Ask for `value` in register `name`; the value written now, or None. `urgent`: a
        safe override or a feed hold, sent (and re-sent) before anything else waiting."""
        with self._lock:
            return None if self.closed else self._set(name, value, now_ns, urgent)

    def tick(self, now_ns: int) -> float | None:
        """Move each register toward its target (rises at the rate limit), refresh (where
        `refresh_s` > 0), re-send what was not read back in time. Returns the last value
        written, if any."""
        with self._lock:
            return None if self.closed else self._tick(now_ns)

    def close(self, name: str, safe: float, now_ns: int) -> float | None:
        """The agent stops: write min(current, `safe`) to `name` now (urgent), then refuse
        every later call, so a control thread that has not stopped yet cannot write after
        it. Returns the value written, if any."""
        with self._lock:
            if self.closed:
                return None
            current = self.value.get(name)
            written = None
            if current is not None and current > safe:
                written = self._set(name, safe, now_ns, urgent=True)
            self.closed = True
            return written

    def _set(self, name: str, value: float, now_ns: int, urgent: bool) -> float | None:
        if name not in self.whitelist:
            self._refuse("not_whitelisted", f"{name!r} is not in [control] writable: refused")
            return None
        if not math.isfinite(value):
            self._refuse("not_finite", f"{name}: {value} is not a number: refused")
            return None
        if not self.low <= value <= self.high:
            self._refuse("clamped", f"{name}: {value:g} clamped to {self.low:g}..{self.high:g}")
            value = min(self.high, max(self.low, value))
        self._target[name] = value
        self._urgent[name] = urgent
        return self._tick(now_ns, only=name)

    def _tick(self, now_ns: int, only: str | None = None) -> float | None:
        written = None
        for name in [only] if only else list(self._target):
            target, current = self._target[name], self.value.get(name)
            last_ns = self._written_ns.get(name, now_ns)
            value = target
            if current is not None and target > current:
                # A rise moves an unrounded ramp at the rate from one call to the next: a
                # steady spell banks nothing, and rounding never lets it run ahead.
                ramp, ramp_ns = self._ramp.get(name, (current, now_ns))
                ramp = min(target, ramp + self.cfg.rise_pct_per_s * (now_ns - ramp_ns) / NS)
                self._ramp[name] = (ramp, now_ns)
                if ramp < target:
                    self.counters["rate_limited"] += 1
                value = ramp
            else:
                self._ramp.pop(name, None)
            value = self._resolution(name, value)
            due = current is None or value != current
            refresh_s = self.cfg.refresh_s
            due |= refresh_s > 0 and now_ns - last_ns >= refresh_s * NS
            unverified = self._unverified.get(name)
            if unverified and now_ns - unverified[0][1] >= self.cfg.verify_s * NS:
                self._refuse(
                    "not_read_back",
                    f"{name}: write of {unverified[0][0]:g} not read back; re-sent",
                )
                unverified.clear()  # the re-sent write gets its own verify_s
                due = True
            if due:
                written = self._write(name, value, now_ns)
        return written

    def _resolution(self, name: str, value: float) -> float:
        """Down to the register's resolution: a rise never beats the rate limit by rounding
        up, a fall never stops short of what was asked."""
        quantum = self.whitelist[name].resolution
        return math.floor(value / quantum + 1e-9) * quantum

    def read_back(self, name: str, value: float) -> None:
        """The register's value as polled: a write is verified when it reads back, and with it
        every earlier one (a ramp writes faster than the poll reads, so the value read back
        is often one a little older than the last). Before the first write it is what the
        register holds, so even the first rise is rate-limited."""
        with self._lock:
            self._read_back(name, value)

    def _read_back(self, name: str, value: float) -> None:
        if name in self.whitelist and name not in self.value:
            self.value[name] = value
            self._written_ns.setdefault(name, 0)
        unverified = self._unverified.get(name)
        if not unverified:
            return
        for i in range(len(unverified) - 1, -1, -1):
            if unverified[i][0] == value:
                for _ in range(i + 1):
                    unverified.popleft()
                self.counters["verified"] += 1
                return

    def _write(self, name: str, value: float, now_ns: int) -> float:
        self.writer.write(self.whitelist[name], value, urgent=self._urgent.get(name, False))
        self.value[name] = value
        self._written_ns[name] = now_ns
        self._unverified.setdefault(name, deque(maxlen=UNVERIFIED_KEPT)).append((value, now_ns))
        self.counters["writes"] += 1
        return value

    def _refuse(self, kind: str, message: str) -> None:
        self.counters[kind] += 1
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning("actuator: %s (further ones counted, not logged)", message)
