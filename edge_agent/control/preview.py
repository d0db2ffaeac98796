"""The learned preview (issue 19; docs/adaptive-control.md, "Learned profiles"): the profiles
learned part after part, and, while a part runs, the override the path ahead needs.

`ProfileBook` learns. It is fed each finished part's record (in a child process on the
device, `learning.py`; in line on the bench) and keeps one profile per (program, tool) and the
loop's lags: the load reading's delay, fitted to the spindle starts of the last few parts together
(`delay.py`; a fit that fails keeps the one before), and the axes' lag behind the override,
fitted to the feed the controller reports, the median of the last few parts' fits.

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

from .delay import Response, fit_steps, reading_interval, spindle_start
from .part import PartRecord
from .path import Visit, same_path, tolerance
from .profile import OTHER_WAY, Profile, Rule, learn

#: The lags are the median of this many parts' fits.
LAG_PARTS = 5
#: The axes' lag is searched 0..1 s in 5 ms steps (a first-order lag's delay on a ramp).
AXES_LAG_STEP_S = 0.005
MAX_AXES_LAG_S = 1.0
#: How far (s of travel) the profile's places may be off either way before a delay is fitted
#: in this run (profiles kept from before): each reading is put back along the path by the
#: fitted delay, and a noisy reading at a slow poll is fitted within some 2.5 polls
#: (`delay.py`). Once fitted, the fit's own uncertainty and half a reading interval.
PLACE_MARGIN_S = 0.1


@dataclass(frozen=True)
class Timing:
    """What the preview needs of the loop's timing: the axes' lag behind the override, and
    how far the profile's places may be off either way (s of travel). The hardest k within
    the margin either side of the lead is previewed, so a step misplaced by the delay's fit
    is still met."""

    axes_lag_s: float = 0.0
    margin_s: float = PLACE_MARGIN_S
    #: the load reading's dead time and lag (s), once fitted (delay.py)
    sensor: tuple[float, float] | None = None

    @property
    def sensor_delay_s(self) -> float | None:
        """The load reading's mean delay, once fitted."""
        return sum(self.sensor) if self.sensor is not None else None


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
        self._starts: deque[Response] = deque(maxlen=LAG_PARTS)
        self._sensor: tuple[float, float] | None = None  # dead time, lag (s), once fitted
        self._margin_s = PLACE_MARGIN_S
        self._axes: deque[float] = deque(maxlen=LAG_PARTS)
        self._other_way: dict[tuple[int, int], tuple[Visit, ...]] = {}  # the last part off it

    def restore(self, profiles: dict[tuple[int, int], Profile], axes_lag_s: float | None) -> None:
        """Profiles and the axes' lag kept from before (`profile_store.py`); the sensor's
        lags are fitted again at the next spindle start."""
        self.profiles.update(profiles)
        if axes_lag_s is not None:
            self._axes.append(axes_lag_s)

    @property
    def axes_lag_s(self) -> float | None:
        return statistics.median(self._axes) if self._axes else None

    @property
    def timing(self) -> Timing:
        return Timing(self.axes_lag_s or 0.0, self._margin_s, self._sensor)

    def learn(self, record: PartRecord, idle_pct: float | None) -> list[tuple[str, dict]]:
        """Learn from one finished part; the events saying what it taught, or why not."""
        start = spindle_start(record)
        if start is not None:
            self._starts.append(start)
            fit = fit_steps(self._starts)  # the last starts together: their noise averages
            if fit is not None:
                self._sensor = fit.dead_s, fit.lag_s
                self._margin_s = fit.spread_s + reading_interval(start[0]) / 2
        lag = axes_lag(record)
        if lag is not None:
            self._axes.append(lag)
        sensor = self._sensor
        if sensor is None or idle_pct is None:
            why = "no delay fitted yet" if sensor is None else "no idle load learned"
            return [("profile_not_learned", {"program": record.program, "why": why})]
        dead_s, lag_s = sensor
        events = []
        for tool in sorted(record.tools):
            key = (record.program, tool)
            detail = {"program": record.program, "tool": tool}
            profile, why = learn(
                self.profiles.get(key), record, tool, idle_pct, dead_s, self.rule, lag_s=lag_s
            )
            if why == OTHER_WAY:
                # Another way twice in a row, the same both times: the program was edited
                # for good; the profile starts again from this part.
                before, self._other_way[key] = self._other_way.get(key), record.visits
                if before is not None and same_path(before, record.visits):
                    detail["relearned"] = "the program went another way two parts in a row"
                    profile, why = learn(
                        None, record, tool, idle_pct, dead_s, self.rule, lag_s=lag_s
                    )
            if why:
                events.append(("profile_not_learned", {**detail, "why": why}))
                continue
            self.profiles[key] = profile
            self._other_way.pop(key, None)
            detail |= {"parts": profile.parts, "dead_s": round(dead_s, 3), "lag_s": round(lag_s, 3)}
            events.append(("profile_learned", detail))
        return events


@dataclass
class Preview:
    """One part's preview for one (program, tool); `scale` at each tick while it matches."""

    profile: Profile
    lead_s: float  # how long before an override takes full effect: the axes' lag, the ramp
    margin_s: float = PLACE_MARGIN_S  # how far the profile's places may be off (`Timing`)
    matching: bool = True
    offset_mm: float = 0.0  # the profile's place less the part's, in the block the tool is in

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
        if visits:  # the arc length's drift taken out at the block's start (`anchored`)
            self.offset_mm = known[last].start_mm - visits[last].start_mm
        return ""

    def _mismatch(self, why: str) -> str:
        self.matching = False
        return why

    def _window(self, s_mm: float, speed_mm_s: float) -> list[float]:
        """k of each bin from the margin behind the tool to the lead and the margin ahead of
        it (NaN where the profile never saw the tool)."""
        at = self.profile.at
        speed = max(0.0, speed_mm_s)
        behind = s_mm - speed * self.margin_s
        ahead = s_mm + speed * (self.lead_s + self.margin_s)
        bin_mm = self.profile.bin_mm
        return [at(behind + i * bin_mm) for i in range(int((ahead - behind) / bin_mm) + 1)] + [
            at(ahead)
        ]

    def known_air(self, s_mm: float, speed_mm_s: float) -> bool:
        """The profile saw the tool in air all the way through the window (`_window`)."""
        return self.matching and all(k < MIN_K_PCT for k in self._window(s_mm, speed_mm_s))

    def k_at(self, s_mm: float, speed_mm_s: float) -> float | None:
        """The hardest k from where the tool is (`s_mm` along the path) to where it will be
        `lead_s` on at `speed_mm_s`, when an override written now has taken full effect, the
        margin wider either side (`_window`): a harder stretch ahead lowers the feed before
        the tool reaches it, an easier one raises it only once the tool is there. None where
        the profile knows of no cut there, or the part went another way."""
        if not self.matching:
            return None
        known = [k for k in self._window(s_mm, speed_mm_s) if math.isfinite(k) and k >= MIN_K_PCT]
        return max(known) if known else None
