"""The durable local sink: every frame is committed to SQLite, with its sequence number
allocated in the same transaction, before anything else happens to it.

WAL journal, `synchronous=FULL`: a frame `store` returned for survives a crash or power
loss. The counter is its own row, so a number is never reused or skipped even after rows
are deleted (the store-and-forward spool deletes acknowledged frames). `AsyncFrameSink`
runs all of it in one worker thread: the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    seq INTEGER PRIMARY KEY,
    stored_ns INTEGER NOT NULL,
    type TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    next_seq INTEGER NOT NULL
);
INSERT OR IGNORE INTO counter (id, next_seq) VALUES (1, 1);
"""


#: A frame body, or a function that makes it from the frame's sequence number.
Body = bytes | Callable[[int], bytes]


class SinkError(Exception):
    """The sink's file cannot be used: one line naming the path and why."""


class FrameSink:
    """Synchronous SQLite sink; use it from one thread (`AsyncFrameSink` does)."""

    def __init__(self, path: str | Path, readonly: bool = False):
        """Open (or create) the sink; `readonly` opens an existing one for reading only."""
        self.path = Path(path)
        try:
            if readonly:
                if not self.path.is_file():
                    raise SinkError(f"{self.path}: no such spool file")
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SinkError(
                    f"{self.path}: spool schema version {version} is newer than "
                    f"this agent's ({SCHEMA_VERSION}); upgrade the agent"
                )
            if readonly:
                if version != SCHEMA_VERSION:
                    raise SinkError(
                        f"{self.path}: not an edge-agent spool (schema version {version})"
                    )
                return
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise SinkError(f"{self.path}: not a usable spool database: {exc}") from None
        except OSError as exc:
            raise SinkError(f"{self.path}: cannot open: {exc.strerror or exc}") from None

    def store(self, bodies: list[tuple[str, Body]]) -> list[int]:
        """Store frames (type, body) in one transaction; their sequence numbers, in order.
        A body may be a function of its sequence number (payloads that carry it): it is
        called inside the transaction that allocates the number."""
        if not bodies:
            return []
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            first = db.execute("SELECT next_seq FROM counter WHERE id = 1").fetchone()[0]
            seqs = list(range(first, first + len(bodies)))
            now = time.time_ns()
            rows = [
                (seq, now, kind, body(seq) if callable(body) else body)
                for seq, (kind, body) in zip(seqs, bodies, strict=True)
            ]
            db.executemany(
                "INSERT INTO frames (seq, stored_ns, type, body) VALUES (?, ?, ?, ?)", rows
            )
            db.execute("UPDATE counter SET next_seq = ? WHERE id = 1", (first + len(bodies),))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite may already have rolled back (disk full, I/O error)
                db.execute("ROLLBACK")
            raise
        return seqs

    def frames(
        self, after_seq: int = 0, limit: int = 1000
    ) -> Iterator[tuple[int, int, str, bytes]]:
        """Stored frames in sequence order: (seq, stored_ns, type, body)."""
        while True:
            rows = self._db.execute(
                "SELECT seq, stored_ns, type, body FROM frames WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
            yield from rows
            if len(rows) < limit:
                return
            after_seq = rows[-1][0]

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM frames").fetchone()[0]

    def bytes_stored(self) -> int:
        return self._db.execute("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM frames").fetchone()[0]

    def close(self) -> None:
        self._db.close()


class AsyncFrameSink:
    """A `FrameSink` driven from asyncio: its SQLite work runs in one dedicated thread."""

    def __init__(self, path: str | Path):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink")
        self.path = Path(path)
        self._sink: FrameSink | None = None

    async def open(self) -> None:
        self._sink = await self._run(FrameSink, self.path)

    async def store(self, bodies: list[tuple[str, Body]]) -> list[int]:
        """Store frames in one transaction, in the sink's thread; their sequence numbers."""
        if self._sink is None:
            raise RuntimeError(f"{self.path}: sink not open (await open() first)")
        return await self._run(self._sink.store, bodies)

    async def close(self) -> None:
        if self._sink is not None:
            await self._run(self._sink.close)
            self._sink = None
        self._executor.shutdown(wait=True)

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
