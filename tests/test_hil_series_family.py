"""The randomized series family (issue 19): its generator, a few series run with and without
the learned preview on simulated time, and the criteria on hand-made figures."""

from __future__ import annotations

import pytest

from hil import series_gen as sg
from hil.family_gen import HARD_LIMIT_PCT
from hil.oracle import oracle
from hil.series_family import criteria, measure

pytestmark = pytest.mark.timeout(300)

MANY = sg.generate(5, 200)


def test_the_same_seed_gives_the_same_series_and_one_rebuilds_alone():
    assert sg.generate(5, 20) == MANY[:20]
    assert sg.series(*sg.parse_id("5.123")) == MANY[123]
    assert sg.generate(6, 5) != MANY[:5]


def test_each_series_varies_its_parts_within_the_ranges():
    for item in MANY:
        s = item.scenario
        assert sg.PARTS[0] <= s.parts <= sg.PARTS[1]
        assert sg.PART_CHANGE_S[0] <= s.machine.part_change_s <= sg.PART_CHANGE_S[1]
        assert s.tool.wear_kc_per_part <= sg.WEAR_KC_PER_PART[1]
        assert all(2 <= v.part <= s.parts for v in s.variants)  # the first part: the program
        assert len(oracle(s).part_times_s) == s.parts  # every part can be made
        if item.fault_part:
            assert item.fault_class == "breakage" and 2 <= item.fault_part <= s.parts
            assert s.events[0].part == item.fault_part
        zoned = [v for v in s.variants if v.hard_zones or v.hard_spots]
        if item.new_zone_part:
            assert 3 <= item.new_zone_part <= s.parts
            assert [v.part for v in zoned] == [item.new_zone_part]
            for _, zone in zoned[0].hard_zones:
                assert zone.kc_factor <= sg.NEW_ZONE_KC[1]
        else:
            assert not zoned
        edited = [v.part for v in s.variants if v.edits]
        if item.edit_part:  # an edit stays in the program from its part on
            assert edited == list(range(item.edit_part, s.parts + 1))
            assert item.toolpath == "segments" and not item.fault_part
        else:
            assert not edited


def test_the_family_holds_every_kind_of_variation():
    assert 0.15 < sum(i.fault_class == "breakage" for i in MANY) / len(MANY) < 0.35
    assert sum(bool(i.new_zone_part) for i in MANY) >= 20
    assert sum(bool(i.edit_part) for i in MANY) >= 10
    assert {i.toolpath for i in MANY} == {"segments", "stock"}
    allowances = [v.allowance_mm for i in MANY for v in i.scenario.variants if v.allowance_mm]
    assert min(allowances) < 0 < max(allowances)


def test_a_series_is_measured_part_by_part_with_the_preview_and_without():
    quiet = (i for i in MANY if i.scenario.sensor.noise_pct < 0.5 and not i.edit_part)
    item = next(i for i in quiet if i.fault_class == "no_fault" and not i.new_zone_part)
    record = measure(item.id)
    parts = item.scenario.parts
    assert len(record["preview"]) == len(record["feedback"]) == parts
    assert record["preview"][0] | {"previewed": False} == record["feedback"][0] | {
        "previewed": False
    }  # nothing learned yet: the same run
    assert record["learned"] == parts - 1  # each part teaches, the last one after the run
    assert [p["previewed"] for p in record["preview"]] == [False] + [True] * (parts - 1)
    assert not record["preview_false_hold"] and not record["feedback_false_hold"]
    for p in record["preview"]:
        assert p["ratio"] > 0.9 and p["peak_pct"] < HARD_LIMIT_PCT


def _part(part, overshoot=1.0, ratio=1.01, peak=80.0, unlearnable=""):
    return {
        "part": part,
        "overshoot_pct": overshoot,
        "ratio": ratio,
        "peak_pct": peak,
        "steps": 2,
        "unlearnable": unlearnable,
    }


def _record(series_id, preview, feedback=None, **extra):
    record = {
        "id": series_id,
        "class": "no_fault",
        "parts": len(preview),
        "hard_limit_pct": HARD_LIMIT_PCT,
        "new_zone_part": 0,
        "edit_part": 0,
        "mismatch_parts": [],
        "preview": preview,
        "feedback": feedback or preview,
        "preview_plant_s": 3600.0,
        "preview_false_hold": False,
    }
    for run in ("preview", "feedback"):
        record |= {f"{run}_onset_s": None, f"{run}_detected": False, f"{run}_reaction_s": None}
        record[f"{run}_cut_share_at_onset"] = None
    return record | extra


def _verdicts(records):
    return {v.name.split(",")[0].split(":")[0]: v for v in criteria(records)}


def test_the_criteria_judge_parts_from_the_third_on_and_spare_what_no_profile_knows():
    good = [_part(1, 30.0), _part(2, 20.0), *(_part(p) for p in (3, 4, 5))]
    unlearnable = [*good[:3], _part(4, 40.0, unlearnable="new hard zone"), _part(5, 9.0)]
    spared = _record("1.9", unlearnable, new_zone_part=4)
    verdicts = _verdicts([_record(f"1.{i}", good) for i in range(5)] + [spared])
    assert verdicts["overshoot at steps p95"].passed  # part 4 new, part 5 after it: spared
    assert verdicts["cycle/oracle p95"].passed
    assert verdicts["no false holds with the profile"].passed
    slow = [*good[:4], _part(5, ratio=1.2, peak=115.0)]
    verdicts = _verdicts([_record(f"1.{i}", slow) for i in range(5)])
    assert not verdicts["cycle/oracle p95"].passed
    assert not verdicts["true peak never above the hard limit"].passed
    assert verdicts["true peak never above the hard limit"].worst[0] == "1.0 part 5"


def test_an_edit_must_be_found_in_its_part_and_a_first_part_no_worse_than_feedback():
    parts = [_part(p, 10.0 if p == 1 else 1.0) for p in range(1, 6)]
    found = _record("1.0", parts, edit_part=3, mismatch_parts=[3])
    missed = _record("1.1", parts, edit_part=3, mismatch_parts=[])
    assert _verdicts([found])["an edited program"].passed
    assert not _verdicts([found, missed])["an edited program"].passed
    worse = _record("1.2", [_part(1, peak=90.0), *parts[1:]], feedback=parts)
    assert not _verdicts([worse])["the first part no worse than without the profile"].passed
