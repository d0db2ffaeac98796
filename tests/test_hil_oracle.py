"""The oracle's shortest cycle time, checked by hand on small scenarios."""

import dataclasses

import pytest

from hil.oracle import STOCK_STEP_MM, oracle
from hil.plant import CuttingPlant
from hil.register_map import AGENT_OVERRIDE
from hil.scenario import load_scenario, parse_scenario, scenario_path

pytestmark = pytest.mark.timeout(60)


def test_segments_by_hand_air_rapid_hard_zone_and_dwell():
    scenario = parse_scenario(
        """
name = "by hand"
description = "rapid, a cut with a hard zone, a dwell"
[[segments]]
kind = "rapid"
length_mm = 60
[[segments]]
kind = "cut"
length_mm = 100
depth_mm = 4
width_mm = 10
feed_mm_min = 1500
material = "steel"
hard_zones = [{from_mm = 40, to_mm = 60, kc_factor = 2.0}]
[[segments]]
kind = "dwell"
seconds = 1.0
"""
    )
    # Target 70 % of 5.5 kW, less 0.45 kW idle: 3.4 kW for cutting, at eta 0.8.
    cutting_w_min = 3.4 * 60e6 * 0.8  # kW -> the numerator of the power formula
    normal = cutting_w_min / (1700 * 4 * 10)  # 2400 mm/min: override 160 %, capped at 150 %
    hard = cutting_w_min / (3400 * 4 * 10)  # 1200 mm/min: override 80 %
    assert normal == pytest.approx(2400) and hard == pytest.approx(1200)
    spindle_start = 1.0
    want = spindle_start + 60 / 12000 * 60 + 80 / (1.5 * 1500) * 60 + 20 / 1200 * 60 + 1.0
    assert oracle(scenario).cycle_time_s == pytest.approx(want, rel=1e-12)
    assert want == pytest.approx(5.43333, abs=1e-5)


def test_stock_slot_by_hand_engaged_for_the_block_length_and_in_air_at_full_override():
    scenario = parse_scenario(
        """
name = "slot"
description = "a 10 mm slot, 3 mm deep, through a 100 mm steel block"
start = [-20, 20, -3]
[tool]
diameter_mm = 10
[stock]
x = [0, 100]
y = [0, 40]
top_z = 0
material = "steel"
[[moves]]
x = 120
feed_mm_min = 3000
"""
    )
    in_steel = 3.4 * 60e6 * 0.8 / (1700 * 3 * 10)  # 3200 mm/min: override 106.7 %
    in_air = 1.5 * 3000  # 4500 mm/min: the highest override, under the 6000 clamp
    want = 1.0 + 100 / in_steel * 60 + 40 / in_air * 60  # after the 1 s spindle start
    # Entering and leaving, the front of the tool is partly in material for about a radius.
    assert oracle(scenario).cycle_time_s == pytest.approx(want, rel=0.01)


def test_a_finer_stock_walk_changes_the_oracle_by_less_than_a_tenth_of_a_percent():
    scenario = load_scenario(scenario_path("stock_facing"))
    coarse = oracle(scenario).cycle_time_s
    fine = oracle(scenario, stock_step_mm=STOCK_STEP_MM / 4).cycle_time_s
    assert coarse == pytest.approx(fine, rel=1e-3)


def test_the_override_clamps_bound_the_oracle():
    scenario = load_scenario(scenario_path("overload"))

    def with_control(**change):
        return dataclasses.replace(
            scenario, control=dataclasses.replace(scenario.control, **change)
        )

    # The heavy 80 mm pass wants 800 mm/min (53 %); a 90 % floor lets it run at 1350.
    floor = oracle(with_control(override_min_pct=90.0)).cycle_time_s
    assert oracle(scenario).cycle_time_s - floor == pytest.approx(80 / 800 * 60 - 80 / 1350 * 60)
    # The normal 100 mm pass wants 128 %; a 100 % ceiling holds it at 1500.
    ceiling = oracle(with_control(override_max_pct=100.0)).cycle_time_s
    wanted = 3.4 * 60e6 * 0.8 / (1700 * 5 * 10)
    assert ceiling - oracle(scenario).cycle_time_s == pytest.approx(
        100 / 1500 * 60 - 100 / wanted * 60
    )


def test_faults_do_not_change_the_oracle():
    scenario = load_scenario(scenario_path("breakage"))
    assert oracle(scenario) == oracle(dataclasses.replace(scenario, events=()))


def test_wear_makes_every_later_part_slower_in_the_oracle():
    times = oracle(load_scenario(scenario_path("tool_wear"))).part_times_s
    assert len(times) == 6
    assert all(a < b for a, b in zip(times, times[1:], strict=False))


def test_the_plant_at_the_oracles_override_holds_the_target_load():
    scenario = parse_scenario(
        """
name = "hold"
description = "a steady cut inside the override range"
[sensor]
noise_pct = 0
[[segments]]
kind = "cut"
length_mm = 300
depth_mm = 5
width_mm = 10
feed_mm_min = 1500
"""
    )
    override = 100 * 3.4 * 60e6 * 0.8 / (1700 * 5 * 10) / 1500  # 128 %
    plant = CuttingPlant(scenario)
    plant.write(AGENT_OVERRIDE, round(override))
    plant.advance_to(5.0)
    assert plant.values()["spindle_load"] == pytest.approx(70.0, abs=0.5)  # 1 % override steps
