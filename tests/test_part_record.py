"""The part record (control/path.py, control/part.py): the path along a program from the block
number and the axis positions, and one record per program run, on simulated time: by hand and
through the agent's own control path on HIL series."""

import dataclasses
import math

import pytest

from edge_agent.control.part import MAX_READINGS, PartRecorder
from edge_agent.control.path import PathTracker, Visit, anchored, same_path
from edge_agent.samples import Sample
from hil.bench import control_config, run_adaptive_simulated
from hil.scenario import load_scenario, parse_scenario, scenario_path
from tests.test_hil_series import SERIES

pytestmark = pytest.mark.timeout(120)

PATH_TAGS = ("x_position", "y_position", "z_position")
NS = 1_000_000_000


def test_the_arc_length_sums_the_steps_between_polled_positions():
    path = PathTracker()
    corners = [(0, 0, 0), (3, 4, 0), (3, 4, 12), (0, 0, 0)]
    for block, position in enumerate(corners):
        path.observe(10 * (block + 1), position)
    assert path.s_mm == pytest.approx(5 + 12 + 13)
    visits = path.finish()
    assert [v.block for v in visits] == [10, 20, 30, 40]
    assert [v.length_mm for v in visits] == pytest.approx([5, 12, 13, 0])  # a visit ends
    assert [v.start_mm for v in visits] == pytest.approx([0, 5, 17, 30])  # where the next begins


def test_positions_without_blocks_and_blocks_without_positions_are_followed_alike():
    path = PathTracker()
    path.observe(None, (0.0, 0.0))
    path.observe(None, (1.0, 0.0))
    assert path.s_mm == 1.0 and path.finish() == ()
    blocks = PathTracker()
    for block in (10, 10, 20, 10):
        blocks.observe(block, None)
    assert [v.block for v in blocks.finish()] == [10, 20, 10]  # a block visited twice


def test_the_same_path_allows_a_polls_travel_and_nothing_more():
    a = (Visit(10, 0, 100.0), Visit(20, 100.0, 50.0))
    assert same_path(a, (Visit(10, 0, 101.5), Visit(20, 101.5, 49.0)))
    assert not same_path(a, (Visit(10, 0, 100.0), Visit(20, 100.0, 60.0)))  # an edited block
    assert not same_path(a, (*a, Visit(30, 150.0, 1.0)))  # a block added
    assert not same_path(a, (Visit(10, 0, 100.0), Visit(30, 100.0, 50.0)))  # renumbered


def test_a_block_seen_at_one_poll_may_be_off_by_the_step_out_of_it():
    # A program's first rapid, polled every 100 ms at 200 mm/s: seen at one poll only.
    def part(step_out_mm):
        path = PathTracker()
        path.observe(10, (0.0, 0.0, 0.0))
        path.observe(20, (step_out_mm, 0.0, 0.0))  # the rapid's end lies on this step
        path.observe(20, (60.0, 0.0, 0.0))
        return path.finish()

    early, late = part(4.0), part(19.0)
    assert (early[0].length_mm, early[0].step_mm) == (4.0, 4.0)
    assert same_path(early, late)


def test_a_place_is_anchored_to_its_blocks_start_so_the_arc_lengths_drift_does_not_add_up():
    # Two parts the same way; the second's polls cut a rapid's corner 4 mm shorter.
    first = (Visit(10, 0.0, 40.0, 16.0), Visit(20, 40.0, 100.0, 1.0), Visit(30, 140.0, 50.0))
    second = (Visit(10, 0.0, 36.0, 16.0), Visit(20, 36.0, 100.0, 1.0), Visit(30, 136.0, 50.0))
    assert anchored(second, first, 86.0) == 90.0  # 50 mm into block 20 in both
    assert anchored(second, first, 150.0) == 154.0
    assert anchored(second, first, 10.0) == 10.0  # the first block starts at 0 in both
    assert anchored(second, first[:1], 150.0) == 150.0  # past the anchor's blocks: as it is


def test_a_record_counts_each_state_and_keeps_the_first_reason_it_was_rejected():
    parts = PartRecorder()
    parts.start(1 * NS, 1001, "air")
    parts.move(10, (0.0, 0.0, 0.0))
    parts.reading(1 * NS, 5.0, 70.0, 100.0, 100.0, 100.0, 3, False)
    parts.state(2 * NS, "cutting")
    parts.move(20, (10.0, 0.0, 0.0))
    parts.reading(2 * NS, 70.0, 65.0, 120.0, 100.0, 120.0, 3, True)
    parts.reject("fault: spindle_load stale")
    parts.reject("hold: overload")
    record = parts.finish(5 * NS)
    assert record.cycle_s == 4.0 and record.path_mm == 10.0
    assert record.state_s == {"air": 1.0, "cutting": 3.0}
    assert record.rejected == "fault: spindle_load stale"
    assert list(record.readings["s_mm"]) == [0.0, 10.0]
    assert list(record.readings["target_pct"]) == [70.0, 65.0]
    assert record.summary()["tools"] == [3] and record.summary()["blocks"] == 2
    assert parts.finish(6 * NS) is None  # closed once


def test_a_record_too_long_to_learn_from_stops_growing_and_is_rejected(monkeypatch):
    monkeypatch.setattr("edge_agent.control.part.MAX_READINGS", 3)
    parts = PartRecorder()
    parts.start(0, 1, "air")
    for i in range(5):
        parts.reading(i, 1.0, 70.0, 100.0, 100.0, 100.0, 1, False)
    record = parts.finish(10)
    assert len(record.readings["t_s"]) == 3 and record.rejected.startswith("longer than")
    assert MAX_READINGS == 200_000


def records_of(scenario, **change):
    """Run the agent's control path on the series; every part record, the last one closed by
    the program's end that the bench's loop stops short of seeing."""
    cfg = control_config(scenario, **({"path_tags": PATH_TAGS} | change))
    run, loop = run_adaptive_simulated(scenario, cfg)
    controller = loop.controller
    end_ns = round(run.stopped_at_s * NS) + NS
    end = controller.update(end_ns, [(end_ns, Sample("program_running", end_ns, 0.0))])
    events = [e for _, e in loop.events] + end.events
    parts = [d for kind, d in events if kind == "part"]
    return run, parts, controller


def test_each_part_of_a_series_is_one_record_along_the_programs_path():
    scenario = parse_scenario(SERIES)
    run, parts, controller = records_of(scenario)
    assert run.result.finished and len(parts) == 3
    path_mm = sum(seg.length_mm for seg in scenario.segments)
    for summary, part_s in zip(parts, run.result.part_times_s, strict=True):
        assert summary["path_mm"] == pytest.approx(path_mm, abs=1.0)  # a poll's travel
        assert summary["cycle_s"] == pytest.approx(part_s, abs=0.05)
        assert summary["blocks"] == 4 and summary["rejected"] == ""
        assert summary["program"] == 1001 and summary["tools"] == [1]
        assert summary["state_s"]["cutting"] > 2.0
    assert controller.last_part.readings["s_mm"][-1] == pytest.approx(path_mm, abs=1.0)
    assert set(controller.last_part.readings["target_pct"]) == {controller.target_pct()}


def test_an_edited_block_shows_as_another_path():
    text = SERIES + "\n[[vary]]\npart = 3\nedits = [{segment = 1, length_mm = 80}]\n"
    scenario = parse_scenario(text)
    visits = []

    def closed(now_ns, loop):
        record = loop.controller.last_part
        if record is not None and (not visits or visits[-1] is not record.visits):
            visits.append(record.visits)

    cfg = control_config(scenario, path_tags=PATH_TAGS)
    run_adaptive_simulated(scenario, cfg, observe=closed)
    assert len(visits) == 2  # parts 1 and 2 closed while the bench ran
    assert same_path(visits[0], visits[1])
    _, _, controller = records_of(scenario)
    assert not same_path(visits[0], controller.last_part.visits)  # part 3: 20 mm longer


@pytest.mark.parametrize(
    ("name", "why"),
    [("stale_sensor", "fault: spindle_load frozen"), ("breakage", "hold: breakage")],
)
def test_a_part_with_a_fault_or_a_hold_is_rejected_with_its_reason(name, why):
    scenario = load_scenario(scenario_path(name))
    _, parts, _ = records_of(scenario)
    assert parts and parts[-1]["rejected"].startswith(why)


def test_without_path_tags_the_record_knows_the_blocks_and_not_the_path():
    scenario = dataclasses.replace(parse_scenario(SERIES), parts=1)
    _, parts, _ = records_of(scenario, path_tags=())
    assert parts[0]["blocks"] == 4 and parts[0]["path_mm"] == 0.0
    assert not math.isnan(parts[0]["cycle_s"])
