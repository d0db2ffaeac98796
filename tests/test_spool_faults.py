"""The spool's file in trouble. A lock another process holds, a file this user may not write
and a full file system (a real one: a small tmpfs) are operational errors: one line naming
the file, nothing moved aside, every payload still there and the numbers continuing once the
trouble is gone. Only damage moves a file aside, and what still reads of it goes into the
fresh spool with its numbers; a file moved aside is reported at every start."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import msgpack
import pytest

import edge_agent.telemetry.spool as spooling
from edge_agent.status import report
from edge_agent.telemetry.spool import Spool, SpoolError
from hil.demo import demo_config
from tests.small_disk import run_on_small_disk

BOOT_A, BOOT_B = b"A" * 8, b"B" * 8


def items(kind="data", n=1, body=b"x", boot=BOOT_A):
    return [(kind, boot, body)] * n


def contents(spool) -> list[tuple]:
    return [(r.seq, r.kind, r.boot, r.body) for r in spool.frames()]


def gap_event(seq, detail):
    return msgpack.packb(["gap", seq, detail])


def moved_aside(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".corrupt-" in p.name)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def spool_with(path: Path, n: int) -> list[tuple]:
    spool = Spool(path)
    spool.store([("birth", BOOT_A, b"birth A")])
    spool.store([("data", BOOT_A, b"payload %d" % i) for i in range(n)])
    rows = contents(spool)
    spool.close()
    return rows


# -- a lock another process holds -------------------------------------------------------------

HOLD_LOCK = textwrap.dedent("""
    import sqlite3, sys
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN " + sys.argv[2])
    print("locked", flush=True)
    sys.stdin.readline()
    db.execute("COMMIT")
""")


@contextlib.contextmanager
def locked_by_another_process(path: Path, how: str):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path), how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        yield
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


@pytest.mark.parametrize("how", ["IMMEDIATE", "EXCLUSIVE"])
def test_a_lock_held_past_the_bound_refuses_the_start_in_one_line_and_moves_nothing(
    tmp_path, monkeypatch, how
):
    monkeypatch.setattr(spooling, "BUSY_TIMEOUT_S", 0.3, raising=False)
    path = tmp_path / "spool.db"
    rows = spool_with(path, 20)
    with locked_by_another_process(path, how), pytest.raises(SpoolError) as refused:
        Spool(path)
    assert moved_aside(tmp_path) == []
    message = str(refused.value)
    assert isinstance(refused.value, spooling.SpoolLocked)
    assert isinstance(refused.value, spooling.SpoolUnavailable)
    assert message.startswith(f"{path}: locked by another process for more than 0.3 s")
    assert "\n" not in message
    spool = Spool(path)  # the lock is gone: everything is there, the numbers continue
    assert contents(spool) == rows and spool.recovered is None
    assert spool.store(items()) == [22]


def test_a_lock_released_within_the_bound_is_waited_for(tmp_path):
    path = tmp_path / "spool.db"
    rows = spool_with(path, 5)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOLD_LOCK.replace("sys.stdin.readline()", "import time; time.sleep(0.5)"),
            str(path),
            "IMMEDIATE",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "locked\n"
    spool = Spool(path)  # waits the half second out
    holder.wait(timeout=10)
    assert contents(spool) == rows and spool.store(items()) == [7]


def test_a_store_while_another_process_holds_the_lock_fails_alone_and_the_next_one_works(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(spooling, "BUSY_TIMEOUT_S", 0.3, raising=False)
    path = tmp_path / "spool.db"
    spool = Spool(path)
    spool.store(items(n=3))
    with locked_by_another_process(path, "IMMEDIATE"), pytest.raises(spooling.SpoolLocked):
        spool.store(items())
    assert spool.store(items()) == [4]


# -- a file this user may not write -----------------------------------------------------------

NOBODY = 65534


@contextlib.contextmanager
def acting_as(uid: int, gid: int):
    """This process's effective user and group for the block (root only; the real ids stay
    root, so root comes back): the kernel checks permissions as that user, as it would for
    the agent's own user."""
    groups = os.getgroups()
    os.setgroups([])
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


@contextlib.contextmanager
def spool_the_agent_may_not_write():
    """A spool with payloads in the agent's own folder, that the agent may not write: as root,
    a file root made (someone ran the agent as root once) in a folder owned by the agent's
    user (nobody here); otherwise the user's own file made read-only. Yields the path and
    the context to open it in."""
    folder = Path(tempfile.mkdtemp(prefix="spool-perm-"))
    try:
        path = folder / "spool.db"
        if os.geteuid() == 0:
            os.chmod(folder, 0o755)
            os.chown(folder, NOBODY, NOBODY)
            yield path, lambda: acting_as(NOBODY, NOBODY)
        else:
            yield path, contextlib.nullcontext
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_spool_the_agent_may_not_write_is_refused_naming_owner_and_mode(tmp_path):
    with spool_the_agent_may_not_write() as (path, as_the_agent):
        rows = spool_with(path, 10)
        if os.geteuid() != 0:
            path.chmod(0o444)
        before = digest(path)
        with as_the_agent(), pytest.raises(SpoolError) as refused:
            Spool(path)
        assert moved_aside(path.parent) == [] and digest(path) == before
        message = str(refused.value)
        assert isinstance(refused.value, spooling.SpoolReadOnly)
        owner = "root:root (uid 0, gid 0)" if os.geteuid() == 0 else f"(uid {os.geteuid()}, "
        mode = "0644" if os.geteuid() == 0 else "0444"
        assert message.startswith(f"{path}: not writable by ")
        assert "spool.db is owned by " in message and owner in message
        assert f"mode {mode}" in message and "\n" not in message
        path.chmod(0o644)
        spool = Spool(path)  # as its owner: all there, numbers continue
        assert contents(spool) == rows and spool.store(items()) == [12]


def test_a_folder_the_agent_may_not_write_is_named_with_its_owner_and_mode():
    with spool_the_agent_may_not_write() as (path, as_the_agent):
        if os.geteuid() == 0:
            os.chown(path.parent, 0, 0)
        else:
            path.parent.chmod(0o555)
        with as_the_agent(), pytest.raises(spooling.SpoolReadOnly) as refused:
            Spool(path)
        assert f"its folder {path.parent} is owned by " in str(refused.value)
        path.parent.chmod(0o755)


# -- a full file system ------------------------------------------------------------------------

FULL_AT_START = """
import json
from edge_agent.telemetry.spool import Spool
path = os.path.join(SMALL_DISK, "spool.db")
spool = Spool(path)
spool.store([("data", b"A" * 8, b"payload %d" % i) for i in range(159)])
spool.close()
fill()
result = {}
try:
    Spool(path).close()
    result["opened"] = True
except Exception as exc:
    result["error"] = [type(exc).__name__, str(exc)]
result["files"] = sorted(os.listdir(SMALL_DISK))
free()
spool = Spool(path)
result["recovered"] = spool.recovered
result["bodies"] = [r.body.decode() for r in spool.frames()]
result["seqs"] = [r.seq for r in spool.frames()]
result["next"] = spool.store([("data", None, b"more")])
print(json.dumps(result))
"""


def test_a_full_disk_at_start_is_refused_in_one_line_and_nothing_is_orphaned(tmp_path):
    child = run_on_small_disk(tmp_path, FULL_AT_START)
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    # nothing moved aside (SQLite may leave the empty -wal and -shm it opened)
    assert set(result["files"]) <= {"filler", "spool.db", "spool.db-wal", "spool.db-shm"}
    assert result["recovered"] is None
    assert result["seqs"] == list(range(1, 160))
    assert result["bodies"] == [f"payload {i}" for i in range(159)]
    assert result["next"] == [160]
    kind, message = result["error"]
    assert kind == "SpoolFull"
    assert message.startswith(f"{tmp_path / 'small-disk' / 'spool.db'}: disk full (")
    assert "\n" not in message


FULL_WHILE_RUNNING = """
import json
from edge_agent.telemetry.spool import Spool
path = os.path.join(SMALL_DISK, "spool.db")
spool = Spool(path)
spool.store([("data", b"A" * 8, b"kept %d" % i) for i in range(50)])
fill()
result = {"errors": []}
for attempt in range(3):
    try:
        spool.store([("data", b"A" * 8, b"y" * 3000)] * 20)
    except Exception as exc:
        result["errors"].append([type(exc).__name__, str(exc)])
result["readable_while_full"] = len(spool.pending(limit=1000))
result["stats_while_full"] = spool.stats()["depth"]
free()
result["next"] = spool.store([("data", b"A" * 8, b"after")])
result["bodies"] = [r.body.decode() for r in spool.frames()]
spool.close()
result["files"] = sorted(os.listdir(SMALL_DISK))
print(json.dumps(result))
"""


def test_a_full_disk_while_running_fails_the_store_alone_and_the_numbers_continue(tmp_path):
    child = run_on_small_disk(tmp_path, FULL_WHILE_RUNNING)
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    assert [kind for kind, _ in result["errors"]] == ["SpoolFull"] * 3
    assert all("disk full" in message for _, message in result["errors"])
    assert result["readable_while_full"] == 50 and result["stats_while_full"] == 50
    assert result["next"] == [51]  # no number was taken by the failed stores
    assert result["bodies"] == [f"kept {i}" for i in range(50)] + ["after"]
    assert result["files"] == ["spool.db"]


def test_sqlite_max_page_count_gives_the_agent_tests_the_same_full_disk(tmp_path):
    """In-process tests make a full disk with `PRAGMA max_page_count`: SQLITE_FULL, as a real
    full file system gives (above)."""
    spool = Spool(tmp_path / "spool.db")
    spool.store(items(n=3))
    spool.pragma(f"max_page_count = {spool.pragma('page_count')}")
    with pytest.raises(spooling.SpoolFull, match="disk full"):
        spool.store(items(n=4, body=b"x" * 5000))
    spool.pragma("max_page_count = 1073741823")
    assert spool.store(items()) == [4]


def big_spool(path: Path) -> dict[int, tuple]:
    """A spool of 60 payloads of 3000 bytes (a page each) and two births; by number."""
    spool = Spool(path)
    spool.store([("birth", BOOT_A, b"birth A")])
    spool.store([("data", BOOT_A, bytes([i]) * 3000) for i in range(30)])
    spool.store([("birth", BOOT_B, b"birth B")])
    spool.store([("data", BOOT_B, bytes([i]) * 3000) for i in range(30)])
    rows = {row[0]: row for row in contents(spool)}
    spool.close()
    return rows


# -- damage ------------------------------------------------------------------------------------


def damage_pages(path: Path, first_page: int, pages: int) -> None:
    db = sqlite3.connect(path)  # fold the WAL in, so the damage lands in the main file
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray(path.read_bytes())
    for offset in range(4096 * first_page, 4096 * (first_page + pages)):
        data[offset] = 0xA5
    path.write_bytes(bytes(data))


def test_a_damaged_spool_is_salvaged_with_its_numbers_and_the_lost_ones_are_a_gap(tmp_path):
    path = tmp_path / "spool.db"
    before = big_spool(path)
    spool = Spool(path)
    spool.ack([1, 2])  # sent: neither lost nor salvaged
    del before[1], before[2]
    spool.close()
    damage_pages(path, 20, 2)

    fresh = Spool(path, gap_event=gap_event)
    rows = contents(fresh)
    salvaged = [row for row in rows if row[0] in before]
    assert salvaged == [before[row[0]] for row in salvaged]  # each as it was, with its number
    assert 50 <= len(salvaged) < 60
    gaps = [msgpack.unpackb(row[3]) for row in rows if row[0] > 62]
    lost = {s for _, _, d in gaps for s in range(d["first_seq"], d["last_seq"] + 1)}
    assert all(d["reason"] == "corrupt" for _, _, d in gaps)
    assert set(before) - {row[0] for row in salvaged} <= lost  # every payload missing is told
    assert fresh.birth_of(BOOT_A).body == b"birth A"
    assert fresh.birth_of(BOOT_B).body == b"birth B"
    assert fresh.store(items()) == [63 + len(gaps)]  # numbers continue past the highest
    aside = moved_aside(tmp_path)
    assert len(aside) == 1 and not (tmp_path / "spool.db.salvage").exists()
    assert fresh.recovery["salvaged"] == len(salvaged)
    assert fresh.recovery["file"] == aside[0]
    assert f"moved to {aside[0]}: {len(salvaged)} payloads salvaged" in fresh.recovered
    assert "\n" not in fresh.recovered


def test_a_file_of_garbage_is_kept_aside_and_the_numbers_restart_in_a_fresh_spool(tmp_path):
    path = tmp_path / "spool.db"
    path.write_bytes(b"this is not sqlite" * 100)
    spool = Spool(path)
    assert spool.store(items()) == [1]
    assert moved_aside(tmp_path) and spool.recovery["salvaged"] == 0


@pytest.mark.parametrize("size", [0, 10, 50, 2000])
def test_a_file_cut_short_while_it_was_created_is_replaced_not_kept(tmp_path, size):
    """A crash while SQLite writes a new file's first page leaves the start of its header: no
    table, so no payload, was ever in it. (0 bytes is an empty database to SQLite.)"""
    path = tmp_path / "spool.db"
    header = b"SQLite format 3\x00\x10\x00\x02\x02" + bytes(4096)
    path.write_bytes(header[:size])
    spool = Spool(path)
    assert moved_aside(tmp_path) == []
    assert spool.store(items()) == [1]
    if size:
        assert "cut short while it was being created" in spool.recovered
    else:
        assert spool.recovered is None


def test_a_recovery_a_crash_interrupted_is_finished_at_the_next_start(tmp_path):
    path = tmp_path / "spool.db"
    before = big_spool(path)
    damage_pages(path, 20, 2)
    crash = textwrap.dedent("""
        import os, sys
        from edge_agent.telemetry.spool import Spool
        replace = os.replace
        def crash(source, target):
            if str(source).endswith(".salvage"):
                os._exit(3)  # the damaged file is aside, the salvaged one not yet in place
            replace(source, target)
        os.replace = crash
        Spool(sys.argv[1])
    """)
    child = subprocess.run(
        [sys.executable, "-c", crash, str(path)], capture_output=True, text=True, timeout=30
    )
    assert child.returncode == 3, child.stderr
    assert not path.exists() and (tmp_path / "spool.db.salvage").exists()
    spool = Spool(path)
    assert not (tmp_path / "spool.db.salvage").exists()
    salvaged = [row for row in contents(spool) if row[0] in before]
    assert 50 <= len(salvaged) < 62 and salvaged == [before[row[0]] for row in salvaged]
    assert spool.store(items())[0] > 62
    [leftover] = spool.leftovers()
    assert leftover.salvaged and f"{len(salvaged)} payloads salvaged" in leftover.line


# -- files moved aside are never silent --------------------------------------------------------


def test_a_spool_an_older_agent_moved_aside_is_reported_and_numbers_continue_past_it(tmp_path):
    """What the issue found: a healthy spool with 159 unsent payloads renamed *.corrupt-* by
    an older agent, a 0-byte file left in its place."""
    path = tmp_path / "spool.db"
    spool_with(path, 158)  # a birth and 158 data frames: numbers 1..159
    path.rename(tmp_path / "spool.db.corrupt-20250101T000000")
    path.write_bytes(b"")
    spool = Spool(path)
    assert spool.store(items()) == [160]  # numbers continue past the orphan's
    [leftover] = spool.leftovers()
    line = leftover.line
    assert not leftover.salvaged and leftover.file == "spool.db.corrupt-20250101T000000"
    assert line.startswith(f"{tmp_path / 'spool.db.corrupt-20250101T000000'}: ")
    assert "never salvaged" in line and "numbered 1..159 in it were never sent" in line
    spool.close()
    assert Spool(path).leftovers() == [leftover]  # at every start


def test_a_spool_moved_aside_after_damage_is_reported_at_every_start_and_by_status(tmp_path):
    path = tmp_path / "spool.db"
    spool_with(path, 40)
    damage_pages(path, 3, 1)
    Spool(path).close()
    aside = moved_aside(tmp_path)
    [leftover] = Spool(path).leftovers()
    line = leftover.line
    assert line.startswith(f"{tmp_path / aside[0]}: damaged spool moved aside ")
    assert "payloads salvaged, at most" in line and "delete it when done" in line
    config = demo_config(spool=str(path))
    config = dataclasses.replace(
        config, service=dataclasses.replace(config.service, metrics_listen="")
    )
    lines, _ = report(config)
    assert f"  moved aside: {line}" in lines


def test_a_budget_the_file_system_cannot_hold_is_told(tmp_path):
    note = Spool(tmp_path / "a.db", max_bytes=2**60).budget_note()
    assert note.startswith(f"{tmp_path / 'a.db'}: [spool] max_bytes (") and "\n" not in note
    assert Spool(tmp_path / "b.db", max_bytes=4096).budget_note() is None
