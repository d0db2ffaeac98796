"""Frame bodies v0: what goes in comes back out, per channel, to the millisecond."""

import math

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.samples import Quality, Sample
from edge_agent.telemetry.frames import Batcher, event_body, unpack_samples

T0 = 1_800_000_000_000_000_000

samples_strategy = st.lists(
    st.builds(
        Sample,
        channel=st.sampled_from(["spindle_load", "x_position", "spindle_on"]),
        stamp_ns=st.integers(T0, T0 + 10**12),
        value=st.floats(allow_nan=True, allow_infinity=True),
        quality=st.sampled_from(list(Quality)),
    ),
    max_size=300,
)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@given(samples_strategy)
def test_close_gives_back_every_sample_per_channel_to_the_ms(samples):
    batcher = Batcher("boot", {"site": "s", "machine": "m"})
    for sample in samples:
        batcher.add(sample)
    body = batcher.close()
    if not samples:
        assert body is None
        return
    decoded = unpack_samples(body)
    for channel in {s.channel for s in samples}:
        want = [s for s in samples if s.channel == channel]
        got = [s for s in decoded if s.channel == channel]
        assert len(got) == len(want)
        for w, g in zip(want, got, strict=True):
            assert g.stamp_ns == w.stamp_ns // 1_000_000 * 1_000_000
            assert same(g.value, w.value) and g.quality == w.quality


def test_close_empties_the_batcher():
    batcher = Batcher("boot", {})
    batcher.add(Sample("a", T0, 1.0))
    assert batcher.points == 1
    assert batcher.close() is not None
    assert batcher.points == 0 and batcher.close() is None


def test_envelope_names_boot_machine_and_base_time():
    batcher = Batcher("b1", {"site": "plant-a", "machine": "mill-07"})
    batcher.add(Sample("a", T0 + 5_000_000, 2.0))
    batcher.add(Sample("b", T0 + 3_000_000, 1.0))
    frame = msgpack.unpackb(batcher.close())
    assert (frame["v"], frame["type"], frame["boot"], frame["site"], frame["machine"]) == (
        0,
        "data",
        "b1",
        "plant-a",
        "mill-07",
    )
    assert frame["t0"] == (T0 + 3_000_000) // 1_000_000
    assert frame["ch"]["a"]["t"] == [2]


def test_quality_list_is_left_out_when_every_point_is_good():
    batcher = Batcher("b", {})
    batcher.add(Sample("a", T0, 1.0))
    batcher.add(Sample("b", T0, math.nan, Quality.BAD))
    channels = msgpack.unpackb(batcher.close())["ch"]
    assert "q" not in channels["a"] and channels["b"]["q"] == [2]


def test_event_body_carries_kind_detail_and_time():
    frame = msgpack.unpackb(event_body("b", T0 + 1_500_000, "clock_jump", {"jump_ns": 5}))
    assert frame == {
        "v": 0,
        "type": "event",
        "boot": "b",
        "t": (T0 + 1_500_000) // 1_000_000,
        "kind": "clock_jump",
        "detail": {"jump_ns": 5},
    }


def test_t0_is_the_earliest_stamp_even_when_a_channel_arrives_out_of_order():
    batcher = Batcher("b", {})
    batcher.add(Sample("a", T0 + 7_000_000, 1.0))
    batcher.add(Sample("a", T0 + 2_000_000, 2.0))
    frame = msgpack.unpackb(batcher.close())
    assert frame["t0"] == (T0 + 2_000_000) // 1_000_000
    assert frame["ch"]["a"]["t"] == [5, 0]


def test_add_says_when_the_frame_is_full():
    batcher = Batcher("b", {}, max_points=3)
    assert [batcher.add(Sample("a", T0 + i, 1.0)) for i in range(3)] == [False, False, True]
    assert len(unpack_samples(batcher.close())) == 3
    assert batcher.points == 0
