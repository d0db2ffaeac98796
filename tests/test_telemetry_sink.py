"""The durable sink: sequence numbers allocated with the store, contiguous, never reused,
surviving restarts and a killed process."""

import asyncio
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from edge_agent.telemetry.sink import AsyncFrameSink, FrameSink, SinkError


def test_sequence_numbers_are_contiguous_across_batches(tmp_path):
    sink = FrameSink(tmp_path / "s.db")
    assert sink.store([("data", b"a"), ("event", b"b")]) == [1, 2]
    assert sink.store([("data", b"c")]) == [3]
    assert [(seq, kind, body) for seq, _, kind, body in sink.frames()] == [
        (1, "data", b"a"),
        (2, "event", b"b"),
        (3, "data", b"c"),
    ]
    assert sink.count() == 3 and sink.bytes_stored() == 3


def test_sequence_continues_after_reopen(tmp_path):
    FrameSink(tmp_path / "s.db").store([("data", b"x")] * 5)
    assert FrameSink(tmp_path / "s.db").store([("data", b"y")]) == [6]


def test_sequence_never_reuses_numbers_of_deleted_frames(tmp_path):
    sink = FrameSink(tmp_path / "s.db")
    sink.store([("data", b"x")] * 3)
    sink._db.execute("DELETE FROM frames")
    assert sink.store([("data", b"y")]) == [4]


def test_frames_pages_through_a_long_spool(tmp_path):
    sink = FrameSink(tmp_path / "s.db")
    sink.store([("data", bytes([i % 256])) for i in range(2500)])
    assert [seq for seq, *_ in sink.frames(after_seq=100, limit=1000)] == list(range(101, 2501))


def test_not_a_database_is_a_one_line_error(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SinkError) as caught:
        FrameSink(path)
    assert str(caught.value).startswith(f"{path}: not a usable spool database")
    assert "\n" not in str(caught.value)


def test_readonly_open_of_a_missing_file_does_not_create_it(tmp_path):
    with pytest.raises(SinkError, match="no such spool file"):
        FrameSink(tmp_path / "missing.db", readonly=True)
    assert not (tmp_path / "missing.db").exists()


def test_a_newer_schema_is_refused(tmp_path):
    sink = FrameSink(tmp_path / "s.db")
    sink._db.execute("PRAGMA user_version=99")
    sink.close()
    with pytest.raises(SinkError, match="newer than this agent's"):
        FrameSink(tmp_path / "s.db")


WRITER = textwrap.dedent("""
    import sys
    from edge_agent.telemetry.sink import FrameSink
    sink = FrameSink(sys.argv[1])
    while True:
        for seq in sink.store([("data", b"payload" * 20)] * 3):
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
    sink = FrameSink(path)
    seqs = [seq for seq, *_ in sink.frames()]
    assert seqs == list(range(1, len(seqs) + 1))
    assert set(acknowledged) <= set(seqs)
    assert sink.store([("data", b"after")]) == [len(seqs) + 1]


def test_async_sink_stores_off_the_event_loop_thread(tmp_path):
    threads = []

    class Spy(AsyncFrameSink):
        async def _run(self, fn, *args):
            def traced(*a):
                threads.append(threading.current_thread().name)
                return fn(*a)

            return await super()._run(traced, *args)

    async def main():
        sink = Spy(tmp_path / "s.db")
        await sink.open()
        seqs = await asyncio.gather(*(sink.store([("data", b"x")]) for _ in range(20)))
        await sink.close()
        return seqs

    seqs = asyncio.run(main())
    assert sorted(s for batch in seqs for s in batch) == list(range(1, 21))
    assert threads and all(name.startswith("sink") for name in threads)


EXIT_MID_TRANSACTION = textwrap.dedent("""
    import os, sys
    from edge_agent.telemetry.sink import FrameSink
    sink = FrameSink(sys.argv[1])
    for _ in range(4):
        print(*sink.store([("data", b"kept")] * 5), flush=True)
    real_execute = sink._db.execute
    def execute(sql, *args):
        if sql == "COMMIT":  # everything of this batch is written, nothing committed
            os._exit(1)
        return real_execute(sql, *args)
    sink._db = type("Db", (), {"execute": staticmethod(execute),
                               "executemany": sink._db.executemany})()
    sink.store([("data", b"lost")] * 5)
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
    sink = FrameSink(path)
    assert [(seq, body) for seq, _, _, body in sink.frames()] == [
        (s, b"kept") for s in range(1, 21)
    ]
    assert sink.store([("data", b"after")]) == [21]


def test_async_store_leaves_the_event_loop_running_while_the_disk_works(tmp_path):
    disk_may_finish = threading.Event()

    class SlowDisk(AsyncFrameSink):
        async def _run(self, fn, *args):
            def slow(*a):
                # Run on the loop's thread, this would wait out its timeout and fail.
                assert disk_may_finish.wait(timeout=5), "store blocked the event loop"
                return fn(*a)

            return await super()._run(slow, *args)

    async def main():
        sink = SlowDisk(tmp_path / "s.db")
        disk_may_finish.set()
        await sink.open()
        disk_may_finish.clear()
        storing = asyncio.create_task(sink.store([("data", b"x")]))
        for _ in range(10):
            await asyncio.sleep(0)  # the loop keeps turning while the store is in flight
        assert not storing.done()
        disk_may_finish.set()
        seqs = await storing
        await sink.close()
        return seqs

    assert asyncio.run(main()) == [1]


def test_async_store_before_open_is_a_clear_error(tmp_path):
    async def main():
        sink = AsyncFrameSink(tmp_path / "s.db")
        try:
            await sink.store([("data", b"x")])
        finally:
            await sink.close()

    with pytest.raises(RuntimeError, match="sink not open"):
        asyncio.run(main())
