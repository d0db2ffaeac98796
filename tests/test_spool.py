"""The durable spool: sequence numbers allocated with the store, contiguous, never reused;
payloads leave only when acknowledged or dropped by the budget (with an exact gap event);
a corrupt file is moved aside; surviving restarts and a killed process."""

import asyncio
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading

import msgpack
import pytest

from edge_agent.telemetry.spool import AsyncSpool, Spool, SpoolError

BOOT_A, BOOT_B = b"A" * 8, b"B" * 8


def items(kind="data", n=1, body=b"x", boot=BOOT_A):
    return [(kind, boot, body)] * n


def seqs_of(spool):
    return [row.seq for row in spool.frames()]


def gap_event(seq, detail):
    return msgpack.packb(["gap", seq, detail])


def test_sequence_numbers_are_contiguous_across_batches(tmp_path):
    spool = Spool(tmp_path / "s.db")
    assert spool.store([("data", BOOT_A, b"a"), ("event", BOOT_A, b"b")]) == [1, 2]
    assert spool.store([("data", BOOT_A, b"c")]) == [3]
    assert [(r.seq, r.kind, r.boot, r.body) for r in spool.frames()] == [
        (1, "data", BOOT_A, b"a"),
        (2, "event", BOOT_A, b"b"),
        (3, "data", BOOT_A, b"c"),
    ]
    assert spool.stats()["depth"] == 3 and spool.stats()["bytes"] == 3
    assert spool.last_seq() == 3


def test_a_body_made_from_its_number_is_made_inside_the_transaction(tmp_path):
    spool = Spool(tmp_path / "s.db")
    assert spool.store([("data", BOOT_A, lambda seq: b"seq %d" % seq)] * 2) == [1, 2]
    assert [r.body for r in spool.frames()] == [b"seq 1", b"seq 2"]


def test_sequence_continues_after_reopen(tmp_path):
    Spool(tmp_path / "s.db").store(items(n=5))
    assert Spool(tmp_path / "s.db").store(items()) == [6]


def test_acknowledged_payloads_leave_and_their_numbers_are_never_reused(tmp_path):
    spool = Spool(tmp_path / "s.db")
    spool.store(items(n=5, body=b"12345"))
    assert spool.ack([2, 4, 99]) == 2  # 99 was never here: ignored
    assert seqs_of(spool) == [1, 3, 5]
    assert spool.stats()["bytes"] == 15
    assert spool.ack([1, 3, 5]) == 3
    assert spool.stats() == {"depth": 0, "bytes": 0, "oldest_stored_ns": 0}
    assert spool.store(items()) == [6]
    reopened = Spool(tmp_path / "s.db")
    assert seqs_of(reopened) == [6] and reopened.stats()["bytes"] == 1


def test_pending_reads_after_a_cursor_in_order(tmp_path):
    spool = Spool(tmp_path / "s.db")
    spool.store([("data", BOOT_A, bytes([i % 256])) for i in range(2500)])
    assert [r.seq for r in spool.pending(after_seq=10, limit=3)] == [11, 12, 13]
    assert [r.seq for r in spool.frames(after_seq=100, limit=1000)] == list(range(101, 2501))


def test_runs_with_wal_and_synchronous_full(tmp_path):
    """What makes a commit durable against power loss, read back from the connection."""
    spool = Spool(tmp_path / "s.db")
    assert spool.pragma("journal_mode") == "wal"
    assert spool.pragma("synchronous") == 2  # FULL


def test_the_disk_budget_drops_exactly_the_oldest_with_a_gap_event(tmp_path):
    spool = Spool(tmp_path / "s.db", max_bytes=1000, gap_event=gap_event)
    spool.store(items(n=10, body=b"x" * 100))  # exactly the budget
    assert seqs_of(spool) == list(range(1, 11))
    spool.ack([2])  # an acknowledged one is not counted as dropped
    seqs = spool.store(items(n=3, body=b"y" * 100))  # 1200 bytes: 1 and 3 must go
    gap = seqs[-1]
    assert seqs == [11, 12, 13, 14]
    event = msgpack.unpackb(spool.pending(after_seq=gap - 1)[0].body)
    assert event == [
        "gap",
        14,
        {"first_seq": 1, "last_seq": 3, "count": 2, "reason": "disk_budget"},
    ]
    assert seqs_of(spool) == list(range(4, 15))
    assert spool.counters["dropped_disk_budget"] == 2
    # the gap event itself counts toward the budget from the next store on
    assert spool.stats()["bytes"] == 1000 + len(spool.pending(after_seq=13)[0].body)


def test_the_budget_never_drops_the_newest_payload(tmp_path):
    spool = Spool(tmp_path / "s.db", max_bytes=10, gap_event=gap_event)
    spool.store(items(body=b"x" * 50))
    seqs = spool.store(items(body=b"y" * 50))
    assert seqs_of(spool)[0] == 2 and seqs == [2, 3]


def test_payloads_past_the_age_limit_go_on_simulated_time(tmp_path):
    now = [0]
    spool = Spool(tmp_path / "s.db", max_age_s=60, now_ns=lambda: now[0], gap_event=gap_event)
    spool.store(items(n=2))
    now[0] = 30 * 10**9
    spool.store(items())
    now[0] = 61 * 10**9  # the first two are 61 s old, the third 31 s
    seqs = spool.store(items())
    assert seqs == [4, 5]
    detail = msgpack.unpackb(spool.pending(after_seq=4)[0].body)[2]
    assert detail == {"first_seq": 1, "last_seq": 2, "count": 2, "reason": "max_age"}
    assert seqs_of(spool) == [3, 4, 5]


def test_a_boots_birth_is_kept_while_its_payloads_are(tmp_path):
    spool = Spool(tmp_path / "s.db")
    spool.store([("birth", BOOT_A, b"birth A"), ("data", BOOT_A, b"a")])
    spool.store([("birth", BOOT_B, b"birth B"), ("data", BOOT_B, b"b")])
    spool.ack([1, 3])  # both births delivered; A's data not yet
    assert spool.birth_of(BOOT_A).body == b"birth A"  # still needed before A's data
    spool.ack([2])
    assert spool.birth_of(BOOT_A) is None
    spool.ack([4])
    assert spool.birth_of(BOOT_B).seq == 3  # the newest birth always stays


def test_a_garbage_file_is_moved_aside_and_a_fresh_spool_starts(tmp_path):
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not sqlite" * 100)
    spool = Spool(path)
    assert spool.store(items()) == [1]
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes() == b"this is not sqlite" * 100
    assert spool.recovered.startswith(f"{path}: damaged: file is not a database")
    assert "moved to s.db.corrupt-" in spool.recovered and "\n" not in spool.recovered
    assert spool.counters["corrupt_recovered"] == 1


def test_a_damaged_page_is_found_at_start_and_the_counter_carries_over(tmp_path):
    path = tmp_path / "s.db"
    spool = Spool(path)
    spool.store([("data", BOOT_A, bytes([i % 251]) * 3000) for i in range(40)])
    spool.close()
    db = sqlite3.connect(path)  # fold the WAL in, so the damage lands in the main file
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(page * 10, page * 12):  # overwrite two pages in the middle
        data[offset] = 0xA5
    path.write_bytes(bytes(data))
    fresh = Spool(path)
    assert fresh.recovered and "numbers continue" in fresh.recovered
    assert fresh.store(items()) == [41]


def test_readonly_open_of_a_missing_file_does_not_create_it(tmp_path):
    with pytest.raises(SpoolError, match="no such spool file"):
        Spool(tmp_path / "missing.db", readonly=True)
    assert not (tmp_path / "missing.db").exists()


def test_readonly_open_of_garbage_is_a_one_line_error(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SpoolError) as caught:
        Spool(path, readonly=True)
    assert str(caught.value).startswith(f"{path}: not a usable spool database")
    assert "\n" not in str(caught.value)


def test_a_newer_schema_is_refused(tmp_path):
    spool = Spool(tmp_path / "s.db")
    spool._db.execute("PRAGMA user_version=99")
    spool.close()
    with pytest.raises(SpoolError, match="newer than this agent's"):
        Spool(tmp_path / "s.db")


def test_the_first_sink_schema_is_upgraded_in_place(tmp_path):
    path = tmp_path / "s.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(
        "CREATE TABLE frames (seq INTEGER PRIMARY KEY, stored_ns INTEGER NOT NULL, "
        "type TEXT NOT NULL, body BLOB NOT NULL);"
        "CREATE TABLE counter (id INTEGER PRIMARY KEY CHECK (id = 1), next_seq INTEGER);"
        "INSERT INTO counter VALUES (1, 8); INSERT INTO frames VALUES (7, 0, 'data', x'01');"
        "PRAGMA user_version=1;"
    )
    db.close()
    spool = Spool(path)
    assert [(r.seq, r.boot, r.body) for r in spool.frames()] == [(7, None, b"\x01")]
    assert spool.store(items()) == [8]
    assert spool.pragma("user_version") == 2


WRITER = textwrap.dedent("""
    import sys
    from edge_agent.telemetry.spool import Spool
    spool = Spool(sys.argv[1])
    while True:
        for seq in spool.store([("data", None, b"payload" * 20)] * 3):
            print(seq, flush=True)
""")


@pytest.mark.timeout(60)
def test_a_killed_writer_loses_no_stored_frame_and_skips_no_number(tmp_path):
    path = tmp_path / "s.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    acknowledged = []
    for line in writer.stdout:
        acknowledged.append(int(line))
        if len(acknowledged) >= 300:
            break
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    spool = Spool(path)
    assert spool.recovered is None
    seqs = seqs_of(spool)
    assert seqs == list(range(1, len(seqs) + 1))
    assert set(acknowledged) <= set(seqs)
    assert spool.store(items()) == [len(seqs) + 1]


def test_async_spool_stores_off_the_event_loop_thread(tmp_path):
    threads = []

    class Spy(AsyncSpool):
        async def _run(self, fn, *args):
            def traced(*a):
                threads.append(threading.current_thread().name)
                return fn(*a)

            return await super()._run(traced, *args)

    async def main():
        spool = Spy(tmp_path / "s.db")
        await spool.open()
        seqs = await asyncio.gather(*(spool.store(items()) for _ in range(20)))
        await spool.close()
        return seqs

    seqs = asyncio.run(main())
    assert sorted(s for batch in seqs for s in batch) == list(range(1, 21))
    assert threads and all(name.startswith("spool") for name in threads)


EXIT_MID_TRANSACTION = textwrap.dedent("""
    import os, sys
    from edge_agent.telemetry.spool import Spool
    spool = Spool(sys.argv[1])
    for _ in range(4):
        print(*spool.store([("data", None, b"kept")] * 5), flush=True)
    real_execute = spool._db.execute
    def execute(sql, *args):
        if sql == "COMMIT":  # everything of this batch is written, nothing committed
            os._exit(1)
        return real_execute(sql, *args)
    spool._db = type("Db", (), {"execute": staticmethod(execute),
                               "executemany": spool._db.executemany})()
    spool.store([("data", None, b"lost")] * 5)
""")


def test_a_crash_before_commit_neither_keeps_nor_skips_the_uncommitted_numbers(tmp_path):
    path = tmp_path / "s.db"
    child = subprocess.run(
        [sys.executable, "-c", EXIT_MID_TRANSACTION, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert child.returncode == 1, child.stderr
    acknowledged = [int(seq) for line in child.stdout.split("\n") for seq in line.split()]
    assert acknowledged == list(range(1, 21))
    spool = Spool(path)
    assert [(r.seq, r.body) for r in spool.frames()] == [(s, b"kept") for s in range(1, 21)]
    assert spool.store(items()) == [21]


def test_async_store_leaves_the_event_loop_running_while_the_disk_works(tmp_path):
    disk_may_finish = threading.Event()

    class SlowDisk(AsyncSpool):
        async def _run(self, fn, *args):
            def slow(*a):
                # Run on the loop's thread, this would wait out its timeout and fail.
                assert disk_may_finish.wait(timeout=5), "store blocked the event loop"
                return fn(*a)

            return await super()._run(slow, *args)

    async def main():
        spool = SlowDisk(tmp_path / "s.db")
        disk_may_finish.set()
        await spool.open()
        disk_may_finish.clear()
        storing = asyncio.create_task(spool.store(items()))
        for _ in range(10):
            await asyncio.sleep(0)  # the loop keeps turning while the store is in flight
        assert not storing.done()
        disk_may_finish.set()
        seqs = await storing
        await spool.close()
        return seqs

    assert asyncio.run(main()) == [1]


def test_async_store_before_open_is_a_clear_error(tmp_path):
    async def main():
        spool = AsyncSpool(tmp_path / "s.db")
        try:
            await spool.store(items())
        finally:
            await spool.close()

    with pytest.raises(RuntimeError, match="spool not open"):
        asyncio.run(main())
