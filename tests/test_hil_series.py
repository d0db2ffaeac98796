"""Series of parts on the HIL plant: a part change between parts (the program ends, the
spindle stops), and parts that differ (`[[vary]]`: stock allowance, hard material in one part
only, an edited program), each seen by the plant and by the oracle alike."""

import dataclasses

import pytest

from hil.oracle import oracle
from hil.plant import MOTION, CuttingPlant
from hil.scenario import ScenarioError, parse_scenario

pytestmark = pytest.mark.timeout(60)

SERIES = """name = "series"
description = "three parts of a two-cut program"
parts = 3

[machine]
part_change_s = 2.0

[[segments]]
kind = "rapid"
length_mm = 20

[[segments]]
kind = "cut"
length_mm = 60
depth_mm = 3
width_mm = 10
feed_mm_min = 1500

[[segments]]
kind = "cut"
length_mm = 60
depth_mm = 5
width_mm = 10
feed_mm_min = 1500
"""

VARIED = (
    SERIES
    + """
[[vary]]
part = 2
allowance_mm = 0.5
hard_zones = [{segment = 2, from_mm = 20, to_mm = 40, kc_factor = 1.5}]

[[vary]]
part = 3
edits = [{segment = 1, length_mm = 80}]
"""
)

STOCK = """name = "stock series"
description = "a facing pass, twice"
parts = 2

[stock]
x = [0, 100]
y = [0, 20]
top_z = 0

[[moves]]
x = -10
y = 10
z = -4
rapid = true

[[moves]]
x = 110
feed_mm_min = 1200

[[vary]]
part = 2
allowance_mm = 0.5
hard_spots = [{x = [40, 60], y = [0, 20], kc_factor = 1.4}]
"""


def run(scenario) -> CuttingPlant:
    plant = CuttingPlant(scenario, record=True)
    while not plant.done:
        plant.advance_to(plant.time_s + 1.0)
    return plant


def by_part(plant: CuttingPlant, column: str, part: int, motion: str = "cut") -> list[float]:
    trace = plant.trace
    return [
        value
        for value, p, m in zip(trace[column], trace["part"], trace["motion"], strict=True)
        if p == part and m == MOTION[motion]
    ]


def test_between_parts_the_program_ends_and_the_spindle_stops_for_the_part_change():
    scenario = parse_scenario(SERIES)
    plant = CuttingPlant(scenario)
    seen = []  # (program_running, spindle_on, block) at each change of any
    while not plant.done:
        plant.advance_to(plant.time_s + 0.01)
        v = plant.values()
        state = (v["program_running"], v["spindle_on"], v["block_number"])
        if not seen or seen[-1][1:] != state:
            seen.append((plant.time_s, *state))
    stops = [(t, block) for t, running, _, block in seen if not running]
    assert len(stops) == 3  # after parts 1 and 2, and the end of the series
    gaps = [later[0] - t for (t, *_), later in zip(seen, seen[1:], strict=False) if not _[0]]
    assert gaps[:2] == pytest.approx([2.0, 2.0], abs=0.011)
    after = [seen[i + 1] for i, (_, running, *_) in enumerate(seen[:-1]) if not running]
    assert all(state[1:] == (1.0, 1.0, 10.0) for state in after)  # from the first block again


def test_the_part_change_is_not_in_the_cycle_time():
    with_change = run(parse_scenario(SERIES)).result
    without = parse_scenario(SERIES.replace("part_change_s = 2.0", "part_change_s = 0"))
    assert with_change.part_times_s == pytest.approx(run(without).result.part_times_s, abs=0.011)
    assert with_change.finished


def test_a_part_without_an_entry_is_the_scenario_itself():
    scenario = parse_scenario(VARIED)
    assert scenario.variant(1) is scenario
    assert scenario.variant(2).segments[1].depth_mm == 3.5  # allowance on every cut
    assert scenario.variant(2).segments[2].depth_mm == 5.5
    assert scenario.variant(2).segments[0].kind == "rapid"
    assert scenario.variant(3).segments[1].length_mm == 80
    assert scenario.variant(3).segments[2] == scenario.segments[2]


def test_the_plant_makes_each_part_as_varied_and_the_others_alike():
    plant = run(parse_scenario(VARIED))
    part1, part2 = by_part(plant, "load_true_pct", 1), by_part(plant, "load_true_pct", 2)
    # the allowance raises every cut; the hard zone is in part 2 only
    assert max(part2) > 1.3 * max(part1)
    times = plant.result.part_times_s
    length = {p: max(by_part(plant, "t_s", p)) - min(by_part(plant, "t_s", p)) for p in (1, 3)}
    assert length[3] > length[1] + 0.5  # 20 mm more of the first cut at about 1500 mm/min
    assert len(times) == 3 and plant.result.finished


def test_the_oracle_of_a_series_is_the_oracle_of_each_part_as_made():
    scenario = parse_scenario(VARIED)
    series = oracle(scenario).part_times_s
    for part in (1, 2, 3):
        alone = dataclasses.replace(scenario.variant(part), parts=1, variants=())
        assert series[part - 1] == pytest.approx(oracle(alone).cycle_time_s, rel=1e-12)
    assert series[1] > series[0] and series[2] > series[0]


def test_a_stock_series_gets_its_allowance_and_hard_spot_in_its_part_only():
    scenario = parse_scenario(STOCK)
    assert scenario.variant(2).stock.top_z == 0.5
    plant = run(scenario)
    part1, part2 = by_part(plant, "load_true_pct", 1), by_part(plant, "load_true_pct", 2)
    assert max(part2) > 1.4 * max(part1)
    assert oracle(scenario).part_times_s[1] > oracle(scenario).part_times_s[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[[vary]]\npart = 4\n", "vary[0].part: must be an integer in 1..3"),
        ("[[vary]]\npart = 2\n[[vary]]\npart = 2\n", "vary[1].part: part 2 is already vary[0]"),
        ("[[vary]]\npart = 2\ncolour = 1\n", "vary[0].colour: unknown key"),
        ("[[vary]]\npart = 2\nallowance_mm = -4\n", "leaves segments[1] a negative depth"),
        (
            "[[vary]]\npart = 2\nedits = [{segment = 0, length_mm = 5}]\n",
            "vary[0].edits[0].segment: segments[0] is a rapid, not a cut",
        ),
        (
            "[[vary]]\npart = 2\nedits = [{segment = 1}]\n",
            "vary[0].edits[0]: changes nothing",
        ),
        (
            "[[vary]]\npart = 2\nedits = [{segment = 1, colour = 2}]\n",
            "vary[0].edits[0].colour: unknown key",
        ),
        (
            "[[vary]]\npart = 2\nhard_zones = [{segment = 1, from_mm = 50, to_mm = 70, "
            "kc_factor = 2}]\n",
            "at most length_mm (60)",
        ),
        (
            "[[vary]]\npart = 2\nhard_spots = [{x = [0, 1], y = [0, 1], kc_factor = 2}]\n",
            "vary[0].hard_spots: goes with a [stock] scenario",
        ),
        ("[machine]\npart_change_s = -1\n", "machine.part_change_s: must not be negative"),
    ],
)
def test_a_mistake_in_a_variation_is_one_line_naming_the_key(extra, message):
    text = SERIES.replace("[machine]\npart_change_s = 2.0\n", "") + extra
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, "series.toml")
    assert message in str(caught.value)
    assert str(caught.value).startswith("series.toml:") and "\n" not in str(caught.value)
