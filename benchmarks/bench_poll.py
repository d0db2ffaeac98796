"""Poll plan vs one request per tag: a 200-tag map read from the simulated controller over
loopback Modbus TCP, side by side in one run. Requests per cycle and cycle latency p50/p99."""

from __future__ import annotations

import asyncio

from edge_agent.clock import SystemClock
from edge_agent.config import AgentConfig, MachineConfig
from edge_agent.registers import Table, Tag, ValueType
from edge_agent.sources.modbus import ModbusPoller
from edge_agent.sources.modbus_config import ControllerConfig, PollGroup
from edge_agent.sources.modbus_link import ModbusLink
from edge_agent.sources.modbus_poll import PlannedRead
from edge_agent.sources.poll_plan import ReadRequest
from hil.controller import SimulatedController

CYCLES = 200


def two_hundred_tags() -> list[Tag]:
    """A realistic controller map: blocks of status words, scaled ints and floats, a
    bank of bits, some blocks word-swapped, small unmapped holes between blocks."""
    tags, address = [], 0
    kinds = [
        ValueType.UINT16,
        ValueType.INT16,
        ValueType.INT32,
        ValueType.FLOAT32,
        ValueType.UINT32,
    ]
    for i in range(170):
        vtype = kinds[i % len(kinds)]
        table = Table.INPUT if i < 120 else Table.HOLDING
        if i == 120:
            address = 0
        tags.append(
            Tag(f"r{i:03d}", address, table, vtype, scale=0.1 if i % 3 else 1.0, poll_group="bench")
        )
        address += vtype.words
    tags += [
        Tag(f"b{i:03d}", i, Table.DISCRETE, ValueType.BOOL, poll_group="bench") for i in range(30)
    ]
    return tags


class StaticPlant:
    """Values that do not move: the benchmark measures the protocol, not a model."""

    def __init__(self, tags: list[Tag]):
        self._values = {t.name: float(i % 50) for i, t in enumerate(tags)}

    def advance_to(self, t_s: float) -> None:
        pass

    def values(self) -> dict[str, float]:
        return self._values

    def write(self, name: str, value: float) -> None:
        raise ValueError(name)


async def _measure(tags: list[Tag], per_tag: bool) -> tuple[int, float, float]:
    controller = SimulatedController(StaticPlant(tags), tags=tuple(tags))
    port = await controller.start_tcp("127.0.0.1", 0)
    config = AgentConfig(
        MachineConfig("bench", "bench"),
        ControllerConfig(port=port),
        tuple(tags),
        {"bench": PollGroup("bench", 0.1, 0.3)},
    )
    link = ModbusLink(config.controller)
    maintain = asyncio.create_task(link.maintain())
    try:
        await link.wait_connected(5)
        poller = ModbusPoller(config, link, SystemClock(), lambda samples: None)
        if per_tag:
            poller.plans["bench"] = [
                PlannedRead(ReadRequest(t.table, t.address, t.span, (t,))) for t in tags
            ]
        for _ in range(5):  # warm up
            await poller.poll_once("bench")
        stats = poller.group_stats["bench"]
        stats.latency = type(stats.latency)()
        for _ in range(CYCLES):
            await poller.poll_once("bench")
        assert poller.counters["samples"] >= CYCLES * len(tags)
        return (
            poller.requests_per_cycle["bench"],
            stats.latency.percentile(50) * 1e3,
            stats.latency.percentile(99) * 1e3,
        )
    finally:
        maintain.cancel()
        await asyncio.gather(maintain, return_exceptions=True)
        await controller.stop()


def run():
    tags = two_hundred_tags()
    naive = asyncio.run(_measure(tags, per_tag=True))
    planned = asyncio.run(_measure(tags, per_tag=False))
    return [
        (
            "200-tag map: requests per poll cycle",
            "one per tag",
            naive[0],
            "poll plan",
            planned[0],
            "requests",
        ),
        (
            "200-tag map: poll cycle latency p50 (TCP loopback)",
            "one per tag",
            naive[1],
            "poll plan",
            planned[1],
            "ms",
        ),
        (
            "200-tag map: poll cycle latency p99 (TCP loopback)",
            "one per tag",
            naive[2],
            "poll plan",
            planned[2],
            "ms",
        ),
    ]
