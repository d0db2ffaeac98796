"""The learned profile (control/profile.py): what a part's record says of the specific cutting
load along the path, and how part after part teaches it, on synthetic records whose truth is
known exactly."""

import array
import math

import pytest

from edge_agent.control.delay import fit_step, spindle_start
from edge_agent.control.part import PartRecorder
from edge_agent.control.path import Visit
from edge_agent.control.profile import Profile, Rule, learn, measure

pytestmark = pytest.mark.timeout(30)

NS = 1_000_000_000
DT_S = 0.02  # a 50 Hz poll
SPEED_MM_S = 10.0  # at 100 % feed
IDLE = 5.0
DELAY_S = 0.2  # ten polls: the reading shows the load of 0.2 s before
TOOL = 3


def step_k(s_mm: float) -> float:
    """The truth: 20 % a 100 % feed, 35 % from 40 mm to 60 mm (whole bins: exact)."""
    return 35.0 if 40.0 <= s_mm < 60.0 else 20.0


def record_of(
    k=step_k, override=lambda t: 100.0, length_mm=100.0, tool=TOOL, reject="", drift_mm=0.0
):
    """One part: the tool moving along a straight path at the override's feed, its load the
    truth at the place and feed of DELAY_S before, as a lagging sensor would show it."""
    parts = PartRecorder()
    parts.start(0, 1001, "cutting")
    t, s, history = 0.0, 0.0, []  # (t, s, feed %)
    while s < length_mm:
        feed = override(t)
        history.append((t, s, feed))
        then = [h for h in history if h[0] <= t - DELAY_S + 1e-9]
        load = IDLE + (k(then[-1][1]) * then[-1][2] / 100 if then else 0.0)
        # `drift_mm`: the positions polled say the tool went that much further by block 20
        parts.move(10 if s < 50 else 20, (s + (drift_mm if s >= 50 else 0.0), 0.0, 0.0))
        parts.reading(round(t * NS), load, 70.0, feed, 100.0, feed, tool, s > 0)
        t += DT_S
        s += SPEED_MM_S * feed / 100 * DT_S
    if reject:
        parts.reject(reject)
    return parts.finish(round(t * NS))


def test_a_record_says_the_specific_load_where_the_tool_was_at_the_feed_it_ran_at():
    boosted = record_of(override=lambda t: 100.0 if t < 3 else 140.0)
    k = measure(boosted, TOOL, IDLE, DELAY_S)
    assert len(k) == 100
    filled = [b for b in range(100) if not math.isnan(k[b])]
    assert len(filled) >= 95  # every bin the tool passed with readings after the delay
    for b in filled:
        assert k[b] == pytest.approx(step_k(b + 0.5), abs=1e-9), b


def test_the_wrong_delay_smears_the_step_and_another_tools_readings_say_nothing():
    record = record_of()
    late = measure(record, TOOL, IDLE, 0.0)  # not put back: the step shows 2 mm late
    assert late[40] == pytest.approx(20.0) and late[42] == pytest.approx(35.0)
    assert all(math.isnan(x) for x in measure(record, TOOL + 1, IDLE, DELAY_S))


def test_a_later_part_whose_arc_length_drifted_is_learned_where_the_profile_has_it():
    profile, _ = learn(
        None, record_of(k=lambda s: 35.0 if 60.0 <= s < 80.0 else 20.0), TOOL, IDLE, DELAY_S
    )
    drifted = record_of(k=lambda s: 35.0 if 60.0 <= s < 80.0 else 20.0, drift_mm=4.0)
    assert drifted.visits[1].start_mm > profile.visits[1].start_mm + 3.0
    profile, why = learn(profile, drifted, TOOL, IDLE, DELAY_S)
    assert why == "" and profile.parts == 2
    assert profile.at(59.5) == pytest.approx(20.0) and profile.at(60.5) == pytest.approx(35.0)
    assert profile.at(79.5) == pytest.approx(35.0) and profile.at(80.5) == pytest.approx(20.0)


def test_a_held_feed_teaches_nothing():
    held = record_of(override=lambda t: 0.0 if 2.0 <= t < 3.0 else 100.0)
    k = measure(held, TOOL, IDLE, DELAY_S)
    assert all(math.isnan(x) or x == pytest.approx(step_k(b + 0.5)) for b, x in enumerate(k))


def test_the_first_part_sets_the_profile_and_later_ones_converge_at_the_gain():
    rule = Rule(gain=0.5)
    profile, why = learn(None, record_of(), TOOL, IDLE, DELAY_S, rule)
    assert why == "" and profile.parts == 1 and profile.at(50.5) == pytest.approx(35.0)

    def worn(s):  # a tool that now cuts 10 % harder
        return 1.1 * step_k(s)

    errors = []
    for _ in range(6):
        profile, why = learn(profile, record_of(k=worn), TOOL, IDLE, DELAY_S, rule)
        errors.append(max(abs(profile.k[b] - worn(b + 0.5)) for b in range(95)))
    assert why == "" and profile.parts == 7
    for n, error in enumerate(errors, start=1):
        assert error <= 3.5 * 0.5**n + 1e-9  # 10 % of 35 at first, halved each part


def test_one_part_moves_the_profile_by_at_most_its_clip():
    rule = Rule(gain=0.5, rise=0.5, fall=0.2)
    profile, _ = learn(None, record_of(), TOOL, IDLE, DELAY_S, rule)

    def spot(s):  # a hard spot in this part only
        return 2.0 * step_k(s) if 70 <= s < 75 else step_k(s)

    after, _ = learn(profile, record_of(k=spot), TOOL, IDLE, DELAY_S, rule)
    assert after.at(72.5) == pytest.approx(20.0 * (1 + 0.5 * 0.5))  # not 40: a one-off

    def air(s):  # stock missing from this part
        return 0.0 if 40 <= s < 60 else step_k(s)

    after, _ = learn(profile, record_of(k=air), TOOL, IDLE, DELAY_S, rule)
    assert after.at(50.5) == pytest.approx(35.0 * (1 - 0.5 * 0.2))  # believed slowly
    assert after.at(20.5) == pytest.approx(20.0)


def test_a_rejected_part_or_another_path_teaches_nothing_and_says_why():
    profile, _ = learn(None, record_of(), TOOL, IDLE, DELAY_S)
    same, why = learn(profile, record_of(reject="hold: breakage"), TOOL, IDLE, DELAY_S)
    assert same is profile and why == "part rejected (hold: breakage)"
    longer = record_of(length_mm=120.0)
    same, why = learn(profile, longer, TOOL, IDLE, DELAY_S)
    assert same is profile and "another way" in why
    none, why = learn(None, record_of(reject="fault: x"), TOOL, IDLE, DELAY_S)
    assert none is None and why.startswith("part rejected")


def test_outside_the_path_the_profile_knows_nothing():
    profile = Profile(1, 1, (Visit(10, 0.0, 2.0),), k=array.array("d", [1.0, 2.0]))
    assert profile.at(1.5) == 2.0
    assert math.isnan(profile.at(-0.5)) and math.isnan(profile.at(2.0))


def test_the_agents_own_records_of_a_hil_series_teach_the_plants_true_specific_load():
    """Parts made by the agent's control path on the plant (each at the overrides the PI law
    chose) teach, in the middle of each cut, the load the plant takes there at 100 % feed:
    with the delay fitted to each part's spindle start and the feed the controller reports,
    nothing of the plant's own figures given."""
    from hil.bench import control_config, run_adaptive_simulated
    from hil.physics import MATERIALS
    from hil.scenario import parse_scenario
    from tests.test_hil_series import SERIES

    scenario = parse_scenario(SERIES)
    cfg = control_config(
        scenario,
        path_tags=("x_position", "y_position", "z_position"),
        actual_feed_tag="actual_feed",
        programmed_feed_tag="programmed_feed",
    )
    records = []

    def keep(now_ns, loop):
        record = loop.controller.last_part
        if record is not None and (not records or records[-1][0] is not record):
            records.append((record, loop.controller.idle_pct))

    run_adaptive_simulated(scenario, cfg, observe=keep)
    assert len(records) == 3  # every part, the last one closed as the plant finished
    sensor = scenario.sensor
    profile = None
    for record, idle in records:
        fit = fit_step(*spindle_start(record))
        assert fit.mean_s == pytest.approx(sensor.dead_time_s + sensor.lag_s, abs=0.03)
        profile, why = learn(profile, record, 1, idle, fit.dead_s, lag_s=fit.lag_s)
        assert why == ""
    m, x = scenario.machine, 0.0
    for seg in scenario.segments:
        if seg.kind == "cut":
            kw = MATERIALS[seg.material] * seg.depth_mm * seg.width_mm * seg.feed_mm_min
            true_k = 100 * kw / (60e6 * m.efficiency) / m.rated_power_kw
            middle = [profile.at(s) for s in range(int(x) + 15, int(x + seg.length_mm) - 15)]
            # within 4 %: the 3 mm median keeps a short cut's height, and some of the noise
            # that undoing the lag amplifies (a 0.3 % reading's noise, here)
            assert all(v == pytest.approx(true_k, rel=0.04) for v in middle), (x, true_k)
        x += seg.length_mm
