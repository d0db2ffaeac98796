"""The sensor bridge on the bench, in real time: the cutting plant machines the demo part while
its spindle power (and a vibration that grows with it) feeds the REAL bridge firmware running
under the MicroPython unix port on a pty (`bridge_emulator.py`); the agent's bridge source
reads it. Reported: the raw rate the agent received, sequence gaps, lost frames, overruns and
dropped frames, and how closely the power read follows the power fed.

`python -m hil bridge --seconds 60` (part of `make hil`); tests/test_bridge_hil.py runs it
for a few seconds.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import time
from dataclasses import dataclass

from edge_agent.clock import SystemClock
from edge_agent.sources.bridge import BridgeSource
from edge_agent.sources.bridge_config import BridgeChannel, BridgeConfig

from .bridge_emulator import BridgeEmulator
from .plant import demo_plant

FULL_SCALE_KW = 20.0  # the power sensor's range at ADC full scale
FEED_HZ = 200  # how often the plant's state is written to the simulated sensors
SAMPLE_HZ = 2000


@dataclass
class BridgeRun:
    seconds: float
    raw_hz: float  # spindle power samples the agent received per second
    stats: dict[str, int]
    feature_blocks: int  # vibration RMS values received
    mean_abs_error_kw: float  # power read vs the power fed at the same time
    within_one_count: float  # share of samples within one ADC count of what was fed

    def line(self) -> str:
        s = self.stats
        return (
            f"bridge (real firmware under MicroPython, {SAMPLE_HZ} Hz): {self.seconds:.0f} s, "
            f"{self.raw_hz:.0f} raw samples/s received, {s['seq_gaps']} sequence gaps, "
            f"{s['frames_lost']} frames lost, {s.get('overruns', 0)} overruns, "
            f"{s['crc_errors'] + s['malformed'] + s['oversize']} frames dropped, "
            f"{s['reconnects']} reconnects, {self.feature_blocks} vibration blocks; power read vs "
            f"fed: mean |error| {self.mean_abs_error_kw * 1000:.1f} W, "
            f"{self.within_one_count:.1%} within one count ({FULL_SCALE_KW / 4095 * 1000:.1f} W)"
        )


def bridge_config(port: str) -> BridgeConfig:
    return BridgeConfig(
        port=port,
        sample_hz=SAMPLE_HZ,
        channels=(
            BridgeChannel("spindle_power", 0, "kW", FULL_SCALE_KW / 4095, raw=True, features=()),
            BridgeChannel("vibration_x", 1, "g", 0.0039, features=("rms", "peak")),
        ),
    )


async def run(seconds: float, seed: int = 1) -> BridgeRun:
    plant, rng = demo_plant(), random.Random(seed)
    got = []
    fed: list[tuple[int, float]] = []  # (stamp ns, power kW) as written to the sensors
    clock = SystemClock()
    with BridgeEmulator(feed=True, adc_full_scale_kw=FULL_SCALE_KW) as emulator:
        emulator.feed_physical(0.0)
        source = BridgeSource(bridge_config(emulator.path), clock, got.extend)
        task = asyncio.create_task(source.run())
        try:
            deadline = time.monotonic() + 10
            while source.state != "streaming":
                if time.monotonic() > deadline:
                    raise RuntimeError("the bridge did not start streaming within 10 s")
                await asyncio.sleep(0.01)
            started = time.monotonic()
            first = len(got)
            while (elapsed := time.monotonic() - started) < seconds:
                plant.advance_to(elapsed)
                power = plant.values()["spindle_power"]
                vibration = 0.05 * power * rng.gauss(0.0, 1.0)
                emulator.feed_physical(power, (vibration, 0.0, 1.0))
                fed.append((clock.stamp_ns(), power))
                await asyncio.sleep(1 / FEED_HZ)
            stats = source.counts()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    samples = got[first:]
    raw = [s for s in samples if s.channel == "spindle_power"]
    errors = _errors(raw, fed)
    count_kw = FULL_SCALE_KW / 4095
    return BridgeRun(
        seconds=seconds,
        raw_hz=len(raw) / seconds,
        stats=stats,
        feature_blocks=sum(s.channel == "vibration_x_rms" for s in samples),
        mean_abs_error_kw=sum(errors) / max(1, len(errors)),
        within_one_count=sum(e <= count_kw * 1.01 for e in errors) / max(1, len(errors)),
    )


def _errors(raw, fed: list[tuple[int, float]]) -> list[float]:
    """|power read - power fed| for each sample, against the feed in force at its stamp (the
    sensors hold a value until the next is written); samples before the first feed skipped."""
    stamps = [t for t, _ in fed]
    out = []
    for sample in raw:
        i = bisect.bisect_right(stamps, sample.stamp_ns) - 1
        if i >= 0:
            out.append(abs(sample.value - fed[i][1]))
    return out
