"""The Modbus poll core, sans-IO: any sequence of replies, failures and times, no link."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config import parse_config
from edge_agent.samples import Quality
from edge_agent.sources.modbus_poll import ILLEGAL_DATA_ADDRESS, PollCore
from tests.test_modbus_poller import CONFIG

pytestmark = pytest.mark.timeout(60)

STALE_NS = 300_000_000  # CONFIG's stale_after_s

outcomes = st.lists(
    st.tuples(
        st.sampled_from(["good", "nan", "timeout", "exception"]),
        st.integers(1, 250_000_000),  # time to the next cycle, ns
    ),
    max_size=40,
)


def _reply(planned, kind):
    """The registers of a reply (0x7FC0 in each: the float tag reads NaN), or an exception
    code."""
    if kind == "exception":
        return 4  # server device failure
    count = planned.request.count
    if kind == "nan":
        return [0x7FC0] * count
    return [i + 1 for i in range(count)]


@settings(max_examples=200, deadline=None)
@given(outcomes)
def test_a_value_goes_stale_once_per_silence_with_its_last_good_value(script):
    core = PollCore(parse_config(CONFIG))
    now, last_good, stale_said = 0, {}, set()
    for kind, step in script:
        now += step
        for planned in list(core.plans["fast"]):
            core.sent()
            if kind == "timeout":
                core.failed(planned, "timeout", "")
                continue
            samples, instead = core.replied("fast", planned, _reply(planned, kind), now, now)
            assert instead == []  # no request of this plan has a gap
            for s in samples:
                if s.quality is Quality.GOOD:
                    last_good[s.channel] = s.value
                    stale_said.discard(s.channel)
                else:
                    assert s.quality is Quality.BAD and (math.isnan(s.value) or kind == "nan")
        for s in core.cycle_done("fast", now, now, now):
            assert s.quality is Quality.STALE
            assert s.channel not in stale_said  # once per silence
            stale_said.add(s.channel)
            assert s.value == last_good.get(s.channel, s.value) or math.isnan(s.value)
    assert core.counters["requests"] == len(script) * core.requests_per_cycle["fast"]
    assert core.group_stats["fast"].cycles == len(script)


def test_a_refused_gap_is_split_into_the_plan_and_read_now():
    core = PollCore(parse_config(CONFIG))  # spindle_load and spindle_power: one gapped read
    gapped = next(p for p in core.plans["fast"] if p.request.has_gaps)
    samples, instead = core.replied("fast", gapped, ILLEGAL_DATA_ADDRESS, 0, 0)
    assert samples == [] and len(instead) == 2
    assert all(not p.request.has_gaps for p in instead)
    assert all(p in core.plans["fast"] for p in instead) and gapped not in core.plans["fast"]
    # Refused again, gap-free: the tags read BAD, and nothing is split further.
    samples, again = core.replied("fast", instead[0], ILLEGAL_DATA_ADDRESS, 0, 0)
    assert again == [] and [s.quality for s in samples] == [Quality.BAD] * len(samples)
    assert core.counters["exception_02"] == 2
