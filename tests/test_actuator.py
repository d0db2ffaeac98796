"""The one actuator on simulated time: whitelist, clamps, rate limit, refresh and read-back.

Time is passed in as ns; nothing sleeps. The writer is a fake that records what would have
gone to the machine.
"""

import asyncio
import dataclasses
import logging
import math

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from edge_agent.config import ConfigError, ControlConfig
from edge_agent.control.actuator import Actuator
from edge_agent.registers import Table, Tag, ValueType
from edge_agent.sources.modbus import writable_tags
from edge_agent.sources.modbus_config import ControllerConfig
from edge_agent.sources.modbus_link import ModbusLink
from hil.register_map import BY_NAME

pytestmark = pytest.mark.timeout(60)

CFG = ControlConfig(enabled=True)  # rise 60 %/s, max 150 %, no refresh, verify 0.5 s
OVERRIDE = CFG.override_tag
T0 = 1_000_000_000_000  # an arbitrary monotonic start, ns
LOGGER = "edge_agent.control.actuator"


def at(t_s: float) -> int:
    """Simulated time `t_s` seconds after T0, in ns."""
    return T0 + round(t_s * 1e9)


class FakeWriter:
    """Records (tag name, value) instead of writing to a controller, and which were urgent."""

    def __init__(self):
        self.writes: list[tuple[str, float]] = []
        self.urgent: list[bool] = []

    def write(self, tag, value, urgent=False):
        self.writes.append((tag.name, value))
        self.urgent.append(urgent)

    @property
    def values(self) -> list[float]:
        return [value for _, value in self.writes]


def actuator(cfg=CFG):
    writer = FakeWriter()
    return Actuator(cfg, BY_NAME, writer), writer


# -- refusals --------------------------------------------------------------------------------


def test_a_register_not_whitelisted_is_refused_counted_and_logged_once(caplog):
    act, writer = actuator()
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for i in range(3):
        assert act.set("spindle_load", 50.0, at(i * 0.01)) is None
    assert writer.writes == []
    assert act.counters["not_whitelisted"] == 3
    refusals = [r for r in caplog.records if "spindle_load" in r.getMessage()]
    assert len(refusals) == 1


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_value_that_is_not_a_number_is_refused_and_counted(value):
    act, writer = actuator()
    act.set(OVERRIDE, 100.0, at(0))
    assert act.set(OVERRIDE, value, at(0.01)) is None
    assert act.set(OVERRIDE, value, at(0.02)) is None
    assert writer.values == [100.0]
    assert act.counters["not_finite"] == 2


@pytest.mark.parametrize(("asked", "written"), [(-5.0, 0.0), (151.0, 150.0), (1e9, 150.0)])
def test_a_value_out_of_range_is_clamped_to_zero_and_the_maximum_and_counted(asked, written):
    act, writer = actuator()
    assert act.set(OVERRIDE, asked, at(0)) == written
    assert writer.writes == [(OVERRIDE, written)]
    assert act.counters["clamped"] == 1


# -- only whole registers of its own ---------------------------------------------------------


def _refused(tags: list[Tag], writable: str) -> str:
    """The Modbus source's check of what the actuator is handed (made with the agent)."""
    cfg = dataclasses.replace(CFG, override_tag=writable, writable=(writable,))
    with pytest.raises(ConfigError) as caught:
        writable_tags(cfg, {t.name: t for t in tags})
    message = str(caught.value)
    assert "\n" not in message and repr(writable) in message
    return message


def test_a_bitfield_tag_is_refused_when_the_actuator_is_made():
    tags = [
        Tag("override", 100, Table.HOLDING, ValueType.BITFIELD, bit=0, width=8),
        Tag("coolant_on", 100, Table.HOLDING, ValueType.BITFIELD, bit=8),
    ]
    assert "bitfield (bits 0..7 of register 100)" in _refused(tags, "override")


def test_a_bitfield_tag_alone_in_its_register_is_refused_too():
    tags = [Tag("override", 100, Table.HOLDING, ValueType.BITFIELD, bit=0, width=16)]
    assert "clobber" in _refused(tags, "override")


def test_a_tag_sharing_a_register_with_another_is_refused():
    tags = [
        Tag("override", 100, Table.HOLDING, ValueType.UINT32),
        Tag("spindle_enable", 101, Table.HOLDING, ValueType.UINT16),
    ]
    assert "shares holding register 101 with 'spindle_enable'" in _refused(tags, "override")


def test_a_tag_outside_the_holding_registers_is_refused():
    tags = [Tag("override", 100, Table.INPUT, ValueType.UINT16)]
    assert "only holding registers are written" in _refused(tags, "override")


def test_a_whole_register_tag_beside_bitfields_of_other_registers_is_accepted():
    tags = [
        Tag("override", 100, Table.HOLDING, ValueType.UINT16),
        Tag("coolant_on", 101, Table.HOLDING, ValueType.BITFIELD, bit=8),
        Tag("same_address_other_table", 100, Table.INPUT, ValueType.UINT16),
    ]
    cfg = dataclasses.replace(CFG, override_tag="override", writable=("override",))
    assert writable_tags(cfg, {t.name: t for t in tags}) == {"override": tags[0]}


def test_the_actuator_refuses_a_writable_name_its_source_cannot_write():
    cfg = dataclasses.replace(CFG, override_tag="override", writable=("override",))
    with pytest.raises(ConfigError, match="'override' cannot be written"):
        Actuator(cfg, {}, FakeWriter())


def test_an_agent_whose_override_is_a_bitfield_refuses_to_start(tmp_path):
    from edge_agent.service import Agent
    from hil.demo import demo_config

    config = demo_config(spool=str(tmp_path / "spool.db"))
    tags = tuple(
        dataclasses.replace(t, type=ValueType.BITFIELD, bit=0, width=8) if t.name == OVERRIDE else t
        for t in config.tags
    )
    with pytest.raises(ConfigError, match="bitfield"):
        Agent(dataclasses.replace(config, tags=tags))
    assert not (tmp_path / "spool.db").exists()  # refused before anything started


# -- falls and rises -------------------------------------------------------------------------


def test_a_fall_to_a_feed_hold_is_written_at_once():
    act, writer = actuator()
    act.set(OVERRIDE, 150.0, at(0))
    assert act.set(OVERRIDE, 0.0, at(0.01)) == 0.0
    assert writer.values == [150.0, 0.0]


def test_a_fall_stops_at_the_register_resolution_below_what_was_asked():
    act, writer = actuator()
    act.set(OVERRIDE, 120.0, at(0))
    assert act.set(OVERRIDE, 73.6, at(0.01)) == 73.0


def test_a_rise_is_limited_to_the_rise_rate():
    act, writer = actuator()
    act.set(OVERRIDE, 100.0, at(0))
    assert act.set(OVERRIDE, 150.0, at(0.1)) is None  # asked now: no allowance yet
    # 0.1 s after it was asked, at 60 %/s: 6 % of the 50 % asked.
    assert act.set(OVERRIDE, 150.0, at(0.2)) == 106.0
    assert act.counters["rate_limited"] == 2


def test_a_rise_asked_once_keeps_ramping_on_tick_until_it_reaches_the_target():
    act, writer = actuator()
    act.set(OVERRIDE, 100.0, at(0))
    act.read_back(OVERRIDE, 100.0)
    act.set(OVERRIDE, 130.0, at(0.01))  # asked once, never again
    ramp = []  # (t_s, value) of each write
    for i in range(2, 200):
        written = act.tick(at(i * 0.01))
        if written is not None:
            ramp.append((i * 0.01, written))
            act.read_back(OVERRIDE, written)  # the poll sees every write
    values = [value for _, value in ramp]
    assert len(values) > 2 and values == sorted(values)  # many steps, only rising
    reached_s = next(t for t, value in ramp if value == 130.0)
    assert reached_s >= 30.0 / CFG.rise_pct_per_s - 1e-9  # 30 % at 60 %/s from 100 at 0 s
    assert reached_s < 1.5
    assert act.value[OVERRIDE] == 130.0


ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["set", "tick"]),
        st.one_of(
            st.floats(-20.0, 200.0, allow_nan=False),
            st.sampled_from([0.0, 150.0, math.nan, math.inf]),
        ),
        st.integers(0, 1_500_000_000),  # ns since the previous call
    ),
    min_size=1,
    max_size=40,
)


def drive(actions):
    """Run the actions; return [(time ns, register value after the call, written or None,
    whether the actuator took the call: a refused value leaves it untouched)]."""
    act, writer = actuator()
    now, history = T0, []
    for kind, value, step_ns in actions:
        now += step_ns
        before = len(writer.writes)
        if kind == "set":
            act.set(OVERRIDE, value, now)
        else:
            act.tick(now)
        new = writer.values[before:]
        assert len(new) <= 1  # one register: at most one write per call
        register = new[-1] if new else (history[-1][1] if history else None)
        taken = kind == "tick" or math.isfinite(value)
        history.append((now, register, new[-1] if new else None, taken))
    return history


@given(ACTIONS)
def test_every_written_value_is_a_whole_percent_within_the_bounds(actions):
    for _, _, written, _ in drive(actions):
        if written is not None:
            assert written == math.floor(written)
            assert 0.0 <= written <= CFG.override_max_pct


@given(ACTIONS)
def test_between_two_writes_the_value_never_rises_faster_than_the_rate(actions):
    """Rate x time between the writes, plus one step of the register's resolution (a ramp
    that keeps its fraction between writes may cross a whole percent sooner)."""
    writes = [(t, w) for t, _, w, _ in drive(actions) if w is not None]
    for (t1, v1), (t2, v2) in zip(writes, writes[1:], strict=False):
        assert v2 - v1 <= CFG.rise_pct_per_s * (t2 - t1) / 1e9 + 1.0 + 1e-6


def test_a_rise_after_a_steady_spell_is_still_rate_limited():
    act, writer = actuator()
    act.set(OVERRIDE, 100.0, at(0))
    act.read_back(OVERRIDE, 100.0)
    act.set(OVERRIDE, 100.0, at(0.5))  # holding steady: nothing to write
    act.set(OVERRIDE, 150.0, at(0.51))  # a rise asked now may move 0.6 % in 10 ms
    assert max(writer.values) <= 101.0


@given(ACTIONS)
@example([("set", 100.0, 0), ("set", 100.0, 400_000_000), ("set", 150.0, 10_000_000)])
def test_over_any_window_the_register_never_rises_faster_than_the_rate(actions):
    """The register as the actuator saw it at each call it took: over any window, it rises
    by at most the rate times the window, plus one step of the register's resolution (the
    value is floored)."""
    history = [(t, v) for t, v, _, taken in drive(actions) if v is not None and taken]
    for i, (t2, v2) in enumerate(history):
        for t1, v1 in history[:i]:
            assert v2 - v1 <= CFG.rise_pct_per_s * (t2 - t1) / 1e9 + 1.0 + 1e-6


# -- refresh and read-back -------------------------------------------------------------------


def test_by_default_an_unchanged_value_read_back_is_written_once_however_long():
    act, writer = actuator()
    act.set(OVERRIDE, 100.0, at(0))
    act.read_back(OVERRIDE, 100.0)
    for i in range(1, 6001):  # a minute of 100 Hz ticks
        act.set(OVERRIDE, 100.0, at(i * 0.01))
        act.tick(at(i * 0.01))
    assert writer.values == [100.0]


def test_with_refresh_s_an_unchanged_value_is_rewritten_after_refresh_s_and_not_before():
    cfg = dataclasses.replace(CFG, refresh_s=1.0)
    act, writer = actuator(cfg)
    act.set(OVERRIDE, 100.0, at(0))
    act.read_back(OVERRIDE, 100.0)
    for t in (0.25, 0.5, 0.75, 0.999):
        assert act.set(OVERRIDE, 100.0, at(t)) is None
        assert act.tick(at(t)) is None
    assert act.tick(at(cfg.refresh_s)) == 100.0
    assert writer.values == [100.0, 100.0]


def test_a_write_that_reads_back_equal_is_verified():
    act, writer = actuator()
    act.set(OVERRIDE, 100.0, at(0))
    act.read_back(OVERRIDE, 100.0)
    assert act.counters["verified"] == 1
    assert act.tick(at(CFG.verify_s + 0.1)) is None  # verified: nothing to re-send
    assert act.counters["not_read_back"] == 0


def test_a_read_back_of_another_value_verifies_nothing():
    act, writer = actuator()
    act.set(OVERRIDE, 100.0, at(0))
    act.read_back(OVERRIDE, 90.0)
    assert act.counters["verified"] == 0


def test_a_write_not_read_back_within_verify_s_is_counted_and_resent():
    act, writer = actuator()
    act.set(OVERRIDE, 100.0, at(0))
    assert act.tick(at(CFG.verify_s - 0.01)) is None
    assert act.tick(at(CFG.verify_s)) == 100.0
    assert act.counters["not_read_back"] == 1
    assert writer.values == [100.0, 100.0]


def test_a_resent_write_gets_another_verify_s_before_the_next_resend():
    act, writer = actuator()
    act.set(OVERRIDE, 100.0, at(0))
    act.tick(at(CFG.verify_s))  # the first re-send
    for i in range(1, 10):
        act.tick(at(CFG.verify_s + i * 0.01))
    assert writer.values == [100.0, 100.0]
    assert act.counters["not_read_back"] == 1


# -- urgency and the last write --------------------------------------------------------------


def test_an_urgent_target_is_written_urgent_and_so_are_its_resends():
    act, writer = actuator()
    act.set(OVERRIDE, 150.0, at(0))
    act.set(OVERRIDE, 100.0, at(0.01), urgent=True)
    act.tick(at(0.01 + CFG.verify_s))  # not read back: re-sent, still urgent
    act.set(OVERRIDE, 90.0, at(1.0))
    assert writer.values == [150.0, 100.0, 100.0, 90.0]
    assert writer.urgent == [False, True, True, False]


def test_close_writes_min_of_current_and_safe_urgently_then_refuses_everything():
    act, writer = actuator()
    act.set(OVERRIDE, 150.0, at(0))
    assert act.close(OVERRIDE, 100.0, at(0.01)) == 100.0
    assert act.set(OVERRIDE, 150.0, at(0.02)) is None  # a control thread not yet stopped
    assert act.tick(at(5.0)) is None
    assert writer.values == [150.0, 100.0] and writer.urgent == [False, True]


def test_close_below_the_safe_value_writes_nothing():
    act, writer = actuator()
    act.set(OVERRIDE, 80.0, at(0))
    assert act.close(OVERRIDE, 100.0, at(0.01)) is None
    assert writer.values == [80.0]


# -- one writer by construction --------------------------------------------------------------


def test_the_link_hands_out_its_one_writer_only_once():
    link = ModbusLink(ControllerConfig())
    loop = asyncio.new_event_loop()
    try:
        writer = link.take_writer(loop)
        assert writer is not None
        with pytest.raises(RuntimeError, match="already taken"):
            link.take_writer(loop)
    finally:
        loop.close()


def test_a_ramp_read_back_a_little_late_is_verified_not_resent():
    """A rise writes every 10 ms; the poll (10 Hz) reads back the value written 100 ms
    before. Every write lands, so none is re-sent however long the ramp."""
    act, writer = actuator()
    act.read_back(OVERRIDE, 50.0)
    sent: list[tuple[float, float]] = []
    for k in range(1, 201):  # 2 s of ramp from 50 % towards 150 % at 60 %/s
        t = k * 0.01
        value = act.set(OVERRIDE, 150.0, at(t))
        if value is not None:
            sent.append((t, value))
        if k % 10 == 0 and k > 10:
            act.read_back(OVERRIDE, [v for s, v in sent if s <= t - 0.1][-1])
    assert act.counters["not_read_back"] == 0
    assert act.counters["verified"] >= 15  # most read-backs find a write still unverified
    assert len(writer.values) == len(sent) and writer.values[-1] > 150 - 60 * 0.9


def test_a_ramp_whose_writes_never_read_back_is_still_caught():
    act, writer = actuator()
    act.read_back(OVERRIDE, 50.0)
    for k in range(1, 101):
        act.set(OVERRIDE, 150.0, at(k * 0.01))
        if k % 10 == 0:
            act.read_back(OVERRIDE, 42.0)  # the controller holds something else
    assert act.counters["not_read_back"] == 1  # at verify_s after the first write
    assert act.counters["verified"] == 0


# -- the refresh in the configuration ---------------------------------------------------------


def _demo_with_control(extra: str):
    from importlib import resources

    from edge_agent.config import parse_config

    text = resources.files("edge_agent.defaults").joinpath("demo.toml").read_text()
    return parse_config(text.replace("[control]\n", f"[control]\n{extra}\n", 1))


def test_refresh_s_is_off_by_default_and_zero_is_accepted():
    assert ControlConfig().refresh_s == 0.0
    assert _demo_with_control("").control.refresh_s == 0.0
    assert _demo_with_control("refresh_s = 0").control.refresh_s == 0.0
    assert _demo_with_control("refresh_s = 1.5").control.refresh_s == 1.5


def test_a_negative_refresh_s_is_refused():
    with pytest.raises(ConfigError, match="refresh_s"):
        _demo_with_control("refresh_s = -1.0")
