"""The load reading's noise, measured on the machine: what its margins must clear.

Margins given in load % (an entry 2 % over idle, a spike over the cutting level) are right for
one sensor and wrong for the next: at 3 % noise a 2 % entry margin sees an entry in every other
air sample. The controller widens each margin to a multiple of the noise measured here.
"""

from __future__ import annotations

import statistics
from collections import deque

#: Successive differences kept: about a second at the usual poll rates.
SIZE = 64
#: Recompute the median this often (samples); the noise of a sensor changes slowly.
EVERY = 16
#: sigma = median |difference| / (sqrt(2) x 0.6745) for Gaussian noise: robust to the steps
#: and entries that move the load for real (they are a minority of the differences).
_SCALE = 1.0 / (2**0.5 * 0.6745)


class NoiseEstimate:
    def __init__(self):
        self._diffs: deque[float] = deque(maxlen=SIZE)
        self._last: float | None = None
        self._count = 0
        self.sigma = 0.0  # standard deviation of the reading's noise, load %

    def add(self, value: float) -> None:
        if self._last is not None:
            self._diffs.append(abs(value - self._last))
            self._count += 1
            if self._count % EVERY == 0 or self._count < EVERY:  # at once when it starts
                self.sigma = statistics.median(self._diffs) * _SCALE
        self._last = value
