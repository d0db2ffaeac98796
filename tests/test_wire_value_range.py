"""What a frame cannot carry never stops the agent: a value of more quanta than the wire's
+-(2^48 - 1) (a controller's float register may hold 3e38) or a difference from a `ref` that
large travels as bad, and a frame closes before one of its series outgrows the packed block
(8192 values). Each of these raised a WireError out of the agent's frame task (found by the
config property test, tests/test_config_property.py)."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.kernels.valuepack import MAX_ABS, MAX_COUNT
from edge_agent.samples import Sample
from edge_agent.telemetry import wire
from edge_agent.telemetry.batcher import FrameBuilder

MS = 1_000_000
BOOT = bytes(8)
FLOAT = wire.Channel(0, "programmed_feed", "mm/min", 0.001, "sampled", 20_000, 0)
REF = wire.Channel(1, "command", "mm", 0.001, "sampled", 20_000, 0)
ACTUAL = wire.Channel(2, "actual", "mm", 0.001, "sampled", 20_000, 0, ref=1)


def round_trip(table, series) -> dict:
    return wire.samples(wire.decode(wire.data(BOOT, 1, table, series)), table)


def test_a_value_past_what_its_quantum_carries_travels_as_bad():
    stamps = (0, 20_000, 40_000, 60_000)
    series = {0: wire.Series(stamps, (12.5, 3.1e16, -math.inf, 7.0))}
    decoded = round_trip([FLOAT], series)["programmed_feed"]
    assert decoded.values[0] == 12.5 and decoded.values[3] == 7.0
    assert math.isnan(decoded.values[1]) and math.isnan(decoded.values[2])
    assert decoded.quality == ((1, 2), (2, 2))


def test_a_difference_from_the_ref_past_what_the_wire_carries_travels_as_bad():
    big = MAX_ABS * 0.001 * 0.9  # each in range, their difference not
    stamps = (0, 20_000)
    series = {1: wire.Series(stamps, (big, 1.0)), 2: wire.Series(stamps, (-big, 2.0))}
    decoded = round_trip([FLOAT, REF, ACTUAL], series)
    assert math.isnan(decoded["actual"].values[0]) and decoded["actual"].values[1] == 2.0
    assert decoded["actual"].quality == ((0, 2),)
    assert decoded["command"].values == (pytest.approx(big), 1.0)


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=40))
def test_any_float_a_register_may_hold_encodes_and_decodes(values):
    stamps = tuple(i * 20_000 for i in range(len(values)))
    decoded = round_trip([FLOAT], {0: wire.Series(stamps, tuple(values))})["programmed_feed"]
    for sent, got in zip(values, decoded.values, strict=True):
        if math.isfinite(sent) and abs(sent / 0.001) <= MAX_ABS:
            assert got == pytest.approx(sent, abs=0.0006)
        else:
            assert math.isnan(got)


def test_a_frame_is_full_before_one_series_outgrows_the_packed_block():
    from edge_agent.telemetry.batcher import SERIES_FULL

    builder = FrameBuilder([FLOAT], {}, max_points=1_000_000)
    full = [builder.add("programmed_feed", Sample("x", i * MS, 1.0), 0) for i in range(SERIES_FULL)]
    assert full.index(True) == SERIES_FULL - 1 and SERIES_FULL <= MAX_COUNT // 2
    series = builder.take()
    assert len(round_trip([FLOAT], series)["programmed_feed"].values) == SERIES_FULL
