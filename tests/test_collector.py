"""The plant-side collector: agents' payloads (built by `wire`) in, de-duplicated, decoded rows
stored in SQLite; bad input counted and logged one line each, never fatal."""

import csv
import io
import json
import logging
import math
import sqlite3

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.collector import ingest
from edge_agent.collector.ingest import Collector
from edge_agent.collector.store import Sample, SqliteStore, Store, StoreError
from edge_agent.telemetry import wire
from edge_agent.telemetry.wire import Channel, Series

BOOT_A = bytes.fromhex("0123456789abcdef")
BOOT_B = bytes.fromhex("fedcba9876543210")
T0 = 1_800_000_000_000_000  # µs since the epoch
RECEIVED = T0 * 1000  # ns since the epoch
MACHINE = "plant1/mill7"
LOGGER = "edge_agent.collector"
TABLE = [
    Channel(0, "spindle_load", "%", 0.1, "sampled", 100_000, 0),
    Channel(1, "spindle_speed", "rpm", 1.0, "sampled", 100_000, 0),
    Channel(2, "tool_number", "", 1.0, "on_change", 0, None),
]


def topic(kind, machine=MACHINE):
    return f"edge/{machine}/{kind}"


def birth(boot=BOOT_A, seq=1, table=TABLE):
    return wire.birth(boot, seq, T0, "0.3.0", bytes(8), table)


def frame_t(seq):
    """Frame `seq` starts `seq` seconds after T0: stamps and seqs agree in every test."""
    return T0 + seq * 1_000_000


def data(seq, boot=BOOT_A, loads=(50.1, 50.3, 50.2), historical=False, quality=()):
    t = frame_t(seq)
    stamps = tuple(t + i * 100_000 for i in range(len(loads)))
    series = {
        0: Series(stamps, tuple(loads), quality),
        1: Series(stamps, (6000.0,) * len(loads)),
        2: Series((t + 50_000,), (float(seq),)),
    }
    return wire.data(boot, seq, TABLE, series, historical)


def event(seq, kind="agent_start", detail=None, boot=BOOT_A):
    return wire.event(
        boot, seq, frame_t(seq), kind, {"version": "0.3.0"} if detail is None else detail
    )


def gap_event(seq, first, last, count, reason="disk_budget", boot=BOOT_A):
    detail = {"first_seq": first, "last_seq": last, "count": count, "reason": reason}
    return event(seq, "gap", detail, boot)


def msg(kind, payload, received_ns=RECEIVED, machine=MACHINE):
    return (topic(kind, machine), payload, received_ns)


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "collector.db")
    yield s
    s.close()


@pytest.fixture
def collector(store):
    return Collector(store)


def loads_of(store, machine=MACHINE):
    return [(s.t_us, s.value) for s in store.samples(machine, ["spindle_load"])]


def balanced(counters):
    """Every message received ends as exactly one of these."""
    outcomes = ("stored", "duplicates", "conflicts", "bad")
    return counters["received"] == sum(counters[k] for k in outcomes)


# -- storing and decoding -----------------------------------------------------------------


def test_a_birth_and_its_data_frames_are_stored_and_decoded_by_channel_and_unit(collector, store):
    collector.ingest_many([msg("birth", birth()), msg("data", data(2)), msg("data", data(3))])
    t = frame_t(2)
    got = [s for s in store.samples(MACHINE) if s.seq == 2]
    assert [(s.channel, s.unit) for s in got] == [("spindle_load", "%")] * 3 + [
        ("spindle_speed", "rpm")
    ] * 3 + [("tool_number", "")]
    load = got[0]
    assert load == Sample(MACHINE, "spindle_load", "%", t, load.value, 0, 2)
    assert load.value == pytest.approx(50.1)
    assert collector.counters["samples"] == 14
    counts = store.counts(MACHINE)
    assert (counts["payloads"], counts["births"], counts["samples"]) == (3, 1, 14)
    assert store.machines() == [MACHINE]
    assert balanced(collector.counters)
    (table,) = store._db.execute("SELECT channels FROM births").fetchone()
    assert json.loads(table)[0] == ["spindle_load", "%", 0.1, "sampled", 100_000, 0, None]
    assert store.channel_table(MACHINE, BOOT_A) == TABLE


def test_a_sample_that_is_not_good_is_stored_with_its_quality_and_no_value(collector, store):
    collector.ingest_many(
        [msg("birth", birth()), msg("data", data(2, loads=(1.0, math.nan, 3.0), quality=((2, 1),)))]
    )
    got = [(s.value, s.quality) for s in store.samples(MACHINE, ["spindle_load"])]
    assert got == [(1.0, 0), (None, 2), (None, 1)]


def test_the_same_boot_and_seq_on_two_machines_are_two_payloads(collector, store):
    other = "plant1/lathe2"
    collector.ingest_many(
        [msg("birth", birth()), msg("birth", birth(), machine=other), msg("data", data(2))]
    )
    collector.ingest(*msg("data", data(2), machine=other))
    assert collector.counters["duplicates"] == 0
    assert store.machines() == [other, MACHINE]
    assert loads_of(store, other) == loads_of(store, MACHINE)


def test_the_topic_prefix_is_configurable(store):
    collector = Collector(store, prefix="acme/telemetry")
    collector.ingest("acme/telemetry/plant1/mill7/birth", birth(), RECEIVED)
    collector.ingest("edge/plant1/mill7/data", data(2), RECEIVED)
    assert (collector.counters["births"], collector.counters["bad"]) == (1, 1)


# -- de-duplication -----------------------------------------------------------------------


def test_the_same_payload_twice_is_stored_once_and_counted_as_a_duplicate(collector, store):
    collector.ingest_many([msg("birth", birth()), msg("data", data(2)), msg("data", data(2))])
    collector.ingest(*msg("data", data(2)))
    assert collector.counters["duplicates"] == 2
    assert store.counts()["payloads"] == 2
    assert len(loads_of(store)) == 3


def test_the_historical_rewrap_of_a_stored_frame_is_a_duplicate(collector, store):
    collector.ingest_many([msg("birth", birth()), msg("data", data(2))])
    counts = collector.ingest(*msg("data", wire.as_historical(data(2))))
    assert (counts["duplicates"], counts["stored"]) == (1, 0)
    assert len(loads_of(store)) == 3


def test_a_historical_frame_is_stored_and_counted_as_one(collector, store):
    collector.ingest_many([msg("birth", birth()), msg("data", data(2, historical=True))])
    assert collector.counters["historical"] == 1
    assert len(loads_of(store)) == 3


def test_the_same_seq_with_other_content_is_a_conflict_and_the_first_is_kept(
    collector, store, caplog
):
    collector.ingest_many([msg("birth", birth()), msg("data", data(2))])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        counts = collector.ingest(*msg("data", data(2, loads=(9.0, 9.0, 9.0))))
    assert (counts["conflicts"], counts["stored"]) == (1, 0)
    assert [v for _, v in loads_of(store)] == pytest.approx([50.1, 50.3, 50.2])
    assert [r.getMessage() for r in caplog.records] == [
        f"{topic('data')}: data seq 2 of boot {BOOT_A.hex()} is already stored with other "
        "content; kept the first"
    ]


# -- out of order -------------------------------------------------------------------------


def test_data_before_its_birth_waits_and_is_decoded_when_the_birth_arrives(collector, store):
    counts = collector.ingest_many([msg("data", data(3)), msg("data", data(2))])
    assert counts["pending_birth"] == 2
    assert (store.counts()["pending_birth"], loads_of(store)) == (2, [])
    counts = collector.ingest(*msg("birth", birth()))
    assert counts["decoded_late"] == 2
    assert store.counts()["pending_birth"] == 0
    assert [t for t, _ in loads_of(store)] == [
        frame_t(s) + i * 100_000 for s in (2, 3) for i in range(3)
    ]


def test_data_before_its_birth_in_the_same_batch_is_decoded_in_that_batch(collector, store):
    counts = collector.ingest_many([msg("data", data(2)), msg("birth", birth())])
    assert (counts["pending_birth"], counts["decoded_late"]) == (1, 1)
    assert len(loads_of(store)) == 3


def test_a_waiting_frame_that_does_not_decode_with_its_birth_is_kept_as_undecodable(
    collector, store, caplog
):
    collector.ingest(*msg("data", corrupt_values(data(2))))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        counts = collector.ingest_many([msg("birth", birth()), msg("data", data(3))])
    assert (counts["undecodable"], counts["samples"]) == (1, 7)
    assert store.counts()["undecodable"] == 1
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"{topic('data')}: data seq 2 of boot {BOOT_A.hex()}")
    assert "\n" not in line


# -- events, gaps, deaths -----------------------------------------------------------------


def test_every_event_is_stored_with_its_detail_as_json(collector, store):
    detail = {"path": "/var/lib/edge-agent/spool.db", "hash": b"\x01\x02", "x": math.nan}
    collector.ingest_many(
        [
            msg("event", event(2)),
            msg("event", event(3, "spool_corrupt", detail)),
            msg("event", event(4, "tool_change_42", {})),
        ]
    )
    events = store.events(MACHINE)
    assert [(e.seq, e.t_us, e.kind) for e in events] == [
        (2, frame_t(2), "agent_start"),
        (3, frame_t(3), "spool_corrupt"),
        (4, frame_t(4), "tool_change_42"),
    ]
    assert events[1].detail == {"path": "/var/lib/edge-agent/spool.db", "hash": "0102", "x": "NaN"}


def test_a_gap_event_is_stored_as_an_event_and_as_a_gap(collector, store):
    collector.ingest(*msg("event", gap_event(9, 3, 8, 5, "max_age")))
    (gap,) = store.gaps(MACHINE)
    assert (gap.seq, gap.t_us, gap.first_seq, gap.last_seq, gap.count, gap.reason) == (
        9,
        frame_t(9),
        3,
        8,
        5,
        "max_age",
    )
    assert [e.kind for e in store.events()] == ["gap"]
    assert (store.counts()["dropped"], collector.counters["gaps"]) == (5, 1)


def test_a_gap_event_with_an_unusable_detail_is_stored_as_an_event_only(collector, store, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        collector.ingest(*msg("event", gap_event(9, 8, 3, 5)))
    assert (collector.counters["bad_gaps"], collector.counters["events"]) == (1, 1)
    assert (store.gaps(), len(store.events())) == ([], 1)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"{topic('event')}: event seq 9: gap: detail needs")


def test_a_death_records_the_machine_going_offline_once(collector, store):
    collector.ingest_many([msg("birth", birth()), msg("data", data(2))])
    collector.ingest(*msg("death", wire.death(BOOT_A, 1), received_ns=RECEIVED + 5))
    counts = collector.ingest(*msg("death", wire.death(BOOT_A, 1), received_ns=RECEIVED + 9))
    assert counts["duplicates"] == 1
    assert [(d.boot, d.birth_seq, d.received_ns) for d in store.deaths(MACHINE)] == [
        (BOOT_A, 1, RECEIVED + 5)
    ]


def test_a_machine_that_came_back_and_went_offline_again_has_two_deaths(collector, store):
    # The agent re-publishes its birth at every connect: a copy of it means online again.
    collector.ingest_many(
        [
            msg("birth", birth(), received_ns=RECEIVED),
            msg("death", wire.death(BOOT_A, 1), received_ns=RECEIVED + 5),
            msg("birth", birth(), received_ns=RECEIVED + 7),
            msg("death", wire.death(BOOT_A, 1), received_ns=RECEIVED + 9),
            msg("death", wire.death(BOOT_A, 1), received_ns=RECEIVED + 11),
        ]
    )
    assert [d.received_ns for d in store.deaths(MACHINE)] == [RECEIVED + 5, RECEIVED + 9]
    assert collector.counters["duplicates"] == 2


def test_a_death_before_any_birth_names_birth_seq_0(collector, store):
    collector.ingest(*msg("death", wire.death(BOOT_A, 0)))
    assert [d.birth_seq for d in store.deaths()] == [0]


# -- missing sequence numbers -------------------------------------------------------------


def test_missing_seqs_lists_the_holes_between_the_lowest_and_highest_seen(collector, store):
    collector.ingest_many(
        [msg("birth", birth())] + [msg("data", data(s)) for s in (2, 3, 6, 7, 10)]
    )
    assert store.missing_seqs(MACHINE) == [(4, 5), (8, 9)]


def test_missing_seqs_is_empty_when_every_seq_arrived(collector, store):
    collector.ingest_many([msg("birth", birth()), msg("event", event(2)), msg("data", data(3))])
    assert store.missing_seqs(MACHINE) == []
    assert store.missing_seqs("plant1/nothing") == []


def test_missing_seqs_spans_boots_and_can_leave_out_reported_gaps(collector, store):
    collector.ingest_many(
        [
            msg("birth", birth(BOOT_A, 1)),
            msg("data", data(2)),
            msg("birth", birth(BOOT_B, 6)),
            msg("event", gap_event(7, 3, 4, 2, boot=BOOT_B)),
            msg("data", data(9, boot=BOOT_B)),
        ]
    )
    assert store.missing_seqs(MACHINE) == [(3, 5), (8, 8)]
    assert store.missing_seqs(MACHINE, unreported_only=True) == [(5, 5), (8, 8)]


# -- retention and export -----------------------------------------------------------------


def test_prune_deletes_older_rows_and_returns_their_counts(collector, store):
    collector.ingest_many(
        [msg("birth", birth()), msg("event", event(2))]
        + [msg("data", data(s)) for s in (3, 4, 5)]
        + [msg("death", wire.death(BOOT_A, 1), received_ns=frame_t(3) * 1000)]
    )
    collector.ingest("edge/plant1/mill7", b"junk", frame_t(3) * 1000)
    deleted = store.prune(frame_t(4))
    assert deleted == {
        "samples": 7,
        "payloads": 3,
        "events": 1,
        "gaps": 0,
        "deaths": 1,
        "rejects": 1,
        "conflicts": 0,
    }
    assert {s.seq for s in store.samples()} == {4, 5}
    assert store.counts()["births"] == 1


def test_a_boot_whose_birth_was_pruned_still_decodes_its_later_frames(collector, store):
    collector.ingest_many([msg("birth", birth()), msg("data", data(2))])
    store.prune(frame_t(10))
    fresh = Collector(store)  # nothing cached: the table comes from the store
    counts = fresh.ingest(*msg("data", data(11)))
    assert (counts["samples"], counts["pending_birth"]) == (7, 0)


def test_csv_export_round_trips_values_to_the_quantum(collector, store):
    loads = (0.04, 12.345, -7.77, 99.95, 1e-9)
    collector.ingest_many([msg("birth", birth()), msg("data", data(2, loads=loads))])
    out = io.StringIO()
    rows_written = store.export_csv(out, machine=MACHINE, channels=["spindle_load"])
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0] == ["machine", "channel", "unit", "t_us", "value", "quality"]
    assert rows_written == len(rows) - 1 == len(loads)
    for row, original, i in zip(rows[1:], loads, range(len(loads)), strict=True):
        assert row[:4] == [MACHINE, "spindle_load", "%", str(frame_t(2) + i * 100_000)]
        assert abs(float(row[4]) - original) <= 0.1 / 2 + 1e-12
        assert row[5] == "0"


def test_csv_export_filters_by_time_and_leaves_values_that_are_not_good_empty(collector, store):
    collector.ingest_many(
        [msg("birth", birth()), msg("data", data(2)), msg("data", data(3, loads=(math.nan,) * 3))]
    )
    out = io.StringIO()
    store.export_csv(out, channels=["spindle_load"], start_us=frame_t(3), end_us=frame_t(3) + 1)
    assert out.getvalue().splitlines()[1:] == [f"{MACHINE},spindle_load,%,{frame_t(3)},,2"]


# -- bad input ----------------------------------------------------------------------------


def corrupt_values(payload):
    """The same data frame with a packed block that does not unpack, behind a good checksum."""
    body = msgpack.unpackb(payload)[:-1]
    body[6] = b"\x03\xff"
    return wire.seal(body)


BAD = [
    ("edge/plant1/mill7", data(2), "topic is not edge/<site>/<machine>/<kind>"),
    ("other/plant1/mill7/data", data(2), "topic is not under the prefix 'edge/'"),
    ("edge/plant 1/mill7/data", data(2), "topic level site 'plant 1' is not 1-64"),
    ("edge/plant1/mill7/telemetry", data(2), "topic level kind 'telemetry' is not one of"),
    (topic("data"), b"\xc1", "not msgpack"),
    (topic("data"), wire.seal([3, 1, BOOT_A, 2]), "unknown version 3"),
    (topic("data"), msgpack.packb([2, 1, BOOT_A, 2]), "checksum mismatch"),
    (topic("data"), corrupt_values(data(2)), "data: "),
    (topic("data"), birth(), "a birth payload on a data topic"),
    (topic("event"), wire.event(b"abcd", 2, T0, "x", {}), "event: the boot id must be a bin of 8"),
    (topic("event"), wire.event(BOOT_A, 0, T0, "x", {}), "event: seq 0 is not a positive integer"),
    (topic("event"), wire.seal([2, 2, BOOT_A, 2, T0, "x", 3]), "detail a map"),
    (topic("death"), wire.death(BOOT_A, -1), "death: birth seq -1 is not an integer >= 0"),
]


@pytest.mark.parametrize(("bad_topic", "payload", "why"), BAD)
def test_a_bad_message_is_counted_logged_in_one_line_and_the_rest_of_its_batch_stored(
    collector, store, caplog, bad_topic, payload, why
):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        counts = collector.ingest_many(
            [msg("birth", birth()), (bad_topic, payload, RECEIVED), msg("data", data(3))]
        )
    assert (counts["bad"], counts["stored"], len(loads_of(store))) == (1, 2, 3)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"{bad_topic}: ")
    assert why in line
    assert "\n" not in line
    assert balanced(collector.counters)


def test_a_rejected_message_is_kept_with_its_topic_and_reason(collector, store):
    collector.ingest(*msg("data", b"\xc1"))
    (reject,) = store.rejects(MACHINE)
    assert reject[:3] == (RECEIVED, topic("data"), MACHINE)
    assert (reject.error.split(":")[0], reject.body) == ("checksum mismatch", b"\xc1")


def test_a_message_that_breaks_the_collector_is_rejected_alone(collector, store, monkeypatch):
    decoded = ingest._decoded

    def broken_on_seq_3(frame, table):
        if frame["s"] == 3:
            raise RuntimeError("a bug")
        return decoded(frame, table)

    monkeypatch.setattr(ingest, "_decoded", broken_on_seq_3)
    counts = collector.ingest_many(
        [msg("birth", birth()), msg("data", data(3)), msg("data", data(4))]
    )
    assert (counts["bad"], counts["stored"]) == (1, 2)
    assert {s.seq for s in store.samples()} == {4}
    assert [r.error for r in store.rejects()] == ["internal error: RuntimeError: a bug"]


def test_a_storage_failure_stores_none_of_the_batch_and_raises(tmp_path):
    class FullDisk(SqliteStore):
        def add_samples(self, machine, seq, series):
            raise sqlite3.OperationalError("database or disk is full")

    store = FullDisk(tmp_path / "collector.db")
    collector = Collector(store)
    with pytest.raises(StoreError, match="batch not stored: database or disk is full"):
        collector.ingest_many([msg("birth", birth()), msg("data", data(2))])
    assert store.counts()["payloads"] == 0
    assert collector.counters == {}
    store.close()


# -- the database -------------------------------------------------------------------------


def test_the_database_is_wal_with_its_schema_version(store):
    assert isinstance(store, Store)
    db = store._db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2


def test_a_reopened_store_keeps_what_it_stored(tmp_path):
    store = SqliteStore(tmp_path / "c.db")
    Collector(store).ingest_many([msg("birth", birth()), msg("data", data(2))])
    store.close()
    store = SqliteStore(tmp_path / "c.db")
    assert len(loads_of(store)) == 3
    assert Collector(store).ingest(*msg("data", data(2)))["duplicates"] == 1
    store.close()


def test_an_agent_spool_is_not_taken_for_a_collector_database(tmp_path):
    spool = sqlite3.connect(tmp_path / "spool.db")  # what an agent's spool looks like
    spool.execute("CREATE TABLE frames (seq INTEGER PRIMARY KEY, body BLOB)")
    spool.execute("PRAGMA user_version = 1")
    spool.close()
    with pytest.raises(StoreError, match="not a collector database"):
        SqliteStore(tmp_path / "spool.db")


def test_a_database_another_process_locks_is_said_locked_not_unusable(tmp_path):
    SqliteStore(tmp_path / "c.db").close()
    holder = sqlite3.connect(tmp_path / "c.db", isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")  # a sqlite3 shell holding the file
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("CREATE TABLE held (x)")
    try:  # sqlite3's busy timeout (5 s) passes first
        with pytest.raises(StoreError, match="locked by another process") as caught:
            SqliteStore(tmp_path / "c.db")
        assert "not a usable" not in str(caught.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    SqliteStore(tmp_path / "c.db").close()  # the file was fine all along


def test_a_newer_schema_is_refused(tmp_path):
    SqliteStore(tmp_path / "c.db").close()
    db = sqlite3.connect(tmp_path / "c.db")
    db.execute("PRAGMA user_version = 9")
    db.close()
    with pytest.raises(StoreError, match="schema version 9 is newer"):
        SqliteStore(tmp_path / "c.db")


def test_a_schema_1_database_is_upgraded_in_place_and_keeps_its_rows(tmp_path):
    from edge_agent.collector import store as store_module

    db = sqlite3.connect(tmp_path / "c.db")
    db.executescript(store_module._SCHEMA)  # version 1: no conflicts, no rejects.size
    db.execute("INSERT INTO rejects VALUES (1, 't', NULL, 'old', x'c1')")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version 1 is older .* `edge-agent collect run`"):
        SqliteStore(tmp_path / "c.db", readonly=True)
    store = SqliteStore(tmp_path / "c.db")
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == 2
    assert [(r.error, r.body, r.size) for r in store.rejects()] == [("old", b"\xc1", None)]
    assert store.conflicts() == [] and store.counts()["conflicts"] == 0
    store.close()
    SqliteStore(tmp_path / "c.db", readonly=True).close()


# -- any order, any duplication -----------------------------------------------------------

#: Two boots of one agent: births, events, a gap, data (one replayed historical), a death.
SCRIPT = [
    ("birth", birth(BOOT_A, 1)),
    ("event", event(2)),
    ("data", data(3)),
    ("data", data(4, loads=(1.0, math.nan, 2.0))),
    ("event", gap_event(5, 6, 7, 2)),
    ("death", wire.death(BOOT_A, 1)),
    ("birth", birth(BOOT_B, 9)),
    ("data", data(10, boot=BOOT_B)),
    ("data", data(8, historical=True)),  # boot A's last frame, replayed after the restart
]


def snapshot(store):
    return (
        list(store.samples()),
        store.events(),
        store.gaps(),
        [d[:3] for d in store.deaths()],
        store.missing_seqs(MACHINE),
        store.missing_seqs(MACHINE, unreported_only=True),
        store.counts(),
    )


_expected = {}


def expected(tmp_path_factory):
    if not _expected:
        store = SqliteStore(tmp_path_factory.mktemp("reference") / "c.db")
        Collector(store).ingest_many([msg(kind, payload) for kind, payload in SCRIPT])
        _expected["snapshot"] = snapshot(store)
        store.close()
    return _expected["snapshot"]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=100)
@given(
    order=st.permutations(range(len(SCRIPT))),
    copies=st.lists(
        st.tuples(st.integers(0, len(SCRIPT) - 1), st.booleans(), st.integers(0, len(SCRIPT))),
        max_size=6,
    ),
    batch_sizes=st.lists(st.integers(1, 5), min_size=1, max_size=6),
)
def test_any_order_and_any_duplication_ends_with_the_same_stored_rows(
    tmp_path_factory, order, copies, batch_sizes
):
    messages = [msg(*SCRIPT[i]) for i in order]
    for index, historical, at in copies:
        kind, payload = SCRIPT[index]
        messages.insert(at, msg(kind, wire.as_historical(payload) if historical else payload))
    store = SqliteStore(tmp_path_factory.mktemp("any-order") / "c.db")
    collector = Collector(store)
    start = 0
    for size in batch_sizes[:-1]:
        collector.ingest_many(messages[start : start + size])
        start += size
    collector.ingest_many(messages[start:])
    got = snapshot(store)
    store.close()
    assert got == expected(tmp_path_factory)
    assert got[4] == [(6, 7)] and got[5] == []
    c = collector.counters
    assert (c["stored"], c["duplicates"], c["bad"], c["conflicts"]) == (
        len(SCRIPT),
        len(copies),
        0,
        0,
    )
    assert balanced(c)


# -- the checksum (wire v2) and v1 payloads ------------------------------------------------


def test_a_frame_that_fails_its_checksum_is_refused_counted_and_never_stored_as_data(
    collector, store, caplog
):
    damaged = bytearray(data(2))
    damaged[32] ^= 0x08  # in the packed block: unchecked, loads of 50.3, 50.5, 50.4 were stored
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        counts = collector.ingest_many(
            [msg("birth", birth()), msg("data", bytes(damaged)), msg("data", data(3))]
        )
    assert (counts["bad"], counts["bad_checksum"], counts["stored"]) == (1, 1, 2)
    assert {s.seq for s in store.samples()} == {3}
    (reject,) = store.rejects(MACHINE)
    assert reject.error.startswith("checksum mismatch: ") and reject.body == bytes(damaged)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"{topic('data')}: checksum mismatch: ")
    assert balanced(collector.counters)


def v1(payload):
    """The payload as an agent from before the checksum wrote it (wire v1)."""
    return msgpack.packb([1, *msgpack.unpackb(payload)[1:-1]])


def test_v1_payloads_of_an_agent_not_yet_upgraded_are_stored_and_counted_unchecked(
    collector, store, caplog
):
    """A collector newer than its agents (or an agent draining a spool written before the
    checksum): v1 has no checksum, so its payloads are stored, counted `unchecked`, and the
    machine named in one warning."""
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        counts = collector.ingest_many(
            [msg("birth", v1(birth())), msg("data", v1(data(2))), msg("data", data(3))]
        )
    assert (counts["stored"], counts["unchecked"], counts["bad"]) == (3, 2, 0)
    assert {s.seq for s in store.samples()} == {2, 3}
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"{topic('birth')}: wire v1 payload, which has no checksum")
    collector.ingest(*msg("data", wire.as_historical(v1(data(2)))))
    assert collector.counters["duplicates"] == 1  # the replayed v1 copy: the same content


DETAIL_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=6)
    | st.binary(max_size=6)
)
DETAILS = st.dictionaries(
    st.text(max_size=6) | st.binary(max_size=6),
    st.recursive(
        DETAIL_LEAVES,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.text(max_size=4) | st.binary(max_size=4), inner, max_size=3)
        ),
        max_leaves=30,
    ),
    max_size=5,
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=100)
@given(detail=DETAILS)
def test_any_event_detail_is_stored_as_json_or_refused_never_an_internal_error(store, detail):
    """The collector's JSON of an event's detail: bin keys and values, NaN, infinities, 64-bit
    integers, nesting up to the wire's limit; bad input is `bad`, never a collector bug."""
    collector = Collector(store)
    seq = store.counts(MACHINE)["payloads"] + 1
    counts = collector.ingest(*msg("event", wire.event(BOOT_A, seq, T0, "state", detail)))
    assert counts["stored"] + counts["bad"] == 1
    assert not [r for r in store.rejects() if r.error.startswith("internal error")]
    if counts["stored"]:
        (stored,) = [e for e in store.events(MACHINE) if e.seq == seq]
        json.dumps(stored.detail, allow_nan=False)  # valid JSON: NaN and bytes made text
