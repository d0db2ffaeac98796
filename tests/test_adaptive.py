"""The adaptive controller's state machine on simulated time: samples in, override out."""

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config import ControlConfig
from edge_agent.control.adaptive import FEED_HOLD, AdaptiveController, State
from edge_agent.control.teach import ToolRecord
from edge_agent.samples import Quality, Sample

pytestmark = pytest.mark.timeout(60)

# The air boost opted in (150 %) unless a test says otherwise: most tests watch its writes.
CFG = ControlConfig(enabled=True, idle_load_pct=8.0, frozen_s=0.0, air_override_pct=150.0)
DEFAULTS = ControlConfig(enabled=True, idle_load_pct=8.0, frozen_s=0.0)
MACHINE = {
    "spindle_on": 1.0,
    "program_running": 1.0,
    "in_alarm": 0.0,
    "tool_number": 1.0,
    "program_number": 1001.0,
    "block_number": 10.0,
    "feed_knob": 100.0,
    "agent_feed_override": 100.0,
}


def ns(t_s):
    return round(t_s * 1e9)


class Bench:
    """A controller fed one poll of every input each call, with its writes fed back."""

    def __init__(self, cfg=CFG, taught=None, **machine):
        self.ctrl = AdaptiveController(cfg, taught)
        self.machine = {**MACHINE, **machine}
        self.t = 0.0
        self.written = []
        self.events = []

    def poll(self, load, dt=0.02, quality=Quality.GOOD, only=None, **machine):
        self.t += dt
        self.machine.update(machine)
        values = {**self.machine, "spindle_load": load}
        now = ns(self.t)
        arrivals = [
            (now, Sample(name, now, value, quality if name == "spindle_load" else Quality.GOOD))
            for name, value in values.items()
            if only is None or name in only
        ]
        command = self.ctrl.update(now, arrivals)
        self.events += command.events
        if command.override is not None:
            self.ctrl.commanded(command.override)
            self.written.append(command.override)
        return command.override

    def run(self, load, seconds, dt=0.02, **machine):
        out = None
        for _ in range(round(seconds / dt)):
            out = self.poll(load, dt, **machine)
        return out

    def kinds(self):
        return [kind for kind, _ in self.events]


def cutting_bench(**kw):
    """A bench past the spindle settle, through an entry, cutting at the target."""
    bench = Bench(**kw)
    bench.run(8.0, 1.0)  # spindle turning in air
    bench.run(70.0, 0.5)  # entry, then cutting at the target
    assert bench.ctrl.state is State.CUTTING
    return bench


def test_nothing_is_written_until_every_input_has_been_seen():
    bench = Bench()
    assert bench.poll(8.0, only={"spindle_load", "spindle_on"}) is None
    assert bench.ctrl.state is State.STARTING and bench.events == []


def test_an_input_that_never_arrives_is_a_fault_after_the_staleness_limit():
    bench = Bench()
    for _ in range(20):
        bench.poll(8.0, only=set(MACHINE) - {"in_alarm"} | {"spindle_load"})
    assert bench.ctrl.state is State.FAULT
    assert ("control_state", "in_alarm missing") in [(k, d.get("reason")) for k, d in bench.events]


def test_idle_writes_nothing_while_the_program_is_not_running():
    bench = Bench(program_running=0.0)
    assert bench.run(8.0, 2.0) is None
    assert bench.ctrl.state is State.IDLE and bench.written == []


def test_air_cut_boosts_the_feed_at_the_rise_rate_after_the_spindle_settles():
    bench = Bench()
    bench.run(8.0, CFG.idle_settle_s)
    assert bench.ctrl.state is State.AIR and max(bench.written) == 100.0
    bench.run(8.0, 0.5)
    assert bench.written[-1] == pytest.approx(100 + CFG.rise_pct_per_s * 0.5, abs=1.3)
    bench.run(8.0, 2.0)
    assert bench.written[-1] == CFG.air_override_pct
    steps = [b - a for a, b in zip(bench.written, bench.written[1:], strict=False)]
    assert max(steps) <= CFG.rise_pct_per_s * 0.02 + 1e-9


def test_a_load_rise_over_idle_is_an_entry_at_the_entry_override_then_cutting():
    bench = Bench()
    bench.run(8.0, 3.0)  # boosted to 150 % in air
    bench.poll(20.0)
    assert bench.ctrl.state is State.AIR  # one sample is not an entry
    assert bench.poll(20.0) == CFG.neutral_override_pct  # no cut yet: enter at 100 %
    assert bench.ctrl.state is State.ENTRY
    bench.run(20.0, CFG.entry_s)
    assert bench.ctrl.state is State.CUTTING


def test_cutting_lowers_the_feed_over_target_and_raises_it_under():
    bench = cutting_bench()
    start = bench.written[-1]
    assert bench.run(90.0, 0.3) < start
    low = bench.written[-1]
    assert bench.run(60.0, 0.5) > low


def test_the_next_entry_starts_at_the_override_the_last_cut_ended_with():
    bench = cutting_bench()
    bench.run(60.0, 0.3)  # light cut: the override climbs
    ended = bench.written[-1]
    assert CFG.neutral_override_pct < ended < CFG.air_override_pct
    bench.run(8.0, 0.3)  # exit to air, where the boost raises it
    assert bench.ctrl.state is State.AIR and bench.written[-1] > ended
    bench.run(30.0, 0.04)
    assert bench.ctrl.state is State.ENTRY and bench.written[-1] == ended


def test_the_load_falling_to_the_exit_level_goes_back_to_air():
    bench = cutting_bench()
    bench.run(8.5, CFG.exit_s + 0.04)
    assert bench.ctrl.state is State.AIR


@pytest.mark.parametrize(
    ("fault", "why"),
    [
        ({"in_alarm": 1.0}, "controller alarm"),
        ({"load": math.nan}, "spindle_load not a number"),
        ({"quality": Quality.BAD}, "spindle_load bad"),
    ],
)
def test_a_fault_sets_min_of_current_and_safe_at_once(fault, why):
    bench = cutting_bench()
    bench.run(40.0, 1.0)  # light cut: the override climbs over the safe 100 %
    assert bench.written[-1] > CFG.safe_override_pct
    load = fault.pop("load", 40.0)
    assert bench.poll(load, **fault) == CFG.safe_override_pct
    assert bench.ctrl.state is State.FAULT
    assert bench.events[-1][1]["reason"] == why


def test_a_fault_never_raises_the_feed():
    bench = cutting_bench()
    bench.run(95.0, 1.0)  # heavy: the override falls under the safe value
    low = bench.written[-1]
    assert low < CFG.safe_override_pct
    assert bench.poll(95.0, in_alarm=1.0) == low


def test_the_link_down_is_a_fault():
    bench = cutting_bench()
    bench.ctrl.link_up = False
    bench.poll(70.0)
    assert bench.ctrl.state is State.FAULT


def test_a_stale_signal_is_a_fault_within_one_period_of_the_limit():
    bench = cutting_bench()
    bench.run(40.0, 1.0)
    last = bench.t
    others = set(MACHINE)
    while bench.ctrl.state is not State.FAULT:
        bench.poll(40.0, dt=0.01, only=others)  # the machine answers, the load does not
    assert CFG.stale_s < bench.t - last <= CFG.stale_s + 0.01 + 1e-9
    assert bench.written[-1] == CFG.safe_override_pct


def test_a_frozen_load_reading_is_a_fault():
    bench = Bench(cfg=dataclasses.replace(CFG, frozen_s=0.5))
    for i in range(100):  # a live reading: it always moves a little
        bench.poll(70.0 + 0.1 * (i % 2))
    assert bench.ctrl.state is State.CUTTING
    bench.run(70.0, 0.4)
    assert bench.ctrl.state is State.CUTTING
    bench.run(70.0, 0.2)
    assert bench.ctrl.state is State.FAULT
    assert bench.events[-1][1]["reason"] == "spindle_load frozen"


def test_a_clean_reading_standing_still_at_a_steady_load_is_not_frozen():
    # A drive with 0.1 % resolution and no noise reads one value in air and at the target.
    bench = Bench(cfg=dataclasses.replace(CFG, frozen_s=0.5))
    bench.run(8.0, 3.0)
    assert bench.ctrl.state is State.AIR
    for _ in range(300):  # a cut that takes 60 % at 100 %, read to 0.1 %
        override = bench.written[-1] if bench.written else 100.0
        bench.poll(round(8.0 + 60.0 * override / 100, 1))
    assert bench.ctrl.state is State.CUTTING
    assert len(set(bench.written[-100:])) == 1  # held: the reading stood still for 2 s


def test_a_clean_reading_that_does_not_answer_the_override_moving_is_frozen():
    bench = Bench(cfg=dataclasses.replace(CFG, frozen_s=0.5))
    bench.run(8.0, 1.0)
    for _ in range(100):  # a cut read to 0.1 %, no noise
        bench.poll(round(8.0 + 60.0 * (bench.written[-1] if bench.written else 100) / 100, 1))
    assert bench.ctrl.state is State.CUTTING
    bench.poll(90.0)  # the reading's last move: then it sticks, whatever the feed
    stuck_at, moved_from = bench.t, bench.ctrl.override
    while bench.ctrl.state is State.CUTTING and bench.t < 10.0:
        bench.poll(90.0)
    assert bench.ctrl.state is State.FAULT
    assert bench.events[-1][1]["reason"] == "spindle_load frozen"
    assert bench.t - stuck_at > 0.5 and moved_from - bench.written[-2] >= 5.0
    bench.run(90.0, 1.0)
    assert bench.ctrl.state is State.FAULT  # stuck until it moves
    bench.run(70.0, 0.1)
    assert bench.ctrl.state is State.CUTTING


def test_after_a_fault_control_resumes_from_the_override_it_left():
    bench = cutting_bench()
    bench.run(95.0, 1.0)
    held = bench.poll(95.0, in_alarm=1.0)
    bench.poll(70.0, in_alarm=0.0)
    assert bench.ctrl.state is State.CUTTING  # still in the material
    assert bench.written[-1] == held


def test_after_a_fault_in_a_cut_the_idle_load_is_not_learned_from_the_cutting_load():
    bench = Bench(cfg=dataclasses.replace(DEFAULTS, idle_load_pct=0.0))
    bench.run(8.0, 1.0)
    bench.run(70.0, 0.5)
    idle = bench.ctrl.idle_pct
    assert idle == pytest.approx(8.0, abs=0.5)
    bench.run(70.0, 0.5, in_alarm=1.0)
    assert bench.ctrl.state is State.FAULT
    bench.run(87.0, 0.5, in_alarm=0.0)  # recovered in the material, over target
    assert bench.ctrl.idle_pct == idle and bench.ctrl.state is State.CUTTING
    assert bench.written[-1] < CFG.safe_override_pct  # regulating: lowered for the 87 %


def test_no_raise_while_the_load_read_is_over_the_target_in_any_state():
    bench = cutting_bench()
    bench.run(95.0, 0.5)
    for load in (93.0, 90.0, 85.0, 80.0, 76.0, 73.0):  # falling, still over target: the
        before = bench.written[-1]  # law's proportional term would raise
        bench.poll(load)
        assert bench.written[-1] <= before


def test_by_default_air_is_not_boosted_and_a_boosted_cut_leaves_it_at_once():
    bench = Bench(cfg=DEFAULTS)
    bench.run(8.0, 3.0)
    assert max(bench.written, default=100.0) <= 100.0  # nothing over neutral in air
    bench.run(30.0, 2.0)  # a light cut: the law raises the feed
    assert bench.written[-1] > 100.0
    bench.run(8.0, DEFAULTS.exit_s + 0.1)  # exit
    assert bench.ctrl.state is State.AIR and bench.written[-1] == DEFAULTS.air_override_pct
    bench.run(30.0, 0.04)  # the next entry meets the material at 100 %, not boosted
    assert bench.ctrl.state is State.ENTRY and bench.written[-1] <= 100.0


def test_overload_at_the_floor_fires_though_noise_moves_the_override_off_the_clamp():
    bench = cutting_bench()
    for i in range(int(4.0 / 0.02)):  # over target + 10 % at the floor, noisy
        bench.poll(80.0 + (1.5 if i % 3 == 0 else -1.0))
        if bench.ctrl.state is State.HOLD:
            break
    assert "overload" in bench.kinds()
    assert bench.t < 0.5 + 1.0 + 1.0 + CFG.overload_persist_s + 0.05


@pytest.mark.parametrize(("mean", "held"), [(-0.3, False), (1.0, True)], ids=["at", "over"])
def test_at_the_floor_the_mean_reading_decides_not_noise_across_the_line(mean, held):
    """A load that only sits at the floor's overload line, its noise across it, is not an
    overload (the hold used to come once the readings failed to stay under for 0.2 s); one
    a point over it is, noise and all."""
    line = 8.0 + 1.1 * 62.0  # target + 10 % of the cutting load
    bench = cutting_bench()
    for i in range(int(5.0 / 0.02)):
        bench.poll(line + mean + (2.0 if i % 2 else -2.0))
    assert bench.written[-1] == (FEED_HOLD if held else CFG.override_min_pct)
    assert ("overload" in bench.kinds()) is held


def test_overload_persisting_holds_the_feed_within_two_periods():
    bench = cutting_bench()
    start = bench.t
    while bench.ctrl.state is not State.HOLD:
        bench.poll(CFG.hard_limit_pct + 5, dt=0.01)
    assert bench.t - start <= CFG.overload_persist_s + 2 * CFG.period_s + 1e-9
    assert bench.written[-1] == FEED_HOLD
    assert "overload" in bench.kinds()
    assert bench.run(50.0, 1.0) == FEED_HOLD  # latched until the program ends


def test_a_spike_then_a_drop_to_near_idle_is_a_breakage_and_holds_at_once():
    bench = cutting_bench()
    bench.run(70.0, 1.0)  # a steady level to spike from
    bench.poll(70 + 1.5 * 62)  # the edge chips: a spike ...
    assert bench.ctrl.state is State.CUTTING
    assert bench.poll(10.0) == FEED_HOLD  # ... then the broken tool only rubs
    assert bench.ctrl.state is State.HOLD and "breakage" in bench.kinds()


@pytest.mark.parametrize("hard", [1.0, 1.4], ids=["steady", "hard spot at the edge"])
def test_a_load_lost_without_a_chip_is_an_exit_not_a_breakage(hard):
    """A tool running out of the side of the stock mid-block loses its load as fast, against
    the sensor, as a broken one: only the chip tells them apart on a first part. A hard spot of
    1.4 x at the edge, 0.3 s long, is not a chip either (docs/adaptive-control.md). The load
    follows the feed the agent writes, as cutting power does."""
    bench = cutting_bench()

    def cut(share, seconds):
        for _ in range(round(seconds / 0.02)):
            bench.poll(8.0 + share * 62.0 * bench.written[-1] / 100.0)

    cut(1.0, 1.0)
    cut(hard, 0.3)
    cut(0.0, 1.0)
    assert "breakage" not in bench.kinds()


def test_a_cut_is_judged_against_its_own_level_not_an_earlier_cut_of_the_same_block():
    """A stock toolpath's pass can span air moves in one block: the next cut's level is
    measured from its own entry, and a bump shorter than that (a short cut over a hard spot
    at the stock's edge) then air is no breakage."""
    bench = cutting_bench()
    bench.run(70.0, 1.0)
    bench.run(8.0, 1.0)  # out of the material, the same block
    assert bench.ctrl.state is State.AIR
    bench.run(40.0, 0.5)  # a cut shorter than its level's reference and window (0.75 s)
    bench.run(8.0 + 1.6 * 32.0, 0.06)
    bench.run(8.0, 0.5)
    assert "breakage" not in bench.kinds()


def test_the_hold_ends_when_the_program_ends():
    bench = cutting_bench()
    bench.run(70.0, 1.0)
    bench.poll(160.0)
    bench.poll(10.0)
    assert bench.ctrl.state is State.HOLD
    assert bench.poll(8.0, program_running=0.0) == CFG.neutral_override_pct


def test_with_the_operators_knob_turned_down_the_agent_never_raises():
    bench = cutting_bench()
    before = bench.written[-1]
    bench.run(40.0, 1.0, feed_knob=60.0)
    assert max(bench.written[-50:]) <= before
    bench.run(8.0, 1.0, feed_knob=60.0)  # air: no boost either
    assert max(bench.written[-50:]) <= before
    assert bench.run(95.0, 0.5, feed_knob=60.0) < before  # lowering is still allowed


@pytest.mark.parametrize(
    ("cfg_change", "machine"),
    [
        ({"tools": (2, 3)}, {"tool_number": 1.0}),
        ({"programs": (2000,)}, {"program_number": 1001.0}),
        ({"enable_tag": "feed_knob"}, {"feed_knob": 0.0}),
    ],
    ids=["tool not listed", "program not listed", "enable register off"],
)
def test_control_is_off_for_tools_programs_or_an_enable_register(cfg_change, machine):
    bench = Bench(cfg=dataclasses.replace(CFG, **cfg_change), **machine)
    assert bench.run(60.0, 2.0) is None
    assert bench.ctrl.state is State.IDLE and bench.written == []


def test_a_block_the_teach_in_cut_in_passing_without_cutting_is_an_undercut():
    record = ToolRecord(1, 80.0, 8.0, (20, 30), 1001, 500, "2026-11-29T00:00:00+00:00")
    bench = Bench(taught={1: record})
    bench.run(8.0, 1.0, block_number=10.0)
    bench.run(8.0, 1.0, block_number=20.0)  # the teach-in cut here; now only air: no tool?
    bench.run(8.0, 0.1, block_number=30.0)
    assert ("undercut", {"tool": 1, "block": 20}) in bench.events


def test_teach_in_runs_at_the_neutral_override_learns_the_peak_then_aims_at_it():
    cfg = dataclasses.replace(CFG, target_mode="teach_in", teach_fraction=0.9)
    bench = Bench(cfg=cfg)
    bench.run(8.0, 1.0)
    assert bench.ctrl.state is State.TEACH
    bench.run(50.0, 1.0, block_number=20.0)
    bench.run(60.0, 1.0, block_number=30.0)
    assert set(bench.written) == {CFG.neutral_override_pct}
    bench.poll(8.0, program_running=0.0)
    learned = [d["record"] for k, d in bench.events if k == "teach_in_learned"]
    assert len(learned) == 1 and learned[0].peak_load_pct == 60.0
    assert learned[0].cut_blocks == (20, 30)
    bench.run(8.0, 1.0, program_running=1.0)
    assert bench.ctrl.state is State.AIR
    assert bench.ctrl.target_pct() == pytest.approx(54.0)


inputs = st.tuples(
    st.sampled_from([0.01, 0.02, 0.05, 0.4]),
    st.one_of(st.floats(-10, 200), st.just(math.nan)),
    st.booleans(),  # link up
    st.sampled_from([0.0, 1.0]),  # alarm
    st.sampled_from([0.0, 1.0, 1.0, 1.0]),  # program running
    st.sampled_from([30.0, 100.0, 100.0]),  # knob
)


@settings(max_examples=200, deadline=None)
@given(st.lists(inputs, max_size=300))
def test_any_input_sequence_keeps_the_override_in_range_and_faults_never_raise(seq):
    bench = Bench(cfg=dataclasses.replace(CFG, idle_load_pct=0.0))
    for dt, load, link_up, alarm, running, knob in seq:
        before = bench.ctrl.override
        bench.ctrl.link_up = link_up
        out = bench.poll(load, dt, in_alarm=alarm, program_running=running, feed_knob=knob)
        if out is None:
            continue
        assert 0.0 <= out <= CFG.override_max_pct
        if bench.ctrl.state is State.FAULT and before is not None:
            assert out <= before


def test_a_severe_overload_holds_before_the_persistence_time_a_slight_one_waits_it_out():
    """As a drive's I2t: 44 points over the limit hold in a quarter of overload_persist_s
    (before a drive that trips at 150 % for 1 s would); 5 points over wait the whole time."""
    severe = cutting_bench()
    start = severe.t
    while severe.ctrl.state is not State.HOLD and severe.t - start < 2.0:
        severe.poll(CFG.hard_limit_pct + 44.0)
    assert "overload" in severe.kinds()
    assert severe.t - start <= 0.25 * CFG.overload_persist_s + 0.05
    slight = cutting_bench()
    start = slight.t
    while slight.ctrl.state is not State.HOLD and slight.t - start < 2.0:
        slight.poll(CFG.hard_limit_pct + 5.0)
    assert CFG.overload_persist_s <= slight.t - start <= CFG.overload_persist_s + 0.05
