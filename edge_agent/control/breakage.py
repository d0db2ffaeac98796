"""Tool breakage from the cutting load, relative to the level the tool was cutting at.

A breaking tool chips (the load spikes for some tens of milliseconds), then the broken tool only
rubs: the cutting load falls to a small share of what it was, in the middle of a block that is
still feeding. Read through the drive's dead time and lag, a short spike may not show at all,
so two signatures count, each relative to the tool's own recent cutting level (a breakage in a
light cut spikes to a multiple of that light load, not of the target's):

- **spike, then drop**: within `window_ns` the cutting load rose `spike_ratio` times over the
  level, then fell below `drop_fraction` of it;
- **lost load**: the mean of the last few samples fell below `loss_fraction` of the level, with
  no spike seen; the noisier the reading against the level, the more samples (`loss_samples`);
  and the reading fell from 90 % to 50 % of the level faster than it rose from 10 % to 50 %
  when this cut began. A tool leaving the material in the middle of a block (a slot run out
  through the side of the stock) sheds its engagement over its diameter, as it took it on at
  the entry; a broken tool sheds it at once, and the reading falls as fast as the sensor lets it.

Loads are specific: the cutting load per 100 % of applied feed (override x knob), so the agent's
own feed changes, and the operator's, are not mistaken for a loss or a spike. The reading shows
the feed of `FEED_DELAY_NS` ago (the axes, the drive's dead time and lag), so that is the feed
a sample is divided by: divided by the feed of now, the law's own cut after a spike would
inflate the broken tool's rub and delay the hold.

Neither counts a fall the program made: a block change is where a program leaves the
material (an exit), steps down in depth or width, or changes path, and the controller reports it
before the load reading falls (the reading lags). So the level is measured within the block the
tool is in now; when a block starts while the tool was cutting, its first `BLOCK_SETTLE_NS`,
and then as long as the reading keeps falling, are the last block's load still passing through
the sensor, and do not count. The level is the median of the cutting load over `REFERENCE_NS`
before the window, or, early in a block, its highest 3-sample median so far; it must be at
least `min_share` of the target's cutting load, so a barely-cutting tool is not watched.
Noise: a spike must clear the level by 4 sigma, and a lost load is a mean over enough samples.
docs/adaptive-control.md measures these choices on the randomized scenario family.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

NS = 1_000_000_000

#: How long before the window the level is taken from.
REFERENCE_NS = 300_000_000
#: A reference is steady when its highest 3-sample median is within this factor of its lowest.
STEADY_SPREAD = 1.25
#: A lost load must have fallen (90 % to 50 % of the level) in under this share of the time the
#: cut's load took to rise (10 % to 50 %), at the same feed: a tool leaving the stock sheds its
#: engagement as slowly as it took it on (at a higher feed, faster in proportion), and noise and
#: a poll's jitter must not make a coin toss of the comparison (0.7 held the feed at one exit in
#: five of the LinuxCNC bench's facing passes).
FALL_SHARE = 0.5
#: How old the feed is that a load reading shows: about the default sensor's delay.
FEED_DELAY_NS = 200_000_000
#: How much of a cut's start is kept to time its rise.
START_NS = 1_500_000_000
#: A block that starts in the material: its first samples still show the last block's load.
BLOCK_SETTLE_NS = 300_000_000
#: ... and it has settled when the reading no longer falls over this long ...
SETTLE_STEP_NS = 100_000_000
#: ... comparing the samples of the last this long (about 3 at the usual polls) with before.
SAMPLES_3_NS = 60_000_000
#: The fewest and the most samples a lost-load mean is taken over.
LOSS_SAMPLES = (3, 40)
#: A lost load's mean must be this sure (sigmas of its standard error) to be under the line by
#: a tenth of the level: half the gap between a broken tool's rub (up to 0.2 of the level) and
#: the lightest step down in engagement a program makes within a block (0.4).
LOSS_SIGMAS = 3.0
LOSS_MARGIN = 0.1
#: Noise sigmas a spike must clear the level by.
SPIKE_SIGMAS = 4.0


@dataclass(frozen=True)
class BreakageRule:
    window_ns: int
    spike_ratio: float
    drop_fraction: float
    loss_fraction: float
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
        self._settled_ns = 0  # when it was known: the level counts samples from here
        self._best = 0.0  # the highest 3-sample median since then
        # This cut's first samples (None: it started in an earlier block), and how long the
        # reading took to rise from 10 % to 50 % of its level at the last entry timed (kept
        # through the blocks of one cut and into the next cut until that one is timed).
        self._start: list[tuple[int, float]] | None = []
        self._rise_ns: int | None = None
        self._rise_feed = 100.0  # the feed % the rise was timed at

    def reset(self) -> None:
        """The tool left the material, or control restarted: a new cut, a new level."""
        self._samples.clear()
        self._best = 0.0
        self._start = []

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
            self._settled_ns = t_ns
            self.reset()
            self._settling = settling
            if settling:  # no entry to time in a block that starts in the material
                self._start = None
        samples = self._samples
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
        window = [c for t, c in samples if t > t_ns - rule.window_ns]
        detail = {"level_pct": level / scale, "cut_pct": cut}
        peak = max(window)
        if (
            steady
            and peak >= rule.spike_ratio * level + SPIKE_SIGMAS * noise
            and specific < rule.drop_fraction * level
        ):
            return {"signature": "spike", "peak_pct": peak / scale, **detail}
        self._time_rise(t_ns, level)
        wanted = math.ceil((LOSS_SIGMAS * noise / (LOSS_MARGIN * level)) ** 2)
        count = min(len(window), max(LOSS_SAMPLES[0], min(LOSS_SAMPLES[1], wanted)))
        if count >= LOSS_SAMPLES[0] and sum(window[-count:]) / count < rule.loss_fraction * level:
            fall_ns = self._last_over(0.5 * level) - self._last_over(0.9 * level)
            rise_ns = self._rise_ns
            if rise_ns is not None and fall_ns < FALL_SHARE * rise_ns * self._rise_feed / feed_pct:
                return {"signature": "lost load", **detail}
        return None

    def _time_rise(self, t_ns: int, level: float) -> None:
        """Keep this cut's first samples (`START_NS`), and time its rise to the level known now."""
        start = self._start
        if start is None:
            return
        if not start or t_ns - start[0][0] <= START_NS:
            start.append(self._samples[-1])
        ten = next((t for t, c in start if c >= 0.1 * level), None)
        half = next((t for t, c in start if c >= 0.5 * level), None)
        if ten is not None and half is not None:
            self._rise_ns, self._rise_feed = half - ten, self._feeds[0][1]

    def _last_over(self, line: float) -> int:
        """When the reading was last at or over `line` (its oldest sample if never)."""
        for t, c in reversed(self._samples):
            if c >= line:
                return t
        return self._samples[0][0]

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
        and whether it is steady enough to measure a spike against (a reading still climbing
        through the reference, an entry through a slow sensor, is not: what follows its climb
        would look like a spike)."""
        before = t_ns - self.rule.window_ns
        reference = [c for t, c in self._samples if self._settled_ns <= t <= before]
        if len(reference) < 3 or not self._referenced(t_ns):
            return self._best, True
        medians = [statistics.median(reference[i : i + 3]) for i in range(len(reference) - 2)]
        steady = max(medians) <= STEADY_SPREAD * min(medians) + SPIKE_SIGMAS * noise
        return statistics.median(reference), steady
