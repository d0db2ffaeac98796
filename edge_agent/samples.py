"""What flows from the sources to control and telemetry: one timestamped value of one
channel, with its quality. Plain data; imports nothing of the agent."""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple


class Quality(IntEnum):
    """GOOD: read and plausible. STALE: no fresh read within the channel's age limit
    (the value is the last good one). BAD: the read failed or gave an impossible value
    (NaN, an exception reply)."""

    GOOD = 0
    STALE = 1
    BAD = 2


class Sample(NamedTuple):
    channel: str
    stamp_ns: int
    value: float
    quality: Quality = Quality.GOOD


#: A sample as the control loop receives it: (monotonic ns when its source delivered it, it).
Arrival = tuple[int, Sample]
