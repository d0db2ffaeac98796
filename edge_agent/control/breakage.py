"""Tool breakage from the cutting load, relative to the level the tool was cutting at.

A breaking tool chips (the load spikes for some tens of milliseconds), then the broken tool only
rubs: the cutting load falls to a small share of what it was, in the middle of a block that is
still feeding. The signature held is that spike and that fall together: within `window_ns` the
cutting load rose `spike_ratio` times over the tool's own recent level (a breakage in a light
cut spikes to a multiple of that light load, not of the target's), staying over half its
height for at most `SPIKE_WIDTH_NS` (a chip is short; a hard spot or skin lasts as long as the
tool takes to cross it), then fell below `drop_fraction` of it.

A fall alone is not held. On the randomized family, a tool running out of the side of the stock
in the middle of a block fell as fast, against the sensor's lag, as a broken tool's load did
(the 90-to-50 % fall took 0.3-3 lags for exits, 0.5-1.4 for breakages), and holding lost loads
found no breakage the spike missed while it stopped twelve machines that were only leaving the
material. Where the part was cut before, the learned profile of a repeat part tells the two
apart; on a first part only the spike does. docs/adaptive-control.md has the measurements, and
the breakages held against the false holds for each threshold (1.3 x by default).

Loads are specific: the cutting load per 100 % of applied feed (override x knob), so the agent's
own feed changes, and the operator's, are not mistaken for a spike or a fall. The reading shows
the feed of `FEED_DELAY_NS` ago (the axes, the drive's dead time and lag), so that is the feed
a sample is divided by: divided by the feed of now, the law's own cut after a spike would
inflate the broken tool's rub and delay the hold.

A fall the program made does not count: a block change is where a program leaves the material
(an exit), steps down in depth or width, or changes path, and the controller reports it before
the load reading falls (the reading lags). So the level is measured within the block the tool
is in now; when a block starts while the tool was cutting, its first `BLOCK_SETTLE_NS`, and then
as long as the reading keeps falling, are the last block's load still passing through the
sensor, and do not count. The level is the median of the cutting load over `REFERENCE_NS`
before the window, at least `REFERENCE_SAMPLES` of them, and steady: early in a block, in a
cut shorter than that, or while the entry still climbs, no spike is judged (a short cut is
itself a bump). It must be at least `min_share` of the target's cutting load (early in a
block: its highest 3-sample median so far), so a barely-cutting tool is not watched. Noise: a
spike must clear the level by 4 sigma.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

NS = 1_000_000_000

#: How long before the window the level is taken from, and the fewest samples it holds (three
#: 3-sample medians: a reference of one median cannot show that it is still climbing).
REFERENCE_NS = 500_000_000
REFERENCE_SAMPLES = 5
#: A reference is steady when its highest 3-sample median is within this factor of its lowest.
STEADY_SPREAD = 1.15
#: How old the feed is that a load reading shows: about the default sensor's delay.
FEED_DELAY_NS = 200_000_000
#: A block that starts in the material: its first samples still show the last block's load.
BLOCK_SETTLE_NS = 300_000_000
#: ... and it has settled when the reading no longer falls over this long ...
SETTLE_STEP_NS = 100_000_000
#: ... comparing the samples of the last this long (about 3 at the usual polls) with before.
SAMPLES_3_NS = 60_000_000
#: Noise sigmas a spike must clear the level by.
SPIKE_SIGMAS = 4.0
#: The longest a spike's reading stays over half its height: a chip lasts 20-100 ms, a hard
#: spot or skin the time the tool takes to cross it.
SPIKE_WIDTH_NS = 150_000_000


@dataclass(frozen=True)
class BreakageRule:
    window_ns: int
    spike_ratio: float
    drop_fraction: float
    min_share: float


class BreakageWatch:
    """Fed every cutting-load sample while the tool may be cutting; says when it broke."""

    def __init__(self, rule: BreakageRule):
        self.rule = rule
        # (t_ns, specific cutting load) in this block, window and reference long
        self._samples: deque[tuple[int, float]] = deque()
        self._block: int | None = None
        self._feeds: deque[tuple[int, float]] = deque()  # (t_ns, feed %), FEED_DELAY_NS long
        self._settling = False  # the block started in the material; its level is not known yet
        self._settled_ns = 0  # this cut's start, or its block's settling: the level from here
        self._best = 0.0  # the highest 3-sample median since then

    def reset(self) -> None:
        """The tool left the material, or control restarted: a new cut, a new level."""
        self._samples.clear()
        self._best = 0.0

    def observe(
        self, t_ns: int, cut: float, feed_pct: float, block: int | None, span: float, sigma: float
    ) -> dict | None:
        """One sample of the cutting load (load - idle) at `feed_pct` of the programmed feed.
        Returns None, or the breakage event's detail."""
        rule = self.rule
        feeds = self._feeds
        feeds.append((t_ns, feed_pct))
        while len(feeds) > 1 and feeds[1][0] <= t_ns - FEED_DELAY_NS:
            feeds.popleft()
        feed_pct = feeds[0][1]  # the feed the reading shows
        if feed_pct <= 0.0:
            self.reset()
            return None
        scale = 100.0 / feed_pct  # to specific load, % per 100 % feed
        specific, noise = cut * scale, sigma * scale
        if block != self._block:
            self._block = block
            settling = bool(self._samples) and self._samples[-1][1] >= rule.min_share * span
            self.reset()
            self._settling = settling
        samples = self._samples
        if not samples:  # a cut begins (or the block): its level is measured from here
            self._settled_ns = t_ns
        samples.append((t_ns, specific))
        horizon = t_ns - rule.window_ns - REFERENCE_NS
        while samples[0][0] < horizon:
            samples.popleft()
        if self._settling and not self._settled(t_ns, noise):
            return None
        if len(samples) >= 3 and samples[-3][0] >= self._settled_ns:
            last3 = (samples[-3][1], samples[-2][1], samples[-1][1])
            self._best = max(self._best, statistics.median(last3))
        level, steady = self._level(t_ns, noise)
        if level < rule.min_share * span * scale:
            return None
        window = [(t, c) for t, c in samples if t > t_ns - rule.window_ns]
        peak = max(c for _, c in window)
        if (
            steady
            and peak >= rule.spike_ratio * level + SPIKE_SIGMAS * noise
            and specific < rule.drop_fraction * level
            and _width(window, (peak + level) / 2) <= SPIKE_WIDTH_NS
        ):
            return {"peak_pct": peak / scale, "level_pct": level / scale, "cut_pct": cut}
        return None

    def _referenced(self, t_ns: int) -> bool:
        return self._settled_ns <= t_ns - self.rule.window_ns - REFERENCE_NS // 2

    def _settled(self, t_ns: int, noise: float) -> bool:
        """A block that started in the material settles once `BLOCK_SETTLE_NS` passed and the
        reading no longer falls: its 3-sample median not below the one `SETTLE_STEP_NS`
        earlier by more than noise."""
        if t_ns - self._settled_ns < BLOCK_SETTLE_NS:
            return False
        now = [c for t, c in self._samples if t > t_ns - SAMPLES_3_NS]
        then = [c for t, c in self._samples if t <= t_ns - SETTLE_STEP_NS][-3:]
        if len(now) < 1 or len(then) < 1:
            return False
        if statistics.median(now) < statistics.median(then) * 0.95 - SPIKE_SIGMAS * noise:
            return False
        self._settling = False
        self._settled_ns = t_ns
        while self._samples[0][0] < t_ns:  # the last block's load: not this block's level
            self._samples.popleft()
        return True

    def _level(self, t_ns: int, noise: float) -> tuple[float, bool]:
        """The specific cutting load before the window, or early in a block its best so far;
        and whether a spike may be measured against it: only a reference of enough samples,
        steady (a reading still climbing through it, an entry through a slow sensor, is not:
        what follows its climb would look like a spike)."""
        before = t_ns - self.rule.window_ns
        reference = [c for t, c in self._samples if self._settled_ns <= t <= before]
        if len(reference) < REFERENCE_SAMPLES or not self._referenced(t_ns):
            return self._best, False
        medians = [statistics.median(reference[i : i + 3]) for i in range(len(reference) - 2)]
        steady = max(medians) <= STEADY_SPREAD * min(medians) + SPIKE_SIGMAS * noise
        return statistics.median(reference), steady


def _width(window: list[tuple[int, float]], line: float) -> int:
    """From the first sample at or over `line` to the last (ns)."""
    over = [t for t, c in window if c >= line]
    return over[-1] - over[0]
