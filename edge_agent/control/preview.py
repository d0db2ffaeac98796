"""The learned preview (issue 19; docs/adaptive-control.md, "Learned profiles"): the profiles
learned part after part, and, while a part runs, the override the path ahead needs.

`ProfileBook` learns. It is fed each finished part's record (in a worker thread on the
device, in line on the bench) and keeps one profile per (program, tool) and the loop's lags:
the load reading's delay, fitted to each part's spindle start (`delay.py`), and the axes' lag
behind the override, fitted to the feed the controller reports. Each is the median of the last
few parts, so one odd start does not move it.

`Preview` runs inside the controller, for the part under way: it checks, block by block, that
the part goes the way its profile went, and says the hardest k between where the tool is and
where it will be once an override written now has taken full effect (`k_at`). The controller
then writes the override that holds the target there, trimmed by the PI law:

    override = 100 x (target - idle) / k_ahead x trim / 100

With a right profile the trim stays at 100 % across every step the profile knows; what the
profile does not know (a hard spot new to this part, wear since it was learned) reaches the
law as a disturbance it trims away, as without preview. Sans-IO: no clock, no file, no thread.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import deque
from dataclasses import dataclass

from .delay import spindle_start_delay
from .part import PartRecord
from .path import Visit, tolerance
from .profile import Profile, Rule, learn

#: The lags are the median of this many parts' fits.
LAG_PARTS = 5
#: The axes' lag is searched 0..1 s in 5 ms steps (a first-order lag's delay on a ramp).
AXES_LAG_STEP_S = 0.005
MAX_AXES_LAG_S = 1.0
#: Only places cut at least this hard (% per 100 % feed) are previewed: in air the feed is
#: not the load's, and near k = 0 the override it would take is all noise.
MIN_K_PCT = 1.0


def axes_lag(record: PartRecord) -> float | None:
    """How long the feed the controller reports lags the feed asked for (override x knob):
    the shift that best lines the two up (the asked feed interpolated between readings), over
    the readings where the axes moved; None without the controller's feed or without a change
    to line up."""
    r = record.readings
    t, feed = r["t_s"], r["feed_pct"]
    asked = [o * k / 100 for o, k in zip(r["override_pct"], r["knob_pct"], strict=True)]
    cutting = r["cutting"]  # in cuts the programmed feed is the cut's (a rapid's is not)
    rows = [i for i in range(len(t)) if cutting[i] and feed[i] > 0 and math.isfinite(asked[i])]
    if len(rows) < 10 or max(asked[i] for i in rows) - min(asked[i] for i in rows) < 1.0:
        return None
    best = None
    for step in range(round(MAX_AXES_LAG_S / AXES_LAG_STEP_S) + 1):
        lag = step * AXES_LAG_STEP_S
        sse, n = 0.0, 0
        for i in rows:
            then = t[i] - lag
            j = bisect.bisect_right(t, then) - 1
            if j < 0 or j + 1 >= len(t) or not math.isfinite(asked[j] + asked[j + 1]):
                continue
            share = (then - t[j]) / (t[j + 1] - t[j]) if t[j + 1] > t[j] else 0.0
            sse += (feed[i] - asked[j] - (asked[j + 1] - asked[j]) * share) ** 2
            n += 1
        if n and (best is None or sse / n < best[0]):
            best = (sse / n, lag)
    return None if best is None else best[1]


class ProfileBook:
    """The profiles learned so far and the loop's lags; `learn` one finished part at a time."""

    def __init__(self, rule: Rule | None = None):
        self.rule = rule or Rule()
        self.profiles: dict[tuple[int, int], Profile] = {}
        self._dead: deque[float] = deque(maxlen=LAG_PARTS)
        self._lag: deque[float] = deque(maxlen=LAG_PARTS)
        self._axes: deque[float] = deque(maxlen=LAG_PARTS)

    def restore(self, profiles: dict[tuple[int, int], Profile], axes_lag_s: float | None) -> None:
        """Profiles and the axes' lag kept from before (`profile_store.py`); the sensor's
        lags are fitted again at the next spindle start."""
        self.profiles.update(profiles)
        if axes_lag_s is not None:
            self._axes.append(axes_lag_s)

    @property
    def sensor(self) -> tuple[float, float] | None:
        """The load reading's dead time and lag (s), or None before a spindle start fitted."""
        if not self._dead:
            return None
        return statistics.median(self._dead), statistics.median(self._lag)

    @property
    def axes_lag_s(self) -> float | None:
        return statistics.median(self._axes) if self._axes else None

    def learn(self, record: PartRecord, idle_pct: float | None) -> list[tuple[str, dict]]:
        """Learn from one finished part; the events saying what it taught, or why not."""
        fit = spindle_start_delay(record)
        if fit is not None:
            self._dead.append(fit.dead_s)
            self._lag.append(fit.lag_s)
        lag = axes_lag(record)
        if lag is not None:
            self._axes.append(lag)
        sensor = self.sensor
        if sensor is None or idle_pct is None:
            why = "no delay fitted yet" if sensor is None else "no idle load learned"
            return [("profile_not_learned", {"program": record.program, "why": why})]
        dead_s, lag_s = sensor
        events = []
        for tool in sorted({int(t) for t in record.readings["tool"]}):
            key = (record.program, tool)
            profile, why = learn(
                self.profiles.get(key), record, tool, idle_pct, dead_s, self.rule, lag_s=lag_s
            )
            detail = {"program": record.program, "tool": tool}
            if why:
                events.append(("profile_not_learned", {**detail, "why": why}))
                continue
            self.profiles[key] = profile
            detail |= {"parts": profile.parts, "dead_s": round(dead_s, 3), "lag_s": round(lag_s, 3)}
            events.append(("profile_learned", detail))
        return events


@dataclass
class Preview:
    """One part's preview for one (program, tool); `scale` at each tick while it matches."""

    profile: Profile
    lead_s: float  # how long before an override takes full effect: the axes' lag, the ramp
    matching: bool = True

    def check(self, visits: list[Visit], s_mm: float) -> str:
        """ "" while the part goes the profile's way so far (`visits`: the part's visits, the
        last one still open at `s_mm`); else, once, why not (preview is off from then)."""
        if not self.matching:
            return ""
        known = self.profile.visits
        last = len(visits) - 1
        for i, visit in enumerate(visits):
            if i >= len(known) or known[i].block != visit.block:
                why = f"block {visit.block} where the profile has "
                why += f"block {known[i].block}" if i < len(known) else "the program's end"
                return self._mismatch(why)
            length = s_mm - visit.start_mm if i == last else visit.length_mm
            over, allowed = length - known[i].length_mm, tolerance(visit, known[i])
            if over > allowed or (i < last and -over > allowed):
                return self._mismatch(
                    f"block {visit.block} {length:.1f} mm long where the profile's was "
                    f"{known[i].length_mm:.1f} mm"
                )
        return ""

    def _mismatch(self, why: str) -> str:
        self.matching = False
        return why

    def k_at(self, s_mm: float, speed_mm_s: float) -> float | None:
        """The hardest k from where the tool is (`s_mm` along the path) to where it will be
        `lead_s` on at `speed_mm_s`, when an override written now has taken full effect: a
        harder stretch ahead lowers the feed before the tool reaches it, an easier one raises
        it only once the tool is there. None where the profile knows of no cut there, or the
        part went another way."""
        if not self.matching:
            return None
        at = self.profile.at
        ahead = s_mm + max(0.0, speed_mm_s) * self.lead_s
        bin_mm = self.profile.bin_mm
        known = [at(s_mm + i * bin_mm) for i in range(int((ahead - s_mm) / bin_mm) + 1)]
        known = [k for k in (*known, at(ahead)) if math.isfinite(k) and k >= MIN_K_PCT]
        return max(known) if known else None
