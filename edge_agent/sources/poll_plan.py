"""The poll planner: turns a register map into the fewest Modbus read requests.

Sans-IO: tags in, requests out. Merges tags of one table whose registers are contiguous
or separated by at most `max_gap` unmapped registers (reading the gap costs bytes; a
round trip costs milliseconds), never above the per-request maximum. Never talks to a
controller.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..registers import Table, Tag


@dataclass(frozen=True)
class ReadRequest:
    """One read of `count` registers (or bits) of `table` from `address`, and the tags
    it carries (sorted by address)."""

    table: Table
    address: int
    count: int
    tags: tuple[Tag, ...]

    @property
    def end(self) -> int:
        return self.address + self.count

    @property
    def has_gaps(self) -> bool:
        """Whether the request reads addresses that no tag maps."""
        covered = 0
        reach = self.address
        for tag in self.tags:
            covered += max(0, tag.end - max(tag.address, reach))
            reach = max(reach, tag.end)
        return covered < self.count


@dataclass(frozen=True)
class PlanLimits:
    max_registers: int = 125
    max_bits: int = 2000
    max_gap_registers: int = 0
    max_gap_bits: int = 0

    def for_table(self, table: Table) -> tuple[int, int]:
        """(maximum count, maximum gap) for one request of `table`."""
        if table.is_bits:
            return self.max_bits, self.max_gap_bits
        return self.max_registers, self.max_gap_registers


def plan_reads(tags: Iterable[Tag], limits: PlanLimits = PlanLimits()) -> list[ReadRequest]:
    """The read requests covering every tag, each register exactly once.

    Greedy over tags sorted by address: a tag joins the open request when the gap
    before it is within the limit and the request stays within the maximum count.
    """
    by_table: dict[Table, list[Tag]] = {}
    for tag in tags:
        by_table.setdefault(tag.table, []).append(tag)
    requests: list[ReadRequest] = []
    for table in Table:
        ordered = sorted(by_table.get(table, ()), key=lambda t: (t.address, t.end))
        max_count, max_gap = limits.for_table(table)
        group: list[Tag] = []
        start = end = 0
        for tag in ordered:
            if group and tag.address - end <= max_gap and max(end, tag.end) - start <= max_count:
                group.append(tag)
                end = max(end, tag.end)
                continue
            if group:
                requests.append(ReadRequest(table, start, end - start, tuple(group)))
            group, start, end = [tag], tag.address, tag.end
        if group:
            requests.append(ReadRequest(table, start, end - start, tuple(group)))
    return requests


def without_gaps(request: ReadRequest) -> list[ReadRequest]:
    """The same tags as `request`, read in gap-free requests: the fallback for a
    controller that refuses to read unmapped registers."""
    return plan_reads(request.tags, PlanLimits(request.count, request.count, 0, 0))
