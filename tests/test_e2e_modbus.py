"""End to end: the agent against the simulated controller over loopback TCP and over RTU on a
pseudo-terminal pair. Real sockets and real pymodbus on both sides; the plant's clock is
frozen or stepped by the test, so the values the agent must read are known exactly."""

import asyncio
import contextlib
import dataclasses
import math

import pytest

from edge_agent.samples import Quality
from edge_agent.service import Agent
from hil.codec import as_registered
from hil.controller import SimulatedController
from hil.demo import demo_config
from hil.plant import demo_plant
from hil.ptypair import PtyPair
from hil.register_map import BY_NAME

pytestmark = pytest.mark.timeout(60)


def fast(config, **controller):
    """Short periods and reconnect delays so the test takes a second, not a minute."""
    groups = {
        name: dataclasses.replace(g, period_s=0.02, stale_after_s=0.2)
        for name, g in config.poll_groups.items()
    }
    return dataclasses.replace(
        config,
        poll_groups=groups,
        controller=dataclasses.replace(
            config.controller,
            reconnect_min_s=0.02,
            reconnect_max_s=0.1,
            timeout_s=0.3,
            **controller,
        ),
        telemetry=dataclasses.replace(config.telemetry, frame_interval_s=0.1),
        # These tests read the machine; the control loop's writes are tested on their own.
        control=dataclasses.replace(config.control, enabled=False),
    )


async def until(condition, timeout_s=10.0, what="condition"):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def all_good(agent):
    return len(agent.latest) == len(agent.config.tags) and all(
        s.quality is Quality.GOOD for s in agent.latest.values()
    )


def expected_values(plant):
    return {name: as_registered(BY_NAME[name], value) for name, value in plant.values().items()}


def assert_reads_match(agent, plant):
    want = expected_values(plant)
    for name, sample in agent.latest.items():
        assert sample.value == pytest.approx(want[name], rel=1e-12, abs=1e-12), name


class FrozenClock:
    def __init__(self, t=5.0):
        self.t = t

    def __call__(self):
        return self.t


@contextlib.asynccontextmanager
async def running(tmp_path, plant, clock, rtu=False):
    """The simulated controller and a running agent polling it; both stopped on exit."""
    controller = SimulatedController(plant, clock=clock)
    spool = str(tmp_path / "spool.db")
    with contextlib.ExitStack() as stack:
        if rtu:
            pair = stack.enter_context(PtyPair())
            await controller.start_rtu(pair.a, baudrate=115200)
            config = demo_config(serial_port=pair.b, spool=spool)
        else:
            config = demo_config(port=await controller.start_tcp("127.0.0.1", 0), spool=spool)
        agent = Agent(fast(config))
        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))
        try:
            yield controller, agent, run
        finally:
            stop.set()
            await run
            await controller.stop()


async def _read(tmp_path, rtu):
    plant = demo_plant()
    async with running(tmp_path, plant, FrozenClock(12.3), rtu=rtu) as (_, agent, _):
        await until(lambda: all_good(agent), what="every tag read good")
        assert_reads_match(agent, plant)
    return agent


def test_agent_reads_every_register_of_the_simulated_controller(tmp_path):
    agent = asyncio.run(_read(tmp_path, rtu=False))
    assert agent.journal.frames_stored >= 2  # the start event and data
    assert agent.controller_source.poller.counters["timeout"] == 0


def test_agent_reads_the_simulated_controller_over_modbus_rtu(tmp_path):
    agent = asyncio.run(_read(tmp_path, rtu=True))
    assert agent.config.controller.protocol == "rtu"


async def _restart(tmp_path):
    plant, clock = demo_plant(), FrozenClock()
    async with running(tmp_path, plant, clock) as (controller, agent, run):
        await until(lambda: all_good(agent), what="first reads")
        port = int(controller.address.rsplit(":", 1)[1])
        await controller.stop()
        await until(
            lambda: all(s.quality is Quality.STALE for s in agent.latest.values()),
            what="values to go stale",
        )
        assert not run.done()
        await controller.start_tcp("127.0.0.1", port)
        clock.t = 40.0  # the machine moved on while the agent was cut off
        await until(
            lambda: agent.controller_source.link.connects >= 2 and all_good(agent), what="reconnect"
        )
        assert_reads_match(agent, plant)
    return agent


def test_controller_restart_values_go_stale_then_agent_reconnects_and_resumes(tmp_path):
    agent = asyncio.run(_restart(tmp_path))
    assert agent.controller_source.link.disconnects >= 1
    assert agent.controller_source.poller.counters["stale"] >= len(agent.config.tags)


async def _bad_replies(tmp_path):
    async with running(tmp_path, demo_plant(), FrozenClock()) as (controller, agent, run):
        counters = agent.controller_source.poller.counters
        await until(lambda: all_good(agent), what="first reads")

        controller.faults.exception_code = 4  # server device failure on every read
        await until(
            lambda: agent.latest["spindle_load"].quality is Quality.BAD,
            what="an exception reply for the spindle load",
        )
        assert math.isnan(agent.latest["spindle_load"].value)
        assert counters["exception_04"] >= 1
        controller.faults.exception_code = None
        await until(lambda: all_good(agent), what="recovery after exceptions")

        controller.faults.delay_s = 0.5  # longer than the agent's 0.3 s timeout
        await until(lambda: counters["timeout"] >= 2, what="timeouts")
        controller.faults.delay_s = 0.0
        await until(lambda: all_good(agent), what="recovery after timeouts")

        connects = agent.controller_source.link.connects
        controller.drop_connections()
        await until(
            lambda: agent.controller_source.link.connects > connects and all_good(agent),
            what="reconnect after the controller closed the connection",
        )
        assert not run.done()
    return agent


def test_exception_replies_timeouts_and_closed_connections_are_counted_and_survived(tmp_path):
    agent = asyncio.run(_bad_replies(tmp_path))
    assert agent.controller_source.link.disconnects >= 1


class StepClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def file_values(csv_path, replay_map):
    """Each row of the recording as the registers should serve it, computed from the file."""
    import csv

    with open(csv_path, newline="") as f:
        records = list(csv.DictReader(f))
    rows = []
    for record in records:
        row = {}
        for name, source in replay_map.sources.items():
            if source.value is not None:
                value = source.value
            elif source.codes is not None:
                value = source.codes[record[source.column]]
            elif source.column.startswith("#"):
                continue
            else:
                value = float(record[source.column]) * source.scale + source.offset
                if source.threshold is not None:
                    value = 1.0 if value > source.threshold else 0.0
            row[name] = as_registered(BY_NAME[name], value)
        rows.append(row)
    return rows


async def _replay(tmp_path, rows_to_check):
    from hil.replay import ReplayPlant, load_replay_map, recording_path

    path = recording_path("experiment_01")
    clock = StepClock()
    plant = ReplayPlant(path)
    controller = SimulatedController(plant, clock=clock)
    port = await controller.start_tcp("127.0.0.1", 0)
    agent = Agent(fast(demo_config(port=port, spool=str(tmp_path / "spool.db"))))
    maintain = asyncio.create_task(agent.controller_source.link.maintain())
    want_rows = file_values(path, load_replay_map())
    compared = 0
    try:
        assert await agent.controller_source.link.wait_connected(5)
        for row in rows_to_check:
            clock.t = row * 0.1 + 0.05  # inside the row's 100 ms
            for group in agent.config.poll_groups:
                await agent.controller_source.poller.poll_once(group)
            for name, want in want_rows[row].items():
                sample = agent.latest[name]
                assert sample.quality is Quality.GOOD, (row, name)
                assert sample.value == want, (row, name, sample.value, want)
                compared += 1
    finally:
        maintain.cancel()
        await asyncio.gather(maintain, return_exceptions=True)
        await controller.stop()
    return compared


def test_replayed_recording_comes_out_of_the_agent_equal_to_the_file(tmp_path):
    compared = asyncio.run(_replay(tmp_path, range(0, 1000, 7)))
    assert compared > 100 * 20
