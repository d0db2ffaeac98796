"""End to end: the agent adapts the feed of the simulated controller over Modbus TCP, in real
time, with teach-in; it writes through its one actuator and leaves the feed safe on the way out.
(Timing figures are not asserted here: they belong to make hil and make bench.)"""

import asyncio
import dataclasses
import json

import pytest

from edge_agent.control.profile_store import ProfileStore
from edge_agent.service import Agent
from hil.controller import SimulatedController
from hil.demo import demo_config
from hil.plant import CuttingPlant
from hil.register_map import AGENT_OVERRIDE
from hil.scenario import parse_scenario

pytestmark = pytest.mark.timeout(60)

SHORT = parse_scenario(
    """
name = "short"
description = "a rapid, 80 mm in steel, a rapid: about 4 s"
[[segments]]
kind = "rapid"
length_mm = 40
[[segments]]
kind = "cut"
length_mm = 80
depth_mm = 5
width_mm = 10
feed_mm_min = 1500
[[segments]]
kind = "rapid"
length_mm = 40
"""
)


async def _teach_then_adapt(tmp_path):
    plant = CuttingPlant(SHORT)
    controller = SimulatedController(plant)
    port = await controller.start_tcp("127.0.0.1", 0)
    config = demo_config(port=port, spool=str(tmp_path / "spool.db"))
    teach_file = tmp_path / "teach.json"
    control = dataclasses.replace(
        config.control, target_mode="teach_in", teach_fraction=1.0, teach_file=str(teach_file)
    )
    agent = Agent(dataclasses.replace(config, control=control))
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    seen = set()
    try:
        for _ in range(1000):  # the teach-in cut: the agent holds the neutral 100 %
            await asyncio.sleep(0.01)
            seen.add(plant.values()[AGENT_OVERRIDE])
            if plant.result.finished:
                break
        assert plant.result.finished and seen == {100.0}
        for _ in range(300):  # the record reaches the file when the program has ended
            await asyncio.sleep(0.01)
            if teach_file.exists():
                break
        record = json.loads(teach_file.read_text())["tools"]["1"]
        plant.reset_alarm()  # the operator starts the program again: now adaptive
        for _ in range(400):
            await asyncio.sleep(0.01)
            seen.add(plant.values()[AGENT_OVERRIDE])
        assert max(seen) > 100.0  # air boost, then the law aiming at the taught peak
        actuator = agent.control.actuator
        assert actuator.counters["writes"] > 0 and actuator.counters["verified"] > 0
        assert actuator.counters["not_whitelisted"] == 0
        assert agent.control.controller.target_pct() == pytest.approx(
            min(record["peak_load_pct"], 0.9 * control.hard_limit_pct)
        )
    finally:
        stop.set()
        await run
        await controller.stop()
    return plant, agent


def test_the_agent_teaches_in_then_adapts_and_leaves_the_feed_safe_when_it_stops(tmp_path):
    plant, agent = asyncio.run(_teach_then_adapt(tmp_path))
    assert plant.values()[AGENT_OVERRIDE] <= agent.config.control.safe_override_pct
    assert agent.control_host.events["teach_in_learned"] == 1


#: A 5 s dwell first: the agent settles on one override and holds it.
DWELL_FIRST = parse_scenario(
    """
name = "dwell first"
description = "a 5 s dwell, then 80 mm in steel"
[[segments]]
kind = "dwell"
seconds = 5
[[segments]]
kind = "cut"
length_mm = 80
depth_mm = 5
width_mm = 10
feed_mm_min = 1500
"""
)


async def _writes_reaching_the_plant(tmp_path, refresh_s, serve_s):
    """The values of every write the plant took from the agent over Modbus while serving
    (not those of the agent's stop)."""
    plant = CuttingPlant(DWELL_FIRST)
    writes = []
    take = plant.write

    def write(name, value):
        writes.append(value)
        take(name, value)

    plant.write = write
    controller = SimulatedController(plant)
    port = await controller.start_tcp("127.0.0.1", 0)
    config = demo_config(port=port, spool=str(tmp_path / "spool.db"))
    control = dataclasses.replace(
        config.control, refresh_s=refresh_s, teach_file=str(tmp_path / "teach.json")
    )
    stop = asyncio.Event()
    run = asyncio.create_task(Agent(dataclasses.replace(config, control=control)).run(stop))
    try:
        await asyncio.sleep(serve_s)
        served = len(writes)
    finally:
        stop.set()
        await run
        await controller.stop()
    return writes[:served]


def test_the_refresh_writes_reach_the_plant_over_modbus_in_real_time(tmp_path):
    """What a controller-side watchdog is driven by (docs/safety.md): with refresh_s set the
    same override value arrives again and again over Modbus (without refresh_s the steady
    override is written once). The refresh's timing is tested on simulated time
    (tests/test_actuator.py); here only that the re-writes cross the real link."""
    refresh_s = 0.2
    values = asyncio.run(_writes_reaching_the_plant(tmp_path, refresh_s, serve_s=2.5))
    assert sum(a == b for a, b in zip(values, values[1:], strict=False)) >= 3  # re-writes


async def _series_with_preview(tmp_path):
    series = dataclasses.replace(
        SHORT,
        parts=3,
        machine=dataclasses.replace(SHORT.machine, part_change_s=1.0),
    )
    plant = CuttingPlant(series)
    controller = SimulatedController(plant)
    port = await controller.start_tcp("127.0.0.1", 0)
    config = demo_config(port=port, spool=str(tmp_path / "spool.db"))
    control = dataclasses.replace(
        config.control, preview=True, teach_file=str(tmp_path / "teach.json")
    )
    agent = Agent(dataclasses.replace(config, control=control))
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    trimmed, stop_again, run_again = False, asyncio.Event(), None
    try:
        for _ in range(2500):
            await asyncio.sleep(0.01)
            trimmed = trimmed or (agent.control is not None and agent.control.controller.previewing)
            if plant.result.finished:
                break
        await asyncio.sleep(0.3)  # the last part's end reaches the agent
        stop.set()
        await run
        restarted = Agent(dataclasses.replace(config, control=control))  # the kept profiles
        run_again = asyncio.create_task(restarted.run(stop_again))
        for _ in range(300):
            await asyncio.sleep(0.01)
            if restarted.control is not None:
                break
    finally:
        stop.set()
        await run
        stop_again.set()
        if run_again is not None:
            await run_again
        await controller.stop()
    return plant, agent, trimmed, restarted


def test_the_agent_learns_each_part_and_previews_the_next_in_real_time(tmp_path):
    plant, agent, trimmed, restarted = asyncio.run(_series_with_preview(tmp_path))
    assert plant.result.finished
    events = agent.control_host.events
    assert events["part"] >= 2 and events["profile_learned"] >= 1
    assert trimmed  # a later part ran on the learned profile
    assert agent.control_host.book.profiles
    assert list((tmp_path / "profiles").glob("program-1001-tool-1.json"))
    last = ProfileStore(tmp_path / "profiles").last_part(1001, 1)  # the last part, kept beside
    assert last is not None and last["t_s"][-1] > 1.0 and max(last["target_pct"]) > 0
    assert restarted.control_host.book.profiles.keys() == agent.control_host.book.profiles.keys()
