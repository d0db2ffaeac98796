"""The cutting plant on simulated time: physics, feed, sensor, faults, as the scenario says."""

import dataclasses
import math

import pytest

from hil.physics import MATERIALS, cutting_power_kw
from hil.plant import MOTION, TRACE_COLUMNS, CuttingPlant, NotWritable, demo_plant
from hil.register_map import AGENT_OVERRIDE, RUN_STATE, TAGS
from hil.scenario import Sensor, load_scenario, parse_scenario, shipped_scenarios

pytestmark = pytest.mark.timeout(60)

QUIET = """
[sensor]
lag_s = 0
dead_time_s = 0
quantum_pct = 0
noise_pct = 0
"""


def one_cut(depth=4.0, width=10.0, feed=1500.0, material="steel", sensor=QUIET, extra=""):
    """A 200 mm cut after a 20 mm rapid; with a quiet sensor the reading is the true load."""
    return parse_scenario(
        f"""
name = "test"
description = "one cut"
{extra}
{sensor}
[[segments]]
kind = "rapid"
length_mm = 20

[[segments]]
kind = "cut"
length_mm = 200
depth_mm = {depth}
width_mm = {width}
feed_mm_min = {feed}
material = "{material}"
"""
    )


def load_in_cut(scenario, at_s=4.0, override=100):
    plant = CuttingPlant(scenario)
    plant.write(AGENT_OVERRIDE, override)
    plant.advance_to(at_s)
    return plant.values()["spindle_load"]


def expected_load(scenario, kc, depth, width, feed):
    m = scenario.machine
    kw = m.idle_power_kw + cutting_power_kw(kc, depth, width, feed, m.efficiency)
    return 100 * kw / m.rated_power_kw


def test_values_name_every_tag_of_the_register_map():
    assert set(demo_plant().values()) == {tag.name for tag in TAGS}


def test_steady_load_is_idle_plus_kc_ap_ae_vf_over_60e6_eta():
    scenario = one_cut()
    want = expected_load(scenario, MATERIALS["steel"], 4, 10, 1500)
    assert load_in_cut(scenario) == pytest.approx(want, rel=1e-9)
    # by hand: 1700 * 4 * 10 * 1500 / (60e6 * 0.8) = 2.125 kW, + 0.45 idle, of 5.5 kW
    assert want == pytest.approx(100 * 2.575 / 5.5)


@pytest.mark.parametrize(
    "change",
    [{"depth": 8.0}, {"width": 20.0}, {"feed": 3000.0}],
    ids=["a_p", "a_e", "v_f"],
)
def test_cutting_power_doubles_with_each_of_depth_width_and_feed(change):
    base = one_cut()
    idle = 100 * base.machine.idle_power_kw / base.machine.rated_power_kw
    doubled = one_cut(**change)
    assert load_in_cut(doubled) - idle == pytest.approx(2 * (load_in_cut(base) - idle), rel=1e-9)


def test_cutting_power_scales_with_the_materials_kc():
    idle = 100 * one_cut().machine.idle_power_kw / one_cut().machine.rated_power_kw
    steel = load_in_cut(one_cut(material="steel")) - idle
    aluminium = load_in_cut(one_cut(material="aluminium")) - idle
    assert aluminium / steel == pytest.approx(MATERIALS["aluminium"] / MATERIALS["steel"])


def test_a_scenario_material_overrides_the_catalogue():
    scenario = one_cut(material="inconel", extra="[materials]\ninconel = 3400")
    want = expected_load(scenario, 3400, 4, 10, 1500)
    assert load_in_cut(scenario) == pytest.approx(want, rel=1e-9)


def test_agent_override_scales_the_feed_and_the_cutting_load():
    scenario = one_cut()
    plant = CuttingPlant(scenario)
    plant.write(AGENT_OVERRIDE, 50)
    plant.advance_to(4.0)
    values = plant.values()
    assert values["programmed_feed"] == 1500
    assert values["actual_feed"] == pytest.approx(750, rel=1e-9)
    assert values[AGENT_OVERRIDE] == 50
    assert values["spindle_load"] == pytest.approx(expected_load(scenario, 1700, 4, 10, 750))


def test_operator_knob_and_agent_override_multiply_in_one_percent_steps():
    plant = CuttingPlant(one_cut())
    plant.feed_knob_pct = 50
    plant.write(AGENT_OVERRIDE, 150)
    assert plant.feed_pct() == 75
    plant.advance_to(4.0)
    assert plant.values()["actual_feed"] == pytest.approx(1125, rel=1e-9)
    plant.feed_knob_pct = 33.3
    plant.write(AGENT_OVERRIDE, 33.3)
    assert plant.feed_pct() == 11


def test_feed_is_clamped_by_the_controllers_feed_percentage_and_max_feed():
    plant = CuttingPlant(one_cut(extra="[machine]\nmax_feed_pct = 120"))
    plant.write(AGENT_OVERRIDE, 150)
    assert plant.feed_pct() == 120
    plant = CuttingPlant(one_cut(extra="[machine]\nmax_feed_mm_min = 1600"))
    plant.write(AGENT_OVERRIDE, 150)
    plant.advance_to(4.0)
    assert plant.values()["actual_feed"] == pytest.approx(1600, rel=1e-9)


def test_override_zero_holds_the_feed_with_the_spindle_at_idle():
    plant = CuttingPlant(one_cut())
    plant.advance_to(4.0)
    plant.write(AGENT_OVERRIDE, 0)
    plant.advance_to(5.0)
    values = plant.values()
    assert values["actual_feed"] == 0
    assert values["run_state"] == RUN_STATE["feed_hold"]
    idle = 100 * plant.machine.idle_power_kw / plant.machine.rated_power_kw
    assert values["spindle_load"] == pytest.approx(idle)


def test_the_override_write_is_clamped_and_other_tags_are_read_only():
    plant = demo_plant()
    plant.write(AGENT_OVERRIDE, 400)
    assert plant.values()[AGENT_OVERRIDE] == 150
    with pytest.raises(NotWritable, match="spindle_load"):
        plant.write("spindle_load", 10)


def test_advance_to_steps_on_a_fixed_grid_whatever_the_call_pattern():
    fine, coarse = demo_plant(), demo_plant()
    for i in range(1, 1001):
        fine.advance_to(i * 0.0137)
    coarse.advance_to(1000 * 0.0137)
    assert fine.values() == coarse.values()
    assert fine.time_s == pytest.approx(13.7)


def test_time_never_goes_backwards():
    plant = demo_plant()
    plant.advance_to(10.0)
    before = plant.values()
    plant.advance_to(5.0)
    assert plant.time_s == pytest.approx(10.0)
    assert plant.values() == before


@pytest.mark.parametrize("path", shipped_scenarios(), ids=lambda p: p.stem)
def test_the_same_scenario_and_seed_give_bit_identical_traces(path):
    def trace():
        plant = CuttingPlant(load_scenario(path), record=True)
        plant.advance_to(8.0)
        return {name: column.tobytes() for name, column in plant.trace.items()}

    first = trace()
    assert set(first) == set(TRACE_COLUMNS)
    assert len(first["t_s"]) == 8 * 8 * 100  # 800 steps of 8 bytes
    assert first == trace()


def test_another_seed_gives_other_noise():
    a = CuttingPlant(parse_scenario(_with_seed(1)), record=True)
    b = CuttingPlant(parse_scenario(_with_seed(2)), record=True)
    a.advance_to(3.0)
    b.advance_to(3.0)
    assert a.trace["load_pct"] != b.trace["load_pct"]
    assert a.trace["load_true_pct"] == b.trace["load_true_pct"]


def _with_seed(seed):
    return f"""
name = "seeded"
description = "noisy sensor"
seed = {seed}
[[segments]]
kind = "cut"
length_mm = 100
depth_mm = 4
width_mm = 10
feed_mm_min = 1500
"""


def test_sensor_step_response_has_the_scenarios_dead_time_and_lag():
    sensor = "[sensor]\nlag_s = 0.2\ndead_time_s = 0.1\nquantum_pct = 0\nnoise_pct = 0"
    plant = CuttingPlant(parse_scenario(_spindle_start(sensor)), record=True)
    plant.advance_to(2.0)
    t = list(plant.trace["t_s"])
    true, read = plant.trace["load_true_pct"], plant.trace["load_pct"]
    step_at = next(i for i, v in enumerate(true) if v > 0)
    final = true[step_at]
    for i in range(step_at, len(t)):
        since = t[i] - t[step_at] - 0.1  # the reading starts to move one dead time later
        want = 0.0 if since < -1e-9 else final * (1 - math.exp(-(since + 0.01) / 0.2))
        assert read[i] == pytest.approx(want, abs=1e-9), f"at {t[i]:.2f} s"


def _spindle_start(sensor):
    """The spindle starts (idle load steps from 0) at the program start."""
    return f"""
name = "step"
description = "idle load step"
{sensor}
[[segments]]
kind = "dwell"
seconds = 5
"""


def test_the_sensor_quantises_its_reading():
    sensor = "[sensor]\nlag_s = 0\ndead_time_s = 0\nquantum_pct = 0.5\nnoise_pct = 0"
    plant = CuttingPlant(one_cut(sensor=sensor))
    plant.advance_to(4.0)
    reading = plant.values()["spindle_load"]
    assert reading / 0.5 == pytest.approx(round(reading / 0.5), abs=1e-9)
    assert reading == pytest.approx(load_in_cut(one_cut()), abs=0.25)


def test_a_hard_zone_raises_the_load_by_its_factor_only_inside_it():
    scenario = parse_scenario(
        _single_segment(QUIET, "hard_zones = [{from_mm = 100, to_mm = 150, kc_factor = 2.0}]")
    )
    plant = CuttingPlant(scenario, record=True)
    plant.advance_to(20.0)
    idle = 100 * scenario.machine.idle_power_kw / scenario.machine.rated_power_kw
    base = expected_load(scenario, 1700, 4, 10, 1500) - idle
    # after the 1 s spindle start, the feed reaches 1500 mm/min at once
    position = [(t - 1.0) * 1500 / 60 for t in plant.trace["t_s"]]
    for x, load, motion in zip(
        position, plant.trace["load_true_pct"], plant.trace["motion"], strict=True
    ):
        if motion != MOTION["cut"] or not 2 < x < 198:
            continue
        inside = 100 < x < 150
        want = idle + base * (2.0 if inside else 1.0)
        if abs(x - 100) > 1 and abs(x - 150) > 1:
            assert load == pytest.approx(want, rel=1e-3), f"at {x:.1f} mm"


def _single_segment(sensor, extra_segment_keys=""):
    return f"""
name = "one segment"
description = "a cut from the start"
[machine]
feed_lag_s = 0.000001
{sensor}
[[segments]]
kind = "cut"
length_mm = 200
depth_mm = 4
width_mm = 10
feed_mm_min = 1500
{extra_segment_keys}
"""


def test_air_cut_runs_at_feed_with_the_spindle_at_idle():
    scenario = load_scenario(_shipped("air_cut_entry"))
    plant = CuttingPlant(scenario, record=True)
    plant.advance_to(3.0)  # 40 mm rapid, then 60 mm at 1500 mm/min in air until ~2.6 s
    air = [
        load
        for load, motion in zip(plant.trace["load_true_pct"], plant.trace["motion"], strict=True)
        if motion == MOTION["air"]
    ]
    assert len(air) > 150
    idle = 100 * scenario.machine.idle_power_kw / scenario.machine.rated_power_kw
    assert max(air) == pytest.approx(idle)


def test_a_breakage_spikes_then_the_load_falls_near_idle_while_still_in_material():
    scenario = load_scenario(_shipped("breakage"))
    plant = CuttingPlant(scenario, record=True)
    plant.advance_to(20.0)
    broke = plant.result.broken_at_s
    assert broke is not None
    trace = plant.trace
    idle = 100 * scenario.machine.idle_power_kw / scenario.machine.rated_power_kw
    before = [
        v
        for t, v in zip(trace["t_s"], trace["load_true_pct"], strict=True)
        if broke - 1 < t < broke
    ]
    spike = [
        v
        for t, v in zip(trace["t_s"], trace["load_true_pct"], strict=True)
        if broke <= t < broke + 0.05
    ]
    after = [
        (v, a)
        for t, v, a in zip(trace["t_s"], trace["load_true_pct"], trace["area_mm2"], strict=True)
        if broke + 0.05 <= t < broke + 2
    ]
    steady = sum(before) / len(before)
    assert min(spike) == pytest.approx(idle + 3 * (steady - idle), rel=1e-6)
    assert all(area == 50.0 for _, area in after), "still engaged in material"
    assert all(v == pytest.approx(idle + 0.05 * (steady - idle), rel=1e-6) for v, _ in after)


def test_tool_wear_raises_the_cutting_load_part_by_part():
    scenario = load_scenario(_shipped("tool_wear"))
    plant = CuttingPlant(scenario, record=True)
    plant.advance_to(200.0)
    assert plant.result.finished and len(plant.result.part_times_s) == 6
    idle = 100 * scenario.machine.idle_power_kw / scenario.machine.rated_power_kw
    rows = list(
        zip(plant.trace["load_true_pct"], plant.trace["part"], plant.trace["motion"], strict=True)
    )
    peaks = [
        max(load for load, p, m in rows if p == part and m == MOTION["cut"]) - idle
        for part in range(1, 7)
    ]
    for part, peak in enumerate(peaks, start=1):
        assert peak == pytest.approx(peaks[0] * (1 + 0.08 * (part - 1)), rel=1e-6)


def test_overload_alarm_latches_stops_feed_and_spindle_until_reset():
    plant = CuttingPlant(one_cut(depth=14, width=12, feed=1500))  # about 170 % load
    plant.advance_to(4.0)
    values = plant.values()
    assert values["in_alarm"] == values["alarm_spindle_overload"] == 1
    assert values["run_state"] == RUN_STATE["alarm"]
    assert values["program_running"] == 0
    assert values["actual_feed"] == 0 and values["spindle_speed"] == 0
    assert plant.result.alarm_at_s is not None
    plant.reset_alarm()
    plant.advance_to(4.1)
    values = plant.values()
    assert values["in_alarm"] == 0 and values["block_number"] == 10


def test_a_load_over_the_alarm_threshold_for_less_than_its_time_does_not_trip():
    plant = CuttingPlant(load_scenario(_shipped("breakage")))  # a 0.05 s spike past 150 %
    plant.advance_to(30.0)
    assert plant.result.peak_load_pct > 150
    assert plant.result.alarm_at_s is None and plant.result.finished


def test_cycle_time_time_above_the_hard_limit_and_peak_are_measured():
    scenario = load_scenario(_shipped("overload"))
    plant = CuttingPlant(scenario)
    plant.advance_to(60.0)
    result = plant.result
    assert result.finished
    # 1 s spindle start, 50 mm rapid at 12000, 100 + 80 mm at 1500 mm/min, 50 mm rapid;
    # plus the axes' lag
    assert result.cycle_time_s == pytest.approx(1.0 + 0.25 + 7.2 + 0.25, abs=0.2)
    m = scenario.machine
    heavy = 100 * (m.idle_power_kw + cutting_power_kw(1700, 10, 12, 1500, m.efficiency)) / 5.5
    assert result.peak_load_pct == pytest.approx(heavy, rel=1e-6)
    assert result.above_limit_s == pytest.approx(80 / 1500 * 60, abs=0.1)


def test_a_frozen_sensor_holds_its_reading_while_the_load_moves_on():
    scenario = load_scenario(_shipped("stale_sensor"))
    plant = CuttingPlant(scenario, record=True)
    plant.advance_to(12.0)
    trace = plant.trace
    frozen = [r for t, r in zip(trace["t_s"], trace["load_pct"], strict=True) if 6.0 < t < 9.0]
    moving = [r for t, r in zip(trace["t_s"], trace["load_pct"], strict=True) if 9.1 < t < 10.0]
    assert len(set(frozen)) == 1
    assert len(set(moving)) > 10


def test_link_loss_is_reported_for_the_bench_to_apply():
    plant = CuttingPlant(load_scenario(_shipped("link_loss")))
    plant.advance_to(4.9)
    assert not plant.link_down()
    plant.advance_to(5.0)
    assert plant.link_down()
    plant.advance_to(9.0)
    assert not plant.link_down()


WATCHDOG = "[machine]\noverride_watchdog_s = 0.5"


def test_an_override_nobody_refreshes_falls_to_100_after_the_watchdogs_time():
    plant = CuttingPlant(one_cut(extra=WATCHDOG))
    plant.advance_to(1.0)
    plant.write(AGENT_OVERRIDE, 130)
    plant.advance_to(1.49)
    assert plant.values()[AGENT_OVERRIDE] == 130
    plant.advance_to(1.5)
    assert plant.values()[AGENT_OVERRIDE] == 100


def test_a_refresh_keeps_the_override_and_a_write_after_the_fallback_is_followed():
    plant = CuttingPlant(one_cut(extra=WATCHDOG))
    plant.write(AGENT_OVERRIDE, 130)
    for t in (0.3, 0.6, 0.9):
        plant.advance_to(t)
        plant.write(AGENT_OVERRIDE, 130)  # the same value, re-written
    plant.advance_to(1.3)
    assert plant.values()[AGENT_OVERRIDE] == 130
    plant.advance_to(2.0)
    plant.write(AGENT_OVERRIDE, 120)
    assert plant.values()[AGENT_OVERRIDE] == 120


def test_the_watchdog_never_raises_an_override_below_100():
    plant = CuttingPlant(one_cut(extra=WATCHDOG))
    plant.write(AGENT_OVERRIDE, 60)
    plant.advance_to(3.0)
    assert plant.values()[AGENT_OVERRIDE] == 60


def test_without_the_watchdog_the_last_override_stays():
    plant = CuttingPlant(one_cut())
    plant.write(AGENT_OVERRIDE, 130)
    plant.advance_to(10.0)
    assert plant.values()[AGENT_OVERRIDE] == 130


def test_the_run_ends_idle_with_its_cycle_time_or_loops_again():
    plant = CuttingPlant(one_cut())
    plant.advance_to(30.0)
    values = plant.values()
    assert plant.result.finished
    assert values["run_state"] == RUN_STATE["idle"] and values["spindle_on"] == 0
    assert values["cycle_time"] == pytest.approx(plant.result.cycle_time_s)
    looping = CuttingPlant(one_cut(), loop=True)
    looping.advance_to(30.0)
    assert looping.values()["run_state"] == RUN_STATE["running"]


def test_stock_depth_steps_give_the_depth_of_each_region():
    scenario = load_scenario(_shipped("depth_steps"))
    plant = CuttingPlant(scenario, record=True)
    plant.advance_to(20.0)
    trace = plant.trace
    depth_at = {}
    for area, motion, x in zip(
        trace["area_mm2"], trace["motion"], _x_positions(plant), strict=True
    ):
        if motion == MOTION["cut"]:
            depth_at[round(x)] = area / 12  # a 12 mm slot: area = 12 x depth
    assert depth_at[50] == pytest.approx(4, abs=0.1)
    assert depth_at[150] == pytest.approx(2, abs=0.1)
    assert depth_at[250] == pytest.approx(6, abs=0.1)


def _x_positions(plant):
    """X along the trace, re-run with the same scenario (positions are not traced)."""
    replay = CuttingPlant(plant.scenario)
    xs = []
    for t in plant.trace["t_s"]:
        replay.advance_to(t)
        xs.append(replay.values()["x_position"])
    return xs


def _shipped(name):
    return next(p for p in shipped_scenarios() if p.stem == name)


def test_positions_from_outside_cut_the_stock_as_the_scenarios_own_moves_would():
    """A motion controller drives the tool through the depth-steps slot at 1500 mm/min,
    sending positions every 50 ms; the load is the formula's for each region's depth."""
    scenario = load_scenario(_shipped("depth_steps"))
    plant = CuttingPlant(dataclasses.replace(scenario, sensor=_quiet()), record=True)
    m = scenario.machine
    idle = 100 * m.idle_power_kw / m.rated_power_kw
    loads = {}
    t, x = 0.0, -10.0
    plant.drive(x, 20.0, -4.0, running=True)
    while x < 310:
        t += 0.05
        x += 1500 / 60 * 0.05
        plant.drive(x, 20.0, -4.0, running=True, programmed_feed_mm_min=1500)
        plant.advance_to(t)
        loads[round(x)] = plant.values()["spindle_load"]
    assert plant.values()["actual_feed"] == pytest.approx(1500)
    for x_mm, depth in ((50, 4), (150, 2), (250, 6)):
        kw = m.idle_power_kw + cutting_power_kw(1700, depth, 12, 1500, m.efficiency)
        assert loads[x_mm] == pytest.approx(100 * kw / m.rated_power_kw, rel=0.02), x_mm
    assert loads[308] == pytest.approx(idle)  # past the block: air
    plant.drive(x, 20.0, 10.0, running=False)
    plant.advance_to(t + 0.1)
    assert plant.result.finished
    assert plant.result.cycle_time_s == pytest.approx(t, abs=0.02)


def test_only_a_stock_scenario_can_be_driven_from_outside():
    with pytest.raises(ValueError, match="only a \\[stock\\] scenario can be driven"):
        CuttingPlant(one_cut()).drive(0, 0, 0, running=True)


def _quiet():
    return Sensor(lag_s=0, dead_time_s=0, quantum_pct=0, noise_pct=0)
