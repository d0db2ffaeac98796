"""From samples to data frames: the channel table from the config, report-by-exception, and
the frame builder's alignment of a time group's channels."""

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.config import ChannelConfig, ConfigError, parse_config
from edge_agent.samples import Quality, Sample
from edge_agent.telemetry import wire
from edge_agent.telemetry.batcher import ChangeFilter, FrameBuilder
from edge_agent.telemetry.channels import change_filters, channel_table
from tests.test_config import MINIMAL

pytestmark = pytest.mark.timeout(60)

MS = 1_000_000


def config(extra=""):
    return parse_config(MINIMAL + extra)


def test_the_channel_table_has_every_tag_in_its_poll_groups_time_group():
    table = channel_table(config())
    assert [(c.name, c.quantum, c.kind, c.period_us, c.group) for c in table] == [
        ("spindle_load", 0.1, "sampled", 100_000, 0),
        ("feed_override", 1.0, "sampled", 100_000, 0),
    ]


def test_channel_settings_quantum_report_ref_and_a_filtered_twin():
    cfg = config(
        """
[channels.spindle_load]
quantum = 0.5
filters = [{kind = "decimate", factor = 2}]
telemetry = "both"

[channels.feed_override]
report = "on_change"
deadband = 2
"""
    )
    table = channel_table(cfg)
    rows = [(c.name, c.quantum, c.kind, c.period_us, c.group) for c in table]
    assert rows == [
        ("spindle_load", 0.5, "sampled", 100_000, 0),
        ("spindle_load_filtered", 0.5, "sampled", 200_000, 1),  # decimated: a group of its own
        ("feed_override", 1.0, "on_change", 0, None),
    ]
    assert set(change_filters(cfg, table)) == {"feed_override"}


def test_a_ref_to_a_channel_of_another_quantum_is_refused():
    ref = '\n[channels.feed_override]\nref = "spindle_load"\n'
    with pytest.raises(ConfigError, match="feed_override.ref: 'spindle_load' travels in quanta"):
        config(ref)  # the configuration says so, before the agent starts
    cfg = config("")
    channels = {"feed_override": ChannelConfig("feed_override", ref="spindle_load")}
    with pytest.raises(wire.WireError, match="ref must name another channel of the same quantum"):
        channel_table(dataclasses.replace(cfg, channels=channels))


def test_on_change_reports_past_the_deadband_on_quality_change_and_on_heartbeat():
    change = ChangeFilter(deadband=1.0, deadband_pct=0.0, heartbeat_ns=10_000 * MS)
    sent = [
        change.offer(v, q, t * MS)
        for v, q, t in [
            (10.0, Quality.GOOD, 0),  # first: always
            (10.9, Quality.GOOD, 100),  # within the band
            (11.1, Quality.GOOD, 200),  # past it (from 10.0)
            (11.1, Quality.STALE, 300),  # quality changed
            (11.1, Quality.STALE, 5000),
            (11.1, Quality.STALE, 10_300),  # heartbeat: 10 s after the last one sent
        ]
    ]
    assert sent == [True, False, True, True, False, True]


def test_a_percent_deadband_is_relative_to_the_last_value_sent():
    change = ChangeFilter(deadband=0.0, deadband_pct=5.0, heartbeat_ns=10**12)
    assert [change.offer(v, Quality.GOOD, 0) for v in (100.0, 104.0, 106.0, 111.0)] == [
        True,
        False,
        True,
        False,
    ]


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50))
def test_with_no_deadband_every_change_and_only_a_change_is_sent(values):
    change = ChangeFilter(0.0, 0.0, 10**15)
    sent = [change.offer(v, Quality.GOOD, 0) for v in values]
    expected = [True] + [b != a for a, b in zip(values, values[1:], strict=False)]
    assert sent == expected


TABLE = [
    wire.Channel(0, "load", "%", 0.1, "sampled", 20_000, 0),
    wire.Channel(1, "speed", "rpm", 1.0, "sampled", 20_000, 0),
    wire.Channel(2, "tool", "", 1.0, "on_change", 0, None),
]


def test_a_group_channel_missing_a_cycle_gets_its_last_value_marked_stale():
    builder = FrameBuilder(TABLE, {"tool": ChangeFilter(0, 0, 10**15)}, max_points=100)
    for i in range(3):
        builder.add("load", Sample("load", i * 20 * MS, 50.0 + i), 0)
        if i != 1:
            builder.add("speed", Sample("speed", i * 20 * MS, 6000.0), 0)
        builder.add("tool", Sample("tool", i * 20 * MS, 3.0), 0)
    series = builder.take()
    assert series[1].values == (6000.0, 6000.0, 6000.0)
    assert series[1].quality == ((1, int(Quality.STALE)),)
    assert series[2].stamps_us == (0,)  # on change: the one change
    payload = wire.data(bytes(8), 1, TABLE, series)
    decoded = wire.samples(wire.decode(payload), TABLE)
    assert math.isnan(decoded["speed"].values[1])
    assert builder.take() == {}


def test_add_says_when_the_frame_is_full_and_take_starts_a_new_one():
    builder = FrameBuilder(TABLE, {}, max_points=3)
    full = [builder.add("load", Sample("load", i * 20 * MS, 1.0), 0) for i in range(3)]
    assert full == [False, False, True]
    assert len(builder.take()[0].values) == 3 and builder.points == 0


def test_samples_of_channels_not_in_the_table_are_ignored():
    builder = FrameBuilder(TABLE, {}, max_points=10)
    assert builder.add("unknown", Sample("unknown", 0, 1.0), 0) is False
    assert builder.take() == {}


def test_a_bad_sample_travels_as_the_last_good_value_and_decodes_as_nan():
    builder = FrameBuilder(TABLE[:1], {}, max_points=10)
    builder.add("load", Sample("load", 0, 50.0), 0)
    builder.add("load", Sample("load", 20 * MS, math.nan, Quality.BAD), 0)
    series = builder.take()
    assert series[0].quality == ((1, int(Quality.BAD)),)
    decoded = wire.samples(wire.decode(wire.data(bytes(8), 1, TABLE[:1], series)), TABLE[:1])
    assert decoded["load"].values[0] == pytest.approx(50.0) and math.isnan(
        decoded["load"].values[1]
    )


cycles = st.lists(
    st.tuples(
        st.one_of(st.none(), st.integers(-(10**6), 10**6)),  # load: None = no sample this cycle
        st.one_of(st.none(), st.integers(0, 24_000)),  # speed
        st.integers(0, 20),  # tool: on change
    ),
    min_size=1,
    max_size=60,
)


@given(cycles)
def test_any_cycles_round_trip_through_builder_frame_and_decoder(rows):
    """Gaps (a channel missing from a cycle), extremes and constant runs: every sample comes
    back to its quantum at its stamp; a gap comes back as a stale NaN; on-change channels
    come back at their changes."""
    builder = FrameBuilder(TABLE, {"tool": ChangeFilter(0, 0, 10**15)}, max_points=10**6)
    for i, (load, speed, tool) in enumerate(rows):
        stamp = i * 20 * MS
        if load is not None:
            builder.add("load", Sample("load", stamp, load * 0.1), stamp)
        if speed is not None:
            builder.add("speed", Sample("speed", stamp, float(speed)), stamp)
        builder.add("tool", Sample("tool", stamp, float(tool)), stamp)
    series = builder.take()
    decoded = wire.samples(wire.decode(wire.data(bytes(8), 1, TABLE, series)), TABLE)
    stamps = [i * 20_000 for i, row in enumerate(rows) if row[0] is not None or row[1] is not None]
    for position, name in ((0, "load"), (1, "speed")):
        if all(row[position] is None for row in rows):
            assert name not in decoded
            continue
        got = decoded[name]
        assert list(got.stamps_us) == stamps
        sent = {
            i * 20_000: row[position] for i, row in enumerate(rows) if row[position] is not None
        }
        quantum = TABLE[position].quantum
        for stamp, value in zip(got.stamps_us, got.values, strict=True):
            if stamp in sent:
                assert round(value / quantum) == sent[stamp]
            else:
                assert math.isnan(value)
    changes = [i * 20_000 for i, row in enumerate(rows) if i == 0 or row[2] != rows[i - 1][2]]
    assert list(decoded["tool"].stamps_us) == changes
