"""Reconnect backoff, shared by the controller link and the upstream link."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Capped exponential backoff with full jitter (AWS architecture blog's "full jitter"):
    delay n is uniform in [min, min(max, min * 2**n)]. Sans-IO: the caller sleeps."""

    def __init__(self, min_s: float, max_s: float, rng: Callable[[], float] = random.random):
        self.min_s, self.max_s, self._rng = min_s, max_s, rng
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.min_s * 2 ** min(self.attempt, 32))
        self.attempt += 1
        return self.min_s + (ceiling - self.min_s) * self._rng()

    def reset(self) -> None:
        self.attempt = 0
