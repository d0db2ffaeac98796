"""The learned preview (control/preview.py and the controller's use of it), on simulated time:
the path checked against the profile's, the axes' lag, what the book learns, and the agent's
own control path on HIL series of parts with and without the preview."""

import array
import dataclasses
import math

import pytest

from edge_agent.control.part import PartRecorder
from edge_agent.control.path import Visit
from edge_agent.control.preview import Preview, ProfileBook, axes_lag
from edge_agent.control.profile import Profile
from hil.bench import control_config, run_adaptive_simulated
from hil.metrics import hold_at_s
from hil.oracle import oracle
from hil.plant import MOTION
from hil.scenario import load_scenario, parse_scenario, scenario_path
from tests.test_hil_series import SERIES

pytestmark = pytest.mark.timeout(120)

NS = 1_000_000_000
KNOWN = (Visit(10, 0.0, 0.0), Visit(20, 0.0, 60.0, 4.0), Visit(30, 60.0, 100.0, 0.5))


def preview():
    return Preview(Profile(1, 1, KNOWN, array.array("d", [20.0] * 160), 2), 0.05)


def test_a_part_going_the_profiles_way_matches_within_a_polls_travel():
    p = preview()
    going = [Visit(10, 0.0, 0.0), Visit(20, 0.0, 63.0, 3.0), Visit(30, 63.0)]
    assert p.check(going, 120.0) == ""  # 63 mm against 60: the rapid's 4 + 3 mm polls
    assert p.k_at(100.0, 0.0) == 20.0 and p.matching


@pytest.mark.parametrize(
    ("going", "s_mm", "why"),
    [
        ([Visit(10, 0.0, 0.0), Visit(25, 0.0)], 5.0, "block 25 where the profile has block 20"),
        (
            [Visit(10, 0.0, 0.0), Visit(20, 0.0, 60.0, 4.0), Visit(30, 60.0, 0.0, 0.5)],
            171.0,
            "block 30 111.0 mm long where the profile's was 100.0 mm",
        ),
        (
            [Visit(10, 0.0, 0.0), Visit(20, 0.0, 45.0, 4.0), Visit(30, 45.0)],
            50.0,
            "block 20 45.0 mm long where the profile's was 60.0 mm",
        ),
        (
            [*KNOWN, Visit(40, 160.0)],
            161.0,
            "block 40 where the profile has the program's end",
        ),
    ],
    ids=["renumbered", "longer", "shorter", "added"],
)
def test_a_part_going_another_way_is_told_once_and_previewed_no_more(going, s_mm, why):
    p = preview()
    assert p.check(going, s_mm) == why
    assert p.check(going, s_mm) == "" and p.k_at(100.0, 0.0) is None


def test_the_hardest_k_is_looked_for_from_a_margin_behind_to_a_margin_past_the_lead():
    k = array.array("d", [0.0] * 50 + [40.0] * 10 + [0.0] * 40)  # a cut from 50 to 60 mm
    p = Preview(Profile(1, 1, KNOWN, k, 2), lead_s=0.1, margin_s=0.05)
    # At 100 mm/s the window runs from 5 mm behind the tool to 15 mm ahead of it.
    assert p.k_at(34.0, 100.0) is None and p.k_at(36.0, 100.0) == 40.0
    assert p.k_at(64.0, 100.0) == 40.0 and p.k_at(66.0, 100.0) is None
    assert p.k_at(40.0, 0.0) is None  # standing still: where it is only


def test_known_air_is_where_the_profile_saw_the_tool_cut_nothing_all_through_the_window():
    k = array.array("d", [0.0] * 50 + [40.0] * 10 + [0.0] * 30 + [math.nan] * 10)
    p = Preview(Profile(1, 1, KNOWN, k, 2), lead_s=0.1, margin_s=0.05)
    assert p.known_air(20.0, 100.0)
    assert not p.known_air(40.0, 100.0)  # a cut within the window
    assert not p.known_air(80.0, 100.0)  # a stretch the profile never saw
    p.matching = False
    assert not p.known_air(20.0, 100.0)  # a part going another way knows nothing


def test_the_axes_lag_is_the_shift_that_lines_the_reported_feed_up_with_the_asked():
    parts = PartRecorder()
    parts.start(0, 1, "cutting")
    asked = [100.0 + (30.0 if 1.0 <= i * 0.02 < 2.0 else 0.0) for i in range(150)]
    for i, a in enumerate(asked):
        reported = asked[max(0, i - 4)]  # 80 ms behind
        parts.reading(i * 20_000_000, 50.0, 70.0, a, 100.0, reported, 1, True)
    assert axes_lag(parts.finish(3 * NS)) == pytest.approx(0.08, abs=0.006)


def series(scenario, parts=5, change_s=2.0):
    machine = dataclasses.replace(scenario.machine, part_change_s=change_s)
    return dataclasses.replace(scenario, parts=parts, machine=machine)


def run(scenario, preview):
    cfg = control_config(
        scenario,
        path_tags=("x_position", "y_position", "z_position"),
        actual_feed_tag="actual_feed",
        programmed_feed_tag="programmed_feed",
        preview=preview,
    )
    book = ProfileBook()
    run, loop = run_adaptive_simulated(scenario, cfg, book=book)
    return run, loop, book


def per_part(run, scenario):
    """(cycle / oracle, true peak load %) of each part made."""
    trace, limits = run.trace, oracle(scenario).part_times_s
    out = []
    for part, seconds in enumerate(run.result.part_times_s, start=1):
        loads = [
            load
            for load, p, m in zip(
                trace["load_true_pct"], trace["part"], trace["motion"], strict=True
            )
            if p == part and m in (MOTION["air"], MOTION["cut"])
        ]
        out.append((seconds / limits[part - 1], max(loads)))
    return out


@pytest.mark.parametrize("name", ["hard_spot", "depth_steps", "demo_part", "stock_facing"])
def test_from_the_second_part_on_the_preview_cuts_the_peak_and_never_the_pace(name):
    scenario = series(load_scenario(scenario_path(name)))
    plain, _, _ = run(scenario, preview=False)
    previewed, loop, book = run(scenario, preview=True)
    without, with_ = per_part(plain, scenario), per_part(previewed, scenario)
    assert previewed.result.finished and not previewed.held
    assert with_[0] == without[0]  # the first part knows nothing yet: the same run
    kinds = [kind for _, (kind, _) in loop.events]
    assert kinds.count("profile_learned") >= 4 and "profile_mismatch" not in kinds
    target = scenario.control.target_load_pct
    for (ratio, peak), (plain_ratio, plain_peak) in zip(with_[2:], without[2:], strict=True):
        # The pace of feedback alone within half a percent (feedback alone is a little
        # faster where it overshoots: over target, it cuts faster than the physical limit),
        # the peak no worse and within 7 % of the target.
        assert ratio <= plain_ratio + 0.005
        assert peak <= plain_peak + 0.5 and peak <= 1.07 * target


def test_where_the_profile_knows_air_ahead_the_feed_runs_at_the_highest_override():
    # The air override is 100 % by default: feedback alone cannot know what an air move
    # leads into; the profile does, part after part.
    scenario = series(load_scenario(scenario_path("long_air_moves")))
    plain, _, _ = run(scenario, preview=False)
    previewed, _, _ = run(scenario, preview=True)
    for (ratio, peak), (plain_ratio, _) in zip(
        per_part(previewed, scenario)[2:], per_part(plain, scenario)[2:], strict=True
    ):
        assert plain_ratio > 1.2 and ratio < 1.03  # the air moves at 150 %, not 100 %
        assert peak <= 1.05 * scenario.control.target_load_pct  # and the entries held


def test_an_edited_block_is_noticed_and_the_part_is_controlled_by_feedback_alone():
    text = SERIES.replace("parts = 3", "parts = 4")
    text += "\n[[vary]]\npart = 3\nedits = [{segment = 1, depth_mm = 4, length_mm = 40}]\n"
    scenario = parse_scenario(text)
    previewed, loop, _ = run(scenario, preview=True)
    mismatches = [d for _, (kind, d) in loop.events if kind == "profile_mismatch"]
    assert len(mismatches) == 1 and "block 30 " in mismatches[0]["why"]
    parts = per_part(previewed, scenario)
    assert parts[2][1] <= parts[0][1] + 1.0  # no worse than the first part's
    assert previewed.result.finished and not previewed.held


def test_a_program_edited_for_good_is_learned_again_from_its_second_part_that_way():
    edited = "".join(
        f"\n[[vary]]\npart = {part}\nedits = [{{segment = 1, length_mm = 80}}]\n"
        for part in (3, 4, 5)
    )
    scenario = parse_scenario(SERIES.replace("parts = 3", "parts = 5") + edited)
    previewed, loop, _ = run(scenario, preview=True)
    events = [(kind, d) for _, (kind, d) in loop.events if kind.startswith("profile")]
    assert [d["why"][:9] for kind, d in events if kind == "profile_mismatch"] == ["block 30 "] * 2
    learned = [d for kind, d in events if kind == "profile_learned"]
    # Parts 1 and 2; part 3 went another way: not learned; part 4 the same way: learned again
    # from itself; part 5 previewed on it, and learned.
    assert [d["parts"] for d in learned] == [1, 2, 1, 2]
    assert "two parts in a row" in learned[2]["relearned"]
    assert previewed.result.finished and not previewed.held


def test_load_lost_where_the_profile_says_the_tool_cuts_is_held_as_a_breakage():
    # No chip, no spike: the spike rule cannot tell this from the tool leaving the material;
    # the profile says the tool cuts there.
    broken = '\n[[events]]\nkind = "breakage"\nat_mm = 110\npart = 3\nspike_factor = 1.0\n'
    scenario = parse_scenario(SERIES.replace("parts = 3", "parts = 4") + broken)
    plain, _, _ = run(scenario, preview=False)
    previewed, loop, _ = run(scenario, preview=True)
    assert plain.held == "" and previewed.held == "breakage"
    detail = next(d for _, (kind, d) in loop.events if kind == "breakage")
    assert detail["cut_pct"] < 0.4 * detail["expected_pct"]
    assert hold_at_s(previewed) - previewed.result.broken_at_s < 0.5


def test_without_preview_the_controller_runs_as_before():
    scenario = series(load_scenario(scenario_path("hard_spot")), parts=2)
    cfg = control_config(scenario, path_tags=("x_position", "y_position", "z_position"))
    bare, _ = run_adaptive_simulated(scenario, control_config(scenario))
    recorded, _ = run_adaptive_simulated(scenario, cfg, book=ProfileBook())
    assert list(bare.trace["override_pct"]) == list(recorded.trace["override_pct"])
