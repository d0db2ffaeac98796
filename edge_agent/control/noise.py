"""The load reading's noise, measured on the machine: what its margins must clear.

Margins given in load % (an entry 2 % over idle, a spike over the cutting level) are right for
one sensor and wrong for the next: at 3 % noise a 2 % entry margin sees an entry in every other
air sample. The controller widens each margin to a multiple of the noise measured here.
"""

from __future__ import annotations

import statistics
from collections import deque

#: Second differences kept: several seconds at the usual poll rates (the median of fewer
#: scatters by a quarter, and a margin of 4 sigmas then scatters by a whole sigma).
SIZE = 256
#: Recompute the median this often (samples); the noise of a sensor changes slowly.
EVERY = 16
#: sigma = median |second difference| / (sqrt(6) x 0.6745) for white Gaussian noise. Robust to
#: the steps that move the load for real (a minority of the differences), and blind to ramps:
#: an entry's rise through the sensor's lag adds its slope to every first difference, not to
#: the second.
_SCALE = 1.0 / (6**0.5 * 0.6745)


class NoiseEstimate:
    def __init__(self):
        self._diffs: deque[float] = deque(maxlen=SIZE)
        self._last: tuple[float, ...] = ()
        self._count = 0
        self.sigma = 0.0  # standard deviation of the reading's noise, load %

    def add(self, value: float) -> None:
        if len(self._last) == 2:
            before, last = self._last
            self._diffs.append(abs(value - 2 * last + before))
            self._count += 1
            if self._count % EVERY == 0 or self._count < EVERY:  # at once when it starts
                self.sigma = statistics.median(self._diffs) * _SCALE
        self._last = (self._last[-1], value) if self._last else (value,)
