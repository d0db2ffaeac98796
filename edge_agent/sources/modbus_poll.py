"""The Modbus poll core, sans-IO: what each poll group reads, and what its replies mean.

`ModbusPoller` (modbus.py) is the thin shell around it: it keeps the schedule and sends each
request over the link. The core holds the plan of each group (the fewest requests,
`poll_plan.py`), decodes replies with the register-decoding kernel into samples with their
quality, splits a request whose unmapped gap the controller refused, marks values stale
when no good one came for the group's `stale_after_s`, and counts it all. The caller passes
every time; nothing here waits or reads a clock.
"""

from __future__ import annotations

import array
import logging
import math
from collections import Counter
from dataclasses import dataclass, field

from ..config import AgentConfig
from ..registers import Tag
from ..samples import Quality, Sample
from ..stats import LatencyWindow
from .decoding import make_decoder
from .modbus_config import PollGroup
from .poll_plan import PlanLimits, ReadRequest, plan_reads, without_gaps

log = logging.getLogger(__name__)

#: Modbus exception code 02: the controller does not map an address the request read.
ILLEGAL_DATA_ADDRESS = 2


class PlannedRead:
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


class PollCore:
    """Every poll group of one controller: plans in, samples out."""

    def __init__(self, config: AgentConfig):
        self.groups: dict[str, PollGroup] = config.poll_groups
        self.plans: dict[str, list[PlannedRead]] = {
            name: [PlannedRead(r) for r in requests]
            for name, requests in group_requests(config).items()
        }
        self.tag_state: dict[str, _TagState] = {t.name: _TagState() for t in config.tags}
        self.counters: Counter[str] = Counter()
        self.group_stats = {name: GroupStats() for name in self.groups}

    @property
    def requests_per_cycle(self) -> dict[str, int]:
        return {name: len(plan) for name, plan in self.plans.items()}

    def sent(self) -> None:
        self.counters["requests"] += 1

    def failed(self, planned: PlannedRead, kind: str, detail: str) -> None:
        """The link did not bring a reply (`LinkError.kind`): counted; logged once per change
        of state, except what the link logs itself (down) or is its normal work (a read
        abandoned for an urgent write, TCP)."""
        self.counters[kind] += 1
        if kind not in ("down", "preempted"):
            self._note(planned, kind, detail)

    def replied(
        self, group: str, planned: PlannedRead, reply: list[int] | int, now_ns: int, stamp: int
    ) -> tuple[list[Sample], list[PlannedRead]]:
        """A reply (registers, or an exception code): the samples it makes, and the requests
        to send now instead of it (a gap the controller refused, split into gap-free reads
        that the plan keeps from now on)."""
        request = planned.request
        if isinstance(reply, int):
            self.counters[f"exception_{reply:02d}"] += 1
            if reply == ILLEGAL_DATA_ADDRESS and request.has_gaps:
                return [], self._split(group, planned)
            self._note(planned, f"exception {reply:02d}", EXCEPTION_NAMES.get(reply, ""))
            return [Sample(t.name, stamp, math.nan, Quality.BAD) for t in request.tags], []
        self._note(planned, "ok", "")
        planned.decoder.decode(array.array("H", reply), planned.values)
        samples = []
        for tag, value in zip(request.tags, planned.values, strict=True):
            state = self.tag_state[tag.name]
            if math.isfinite(value):
                state.last_value, state.last_good_ns, state.stale = value, now_ns, False
                samples.append(Sample(tag.name, stamp, value, Quality.GOOD))
            else:
                self.counters["bad_values"] += 1
                samples.append(Sample(tag.name, stamp, value, Quality.BAD))
        return samples, []

    def cycle_done(self, group: str, started_ns: int, now_ns: int, stamp: int) -> list[Sample]:
        """The end of one cycle: its time counted, and one STALE sample per tag whose last
        good value passed the group's age limit (with that value)."""
        stats = self.group_stats[group]
        stats.cycles += 1
        stats.latency.add((now_ns - started_ns) / 1e9)
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

    def _split(self, group: str, planned: PlannedRead) -> list[PlannedRead]:
        """The controller refused to read a gap: read the same tags without gaps from now on."""
        plan = self.plans[group]
        index = plan.index(planned)
        parts = [PlannedRead(r) for r in without_gaps(planned.request)]
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

    def _note(self, planned: PlannedRead, status: str, detail: str) -> None:
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


def group_requests(config: AgentConfig) -> dict[str, list[ReadRequest]]:
    """Each poll group's read requests under `[controller]`'s planner limits."""
    c = config.controller
    limits = PlanLimits(
        c.max_registers_per_read, c.max_bits_per_read, c.max_gap_registers, c.max_gap_bits
    )
    return {name: plan_reads(_in_group(config.tags, name), limits) for name in config.poll_groups}


EXCEPTION_NAMES = {
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
