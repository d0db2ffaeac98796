"""Reading what still reads of a damaged spool, and finding the files moved aside beside one.

A damaged b-tree page makes a scan fail where it lies; the rows on either side still read.
`read_damaged` walks the payloads in sequence order and, where a read fails, probes forward
(doubling, then halving back) for the first row that reads again, recording the numbers in
between as lost. Sequence numbers are inside the payloads, so they are kept as they are.
Only reads: the one write is a WAL checkpoint, which copies what the write-ahead log holds
into the file, as SQLite does on the next open anyway.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path

#: What SQLite files start with; a crash while the file is being created leaves a prefix.
MAGIC = b"SQLite format 3\x00"
#: Rows read per query while the pages hold together.
_BATCH = 256
#: Sequence numbers are SQLite integers: probing stops past this.
_MAX_SEQ = 2**62

_ROWS = "SELECT seq, stored_ns, type, body, boot FROM frames WHERE seq > ? ORDER BY seq LIMIT ?"
_FIRST_FROM = (
    "SELECT seq, stored_ns, type, body, boot FROM frames WHERE seq >= ? ORDER BY seq LIMIT 1"
)
#: Suffixes of SQLite's companion files, moved with the file they belong to.
COMPANIONS = ("-wal", "-shm", "-journal")


#: Takes rows (seq, stored_ns, type, body, boot) as they are read, a batch at a time: a
#: gigabyte of spool is never in memory at once.
Keep = Callable[[list[tuple]], None]


@dataclass
class Salvage:
    """What read of a damaged spool (the rows went to `keep`)."""

    salvaged: int = 0  # payloads that read
    births: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)  # boot: (seq, body)
    next_seq: int = 1  # past every number the file shows was handed out
    lost: list[tuple[int, int]] = field(default_factory=list)  # numbers that did not read

    @property
    def lost_count(self) -> int:
        """At most this many payloads were lost: some numbers in the ranges may have been
        acknowledged (deleted) before the damage."""
        return sum(last - first + 1 for first, last in self.lost)


def read_damaged(path: Path, busy_timeout_s: float, keep: Keep) -> Salvage:
    """Everything of the spool at `path` that still reads: its payloads to `keep`."""
    found = Salvage()
    # Fold what the write-ahead log holds into the file (a file whose header is gone keeps
    # its log: it is moved aside with it).
    with suppress(sqlite3.Error), closing(sqlite3.connect(path, timeout=busy_timeout_s)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    try:
        db = sqlite3.connect(path, timeout=busy_timeout_s)
    except sqlite3.Error:
        return found
    with closing(db):
        counted = _numbers_handed_out(db)
        births: list[tuple[bytes, int, bytes]] = []
        with suppress(sqlite3.Error):
            births += db.execute("SELECT boot, seq, body FROM births").fetchall()

        def kept(rows: list[tuple]) -> None:
            keep(rows)
            found.salvaged += len(rows)
            found.next_seq = max(found.next_seq, rows[-1][0] + 1)
            births.extend((boot, seq, body) for seq, _, kind, body, boot in rows if kind == "birth")

        _read_rows(db, found, kept)
        found.next_seq = max(
            [counted, found.next_seq] + [last + 1 for _, last in found.lost if last is not None]
        )
        # A range that ran to the end stops at the last number handed out.
        found.lost = [
            (first, found.next_seq - 1 if last is None else last)
            for first, last in found.lost
            if last is not None or first <= found.next_seq - 1
        ]
        for boot, seq, body in births:  # the newest birth of each boot
            if boot is not None and seq >= found.births.get(boot, (0, b""))[0]:
                found.births[boot] = (seq, body)
    return found


def _numbers_handed_out(db: sqlite3.Connection) -> int:
    """The next number by the counter row and by the newest payload, where they read."""
    best = 1
    for query in ("SELECT next_seq FROM counter WHERE id = 1", "SELECT MAX(seq) + 1 FROM frames"):
        with suppress(sqlite3.Error, TypeError):
            value = db.execute(query).fetchone()[0]
            if isinstance(value, int):
                best = max(best, value)
    return best


def _read_rows(db: sqlite3.Connection, found: Salvage, keep: Keep) -> None:
    after = 0  # every row numbered above this is still to read
    while True:
        try:
            batch = db.execute(_ROWS, (after, _BATCH)).fetchall()
        except sqlite3.Error:
            batch = None
        if batch is not None:
            if batch:
                keep(batch)
            if len(batch) < _BATCH:
                return
            after = batch[-1][0]
            continue
        # A damaged page within the next batch: one row at a time up to it, then past it.
        try:
            row = db.execute(_FIRST_FROM, (after + 1,)).fetchone()
        except sqlite3.Error:
            row = _first_readable_after(db, after)
            if row is None:
                found.lost.append((after + 1, None))
                return
            found.lost.append((after + 1, row[0] - 1))
        if row is None:
            return
        keep([row])
        after = row[0]


def _first_readable_after(db: sqlite3.Connection, after: int) -> tuple | None:
    """The first row past a damaged one that reads whole: probe at doubling distances until
    a read works, then halve back to the nearest probe that works. None if none does."""
    failed, step = after + 1, 1  # reading from after + 1 failed
    while after + step < _MAX_SEQ:
        step *= 2
        probe = after + step
        try:
            row = db.execute(_FIRST_FROM, (probe,)).fetchone()
        except sqlite3.Error:
            failed = probe
            continue
        while probe - failed > 1:  # failed < probe: the nearest start that reads
            middle = (failed + probe) // 2
            try:
                nearer = db.execute(_FIRST_FROM, (middle,)).fetchone()
            except sqlite3.Error:
                failed = middle
            else:
                probe, row = middle, nearer
        return row
    return None


def holds_nothing(path: Path) -> bool:
    """Whether a file that does not open was cut short while it was being created: SQLite's
    header (or a prefix of it) and less than two pages, no write-ahead log: no table, so no
    payload, was ever in it. A file of anything else is not ours to throw away."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(100)
        wal = Path(f"{path}-wal")
        if wal.exists() and wal.stat().st_size > 0:
            return False
    except OSError:
        return False
    if not head or not (head.startswith(MAGIC) or MAGIC.startswith(head)):
        return False
    page = int.from_bytes(head[16:18], "big") if len(head) >= 18 else 512
    page = 65536 if page == 1 else max(page, 512)
    return size < 2 * page


def moved_aside(path: Path) -> list[Path]:
    """The files moved aside beside the spool at `path` (`<name>.corrupt-<UTC time>`),
    oldest first, without their companion files."""
    prefix = f"{path.name}.corrupt-"
    try:
        names = [p for p in path.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return []
    return sorted(p for p in names if not p.name.endswith(COMPANIONS))


def numbers_in(path: Path) -> tuple[int, int] | None:
    """The lowest and highest payload numbers a spool file holds, where its edges read (no
    full scan: a file of a gigabyte answers at once); None if it holds none or none read."""
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)) as db:
            low, high = db.execute("SELECT MIN(seq), MAX(seq) FROM frames").fetchone()
    except sqlite3.Error:
        return None
    return None if low is None else (low, high)


def highest_number(path: Path) -> int:
    """The highest number a spool file shows was handed out (0 if nothing reads)."""
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)) as db:
            return _numbers_handed_out(db) - 1
    except sqlite3.Error:
        return 0
