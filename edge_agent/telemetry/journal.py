"""The telemetry journal: samples into numbered, durable payloads, in time order.

It owns the frame builder and the spool: samples go into the open batch; a frame closes every
`[telemetry] frame_interval_s` (or when full) and waits for its commit, one transaction per
`[spool] commit_interval_s` (fewer page writes: SD-card wear, docs/spool.md); births and
events are stored at once, after what waits, so sequence numbers follow time. While the spool
cannot take payloads (a full disk, a lock, a file it may not write) they are held in memory
within a bound, retried, and a `spool_outage` event says what happened; a damaged spool stops
the agent through `spool_damaged` (the start that follows salvages it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from contextlib import suppress

from .. import __version__
from ..backoff import Backoff
from ..config import AgentConfig
from ..samples import Sample
from . import wire
from .batcher import FrameBuilder
from .channels import change_filters, channel_table
from .held import Held, Unstored
from .spool import AsyncSpool, SpoolCorrupt, SpoolError

log = logging.getLogger(__name__)

#: Payloads held in memory while the spool cannot take them (its disk full, a lock another
#: process holds, a file the agent may not write): a quarter of the agent's 64 MB resident
#: budget, and at the standard load's ~2.5 KB/s of payloads (docs/spool.md) about 1.8 hours
#: of telemetry, time for someone to free the disk. Beyond it the oldest data frames go.
HELD_MAX_BYTES = 16 * 2**20
#: Retries of the held payloads: soon after a passing lock, then twice a minute at most (on a
#: full disk each attempt writes into the log until the disk refuses).
HELD_RETRY_MIN_S = 1.0
HELD_RETRY_MAX_S = 30.0


class Journal:
    """One boot's telemetry: the channel table, the open batch, the spool."""

    def __init__(self, config: AgentConfig, boot: bytes, clock):
        self.boot, self.clock = boot, clock
        self.table = channel_table(config)
        self.builder = FrameBuilder(
            self.table, change_filters(config, self.table), config.telemetry.max_points_per_frame
        )
        self.spool = AsyncSpool(
            config.spool.path,
            max_bytes=config.spool.max_bytes,
            max_age_s=config.spool.max_age_s,
            now_ns=clock.stamp_ns,
            gap_event=lambda seq, detail: wire.event(
                boot, seq, clock.stamp_ns() // 1000, "gap", detail
            ),
        )
        self._config_hash = hashlib.sha256(repr(config).encode()).digest()[:8]
        self._frame_interval_s = config.telemetry.frame_interval_s
        self.opened = False  # the boot's birth is stored
        self.frames_stored = 0
        self.bytes_stored = 0
        self.points_stored = 0
        self.last_seq = 0
        self.on_stored = lambda: None  # the publisher's wake-up, once there is one
        self._full = asyncio.Event()
        # Data frames wait here for their commit: one transaction per commit interval writes
        # fewer pages than one per frame (SD-card wear; docs/spool.md).
        self._unstored: list[Unstored] = []
        self._storing = asyncio.Lock()  # one store at a time: numbers follow time
        # While the spool cannot take payloads: why, since when, and what waits in memory.
        self.spool_trouble: SpoolError | None = None
        self._trouble_since_us = 0
        self.held = Held(HELD_MAX_BYTES)
        self.store_failures: Counter[str] = Counter()  # by reason (disk_full, locked, ...)
        self._retrying: asyncio.Task | None = None
        self._retry_ends = asyncio.Event()  # the stop: the retry ends after its attempt
        # Set with the error when the spool turns out damaged while running: the agent stops
        # (feed made safe) and the start that follows salvages it.
        self.spool_damaged: asyncio.Future | None = None
        self._committed_ns = clock.monotonic_ns()
        self._commit_interval_ns = int(config.spool.commit_interval_s * 1e9)

    def add(self, routed: list[tuple[str, Sample]], arrived_ns: int) -> None:
        """One delivery's (channel, sample) pairs into the open batch (a channel the table
        does not publish is dropped); a full batch closes at once."""
        add, full = self.builder.add, False
        for channel, sample in routed:
            full |= add(channel, sample, arrived_ns)
        if full:
            self._full.set()

    async def open(self, firmware: str | None) -> None:
        """Open the spool (salvaging a damaged one), then the boot's birth and start event;
        after a salvage a `spool_corrupt` event saying what was salvaged and lost, and for
        every file moved aside and never salvaged a `spool_orphan` event, at every start.
        A spool that cannot be written stops the start here (one line): a boot whose birth
        is not stored would send frames nobody can decode."""
        self.spool_damaged = asyncio.get_running_loop().create_future()
        spool = await self.spool.open()
        await self.store_birth(firmware)
        await self.store_event("agent_start", {"version": __version__})
        self.opened = True
        if spool.recovered:
            log.error("%s", spool.recovered)
            await self.store_event("spool_corrupt", {"detail": spool.recovered, **spool.recovery})
        for leftover in await self.spool.leftovers():
            if leftover.salvaged:
                log.warning("spool: %s", leftover.line)
            else:
                log.error("spool: %s", leftover.line)
                await self.store_event(
                    "spool_orphan", {"file": leftover.file, "detail": leftover.line}
                )
        note = await self.spool.budget_note()
        if note:
            log.warning("%s", note)

    async def flush(self) -> None:
        """Close the open batch into a data frame; store what waits once `[spool]
        commit_interval_s` has passed since the last commit (any event stores it sooner)."""
        points = self.builder.points
        series = self.builder.take()
        self._full.clear()
        if series:
            boot, table = self.boot, self.table
            stamps = [s.stamps_us for s in series.values() if s.stamps_us]
            self._unstored.append(
                Unstored(
                    "data",
                    lambda seq: wire.data(boot, seq, table, series),
                    points,
                    min(s[0] for s in stamps),
                    max(s[-1] for s in stamps),
                )
            )
        due = self.clock.monotonic_ns() - self._committed_ns >= self._commit_interval_ns
        if self._unstored and due:
            await self._store([])

    async def store_birth(self, firmware: str | None) -> None:
        """The channel table, first in every boot (and, with MQTT, on every connection), with
        the firmware of the sources that told theirs."""
        boot, table, t_us = self.boot, self.table, self.clock.stamp_ns() // 1000
        config_hash = self._config_hash

        def birth(seq: int) -> bytes:
            return wire.birth(boot, seq, t_us, __version__, config_hash, table, firmware)

        await self._store([Unstored("birth", birth, 0, t_us, t_us)])

    async def store_event(self, kind: str, detail: dict) -> None:
        await self._store([self._event(kind, detail)])

    def _event(self, kind: str, detail: dict) -> Unstored:
        boot, t_us = self.boot, self.clock.stamp_ns() // 1000
        return Unstored(
            "event", lambda seq: wire.event(boot, seq, t_us, kind, detail), 0, t_us, t_us
        )

    async def _store(self, items: list[Unstored]) -> None:
        """Store payloads made from their sequence numbers (made in the spool's thread), after
        the data frames waiting for their commit: one transaction, numbers in time order.
        When the spool cannot take them (docs/spool.md) they are held in memory, in order,
        for `store_held`; only at the start is that an error (it stops the agent)."""
        async with self._storing:
            items, self._unstored = self._unstored + items, []
            self._committed_ns = self.clock.monotonic_ns()
            if not items:
                return
            if self.spool_trouble is None:
                try:
                    await self._write(items)
                    return
                except SpoolError as exc:
                    if not self.opened:
                        raise
                    self._spool_in_trouble(exc)
            self._hold(items)

    async def _write(self, items: list[Unstored]) -> None:
        sizes: list[int] = []

        def measured(make):
            def body(seq: int) -> bytes:
                payload = make(seq)
                sizes.append(len(payload))
                return payload

            return body

        seqs = await self.spool.store([(i.kind, self.boot, measured(i.make)) for i in items])
        self.frames_stored += len(seqs)
        self.bytes_stored += sum(sizes)
        self.points_stored += sum(i.points for i in items)
        self.last_seq = seqs[-1]
        self.on_stored()

    def _spool_in_trouble(self, error: SpoolError) -> None:
        """The first store the spool refused: log it, hold payloads from now on, retry."""
        self.store_failures[error.reason] += 1
        self.spool_trouble = error
        self._trouble_since_us = self.clock.stamp_ns() // 1000
        if isinstance(error, SpoolCorrupt):
            log.error("spool: %s; stopping: the start that follows salvages it", error)
        else:
            log.error(
                "spool: %s; control goes on, telemetry is held in memory (up to %s, then the "
                "oldest data frames go) until the spool takes it again",
                error,
                _size(self.held.max_bytes),
            )
        if not self._retry_ends.is_set():  # (the stop tries once more itself)
            self._retrying = asyncio.get_running_loop().create_task(
                self._retry_held(), name="spool retry"
            )
        self._stop_if_damaged(error)

    def _stop_if_damaged(self, error: SpoolError) -> None:
        """Damage found while running: run() stops the agent with it (the feed made safe);
        the start that follows salvages the file (systemd restarts the agent)."""
        damaged = self.spool_damaged
        if isinstance(error, SpoolCorrupt) and damaged is not None and not damaged.done():
            damaged.set_exception(error)

    def _hold(self, items: list[Unstored]) -> None:
        """Make the payloads now (packed, they take a byte or so a sample) and hold them. On
        the event loop, with no await: a stop cannot cancel it halfway and lose them (a
        commit interval's frames pack in milliseconds)."""
        dropped = sum(self.held.dropped.counts.values())
        for item in items:
            self.held.hold(item, item.make(0))
        if not dropped and self.held.dropped:
            log.warning(
                "spool: %s held in memory: dropping the oldest data frames (counted, and told "
                "in a spool_outage event once the spool takes payloads again)",
                _size(self.held.max_bytes),
            )

    async def _retry_held(self) -> None:
        """Until the spool takes the held payloads, or the stop. Never cancelled: an attempt
        cancelled while the spool's thread stores would leave them held and stored both."""
        backoff = Backoff(HELD_RETRY_MIN_S, HELD_RETRY_MAX_S)
        while self.spool_trouble is not None:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._retry_ends.wait(), backoff.next_delay())
            if self._retry_ends.is_set():
                return
            await self.store_held()

    async def store_held(self) -> bool:
        """One attempt to store what is held (and what waits for its commit), in order, then
        a `spool_outage` event saying what happened meanwhile; whether the spool took them."""
        async with self._storing:
            trouble = self.spool_trouble
            if trouble is None:
                return True
            waiting, self._unstored = self._unstored, []
            items = self.held.items() + waiting
            detail = self._outage_detail(trouble, len(items))
            try:
                await self._write([*items, self._event("spool_outage", detail)])
            except SpoolError as exc:
                self.store_failures[exc.reason] += 1
                if type(exc) is not type(trouble):  # a new kind of trouble: said once
                    log.error("spool: %s; telemetry still held in memory", exc)
                    self.spool_trouble = exc
                    self._stop_if_damaged(exc)
                self._hold(waiting)
                return False
            self._committed_ns = self.clock.monotonic_ns()
            self.held.clear()
            self.spool_trouble = None
            log.warning(
                "spool takes payloads again after %.0f s (%s): %d payloads stored late; "
                "%d data frames (%d points) and %d events dropped",
                (detail["to_us"] - detail["from_us"]) / 1e6,
                detail["reason"],
                detail["stored_late"],
                detail["dropped_frames"],
                detail["dropped_points"],
                detail["dropped_events"],
            )
            return True

    def _outage_detail(self, trouble: SpoolError, held: int) -> dict:
        """What the plant learns of the outage: the frames dropped were never numbered, so no
        number is missing; their span of time has no samples, and this event says why."""
        dropped = self.held.dropped
        detail = {
            "reason": trouble.reason,
            "error": str(trouble),
            "from_us": self._trouble_since_us,
            "to_us": self.clock.stamp_ns() // 1000,
            "stored_late": held,
            "dropped_frames": dropped.counts["data"],
            "dropped_points": dropped.counts["points"],
            "dropped_events": dropped.counts["event"] + dropped.counts["birth"],
        }
        if dropped:
            detail |= {"dropped_from_us": dropped.first_us, "dropped_to_us": dropped.last_us}
        return detail

    async def store_held_at_stop(self) -> None:
        """The stop's last try; what the spool still refuses is lost with the process."""
        self._retry_ends.set()
        if self._retrying is not None:
            await asyncio.wait([self._retrying])
        if self.spool_trouble is not None and not await self.store_held():
            dropped = self.held.dropped
            log.error(
                "stopping with %d payloads the spool did not take (%s): lost, with %d data "
                "frames dropped before them",
                len(self.held) + len(self._unstored),
                self.spool_trouble,
                dropped.counts["data"],
            )

    async def flush_periodically(self) -> None:
        """Close a frame every `[telemetry] frame_interval_s`, or as soon as one is full; a
        wall-clock jump is an event (stamps are re-based)."""
        interval = self._frame_interval_s
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), interval)
            jump_ns = self.clock.check_jump()
            if jump_ns:
                log.warning("wall clock jumped by %.3f s; stamps re-based", jump_ns / 1e9)
                await self.store_event("clock_jump", {"jump_ns": jump_ns})
            await self.flush()

    def health_words(self, spool: dict[str, int]) -> str:
        """The journal in the health line: what was stored, what waits, what was lost."""
        oldest_s = (self.clock.stamp_ns() - spool["oldest_stored_ns"]) / 1e9
        line = (
            f"{self.frames_stored} frames stored (last seq {self.last_seq}), "
            f"spool {spool['depth']} payloads"
            + (f" (oldest {oldest_s:.0f} s)" if spool["depth"] else "")
        )
        if self.spool_trouble is not None:
            line += (
                f", spool NOT TAKING PAYLOADS ({self.spool_trouble.reason}):"
                f" {len(self.held)} held in memory"
            )
        lost = self.held.dropped_total
        if lost:
            line += (
                f", {lost['data']} frames ({lost['points']} points) and "
                f"{lost['event'] + lost['birth']} events never stored"
            )
        return line


def _size(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n / 2**10:g} KiB"
