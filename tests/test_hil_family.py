"""The randomized scenario family: its generator, the plant's placed faults, the metrics on
hand-made traces, and a reduced family judged against the criteria (simulated time)."""

from __future__ import annotations

import math
from array import array
from collections import Counter

import pytest

from hil import family_gen as fg
from hil.bench import Run
from hil.family import criteria, run_family
from hil.metrics import (
    control_metrics,
    hold_at_s,
    made_worse,
    overload_onset_s,
    raises_over_target,
)
from hil.plant import MOTION, TRACE_COLUMNS, CuttingPlant, RunResult
from hil.scenario import Event, Scenario, ScenarioError, Segment, Sensor, parse_scenario

MANY = fg.generate(5, 300)


def test_the_same_seed_gives_the_same_cases():
    assert fg.generate(5, 40) == MANY[:40]
    assert fg.generate(6, 5) != MANY[:5]


def test_a_case_rebuilt_alone_from_its_id_equals_the_one_in_the_family():
    item = MANY[123]
    assert item.id == "5.123"
    assert fg.case(*fg.parse_id(item.id)) == item


def test_a_bad_case_id_is_one_line_naming_it():
    with pytest.raises(ValueError, match="^x.1: a case id is SEED.INDEX"):
        fg.parse_id("x.1")


def test_every_class_and_placement_and_both_toolpaths_are_produced():
    classes = Counter(c.fault_class for c in MANY)
    assert set(classes) == set(fg.CLASS_WEIGHTS)
    assert 0.45 < classes["no_fault"] / len(MANY) < 0.65
    for kind in set(fg.CLASS_WEIGHTS) - {"no_fault"}:
        assert {c.placement for c in MANY if c.fault_class == kind} == set(fg.PLACEMENTS)
    assert {c.toolpath for c in MANY} == {"segments", "stock"}
    assert {c.overload_kind for c in MANY if c.fault_class == "overload"} == {"limit", "floor"}


def _within(value: float, span: tuple[float, float]) -> bool:
    return span[0] - 1e-9 <= value <= span[1] + 1e-9


def test_every_range_is_respected():
    for item in MANY:
        s = item.scenario
        assert _within(s.control.target_load_pct, fg.TARGET_PCT)
        assert s.control.hard_limit_pct == fg.HARD_LIMIT_PCT
        assert _within(s.sensor.noise_pct, fg.NOISE_PCT)
        default = (s.sensor.lag_s, s.sensor.dead_time_s) == (Sensor.lag_s, Sensor.dead_time_s)
        assert default or _within(s.sensor.lag_s, fg.LAG_S)
        assert default or _within(s.sensor.dead_time_s, fg.DEAD_TIME_S)
        assert _within(item.poll_s, fg.POLL_S)
        assert round(item.poll_s * 100) == pytest.approx(item.poll_s * 100)
        assert _within(s.parts, fg.PARTS)
        assert _within(s.tool.wear_kc_per_part, fg.WEAR_KC_PER_PART)
        assert _within(s.machine.max_feed_pct, fg.MAX_FEED_PCT)
        for event in s.events:
            assert event.by_position and 1 <= event.part <= s.parts
            if event.kind == "breakage":
                assert _within(event.spike_factor, fg.SPIKE_FACTOR)
                assert _within(event.spike_s, fg.SPIKE_S)
                assert _within(event.residual, fg.RESIDUAL)
            else:
                assert _within(event.duration_s, fg.OUTAGE_S)
        if item.fault_class != "overload":
            zones = [z for seg in s.segments for z in seg.hard_zones]
            zones += s.stock.hard_spots if s.stock else []
            assert all(_within(z.kc_factor, fg.ZONE_KC) for z in zones)


def test_engagement_rises_stay_within_the_step_cap_in_no_fault_segment_cases():
    """x1.6 at most, and never so much that a target-held cut would pass the hard limit."""
    for item in MANY:
        s = item.scenario
        if item.fault_class != "no_fault" or not s.segments:
            continue
        idle = 100 * s.machine.idle_power_kw / s.machine.rated_power_kw
        span = s.control.target_load_pct - idle
        cap = min(fg.STEP_UP[1], (s.control.hard_limit_pct - idle) / span)
        cuts = [seg for seg in s.segments if seg.kind == "cut"]
        for before, after in zip(cuts, cuts[1:], strict=False):
            if before.depth_mm and after.depth_mm and before.feed_mm_min == after.feed_mm_min:
                work = after.depth_mm * after.width_mm / (before.depth_mm * before.width_mm)
                assert work <= cap * 1.000001
                assert idle + work * span <= s.control.hard_limit_pct + 1e-6


def test_cutting_time_adds_up_to_five_hours_of_no_fault_machining_per_thousand_cases():
    from hil.oracle import oracle

    clean = [c for c in MANY[:60] if c.fault_class == "no_fault"]
    mean_s = sum(oracle(c.scenario).cycle_time_s for c in clean) / len(clean)
    assert 0.55 * 1000 * mean_s >= 5 * 3600


# -- faults placed on the path ------------------------------------------------------------------

CUT = Segment("cut", length_mm=300, depth_mm=5, width_mm=10, feed_mm_min=1500)


def _run_plant(event: Event, seconds: float = 8.0) -> tuple[CuttingPlant, list[tuple]]:
    scenario = Scenario(
        "placed", "", segments=(Segment("rapid", length_mm=50), CUT), events=(event,)
    )
    plant = CuttingPlant(scenario, record=True)
    plant.positions = []
    seen = []
    while plant.time_s < seconds:
        plant.advance_to(plant.time_s + 0.01)
        plant.positions.append(plant.values()["x_position"])
        seen.append((plant.time_s, plant.link_down(), plant.sensor.reading))
    return plant, seen


def _time_at_mm(plant: CuttingPlant, mm: float) -> float:
    """The first step at whose end the tool had reached `mm` (segments lie along X)."""
    for t, x in zip(plant.trace["t_s"], plant.positions, strict=True):
        if x >= mm:
            return t
    raise AssertionError("never got there")


def test_a_link_loss_placed_by_position_starts_where_the_tool_reaches_it():
    plant, seen = _run_plant(Event("link_loss", at_mm=120.0, duration_s=1.0))
    onset = plant.result.fault_at_s
    assert onset == pytest.approx(_time_at_mm(plant, 120.0))
    down = [t for t, is_down, _ in seen if is_down]
    assert down[0] == pytest.approx(onset) and down[-1] == pytest.approx(onset + 0.99)


def test_a_sensor_freeze_placed_by_position_holds_the_reading_from_there():
    plant, seen = _run_plant(Event("sensor_freeze", at_mm=150.0, duration_s=0.5))
    onset = plant.result.fault_at_s
    assert onset == pytest.approx(_time_at_mm(plant, 150.0))
    frozen = {reading for t, _, reading in seen if onset + 0.01 <= t < onset + 0.5}
    assert len(frozen) == 1


def test_a_time_placed_link_loss_still_starts_at_start_s():
    plant, seen = _run_plant(Event("link_loss", start_s=2.0, duration_s=0.5))
    assert plant.result.fault_at_s == pytest.approx(2.0)
    assert [t for t, is_down, _ in seen if is_down][0] == pytest.approx(2.0)


GOOD = """name = "x"
description = "y"
parts = 2
[[segments]]
kind = "cut"
length_mm = 100
depth_mm = 2
width_mm = 5
feed_mm_min = 1000
"""


def test_the_toml_schema_places_a_freeze_on_the_path():
    scenario = parse_scenario(
        GOOD + '[[events]]\nkind = "sensor_freeze"\nat_mm = 40\npart = 2\nduration_s = 1\n'
    )
    assert scenario.events[0] == Event("sensor_freeze", at_mm=40.0, part=2, duration_s=1.0)


@pytest.mark.parametrize(
    "extra, message",
    [
        ("start_s = 1\nat_mm = 3\n", "events\\[0\\]: link_loss needs either start_s or at_mm"),
        ("", "events\\[0\\]: link_loss needs either start_s or at_mm"),
        ("start_s = 1\npart = 2\n", "events\\[0\\].part: goes with at_mm, not start_s"),
        ("at_mm = 3\npart = 3\n", "events\\[0\\].part"),
    ],
)
def test_a_badly_placed_link_loss_is_one_line(extra, message):
    text = GOOD + '[[events]]\nkind = "link_loss"\nduration_s = 1\n' + extra
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(text)


# -- the metrics, on hand-made traces -----------------------------------------------------------


def _run(rows: list[dict], scenario: Scenario | None = None, result: RunResult | None = None):
    """A run whose trace is `rows` (missing columns 0), 10 ms apart from t = 0.01."""
    trace = {name: array("d") for name in TRACE_COLUMNS}
    for i, row in enumerate(rows):
        for name in TRACE_COLUMNS:
            trace[name].append(row.get(name, 0.0) if name != "t_s" else (i + 1) / 100)
    scenario = scenario or Scenario("hand-made", "", segments=(CUT,))
    return Run(scenario, "agent", result or RunResult(), 1.0, trace, len(rows) / 100)


def test_the_hold_is_the_first_step_the_plant_got_override_zero():
    run = _run([{"override_pct": 100.0}] * 30 + [{"override_pct": 0.0}] * 5)
    assert hold_at_s(run) == pytest.approx(0.31)
    assert hold_at_s(_run([{"override_pct": 100.0}] * 5)) is None


def test_overload_onset_is_where_the_condition_held_in_every_reading_up_to_the_hold():
    over = {"load_pct": 120.0, "override_pct": 80.0}
    dip = {"load_pct": 100.0, "override_pct": 80.0}
    at_floor = {"load_pct": 80.0, "override_pct": 50.0}  # target 70, idle 8.2: over 76.2
    rows = [dip] * 10 + [over] * 20 + [dip] + [over] * 30 + [at_floor] * 40 + [{}]
    run = _run(rows)
    assert overload_onset_s(run, hold_s=1.02) == pytest.approx(0.32)
    # read every 50 ms: the dip at 0.31 s falls between readings, the onset is earlier
    assert overload_onset_s(run, hold_s=1.02, poll_s=0.05) == pytest.approx(0.15)


def _steady_cut(load: float, n: int = 300) -> dict:
    """A row of a steady cut whose ideal override (about 100 %) is within reach."""
    return {
        "load_pct": load,
        "motion": MOTION["cut"],
        "programmed_mm_min": 1500.0,
        "area_mm2": 50.0,
        "kc": 1700.0,
        "override_pct": 100.0,
    }


def test_bias_and_rms_are_of_the_load_read_minus_target_over_steady_samples_only():
    # 0.99 s settling (not steady), then 2 s at 63 and 77 alternating: bias 0, RMS 10 %
    rows = [_steady_cut(90.0)] * 99 + [_steady_cut(63.0), _steady_cut(77.0)] * 100
    quality = control_metrics(_run(rows))
    assert quality.bias_pct == pytest.approx(0.0, abs=1e-9)
    assert quality.steady_rms_pct == pytest.approx(10.0)
    low = control_metrics(_run([_steady_cut(90.0)] * 99 + [_steady_cut(66.5)] * 200))
    assert low.bias_pct == pytest.approx(-5.0)
    assert low.steady_samples == 200


def test_samples_after_a_breakage_are_not_steady():
    rows = [_steady_cut(70.0)] * 200 + [_steady_cut(10.0)] * 200
    quality = control_metrics(_run(rows, result=RunResult(broken_at_s=2.005)))
    assert quality.bias_pct == pytest.approx(0.0)


def test_made_worse_only_where_the_baseline_stayed_under_the_hard_limit():
    assert made_worse(agent_peak=115.0, baseline_peak=100.0, hard_limit=110.0)
    assert not made_worse(agent_peak=105.0, baseline_peak=90.0, hard_limit=110.0)
    assert not made_worse(agent_peak=130.0, baseline_peak=120.0, hard_limit=110.0)


def test_a_raise_counts_only_when_it_answered_a_load_read_over_target_plus_two_sigmas():
    sensor = Scenario("n", "", segments=(CUT,), sensor=Sensor(noise_pct=1.0))
    rows = [
        {"load_pct": 80.0, "override_pct": 100.0},
        {"load_pct": 71.0, "override_pct": 101.0},  # raise answering 80 (over 72): counts
        {"load_pct": 71.0, "override_pct": 102.0},  # raise answering 71 (under 72): does not
        {"load_pct": 90.0, "override_pct": 102.0},
        {"load_pct": 90.0, "override_pct": 95.0},  # a cut: does not
        {"load_pct": 90.0, "override_pct": 96.0},  # raise answering 90: counts
    ]
    assert raises_over_target(_run(rows, sensor), from_s=0.0) == 2
    assert raises_over_target(_run(rows, sensor), from_s=0.03) == 1


# -- the reduced family, judged -----------------------------------------------------------------


@pytest.fixture(scope="module")
def reduced():
    """100 cases of seed 3 (the 1,000-case figures are seed 1's, `make hil-family`)."""
    records = run_family([f"3.{i}" for i in range(100)], jobs=2, progress=lambda *a: None)
    return records, {v.name: v for v in criteria(records)}


#: The issue's criteria this release meets on these 100 cases (seed 1's 1,000 are in
#: docs/adaptive-control.md).
MET = (
    "no-fault: mean bias within 3 % of target, noise >= 2 %",
    "freeze/link loss: idle never re-learned from cutting",
    "freeze/link loss: no raise while the load read is over target",
)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", MET)
def test_the_reduced_family_meets_the_criterion(reduced, name):
    _, verdicts = reduced
    assert verdicts[name].passed, verdicts[name].line()


def _share(records, cls, key):
    group = [r for r in records if r["class"] == cls]
    return sum(bool(key(r)) for r in group) / len(group)


#: Criteria not met yet (issue 17 stays open: docs/adaptive-control.md says what is missing
#: and why). Each is held at what this release measured on these 100 cases, so that none
#: gets worse unnoticed; the issue's own bound is in the family report.
NOT_YET = {
    "breakage held": lambda rs: (
        _share(
            [r for r in rs if r["class"] != "breakage" or r["cut_share_at_onset"] >= 0.3],
            "breakage",
            lambda r: r["detected"],
        )
        >= 0.2
    ),
    "false holds": lambda rs: not any(r["false_hold"] for r in rs if r["class"] == "no_fault"),
    "made worse": lambda rs: sum(r["made_worse"] for r in rs if r["class"] == "no_fault") <= 3,
    "overload held in time": lambda rs: (
        _share(rs, "overload", lambda r: r["detected"] and r["reaction_s"] <= 1.02 + 1e-9) >= 0.95
    ),
    "recovery within 5 %": lambda rs: (
        _share(
            [r for r in rs if r["back_within_5"] is not None],
            "link_loss",
            lambda r: r["back_within_5"],
        )
        >= 0.8
    ),
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", NOT_YET)
def test_the_reduced_family_is_no_worse_than_this_release_measured(reduced, name):
    records, _ = reduced
    assert NOT_YET[name](records)


def test_percentile_is_nearest_rank():
    from hil.family import percentile

    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0
    assert percentile([1.0] * 99 + [9.0], 99) == 1.0
    assert math.isnan(percentile([], 50))
