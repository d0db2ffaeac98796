"""`python -m hil family`: the randomized scenario family run against a fixed 100 % and the
agent on simulated time, measured case by case and judged against the issue's criteria.

Each case runs in a worker process (one per core): the baseline (`run_simulated`), then the
agent's control path (`run_adaptive_simulated`) with an observer recording the controller's
state and learned idle every tick. A case's figures are a flat dict (report.json holds them
all); `criteria` turns the family's figures into pass/fail lines with the measured numbers.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hil import metrics
from hil.bench import Run, control_config, run_adaptive_simulated, run_simulated
from hil.family_gen import Case, case, parse_id
from hil.plant import MOTION
from hil.scenario import Scenario

#: The sensor whose breakage reaction the issue bounds (its defaults).
DEFAULT_LAG_S, DEFAULT_DEAD_TIME_S = 0.15, 0.05
#: After a freeze or link loss, a learned idle this far (share of the cutting load) above the
#: idle before it has been learned from cutting.
RELEARNED_SHARE = 0.25
#: Where the load read is judged after a freeze or link loss has ended.
BACK_AFTER_S = 2.0


class Recorder:
    """The controller's state and learned idle at every tick: the observer of a run."""

    def __init__(self):
        self.t_s = array("d")
        self.idle_pct = array("d")
        self.states: list[str] = []

    def __call__(self, now_ns: int, loop) -> None:
        controller = loop.controller
        self.t_s.append(now_ns / 1e9)
        self.idle_pct.append(controller.idle_pct if controller.idle_pct is not None else math.nan)
        self.states.append(controller.state.value)

    def idle_around(self, onset_s: float) -> tuple[float, float]:
        """The learned idle at the last tick before `onset_s`, and its highest after."""
        before = [v for t, v in zip(self.t_s, self.idle_pct, strict=True) if t < onset_s]
        after = [v for t, v in zip(self.t_s, self.idle_pct, strict=True) if t >= onset_s]
        return (before[-1] if before else math.nan), max(after, default=math.nan)


def run_case(item: Case) -> tuple[Run, Run, Recorder]:
    """The case's baseline and agent runs, and what the controller did."""
    recorder = Recorder()
    baseline = run_simulated(item.scenario)
    agent, _ = run_adaptive_simulated(item.scenario, poll_s=item.poll_s, observe=recorder)
    return baseline, agent, recorder


def measure(case_id: str) -> dict:
    """One case's figures, rebuilt from its id (what a worker process runs)."""
    item = case(*parse_id(case_id))
    return figures(item, *run_case(item))


def figures(item: Case, baseline: Run, agent: Run, recorder: Recorder) -> dict:
    scenario, result = item.scenario, agent.result
    control, sensor = scenario.control, scenario.sensor
    idle = 100 * scenario.machine.idle_power_kw / scenario.machine.rated_power_kw
    span = control.target_load_pct - idle
    steady, _, _ = metrics.steady_rows(agent)
    quality = metrics.control_metrics(agent)
    hold_s = metrics.hold_at_s(agent)
    cut = MOTION["cut"]
    out = {
        "id": item.id,
        "class": item.fault_class,
        "placement": item.placement,
        "toolpath": item.toolpath,
        "overload_kind": item.overload_kind,
        "parts": scenario.parts,
        "poll_s": item.poll_s,
        "noise_pct": sensor.noise_pct,
        "lag_s": sensor.lag_s,
        "dead_time_s": sensor.dead_time_s,
        "default_sensor": (sensor.lag_s, sensor.dead_time_s)
        == (DEFAULT_LAG_S, DEFAULT_DEAD_TIME_S),
        "target_pct": control.target_load_pct,
        "plant_s": agent.stopped_at_s,
        "cutting_s": sum(scenario.machine.step_s for m in agent.trace["motion"] if m == cut),
        "finished": result.finished,
        "ratio": agent.ratio if result.finished else math.inf,
        "peak_pct": result.peak_load_pct,
        "baseline_peak_pct": baseline.result.peak_load_pct,
        "above_limit_s": result.above_limit_s,
        "baseline_above_limit_s": baseline.result.above_limit_s,
        "made_worse": metrics.made_worse(
            result.peak_load_pct, baseline.result.peak_load_pct, control.hard_limit_pct
        ),
        "peak_excess_pct": result.peak_load_pct - baseline.result.peak_load_pct,
        "overshoot_pct": quality.overshoot_pct,
        "rms_pct": quality.steady_rms_pct,
        "bias_pct": quality.bias_pct,
        "steady_samples": quality.steady_samples,
        "held": agent.held,
        "hold_s": hold_s,
        "alarm": result.alarm_at_s is not None,
    }
    out.update(_fault_figures(item, agent, recorder, hold_s, steady, idle, span))
    return out


def _fault_figures(item, agent, recorder, hold_s, steady, idle, span) -> dict:
    """Onset, detection and reaction; for a freeze or link loss, what came after it."""
    kind, result = item.fault_class, agent.result
    onset = None
    if kind == "breakage":
        onset = result.broken_at_s
    elif kind == "overload" and hold_s is not None:
        onset = metrics.overload_onset_s(agent, hold_s, item.poll_s)
    elif kind in ("sensor_freeze", "link_loss"):
        onset = result.fault_at_s
    detected = kind in ("breakage", "overload") and None not in (onset, hold_s)
    detected = detected and hold_s >= onset
    # A hold where the work itself overloaded the spindle (the stock model can engage more than
    # the generator planned for a case without a fault) is protection, not a false hold.
    work_overload = (
        not detected
        and agent.held == "overload"
        and metrics.overload_onset_s(agent, hold_s, item.poll_s, true_load=True) is not None
    )
    out = {
        "onset_s": onset,
        "detected": detected,
        "reaction_s": hold_s - onset if detected else None,
        "false_hold": hold_s is not None and not detected and not work_overload,
        "work_overload": work_overload,
        "cut_share_at_onset": None,
        "idle_before_pct": None,
        "idle_max_after_pct": None,
        "relearned": None,
        "back_within_5": None,
        "raises_over_target": None,
    }
    if kind == "breakage" and onset is not None:
        out["cut_share_at_onset"] = (metrics.load_before(agent, onset) - idle) / span
    if kind in ("sensor_freeze", "link_loss") and onset is not None:
        before, after = recorder.idle_around(onset)
        recovery = onset + item.scenario.events[0].duration_s
        out.update(
            idle_before_pct=before,
            idle_max_after_pct=after,
            relearned=after > before + RELEARNED_SHARE * span,
            back_within_5=metrics.load_near_target(agent, recovery + BACK_AFTER_S, steady),
            raises_over_target=metrics.raises_over_target(agent, onset, item.poll_s),
        )
    return out


def run_family(
    case_ids: list[str],
    jobs: int,
    progress: Callable[[int, int, float], None],
    measure_one: Callable[[str], dict] = measure,
) -> list[dict]:
    """Every case's figures (`measure_one` of its id), in id order, measured in `jobs`
    worker processes."""
    started = time.monotonic()
    records = []
    if jobs <= 1:
        results: Iterable[dict] = map(measure_one, case_ids)
        for record in results:
            records.append(record)
            progress(len(records), len(case_ids), time.monotonic() - started)
    else:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            for record in pool.imap_unordered(measure_one, case_ids, chunksize=4):
                records.append(record)
                progress(len(records), len(case_ids), time.monotonic() - started)
    order = {case_id: i for i, case_id in enumerate(case_ids)}
    return sorted(records, key=lambda r: order[r["id"]])


def default_jobs() -> int:
    return len(os.sched_getaffinity(0))


# -- the criteria -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    name: str
    passed: bool
    measured: str  # the figure, said with what it is over
    worst: tuple[str, ...] = ()  # ids of the cases that failed it or came closest

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {self.measured}"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank; NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def _worst(records: list[dict], key: Callable[[dict], float]) -> tuple[str, ...]:
    return tuple(r["id"] for r in sorted(records, key=key, reverse=True)[:5])


def criteria(records: list[dict], persist_s: float | None = None) -> list[Criterion]:
    """The issue's criteria over the family's figures."""
    cfg = control_config_defaults()
    persist_s = cfg.overload_persist_s if persist_s is None else persist_s
    by = {}
    for record in records:
        by.setdefault(record["class"], []).append(record)
    out = []

    breakage = [r for r in by.get("breakage", []) if r["onset_s"] is not None]
    eligible = [r for r in breakage if r["cut_share_at_onset"] >= 0.3]
    held = sum(r["detected"] for r in eligible)
    share = held / len(eligible) if eligible else 1.0
    out.append(
        Criterion(
            "breakage held where cutting >= 30 % of the target's cutting load",
            share >= 0.99,
            f"{held}/{len(eligible)} = {share:.1%} (need >= 99 %)",
            _worst(eligible, lambda r: (not r["detected"], r["reaction_s"] or 0)),
        )
    )
    reactions = [r["reaction_s"] for r in eligible if r["detected"] and r["default_sensor"]]
    everyone = [r["reaction_s"] for r in breakage if r["detected"]]
    p99 = percentile(reactions, 99)
    out.append(
        Criterion(
            "breakage reaction p99, default sensor",
            not math.isnan(p99) and p99 <= 0.3,
            f"{_ms(p99)} over {len(reactions)} (need <= 300 ms); whole family p50/p95/p99 "
            f"{_ms(percentile(everyone, 50))}/{_ms(percentile(everyone, 95))}/"
            f"{_ms(percentile(everyone, 99))} over {len(everyone)}",
            _worst([r for r in eligible if r["detected"]], lambda r: r["reaction_s"]),
        )
    )
    overload = by.get("overload", [])
    bound = persist_s + 2 * cfg.period_s
    in_time = [r for r in overload if r["detected"] and r["reaction_s"] <= bound + 1e-9]
    out.append(
        Criterion(
            f"overload held within {bound:g} s",
            len(in_time) == len(overload),
            f"{len(in_time)}/{len(overload)}; reaction p50/p99/max "
            f"{_ms(percentile([r['reaction_s'] for r in overload if r['detected']], 50))}/"
            f"{_ms(percentile([r['reaction_s'] for r in overload if r['detected']], 99))}/"
            f"{_ms(max((r['reaction_s'] for r in overload if r['detected']), default=math.nan))}",
            _worst(overload, lambda r: (not r["detected"], r["reaction_s"] or 0)),
        )
    )
    clean = by.get("no_fault", [])
    hours = sum(r["plant_s"] for r in clean) / 3600
    false = [r for r in clean if r["false_hold"]]
    out.append(
        Criterion(
            "no false holds in no-fault cases",
            not false,
            f"{len(false)} in {len(clean)} cases, {hours:.2f} h of plant time "
            f"({sum(r['cutting_s'] for r in clean) / 3600:.2f} h cutting); held where the "
            f"work itself overloaded the spindle (not counted): "
            f"{sum(r['work_overload'] for r in clean)}",
            tuple(r["id"] for r in false[:5]),
        )
    )
    worse = [r for r in clean if r["made_worse"]]
    above = [r["peak_excess_pct"] for r in clean if r["peak_excess_pct"] > 0]
    out.append(
        Criterion(
            "no-fault: peak never taken over the hard limit where fixed 100 % stayed under",
            not worse,
            f"{len(worse)} of {len(clean)}; informational: {len(above)} above the baseline's "
            f"peak at all, excess p50/p95/max {percentile(above, 50):.1f}/"
            f"{percentile(above, 95):.1f}/{max(above, default=math.nan):.1f} % load",
            _worst(clean, lambda r: r["peak_pct"] - max(r["baseline_peak_pct"], 110.0)),
        )
    )
    ratios = [r["ratio"] for r in clean]
    out.append(
        Criterion(
            "no-fault: cycle/oracle p95",
            percentile(ratios, 95) <= 1.05,
            f"{percentile(ratios, 95):.3f} (p50 {percentile(ratios, 50):.3f}, "
            f"{sum(not r['finished'] for r in clean)} unfinished; need <= 1.05)",
            _worst(clean, lambda r: r["ratio"]),
        )
    )
    noisy = [r for r in clean if r["noise_pct"] >= 2.0 and r["steady_samples"] >= 100]
    biases = [abs(r["bias_pct"]) for r in noisy]
    out.append(
        Criterion(
            "no-fault: mean bias within 3 % of target, noise >= 2 %",
            all(b <= 3.0 for b in biases),
            f"{sum(b > 3.0 for b in biases)} of {len(noisy)} outside; |bias| p50/p95/max "
            f"{percentile(biases, 50):.2f}/{percentile(biases, 95):.2f}/"
            f"{max(biases, default=math.nan):.2f} %",
            _worst(noisy, lambda r: abs(r["bias_pct"])),
        )
    )
    overshoots = [r["overshoot_pct"] for r in clean]
    out.append(
        Criterion(
            "no-fault: overshoot at steps p95",
            percentile(overshoots, 95) <= 20.0,
            f"{percentile(overshoots, 95):.1f} % (p50 {percentile(overshoots, 50):.1f}, "
            f"max {max(overshoots, default=math.nan):.1f}; need <= 20 %)",
            _worst(clean, lambda r: r["overshoot_pct"]),
        )
    )
    outages = [
        r for k in ("sensor_freeze", "link_loss") for r in by.get(k, []) if r["onset_s"] is not None
    ]
    relearned = [r for r in outages if r["relearned"]]
    out.append(
        Criterion(
            "freeze/link loss: idle never re-learned from cutting",
            not relearned,
            f"{len(relearned)} of {len(outages)}",
            _worst(outages, lambda r: r["idle_max_after_pct"] - r["idle_before_pct"]),
        )
    )
    judged = [r for r in outages if r["back_within_5"] is not None]
    back = sum(r["back_within_5"] for r in judged)
    out.append(
        Criterion(
            f"freeze/link loss: load within 5 % of target {BACK_AFTER_S:g} s after recovery",
            back == len(judged),
            f"{back}/{len(judged)} (where steady and reachable; {len(outages)} cases)",
            tuple(r["id"] for r in judged if not r["back_within_5"])[:5],
        )
    )
    raised = [r for r in outages if r["raises_over_target"]]
    out.append(
        Criterion(
            "freeze/link loss: no raise while the load read is over target",
            not raised,
            f"{len(raised)} of {len(outages)} cases, "
            f"{sum(r['raises_over_target'] for r in raised)} raises",
            _worst(outages, lambda r: r["raises_over_target"]),
        )
    )
    return out


def control_config_defaults():
    """The agent's control defaults the bench runs with (for the period and persistence)."""
    return control_config(Scenario("defaults", ""))


def _ms(seconds: float) -> str:
    return "-" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:.0f} ms"
