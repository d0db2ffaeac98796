"""The Modbus source: polls a controller's register map by poll group and emits samples.

Each poll group reads its planned requests once per period on an absolute-deadline
schedule; the sans-IO core (`modbus_poll.py`) decodes the replies with the register-decoding
kernel into one `Sample` per tag with its quality. Exception replies, timeouts and a lost
link are counted and logged once per change of state; they never stop the poller. The
poller never writes to the machine; the link's one writer goes to the actuator
(`ModbusSource.take_writer`), only for the targets `writable_tags` finds whole.
"""

from __future__ import annotations

import asyncio

from ..config import AgentConfig, ConfigError, ControlConfig
from ..registers import Table, Tag, ValueType
from ..samples import Sample
from ..tasks import run_together
from .base import (
    FLOAT_QUANTUM,
    Deadlines,
    Declaration,
    Emit,
    GroupFigures,
    SourceChannel,
    SourceStats,
)
from .modbus_link import LinkError, ModbusLink, RegisterWriter, make_client
from .modbus_poll import PollCore, group_requests


def default_quantum(tag: Tag) -> float:
    """What a tag's values are integers of, unless configured: the register's own
    resolution (its scale) for integer registers, FLOAT_QUANTUM for floats."""
    if tag.type in (ValueType.FLOAT32, ValueType.FLOAT64):
        return FLOAT_QUANTUM
    return tag.scale if tag.scale > 0 else 1.0


def declare(config: AgentConfig) -> Declaration:
    """Every tag, in the map's order; a poll group is a time group (one stamp a cycle)."""
    return Declaration(
        tuple(sorted(config.poll_groups)),
        tuple(
            SourceChannel(
                tag.name,
                tag.unit,
                default_quantum(tag),
                config.poll_groups[tag.poll_group].period_s,
                tag.poll_group,
                f"poll_groups.{tag.poll_group}",
            )
            for tag in config.tags
        ),
    )


def read_plan(config: AgentConfig) -> dict[str, str]:
    """Each poll group's read requests, as `check-config` shows them."""
    return {
        name: f"{len(requests)} read requests: "
        + ", ".join(f"{r.table.value} {r.address}+{r.count}" for r in requests)
        for name, requests in group_requests(config).items()
    }


class ModbusPoller:
    """Reads every poll group of one controller through one `ModbusLink`: the schedule and
    the sends; what to read and what a reply means is the core's (`modbus_poll.py`)."""

    def __init__(self, config: AgentConfig, link: ModbusLink, clock, emit: Emit):
        self.link = link
        self.clock = clock
        self.emit = emit
        self.core = PollCore(config)
        self.groups = self.core.groups
        self.plans = self.core.plans
        self.counters = self.core.counters
        self.group_stats = self.core.group_stats

    @property
    def requests_per_cycle(self) -> dict[str, int]:
        return self.core.requests_per_cycle

    async def run(self) -> None:
        """Poll every group until cancelled."""
        await run_together((f"poll-{name}", self.run_group(name)) for name in self.groups)

    async def run_group(self, name: str) -> None:
        """Poll one group on an absolute-deadline schedule; a late cycle skips ahead
        rather than bunching reads."""
        deadlines = Deadlines(self.groups[name].period_s, self.clock.monotonic_ns())
        while True:
            await self.poll_once(name)
            sleep_s, missed = deadlines.after_cycle(self.clock.monotonic_ns())
            self.group_stats[name].overruns += missed
            await asyncio.sleep(sleep_s)

    async def poll_once(self, name: str) -> list[Sample]:
        """One cycle of one group: read, decode, mark stale, emit. Returns what it emitted."""
        core = self.core
        started = self.clock.monotonic_ns()
        # One stamp for the whole cycle (like one gather in Telegraf): the group is a snapshot,
        # and its channels share their stamps on the wire (a time group, docs/wire-format.md).
        stamp = self.clock.stamp_ns()
        samples: list[Sample] = []
        waiting = list(self.plans[name])
        while waiting:
            planned = waiting.pop(0)
            core.sent()
            try:
                reply = await self.link.read(planned.request)
            except LinkError as exc:
                core.failed(planned, exc.kind, exc.detail)
                continue
            made, instead = core.replied(name, planned, reply, self.clock.monotonic_ns(), stamp)
            samples += made
            waiting[:0] = instead
        samples += core.cycle_done(name, started, self.clock.monotonic_ns(), stamp)
        if samples:
            self.counters["samples"] += len(samples)
            self.emit(samples)
        return samples


class ModbusSource:
    """The controller over Modbus: one link, its poller, and the link's one writer."""

    name = "controller"
    controller = True
    identity = None

    def __init__(self, config: AgentConfig, clock, emit: Emit, client_factory=None):
        self.link = ModbusLink(config.controller, client_factory or make_client)
        self.tags = {t.name: t for t in config.tags}
        self.poller = ModbusPoller(config, self.link, clock, emit)
        self.ready_wait_s = config.controller.timeout_s
        self.polling = False

    @property
    def connected(self) -> bool:
        return self.link.connected

    async def run(self) -> None:
        await run_together((("link", self.link.maintain()), ("poller", self._poll())))

    async def _poll(self) -> None:
        # The first connection gets one reply timeout before polling starts, so that a
        # healthy start does not count its first cycles as "link down"; a dead controller is
        # still polled (its values go stale) after that.
        await self.link.wait_connected(self.ready_wait_s)
        self.polling = True
        try:
            await self.poller.run()
        finally:
            self.polling = False

    async def wait_ready(self, timeout_s: float | None) -> bool:
        return await self.link.wait_connected(timeout_s)

    def take_writer(self, loop: asyncio.AbstractEventLoop) -> RegisterWriter:
        return self.link.take_writer(loop)

    def write_targets(self, control: ControlConfig) -> dict[str, Tag]:
        return writable_tags(control, self.tags)

    def stats(self) -> SourceStats:
        link, poller = self.link, self.poller
        faults = dict(poller.counters)
        counts = {k: faults.pop(k, 0) for k in ("requests", "preempted")}
        return SourceStats(
            self.name,
            link.where,
            "up" if link.connected else "down",
            link.connected,
            faults.pop("samples", 0),
            link.connects,
            link.disconnects,
            counts,
            faults,
            {
                name: GroupFigures(
                    g.cycles,
                    g.overruns,
                    tuple(g.latency.percentile(q) for q in (50, 99, 100)),
                )
                for name, g in poller.group_stats.items()
            },
            dict(link.write_counters),
            counts["requests"] if self.polling else None,
        )


def writable_tags(cfg: ControlConfig, tags: dict[str, Tag]) -> dict[str, Tag]:
    """The whitelist, each tag checked to be writable as whole registers of its own; a
    `ConfigError` (one line) names the first that is not."""
    whitelist = {}
    for name in cfg.writable:
        tag = tags.get(name)
        if tag is None:
            raise ConfigError(f"[control] writable: no tag named {name!r}")
        why = _not_whole(tag, tags.values())
        if why:
            raise ConfigError(f"[control] writable: {name!r} {why}: refused")
        whitelist[name] = tag
    return whitelist


def _not_whole(tag: Tag, tags) -> str:
    """Why a write of `tag` would touch what is not its own; "" when it would not."""
    if tag.table is not Table.HOLDING:
        return f"is a {tag.table.value} tag: only holding registers are written"
    if tag.type is ValueType.BITFIELD:
        return (
            f"is a bitfield (bits {tag.bit}..{tag.bit + tag.width - 1} of register "
            f"{tag.address}): a whole-register write would clobber the other bits"
        )
    for other in tags:
        shared = other.table is tag.table and other.address < tag.end and tag.address < other.end
        if shared and other is not tag:
            return (
                f"shares holding register {max(tag.address, other.address)} with "
                f"{other.name!r}: a write would clobber it"
            )
    return ""
