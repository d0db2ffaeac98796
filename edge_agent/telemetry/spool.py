"""The durable spool: every payload is committed to SQLite, with its sequence number allocated
in the same transaction, before it counts as produced; it leaves only once the upstream has
acknowledged it, or when the disk budget or the age limit drops it (with a gap event).

WAL journal, `synchronous=FULL`: a payload `store` returned for survives a crash or power
loss (docs/spool.md says what SQLite promises). The next number is the newest payload's plus
one, or the counter row's if higher; deleting payloads raises the counter first. So a number
is never reused or skipped, and a store writes no page but its payload's (SD-card wear).
`AsyncSpool` runs all of it in one worker thread: the event loop never waits on the disk.

Errors are classified (`classify`). An operational one (a lock another process holds, a file
or folder this user may not write, a full disk, an I/O error) is a `SpoolUnavailable`: one
line, the file left exactly as it is, the caller retries later or refuses to start. Only
damage (SQLite finds the file corrupt or not a database, or `PRAGMA quick_check` fails at
start) moves a file aside: what still reads of it goes into the fresh spool with its numbers,
the numbers continue past the highest seen, and the file moved aside is reported at every
start until someone deletes it (`salvage.py` does the reading; docs/spool.md).
Never deletes a payload that was not acknowledged or dropped by the budget with a gap event.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..durable import sync_directory
from .salvage import (
    COMPANIONS,
    Salvage,
    highest_number,
    holds_nothing,
    moved_aside,
    numbers_in,
    read_damaged,
)
from .spool_faults import (
    SpoolCorrupt,
    SpoolError,
    SpoolFull,
    SpoolIOError,
    SpoolLocked,
    SpoolReadOnly,
    SpoolUnavailable,
    classify,
    free_bytes,
)

__all__ = [
    "AsyncSpool",
    "Leftover",
    "Spool",
    "SpoolCorrupt",
    "SpoolError",
    "SpoolFull",
    "SpoolIOError",
    "SpoolLocked",
    "SpoolReadOnly",
    "SpoolUnavailable",
    "Stored",
]

SCHEMA_VERSION = 2

# `salvaged` came after version 2 without a new version: an older agent never reads it and
# its own schema script leaves it alone, so both can open the file.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    seq INTEGER PRIMARY KEY,
    stored_ns INTEGER NOT NULL,
    type TEXT NOT NULL,
    body BLOB NOT NULL,
    boot BLOB
);
DROP INDEX IF EXISTS frames_boot;
CREATE TABLE IF NOT EXISTS births (
    boot BLOB PRIMARY KEY,
    seq INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    next_seq INTEGER NOT NULL
);
INSERT OR IGNORE INTO counter (id, next_seq) VALUES (1, 1);
CREATE TABLE IF NOT EXISTS salvaged (
    file TEXT PRIMARY KEY,
    at_ns INTEGER NOT NULL,
    reason TEXT NOT NULL,
    salvaged INTEGER NOT NULL,
    lost INTEGER NOT NULL
);
"""
_TABLES = {"frames", "births", "counter", "salvaged"}

#: A payload, or a function that makes it from its sequence number (payloads that carry it).
Body = bytes | Callable[[int], bytes]
#: Makes the gap event for dropped frames: (its sequence number, detail) -> payload.
GapEvent = Callable[[int, dict], bytes]

#: The next sequence number: past the newest payload, and past every number ever handed out.
_NEXT_SEQ = (
    "SELECT MAX((SELECT next_seq FROM counter WHERE id = 1), "
    "COALESCE((SELECT MAX(seq) FROM frames), 0) + 1)"
)

#: Rows per DELETE statement (SQLite's default limit on bound parameters is 32766).
_CHUNK = 500

#: How long a statement waits for another connection's write lock (SQLite's busy timeout)
#: before it is a `SpoolLocked`: far longer than any transaction of the agent's own (a store
#: of one commit interval's frames takes milliseconds, a budget drop of thousands of rows
#: well under a second on a Pi), short enough that a start refuses promptly (systemd starts
#: it again) and that frames held up by someone's sqlite3 session are soon held in memory.
BUSY_TIMEOUT_S = 5.0


class Leftover(NamedTuple):
    """A file moved aside beside the spool, and the line that reports it."""

    file: str  # its name, beside the spool
    salvaged: bool  # False: moved aside without salvage (an older agent): its payloads unsent
    line: str


@dataclass(frozen=True)
class Stored:
    """One payload in the spool."""

    seq: int
    stored_ns: int
    kind: str  # birth, data, event
    boot: bytes | None
    body: bytes


class Spool:
    """Synchronous SQLite spool; use it from one thread (`AsyncSpool` does).

    `max_bytes` bounds the payload bytes kept (SQLite's pages add a few percent on disk),
    `max_age_s` their age; when either is exceeded on a store, the oldest payloads go and a
    gap event made by `gap_event` records how many, in the same transaction. Every method
    raises only `SpoolError`s: `SpoolUnavailable` (retry later), `SpoolCorrupt`, or a plain
    `SpoolError` (a file that is not a spool, a newer schema)."""

    def __init__(
        self,
        path: str | Path,
        max_bytes: int | None = None,
        max_age_s: float | None = None,
        now_ns: Callable[[], int] = time.time_ns,
        gap_event: GapEvent | None = None,
        readonly: bool = False,
        busy_timeout_s: float | None = None,
    ):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age_ns = None if max_age_s is None else int(max_age_s * 1e9)
        self._now_ns = now_ns
        self._gap_event = gap_event
        # Read at call time, so that a test may shorten the module's bound.
        self.busy_timeout_s = BUSY_TIMEOUT_S if busy_timeout_s is None else busy_timeout_s
        #: One line when the start found damage and salvaged the file (the agent logs it
        #: and sends a `spool_corrupt` event with `recovery` as its detail).
        self.recovered: str | None = None
        self.recovery: dict | None = None
        self.counters: Counter[str] = Counter()
        if readonly:
            self._db = self._open_readonly()
        else:
            self._finish_interrupted_recovery()
            try:
                self._db = self._open()
            except SpoolCorrupt as damage:
                self._db = self._recover(damage)
        with self._errors():
            self._bytes = self._db.execute(
                "SELECT COALESCE(SUM(LENGTH(body)), 0) FROM frames"
            ).fetchone()[0]

    # -- opening ------------------------------------------------------------------------

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLite's and the OS's errors out as one-line `SpoolError`s."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise classify(self.path, exc, self.busy_timeout_s) from None

    def _connect(self, path: Path) -> sqlite3.Connection:
        with self._errors():
            path.parent.mkdir(parents=True, exist_ok=True)
            return sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout_s
            )

    def _open(self) -> sqlite3.Connection:
        """The file as a spool, its schema made or brought up to date. Damage comes out as
        `SpoolCorrupt`, anything else as its own `SpoolError`: never a reason to move it."""
        db = self._connect(self.path)
        try:
            with self._errors():
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise SpoolError(
                        f"{self.path}: spool schema version {version} is newer than "
                        f"this agent's ({SCHEMA_VERSION}); upgrade the agent"
                    )
                check = db.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise SpoolCorrupt(f"{self.path}: integrity check failed: {check}")
                self._refuse_foreign(db, version)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                # Debian builds SQLite with secure_delete on: every acknowledged payload would
                # be overwritten with zeros, a second write of everything (telemetry is no
                # secret on the device that measured it).
                db.execute("PRAGMA secure_delete=OFF")
                if version == 1:  # the first sink's schema: frames had no boot column
                    db.execute("ALTER TABLE frames ADD COLUMN boot BLOB")
                db.executescript(_SCHEMA)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self._continue_numbers(db)
        except BaseException:
            db.close()
            raise
        return db

    def _refuse_foreign(self, db: sqlite3.Connection, version: int) -> None:
        """A database of something else (the collector's, say) is not made into a spool."""
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if version == 0 and tables - _TABLES:
            raise SpoolError(
                f"{self.path}: not an edge-agent spool (it has tables "
                f"{', '.join(sorted(tables - _TABLES))}); point [spool] path elsewhere"
            )

    def _continue_numbers(self, db: sqlite3.Connection) -> None:
        """A spool that never handed out a number starts past the highest number of any file
        moved aside beside it, so that what those hold could still be sent one day."""
        fresh = db.execute(
            "SELECT next_seq = 1 AND NOT EXISTS (SELECT 1 FROM frames) FROM counter"
        ).fetchone()[0]
        if not fresh:
            return
        highest = max((highest_number(p) for p in moved_aside(self.path)), default=0)
        if highest:
            db.execute("UPDATE counter SET next_seq = ? WHERE id = 1", (highest + 1,))

    # -- damage ---------------------------------------------------------------------------

    def _recover(self, damage: SpoolCorrupt) -> sqlite3.Connection:
        """Salvage a damaged file: what still reads goes into a new file (`<name>.salvage`),
        with a gap event per range of numbers that did not read; then the damaged file (with
        its -wal and -shm) is renamed `<name>.corrupt-<UTC time>` and the new one takes its
        place. A crash at any point leaves either the damaged file in place (salvaged again
        at the next start) or the salvaged one ready to take its place (see
        `_finish_interrupted_recovery`). A file cut short while being created is replaced."""
        reason = str(damage).removeprefix(f"{self.path}: ")
        if holds_nothing(self.path):
            size = self.path.stat().st_size
            with self._errors():
                for old in _with_companions(self.path):
                    old.unlink(missing_ok=True)
            db = self._open()
            self.recovered = (
                f"{self.path}: {size} bytes, cut short while it was being created ({reason}): "
                "it held no payload and was replaced by a fresh spool"
            )
            self.recovery = {"file": None, "reason": reason, "salvaged": 0, "lost": 0}
            self.counters["cut_short_replaced"] += 1
            return db
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 0
        while any(p.exists() for p in _with_companions(aside)):  # damaged twice in a second
            n += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        salvage = Path(f"{self.path}.salvage")
        try:
            found = self._write_salvage(salvage, aside.name, reason)
        except SpoolError as exc:
            for partial in _with_companions(salvage):
                with suppress(OSError):
                    partial.unlink()
            raise type(exc)(
                f"{self.path}: {reason}, and cannot be salvaged: "
                f"{str(exc).removeprefix(f'{self.path}: ')}"
            ) from None
        with self._errors():
            for old, new in zip(_with_companions(self.path), _with_companions(aside), strict=True):
                if old.exists():  # the companions first: a crash then leaves the file alone
                    old.rename(new)
            os.replace(salvage, self.path)
            sync_directory(self.path.parent)
        db = self._open()
        salvaged = found.salvaged
        self.recovery = {
            "file": aside.name,
            "reason": reason,
            "salvaged": salvaged,
            "lost": found.lost_count,
            "lost_seqs": [list(r) for r in found.lost],
            "next_seq": self._next_seq_of(db),
        }
        numbers = (
            f"numbers continue from {self.recovery['next_seq']}"
            if self.recovery["next_seq"] > 1
            else "nothing of it read: sequence numbers restart at 1"
        )
        self.recovered = (
            f"{self.path}: {reason}; moved to {aside.name}: {salvaged} payloads salvaged, "
            f"{_lost_words(found)}; {numbers}"
        )
        self.counters["corrupt_recovered"] += 1
        return db

    def _write_salvage(self, path: Path, aside: str, reason: str) -> Salvage:
        """The fresh spool with everything that reads of the damaged one, built beside it in
        one transaction (rollback journal, so that it is a single file once closed)."""
        with self._errors():
            for stale in _with_companions(path):
                stale.unlink(missing_ok=True)
        db = self._connect(path)
        try:
            with self._errors():
                db.execute("PRAGMA journal_mode=DELETE")
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(_SCHEMA)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                db.execute("BEGIN IMMEDIATE")

                def keep(rows: list[tuple]) -> None:
                    db.executemany(
                        "INSERT INTO frames (seq, stored_ns, type, body, boot) "
                        "VALUES (?, ?, ?, ?, ?)",
                        rows,
                    )

                found = read_damaged(self.path, self.busy_timeout_s, keep)
                db.executemany(
                    "INSERT INTO births (boot, seq, body) VALUES (?, ?, ?)",
                    [(boot, seq, body) for boot, (seq, body) in found.births.items()],
                )
                next_seq, now = found.next_seq, self._now_ns()
                for first, last in found.lost if self._gap_event is not None else ():
                    detail = {
                        "first_seq": first,
                        "last_seq": last,
                        "count": last - first + 1,  # at most: some may have been acknowledged
                        "reason": "corrupt",
                    }
                    db.execute(
                        "INSERT INTO frames (seq, stored_ns, type, body, boot) "
                        "VALUES (?, ?, 'event', ?, NULL)",
                        (next_seq, now, self._gap_event(next_seq, detail)),
                    )
                    next_seq += 1
                db.execute("UPDATE counter SET next_seq = ? WHERE id = 1", (next_seq,))
                db.execute(
                    "INSERT INTO salvaged (file, at_ns, reason, salvaged, lost) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (aside, now, reason, found.salvaged, found.lost_count),
                )
                db.execute("COMMIT")
        finally:
            db.close()
        return found

    def _finish_interrupted_recovery(self) -> None:
        """A salvaged file whose damaged original is already moved aside takes its place; a
        salvaged file beside the damaged original is unfinished and goes (it is made again)."""
        salvage = Path(f"{self.path}.salvage")
        if not salvage.exists():
            return
        with self._errors():
            if self.path.exists():
                for partial in _with_companions(salvage):
                    partial.unlink(missing_ok=True)
            else:
                os.replace(salvage, self.path)
                sync_directory(self.path.parent)

    def _next_seq_of(self, db: sqlite3.Connection) -> int:
        with self._errors():
            return db.execute(_NEXT_SEQ).fetchone()[0]

    def leftovers(self) -> list[Leftover]:
        """One line per file moved aside beside the spool: when and why, what was salvaged of
        it, or, for one never salvaged (moved by an older agent), the numbers it holds unsent.
        The agent logs them at every start; `edge-agent status` shows them."""
        with self._errors():
            known = (
                {
                    row[0]: row[1:]
                    for row in self._db.execute(
                        "SELECT file, at_ns, reason, salvaged, lost FROM salvaged"
                    )
                }
                if self._has_table("salvaged")
                else {}
            )
        lines = []
        for path in moved_aside(self.path):
            if path.name in known:
                at_ns, reason, salvaged, lost = known[path.name]
                when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at_ns / 1e9))
                line = (
                    f"{path}: damaged spool moved aside {when} ({reason}): {salvaged} "
                    f"payloads salvaged, at most {lost} lost; kept for inspection, delete "
                    "it when done"
                )
                lines.append(Leftover(path.name, True, line))
                continue
            numbers = numbers_in(path)
            held = (
                f"payloads numbered {numbers[0]}..{numbers[1]} in it were never sent"
                if numbers
                else "no payload in it reads"
            )
            line = (
                f"{path}: a spool moved aside and never salvaged: {held}; "
                f"`edge-agent decode {path}` shows them"
            )
            lines.append(Leftover(path.name, False, line))
        return lines

    def _has_table(self, name: str) -> bool:
        return (
            self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
            ).fetchone()
            is not None
        )

    def budget_note(self) -> str | None:
        """A warning when `max_bytes` is more than the file system can hold: a long outage
        then fills the disk before the budget drops anything."""
        free = free_bytes(self.path)
        if self.max_bytes is None or free is None or self.max_bytes <= self._bytes + free:
            return None
        return (
            f"{self.path}: [spool] max_bytes ({self.max_bytes / 2**20:.0f} MiB) is more than "
            f"its file system holds ({(self._bytes + free) / 2**20:.0f} MiB with the spool): "
            "a long outage fills the disk before the budget drops the oldest payloads"
        )

    def _open_readonly(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise SpoolError(f"{self.path}: no such spool file")
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=self.busy_timeout_s)
            version = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            error = classify(self.path, exc, self.busy_timeout_s)
            if isinstance(error, SpoolCorrupt):
                raise SpoolCorrupt(f"{self.path}: not a usable spool database: {exc}") from None
            raise error from None
        if version not in (1, SCHEMA_VERSION):
            db.close()
            raise SpoolError(f"{self.path}: not an edge-agent spool (schema version {version})")
        return db

    # -- writing --------------------------------------------------------------------------

    def store(self, items: list[tuple[str, bytes | None, Body]]) -> list[int]:
        """Store payloads (kind, boot, body) in one transaction; their sequence numbers, in
        order. A body may be a function of its sequence number: it is called inside the
        transaction that allocates the number. The budget is enforced in the same one."""
        if not items:
            return []
        with self._transaction() as db:
            first = self._next_seq()
            seqs = list(range(first, first + len(items)))
            now = self._now_ns()
            rows = []
            for seq, (kind, boot, body) in zip(seqs, items, strict=True):
                payload = body(seq) if callable(body) else body
                rows.append((seq, now, kind, payload, boot))
                if kind == "birth":
                    db.execute(
                        "INSERT OR REPLACE INTO births (boot, seq, body) VALUES (?, ?, ?)",
                        (boot, seq, payload),
                    )
            db.executemany(
                "INSERT INTO frames (seq, stored_ns, type, body, boot) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            added = sum(len(row[3]) for row in rows)
            next_seq = first + len(items)
            dropped_bytes = 0
            for reason, victims in self._over_budget(now, added, newest=seqs[-1]):
                dropped_bytes += self._drop(victims)
                detail = {
                    "first_seq": victims[0][0],
                    "last_seq": victims[-1][0],
                    "count": len(victims),
                    "reason": reason,
                }
                if self._gap_event is not None:
                    payload = self._gap_event(next_seq, detail)
                    db.execute(
                        "INSERT INTO frames (seq, stored_ns, type, body, boot) "
                        "VALUES (?, ?, 'event', ?, NULL)",
                        (next_seq, now, payload),
                    )
                    added += len(payload)
                    seqs.append(next_seq)
                    next_seq += 1
                self.counters[f"dropped_{reason}"] += len(victims)
        self._bytes += added - dropped_bytes
        self.counters["stored"] += len(items)
        return seqs

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed, or rolled back on any error."""
        db = self._db
        with self._errors():
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite may have rolled back already (disk full, I/O)
                    with suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise

    def _next_seq(self) -> int:
        return self._db.execute(_NEXT_SEQ).fetchone()[0]

    def _over_budget(
        self, now_ns: int, added: int, newest: int
    ) -> list[tuple[str, list[tuple[int, int]]]]:
        """The oldest rows (seq, size) to drop, by reason: first those past the age limit, then
        as many more as bring the payload bytes within the budget. Never the `newest` row: a
        budget smaller than one payload still keeps the last."""
        total = self._bytes + added
        cutoff = None if self.max_age_ns is None else now_ns - self.max_age_ns
        by_age: list[tuple[int, int]] = []
        by_bytes: list[tuple[int, int]] = []
        after = 0
        while True:
            rows = self._db.execute(
                "SELECT seq, stored_ns, LENGTH(body) FROM frames WHERE seq > ? AND seq < ? "
                "ORDER BY seq LIMIT 256",
                (after, newest),
            ).fetchall()
            for seq, stored_ns, size in rows:
                if cutoff is not None and stored_ns < cutoff:
                    by_age.append((seq, size))
                elif self.max_bytes is not None and total > self.max_bytes:
                    by_bytes.append((seq, size))
                else:
                    return _by_reason(by_age, by_bytes)
                total -= size
            if len(rows) < 256:
                return _by_reason(by_age, by_bytes)
            after = rows[-1][0]

    def _drop(self, victims: list[tuple[int, int]]) -> int:
        seqs = [seq for seq, _ in victims]
        for start in range(0, len(seqs), _CHUNK):
            chunk = seqs[start : start + _CHUNK]
            self._db.execute(
                f"DELETE FROM frames WHERE seq IN ({','.join('?' * len(chunk))})", chunk
            )
        self._prune_births()
        return sum(size for _, size in victims)

    def ack(self, seqs: list[int]) -> int:
        """Delete acknowledged payloads (one transaction); how many were still here."""
        if not seqs:
            return 0
        with self._transaction() as db:
            db.execute("UPDATE counter SET next_seq = ? WHERE id = 1", (self._next_seq(),))
            sizes = []
            for start in range(0, len(seqs), _CHUNK):
                chunk = seqs[start : start + _CHUNK]
                sizes += db.execute(
                    f"DELETE FROM frames WHERE seq IN ({','.join('?' * len(chunk))}) "
                    "RETURNING LENGTH(body)",
                    chunk,
                ).fetchall()
            self._prune_births()
        self._bytes -= sum(size for (size,) in sizes)
        self.counters["acked"] += len(sizes)
        return len(sizes)

    def _prune_births(self) -> None:
        """A boot's birth is kept while any payload of that boot is, and the newest always:
        the upstream re-sends it before replaying that boot's frames. (Frames have no index on
        boot, one page less to write per store: the scan runs only while older births exist.)"""
        if self._db.execute("SELECT COUNT(*) FROM births").fetchone()[0] > 1:
            self._db.execute(
                "DELETE FROM births WHERE seq < (SELECT MAX(seq) FROM births) AND NOT EXISTS "
                "(SELECT 1 FROM frames WHERE frames.boot = births.boot)"
            )

    # -- reading --------------------------------------------------------------------------

    def pending(self, after_seq: int = 0, limit: int = 1000) -> list[Stored]:
        """Payloads still to be acknowledged, oldest first, after `after_seq`."""
        with self._errors():
            return [
                Stored(*row)
                for row in self._db.execute(
                    "SELECT seq, stored_ns, type, boot, body FROM frames WHERE seq > ? "
                    "ORDER BY seq LIMIT ?",
                    (after_seq, limit),
                )
            ]

    def frames(self, after_seq: int = 0, limit: int = 1000) -> Iterator[Stored]:
        """Every stored payload in sequence order, read `limit` at a time."""
        while True:
            rows = self.pending(after_seq, limit)
            yield from rows
            if len(rows) < limit:
                return
            after_seq = rows[-1].seq

    def birth_of(self, boot: bytes) -> Stored | None:
        """The stored birth of a boot (kept while that boot has payloads here)."""
        with self._errors():
            row = self._db.execute(
                "SELECT seq, body FROM births WHERE boot = ?", (boot,)
            ).fetchone()
        return None if row is None else Stored(row[0], 0, "birth", boot, row[1])

    def last_seq(self) -> int:
        """The newest number allocated (0 before the first)."""
        with self._errors():
            return self._next_seq() - 1

    def stats(self) -> dict[str, int]:
        """Depth (payloads), payload bytes and the oldest payload's store time (0 if empty)."""
        with self._errors():
            depth, oldest = self._db.execute(
                "SELECT COUNT(*), COALESCE(MIN(stored_ns), 0) FROM frames"
            ).fetchone()
        return {"depth": depth, "bytes": self._bytes, "oldest_stored_ns": oldest}

    def pragma(self, name: str):
        """A PRAGMA's value as this connection runs with it (tests, `edge-agent status`); with
        `name=value`, sets it (tests: `max_page_count` makes a full disk in this process)."""
        with self._errors():
            row = self._db.execute(f"PRAGMA {name}").fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        with self._errors():
            self._db.close()


def _by_reason(by_age: list, by_bytes: list) -> list[tuple[str, list[tuple[int, int]]]]:
    reasons = (("max_age", by_age), ("disk_budget", by_bytes))
    return [(reason, rows) for reason, rows in reasons if rows]


def _with_companions(path: Path) -> list[Path]:
    """A database file and the files SQLite keeps beside it, companions first."""
    return [Path(f"{path}{suffix}") for suffix in COMPANIONS] + [path]


def _lost_words(found: Salvage) -> str:
    if not found.lost:
        return "none lost"
    ranges = ", ".join(f"{a}..{b}" if a != b else str(a) for a, b in found.lost)
    return f"at most {found.lost_count} lost (numbers {ranges})"


class AsyncSpool:
    """A `Spool` driven from asyncio: its SQLite work runs in one dedicated thread."""

    def __init__(self, path: str | Path, **options):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self.path = Path(path)
        self._options = options
        self.spool: Spool | None = None

    async def open(self) -> Spool:
        self.spool = await self._run(lambda: Spool(self.path, **self._options))
        return self.spool

    async def store(self, items: list[tuple[str, bytes | None, Body]]) -> list[int]:
        """Store payloads in one transaction, in the spool's thread; their numbers."""
        return await self._run(self._open_spool().store, items)

    async def pending(self, after_seq: int = 0, limit: int = 1000) -> list[Stored]:
        return await self._run(self._open_spool().pending, after_seq, limit)

    async def ack(self, seqs: list[int]) -> int:
        return await self._run(self._open_spool().ack, seqs)

    async def birth_of(self, boot: bytes) -> Stored | None:
        return await self._run(self._open_spool().birth_of, boot)

    async def last_seq(self) -> int:
        return await self._run(self._open_spool().last_seq)

    async def stats(self) -> dict[str, int]:
        return await self._run(self._open_spool().stats)

    async def leftovers(self) -> list[Leftover]:
        return await self._run(self._open_spool().leftovers)

    async def budget_note(self) -> str | None:
        return await self._run(self._open_spool().budget_note)

    async def close(self) -> None:
        if self.spool is not None:
            await self._run(self.spool.close)
            self.spool = None
        self._executor.shutdown(wait=True)

    def _open_spool(self) -> Spool:
        if self.spool is None:
            raise RuntimeError(f"{self.path}: spool not open (await open() first)")
        return self.spool

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
