"""End to end over OPC UA: the agent reads the bench's OPC UA server (the cutting plant in an
umati-like address space) instead of Modbus, and adaptive control moves the real override
node through the one actuator, in real time. The source's own faults (Bad status, a restart,
lost subscriptions, security) are tested in tests/test_opcua_source.py."""

import asyncio
import dataclasses
import os

import pytest

from edge_agent.samples import Quality
from edge_agent.service import Agent
from hil.demo import opcua_demo_config
from hil.opcua_server import APPLICATION_URI, OpcUaController, make_certificate
from hil.plant import CuttingPlant
from hil.register_map import AGENT_OVERRIDE
from tests.test_e2e_control import DWELL_FIRST

pytestmark = pytest.mark.timeout(90)


async def _adapt(tmp_path, secure: bool):
    plant = CuttingPlant(DWELL_FIRST)  # the dwell: time to connect before the cut
    options = {}
    if secure:
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
        options = {
            "certificate": server_cert,
            "private_key": server_key,
            "users": {"edge": "s3cret"},
            "trusted_clients": trusted,
        }
    server = OpcUaController(plant, **options)
    port = await server.start("127.0.0.1", 0)
    config = opcua_demo_config(f"opc.tcp://127.0.0.1:{port}", spool=str(tmp_path / "spool.db"))
    if secure:
        opcua = dataclasses.replace(
            config.opcua,
            security="sign_and_encrypt",
            certificate=str(agent_cert),
            private_key=str(agent_key),
            server_certificate=str(server_cert),
            user_file=str(users),
        )
        config = dataclasses.replace(config, opcua=opcua)
    control = dataclasses.replace(config.control, teach_file=str(tmp_path / "teach.json"))
    agent = Agent(dataclasses.replace(config, control=control))
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    seen, states = set(), set()
    try:
        for _ in range(1500):
            await asyncio.sleep(0.01)
            seen.add(plant.values()[AGENT_OVERRIDE])
            if agent.control is not None:
                states.add(agent.control.controller.state.value)
            if plant.result.finished:
                break
        latest = dict(agent.latest)
    finally:
        stop.set()
        await run
        await server.stop()
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
