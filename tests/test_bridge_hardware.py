"""A real bridge board (an RP2040 flashed with `make flash`): the agent's bridge source streams
from it for 3 s without a sequence gap. Runs only when EDGE_AGENT_BRIDGE_PORT names its serial
port (README, "Tests"); there is no board on CI."""

import asyncio
import os

import pytest

from edge_agent.sources.bridge import BridgeSource
from hil.bridge_bench import bridge_config
from tests.test_bridge_source import MonoClock, until

PORT = os.environ.get("EDGE_AGENT_BRIDGE_PORT", "")

pytestmark = [
    pytest.mark.hardware,
    pytest.mark.timeout(30),
    pytest.mark.skipif(not PORT, reason="no bridge board: set EDGE_AGENT_BRIDGE_PORT"),
]


async def _stream(seconds: float):
    got = []
    source = BridgeSource(bridge_config(PORT), MonoClock(), got.extend)
    task = asyncio.create_task(source.run())
    try:
        await until(lambda: source.state == "streaming", what="streaming")
        start = len(got)
        await asyncio.sleep(seconds)
        return [s for s in got[start:] if s.channel == "spindle_power"], source
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_real_board_streams_without_a_gap():
    raw, source = asyncio.run(_stream(3.0))
    stats = source.counts()
    assert len(raw) >= 0.9 * 2000 * 3.0
    assert stats["seq_gaps"] == stats["frames_lost"] == stats.get("overruns", 0) == 0
    assert source.identity["protocol"] == 1
