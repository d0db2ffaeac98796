"""How late the load reading is: its dead time and lag, fitted on the machine to a step the
machine makes itself, the spindle coming up to speed at the program's start.

When the spindle starts, its load goes from nothing to the idle load at once; the reading
follows after the drive's and the controller's update cycles (a dead time) and the drive's
current filtering (a first-order lag). The record of a part starts in the poll that saw the
program start, so its first readings are that step's response. `fit_steps` finds the dead
time and lag whose first-order step best matches those of the last parts together (least
squares on a grid, each part's final value solved for), and refuses a fit that does not
match: a spindle whose start shows an acceleration peak, or a record that began mid-cut. The
learned profile puts each reading back by the mean delay, dead time + lag, and undoes the
lag (issue 19; docs/adaptive-control.md, "Learned profiles").

Sans-IO: pure functions of the readings.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from .part import PartRecord

#: One step response: the times (s after the step) and the readings.
Response = tuple[Sequence[float], Sequence[float]]

#: The fit's search: dead times 0..0.5 s and lags 5 ms..2 s, on a coarse grid (20 ms, lags
#: 20 % apart), then a fine one (5 ms, 2 %) around the coarse grid's best: a tenth of the
#: work of the fine grid everywhere (about 40 ms of CPU a part here), the same answer on a
#: smooth error surface.
MAX_DEAD_S = 0.5
MIN_LAG_S, MAX_LAG_S = 0.005, 2.0
COARSE = (0.02, 1.2)
FINE = (0.005, 1.02)
#: A fit whose residual (RMS) exceeds this share of the step, and exceeds the readings' own
#: noise by this factor, is not a first-order step: a noisy reading misses a right fit by its
#: noise, a spindle's acceleration peak misses it by more than the settled readings scatter.
MAX_RESIDUAL_SHARE = 0.15
MAX_RESIDUAL_NOISE = 1.5
#: The readings must reach this many lags past the dead time (86 % of the step).
SEEN_LAGS = 2.0
#: The noise is measured on the readings this many lags after the dead time (settled), if at
#: least NOISE_READINGS are; a step smaller than STEP_NOISE times it cannot be timed.
SETTLED_LAGS = 4.0
NOISE_READINGS = 5
STEP_NOISE = 2.0
#: A part's readings fitted at most: the spindle's start and the air before the first cut.
START_WINDOW_S = 3.0
#: The window ends where this many readings in a row were seen cutting.
CUT_READINGS = 3
#: A step smaller than this (% load) is too small to time against the noise.
MIN_STEP_PCT = 1.0


@dataclass(frozen=True)
class DelayFit:
    """A fitted step response: dead time, lag (s), final value (% load), residual (RMS %),
    and the uncertainty of the mean delay (s)."""

    dead_s: float
    lag_s: float
    final_pct: float
    residual_pct: float
    spread_s: float = 0.0  # how far apart the mean delays are that fit within the noise

    @property
    def mean_s(self) -> float:
        """The mean delay of the response: where a reading belongs in time, on average."""
        return self.dead_s + self.lag_s


def fit_step(t_s: Sequence[float], load_pct: Sequence[float]) -> DelayFit | None:
    """The first-order step at t = 0 that the readings (at times `t_s`, s after the step)
    follow best; None when none follows them well (or the step is too small)."""
    return fit_steps([(t_s, load_pct)])


def fit_steps(responses: Sequence[Response]) -> DelayFit | None:
    """The dead time and lag that several responses to a step at t = 0 (each its own times
    and readings, its own start and final value) follow best together: the spindle starts of
    the last parts, whose noise a joint fit averages out. None when they do not follow a
    first-order step well, or the step is too small for the noise."""
    responses = [r for r in responses if len(r[0]) >= 2]
    n = sum(len(t) for t, _ in responses)
    if n < 10:
        return None
    dead_step, lag_factor = COARSE
    fits = _search(
        responses, _steps(0.0, MAX_DEAD_S, dead_step), _lags(MIN_LAG_S, MAX_LAG_S, lag_factor)
    )
    _, dead, lag, _ = min(fits)
    fine_step, fine_factor = FINE
    deads = _steps(max(0.0, dead - dead_step), min(MAX_DEAD_S, dead + dead_step), fine_step)
    lags = _lags(max(MIN_LAG_S, lag / lag_factor), min(MAX_LAG_S, lag * lag_factor), fine_factor)
    fits += _search(responses, deads, lags)
    best = min(fits)
    # Noise blurs where the dead time ends and the lag begins (their sum stays sharp): of the
    # splits that fit within the noise (an error within one noise variance of the best), the
    # longest lag. The profile undoes the lag: too short a one would flatten a short cut.
    within = best[0] * (1.0 + 1.0 / n)
    near = [fit for fit in fits if fit[0] <= within]
    sse, dead, lag, final = max(near, key=lambda fit: fit[2])
    means = [d + g for _, d, g, _ in near]
    residual = math.sqrt(sse / n)
    if min(t[-1] for t, _ in responses) < dead + SEEN_LAGS * lag:
        return None  # a response not seen rising most of the way: a slow ramp fits it as well
    settled = [
        [y for t, y in zip(ts, ys, strict=True) if t > dead + SETTLED_LAGS * lag]
        for ts, ys in responses
    ]
    noise = math.sqrt(statistics.fmean(_noise(y) ** 2 for y in settled))
    if final < max(MIN_STEP_PCT, STEP_NOISE * noise):
        return None
    if residual > max(MAX_RESIDUAL_SHARE * final, MAX_RESIDUAL_NOISE * noise):
        return None
    return DelayFit(dead, lag, final, residual, max(means) - min(means))


def _noise(settled: Sequence[float]) -> float:
    """The readings' noise (standard deviation) from successive differences of settled ones;
    0 with too few to tell."""
    if len(settled) < NOISE_READINGS:
        return 0.0
    steps = [(b - a) ** 2 for a, b in zip(settled, settled[1:], strict=False)]
    return math.sqrt(sum(steps) / len(steps) / 2)


def spindle_start(record: PartRecord) -> Response | None:
    """A part's first readings, the spindle start's response: from the program's start until
    the controller saw cutting (`_first_cut`; at most START_WINDOW_S). The spindle started,
    on average, half a reading interval before the first reading that shows it: the times
    are moved by that. None with fewer than two readings."""
    r = record.readings
    t, load, cutting = r["t_s"], r["load_pct"], r["cutting"]
    end = min(_first_cut(cutting), bisect.bisect_right(t, START_WINDOW_S))
    if end < 2:
        return None
    half = reading_interval(t[:end]) / 2
    return [x - t[0] + half for x in t[:end]], list(load[:end])


def reading_interval(t_s: Sequence[float]) -> float:
    """The median time between readings (at least two)."""
    return statistics.median(b - a for a, b in zip(t_s, t_s[1:], strict=False))


def _first_cut(cutting: Sequence[float]) -> int:
    """The first of CUT_READINGS readings in a row seen cutting (their count if none): before
    the idle is learned (a first part) the spindle's own start may be taken for a cut, or a
    noisy reading in air, but not for long."""
    run = 0
    for i, c in enumerate(cutting):
        run = run + 1 if c else 0
        if run == CUT_READINGS:
            return i + 1 - CUT_READINGS
    return len(cutting)


def _steps(lo: float, hi: float, step: float) -> list[float]:
    return [lo + i * step for i in range(int((hi - lo) / step + 1e-9) + 1)]


def _lags(lo: float, hi: float, factor: float) -> list[float]:
    out = [lo]
    while out[-1] * factor <= hi:
        out.append(out[-1] * factor)
    return out


def _search(responses, deads, lags) -> list[tuple[float, float, float, float]]:
    """For each lag of the grid, the (squared error, dead time, lag, mean final value) of its
    best step, summed over the responses. The reading may still be falling from the last
    part's end when the spindle starts: what it held at t = 0 decays with the same lag, under
    the step (both amounts solved for, each response its own)."""
    fits = []
    for lag in lags:
        best = (math.inf, 0.0, lag, 0.0)
        falls = []
        for t_s, load_pct in responses:
            fall = [math.exp(-t / lag) for t in t_s]
            ff = sum(f * f for f in fall)
            falls.append((fall, ff, sum(f * y for f, y in zip(fall, load_pct, strict=True))))
        for dead in deads:
            sse, finals = 0.0, 0.0
            for (t_s, load_pct), (fall, ff, fy) in zip(responses, falls, strict=True):
                rise = [0.0 if t <= dead else 1.0 - math.exp(-(t - dead) / lag) for t in t_s]
                rr = sum(r * r for r in rise)
                fr = sum(f * r for f, r in zip(fall, rise, strict=True))
                det = ff * rr - fr * fr
                if det <= 1e-12 * ff * rr:
                    break
                ry = sum(r * y for r, y in zip(rise, load_pct, strict=True))
                start, final = (rr * fy - fr * ry) / det, (ff * ry - fr * fy) / det
                sse += sum(
                    (y - start * f - final * r) ** 2
                    for f, r, y in zip(fall, rise, load_pct, strict=True)
                )
                finals += final
            else:
                best = min(best, (sse, dead, lag, finals / len(responses)))
        fits.append(best)
    return fits
