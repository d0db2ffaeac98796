"""The durable spool: every payload is committed to SQLite, with its sequence number allocated
in the same transaction, before it counts as produced; it leaves only once the upstream has
acknowledged it, or when the disk budget or the age limit drops it (with a gap event).

WAL journal, `synchronous=FULL`: a payload `store` returned for survives a crash or power
loss (docs/spool.md says what SQLite promises). The next number is the newest payload's plus
one, or the counter row's if higher; deleting payloads raises the counter first. So a number
is never reused or skipped, and a store writes no page but its payload's (SD-card wear). A
file that fails its integrity check at start is moved aside (kept for inspection) and a fresh
spool starts. `AsyncSpool` runs all of it in one worker thread: the event loop never waits on
the disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 2

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
"""

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


class SpoolError(Exception):
    """The spool's file cannot be used: one line naming the path and why."""


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
    gap event made by `gap_event` records how many, in the same transaction."""

    def __init__(
        self,
        path: str | Path,
        max_bytes: int | None = None,
        max_age_s: float | None = None,
        now_ns: Callable[[], int] = time.time_ns,
        gap_event: GapEvent | None = None,
        readonly: bool = False,
    ):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age_ns = None if max_age_s is None else int(max_age_s * 1e9)
        self._now_ns = now_ns
        self._gap_event = gap_event
        #: One line when a corrupt file was moved aside at start (the agent sends an event).
        self.recovered: str | None = None
        self.counters: Counter[str] = Counter()
        if readonly:
            self._db = self._open_readonly()
        else:
            try:
                self._db = self._open()
            except sqlite3.DatabaseError as exc:
                self._db = self._start_afresh(str(exc))
        self._bytes = self._db.execute(
            "SELECT COALESCE(SUM(LENGTH(body)), 0) FROM frames"
        ).fetchone()[0]

    # -- opening ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.OperationalError) as exc:
            raise SpoolError(f"{self.path}: cannot open: {getattr(exc, 'strerror', exc)}") from None

    def _open(self) -> sqlite3.Connection:
        db = self._connect()
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SpoolError(
                    f"{self.path}: spool schema version {version} is newer than "
                    f"this agent's ({SCHEMA_VERSION}); upgrade the agent"
                )
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {check}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            # Debian builds SQLite with secure_delete on: every acknowledged payload would be
            # overwritten with zeros, a second write of everything (telemetry is no secret on
            # the device that measured it).
            db.execute("PRAGMA secure_delete=OFF")
            if version == 1:  # the first sink's schema: frames had no boot column
                db.execute("ALTER TABLE frames ADD COLUMN boot BLOB")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    def _start_afresh(self, reason: str) -> sqlite3.Connection:
        """Move a corrupt file aside (with its WAL) and open a fresh one. The sequence counter
        carries over when the old file still yields it, so numbers are not reused."""
        next_seq = _salvage_next_seq(self.path)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            for suffix in ("", "-wal", "-shm"):
                old = Path(f"{self.path}{suffix}")
                if old.exists():
                    old.rename(f"{aside}{suffix}")
        except OSError as exc:
            raise SpoolError(
                f"{self.path}: corrupt ({reason}) and cannot be moved aside: {exc.strerror}"
            ) from None
        db = self._open()
        if next_seq is not None:
            db.execute("UPDATE counter SET next_seq = ? WHERE id = 1", (next_seq,))
        carried = "numbers continue" if next_seq else "sequence numbers restart at 1"
        self.recovered = (
            f"{self.path}: corrupt ({reason}); moved to {aside.name}, a fresh spool started "
            f"({carried})"
        )
        self.counters["corrupt_recovered"] += 1
        return db

    def _open_readonly(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise SpoolError(f"{self.path}: no such spool file")
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            version = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise SpoolError(f"{self.path}: not a usable spool database: {exc}") from None
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
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
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
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite may already have rolled back (disk full, I/O error)
                db.execute("ROLLBACK")
            raise
        self._bytes += added - dropped_bytes
        self.counters["stored"] += len(items)
        return seqs

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
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
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
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
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
        row = self._db.execute("SELECT seq, body FROM births WHERE boot = ?", (boot,)).fetchone()
        return None if row is None else Stored(row[0], 0, "birth", boot, row[1])

    def last_seq(self) -> int:
        """The newest number allocated (0 before the first)."""
        return self._next_seq() - 1

    def stats(self) -> dict[str, int]:
        """Depth (payloads), payload bytes and the oldest payload's store time (0 if empty)."""
        depth, oldest = self._db.execute(
            "SELECT COUNT(*), COALESCE(MIN(stored_ns), 0) FROM frames"
        ).fetchone()
        return {"depth": depth, "bytes": self._bytes, "oldest_stored_ns": oldest}

    def pragma(self, name: str):
        """A PRAGMA's value as this connection runs with it (tests, `edge-agent status`)."""
        return self._db.execute(f"PRAGMA {name}").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def _by_reason(by_age: list, by_bytes: list) -> list[tuple[str, list[tuple[int, int]]]]:
    reasons = (("max_age", by_age), ("disk_budget", by_bytes))
    return [(reason, rows) for reason, rows in reasons if rows]


def _salvage_next_seq(path: Path) -> int | None:
    """The counter of a damaged spool, when it can still be read."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return db.execute(_NEXT_SEQ).fetchone()[0]
        finally:
            db.close()
    except (sqlite3.Error, TypeError):
        return None


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
