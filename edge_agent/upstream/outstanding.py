"""Payloads published and not yet confirmed stored, for the publisher (docs/upstream.md,
"End-to-end delivery"). Sans-IO: the caller says what it sent, what the broker took and what
the plant stored, and passes the time.

A payload the broker took and the plant has not confirmed within the timeout is presumed lost
(a broker that dropped it, a collector away) and is sent again; each further attempt waits
twice as long, up to `max_timeout_s`, so a payload the plant never takes (refused as bad)
costs one message per `max_timeout_s`, never a loop. What is in transit (sent and not yet
presumed lost) is bounded by a congestion limit, TCP's after a retransmission timeout (RFC
5681): a timeout sets the threshold to half of what was in transit and the limit to 1; each
confirmed payload then adds 1 below the threshold (doubling per round trip) and 1/limit above
it (one more per round trip), up to `capacity`. A broker that drops under a flood gets what
it can pass on, and an absent collector one payload per timeout, not the window over and over.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from dataclasses import dataclass


@dataclass
class _Entry:
    boot: bytes | None  # None: not known (the spool keeps none for its gap events)
    attempts: int = 0
    due_at: float | None = None  # None: awaiting the broker's PUBACK, not timed yet


class Outstanding:
    """Published, not yet stored: at most `capacity`, of which at most `limit` in transit.
    `counters`: `presumed_lost` (timeouts, each a payload to send again)."""

    def __init__(self, capacity: int, timeout_s: float, max_timeout_s: float):
        self.capacity = capacity
        self.timeout_s = timeout_s
        self.max_timeout_s = max(timeout_s, max_timeout_s)
        self.limit: float = capacity  # payloads in transit at most (its integer part)
        self.threshold: float = capacity  # where the limit's growth turns from x2 to +1 per trip
        self.counters: Counter[str] = Counter()
        self._entries: dict[int, _Entry] = {}
        self._timers: list[tuple[float, int, int]] = []  # (due_at, seq, attempts), lazily
        self._lost: list[int] = []  # seqs presumed lost, a heap (stale ones skipped lazily)
        self._lost_set: set[int] = set()
        self._lowered_at = -math.inf

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, seq: int) -> bool:
        return seq in self._entries

    @property
    def in_transit(self) -> int:
        return len(self._entries) - len(self._lost_set)

    def room(self) -> int:
        """How many may be sent now, re-sends included (new ones: `room_for_new`)."""
        return max(0, int(self.limit) - self.in_transit)

    def room_for_new(self) -> int:
        return max(0, min(self.room(), self.capacity - len(self._entries)))

    def sent(self, seq: int, boot: bytes | None) -> None:
        """Published (again): in transit, awaiting the broker."""
        entry = self._entries.get(seq)
        if entry is None:
            entry = self._entries[seq] = _Entry(boot)
        entry.attempts += 1
        entry.due_at = None
        self._lost_set.discard(seq)

    def arm(self, seq: int, now: float) -> None:
        """The broker answered (took it, or refused it): the timeout starts."""
        entry = self._entries.get(seq)
        if entry is None or entry.due_at is not None:
            return
        timeout = min(self.max_timeout_s, self.timeout_s * 2 ** min(entry.attempts - 1, 32))
        entry.due_at = now + timeout
        heapq.heappush(self._timers, (entry.due_at, seq, entry.attempts))

    def expire(self, now: float) -> int:
        """Presume lost what timed out by `now`; how many."""
        in_transit, lost = self.in_transit, 0
        while self._timers and self._timers[0][0] <= now:
            timer = heapq.heappop(self._timers)
            if not self._live(timer):
                continue  # stored, or sent again since
            seq = timer[1]
            self._entries[seq].due_at = None
            self._lost_set.add(seq)
            heapq.heappush(self._lost, seq)
            lost += 1
        if lost:
            self.counters["presumed_lost"] += lost
            if now - self._lowered_at >= self.timeout_s:  # one loss event per timeout
                self.threshold = max(2.0, min(self.limit, in_transit) / 2)
                self.limit = 1.0
                self._lowered_at = now
        return lost

    def take_lost(self, count: int) -> list[int]:
        """Up to `count` payloads presumed lost, oldest first, for sending again (the caller
        then calls `sent`, or `forget` when the spool no longer has one)."""
        out = []
        while self._lost and len(out) < count:
            seq = heapq.heappop(self._lost)
            if seq in self._lost_set:
                self._lost_set.discard(seq)
                out.append(seq)
        return out

    def give_back(self, seqs: list[int]) -> None:
        """Taken by `take_lost` but not sent after all (the spool could not be read)."""
        for seq in seqs:
            if seq in self._entries and seq not in self._lost_set:
                self._lost_set.add(seq)
                heapq.heappush(self._lost, seq)

    def next_timeout(self) -> float | None:
        """When the next payload in transit times out (None: none is timed)."""
        while self._timers:
            if self._live(self._timers[0]):
                return self._timers[0][0]
            heapq.heappop(self._timers)
        return None

    def _live(self, timer: tuple[float, int, int]) -> bool:
        """Whether a timer is its payload's current one (not stored, not sent again since)."""
        due_at, seq, attempts = timer
        entry = self._entries.get(seq)
        return entry is not None and entry.attempts == attempts and entry.due_at == due_at

    def stored(self, boot: bytes | None, runs: list[tuple[int, int]]) -> list[int]:
        """The plant stored `runs` of `boot`: the payloads of this ledger they name (boot
        matching where known), removed; each widens the limit."""
        done = []
        for first, last in runs:
            if last - first < len(self._entries):
                candidates = (s for s in range(first, last + 1) if s in self._entries)
            else:  # a wide run (a long outage's backlog): look only at what is here
                candidates = (s for s in list(self._entries) if first <= s <= last)
            for seq in candidates:
                entry = self._entries[seq]
                if boot is None or entry.boot is None or entry.boot == boot:
                    self.forget(seq)
                    done.append(seq)
                    self.limit += 1.0 if self.limit < self.threshold else 1.0 / self.limit
        self.limit = min(float(self.capacity), self.limit)
        self._compact()
        return done

    def _compact(self) -> None:
        """Drop the heaps' stale items once they outnumber the live ones (a stored payload's
        timer stays in the heap until it would have fired): memory stays in proportion."""
        if len(self._timers) > 2 * len(self._entries) + 64:
            self._timers = [timer for timer in self._timers if self._live(timer)]
            heapq.heapify(self._timers)
        if len(self._lost) > 2 * len(self._lost_set) + 64:
            self._lost = sorted(self._lost_set)

    def forget(self, seq: int) -> None:
        """No longer outstanding (stored, or gone from the spool)."""
        self._entries.pop(seq, None)
        self._lost_set.discard(seq)
