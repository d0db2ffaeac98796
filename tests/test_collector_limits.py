"""The collector under hostile input (issue 16, items 11 and 12): what is stored is never
replaced (a disagreeing copy is a recorded conflict), names that alias paths are refused, and
every size is bounded before it is paid for, in time linear in the payload: payloads by kind,
channels, values a frame claims, rejected bodies and rows, the decoded-table cache, sums."""

import array
import hashlib
import math
import random
import re
import time
import tracemalloc

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.cli import main
from edge_agent.collector import ingest
from edge_agent.collector import store as store_module
from edge_agent.collector.ingest import Collector
from edge_agent.collector.store import REJECT_BODY_BYTES, SqliteStore
from edge_agent.config import ConfigError, parse_config
from edge_agent.kernels.valuepack import COUNTED, pack
from edge_agent.telemetry import wire
from edge_agent.telemetry.wire import Channel, Series
from tests.test_collector import (
    BOOT_A,
    MACHINE,
    RECEIVED,
    T0,
    TABLE,
    balanced,
    birth,
    data,
    event,
    gap_event,
    loads_of,
    msg,
    topic,
)
from tests.test_config import MINIMAL


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "collector.db")
    yield s
    s.close()


@pytest.fixture
def collector(store):
    return Collector(store)


def channels(n, group=0, name="c"):
    return [Channel(a, f"{name}{a}", "u", 1.0, "sampled", 100_000, group) for a in range(n)]


# -- what is stored is never replaced -----------------------------------------------------


def test_a_conflict_keeps_the_first_and_is_recorded_with_both_digests(collector, store):
    first, forged = data(2), data(2, loads=(9.0, 9.0, 9.0))
    collector.ingest_many([msg("birth", birth()), msg("data", first)])
    counts = collector.ingest(*msg("data", forged, received_ns=RECEIVED + 7))
    assert (counts["conflicts"], counts["stored"]) == (1, 0)
    assert store.payload_body(MACHINE, BOOT_A, 2) == first
    assert [v for _, v in loads_of(store)] == pytest.approx([50.1, 50.3, 50.2])
    (conflict,) = store.conflicts(MACHINE)
    assert conflict == store_module.Conflict(
        MACHINE,
        BOOT_A,
        2,
        "data",
        RECEIVED + 7,
        hashlib.sha256(first).digest(),
        hashlib.sha256(forged).digest(),
        "content",
    )
    assert store.counts(MACHINE)["conflicts"] == 1 and balanced(collector.counters)


def test_a_conflicting_copy_of_a_birth_does_not_bring_the_machine_back_online(collector, store):
    other_agent = wire.birth(BOOT_A, 1, T0, "6.6.6", bytes(8), TABLE)  # same boot and seq
    collector.ingest_many(
        [
            msg("birth", birth(), received_ns=RECEIVED),
            msg("death", wire.death(BOOT_A, 1), received_ns=RECEIVED + 5),
            msg("birth", other_agent, received_ns=RECEIVED + 7),
            msg("death", wire.death(BOOT_A, 1), received_ns=RECEIVED + 9),
        ]
    )
    # Only a true copy of the birth means "online again"; the second death repeats the first.
    assert [d.received_ns for d in store.deaths(MACHINE)] == [RECEIVED + 5]
    assert [c.what for c in store.conflicts(MACHINE)] == ["content"]


def test_a_further_birth_with_another_table_is_a_recorded_conflict_and_changes_nothing(
    collector, store
):
    other_table = wire.birth(BOOT_A, 5, T0, "0.3.0", bytes(8), channels(3))
    collector.ingest_many(
        [msg("birth", birth()), msg("death", wire.death(BOOT_A, 1), received_ns=RECEIVED + 5)]
    )
    counts = collector.ingest(*msg("birth", other_table, received_ns=RECEIVED + 7))
    assert counts["birth_conflicts"] == 1
    assert store.channel_table(MACHINE, BOOT_A) == TABLE
    (conflict,) = store.conflicts(MACHINE)
    assert (conflict.seq, conflict.what) == (5, "channel_table")
    first = store.payload_body(MACHINE, BOOT_A, 1)
    assert conflict.stored_sha256 == hashlib.sha256(first).digest()
    # Not online again: a death copy after it is still a duplicate.
    collector.ingest(*msg("death", wire.death(BOOT_A, 1), received_ns=RECEIVED + 9))
    assert len(store.deaths(MACHINE)) == 1


def test_conflicts_keep_only_the_newest_rows(collector, store, monkeypatch):
    monkeypatch.setattr(store_module, "CONFLICTS_KEPT", 3)
    collector.ingest_many([msg("birth", birth()), msg("data", data(2))])
    for i in range(8):
        collector.ingest(*msg("data", data(2, loads=(float(i),) * 3), received_ns=RECEIVED + i))
    assert [c.received_ns for c in store.conflicts()] == [RECEIVED + i for i in (5, 6, 7)]
    assert collector.counters["conflicts"] == 8


@pytest.mark.parametrize(
    "bad_topic",
    ["edge/../mill7/data", "edge/plant1/../data", "edge/./mill7/data", "edge/plant1/./data"],
)
def test_dot_and_dotdot_are_refused_as_a_site_or_a_machine(collector, store, bad_topic):
    counts = collector.ingest(bad_topic, data(2), RECEIVED)
    assert counts["bad"] == 1
    (reject,) = store.rejects()
    assert "is not 1-64 of letters, digits, '_', '.', '-', and not '.' or '..'" in reject.error
    assert store.machines() == []


@pytest.mark.parametrize("key", ["site", "machine_id"])
@pytest.mark.parametrize("value", [".", ".."])
def test_the_agent_config_refuses_dot_and_dotdot_as_a_site_or_machine_id(key, value):
    text = re.sub(rf'^{key} = ".*"$', f'{key} = "{value}"', MINIMAL, count=1, flags=re.M)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "agent.toml")
    assert f"machine.{key}: must be 1-64 of letters, digits" in str(caught.value)
    assert "and not '.' or '..', got" in str(caught.value)


# -- sizes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("event", event(2, "note", {"text": "x" * (64 << 10)})),
        ("death", wire.death(BOOT_A, 1) + bytes(1 << 10)),
        ("birth", bytes((1 << 20) + 1)),
        ("data", bytes((8 << 20) + 1)),
    ],
    ids=["event", "death", "birth", "data"],
)
def test_a_payload_over_its_kinds_limit_is_refused_unread(collector, store, kind, payload):
    counts = collector.ingest(*msg(kind, payload))
    assert counts["bad"] == 1
    (reject,) = store.rejects()
    limit = wire.MAX_PAYLOAD_BYTES[kind]
    assert reject.error == f"{kind}: payload of {len(payload)} bytes, over the {limit} maximum"


def test_a_rejected_body_is_kept_as_a_prefix_with_its_size(collector, store):
    junk = b"\xc1" + bytes(1 << 20)  # a megabyte that is not msgpack
    collector.ingest(*msg("data", junk))
    (reject,) = store.rejects()
    assert (reject.body, reject.size) == (junk[:REJECT_BODY_BYTES], len(junk))


def test_rejects_keep_only_the_newest_rows(collector, store, monkeypatch):
    monkeypatch.setattr(store_module, "REJECTS_KEPT", 5)
    for i in range(12):
        collector.ingest(topic("data"), b"\xc1", RECEIVED + i)
    assert [r.received_ns for r in store.rejects()] == [RECEIVED + i for i in range(7, 12)]
    assert collector.counters["bad"] == 12


def test_an_error_line_quoting_what_a_client_sent_is_bounded(collector, store, caplog):
    row = ["x" * 60_000, "u", [1, 0], 9, 0, 0]  # kind 9 does not exist
    bad = msgpack.packb([1, 0, BOOT_A, 1, T0, {"agent": "a", "cfg": bytes(8), "ch": [row]}])
    collector.ingest(*msg("birth", bad))
    (reject,) = store.rejects()
    assert reject.error.startswith("birth: channel 0: bad row ['xxx")
    assert len(reject.error) <= 400
    assert all(len(r.getMessage()) < 700 for r in caplog.records)


def test_a_birth_with_more_channels_than_the_limit_is_refused(collector, store):
    table = channels(wire.MAX_CHANNELS + 1)
    collector.ingest(*msg("birth", wire.birth(BOOT_A, 1, T0, "x", bytes(8), table)))
    (reject,) = store.rejects()
    assert reject.error == f"birth: {wire.MAX_CHANNELS + 1} channels, over the 4096 maximum"


@pytest.mark.timeout(20)
def test_the_hostile_birth_of_65535_channels_and_a_repeated_name_is_refused_in_linear_time(
    collector, store
):
    """The issue's 0.97 MB birth stalled ingest for 39 s (a quadratic search for the name)."""

    def hostile_birth(seq, n):
        rows = [[f"c{a:04x}", "%", [1, 0], 0, 0, None] for a in range(n - 1)]
        rows.append(rows[0])
        return msgpack.packb([1, 0, BOOT_A, seq, T0, {"agent": "a", "cfg": bytes(8), "ch": rows}])

    payload = hostile_birth(1, 65_535)
    assert 0.9e6 < len(payload) < wire.MAX_PAYLOAD_BYTES["birth"]
    started = time.process_time()
    assert collector.ingest(*msg("birth", payload))["bad"] == 1
    assert time.process_time() - started < 2.0  # some 0.1 s here
    assert "65535 channels, over the 4096 maximum" in store.rejects()[-1].error
    # At the limit the search for a repeated name is linear too.
    started = time.process_time()
    assert collector.ingest(*msg("birth", hostile_birth(2, wire.MAX_CHANNELS)))["bad"] == 1
    assert time.process_time() - started < 1.0
    assert store.rejects()[-1].error == "birth: more than one channel named 'c0000'"


def million_value_frame(n_channels=127, seq=2):
    """77 bytes that claim 8192 values for a stamp series and each of `n_channels` channels
    sharing it: 1,040,384 rows, each frame, on the code before the fix."""
    block = pack(
        array.array("i", [8192] * (n_channels + 1)),
        array.array("q", bytes(8 * 8192 * (n_channels + 1))),
        array.array("i", [COUNTED] + [0] * n_channels),
    )
    return msgpack.packb([1, 1, BOOT_A, seq, T0, True, block])


def test_a_frame_claiming_a_million_values_is_refused_from_its_counts(collector, store):
    table = channels(127)
    collector.ingest(*msg("birth", wire.birth(BOOT_A, 1, T0, "x", bytes(8), table)))
    frame = million_value_frame()
    assert len(frame) < 100
    counts = collector.ingest_many([msg("data", million_value_frame(seq=s)) for s in range(2, 12)])
    assert (counts["bad"], counts["samples"]) == (10, 0)
    assert store.counts()["samples"] == 0
    assert "claims 1048576 values or more, over 400000" in store.rejects()[0].error


def test_gap_counts_past_64_bits_in_sum_are_summed_and_status_prints_them(
    collector, store, tmp_path, capsys
):
    top = (1 << 63) - 1
    collector.ingest_many([msg("event", gap_event(s, 1, top, top, boot=BOOT_A)) for s in (2, 3, 4)])
    assert store.counts()["dropped"] == 3 * top
    store.close()
    assert main(["collect", "status", str(tmp_path / "collector.db")]) == 0
    assert f"({3 * top} frames dropped by the agent)" in capsys.readouterr().out


def test_the_table_cache_is_bounded_in_channels(store, monkeypatch):
    monkeypatch.setattr(ingest, "TABLE_CACHE_CHANNELS", 10)
    collector = Collector(store)
    for m in range(5):
        collector.ingest(*msg("birth", birth(), machine=f"plant1/m{m}"))
    cached = collector._tables
    assert sum(map(len, cached.values())) <= 10 and collector._cached_channels == 9
    assert list(cached) == [(f"plant1/m{m}", BOOT_A) for m in (2, 3, 4)]
    big = wire.birth(BOOT_A, 1, T0, "x", bytes(8), channels(40))
    collector.ingest(*msg("birth", big, machine="plant1/big"))
    assert list(cached) == [("plant1/big", BOOT_A)]  # the newest stays, even alone too big
    collector.ingest(*msg("data", data(2), machine="plant1/m0"))  # a miss reads the store
    assert len(loads_of(store, "plant1/m0")) == 3


# -- the agent's largest payloads are taken --------------------------------------------------


def test_the_agents_largest_birth_is_within_the_limits():
    longest = "x" * 64 + "_filtered"  # a tag name's limit and the filtered suffix
    table = [
        Channel(a, f"{longest[:-6]}{a:05d}"[-73:], "mm/min", 0.001, "sampled", 100_000, a)
        for a in range(wire.MAX_CHANNELS)
    ]
    payload = wire.birth(BOOT_A, 1, T0, "0.3.0+long.version", bytes(8), table, "fw-1.2.3")
    wire.check_size(payload, "birth")
    assert len(wire.channels_of(wire.decode(payload))) == wire.MAX_CHANNELS


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worst", ["random_values", "all_stale"])
def test_the_agents_largest_data_frame_is_within_the_limits(worst):
    """Twice MAX_FRAME_POINTS (the frame limit and what may arrive before it is taken), on
    on-change channels (a stamp per value: the most numbers), as incompressible as the agent
    makes them or with every sample flagged (the longest quality list)."""
    rng = random.Random(7)
    n = 25
    per = 2 * wire.MAX_FRAME_POINTS // n
    table = [Channel(a, f"c{a}", "u", 0.001, "on_change", 0, None) for a in range(n)]
    series = {}
    for a in range(n):
        stamps = tuple(T0 + 1000 * i + rng.randrange(1000) for i in range(per))
        if worst == "random_values":
            values = tuple(rng.randrange(-(1 << 47), 1 << 47) / 1000 for _ in range(per))
            series[a] = Series(stamps, values)
        else:
            series[a] = Series(stamps, (math.nan,) * per, tuple((i, 1) for i in range(per)))
    payload = wire.data(BOOT_A, 2, table, series)
    wire.check_size(payload, "data")
    decoded = wire.samples(wire.decode(payload), table)
    assert sum(len(s.values) for s in decoded.values()) == 2 * wire.MAX_FRAME_POINTS


def test_the_agents_largest_event_is_within_the_limits():
    from firmware_bridge import protocol

    room = protocol.MAX_PAYLOAD - len(protocol.pack_identity("", ""))
    identity = protocol.check_identity(protocol.pack_identity("f" * (room // 2), "b" * (room // 2)))
    wire.check_size(event(2, "bridge_identified", identity), "event")


def test_the_agents_frame_limit_is_the_wires():
    text = MINIMAL + "\n[telemetry]\nmax_points_per_frame = {}\n"
    assert parse_config(text.format(wire.MAX_FRAME_POINTS)).telemetry.max_points_per_frame == (
        wire.MAX_FRAME_POINTS
    )
    with pytest.raises(ConfigError, match="max_points_per_frame"):
        parse_config(text.format(wire.MAX_FRAME_POINTS + 1))


# -- hostile payloads, fuzzed ------------------------------------------------------------------

#: What one hostile message may cost the collector at most (its payloads here are small; the
#: bounds catch amplification: a few bytes that make megabytes or seconds of work).
FUZZ_PEAK_BYTES = 32 << 20
FUZZ_CPU_S = 1.0

_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 64), (1 << 64) - 1),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.binary(max_size=40),
)
_structure = st.recursive(
    _leaf,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=30,
)


def _claiming_block(n_channels: int, cut: int) -> bytes:
    """The block of a frame claiming 8192 values for each of `n_channels` + 1 series, or its
    first `cut` bytes."""
    block = msgpack.unpackb(million_value_frame(n_channels))[-1]
    return block[:cut] if cut else block


_block = st.binary(max_size=64) | st.builds(
    _claiming_block, st.integers(1, 127), st.integers(0, 40)
)


def _envelope(kind, boot, seq, rest):
    return msgpack.packb([1, kind, boot, seq, T0, *rest], default=repr)


hostile = st.one_of(
    st.binary(max_size=200),
    st.just(million_value_frame()),  # on WIDE: 1,040,384 rows before the fix
    _structure.map(lambda v: msgpack.packb(v, default=repr)),
    st.builds(
        _envelope,
        st.integers(-1, 4),
        st.sampled_from([BOOT_A, b"", bytes(9)]),
        st.integers(-2, 1 << 64) | st.just(2),
        st.lists(_structure | _block | st.just(True), max_size=4),
    ),
    st.builds(  # a real frame with bits flipped or cut short
        lambda payload, cut, flips: bytes(
            b ^ (1 << (i % 8)) if i in flips else b for i, b in enumerate(payload[:cut])
        ),
        st.sampled_from([birth(), data(2), event(3), gap_event(4, 1, 3, 2)]),
        st.integers(0, 400),
        st.sets(st.integers(0, 400), max_size=4),
    ),
)


WIDE = "plant1/wide"  # a machine of 127 channels in one time group: what `_block` aims at


@pytest.mark.timeout(120)
@settings(suppress_health_check=[HealthCheck.too_slow])
@given(payload=hostile, kind=st.sampled_from(wire.KINDS), machine=st.sampled_from([MACHINE, WIDE]))
def test_hostile_payloads_never_raise_and_cost_bounded_memory_and_time(payload, kind, machine):
    store = SqliteStore(":memory:")  # a fresh one per example: nothing is a duplicate
    try:
        collector = Collector(store)
        wide = wire.birth(BOOT_A, 1, T0, "x", bytes(8), channels(127))
        collector.ingest_many([msg("birth", birth()), msg("birth", wide, machine=WIDE)])
        started = time.process_time()
        tracemalloc.start()
        try:
            counts = collector.ingest(*msg(kind, payload, machine=machine))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert time.process_time() - started < FUZZ_CPU_S
        assert peak < FUZZ_PEAK_BYTES
        assert counts["received"] == 1 and balanced(counts)
    finally:
        store.close()
