"""What the load reading will show, by the learned profile: the law's feedback without the
sensor's delay (a Smith predictor).

With a profile the controller knows, at each reading, the load the tool has now: idle + k
(the profile's, where the tool is) x the feed the axes run at. The reading shows that load only
after the sensor's dead time and lag (delay.py fits both from the spindle starts). Past a step
the profile previewed, the override is already right, but the reading is still rising: a PI fed
the reading takes the gap for a lighter cut than learned and raises the trim, and the tool,
already at full load, goes over (on the LinuxCNC bench 20 % over target at each step).

So the law is fed the reading plus what the profile says the reading has still to travel: the
load now by the profile minus that load through the sensor's delay. Where the profile is right
the two cancel the sensor's delay and the law sees the load the tool has now; where it is wrong
(a hard spot new to this part) the reading's own departure from the model reaches the law
whole, late as ever. Steady, the correction is zero: the law holds the reading, not the model,
at the target. Overload and breakage watch the reading itself.

Sans-IO: the controller feeds it a reading's time and the profile's load then.
"""

from __future__ import annotations

import math
from collections import deque

NS = 1_000_000_000


class ReadingModel:
    """The profile's load through a dead time and a first-order lag, from reading to reading."""

    def __init__(self, dead_s: float, lag_s: float):
        self.dead_ns = round(dead_s * NS)
        self.lag_s = lag_s
        self._pending: deque[tuple[int, float]] = deque()  # (ns, load) inside the dead time
        self._delayed = math.nan  # the load the sensor is taking in now
        self._shown = math.nan  # and what it shows of it
        self._t_ns: int | None = None

    def reset(self) -> None:
        """Forget: the next load is taken as settled (as the reading in air is)."""
        self._pending.clear()
        self._delayed = self._shown = math.nan
        self._t_ns = None

    def correction(self, t_ns: int, load_pct: float) -> float:
        """The profile's load now (`load_pct` at `t_ns`) minus what the reading shows of the
        profile's load at `t_ns`: what the reading has still to travel."""
        if self._t_ns is None:
            self._delayed = self._shown = load_pct
        else:
            self._pending.append((t_ns, load_pct))
            while self._pending and self._pending[0][0] <= t_ns - self.dead_ns:
                self._delayed = self._pending.popleft()[1]
            dt_s = (t_ns - self._t_ns) / NS
            if self.lag_s > 0:
                self._shown += (self._delayed - self._shown) * -math.expm1(-dt_s / self.lag_s)
            else:
                self._shown = self._delayed
        self._t_ns = t_ns
        return load_pct - self._shown
