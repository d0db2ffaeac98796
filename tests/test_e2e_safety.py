"""End to end over Modbus TCP, the whole agent against the simulated controller falling
silent (`faults.silent`: requests swallowed, no reply): the safe override reaches the
controller within one reply timeout of the decision although reads are queued to it, and a
stop after seconds of silence ends within about one reply timeout, not one per request asked
meanwhile. (Figures per transport: `make bench`, bench_safe_write.)"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from edge_agent.service import Agent
from hil.controller import SimulatedController
from hil.demo import demo_config
from hil.plant import demo_plant
from hil.register_map import AGENT_OVERRIDE

pytestmark = pytest.mark.timeout(60)

#: The reply timeout: short for a quick test, long against a loaded machine's scheduling.
TIMEOUT_S = 1.0
#: Slack for a loaded two-core machine on top of the bounds (thread joins, event loop).
SLACK_S = 1.0


def silent_prone_config(tmp_path, port):
    config = demo_config(port=port, spool=str(tmp_path / "spool.db"))
    return dataclasses.replace(
        config,
        controller=dataclasses.replace(
            config.controller, timeout_s=TIMEOUT_S, reconnect_min_s=0.05, reconnect_max_s=0.2
        ),
        upstream=dataclasses.replace(config.upstream, kind="none"),
    )


class Watch:
    """What the agent decided (its writer's calls) and what reached the controller, timed."""

    def __init__(self, controller: SimulatedController, override_address: int):
        self.decided: list[tuple[float, float]] = []  # (monotonic s, value)
        self.arrived: list[tuple[float, int]] = []  # (monotonic s, register value)
        self.reads_arrived = 0

        def on_request(pdu):
            if pdu.function_code == 16 and pdu.address == override_address:
                self.arrived.append((time.monotonic(), pdu.registers[0]))
            elif pdu.function_code in (1, 2, 3, 4):
                self.reads_arrived += 1

        controller.on_request = on_request

    def record_decisions(self, writer) -> None:
        write = writer.write

        def recorded(tag, value, *args, **kwargs):
            self.decided.append((time.monotonic(), value))
            write(tag, value, *args, **kwargs)

        writer.write = recorded


async def boosted_agent(tmp_path):
    """The agent running against the demo plant's air moves, its override boosted."""
    plant = demo_plant()
    controller = SimulatedController(plant)
    port = await controller.start_tcp("127.0.0.1", 0)
    agent = Agent(silent_prone_config(tmp_path, port))
    override = next(t for t in agent.config.tags if t.name == AGENT_OVERRIDE)
    watch = Watch(controller, override.address)
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    deadline = time.monotonic() + 20
    while agent.control is None:
        assert time.monotonic() < deadline, "control never started"
        await asyncio.sleep(0.01)
    watch.record_decisions(agent.control.actuator.writer)
    while plant.values()[AGENT_OVERRIDE] <= 120:
        assert time.monotonic() < deadline, "no boost"
        await asyncio.sleep(0.01)
    return controller, agent, watch, stop, run


def test_the_safe_override_reaches_a_silent_controller_within_one_timeout_of_the_decision(
    tmp_path,
):
    async def scenario():
        controller, agent, watch, stop, run = await boosted_agent(tmp_path)
        try:
            silent_at = time.monotonic()
            controller.faults.silent = True  # reads now each wait the whole timeout
            deadline = silent_at + 10
            while not any(v <= 100 for _, v in watch.arrived if _ > silent_at):
                assert time.monotonic() < deadline, f"no safe write; decided {watch.decided}"
                await asyncio.sleep(0.01)
        finally:
            stop.set()
            await run
            await controller.stop()
        return silent_at, watch, agent

    silent_at, watch, agent = asyncio.run(scenario())
    decided = next(t for t, v in watch.decided if t > silent_at and v <= 100)
    arrived = next(t for t, v in watch.arrived if t > silent_at and v <= 100)
    assert agent.control.controller.override is not None
    # Before: behind the read in flight and the other poll group's queued read, each
    # waiting the timeout (1.3 to 2 s here).
    assert arrived - decided < TIMEOUT_S


def test_a_stop_after_seconds_of_silence_ends_within_about_one_reply_timeout(tmp_path):
    async def scenario():
        controller, agent, watch, stop, run = await boosted_agent(tmp_path)
        try:
            controller.faults.silent = True
            await asyncio.sleep(3 * TIMEOUT_S)  # re-sends and reads pile up meanwhile
            stopping = time.monotonic()
            stop.set()
            await asyncio.wait_for(asyncio.shield(run), 30)
            took = time.monotonic() - stopping
        finally:
            stop.set()
            await run
            await controller.stop()
        return took, agent

    took, agent = asyncio.run(scenario())
    # One reply timeout for the last write; the rest (control join, spool commit) is short.
    # Before: every queued write and read waited its own timeout (several seconds here;
    # 225.6 s with timeout_s = 5 and 30 s of silence).
    assert took < TIMEOUT_S + SLACK_S, agent.controller_source.link.write_counters
