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
import logging
import os
from collections.abc import Callable, Mapping

from . import __version__
from .backoff import Backoff
from .clock import SystemClock
from .config import AgentConfig
from .control.host import ControlHost
from .control.loop import ControlLoop
from .routing import SampleRouter
from .samples import Sample
from .sources.base import Source, SourceStats
from .sources.registry import declared, make_sources
from .tasks import cancel_and_wait
from .telemetry.journal import Journal
from .upstream.file_link import FileLink
from .upstream.mqtt_link import MqttLink, settings_from
from .upstream.publisher import Publisher, Topics

log = logging.getLogger(__name__)


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
        #: The source that holds the one writer (and whose link the control loop watches):
        #: the one that reads the override, where control is on.
        override = config.control.override_tag if config.control.enabled else None
        self.controller_source = next(
            self.sources[name]
            for name, declaration in declared(config)
            if self.sources[name].controller
            and (override is None or any(c.name == override for c in declaration.channels))
        )
        self._birth_firmware: str | None = None  # the firmware the last birth named
        self.router = SampleRouter(config.channels)  # its control inputs: the control host's
        self.journal = Journal(config, self.boot, self.clock)
        self.publisher = self._publisher(config)
        if self.publisher is not None:
            self.journal.on_stored = self.publisher.notify
        self.control_host = ControlHost(
            config.control,
            self.clock,
            self.controller_source,
            self.router,
            self.journal.store_event,
        )
        self._tasks_in_flight: set[asyncio.Task] = set()
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
            self.journal.spool,
            make_link,
            topics,
            self.boot,
            up.window,
            Backoff(up.reconnect_min_s, up.reconnect_max_s),
            delivery=up.delivery,
            max_unacked=up.max_unacked,
            ack_timeout_s=up.ack_timeout_s,
        )

    def _background(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks_in_flight.add(task)
        task.add_done_callback(self._tasks_in_flight.discard)

    def _identified(self, source: Source, identity: dict) -> None:
        """A device said what it is (the bridge answers IDENTIFY on every connection): an
        event, and a new birth when its firmware differs from the one the last birth named."""
        if not self.journal.opened:
            return  # open_spool's birth and event carry it
        self._background(self.journal.store_event(f"{source.name}_identified", identity))
        if self._firmware() != self._birth_firmware:
            self._background(self.store_birth())

    def _firmware(self) -> str | None:
        """What the birth names: the firmware of the first source that has told its own (the
        bridge's board; a controller's identity is an event only)."""
        return next(
            (
                s.identity["firmware"]
                for s in self.sources.values()
                if s.identity and "firmware" in s.identity
            ),
            None,
        )

    async def store_birth(self) -> None:
        self._birth_firmware = self._firmware()
        await self.journal.store_birth(self._birth_firmware)

    @property
    def control(self) -> ControlLoop | None:
        """The control loop, once made (`[control] enabled`)."""
        return self.control_host.loop

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
        self.journal.add(routed.telemetry, arrived_ns)
        if routed.control:
            self.control_host.deliver(routed.control)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until `stop` is set (or the task is cancelled); always stops in the order
        docs/service.md gives: the feed made safe, the open batch spooled, the death
        published, the sources closed."""
        stop = stop or asyncio.Event()
        reading = [asyncio.create_task(s.run(), name=s.name) for s in self.sources.values()]
        journal = self.journal
        try:
            # Each source gets its own bound to come up: a board's firmware goes in the
            # birth, and a healthy controller's first cycles do not count as "link down".
            await asyncio.gather(*(s.wait_ready(s.ready_wait_s) for s in self.sources.values()))
            await self.open_spool()
        except BaseException:
            await cancel_and_wait(reading)
            await journal.spool.close()
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
                self.control_host.start()
            tasks += [
                asyncio.create_task(journal.flush_periodically(), name="frames"),
                asyncio.create_task(self._log_stats(), name="stats"),
            ]
            announce.append(asyncio.create_task(self._announce_up(), name="up"))
            stopped = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait(
                [stopped, journal.spool_damaged, *reading, *tasks, *publishing],
                return_when=asyncio.FIRST_COMPLETED,
            )
            stopped.cancel()
            for task in done:
                if task is not stopped and task.exception():
                    raise task.exception()
        finally:
            await self.control_host.stop()
            if self._tasks_in_flight:
                await asyncio.wait(list(self._tasks_in_flight))
            await cancel_and_wait([*tasks, *announce])
            await journal.flush()
            # Commits every frame still waiting.
            await journal.store_event("agent_stop", {"reason": self.stop_reason})
            await journal.store_held_at_stop()
            await self._stop_publishing(publishing)
            await cancel_and_wait(reading)
            await journal.spool.close()
            if journal.spool_damaged.done():  # found while stopping: logged, not raised
                journal.spool_damaged.exception()

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
        """The journal's spool, birth and start event; then what each source's device said it
        is, as events."""
        self._birth_firmware = self._firmware()
        await self.journal.open(self._birth_firmware)
        for source in self.sources.values():
            if source.identity is not None:
                await self.journal.store_event(f"{source.name}_identified", source.identity)

    async def _stop_publishing(self, tasks: list[asyncio.Task]) -> None:
        """Give the upstream a bounded time for what is spooled, then the death message. A
        reload does not wait: the next configuration's publisher sends what is left."""
        if self.publisher is not None:
            drain_s = self.config.upstream.drain_on_stop_s
            if self.stop_reason != "reload" and not await self.publisher.drain(drain_s):
                log.info("upstream: stopping with payloads still spooled (sent on next start)")
            await self.publisher.send_death(min(1.0, drain_s))
        await cancel_and_wait(tasks)

    async def _log_stats(self) -> None:
        while True:
            await asyncio.sleep(self.config.service.stats_interval_s)
            log.info("health: %s", self.health_line(await self.journal.spool.stats()))

    def health_line(self, spool: dict[str, int]) -> str:
        line = "; ".join(s.line() for s in self.source_stats())
        line += "; " + self.journal.health_words(spool)
        if self.publisher is not None:
            up = self.publisher.counters
            line += (
                f", upstream {'up' if self.publisher.connected else 'DOWN'}: "
                f"{up['acked']} acknowledged, {up['refused']} refused, "
                f"{up['disconnects'] + up['connect_failures']} connection failures"
            )
        return line
