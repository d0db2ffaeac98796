"""Filter chains from the configuration: built per channel, streaming equals block, bad
samples recover, and the agent ships raw, filtered or both."""

import array
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.config import ConfigError, parse_config
from edge_agent.filters.chain import FilterChain
from edge_agent.samples import Quality, Sample
from edge_agent.service import Agent
from edge_agent.telemetry import wire

BASE = """\
[machine]
site = "s"
machine_id = "m"
[controller]
[poll_groups.fast]
period_s = 0.01
[[tags]]
name = "spindle_load"
address = 0
table = "input"
type = "uint16"
poll_group = "fast"
[[tags]]
name = "spindle_speed"
address = 1
table = "input"
type = "uint16"
poll_group = "fast"
"""

CHAIN = """
[channels.spindle_load]
filters = [
  {kind = "hampel", window = 5},
  {kind = "lowpass", order = 4, cutoff_hz = 5.0},
  {kind = "ema", tau_s = 0.05},
  {kind = "moving_rms", window = 8},
]
"""


def config(extra=CHAIN, spool="spool.db"):
    return parse_config(BASE + extra + f'\n[spool]\npath = "{spool}"\n', "agent.toml")


def chain(extra=CHAIN):
    return FilterChain(config(extra).channels["spindle_load"])


def signal(n, seed=1):
    import random

    rng = random.Random(seed)
    return [
        50 + 10 * math.sin(i / 7) + rng.gauss(0, 2) + (80 if i % 37 == 0 else 0) for i in range(n)
    ]


def same(a, b):
    return len(a) == len(b) and all(
        (math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b, strict=True)
    )


@given(st.lists(st.integers(1, 40), min_size=1, max_size=20))
def test_sample_by_sample_equals_any_split_into_blocks(sizes):
    x = signal(sum(sizes))
    one = chain()
    pushed = [one.push(v) for v in x]
    blocks, start, c = [], 0, chain()
    for size in sizes:
        blocks += list(c.process(array.array("d", x[start : start + size])))
        start += size
    assert same(pushed, blocks)


def test_a_nan_gives_a_bad_output_and_the_chain_recovers_as_if_new():
    x = signal(200)
    c = chain()
    for v in x[:100]:
        c.push(v)
    assert math.isnan(c.push(math.nan))
    recovered = [c.push(v) for v in x[101:]]
    fresh = chain()
    assert same(recovered, [fresh.push(v) for v in x[101:]])
    assert all(math.isfinite(v) for v in recovered)


def test_infinity_is_treated_like_nan():
    c = chain()
    c.push(10.0)
    assert math.isnan(c.push(math.inf))
    assert math.isfinite(c.push(10.0))


def test_decimation_keeps_every_factor_th_sample_and_lowers_the_rate():
    c = chain('[channels.spindle_load]\nfilters = [{kind = "decimate", factor = 4}]\n')
    assert c.output_rate_hz == 25.0
    outputs = [c.push(v) for v in signal(40)]
    assert sum(v is not None for v in outputs) == 10


def test_a_lowpass_after_decimation_is_checked_against_the_lower_rate():
    with pytest.raises(ConfigError, match=r"below 12\.5 \(half the 25 Hz sampling rate\)"):
        config(
            '[channels.spindle_load]\nfilters = [{kind = "decimate", factor = 4}, '
            '{kind = "lowpass", order = 2, cutoff_hz = 20.0}]\n'
        )


def test_channel_for_an_unknown_tag_is_refused():
    with pytest.raises(ConfigError, match=r"channels\.feed: unknown key"):
        config("[channels.feed]\nfilters = []\n")


def test_unknown_filter_kind_is_named():
    with pytest.raises(ConfigError, match=r"filters\[0\]\.kind: must be one of lowpass"):
        config('[channels.spindle_load]\nfilters = [{kind = "kalman"}]\n')


def test_bandpass_needs_low_below_high():
    with pytest.raises(ConfigError, match=r"filters\[0\]\.high_hz: must be above low_hz"):
        config(
            '[channels.spindle_load]\nfilters = [{kind = "bandpass", order = 2, '
            "low_hz = 10.0, high_hz = 5.0}]\n"
        )


def frame_channels(agent):
    """The next data frame's samples by channel name, decoded as a consumer would."""
    payload = wire.data(agent.boot, 1, agent.journal.table, agent.journal.builder.take())
    return {
        name: [v for v in series.values]
        for name, series in wire.samples(wire.decode(payload), agent.journal.table).items()
    }


def feed(agent, values, quality=Quality.GOOD):
    agent._on_samples(
        [Sample("spindle_load", 10**18 + i * 10**7, v, quality) for i, v in enumerate(values)]
    )


@pytest.mark.parametrize(
    "mode, channels",
    [
        ("filtered", {"spindle_load"}),
        ("raw", {"spindle_load"}),
        ("both", {"spindle_load", "spindle_load_filtered"}),
    ],
)
def test_telemetry_ships_raw_filtered_or_both(tmp_path, mode, channels):
    agent = Agent(config(CHAIN + f'telemetry = "{mode}"\n', spool=tmp_path / "s.db"))
    x = signal(50)
    feed(agent, x)
    shipped = frame_channels(agent)
    assert set(shipped) == channels
    quantum = agent.journal.table[0].quantum
    raw_shipped = shipped["spindle_load"]
    as_sent = [round(v / quantum) * quantum for v in x]
    assert (raw_shipped == pytest.approx(as_sent)) == (mode != "filtered")
    assert agent.filtered["spindle_load"].value != agent.latest["spindle_load"].value


def test_stale_samples_pass_the_chain_unfiltered(tmp_path):
    agent = Agent(config(spool=tmp_path / "s.db"))
    feed(agent, [42.0], Quality.STALE)
    assert agent.filtered["spindle_load"] == agent.latest["spindle_load"]


def test_bad_samples_come_out_bad(tmp_path):
    agent = Agent(config(spool=tmp_path / "s.db"))
    feed(agent, [10.0, math.nan])
    assert agent.filtered["spindle_load"].quality is Quality.BAD
