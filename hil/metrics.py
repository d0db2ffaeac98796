"""How well a run held the load and met its faults, from the plant's trace.

Steady: cutting samples whose engagement (a_p x a_e x Kc) has not changed for `settle_s`, whose
ideal override lies inside the override limits and the machine's clamps (where the target can
be reached at all), before any breakage (a broken tool's rubbing is not a cut to regulate).
Overshoot: after each rise in engagement while cutting (an entry included), the highest load
the controller read within `settle_s`, above the target. RMS error and bias: of the load read
minus the target over the steady samples. All as % of the target.

Faults, on plant time: the hold is the first step at which the agent's override 0 reached the
plant; the reaction is the hold minus the fault's onset. Reads runs; never runs anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from hil.bench import Run
from hil.physics import feed_for_power
from hil.plant import MOTION

SETTLE_S = 1.0
#: A change in engagement smaller than this share is noise of the stock model's grid, not a step.
STEP_SHARE = 0.05
#: Overload at the floor: the load read above target + this share of the cutting load.
OVERLOAD_FLOOR_SHARE = 0.1


@dataclass(frozen=True)
class ControlMetrics:
    steady_rms_pct: float  # RMS of (load read - target), % of target, over steady samples
    overshoot_pct: float  # highest overshoot at an engagement rise, % of target
    steady_samples: int
    steps: int
    bias_pct: float = math.nan  # mean of (load read - target), % of target, steady samples


def steady_rows(
    run: Run, settle_s: float = SETTLE_S, load_key: str = "load_pct"
) -> tuple[list[bool], float, int]:
    """Which trace rows are steady; the highest overshoot above the target (load %) after an
    engagement rise, of the load read or (`load_key` "load_true_pct") of the true load, and
    how many rises there were."""
    trace, scenario = run.trace, run.scenario
    target, control = scenario.control.target_load_pct, scenario.control
    t, load, motion = trace["t_s"], trace[load_key], trace["motion"]
    work = [a * k for a, k in zip(trace["area_mm2"], trace["kc"], strict=True)]
    cut = MOTION["cut"]
    m = scenario.machine
    cutting_kw = target / 100 * m.rated_power_kw - m.idle_power_kw
    top_pct = min(control.override_max_pct, m.max_feed_pct)
    broken_s = run.result.broken_at_s if run.result.broken_at_s is not None else math.inf
    steady = [False] * len(t)
    overshoot, steps, changed_at = 0.0, 0, 0.0
    for i in range(1, len(t)):
        if abs(work[i] - work[i - 1]) > STEP_SHARE * max(work[i - 1], 1e-9):
            changed_at = t[i]
            if work[i] > work[i - 1] and motion[i] == cut:
                steps += 1
                horizon = [load[j] for j in range(i, len(t)) if t[j] - t[i] <= settle_s]
                overshoot = max(overshoot, max(horizon) - target)
        if motion[i] != cut or t[i] - changed_at < settle_s or t[i] >= broken_s:
            continue
        programmed = trace["programmed_mm_min"][i]
        feed = feed_for_power(trace["kc"][i], trace["area_mm2"][i], 1.0, cutting_kw, m.efficiency)
        wanted = feed / programmed * 100
        steady[i] = control.override_min_pct < wanted < top_pct and feed < m.max_feed_mm_min
    return steady, overshoot, steps


def control_metrics(
    run: Run, settle_s: float = SETTLE_S, overshoot_of: str = "load_pct"
) -> ControlMetrics:
    """The run's figures; the overshoot of `overshoot_of` (the load read, or the true load)."""
    steady, overshoot, steps = steady_rows(run, settle_s, overshoot_of)
    target = run.scenario.control.target_load_pct
    errors = [v - target for v, ok in zip(run.trace["load_pct"], steady, strict=True) if ok]
    if errors:
        rms = math.sqrt(sum(e * e for e in errors) / len(errors)) / target * 100
        bias = sum(errors) / len(errors) / target * 100
    else:
        rms = bias = math.nan
    return ControlMetrics(rms, max(0.0, overshoot) / target * 100, len(errors), steps, bias)


def hold_at_s(run: Run) -> float | None:
    """When the agent's feed hold (override 0) first reached the plant; None if never."""
    for t, override in zip(run.trace["t_s"], run.trace["override_pct"], strict=True):
        if override == 0.0:
            return t
    return None


def polled_rows(t: Sequence[float], poll_s: float | None) -> list[int]:
    """The trace rows the agent read (every `poll_s` from 0); every row when None."""
    if poll_s is None:
        return list(range(len(t)))
    return [i for i, at in enumerate(t) if abs(at / poll_s - round(at / poll_s)) < 1e-6]


def overload_onset_s(
    run: Run, hold_s: float, poll_s: float | None = None, true_load: bool = False
) -> float | None:
    """When the load read (or with `true_load`, the spindle's true load) began to meet the
    overload condition (above the hard limit, or at the override floor above target + 10 % of
    the cutting load) and met it in every reading up to the hold; None when the reading before
    the hold did not meet it."""
    scenario, trace = run.scenario, run.trace
    c, m = scenario.control, scenario.machine
    idle = 100 * m.idle_power_kw / m.rated_power_kw
    floor_limit = c.target_load_pct + OVERLOAD_FLOOR_SHARE * (c.target_load_pct - idle)
    t, override = trace["t_s"], trace["override_pct"]
    load = trace["load_true_pct" if true_load else "load_pct"]

    def over(i: int) -> bool:
        at_floor = 0 < override[i] <= c.override_min_pct
        return load[i] > c.hard_limit_pct or (at_floor and load[i] > floor_limit)

    onset = None
    for i in reversed([i for i in polled_rows(t, poll_s) if t[i] < hold_s]):
        if not over(i):
            break
        onset = t[i]
    return onset


def raises_over_target(run: Run, from_s: float, poll_s: float | None = None) -> int:
    """Readings from `from_s` on after which the override reaching the plant rose by the next
    reading, though the load read (what the agent answered) stood above target + 2 noise
    sigmas."""
    trace, scenario = run.trace, run.scenario
    above = scenario.control.target_load_pct + 2 * scenario.sensor.noise_pct
    t, load, override = trace["t_s"], trace["load_pct"], trace["override_pct"]
    rows = [i for i in polled_rows(t, poll_s) if t[i] >= from_s]
    return sum(
        1
        for a, b in zip(rows, rows[1:], strict=False)
        if override[b] > override[a] and load[a] > above
    )


def load_near_target(run: Run, at_s: float, steady: list[bool], within_pct: float = 5.0):
    """Whether the load read, averaged over 0.2 s around `at_s`, is within `within_pct` % of
    the target; None where the trace is not steady there (a step, air, out of reach, ended)."""
    t, load = run.trace["t_s"], run.trace["load_pct"]
    rows = [i for i, at in enumerate(t) if abs(at - at_s) <= 0.1]
    if not rows or not all(steady[i] for i in rows):
        return None
    target = run.scenario.control.target_load_pct
    mean = sum(load[i] for i in rows) / len(rows)
    return abs(mean - target) <= within_pct / 100 * target


def made_worse(agent_peak: float, baseline_peak: float, hard_limit: float) -> bool:
    """The agent took the true peak over the hard limit where a fixed 100 % stayed under it."""
    return baseline_peak <= hard_limit < agent_peak


def load_before(run: Run, at_s: float) -> float:
    """The true load at the last step before `at_s`."""
    t, true = run.trace["t_s"], run.trace["load_true_pct"]
    before = [v for at, v in zip(t, true, strict=True) if at < at_s - 1e-9]
    return before[-1] if before else 0.0


def fault_reaction_s(run: Run, poll_s: float | None = None) -> float | None:
    """From a breakage's onset, or an overload's (`overload_onset_s`), to the agent's feed
    hold; None when the agent did not hold for either."""
    hold_s = hold_at_s(run)
    if hold_s is None:
        return None
    broken_s = run.result.broken_at_s
    if broken_s is not None and broken_s <= hold_s:
        return hold_s - broken_s
    onset = overload_onset_s(run, hold_s, poll_s)
    return None if onset is None else hold_s - onset
