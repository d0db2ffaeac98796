"""Scenario files: every shipped one loads; every mistake is one line naming file and key."""

import pytest

from hil.scenario import (
    ScenarioError,
    load_scenario,
    parse_scenario,
    scenario_path,
    shipped_scenarios,
)

pytestmark = pytest.mark.timeout(60)

SHIPPED = {
    "steady_cut",
    "depth_steps",
    "width_steps",
    "hard_spot",
    "air_cut_entry",
    "long_air_moves",
    "tool_wear",
    "breakage",
    "overload",
    "stale_sensor",
    "link_loss",
    "link_loss_watchdog",
    "stock_facing",
    "demo_part",
}

GOOD = """name = "ok"
description = "fine"

[[segments]]
kind = "cut"
length_mm = 100
depth_mm = 4
width_mm = 10
feed_mm_min = 1500
"""


def test_every_scenario_the_issue_names_is_shipped_and_loads():
    assert {p.stem for p in shipped_scenarios()} == SHIPPED
    for path in shipped_scenarios():
        scenario = load_scenario(path)
        assert scenario.name and scenario.description
        assert bool(scenario.segments) != bool(scenario.moves)


def test_the_override_watchdog_is_off_unless_set():
    assert parse_scenario(GOOD).machine.override_watchdog_s == 0
    on = parse_scenario(GOOD + "[machine]\noverride_watchdog_s = 1\n")
    assert on.machine.override_watchdog_s == 1.0


def test_moves_keep_modal_coordinates_and_feed():
    scenario = load_scenario(scenario_path("stock_facing"))
    first, second = scenario.moves[0], scenario.moves[1]
    assert (first.x, first.y, first.z, first.rapid) == (-10, 6, -3, True)
    assert (second.x, second.y, second.z, second.feed_mm_min) == (90, 6, -3, 1500)
    assert scenario.moves[5].feed_mm_min == 1500  # programmed once, modal after


def error_of(text, source="s.toml"):
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, source)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("bogus = 1\n" + GOOD, "s.toml:1: bogus: unknown key"),
        (
            GOOD.replace("depth_mm = 4", 'depth_mm = "deep"'),
            "s.toml:7: segments[0].depth_mm: must be a number",
        ),
        (
            GOOD.replace("depth_mm = 4", "depth_mm = -1"),
            "segments[0].depth_mm: must not be negative",
        ),
        (
            GOOD.replace('kind = "cut"', 'kind = "drill"'),
            "segments[0].kind: must be one of cut, rapid, dwell",
        ),
        (GOOD + 'material = "unobtainium"\n', "segments[0].material: must be one of"),
        (GOOD.replace("feed_mm_min = 1500", ""), "segments[0].feed_mm_min: missing"),
        (GOOD.replace('name = "ok"', ""), "s.toml: name: missing"),
        (
            GOOD + "[sensor]\nlag_s = -1\n",
            "s.toml:11: sensor.lag_s: must not be negative, got -1.0",
        ),
        (
            GOOD + "[control]\ntarget_load_pct = 5\n",
            "control.target_load_pct: must be above the idle load (8.2 %)",
        ),
        (
            GOOD + "[control]\nhard_limit_pct = 60\n",
            "control.hard_limit_pct: must be above target_load_pct",
        ),
        (
            GOOD + "[machine]\nrated_power_kw = 0\n",
            "machine.rated_power_kw: must be greater than 0",
        ),
        (
            GOOD + "[machine]\noverride_watchdog_s = -1\n",
            "machine.override_watchdog_s: must not be negative, got -1.0",
        ),
        (
            GOOD + "hard_zones = [{from_mm = 50, to_mm = 150, kc_factor = 2}]\n",
            "segments[0].hard_zones[0].to_mm: must be above from_mm and at most length_mm (100)",
        ),
        (
            GOOD + '[[events]]\nkind = "meteor"\n',
            "s.toml:11: events[0].kind: must be one of breakage",
        ),
        (
            GOOD + '[[events]]\nkind = "breakage"\nat_mm = 10\npart = 2\n',
            "events[0].part: must be an integer in 1..1",
        ),
        (GOOD + '[[events]]\nkind = "link_loss"\nstart_s = 1\n', "events[0].duration_s: missing"),
        (GOOD + "[stock]\n", "needs either [[segments]] or [stock] with [[moves]], not both"),
        ("name = 'x'\ndescription = 'y'\n", "needs either [[segments]] or [stock]"),
        (
            "name = 'x'\ndescription = 'y'\n[stock]\nx = [0, 10]\ny = [0, 10]\ntop_z = 0\n",
            "moves: missing",
        ),
        (
            "name = 'x'\ndescription = 'y'\n[stock]\nx = [10, 0]\ny = [0, 10]\ntop_z = 0\n"
            "[[moves]]\nx = 1\n",
            "s.toml:4: stock.x: min must be below max",
        ),
        (
            "name = 'x'\ndescription = 'y'\n[stock]\nx = [0, 10]\ny = [0, 10]\ntop_z = 0\n"
            "[[moves]]\nx = 1\n",
            "s.toml:7: moves[0].feed_mm_min: missing (no feed programmed yet)",
        ),
        (
            "name = 'x'\ndescription = 'y'\nstart = [1, 2]\n[stock]\nx = [0, 10]\ny = [0, 10]\n"
            "top_z = 0\n[[moves]]\nx = 1\n",
            "s.toml:3: start: must be [x, y, z] in mm, got [1, 2]",
        ),
        ("name = = 1", "s.toml: invalid TOML"),
    ],
)
def test_each_mistake_is_one_line_naming_file_line_and_key(text, want):
    assert want in error_of(text)


def test_an_unreadable_file_and_an_unknown_name_say_so(tmp_path):
    with pytest.raises(ScenarioError, match=r"nothing.toml: cannot read"):
        load_scenario(tmp_path / "nothing.toml")
    with pytest.raises(ScenarioError, match=r"no_such: no such scenario \(shipped: .*hard_spot"):
        scenario_path("no_such")
