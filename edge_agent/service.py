"""The agent's wiring: sources (the controller, the sensor bridge) -> router -> (control loop,
batcher -> spool -> publisher -> upstream).

Data flows one way. I/O runs on one asyncio loop; the control loop runs in its own thread
(`control/loop.py`), fed through a queue the sources fill without waiting, writing through the
controller source's one writer without waiting; frames go to the durable spool, whose SQLite
work runs in its own thread, so neither a source nor the control loop ever waits on the disk;
the publisher reads the spool and deletes only what the upstream acknowledged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import queue
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import suppress

from . import __version__
from .backoff import Backoff
from .clock import SystemClock
from .config import AgentConfig
from .control.actuator import Actuator
from .control.adaptive import AdaptiveController
from .control.loop import ControlLoop
from .control.teach import TeachError, TeachStore
from .routing import SampleRouter
from .samples import Sample
from .sources.base import Source, SourceStats
from .sources.registry import make_sources
from .tasks import cancel_and_wait
from .telemetry import wire
from .telemetry.batcher import FrameBuilder
from .telemetry.channels import change_filters, channel_table
from .telemetry.held import Held, Unstored
from .telemetry.spool import AsyncSpool, SpoolCorrupt, SpoolError
from .upstream.file_link import FileLink
from .upstream.mqtt_link import MqttLink, settings_from
from .upstream.publisher import Publisher, Topics

log = logging.getLogger(__name__)

#: How often the teach file is checked for edits: a stat every few seconds costs nothing.
TEACH_FILE_CHECK_S = 2.0
#: Payloads held in memory while the spool cannot take them (its disk full, a lock another
#: process holds, a file the agent may not write): a quarter of the agent's 64 MB resident
#: budget, and at the standard load's ~2.5 KB/s of payloads (docs/spool.md) about 1.8 hours
#: of telemetry, time for someone to free the disk. Beyond it the oldest data frames go.
HELD_MAX_BYTES = 16 * 2**20
#: Retries of the held payloads: soon after a passing lock, then twice a minute at most (on a
#: full disk each attempt writes into the log until the disk refuses).
HELD_RETRY_MIN_S = 1.0
HELD_RETRY_MAX_S = 30.0


class Agent:
    """One agent for one machine."""

    def __init__(
        self,
        config: AgentConfig,
        clock=None,
        connect: Mapping[str, Callable] | None = None,
    ):
        """`connect`: a source's way to its device by source name (a Modbus client factory,
        a serial port opener), for tests; the real one where absent."""
        self.config = config
        self.clock = clock or SystemClock()
        self.boot = os.urandom(8)  # the boot id on the wire
        self.boot_id = self.boot.hex()
        self.sources: dict[str, Source] = {
            s.name: s
            for s in make_sources(config, self.clock, self._on_samples, self._identified, connect)
        }
        #: The source that holds the one writer (and whose link the control loop watches).
        self.controller_source = next(s for s in self.sources.values() if s.controller)
        # A target the actuator cannot write whole: refused now, not once the machine runs.
        self._write_targets = (
            self.controller_source.write_targets(config.control) if config.control.enabled else {}
        )
        self._birth_firmware: str | None = None  # the firmware the last birth named
        self._spool_open = False
        self.router = SampleRouter(config.channels)  # control tags once control exists
        self.table = channel_table(config)
        self.builder = FrameBuilder(
            self.table, change_filters(config, self.table), config.telemetry.max_points_per_frame
        )
        boot = self.boot
        self.spool = AsyncSpool(
            config.spool.path,
            max_bytes=config.spool.max_bytes,
            max_age_s=config.spool.max_age_s,
            now_ns=self.clock.stamp_ns,
            gap_event=lambda seq, detail: wire.event(
                boot, seq, self.clock.stamp_ns() // 1000, "gap", detail
            ),
        )
        self.publisher = self._publisher(config)
        self.frames_stored = 0
        self.bytes_stored = 0
        self.points_stored = 0
        self.last_seq = 0
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
        self._committed_ns = self.clock.monotonic_ns()
        self._commit_interval_ns = int(config.spool.commit_interval_s * 1e9)
        self.control: ControlLoop | None = None
        self._tasks_in_flight: set[asyncio.Task] = set()
        self._teach_watch: asyncio.Task | None = None
        self.control_events: Counter[str] = Counter()
        self._control_inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._teach = TeachStore(config.control.teach_file)
        self.up = asyncio.Event()
        # Why run() ended, for the agent_stop event: "stop", or "reload" (a new config).
        self.stop_reason = "stop"

    def _publisher(self, config: AgentConfig) -> Publisher | None:
        """The publisher for `[upstream]`, or None (kind "none": payloads wait in the spool).
        An unusable password or TLS file is an UpstreamError here, at start."""
        up, machine = config.upstream, config.machine
        if up.kind == "none":
            return None
        topics = Topics(up.topic_prefix, machine.site, machine.machine_id)
        if up.kind == "file":

            def make_link(death: bytes, wake: asyncio.Event):
                return FileLink(up.file_path, up.file_rotate_bytes, wake)
        else:
            settings = settings_from(up, f"edge-agent-{machine.site}-{machine.machine_id}")

            def make_link(death: bytes, wake: asyncio.Event):
                return MqttLink(settings, will=(topics["death"], death), wake=wake)

        return Publisher(
            self.spool,
            make_link,
            topics,
            self.boot,
            up.window,
            Backoff(up.reconnect_min_s, up.reconnect_max_s),
            delivery=up.delivery,
            max_unacked=up.max_unacked,
            ack_timeout_s=up.ack_timeout_s,
        )

    def _start_control(self) -> None:
        """The control loop's thread, its controller and the one actuator (which takes the
        link's only writer). Teach-in records are read here, once, before the loop starts."""
        cfg = self.config.control
        loop = asyncio.get_running_loop()
        controller = self.make_control(loop)
        self.control.start()
        if cfg.target_mode == "teach_in":
            self._teach_watch = loop.create_task(self._watch_teach_file(controller))
        log.info(
            "adaptive control on %s at %g Hz, target %s",
            cfg.signal,
            1 / cfg.period_s,
            "taught per tool" if cfg.target_mode == "teach_in" else f"{cfg.target_load_pct:g} %",
        )

    def make_control(self, loop: asyncio.AbstractEventLoop) -> AdaptiveController:
        """`self.control`, not started: the controller, the actuator holding the link's one
        writer, and the loop that ticks them (tests tick it on simulated time)."""
        cfg = self.config.control
        taught = {}
        if cfg.target_mode == "teach_in":
            try:
                taught = self._teach.load()
            except TeachError as exc:
                log.error("%s; teach-in starts afresh for every tool", exc)
        controller = AdaptiveController(cfg, taught)
        self.router.control_tags = frozenset(controller.inputs)
        writer = self.controller_source.take_writer(loop)
        actuator = Actuator(cfg, self._write_targets, writer)
        source = self.controller_source
        self.control = ControlLoop(
            controller,
            actuator,
            self._control_inbox,
            link_up=lambda: source.connected,
            on_events=lambda events: loop.call_soon_threadsafe(self._control_events, events),
            clock_ns=self.clock.monotonic_ns,
        )
        return controller

    async def _watch_teach_file(self, controller: AdaptiveController) -> None:
        """Reload the teach file when it changes (`edge-agent teach reset`, another agent's
        export copied in); the controller uses it from the next program start."""
        changed, stamp = self._teach.changed_since(None)
        while True:
            await asyncio.sleep(TEACH_FILE_CHECK_S)
            changed, stamp = self._teach.changed_since(stamp)
            if not changed:
                continue
            try:
                controller.set_taught(await asyncio.to_thread(self._teach.load))
                log.info("teach file %s reloaded", self._teach.path)
            except TeachError as exc:
                log.error("%s; keeping the records already loaded", exc)

    def _save_taught(self, record) -> None:
        """In a worker thread (the teach file is fsynced). A save that fails (a full disk, a
        folder the agent may not write) is one line and counted, never a task's traceback:
        the controller keeps using the record until the agent stops, and the record is in
        the telemetry's `teach_in_learned` event."""
        try:
            self._teach.put(record)
        except TeachError as exc:
            self.control_events["teach_save_failed"] += 1
            log.error("%s; tool %d's record is used until the agent stops", exc, record.tool)

    def _control_events(self, events: list[tuple[str, dict]]) -> None:
        """Events from the control thread, on the event loop: stored as telemetry; a teach-in
        record also goes to the teach file (in a worker thread: it fsyncs)."""
        for kind, detail in events:
            self.control_events[kind] += 1
            if kind == "teach_in_learned":
                record = detail["record"]
                detail = dataclasses.asdict(record)
                self._background(asyncio.to_thread(self._save_taught, record))
            log.log(
                logging.WARNING if kind in ("overload", "breakage", "undercut") else logging.INFO,
                "control: %s %s",
                kind,
                detail,
            )
            self._background(self.store_event(kind, detail))

    def _background(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks_in_flight.add(task)
        task.add_done_callback(self._tasks_in_flight.discard)

    def _identified(self, source: Source, identity: dict) -> None:
        """A device said what it is (the bridge answers IDENTIFY on every connection): an
        event, and a new birth when its firmware differs from the one the last birth named."""
        if not self._spool_open:
            return  # open_spool's birth and event carry it
        self._background(self.store_event(f"{source.name}_identified", identity))
        if identity.get("firmware") != self._birth_firmware:
            self._background(self.store_birth())

    def _firmware(self) -> str | None:
        """What the birth names: the firmware of the first source that has told its own."""
        return next((s.identity["firmware"] for s in self.sources.values() if s.identity), None)

    @property
    def latest(self) -> dict[str, Sample]:
        """Each channel's latest sample as its source delivered it."""
        return self.router.latest

    @property
    def filtered(self) -> dict[str, Sample]:
        """Each filtered channel's latest output of its chain."""
        return self.router.filtered

    def _on_samples(self, samples: list[Sample]) -> None:
        arrived_ns = self.clock.monotonic_ns()
        routed = self.router.route(samples, arrived_ns)
        # The builder drops samples of channels the table does not publish.
        full = False
        for channel, sample in routed.telemetry:
            full |= self.builder.add(channel, sample, arrived_ns)
        if full:
            self._full.set()
        if routed.control:
            self._control_inbox.put(routed.control)
            if self.control is not None:
                self.control.notify()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until `stop` is set (or the task is cancelled); always stops in the order
        docs/service.md gives: the feed made safe, the open batch spooled, the death
        published, the sources closed."""
        stop = stop or asyncio.Event()
        reading = [asyncio.create_task(s.run(), name=s.name) for s in self.sources.values()]
        self.spool_damaged = asyncio.get_running_loop().create_future()
        try:
            # Each source gets its own bound to come up: a board's firmware goes in the
            # birth, and a healthy controller's first cycles do not count as "link down".
            await asyncio.gather(*(s.wait_ready(s.ready_wait_s) for s in self.sources.values()))
            await self.open_spool()
        except BaseException:
            await cancel_and_wait(reading)
            await self.spool.close()
            raise
        publishing = []
        if self.publisher is not None:
            publishing.append(asyncio.create_task(self.publisher.run(), name="publisher"))
        log.info(
            "agent %s for %s/%s: reading %s",
            __version__,
            self.config.machine.site,
            self.config.machine.machine_id,
            ", ".join(f"{s.name} {s.stats().where}" for s in self.sources.values()),
        )
        tasks, announce = [], []
        try:
            if self.config.control.enabled:
                self._start_control()
            tasks += [
                asyncio.create_task(self._flush_periodically(), name="frames"),
                asyncio.create_task(self._log_stats(), name="stats"),
            ]
            announce.append(asyncio.create_task(self._announce_up(), name="up"))
            stopped = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait(
                [stopped, self.spool_damaged, *reading, *tasks, *publishing],
                return_when=asyncio.FIRST_COMPLETED,
            )
            stopped.cancel()
            for task in done:
                if task is not stopped and task.exception():
                    raise task.exception()
        finally:
            await self._stop_control()
            await cancel_and_wait([*tasks, *announce])
            await self.flush()
            # Commits every frame still waiting.
            await self.store_event("agent_stop", {"reason": self.stop_reason})
            await self._store_held_at_stop()
            await self._stop_publishing(publishing)
            await cancel_and_wait(reading)
            await self.spool.close()
            if self.spool_damaged.done():  # found while stopping: logged, not raised
                self.spool_damaged.exception()

    async def _announce_up(self) -> None:
        """`up` is set once the spool, the control loop (when enabled) and the controller
        are all up: what systemd's READY=1 means (docs/service.md)."""
        await asyncio.gather(*(s.wait_ready(None) for s in self.sources.values() if s.controller))
        self.up.set()

    def source_stats(self) -> list[SourceStats]:
        return [s.stats() for s in self.sources.values()]

    def progress(self) -> dict[str, int | None]:
        """Counters that advance while the agent works; None for a part not running (yet).
        The watchdog pings systemd only while each running part's counter moves."""
        running = self.control is not None and self.control.running
        return {
            "control loop": self.control.ticks if running else None,
            **{s.name: s.progress for s in self.source_stats()},
        }

    async def open_spool(self) -> None:
        """Open the spool (salvaging a damaged one), then the boot's birth and start event;
        after a salvage a `spool_corrupt` event saying what was salvaged and lost, and for
        every file moved aside and never salvaged a `spool_orphan` event, at every start.
        A spool that cannot be written stops the start here (one line): a boot whose birth
        is not stored would send frames nobody can decode."""
        spool = await self.spool.open()
        await self.store_birth()
        await self.store_event("agent_start", {"version": __version__})
        self._spool_open = True
        for source in self.sources.values():
            if source.identity is not None:
                await self.store_event(f"{source.name}_identified", source.identity)
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

    async def _stop_publishing(self, tasks: list[asyncio.Task]) -> None:
        """Give the upstream a bounded time for what is spooled, then the death message. A
        reload does not wait: the next configuration's publisher sends what is left."""
        if self.publisher is not None:
            drain_s = self.config.upstream.drain_on_stop_s
            if self.stop_reason != "reload" and not await self.publisher.drain(drain_s):
                log.info("upstream: stopping with payloads still spooled (sent on next start)")
            await self.publisher.send_death(min(1.0, drain_s))
        await cancel_and_wait(tasks)

    async def _stop_control(self) -> None:
        """Leave the feed at min(current, safe) first (the agent stopping is a fault like any
        other, docs/safety.md), then stop the loop. The write waits for nothing: the actuator
        closes (the control thread, still finishing its tick, can no longer write after it),
        the link sends it before anything queued, and the flush is bounded by the reply
        timeout (docs/service.md)."""
        if self.control is None:
            return
        cfg, actuator = self.config.control, self.control.actuator
        actuator.close(cfg.override_tag, cfg.safe_override_pct, self.clock.monotonic_ns())
        await asyncio.to_thread(self.control.stop)  # the thread's join, off the event loop
        if self._teach_watch is not None:
            await cancel_and_wait([self._teach_watch])
        await actuator.writer.flush()
        if self._tasks_in_flight:
            await asyncio.wait(list(self._tasks_in_flight))

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

    async def store_birth(self) -> None:
        """The channel table, first in every boot (and, with MQTT, on every connection)."""
        boot, table, t_us = self.boot, self.table, self.clock.stamp_ns() // 1000
        config_hash = hashlib.sha256(repr(self.config).encode()).digest()[:8]
        firmware = self._birth_firmware = self._firmware()

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
                    if not self._spool_open:
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
        if self.publisher is not None:
            self.publisher.notify()

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

    async def _store_held_at_stop(self) -> None:
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

    async def _flush_periodically(self) -> None:
        interval = self.config.telemetry.frame_interval_s
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), interval)
            jump_ns = self.clock.check_jump()
            if jump_ns:
                log.warning("wall clock jumped by %.3f s; stamps re-based", jump_ns / 1e9)
                await self.store_event("clock_jump", {"jump_ns": jump_ns})
            await self.flush()

    async def _log_stats(self) -> None:
        while True:
            await asyncio.sleep(self.config.service.stats_interval_s)
            log.info("health: %s", self.health_line(await self.spool.stats()))

    def health_line(self, spool: dict[str, int]) -> str:
        line = "; ".join(s.line() for s in self.source_stats())
        oldest_s = (self.clock.stamp_ns() - spool["oldest_stored_ns"]) / 1e9
        line += (
            f"; {self.frames_stored} frames stored (last seq {self.last_seq}), "
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
        if self.publisher is not None:
            up = self.publisher.counters
            line += (
                f", upstream {'up' if self.publisher.connected else 'DOWN'}: "
                f"{up['acked']} acknowledged, {up['refused']} refused, "
                f"{up['disconnects'] + up['connect_failures']} connection failures"
            )
        return line


def _size(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n / 2**10:g} KiB"
