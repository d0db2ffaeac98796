"""End to end over OPC UA: the agent reads the bench's OPC UA server (the cutting plant in an
umati-like address space) instead of Modbus, with security None and with Basic256Sha256
SignAndEncrypt: adaptive control moves the real override node through the one actuator, in
real time; values, a Bad status, a dropped session (its subscriptions with it), a closed
connection, a silent link and a server restart are each noticed and survived, as
tests/test_e2e_modbus.py holds the Modbus source to. The source's finer points (staleness on
simulated time, refused writes, security refusals) are in tests/test_opcua_source.py."""

import asyncio
import contextlib
import dataclasses
import math
import os
import time

import pytest
from asyncua import ua

from edge_agent.samples import Quality
from edge_agent.service import Agent
from hil.demo import opcua_demo_config
from hil.opcua_server import APPLICATION_URI, OpcUaController, make_certificate
from hil.plant import CuttingPlant, demo_plant
from hil.register_map import AGENT_OVERRIDE
from tests.test_e2e_control import DWELL_FIRST
from tests.test_e2e_modbus import FrozenClock, until

pytestmark = pytest.mark.timeout(90)


def _secure_options(tmp_path):
    """The server's and the agent's certificates, the agent's one trusted, a user file: the
    server options and the agent's [opcua] keys for Basic256Sha256 SignAndEncrypt."""
    server_cert, server_key = tmp_path / "server.pem", tmp_path / "server-key.pem"
    agent_cert, agent_key = tmp_path / "agent.pem", tmp_path / "agent-key.pem"
    make_certificate(server_cert, server_key, APPLICATION_URI)
    make_certificate(agent_cert, agent_key, "urn:edge-agent:test-agent")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "agent.pem").write_bytes(agent_cert.read_bytes())
    users = tmp_path / "opcua-user"
    users.write_text("edge:s3cret\n")
    os.chmod(users, 0o600)
    server = {
        "certificate": server_cert,
        "private_key": server_key,
        "users": {"edge": "s3cret"},
        "trusted_clients": trusted,
    }
    agent = {
        "security": "sign_and_encrypt",
        "certificate": str(agent_cert),
        "private_key": str(agent_key),
        "server_certificate": str(server_cert),
        "user_file": str(users),
    }
    return server, agent


@contextlib.asynccontextmanager
async def agent_over_opcua(tmp_path, secure: bool, plant, clock=time.monotonic, change=None):
    """The bench's OPC UA server on the plant and a running agent reading it (its config
    passed through `change` first); both stopped on exit."""
    server_options, agent_keys = _secure_options(tmp_path) if secure else ({}, {})
    server = OpcUaController(plant, clock=clock, **server_options)
    await server.start("127.0.0.1", 0)
    config = opcua_demo_config(server.url, spool=str(tmp_path / "spool.db"))
    config = dataclasses.replace(config, opcua=dataclasses.replace(config.opcua, **agent_keys))
    control = dataclasses.replace(config.control, teach_file=str(tmp_path / "teach.json"))
    config = dataclasses.replace(config, control=control)
    agent = Agent(change(config) if change else config)
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    try:
        yield server, agent, run
    finally:
        stop.set()
        await run
        await server.stop()


async def _adapt(tmp_path, secure: bool):
    plant = CuttingPlant(DWELL_FIRST)  # the dwell: time to connect before the cut
    async with agent_over_opcua(tmp_path, secure, plant) as (_, agent, _):
        seen, states = set(), set()
        for _ in range(1500):
            await asyncio.sleep(0.01)
            seen.add(plant.values()[AGENT_OVERRIDE])
            if agent.control is not None:
                states.add(agent.control.controller.state.value)
            if plant.result.finished:
                break
        latest = dict(agent.latest)
    return plant, agent, seen, states, latest


@pytest.mark.parametrize("secure", [False, True], ids=["none", "sign_and_encrypt"])
def test_the_agent_adapts_the_feed_over_opcua_and_leaves_it_safe(tmp_path, secure):
    plant, agent, seen, states, latest = asyncio.run(_adapt(tmp_path, secure))
    assert plant.result.finished
    # Inputs that arrive before the loop starts wait for it: no "missing" fault at the start.
    assert "cutting" in states and "fault" not in states
    assert max(seen) != 100.0 or min(seen) != 100.0  # the law moved the real override node
    actuator = agent.control.actuator
    assert actuator.counters["writes"] > 0 and actuator.counters["verified"] > 0
    assert actuator.counters["not_whitelisted"] == 0
    assert plant.values()[AGENT_OVERRIDE] <= agent.config.control.safe_override_pct
    stats = agent.controller_source.stats()
    assert stats.name == "opcua" and stats.samples > 100 and stats.writes.get("ok", 0) > 0
    assert latest["spindle_load"].quality is Quality.GOOD
    assert latest["program_number"].value == float(plant.values()["program_number"])
    assert agent.journal.frames_stored >= 3  # the same telemetry as over Modbus


def fast(config):
    """Short periods, timeouts and reconnect delays so faults show within a second; control
    off (these tests read the machine; control over OPC UA has its own test above)."""
    groups = {
        name: dataclasses.replace(g, period_s=0.05, stale_after_s=0.3)
        for name, g in config.opcua.groups.items()
    }
    opcua = dataclasses.replace(
        config.opcua, groups=groups, timeout_s=0.5, reconnect_min_s=0.05, reconnect_max_s=0.2
    )
    return dataclasses.replace(
        config, opcua=opcua, control=dataclasses.replace(config.control, enabled=False)
    )


def all_good(agent):
    return len(agent.latest) == len(agent.config.opcua.nodes) and all(
        s.quality is Quality.GOOD for s in agent.latest.values()
    )


def back(source, connects: int) -> bool:
    """A new session is up (not only connected: its nodes read and subscribed)."""
    stats = source.stats()
    return stats.connects > connects and stats.up


def reads_match(agent, plant) -> bool:
    """Every channel as the plant has it (within its quantum; run_state as the channel state
    it is served as, read back as its number)."""
    want = plant.values()
    quanta = {node.name: node.default_quantum for node in agent.config.opcua.nodes}
    return all(
        math.isclose(sample.value, want[name], abs_tol=quanta[name])
        for name, sample in agent.latest.items()
    )


async def _faults(tmp_path, secure: bool):
    """Values, a Bad status, a lost subscription, a lost connection, a silent link and a
    restart, in one session of the agent; returns what it counted."""
    plant = demo_plant()
    clock = FrozenClock(0.0)  # plant time 0 at the server's construction
    async with agent_over_opcua(tmp_path, secure, plant, clock, fast) as (server, agent, run):
        clock.t = 8.0  # cutting; the plant stands still: the values are known
        source = agent.controller_source
        await until(lambda: all_good(agent), what="every node read good")
        assert reads_match(agent, plant)

        server.faults.fail("spindle_load", ua.StatusCodes.BadSensorFailure)
        await until(lambda: agent.latest["spindle_load"].quality is Quality.BAD, what="Bad")
        assert math.isnan(agent.latest["spindle_load"].value)
        server.faults.clear()
        await until(lambda: all_good(agent), what="good again after the Bad status")

        connects = source.stats().connects
        assert await server.drop_sessions() == 1  # the subscription goes with the session
        await until(
            lambda: back(source, connects) and all_good(agent),
            what="a new session after the old one was dropped",
        )
        connects = source.stats().connects
        assert server.drop_connections() == 1
        await until(
            lambda: back(source, connects) and all_good(agent),
            what="a new connection after the server closed it",
        )

        connects = source.stats().connects
        server.faults.silent = True  # the link is down: no answer, no notification
        await until(
            lambda: all(s.quality is Quality.STALE for s in agent.latest.values()),
            what="every value stale on a silent link",
        )
        await until(lambda: not source.stats().up, what="the keep-alive noticing the silence")
        server.faults.silent = False
        await until(
            lambda: back(source, connects) and all_good(agent),
            what="a new session once the link is back",
        )

        connects, before = source.stats().connects, agent.latest["x_position"].value
        await server.stop()
        await until(
            lambda: all(s.quality is Quality.STALE for s in agent.latest.values()),
            what="every value stale while the server is away",
        )
        clock.t = 20.0  # the machine moved on meanwhile
        await server.restart()
        await until(
            lambda: back(source, connects) and all_good(agent),
            what="reconnect after the restart",
        )
        assert reads_match(agent, plant) and plant.time_s == 20.0
        assert agent.latest["x_position"].value != before
        assert not run.done()
        return source.stats()


@pytest.mark.parametrize("secure", [False, True], ids=["none", "sign_and_encrypt"])
def test_values_bad_status_lost_sessions_a_silent_link_and_a_restart_are_survived(tmp_path, secure):
    stats = asyncio.run(_faults(tmp_path, secure))
    assert stats.connects == 5 and stats.disconnects >= 4  # the first, then one a fault
