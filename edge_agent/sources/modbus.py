"""The Modbus source: polls a controller's register map by poll group and emits samples.

Each poll group reads its planned requests once per period on an absolute-deadline
schedule, decodes them with the register-decoding kernel and emits one `Sample` per tag
with its quality. Exception replies, timeouts and a lost link are counted and logged once
per change of state; they never stop the poller. The poller never writes to the machine;
the link's one writer goes to the actuator (`ModbusSource.take_writer`).
"""

from __future__ import annotations

import array
import asyncio
import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import AgentConfig, PollGroup
from ..registers import Tag, ValueType
from ..samples import Quality, Sample
from ..stats import LatencyWindow
from ..tasks import run_together
from .base import Declaration, GroupFigures, SourceChannel, SourceStats
from .decoding import make_decoder
from .modbus_link import LinkError, ModbusLink, RegisterWriter, make_client
from .poll_plan import PlanLimits, ReadRequest, plan_reads, without_gaps

log = logging.getLogger(__name__)

#: Modbus exception code 02: the controller does not map an address the request read.
ILLEGAL_DATA_ADDRESS = 2

Emit = Callable[[list[Sample]], None]
#: A float register's default quantum: a thousandth of its unit (1 W of a kW, 1 um of a mm).
FLOAT_QUANTUM = 0.001


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


class _PlannedRead:
    """A request with its decoder and preallocated output, built once."""

    def __init__(self, request: ReadRequest):
        self.request = request
        self.decoder = make_decoder(request.tags, request.address)
        self.values = array.array("d", bytes(8 * len(request.tags)))
        self.status = "ok"


@dataclass
class _TagState:
    last_value: float = math.nan
    last_good_ns: int | None = None
    stale: bool = False


@dataclass
class GroupStats:
    cycles: int = 0
    overruns: int = 0
    latency: LatencyWindow = field(default_factory=LatencyWindow)


class ModbusPoller:
    """Reads every poll group of one controller through one `ModbusLink`."""

    def __init__(self, config: AgentConfig, link: ModbusLink, clock, emit: Emit):
        self.link = link
        self.clock = clock
        self.emit = emit
        limits = PlanLimits(
            config.controller.max_registers_per_read,
            config.controller.max_bits_per_read,
            config.controller.max_gap_registers,
            config.controller.max_gap_bits,
        )
        self.groups: dict[str, PollGroup] = config.poll_groups
        self.plans: dict[str, list[_PlannedRead]] = {
            name: [_PlannedRead(r) for r in plan_reads(_in_group(config.tags, name), limits)]
            for name in self.groups
        }
        self.tag_state: dict[str, _TagState] = {t.name: _TagState() for t in config.tags}
        self.counters: Counter[str] = Counter()
        self.group_stats = {name: GroupStats() for name in self.groups}

    @property
    def requests_per_cycle(self) -> dict[str, int]:
        return {name: len(plan) for name, plan in self.plans.items()}

    async def run(self) -> None:
        """Poll every group until cancelled."""
        await run_together((f"poll-{name}", self.run_group(name)) for name in self.groups)

    async def run_group(self, name: str) -> None:
        """Poll one group on an absolute-deadline schedule; a late cycle skips ahead
        rather than bunching reads."""
        period_ns = round(self.groups[name].period_s * 1e9)
        deadline = self.clock.monotonic_ns()
        while True:
            await self.poll_once(name)
            deadline += period_ns
            now = self.clock.monotonic_ns()
            if now >= deadline:
                missed = (now - deadline) // period_ns + 1
                self.group_stats[name].overruns += missed
                deadline += missed * period_ns
            await asyncio.sleep((deadline - now) / 1e9)

    async def poll_once(self, name: str) -> list[Sample]:
        """One cycle of one group: read, decode, mark stale, emit. Returns what it emitted."""
        stats = self.group_stats[name]
        started = self.clock.monotonic_ns()
        # One stamp for the whole cycle (like one gather in Telegraf): the group is a snapshot,
        # and its channels share their stamps on the wire (a time group, docs/wire-format.md).
        stamp = self.clock.stamp_ns()
        samples: list[Sample] = []
        for planned in list(self.plans[name]):
            samples.extend(await self._read(name, planned, stamp))
        now = self.clock.monotonic_ns()
        samples.extend(self._stale_samples(name, now, stamp))
        stats.cycles += 1
        stats.latency.add((now - started) / 1e9)
        if samples:
            self.counters["samples"] += len(samples)
            self.emit(samples)
        return samples

    async def _read(self, group: str, planned: _PlannedRead, stamp: int) -> list[Sample]:
        request = planned.request
        self.counters["requests"] += 1
        try:
            reply = await self.link.read(request)
        except LinkError as exc:
            self.counters[exc.kind] += 1
            # The link logs its own state changes; a read abandoned for an urgent write
            # (TCP) is the link's normal work, counted only.
            if exc.kind not in ("down", "preempted"):
                self._note(planned, exc.kind, exc.detail)
            return []
        now = self.clock.monotonic_ns()
        if isinstance(reply, int):
            self.counters[f"exception_{reply:02d}"] += 1
            if reply == ILLEGAL_DATA_ADDRESS and request.has_gaps:
                samples = []
                for part in self._split(group, planned):
                    samples.extend(await self._read(group, part, stamp))
                return samples
            self._note(planned, f"exception {reply:02d}", _EXCEPTION_NAMES.get(reply, ""))
            return self._bad(request.tags, stamp)
        self._note(planned, "ok", "")
        planned.decoder.decode(array.array("H", reply), planned.values)
        samples = []
        for tag, value in zip(request.tags, planned.values, strict=True):
            state = self.tag_state[tag.name]
            if math.isfinite(value):
                state.last_value, state.last_good_ns, state.stale = value, now, False
                samples.append(Sample(tag.name, stamp, value, Quality.GOOD))
            else:
                self.counters["bad_values"] += 1
                samples.append(Sample(tag.name, stamp, value, Quality.BAD))
        return samples

    def _bad(self, tags: tuple[Tag, ...], stamp: int) -> list[Sample]:
        return [Sample(t.name, stamp, math.nan, Quality.BAD) for t in tags]

    def _stale_samples(self, group: str, now_ns: int, stamp: int) -> list[Sample]:
        """One STALE sample per tag when its last good value passes the group's age limit."""
        limit_ns = round(self.groups[group].stale_after_s * 1e9)
        samples = []
        for planned in self.plans[group]:
            for tag in planned.request.tags:
                state = self.tag_state[tag.name]
                if state.stale:
                    continue
                if state.last_good_ns is None:
                    state.last_good_ns = now_ns  # the age counts from the first attempt
                elif now_ns - state.last_good_ns > limit_ns:
                    state.stale = True
                    self.counters["stale"] += 1
                    samples.append(Sample(tag.name, stamp, state.last_value, Quality.STALE))
        return samples

    def _split(self, group: str, planned: _PlannedRead) -> list[_PlannedRead]:
        """The controller refused to read a gap: read the same tags without gaps from now on."""
        plan = self.plans[group]
        index = plan.index(planned)
        parts = [_PlannedRead(r) for r in without_gaps(planned.request)]
        plan[index : index + 1] = parts
        request = planned.request
        log.warning(
            "controller refused %s %d..%d (illegal address in an unmapped gap); "
            "reading it as %d gap-free requests from now on",
            request.table.value,
            request.address,
            request.end - 1,
            len(parts),
        )
        return parts

    def _note(self, planned: _PlannedRead, status: str, detail: str) -> None:
        """Log a request's state only when it changes."""
        if status == planned.status:
            return
        request = planned.request
        what = f"read {request.table.value} {request.address}..{request.end - 1}"
        if status == "ok":
            log.info("%s: replies again", what)
        else:
            log.warning("%s: %s%s", what, status, f" ({detail})" if detail else "")
        planned.status = status


class ModbusSource:
    """The controller over Modbus: one link, its poller, and the link's one writer."""

    name = "controller"
    controller = True
    identity = None

    def __init__(self, config: AgentConfig, clock, emit: Emit, client_factory=None):
        self.link = ModbusLink(config.controller, client_factory or make_client)
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


_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


def _in_group(tags: tuple[Tag, ...], group: str) -> list[Tag]:
    return [t for t in tags if t.poll_group == group]
