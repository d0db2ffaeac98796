"""The control loop on simulated time: what one tick takes and writes, and the thread's
schedule (`_run`) driven by a fake clock and a fake sleep, so nothing here waits."""

import dataclasses
import logging
import queue
from dataclasses import dataclass, field

import pytest

from edge_agent.config import ControlConfig
from edge_agent.control.actuator import Actuator
from edge_agent.control.adaptive import AdaptiveController
from edge_agent.control.loop import ControlLoop
from edge_agent.samples import Sample
from hil.register_map import BY_NAME
from tests import test_adaptive
from tests.test_actuator import FakeWriter

pytestmark = pytest.mark.timeout(60)

# The load does not vary in these tests: the frozen-sensor check is off.
# The air boost opted in (150 %): these tests watch the writes it makes in air.
CFG = ControlConfig(enabled=True, idle_load_pct=8.0, frozen_s=0.0, air_override_pct=150.0)
OVERRIDE = CFG.override_tag
PERIOD_NS = round(CFG.period_s * 1e9)
T0 = 5_000_000_123  # an arbitrary monotonic start, ns: the schedule is relative to it
MACHINE = {**test_adaptive.MACHINE, "spindle_load": 8.0}


class FakeClock:
    def __init__(self, t_ns=T0):
        self.t_ns = t_ns

    def __call__(self):
        return self.t_ns


@dataclass
class Rig:
    loop: ControlLoop
    clock: FakeClock
    writer: FakeWriter
    inbox: queue.SimpleQueue
    events: list = field(default_factory=list)
    link: list = field(default_factory=lambda: [True])

    def poll(self, arrived_ns=None, **values):
        """One poll of every control input, arriving at `arrived_ns` (default: now)."""
        arrived_ns = self.clock.t_ns if arrived_ns is None else arrived_ns
        machine = {**MACHINE, **values}
        self.inbox.put(
            [(arrived_ns, Sample(name, arrived_ns, value)) for name, value in machine.items()]
        )

    def tick(self, advance_s=0.0):
        self.clock.t_ns += round(advance_s * 1e9)
        self.loop.tick(self.clock.t_ns)


def rig(cfg=CFG, sleep=None):
    clock, writer, inbox = FakeClock(), FakeWriter(), queue.SimpleQueue()
    controller = AdaptiveController(cfg)
    actuator = Actuator(cfg, BY_NAME, writer)
    events, link = [], [True]
    loop = ControlLoop(
        controller,
        actuator,
        inbox,
        link_up=lambda: link[0],
        on_events=events.extend,
        clock_ns=clock,
        sleep=sleep or (lambda s: None),
    )
    return Rig(loop, clock, writer, inbox, events, link)


# -- one tick --------------------------------------------------------------------------------


def test_the_controller_needs_every_input_before_it_leaves_starting():
    r = rig()
    r.poll()
    r.tick()
    assert r.loop.controller.state != "starting"
    assert set(r.loop.controller.inputs) <= set(MACHINE)


def test_every_sample_in_the_inbox_is_taken_in_one_tick():
    r = rig()
    r.poll(arrived_ns=T0 - 3_000_000)
    r.inbox.put([(T0 - 2_000_000, Sample("spindle_load", T0 - 2_000_000, 9.0))])
    r.inbox.put([(T0 - 1_000_000, Sample("spindle_load", T0 - 1_000_000, 9.5))])
    r.tick()
    assert r.inbox.empty()
    latest = r.loop.controller.latest
    assert set(latest) == set(MACHINE)
    assert latest["spindle_load"] == (T0 - 1_000_000, Sample("spindle_load", T0 - 1_000_000, 9.5))
    assert r.loop.ticks == 1


def test_a_tick_with_an_empty_inbox_takes_nothing_and_writes_nothing():
    r = rig()
    r.tick()
    assert r.writer.writes == []
    assert r.loop.controller.state == "starting"


def in_air_at_130_then_link_down(r, arrived_before_s=0.0):
    """In air with the register at 130 % (nothing to write: it holds what the law wants),
    then a poll and the link lost: the fault writes the safe 100 % in answer to the poll."""
    r.poll(agent_feed_override=130.0)
    r.tick()
    assert r.loop.controller.state == "air" and r.writer.writes == []
    r.clock.t_ns += 10_000_000
    r.link[0] = False
    r.poll(arrived_ns=r.clock.t_ns - round(arrived_before_s * 1e9), agent_feed_override=130.0)
    r.tick()
    assert r.writer.writes == [(OVERRIDE, 100.0)]


def test_a_write_answering_a_sample_has_its_latency_measured_from_the_sample_arrival():
    r = rig()
    in_air_at_130_then_link_down(r, arrived_before_s=0.003)
    assert r.loop.latency.count == 1
    assert r.loop.latency.percentile(100) == pytest.approx(0.003)


def test_a_write_that_answers_no_new_signal_sample_adds_no_latency():
    r = rig()
    in_air_at_130_then_link_down(r)  # one latency
    for _ in range(110):  # no more samples; the unread write is re-sent after verify_s
        r.tick(0.01)
    assert len(r.writer.writes) > 1
    assert r.loop.latency.count == 1


def test_the_override_read_back_reaches_the_actuator_and_verifies_the_write():
    r = rig()
    in_air_at_130_then_link_down(r)
    r.poll(agent_feed_override=100.0)
    r.tick(0.01)
    assert r.loop.actuator.counters["verified"] == 1


def test_a_read_back_of_another_value_does_not_verify_the_write():
    r = rig()
    in_air_at_130_then_link_down(r)
    r.poll(agent_feed_override=90.0)
    r.tick(0.01)
    assert r.loop.actuator.counters["verified"] == 0


@pytest.mark.parametrize(("current", "safe"), [(130.0, 100.0), (80.0, 80.0)])
def test_link_down_faults_the_controller_and_commands_min_of_current_and_safe(current, safe):
    r = rig()
    r.poll(agent_feed_override=current)
    r.tick()
    assert r.writer.values == []  # in air: the override read is kept, nothing to write
    r.link[0] = False
    r.poll(agent_feed_override=current)
    r.tick(0.01)
    assert r.loop.controller.state == "fault"
    assert r.loop.actuator.value[OVERRIDE] == safe
    assert max(r.writer.values, default=current) <= current  # a fault never raises
    to_fault = [d for kind, d in r.events if kind == "control_state" and d["to"] == "fault"]
    assert to_fault and to_fault[0]["reason"] == "controller link down"


def test_state_changes_reach_on_events():
    r = rig()
    r.poll()
    r.tick()
    changes = [(d["from"], d["to"]) for kind, d in r.events if kind == "control_state"]
    assert changes == [("starting", "idle"), ("idle", "air")]


def test_on_events_is_not_called_when_there_are_none():
    calls = []
    r = rig()
    r.loop.on_events = calls.append
    r.poll()
    r.tick()
    r.poll()
    r.tick(0.01)
    assert len(calls) == 1  # the state changes of the first tick only


# -- what is written while idle, and how urgently ---------------------------------------------


def run(r, seconds, **machine):
    """`seconds` of 100 Hz ticks with a 10 Hz poll that reads the override back."""
    for i in range(round(seconds * 100)):
        if i % 10 == 0:
            read_back = r.loop.actuator.value.get(OVERRIDE, 100.0)
            r.poll(**{**machine, OVERRIDE: read_back})
        r.tick(0.01)


def boosted_then_idle(cfg=CFG):
    """Air moves boost the feed; then the program ends: returns the rig and the number of
    writes before the end."""
    r = rig(cfg)
    run(r, 2.0)
    assert r.loop.controller.state == "air" and r.writer.values[-1] > 100.0
    before = len(r.writer.writes)
    run(r, 0.1, program_running=0.0)
    assert r.loop.controller.state == "idle"
    return r, before


def test_idle_for_a_minute_writes_once_the_neutral_return():
    r, before = boosted_then_idle()
    run(r, 60.0, program_running=0.0)
    assert r.writer.values[before:] == [CFG.neutral_override_pct]


def test_idle_with_refresh_s_rewrites_the_neutral_value_on_schedule():
    cfg = dataclasses.replace(CFG, refresh_s=1.0)
    r, before = boosted_then_idle(cfg)
    run(r, 60.0, program_running=0.0)
    rewrites = r.writer.values[before:]
    assert set(rewrites) == {cfg.neutral_override_pct} and 60 <= len(rewrites) <= 61


def test_control_writes_are_not_urgent_a_fault_and_a_feed_hold_are():
    r = rig()
    run(r, 1.0)
    assert r.writer.values and not any(r.writer.urgent)  # the air boost
    r.link[0] = False
    run(r, 0.1)
    assert r.loop.controller.state == "fault" and r.writer.urgent[-1] is True
    assert r.writer.values[-1] == CFG.safe_override_pct


def test_a_feed_hold_is_urgent():
    r = rig()
    run(r, 1.0)
    run(r, CFG.idle_settle_s + CFG.overload_persist_s + 1.0, spindle_load=CFG.hard_limit_pct + 20)
    assert r.loop.controller.state == "hold"
    assert r.writer.values[-1] == 0.0 and r.writer.urgent[-1] is True


# -- the thread's schedule -------------------------------------------------------------------


class FakeSleep:
    """Advances the fake clock by what was asked (plus any oversleep planned for a call) and
    stops the loop after `ticks` sleeps, from inside the sleep as the thread would see it."""

    def __init__(self, clock, ticks, oversleep_ns=None):
        self.clock, self.ticks = clock, ticks
        self.oversleep_ns = oversleep_ns or {}  # call index -> extra ns
        self.asked_s: list[float] = []
        self.loop: ControlLoop | None = None

    def __call__(self, seconds):
        self.clock.t_ns += round(seconds * 1e9) + self.oversleep_ns.get(len(self.asked_s), 0)
        self.asked_s.append(seconds)
        if len(self.asked_s) >= self.ticks:
            self.loop._stop.set()


def run_for(r, sleep):
    r.loop.sleep = sleep
    sleep.loop = r.loop
    tick_times = []
    real_tick = r.loop.tick

    def tick(now_ns):
        tick_times.append(now_ns)
        real_tick(now_ns)

    r.loop.tick = tick
    r.loop._run()
    return tick_times


def test_an_on_time_loop_ticks_on_the_grid_with_no_lateness_or_overruns():
    r = rig()
    sleep = FakeSleep(r.clock, ticks=5)
    times = run_for(r, sleep)
    assert times == [T0 + k * PERIOD_NS for k in range(5)]
    assert r.loop.overruns == 0
    assert r.loop.lateness.count == 5
    assert r.loop.lateness.percentile(100) == 0.0


def test_the_time_a_tick_takes_comes_out_of_the_sleep():
    r = rig()
    sleep = FakeSleep(r.clock, ticks=4)
    real_update = r.loop.controller.update

    def slow_update(now_ns, arrivals):
        r.clock.t_ns += 3_000_000  # the tick takes 3 ms
        return real_update(now_ns, arrivals)

    r.loop.controller.update = slow_update
    times = run_for(r, sleep)
    assert times == [T0 + k * PERIOD_NS for k in range(4)]
    assert sleep.asked_s == pytest.approx([0.007] * 4)


def test_an_oversleep_of_two_and_a_half_periods_counts_two_overruns_and_keeps_the_grid():
    r = rig()
    late_ns = round(2.5 * PERIOD_NS)
    sleep = FakeSleep(r.clock, ticks=6, oversleep_ns={1: late_ns})
    times = run_for(r, sleep)
    # The tick due at 2 periods runs 2.5 periods late; those due at 3 and 4 are skipped
    # (overruns); the schedule then resumes on the original grid.
    assert times == [T0, T0 + PERIOD_NS, T0 + 2 * PERIOD_NS + late_ns] + [
        T0 + k * PERIOD_NS for k in (5, 6, 7)
    ]
    assert r.loop.overruns == 2
    assert r.loop.lateness.count == 6
    assert r.loop.lateness.percentile(100) == pytest.approx(late_ns / 1e9)
    assert r.loop.lateness.percentile(80) == 0.0  # only the one late tick


@pytest.mark.parametrize(("current", "held"), [(140.0, 100.0), (80.0, 80.0)])
def test_a_tick_that_raises_does_not_kill_the_loop_and_holds_min_of_current_and_safe(
    current, held, caplog
):
    r = rig()
    r.loop.actuator.set(OVERRIDE, current, T0 - PERIOD_NS)
    r.writer.writes.clear()

    def broken_update(now_ns, arrivals):
        raise RuntimeError("a bug in the control law")

    r.loop.controller.update = broken_update
    sleep = FakeSleep(r.clock, ticks=5)
    with caplog.at_level(logging.ERROR, logger="edge_agent.control.loop"):
        times = run_for(r, sleep)
    assert len(times) == 5  # the loop kept its schedule through every failure
    assert r.loop.actuator.value[OVERRIDE] == held
    assert all(value <= held for value in r.writer.values)  # never raised
    assert r.writer.values == ([held] if held < current else [])
    assert any("tick failed" in rec.getMessage() for rec in caplog.records)


class WakingSleep(FakeSleep):
    """Like FakeSleep, but the call numbered `wake_at` is cut short after `after_ns` by a
    sample's arrival (returns True, as Event.wait does when set)."""

    def __init__(self, clock, ticks, wake_at, after_ns):
        super().__init__(clock, ticks)
        self.wake_at, self.after_ns = wake_at, after_ns

    def __call__(self, seconds):
        if len(self.asked_s) == self.wake_at:
            self.clock.t_ns += self.after_ns
            self.asked_s.append(seconds)
            return True
        super().__call__(seconds)
        return False


def test_a_sample_arriving_between_deadlines_is_answered_at_once_off_the_schedule():
    r = rig()
    sleep = WakingSleep(r.clock, ticks=5, wake_at=1, after_ns=3_000_000)
    times = run_for(r, sleep)
    # ticks at 0 and 1 period, an extra one 3 ms after the second, then the grid again
    assert times == [T0, T0 + PERIOD_NS, T0 + PERIOD_NS + 3_000_000] + [
        T0 + k * PERIOD_NS for k in (2, 3)
    ]
    assert r.loop.early_ticks == 1
    assert r.loop.lateness.count == 4  # only the scheduled ticks are measured for lateness
    assert r.loop.lateness.percentile(100) == 0.0
    assert sleep.asked_s[2] == pytest.approx(0.007)  # the rest of the period, not a new one


def test_an_early_tick_that_raises_holds_the_safe_override_and_the_loop_keeps_its_schedule(
    caplog,
):
    r = rig()
    r.loop.actuator.set(OVERRIDE, 140.0, T0 - PERIOD_NS)
    r.writer.writes.clear()
    r.writer.urgent.clear()
    real_update = r.loop.controller.update
    early_ns = T0 + PERIOD_NS + 3_000_000
    written_before = []

    def update_failing_early(now_ns, arrivals):
        if now_ns == early_ns:
            written_before.append(len(r.writer.writes))
            raise RuntimeError("a bug in the control law")
        return real_update(now_ns, arrivals)

    r.loop.controller.update = update_failing_early
    sleep = WakingSleep(r.clock, ticks=5, wake_at=1, after_ns=3_000_000)
    with caplog.at_level(logging.ERROR, logger="edge_agent.control.loop"):
        times = run_for(r, sleep)
    assert times == [T0, T0 + PERIOD_NS, early_ns] + [T0 + k * PERIOD_NS for k in (2, 3)]
    assert r.loop.early_ticks == 1
    assert written_before == [0]  # the scheduled ticks before it wrote nothing
    assert r.writer.values[0] == CFG.safe_override_pct  # min(140, safe), by the early tick
    assert r.writer.urgent[0] is True
    assert all(value <= CFG.safe_override_pct for value in r.writer.values)
    assert any("tick failed" in rec.getMessage() for rec in caplog.records)


def test_notify_wakes_the_real_wait():
    r = rig()
    loop = r.loop
    loop.sleep = loop._wake.wait
    loop.notify()
    assert loop.sleep(10.0) is True  # returns at once: woken


def test_realtime_priority_asks_for_sched_fifo_and_survives_a_refusal(monkeypatch, caplog):
    from edge_agent.control import loop as control_loop

    asked = []

    def refuse(pid, policy, param):
        asked.append((pid, policy, param.sched_priority))
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(control_loop.os, "sched_setscheduler", refuse)
    control_loop._realtime(0)
    assert asked == []  # 0: normal scheduling, nothing asked
    with caplog.at_level("WARNING"):
        control_loop._realtime(40)
    assert asked == [(0, control_loop.os.SCHED_FIFO, 40)]  # pid 0: the calling thread
    assert "SCHED_FIFO priority 40 refused (Operation not permitted)" in caplog.text
