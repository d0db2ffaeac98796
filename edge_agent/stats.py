"""Small measurement helpers for what the agent reports about itself (latencies, counts).
Never allocates per observation beyond a bounded window."""

from __future__ import annotations

import math
from collections import deque


class LatencyWindow:
    """The last `size` observations (seconds) and their percentiles."""

    def __init__(self, size: int = 4096):
        self._values: deque[float] = deque(maxlen=size)
        self.count = 0

    def add(self, seconds: float) -> None:
        self._values.append(seconds)
        self.count += 1

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile (q in 0..100) of the window; NaN when empty."""
        if not self._values:
            return float("nan")
        ordered = sorted(self._values)
        rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1
        return ordered[rank]
