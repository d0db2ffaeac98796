"""The simple plant, on simulated time: what the machine does, step by step."""

import pytest

from hil.plant import MachineLimits, NotWritable, SimplePlant
from hil.register_map import AGENT_OVERRIDE, RUN_STATE, TAGS

CUTTING_X_S = 8.0  # the demo program is cutting along X at 1200 mm/min, 2 mm deep


def plant_at(t_s, **kwargs):
    plant = SimplePlant(**kwargs)
    plant.advance_to(t_s)
    return plant


def test_values_name_every_tag_of_the_register_map():
    assert set(SimplePlant().values()) == {tag.name for tag in TAGS}


def test_advance_to_steps_on_a_fixed_grid_whatever_the_call_pattern():
    fine, coarse = SimplePlant(), SimplePlant()
    for i in range(1, 1001):
        fine.advance_to(i * 0.0137)
    coarse.advance_to(1000 * 0.0137)
    assert fine.values() == coarse.values()
    assert fine.time_s == pytest.approx(13.7)


def test_the_same_seed_gives_the_same_run():
    assert plant_at(30.0, seed=7).values() == plant_at(30.0, seed=7).values()


def test_time_never_goes_backwards():
    plant = plant_at(10.0)
    before = plant.values()
    plant.advance_to(5.0)
    assert plant.time_s == pytest.approx(10.0)
    assert plant.values() == before


def test_agent_override_scales_the_actual_feed():
    plant = SimplePlant()
    plant.write(AGENT_OVERRIDE, 50)
    plant.advance_to(CUTTING_X_S)
    values = plant.values()
    assert values["programmed_feed"] == 1200
    assert values["actual_feed"] == pytest.approx(600, rel=1e-3)
    assert values[AGENT_OVERRIDE] == 50


def test_operator_knob_and_agent_override_multiply_in_one_percent_steps():
    plant = SimplePlant()
    plant.feed_knob_pct = 50
    plant.write(AGENT_OVERRIDE, 150)
    assert plant.feed_pct() == 75
    plant.advance_to(CUTTING_X_S)
    assert plant.values()["actual_feed"] == pytest.approx(900, rel=1e-3)
    plant.feed_knob_pct, plant._override_pct = 33.3, 33.3
    assert plant.feed_pct() == 11


def test_effective_feed_is_clamped_to_the_controllers_max_feed():
    plant = SimplePlant(limits=MachineLimits(max_feed_mm_min=1000))
    plant.write(AGENT_OVERRIDE, 150)
    plant.advance_to(CUTTING_X_S)
    assert plant.values()["actual_feed"] == pytest.approx(1000, rel=1e-3)


def test_override_zero_holds_the_feed():
    plant = plant_at(CUTTING_X_S)
    plant.write(AGENT_OVERRIDE, 0)
    plant.advance_to(CUTTING_X_S + 1)
    values = plant.values()
    assert values["actual_feed"] == 0
    assert values["run_state"] == RUN_STATE["feed_hold"]
    assert values["spindle_load"] < 10  # idle: the tool is not moving into the stock


def test_the_override_write_is_clamped_and_other_tags_are_read_only():
    plant = SimplePlant()
    plant.write(AGENT_OVERRIDE, 400)
    assert plant.values()[AGENT_OVERRIDE] == 150
    with pytest.raises(NotWritable, match="spindle_load"):
        plant.write("spindle_load", 10)


def test_load_follows_depth_times_feed_and_power_follows_load():
    slow, fast = SimplePlant(), SimplePlant()
    fast.write(AGENT_OVERRIDE, 120)
    slow.advance_to(CUTTING_X_S)
    fast.advance_to(CUTTING_X_S)
    slow_load, fast_load = slow.values()["spindle_load"], fast.values()["spindle_load"]
    assert 40 < slow_load < 60
    cutting = slow_load - slow.limits.idle_load_pct
    assert fast_load - slow.limits.idle_load_pct == pytest.approx(1.2 * cutting, rel=0.05)
    values = slow.values()
    assert values["spindle_power"] == pytest.approx(values["spindle_load"] / 100 * 7.5)


def test_air_cut_has_idle_load_at_full_feed():
    plant = plant_at(22.0)  # block N100: a feed move above the stock
    values = plant.values()
    assert values["block_number"] == 100
    assert values["actual_feed"] == pytest.approx(1200, rel=1e-3)
    assert values["spindle_load"] < 8


def test_program_loops_counting_blocks_changing_tools_and_restarting_cycle_time():
    plant = SimplePlant()
    blocks, tools, states, cycle = set(), set(), set(), []
    for i in range(1, 1001):
        plant.advance_to(i * 0.1)
        values = plant.values()
        blocks.add(values["block_number"])
        tools.add(values["tool_number"])
        states.add(values["run_state"])
        cycle.append(values["cycle_time"])
    assert blocks == {10.0 * n for n in range(1, len(plant.program) + 1)}
    assert {1, 2} <= tools
    assert states == {RUN_STATE["running"], RUN_STATE["idle"]}
    assert any(b < a for a, b in zip(cycle, cycle[1:], strict=False)), "cycle time restarts"


def test_spindle_stops_during_tool_change():
    plant = SimplePlant()
    while plant.values()["block_number"] != 150:  # N150: tool change to T2
        plant.advance_to(plant.time_s + 0.1)
    plant.advance_to(plant.time_s + 1.0)
    values = plant.values()
    assert values["tool_number"] == 2
    assert values["spindle_on"] == 0
    assert values["spindle_speed"] == 0


def test_spindle_temperature_drifts_slowly():
    plant = SimplePlant()
    start = plant.values()["spindle_temperature"]
    plant.advance_to(120.0)
    end = plant.values()["spindle_temperature"]
    assert 0.2 < end - start < 5


def test_overload_latches_the_alarm_and_stops_the_feed_until_reset():
    plant = plant_at(CUTTING_X_S, limits=MachineLimits(cutting_coefficient=0.1))
    values = plant.values()
    assert values["in_alarm"] == values["alarm_spindle_overload"] == 1
    assert values["run_state"] == RUN_STATE["alarm"]
    assert values["program_running"] == 0
    plant.advance_to(CUTTING_X_S + 2)
    assert plant.values()["actual_feed"] == 0
    assert plant.values()["in_alarm"] == 1
    plant.reset_alarm()
    plant.advance_to(CUTTING_X_S + 2.1)
    values = plant.values()
    assert values["in_alarm"] == 0
    assert values["block_number"] == 10
