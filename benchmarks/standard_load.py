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


def seconds(count: int, seed: int = 1) -> Iterator[dict[int, wire.Series]]:
    """`count` seconds of samples, each pushed through a frame builder (as the agent does)
    and handed out as the series of one data frame."""
    builder = FrameBuilder(CHANNELS, {}, max_points=1_000_000)
    rng = random.Random(seed)
    level = [rng.uniform(0, 100) for _ in range(200)]
    for second in range(count):
        for tick in range(10):
            stamp = (second * 10 + tick) * 100_000_000
            for i in range(200):
                level[i] += rng.gauss(0, 0.05)
                builder.add(f"tag{i}", Sample(f"tag{i}", stamp, level[i]), stamp)
        for k in range(1000):
            stamp = second * 1_000_000_000 + k * 1_000_000
            value = math.sin(k / 50) + rng.gauss(0, 0.01)
            builder.add("bridge", Sample("bridge", stamp, value), stamp)
        yield builder.take()
