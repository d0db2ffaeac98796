"""How late the load reading is: its dead time and lag, fitted on the machine to a step the
machine makes itself, the spindle coming up to speed at the program's start.

When the spindle starts, its load goes from nothing to the idle load at once; the reading
follows after the drive's and the controller's update cycles (a dead time) and the drive's
current filtering (a first-order lag). The record of a part starts in the poll that saw the
program start, so its first readings are that step's response. `fit_step` finds the dead time
and lag whose first-order step best matches them (least squares on a grid, the final value
solved for each), and refuses a fit that does not match: a spindle whose start shows an
acceleration peak, or a record that began mid-cut. The learned profile puts each reading back
by the mean delay, dead time + lag (issue 19; docs/adaptive-control.md, "Learned profiles").

Sans-IO: pure functions of the readings.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from .part import PartRecord

#: The fit's search: dead times 0..0.5 s and lags 5 ms..2 s, on a coarse grid (20 ms, lags
#: 20 % apart), then a fine one (5 ms, 2 %) around the coarse grid's best: a tenth of the
#: work of the fine grid everywhere (about 40 ms of CPU a part here), the same answer on a
#: smooth error surface.
MAX_DEAD_S = 0.5
MIN_LAG_S, MAX_LAG_S = 0.005, 2.0
COARSE = (0.02, 1.2)
FINE = (0.005, 1.02)
#: A fit whose residual (RMS) exceeds this share of the step is not a first-order step.
MAX_RESIDUAL_SHARE = 0.15
#: A part's readings fitted at most: the spindle's start and the air before the first cut.
START_WINDOW_S = 3.0
#: A step smaller than this (% load) is too small to time against the noise.
MIN_STEP_PCT = 1.0


@dataclass(frozen=True)
class DelayFit:
    """A fitted step response: dead time, lag (s), final value (% load), residual (RMS %)."""

    dead_s: float
    lag_s: float
    final_pct: float
    residual_pct: float

    @property
    def mean_s(self) -> float:
        """The mean delay of the response: where a reading belongs in time, on average."""
        return self.dead_s + self.lag_s


def fit_step(t_s: Sequence[float], load_pct: Sequence[float]) -> DelayFit | None:
    """The first-order step at t = 0 that the readings (at times `t_s`, s after the step)
    follow best; None when none follows them well (or the step is too small)."""
    n = len(t_s)
    if n < 10:
        return None
    dead_step, lag_factor = COARSE
    best = _search(
        t_s, load_pct, _steps(0.0, MAX_DEAD_S, dead_step), _lags(MIN_LAG_S, MAX_LAG_S, lag_factor)
    )
    _, dead, lag, _ = best
    fine_step, fine_factor = FINE
    deads = _steps(max(0.0, dead - dead_step), min(MAX_DEAD_S, dead + dead_step), fine_step)
    lags = _lags(max(MIN_LAG_S, lag / lag_factor), min(MAX_LAG_S, lag * lag_factor), fine_factor)
    best = min(best, _search(t_s, load_pct, deads, lags))
    sse, dead, lag, final = best
    residual = math.sqrt(sse / n)
    if final < MIN_STEP_PCT or residual > MAX_RESIDUAL_SHARE * final:
        return None
    return DelayFit(dead, lag, final, residual)


def spindle_start_delay(record: PartRecord) -> DelayFit | None:
    """The fit of a part's first readings: from the program's start until the first one the
    controller saw cutting (at most START_WINDOW_S). The spindle started, on average, half a
    reading interval before the first reading that shows it: the times are moved by that."""
    r = record.readings
    t, load, cutting = r["t_s"], r["load_pct"], r["cutting"]
    end = next((i for i, c in enumerate(cutting) if c), len(t))
    end = min(end, bisect.bisect_right(t, START_WINDOW_S))
    if end < 2:
        return None
    half = statistics.median(b - a for a, b in zip(t[:end], t[1:end], strict=False)) / 2
    return fit_step([x - t[0] + half for x in t[:end]], load[:end])


def _steps(lo: float, hi: float, step: float) -> list[float]:
    return [lo + i * step for i in range(int((hi - lo) / step + 1e-9) + 1)]


def _lags(lo: float, hi: float, factor: float) -> list[float]:
    out = [lo]
    while out[-1] * factor <= hi:
        out.append(out[-1] * factor)
    return out


def _search(t_s, load_pct, deads, lags) -> tuple[float, float, float, float]:
    """The (squared error, dead time, lag, final value) of the best step on the grid. The
    reading may still be falling from the last part's end when the spindle starts: what it
    held at t = 0 decays with the same lag, under the step (both amounts solved for)."""
    best = (math.inf, 0.0, lags[0], 0.0)
    for lag in lags:
        fall = [math.exp(-t / lag) for t in t_s]
        ff = sum(f * f for f in fall)
        fy = sum(f * y for f, y in zip(fall, load_pct, strict=True))
        for dead in deads:
            rise = [0.0 if t <= dead else 1.0 - math.exp(-(t - dead) / lag) for t in t_s]
            rr = sum(r * r for r in rise)
            fr = sum(f * r for f, r in zip(fall, rise, strict=True))
            det = ff * rr - fr * fr
            if det <= 1e-12 * ff * rr:
                continue
            ry = sum(r * y for r, y in zip(rise, load_pct, strict=True))
            start, final = (rr * fy - fr * ry) / det, (ff * ry - fr * fy) / det
            sse = sum(
                (y - start * f - final * r) ** 2
                for f, r, y in zip(fall, rise, load_pct, strict=True)
            )
            best = min(best, (sse, dead, lag, final))
    return best
