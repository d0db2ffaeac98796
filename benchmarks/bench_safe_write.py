"""Decision to wire: how long an urgent write (the safe override, a feed hold) takes from the
control thread's `writer.write` to the controller receiving its request, while the poller
keeps the link busy with the demo's reads (fast group every 20 ms, slow every 1 s). Modbus
TCP on loopback and Modbus RTU on a pseudo-terminal pair, the simulated controller healthy,
then silent (every request swallowed, so each read waits the whole reply timeout).

Baseline: the same link taking its requests first in, first out (what pymodbus' own lock
gave before the link ordered them: a write waited behind every read queued before it, and
over TCP pymodbus drops a link silent for four requests, failing what still waited).
Ours: the link's `RequestQueue`. The reply timeout here is 0.2 s: the silent RTU figures
scale with it (an urgent write waits at most for the request in flight, one timeout).
A pty has no baud rate: a real RTU line adds the frame's time on the wire (15 bytes at
19200 baud: 7.8 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import statistics
import time
from collections import deque

from edge_agent.clock import SystemClock
from edge_agent.sources.modbus import ModbusPoller
from edge_agent.sources.modbus_link import ModbusLink
from edge_agent.tasks import cancel_and_wait
from hil.controller import SimulatedController
from hil.demo import demo_config
from hil.plant import demo_plant
from hil.ptypair import PtyPair
from hil.register_map import AGENT_OVERRIDE

TIMEOUT_S = 0.2
HEALTHY_SAMPLES = 300
SILENT_SAMPLES = 40


class FifoQueue:
    """The baseline order: one line, first in first out, nothing superseded or abandoned."""

    def __init__(self):
        self.in_flight = None
        self._jobs: deque = deque()

    def __len__(self):
        return len(self._jobs)

    def put(self, job):
        self._jobs.append(job)

    def take(self):
        self.in_flight = self._jobs.popleft() if self._jobs else None
        return self.in_flight

    def done(self, job):
        self.in_flight = None

    def preempts(self):
        return False

    def drain(self):
        jobs, self._jobs = list(self._jobs), deque()
        return jobs

    def discard(self, job):
        with contextlib.suppress(ValueError):
            self._jobs.remove(job)
            return True
        return False


async def _measure(rtu: bool, silent: bool, fifo: bool) -> tuple[list[float], int]:
    """Decision-to-wire times (ms) of urgent writes asked at random moments, and how many
    never reached the controller (failed on a link pymodbus closed while they waited)."""
    plant = demo_plant()
    controller = SimulatedController(plant)
    arrivals: dict[int, float] = {}

    def on_request(pdu):
        if pdu.function_code == 16:
            arrivals.setdefault(pdu.registers[0], time.monotonic())

    controller.on_request = on_request
    with contextlib.ExitStack() as stack:
        if rtu:
            pair = stack.enter_context(PtyPair())
            await controller.start_rtu(pair.a, baudrate=115200)
            config = demo_config(serial_port=pair.b)
        else:
            config = demo_config(port=await controller.start_tcp("127.0.0.1", 0))
        config = dataclasses.replace(
            config,
            controller=dataclasses.replace(
                config.controller, timeout_s=TIMEOUT_S, reconnect_min_s=0.02, reconnect_max_s=0.1
            ),
        )
        tag = next(t for t in config.tags if t.name == AGENT_OVERRIDE)
        link = ModbusLink(config.controller)
        if fifo:
            link.queue = FifoQueue()
        writer = link.take_writer(asyncio.get_running_loop())
        maintain = asyncio.create_task(link.maintain())
        poller = ModbusPoller(config, link, SystemClock(), lambda samples: None)
        try:
            await link.wait_connected(5)
            polling = asyncio.create_task(poller.run())
            await asyncio.sleep(0.5)
            controller.faults.silent = silent
            rng = random.Random(7)
            took: list[float] = []
            lost = 0
            for sample in range(SILENT_SAMPLES if silent else HEALTHY_SAMPLES):
                await asyncio.sleep(rng.uniform(0.0, TIMEOUT_S if silent else 0.05))
                if not link.connected:  # TCP: pymodbus drops a link silent for 4 requests
                    await link.wait_connected(5)
                    await asyncio.sleep(rng.uniform(0.0, TIMEOUT_S))
                value = sample % 150 + 1

                def decide(v=value):  # the control thread's side of the decision
                    decided = time.monotonic()
                    writer.write(tag, float(v), urgent=True)
                    return decided

                decided = await asyncio.to_thread(decide)
                await writer.flush()  # sent and answered, timed out, or failed unsent
                if value in arrivals:
                    took.append((arrivals[value] - decided) * 1e3)
                else:
                    lost += 1
                arrivals.clear()
            await cancel_and_wait([polling])
            return took, lost
        finally:
            await cancel_and_wait([maintain])  # re-cancels: pymodbus' wait_for may swallow one
            await controller.stop()


def _percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if q >= 100:
        return max(values)
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def run():
    # The silent runs time out on purpose: as the agent does (edge_agent/logs.py), pymodbus'
    # own lines are off, and the link's and poller's warnings are not the figures.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.getLogger("edge_agent.sources").setLevel(logging.ERROR)
    rows = []
    for transport, rtu in (("TCP", False), ("RTU pty", True)):
        for state, silent in (("healthy", False), ("silent", True)):
            base, base_lost = asyncio.run(_measure(rtu, silent, fifo=True))
            ours, ours_lost = asyncio.run(_measure(rtu, silent, fifo=False))
            what = f"urgent write decision to wire, {transport}, {state} controller"
            for q, label in ((50, "p50"), (100, "max")):
                rows.append(
                    (
                        f"{what}, {label}",
                        "first in first out",
                        _percentile(base, q),
                        "urgent first",
                        _percentile(ours, q),
                        "ms",
                    )
                )
            n = len(base) + base_lost
            rows.append(
                (
                    f"{what}, never sent (link dropped first)",
                    "first in first out",
                    base_lost,
                    "urgent first",
                    ours_lost,
                    f"of {n} writes",
                )
            )
    return rows
