"""How well a run held the load: steady error and overshoot, from the plant's trace.

Steady: cutting samples whose engagement (a_p x a_e x Kc) has not changed for `settle_s` and
whose ideal override lies inside the override limits (where the target can be reached at all).
Overshoot: after each rise in engagement while cutting (an entry included), the highest load
the controller read within `settle_s`, above the target. Both as % of the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hil.bench import Run
from hil.oracle import ideal_feed
from hil.plant import MOTION

SETTLE_S = 1.0
#: A change in engagement smaller than this share is noise of the stock model's grid, not a step.
STEP_SHARE = 0.05


@dataclass(frozen=True)
class ControlMetrics:
    steady_rms_pct: float  # RMS of (load read - target), % of target, over steady samples
    overshoot_pct: float  # highest overshoot at an engagement rise, % of target
    steady_samples: int
    steps: int


def control_metrics(run: Run, settle_s: float = SETTLE_S) -> ControlMetrics:
    trace, scenario = run.trace, run.scenario
    target, control = scenario.control.target_load_pct, scenario.control
    t, load, motion = trace["t_s"], trace["load_pct"], trace["motion"]
    work = [a * k for a, k in zip(trace["area_mm2"], trace["kc"], strict=True)]
    cut = MOTION["cut"]
    squares, steady, overshoot, steps = 0.0, 0, 0.0, 0
    changed_at = 0.0
    for i in range(1, len(t)):
        if abs(work[i] - work[i - 1]) > STEP_SHARE * max(work[i - 1], 1e-9):
            changed_at = t[i]
            if work[i] > work[i - 1] and motion[i] == cut:
                steps += 1
                horizon = [load[j] for j in range(i, len(t)) if t[j] - t[i] <= settle_s]
                overshoot = max(overshoot, max(horizon) - target)
        if motion[i] != cut or t[i] - changed_at < settle_s:
            continue
        programmed = trace["programmed_mm_min"][i]
        area, kc = trace["area_mm2"][i], trace["kc"][i]
        wanted = ideal_feed(scenario, kc, area, programmed) / programmed * 100
        if not control.override_min_pct < wanted < control.override_max_pct:
            continue
        squares += (load[i] - target) ** 2
        steady += 1
    rms = math.sqrt(squares / steady) / target * 100 if steady else math.nan
    return ControlMetrics(rms, max(0.0, overshoot) / target * 100, steady, steps)
