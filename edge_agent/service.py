"""The agent's wiring on one asyncio loop: controller link -> poller -> batcher -> spool.

Data flows one way. The poller hands samples to the batcher synchronously (no queue to
overflow); frames go to the durable sink, whose SQLite work runs in its own thread, so
neither the poller nor (later) the control loop ever waits on the disk.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from contextlib import suppress

from . import __version__
from .clock import SystemClock
from .config import AgentConfig
from .filters.chain import FilterChain
from .samples import Quality, Sample
from .sources.modbus import ModbusPoller
from .sources.modbus_link import ModbusLink, make_client
from .tasks import cancel_and_wait
from .telemetry.frames import Batcher, event_body
from .telemetry.sink import AsyncFrameSink

log = logging.getLogger(__name__)


class Agent:
    """One agent for one machine."""

    def __init__(self, config: AgentConfig, clock=None, client_factory=make_client):
        self.config = config
        self.clock = clock or SystemClock()
        self.boot_id = uuid.uuid4().hex
        self.link = ModbusLink(config.controller, client_factory)
        self.poller = ModbusPoller(config, self.link, self.clock, self._on_samples)
        self.latest: dict[str, Sample] = {}
        self.filtered: dict[str, Sample] = {}
        self.chains = {name: FilterChain(channel) for name, channel in config.channels.items()}
        self._include = set(config.telemetry.include) or {t.name for t in config.tags}
        machine = {"site": config.machine.site, "machine": config.machine.machine_id}
        self.batcher = Batcher(self.boot_id, machine, config.telemetry.max_points_per_frame)
        self.sink = AsyncFrameSink(config.spool.path)
        self.frames_stored = 0
        self.bytes_stored = 0
        self.points_stored = 0
        self.last_seq = 0
        self._full = asyncio.Event()

    def _on_samples(self, samples: list[Sample]) -> None:
        for sample in samples:
            name = sample.channel
            self.latest[name] = sample
            chain = self.chains.get(name)
            filtered = _filter(chain, sample) if chain else None
            if filtered is not None:
                self.filtered[name] = filtered
            if name not in self._include:
                continue
            mode = self.config.channels[name].telemetry if chain else "raw"
            full = False
            if mode in ("raw", "both"):
                full |= self.batcher.add(sample)
            if filtered is not None and mode == "filtered":
                full |= self.batcher.add(filtered)
            elif filtered is not None and mode == "both":
                full |= self.batcher.add(filtered._replace(channel=f"{name}_filtered"))
            if full:
                self._full.set()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until `stop` is set (or the task is cancelled); always flushes and closes."""
        stop = stop or asyncio.Event()
        await self.sink.open()
        await self.store_event("agent_start", {"version": __version__})
        log.info(
            "agent %s for %s/%s: polling %s, %s requests per cycle",
            __version__,
            self.config.machine.site,
            self.config.machine.machine_id,
            self.link.where,
            self.poller.requests_per_cycle,
        )
        tasks = [asyncio.create_task(self.link.maintain(), name="link")]
        try:
            # Give the first connection one reply timeout before polling starts, so a
            # healthy start does not count its first cycles as "link down"; a dead
            # controller is still polled (and its values go stale) after that.
            await self.link.wait_connected(self.config.controller.timeout_s)
            tasks += [
                asyncio.create_task(self.poller.run(), name="poller"),
                asyncio.create_task(self._flush_periodically(), name="frames"),
                asyncio.create_task(self._log_stats(), name="stats"),
            ]
            stopped = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            for task in done:
                if task is not stopped and task.exception():
                    raise task.exception()
        finally:
            await cancel_and_wait(tasks)
            await self.flush()
            await self.store_event("agent_stop", {})
            await self.sink.close()

    async def flush(self) -> None:
        """Close the open batch into a frame and store it."""
        points = self.batcher.points
        body = self.batcher.close()
        self._full.clear()
        if body is not None:
            await self._store([("data", body)])
            self.points_stored += points

    async def store_event(self, kind: str, detail: dict) -> None:
        await self._store(
            [("event", event_body(self.boot_id, self.clock.stamp_ns(), kind, detail))]
        )

    async def _store(self, bodies: list[tuple[str, bytes]]) -> None:
        seqs = await self.sink.store(bodies)
        self.frames_stored += len(seqs)
        self.bytes_stored += sum(len(body) for _, body in bodies)
        self.last_seq = seqs[-1]

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
            log.info("health: %s", self.health_line())

    def health_line(self) -> str:
        counts = self.poller.counters
        latency = {
            name: s.latency.percentile(99) * 1e3 for name, s in self.poller.group_stats.items()
        }
        return (
            f"link {'up' if self.link.connected else 'DOWN'}, "
            f"{counts['requests']} requests, {counts['timeout']} timeouts, "
            f"{sum(v for k, v in counts.items() if k.startswith('exception_'))} exception "
            f"replies, poll p99 "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in latency.items())
            + f", {self.frames_stored} frames stored (last seq {self.last_seq})"
        )


def _filter(chain: FilterChain, sample: Sample) -> Sample | None:
    """The chain's output for one sample: a stale sample passes unfiltered (there is no new
    value to feed); a non-finite output is bad; None when decimation keeps no sample."""
    if sample.quality is Quality.STALE:
        return sample
    value = chain.push(sample.value)
    if value is None:
        return None
    quality = Quality.GOOD if math.isfinite(value) else Quality.BAD
    return sample._replace(value=value, quality=quality)
