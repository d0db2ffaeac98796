"""Payloads the spool could not take (its disk full, a lock another process holds, a file the
agent may not write), held in memory until it takes them again.

Held payloads are made at once with sequence number 0 (a data frame packs to under a byte
a sample; its samples as Python tuples take some 75 bytes each) and numbered when stored
(`wire.with_seq`). Within `max_bytes` nothing is lost; beyond it the oldest data frame goes
first, and events (control actions, alarms, births) only when no data frame is left to drop:
what went is counted, with the time it spans, for the event that reports it. Sans-IO: no
clock, no disk, never blocks.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

from . import wire


class Unstored(NamedTuple):
    """A payload on its way to the spool: made from its sequence number when stored."""

    kind: str  # birth, data, event
    make: Callable[[int], bytes]
    points: int = 0  # samples in a data frame
    first_us: int = 0  # the span of time it covers (stamps, µs)
    last_us: int = 0


@dataclass
class Dropped:
    """What was held and then dropped: never numbered, never stored."""

    counts: Counter[str] = field(default_factory=Counter)  # payloads by kind, and points
    first_us: int | None = None
    last_us: int | None = None

    def add(self, item: Unstored) -> None:
        self.counts[item.kind] += 1
        self.counts["points"] += item.points
        self.first_us = (
            item.first_us if self.first_us is None else min(self.first_us, item.first_us)
        )
        self.last_us = item.last_us if self.last_us is None else max(self.last_us, item.last_us)

    def __bool__(self) -> bool:
        return bool(self.counts)


class Held:
    """Payloads waiting for the spool, oldest first, within `max_bytes`."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: deque[tuple[Unstored, int]] = deque()  # (payload, its size)
        self.bytes = 0
        self.dropped = Dropped()  # since the last `clear`
        self.dropped_total: Counter[str] = Counter()  # since the start: by kind, and points

    def __len__(self) -> int:
        return len(self._items)

    def hold(self, item: Unstored, payload: bytes) -> None:
        """Hold `payload` (made with sequence number 0) for `item`; drop beyond the bound."""
        numbered = item._replace(make=partial(wire.with_seq, payload))
        self._items.append((numbered, len(payload)))
        self.bytes += len(payload)
        while self.bytes > self.max_bytes and len(self._items) > 1:
            self._drop_one()

    def _drop_one(self) -> None:
        """The oldest data frame, or the oldest payload when only events are left."""
        victim = next((i for i, (item, _) in enumerate(self._items) if item.kind == "data"), 0)
        item, size = self._items[victim]
        del self._items[victim]
        self.bytes -= size
        self.dropped.add(item)
        self.dropped_total[item.kind] += 1
        self.dropped_total["points"] += item.points

    def items(self) -> list[Unstored]:
        """Everything held, oldest first (each numbers its payload when stored)."""
        return [item for item, _ in self._items]

    def clear(self) -> Dropped:
        """Forget what is held (stored at last); what was dropped meanwhile."""
        dropped, self.dropped = self.dropped, Dropped()
        self._items.clear()
        self.bytes = 0
        return dropped
