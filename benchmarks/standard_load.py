"""The standard load the benchmarks share: 200 channels at 10 Hz and one at 1 kHz (the sensor
bridge's), synthetic random walks and a noisy sine, in one-second batches."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

from edge_agent.samples import Sample
from edge_agent.telemetry import wire
from edge_agent.telemetry.batcher import FrameBuilder

CHANNELS = [wire.Channel(i, f"tag{i}", "", 0.01, "sampled", 100_000, 0) for i in range(200)]
CHANNELS.append(wire.Channel(200, "bridge", "", 0.001, "sampled", 1_000, 1))


def samples(count: int, seed: int = 1) -> list[list[tuple[str, Sample]]]:
    """`count` seconds of raw samples, as (channel name, sample) in arrival order, made up
    front so that timing what the agent does with them leaves out making them."""
    rng = random.Random(seed)
    level = [rng.uniform(0, 100) for _ in range(200)]
    out = []
    for second in range(count):
        batch = []
        for tick in range(10):
            stamp = (second * 10 + tick) * 100_000_000
            for i in range(200):
                level[i] += rng.gauss(0, 0.05)
                batch.append((f"tag{i}", Sample(f"tag{i}", stamp, level[i])))
        for k in range(1000):
            stamp = second * 1_000_000_000 + k * 1_000_000
            batch.append(("bridge", Sample("bridge", stamp, math.sin(k / 50) + rng.gauss(0, 0.01))))
        out.append(batch)
    return out


def seconds(batches: list[list[tuple[str, Sample]]]) -> Iterator[dict[int, wire.Series]]:
    """Each second's samples pushed through a frame builder (as the agent does) and handed
    out as the series of one data frame."""
    builder = FrameBuilder(CHANNELS, {}, max_points=1_000_000)
    for batch in batches:
        for name, sample in batch:
            builder.add(name, sample, sample.stamp_ns)
        yield builder.take()
