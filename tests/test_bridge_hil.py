"""The agent's bridge source against the REAL firmware under the MicroPython unix port on a
pty (hil/bridge_emulator.py), its ADC fed from here: every sample at 2 kHz, no sequence gap."""

import asyncio

import pytest

from edge_agent.sources.bridge import BridgeSource
from hil import bridge_bench
from hil.bridge_emulator import BridgeEmulator
from tests.test_bridge_protocol import require_tool
from tests.test_bridge_source import SPINDLE, MonoClock, bridge_config, until

pytestmark = pytest.mark.timeout(40)


async def _stream(emulator: BridgeEmulator, seconds: float):
    cfg = bridge_config(emulator.path, channels=(SPINDLE,), sample_hz=2000, ping_interval_s=0.1)
    got = []
    source = BridgeSource(cfg, MonoClock(), got.extend)
    task = asyncio.create_task(source.run())
    try:
        await until(lambda: source.state == "streaming", what="streaming")
        start = len(got)
        await asyncio.sleep(seconds)
        raw = [s for s in got[start:] if s.channel == "spindle_power"]
        return raw, source.counts()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_the_agent_reads_the_real_firmware_at_2_khz_without_a_gap():
    with BridgeEmulator(feed=True, micropython=require_tool("micropython")) as emulator:
        emulator.feed_counts(1000, 0, 0, 256)
        raw, stats = asyncio.run(_stream(emulator, 3.0))
    assert len(raw) >= 0.9 * 2000 * 3.0  # at least 1.8 kHz seen end to end
    assert stats["seq_gaps"] == stats["frames_lost"] == stats.get("overruns", 0) == 0
    assert stats["crc_errors"] + stats["malformed"] == 0
    assert {s.value for s in raw} == {1000 * 2.5 - 100.0}  # SPINDLE's calibration of the feed
    stamps = [s.stamp_ns for s in raw]
    assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False))


def test_the_plant_feeds_the_real_firmware_and_the_agent_follows_it():
    """hil/bridge_bench.py for a few seconds (`make hil` runs it for 60)."""
    require_tool("micropython")
    outcome = asyncio.run(bridge_bench.run(3.0))
    s = outcome.stats
    assert outcome.raw_hz >= 1800
    assert s["seq_gaps"] == s["frames_lost"] == s.get("overruns", 0) == 0
    assert s["crc_errors"] + s["malformed"] + s["oversize"] == 0
    assert outcome.feature_blocks >= 150  # 62.5 vibration blocks a second
    assert outcome.within_one_count >= 0.9  # the power read is the power fed, in time
