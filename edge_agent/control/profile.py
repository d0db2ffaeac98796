"""The learned profile of a repeat part: for one (program, tool), the specific cutting load
along the program's path, learned part after part (issue 19; docs/adaptive-control.md,
"Learned profiles").

The specific cutting load k at a place on the path is the load above idle per 100 % of feed:
the load the tool takes there at a feed of 100 %, less the spindle's idle. A part's record
(`part.py`) gives it reading by reading: the reading is the load filtered by the sensor's lag
after its dead time (`delay.py` fits both), so the filter is undone, the load put where the
tool was a dead time before, and divided by the feed it ran at then. Readings in one bin of
the path (`BIN_MM`) are averaged.

The rule, per bin, after each part that can be learned from (not rejected, the same path):
k <- k + gain x clip(measured - k). A first part sets k. With `gain` g the error left after
n parts of a steady cut is (1 - g)^n of the first; a slow change (tool wear) is followed with
a lag of about (1 - g) / g parts of its drift. The clip bounds what one part may teach: a hard
spot in one part only moves the profile by at most gain x `rise` of k there, and material
missing from one part (an air cut where the profile says the tool cuts) lowers it by at most
gain x `fall`: less stock believed is a faster feed, so the profile believes it slowly.

Sans-IO: pure functions of records and profiles, never a clock or a file.
"""

from __future__ import annotations

import array
import bisect
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from .part import PartRecord
from .path import Visit, anchored, same_path

#: Why a record taught nothing when its path is not the profile's.
OTHER_WAY = "the program went another way than the profile's (an edited program?)"
#: The profile's resolution along the path: 1 mm, a tenth of a typical tool's diameter.
BIN_MM = 1.0
#: A part's k is the median of this many bins around each (`_median_filter`): three keep a
#: cut two bins short at its height (five flattened a 2 mm cut to a quarter of its k).
MEDIAN_BINS = 3


@dataclass(frozen=True)
class Rule:
    """How a profile learns (docs/adaptive-control.md has each figure's reason)."""

    gain: float = 0.5  # the share of a part's difference learned: error x 0.5 per part
    rise: float = 0.5  # one part raises k by at most this share of it ...
    fall: float = 0.2  # ... and lowers it by at most this share (less stock: believed slowly)
    floor_pct: float = 1.0  # ... of k, or of this (% per 100 % feed) where k is near 0


@dataclass
class Profile:
    """One (program, tool): k per bin along the path (NaN where the tool never was), the path
    it was learned on, how many parts taught it."""

    program: int
    tool: int
    visits: tuple[Visit, ...]
    k: array.array = field(default_factory=lambda: array.array("d"))
    parts: int = 0
    bin_mm: float = BIN_MM

    def at(self, s_mm: float) -> float:
        """k where the tool is `s_mm` along the path (NaN outside it or where never seen)."""
        i = math.floor(s_mm / self.bin_mm)
        return self.k[i] if 0 <= i < len(self.k) else math.nan


def measure(
    record: PartRecord,
    tool: int,
    idle_pct: float,
    dead_s: float,
    bin_mm: float = BIN_MM,
    *,
    lag_s: float = 0.0,
    anchor: tuple[Visit, ...] = (),
) -> array.array:
    """k per bin of the record's path, from its readings with `tool` (NaN where none). The
    reading is the load filtered by a first-order `lag_s` after `dead_s`: the load itself is
    the reading plus lag x its rate of change (the filter undone, over the readings a quarter
    of a lag either side), and it was the load `dead_s` before, where the tool was and at the
    feed it ran at then. With `anchor` (the profile's visits, the record gone the same way)
    each place is the profile's (`path.anchored`)."""
    r = record.readings
    t, s, y = r["t_s"], r["s_mm"], r["load_pct"]
    feed = r["feed_pct"]
    bins = math.ceil(record.path_mm / bin_mm) if record.path_mm > 0 else 0
    total, count = [0.0] * bins, [0] * bins
    last = len(t) - 1
    span = _derivative_span(t, lag_s)
    for i, used in enumerate(r["tool"]):
        if used != tool:
            continue
        load = y[i]
        if lag_s > 0.0:
            a, b = max(0, i - span), min(last, i + span)
            if t[b] <= t[a]:
                continue
            load += lag_s * (y[b] - y[a]) / (t[b] - t[a])
        then = t[i] - dead_s
        j = bisect.bisect_right(t, then) - 1
        if j < 0 or not feed[j] > 0:
            continue  # before the record began, the feed held or unknown: nothing to divide
        where = s[j] if j + 1 >= len(t) else _between(t[j], s[j], t[j + 1], s[j + 1], then)
        if anchor:
            where = anchored(record.visits, anchor, where)
        b = math.floor(where / bin_mm)
        if 0 <= b < bins:
            total[b] += (load - idle_pct) / (feed[j] / 100)
            count[b] += 1
    means = [x / n if n else math.nan for x, n in zip(total, count, strict=True)]
    # Clipped at 0 after the median, not before: the noise in air then cancels rather than
    # adding up to a cut that is not there.
    filtered = _median_filter(means, MEDIAN_BINS)
    return array.array("d", (k if math.isnan(k) else max(0.0, k) for k in filtered))


def _derivative_span(t: Sequence[float], lag_s: float) -> int:
    """How many readings either side the rate of change is taken over: a quarter of the lag
    or one reading, whichever is more. Undoing a lag amplifies the noise by lag / interval;
    nothing faster than the lag is seen anyway, so a longer baseline loses little."""
    if lag_s <= 0.0 or len(t) < 2:
        return 1
    interval = (t[-1] - t[0]) / (len(t) - 1)
    return max(1, round(lag_s / 4 / interval)) if interval > 0 else 1


def _median_filter(values: list[float], width: int) -> list[float]:
    """Each value the median of the known ones within width // 2 either side (NaN stays NaN):
    undoing the sensor's lag amplifies its noise; a median takes the noise out and keeps a
    step where it is."""
    half, out = width // 2, []
    for i, v in enumerate(values):
        near = [x for x in values[max(0, i - half) : i + half + 1] if not math.isnan(x)]
        out.append(statistics.median(near) if not math.isnan(v) else math.nan)
    return out


def _between(t0: float, s0: float, t1: float, s1: float, t: float) -> float:
    return s0 if t1 <= t0 else s0 + (s1 - s0) * (t - t0) / (t1 - t0)


def learn(
    profile: Profile | None,
    record: PartRecord,
    tool: int,
    idle_pct: float,
    dead_s: float,
    rule: Rule = Rule(),
    *,
    lag_s: float = 0.0,
) -> tuple[Profile | None, str]:
    """The profile after `record`, and "" or why the record taught nothing (the profile is
    then returned as it was): a rejected part, or a path other than the profile's."""
    if record.rejected:
        return profile, f"part rejected ({record.rejected})"
    if not record.visits:
        return profile, "no path recorded"
    if profile is not None and not same_path(profile.visits, record.visits):
        return profile, OTHER_WAY
    anchor = profile.visits if profile is not None else ()
    measured = measure(record, tool, idle_pct, dead_s, BIN_MM, lag_s=lag_s, anchor=anchor)
    if profile is None:
        return Profile(record.program, tool, record.visits, measured, 1), ""
    k = array.array("d", profile.k)
    if len(k) < len(measured):
        k.extend([math.nan] * (len(measured) - len(k)))
    for b, m in enumerate(measured):
        if math.isnan(m):
            continue
        if math.isnan(k[b]):
            k[b] = m
            continue
        scale = max(k[b], rule.floor_pct)
        step = min(rule.rise * scale, max(-rule.fall * scale, m - k[b]))
        k[b] += rule.gain * step
    return Profile(profile.program, tool, profile.visits, k, profile.parts + 1, BIN_MM), ""
