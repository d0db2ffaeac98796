"""Tool breakage against the learned profile (issue 19): cutting load lost where the profile
of a repeat part says the tool cuts.

A broken tool only rubs: its cutting load falls to a small share of what it was. On a first
part only the chipping spike tells a breakage from the tool leaving the material
(`breakage.py`); on a repeat part the profile knows where the tool cuts, and so what cutting
load a reading should show at the least: k at each place the reading may reflect times the
feed the tool ran at there. The reading reflects the load of a delay ago, filtered over some
lags, and its place is known within a margin: so the stretch judged runs from
`MEMORY_DELAYS` delays and the margin back to now, `EDGE_MM` wider either side, and only
where the profile says the tool cut all through it (an exit it knows is never inside). A
reading whose cutting load is under `drop_fraction` of that least load for `LOST_READINGS`
readings in a row is a breakage.

Sans-IO: fed the tool's path and the readings; never reads a clock.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import deque

from .preview import MIN_K_PCT, Preview

NS = 1_000_000_000

#: A reading's cutting load under this share of the least the profile expects is lost ...
DROP_FRACTION = 0.4
#: ... for this many readings in a row (noise does not put three under it).
LOST_READINGS = 3
#: The stretch a reading may reflect: this many mean delays back (a first-order lag's reading
#: is 95 % settled after three lags), and the places' margin either side.
MEMORY_DELAYS = 3.0
#: The stretch is widened by this either side: a profile's edge (an entry, an exit) is
#: smeared over its median's bins and the bin it falls in, and a part's own edge may lie a
#: little off the profile's (more or less stock at a slanted face).
EDGE_MM = 3.0
#: At least this share of the stretch's bins must have been seen by the profile.
SEEN_SHARE = 0.3
#: The path kept: enough for the slowest sensor's stretch.
HISTORY_NS = 3 * NS


class ProfileLossWatch:
    """Fed where the tool is and the cutting load read; says when load was lost where the
    profile says the tool cuts."""

    def __init__(self, drop_fraction: float = DROP_FRACTION, readings: int = LOST_READINGS):
        self.drop_fraction, self.readings = drop_fraction, readings
        self._t: deque[int] = deque()
        self._path: deque[tuple[float, float]] = deque()  # (s_mm, feed %) at each _t
        self._lost = 0

    def reset(self) -> None:
        """A new part, or control restarted: no path, nothing lost yet."""
        self._t.clear()
        self._path.clear()
        self._lost = 0

    def moved(self, t_ns: int, s_mm: float, feed_pct: float) -> None:
        """The tool at `s_mm` along the path, running at `feed_pct` of the programmed feed."""
        self._t.append(t_ns)
        self._path.append((s_mm, feed_pct))
        while self._t[0] < t_ns - HISTORY_NS:
            self._t.popleft()
            self._path.popleft()

    def expected(self, t_ns: int, preview: Preview, delay_s: float) -> float | None:
        """The least cutting load (% load) the profile says a reading at `t_ns` shows: None
        unless it says the tool cut all through the stretch the reading may reflect."""
        if not preview.matching or not self._t:
            return None
        back_ns = round((MEMORY_DELAYS * delay_s + preview.margin_s) * NS)
        if self._t[0] > t_ns - back_ns:
            return None  # the path not known that far back
        first = bisect.bisect_left(self._t, t_ns - back_ns)
        places = list(itertools.islice(self._path, max(0, first - 1), None))
        s_lo = min(s for s, _ in places)
        s_hi = max(s for s, _ in places)
        profile = preview.profile
        s_lo, s_hi = s_lo - EDGE_MM, s_hi + EDGE_MM
        bins = range(int(s_lo // profile.bin_mm), int(s_hi // profile.bin_mm) + 1)
        ks = [profile.at((b + 0.5) * profile.bin_mm) for b in bins]
        # A bin between two readings of a fast move is never seen (NaN): a gap, unless most
        # of the stretch is unseen.
        seen = [k for k in ks if not math.isnan(k)]
        feeds = [feed for _, feed in places]
        if len(seen) < len(ks) * SEEN_SHARE or not all(k >= MIN_K_PCT for k in seen):
            return None  # air, or a stretch the profile does not know
        if not all(f > 0.0 for f in feeds):
            return None  # the feed held or unknown (NaN)
        return min(seen) * min(feeds) / 100.0

    def observe(
        self, t_ns: int, cut_pct: float, preview: Preview, delay_s: float, min_cut_pct: float
    ) -> dict | None:
        """One reading's cutting load (load - idle); the breakage event's detail, or None."""
        expected = self.expected(t_ns, preview, delay_s)
        if expected is None or expected < min_cut_pct:
            self._lost = 0
            return None
        self._lost = self._lost + 1 if cut_pct < self.drop_fraction * expected else 0
        if self._lost < self.readings:
            return None
        return {"expected_pct": round(expected, 2), "cut_pct": round(cut_pct, 2)}
