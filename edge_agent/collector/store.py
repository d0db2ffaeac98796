"""The collector's storage: what the agents sent, de-duplicated, decoded and queryable.

`Store` is what the collector (`ingest.py`) needs of a back end, so that a time-series database
can take the place of `SqliteStore`, the one shipped (stdlib sqlite3). A store never parses
topics or payload envelopes and never talks to the network: it keeps the validated records the
collector hands it, one batch per transaction. docs/collector.md describes the schema.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import NamedTuple, Protocol, TextIO, runtime_checkable

from ..telemetry import wire
from ..telemetry.decode import _json_safe
from ..telemetry.spool_faults import LOCKED, NOT_WRITABLE, primary_code

SCHEMA_VERSION = 2
#: `PRAGMA application_id` of a collector database ("EAcl"). An agent's spool is an SQLite file
#: with user_version 1 too: the id tells the two apart, so neither gets the other's tables.
APPLICATION_ID = 0x4541636C

#: A payload's `status`: decoded and stored; a data frame waiting for its boot's birth; a data
#: frame that waited and then did not decode with that birth (`error` says why).
STORED, PENDING_BIRTH, UNDECODABLE = "stored", "pending_birth", "undecodable"

CSV_HEADER = ("machine", "channel", "unit", "t_us", "value", "quality")

#: Bytes of a refused payload kept in `rejects`: its envelope (version, kind, boot, seq, t)
#: and the start of what is wrong, for whoever investigates; `size` says how long it was.
REJECT_BODY_BYTES = 4096
#: Rows of `rejects` and of `conflicts` kept, the newest: a client sending garbage without
#: end fills at most some 45 MB of rejects (10,000 x 4.5 kB) and 2 MB of conflicts.
REJECTS_KEPT = 10_000
CONFLICTS_KEPT = 10_000


class StoreError(Exception):
    """The store cannot be used or written: one line naming the database and why."""


class Payload(NamedTuple):
    """A birth, data frame or event as received, keyed by (machine, boot, seq)."""

    machine: str  # "site/machine"
    boot: bytes
    seq: int
    kind: str  # "birth", "data" or "event"
    t_us: int
    historical: bool  # a replayed data frame (ext `h`)
    received_ns: int
    body: bytes
    status: str = STORED


class Birth(NamedTuple):
    """What decoding a boot's data needs (the channel table), and who the agent was."""

    machine: str
    boot: bytes
    seq: int
    t_us: int
    received_ns: int
    agent: str | None
    config_hash: bytes | None
    firmware: str | None
    channels: tuple[wire.Channel, ...]


class Sample(NamedTuple):
    machine: str
    channel: str
    unit: str
    t_us: int
    value: float | None  # None unless quality is 0
    quality: int  # 0 good, 1 stale, 2 bad
    seq: int  # of the data frame it came in


class Event(NamedTuple):
    machine: str
    boot: bytes
    seq: int
    t_us: int
    kind: str
    detail: dict  # as JSON holds it: bytes as hex, NaN and infinities as strings


class Gap(NamedTuple):
    """Frames an agent dropped (disk budget, age) before they left it, from its "gap" event."""

    machine: str
    boot: bytes
    seq: int  # of the gap event
    t_us: int
    first_seq: int
    last_seq: int
    count: int  # exact; seqs in first..last that were delivered are not counted
    reason: str  # "disk_budget", "max_age", ...


class Death(NamedTuple):
    """The broker published an agent's last will (or the agent its death on a clean stop): the
    machine went offline. A boot may die several times: once per lost connection."""

    machine: str
    boot: bytes
    birth_seq: int
    received_ns: int


class Reject(NamedTuple):
    """A message refused on arrival, kept with the reason for whoever investigates."""

    received_ns: int
    topic: str
    machine: str | None  # when the topic named one
    error: str
    body: bytes  # its first REJECT_BODY_BYTES
    size: int | None = None  # the payload's length in bytes (None: rows of schema 1)


class Conflict(NamedTuple):
    """A payload under a stored (machine, boot, seq) with other content, or a further birth
    of a boot with another channel table: the first stays, this records the second."""

    machine: str
    boot: bytes
    seq: int
    kind: str  # the second payload's kind
    received_ns: int
    stored_sha256: bytes  # of the payload kept
    received_sha256: bytes  # of the payload not stored
    what: str  # "content" (same seq, other bytes) or "channel_table" (same boot)


@runtime_checkable
class Store(Protocol):
    """Storage for the collector. Writes happen inside `batch()` (one transaction: all of a
    batch or none of it); the collector checks `payload_body` before `add_payload`, so a store
    need not de-duplicate payloads itself. Deaths have no sequence number: `add_death` decides
    whether one is new, from the copies of the boot's birth seen since (`birth_seen`)."""

    def batch(self) -> AbstractContextManager[None]: ...

    def payload_body(self, machine: str, boot: bytes, seq: int) -> bytes | None: ...

    def add_payload(self, payload: Payload) -> None: ...

    def pending_seqs(self, machine: str, boot: bytes) -> list[int]: ...

    def set_status(
        self, machine: str, boot: bytes, seq: int, status: str, error: str | None = None
    ) -> None: ...

    def channel_table(self, machine: str, boot: bytes) -> list[wire.Channel] | None: ...

    def birth_seq(self, machine: str, boot: bytes) -> int | None: ...

    def add_birth(self, birth: Birth) -> None: ...

    def birth_seen(self, machine: str, boot: bytes, received_ns: int) -> None: ...

    def add_samples(
        self, machine: str, seq: int, series: Iterable[tuple[wire.Channel, wire.Series]]
    ) -> int: ...

    def add_event(self, event: Event) -> None: ...

    def add_gap(self, gap: Gap) -> None: ...

    def add_death(self, death: Death) -> bool: ...

    def add_reject(self, reject: Reject) -> None: ...

    def add_conflict(self, conflict: Conflict) -> None: ...

    def machines(self) -> list[str]: ...

    def samples(
        self,
        machine: str | None = None,
        channels: Iterable[str] | None = None,
        start_us: int | None = None,
        end_us: int | None = None,
    ) -> Iterator[Sample]: ...

    def events(
        self, machine: str | None = None, start_us: int | None = None, end_us: int | None = None
    ) -> list[Event]: ...

    def gaps(self, machine: str | None = None) -> list[Gap]: ...

    def deaths(self, machine: str | None = None) -> list[Death]: ...

    def rejects(self, machine: str | None = None) -> list[Reject]: ...

    def conflicts(self, machine: str | None = None) -> list[Conflict]: ...

    def missing_seqs(
        self, machine: str, unreported_only: bool = False
    ) -> list[tuple[int, int]]: ...

    def counts(self, machine: str | None = None) -> dict[str, int]: ...

    def export_csv(
        self,
        out: TextIO,
        machine: str | None = None,
        channels: Iterable[str] | None = None,
        start_us: int | None = None,
        end_us: int | None = None,
    ) -> int: ...

    def prune(self, older_than_us: int) -> dict[str, int]: ...

    def close(self) -> None: ...


_SCHEMA = f"""
BEGIN;
CREATE TABLE payloads (
    machine TEXT NOT NULL,
    boot BLOB NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    t_us INTEGER NOT NULL,
    historical INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    body BLOB NOT NULL,
    PRIMARY KEY (machine, boot, seq)
);
CREATE INDEX payloads_by_seq ON payloads (machine, seq);
CREATE INDEX payloads_by_time ON payloads (t_us);
CREATE INDEX payloads_pending ON payloads (machine, boot, seq) WHERE status = '{PENDING_BIRTH}';
CREATE TABLE births (
    machine TEXT NOT NULL,
    boot BLOB NOT NULL,
    seq INTEGER NOT NULL,
    t_us INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    agent TEXT,
    config_hash BLOB,
    firmware TEXT,
    channels TEXT NOT NULL,
    last_received_ns INTEGER NOT NULL,
    PRIMARY KEY (machine, boot)
);
CREATE TABLE series (
    id INTEGER PRIMARY KEY,
    machine TEXT NOT NULL,
    channel TEXT NOT NULL,
    unit TEXT NOT NULL,
    UNIQUE (machine, channel, unit)
);
CREATE TABLE samples (
    series INTEGER NOT NULL REFERENCES series (id),
    t_us INTEGER NOT NULL,
    value REAL,
    quality INTEGER NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX samples_by_time ON samples (series, t_us, seq);
CREATE VIEW sample_rows AS
    SELECT series.machine, series.channel, series.unit, samples.t_us, samples.value,
           samples.quality, samples.seq
    FROM samples JOIN series ON series.id = samples.series;
CREATE TABLE events (
    machine TEXT NOT NULL,
    boot BLOB NOT NULL,
    seq INTEGER NOT NULL,
    t_us INTEGER NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (machine, boot, seq)
);
CREATE INDEX events_by_time ON events (t_us);
CREATE TABLE gaps (
    machine TEXT NOT NULL,
    boot BLOB NOT NULL,
    seq INTEGER NOT NULL,
    t_us INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    count INTEGER NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (machine, boot, seq)
);
CREATE TABLE deaths (
    machine TEXT NOT NULL,
    boot BLOB NOT NULL,
    birth_seq INTEGER NOT NULL,
    received_ns INTEGER NOT NULL
);
CREATE INDEX deaths_by_boot ON deaths (machine, boot, received_ns);
CREATE TABLE rejects (
    received_ns INTEGER NOT NULL,
    topic TEXT NOT NULL,
    machine TEXT,
    error TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX rejects_by_time ON rejects (received_ns);
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = 1;
COMMIT;
"""

#: Schema 1 -> 2: the length of a rejected payload (its body is now a prefix), and conflicts.
_UPGRADE_TO_2 = """
BEGIN;
ALTER TABLE rejects ADD COLUMN size INTEGER;
CREATE TABLE conflicts (
    machine TEXT NOT NULL,
    boot BLOB NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    received_ns INTEGER NOT NULL,
    stored_sha256 BLOB NOT NULL,
    received_sha256 BLOB NOT NULL,
    what TEXT NOT NULL
);
CREATE INDEX conflicts_by_time ON conflicts (received_ns);
PRAGMA user_version = 2;
COMMIT;
"""


class SqliteStore:
    """`Store` in one SQLite file. WAL journal, `synchronous=FULL`: a batch that `batch()`
    committed survives a crash or power loss, so the MQTT side may acknowledge it. Use it from
    one thread at a time (it may be created in another)."""

    def __init__(self, path: str | Path, readonly: bool = False):
        """Open (or create) the store; `readonly` opens an existing one for queries only."""
        self.path = str(path)
        self._series_ids: dict[tuple[str, str, str], int] = {}
        try:
            if readonly:
                if not Path(self.path).is_file():
                    raise StoreError(f"{self.path}: no such collector database")
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            else:
                if self.path != ":memory:":
                    Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{self.path}: cannot open: {_reason(exc)}") from None
        try:
            self._open(readonly)
        except (sqlite3.Error, StoreError) as exc:
            self._db.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(_open_failure(self.path, exc)) from None

    def _open(self, readonly: bool) -> None:
        db = self._db
        app = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        empty = db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
        if not (empty and app == 0 and version == 0):
            if app != APPLICATION_ID:
                raise StoreError(f"{self.path}: not a collector database (an agent's spool?)")
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: collector schema version {version} is newer than this "
                    f"collector's ({SCHEMA_VERSION}); upgrade the collector"
                )
            if version < 1:
                raise StoreError(f"{self.path}: unknown collector schema version {version}")
            if readonly and version < SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: collector schema version {version} is older than this "
                    f"collector's ({SCHEMA_VERSION}); `edge-agent collect run` upgrades it"
                )
        if readonly:
            if empty:
                raise StoreError(f"{self.path}: not a collector database (empty)")
            return
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        if empty:
            db.executescript(_SCHEMA)
            version = 1
        if version == 1:
            db.executescript(_UPGRADE_TO_2)

    # -- writing -------------------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction: everything written inside is committed together, or, when anything
        raises, nothing is (a storage failure comes out as `StoreError`)."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot write: {exc}") from None
        try:
            yield
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:  # SQLite may already have rolled back (disk full, I/O error)
                db.execute("ROLLBACK")
            self._series_ids.clear()  # ids handed out in the batch are gone
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{self.path}: batch not stored: {exc}") from exc
            raise

    def payload_body(self, machine: str, boot: bytes, seq: int) -> bytes | None:
        row = self._db.execute(
            "SELECT body FROM payloads WHERE machine = ? AND boot = ? AND seq = ?",
            (machine, boot, seq),
        ).fetchone()
        return None if row is None else row[0]

    def add_payload(self, payload: Payload) -> None:
        self._db.execute(
            "INSERT INTO payloads (machine, boot, seq, kind, t_us, historical, received_ns,"
            " status, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                payload.machine,
                payload.boot,
                payload.seq,
                payload.kind,
                payload.t_us,
                int(payload.historical),
                payload.received_ns,
                payload.status,
                payload.body,
            ),
        )

    def pending_seqs(self, machine: str, boot: bytes) -> list[int]:
        """Data frames of a boot waiting for its birth, by seq."""
        rows = self._db.execute(
            "SELECT seq FROM payloads WHERE machine = ? AND boot = ? AND status = ? ORDER BY seq",
            (machine, boot, PENDING_BIRTH),
        )
        return [seq for (seq,) in rows]

    def set_status(
        self, machine: str, boot: bytes, seq: int, status: str, error: str | None = None
    ) -> None:
        self._db.execute(
            "UPDATE payloads SET status = ?, error = ? WHERE machine = ? AND boot = ? AND seq = ?",
            (status, error, machine, boot, seq),
        )

    def channel_table(self, machine: str, boot: bytes) -> list[wire.Channel] | None:
        row = self._db.execute(
            "SELECT channels FROM births WHERE machine = ? AND boot = ?", (machine, boot)
        ).fetchone()
        return None if row is None else _table_from_json(row[0])

    def birth_seq(self, machine: str, boot: bytes) -> int | None:
        """The seq of the boot's first birth (whose table its data decodes with)."""
        row = self._db.execute(
            "SELECT seq FROM births WHERE machine = ? AND boot = ?", (machine, boot)
        ).fetchone()
        return None if row is None else row[0]

    def add_birth(self, birth: Birth) -> None:
        self._db.execute(
            "INSERT INTO births (machine, boot, seq, t_us, received_ns, agent, config_hash,"
            " firmware, channels, last_received_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                *birth[:8],
                _table_json(birth.channels),
                birth.received_ns,
            ),
        )

    def birth_seen(self, machine: str, boot: bytes, received_ns: int) -> None:
        """Another copy of a boot's birth arrived: the agent re-publishes it at every connect,
        so the boot is online again."""
        self._db.execute(
            "UPDATE births SET last_received_ns = MAX(last_received_ns, ?)"
            " WHERE machine = ? AND boot = ?",
            (received_ns, machine, boot),
        )

    def add_samples(
        self, machine: str, seq: int, series: Iterable[tuple[wire.Channel, wire.Series]]
    ) -> int:
        """A data frame's samples, each channel's in its series (machine, name, unit); a sample
        that is not good is stored with its quality and no value. The number of rows."""
        rows = []
        for channel, s in series:
            series_id = self._series_id(machine, channel.name, channel.unit)
            flagged = dict(s.quality)
            for i, (t_us, value) in enumerate(zip(s.stamps_us, s.values, strict=True)):
                quality = flagged.get(i, 0)
                rows.append((series_id, t_us, None if quality else value, quality, seq))
        self._db.executemany(
            "INSERT INTO samples (series, t_us, value, quality, seq) VALUES (?, ?, ?, ?, ?)", rows
        )
        return len(rows)

    def _series_id(self, machine: str, channel: str, unit: str) -> int:
        key = (machine, channel, unit)
        series_id = self._series_ids.get(key)
        if series_id is None:
            db = self._db
            db.execute(
                "INSERT OR IGNORE INTO series (machine, channel, unit) VALUES (?, ?, ?)", key
            )
            series_id = db.execute(
                "SELECT id FROM series WHERE machine = ? AND channel = ? AND unit = ?", key
            ).fetchone()[0]
            self._series_ids[key] = series_id
        return series_id

    def add_event(self, event: Event) -> None:
        self._db.execute(
            "INSERT INTO events (machine, boot, seq, t_us, kind, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (*event[:5], json.dumps(_json_safe(event.detail))),
        )

    def add_gap(self, gap: Gap) -> None:
        self._db.execute(
            "INSERT INTO gaps (machine, boot, seq, t_us, first_seq, last_seq, count, reason)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            gap,
        )

    def add_death(self, death: Death) -> bool:
        """Record a death, unless it repeats one of that boot and birth received no earlier
        than the last copy of the boot's birth: a second copy of a will the machine has not
        come back from since. False for such a copy."""
        db = self._db
        again = db.execute(
            "SELECT 1 FROM deaths WHERE machine = ? AND boot = ? AND birth_seq = ?"
            " AND received_ns >= COALESCE("
            "  (SELECT last_received_ns FROM births WHERE machine = ? AND boot = ?), -1)"
            " LIMIT 1",
            (death.machine, death.boot, death.birth_seq, death.machine, death.boot),
        ).fetchone()
        if again:
            return False
        db.execute(
            "INSERT INTO deaths (machine, boot, birth_seq, received_ns) VALUES (?, ?, ?, ?)", death
        )
        return True

    def add_reject(self, reject: Reject) -> None:
        """Keep a refused message: its first REJECT_BODY_BYTES, and only the newest
        REJECTS_KEPT rows."""
        size = len(reject.body) if reject.size is None else reject.size
        self._db.execute(
            "INSERT INTO rejects (received_ns, topic, machine, error, body, size)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (*reject[:4], reject.body[:REJECT_BODY_BYTES], size),
        )
        self._keep_newest("rejects", REJECTS_KEPT)

    def add_conflict(self, conflict: Conflict) -> None:
        """Record a conflict (the stored payload is never touched); the newest CONFLICTS_KEPT."""
        self._db.execute(
            "INSERT INTO conflicts (machine, boot, seq, kind, received_ns, stored_sha256,"
            " received_sha256, what) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            conflict,
        )
        self._keep_newest("conflicts", CONFLICTS_KEPT)

    def _keep_newest(self, table: str, rows: int) -> None:
        """Delete all but the newest `rows` rows of a table. Its rowids only grow (a new row
        gets the largest plus one), so this is a range delete, one or no row each time."""
        self._db.execute(
            f"DELETE FROM {table} WHERE rowid <= (SELECT MAX(rowid) FROM {table}) - ?", (rows,)
        )

    # -- reading -------------------------------------------------------------------------

    def machines(self) -> list[str]:
        rows = self._db.execute(
            "SELECT machine FROM payloads UNION SELECT machine FROM series"
            " UNION SELECT machine FROM deaths ORDER BY 1"
        )
        return [machine for (machine,) in rows]

    def samples(
        self,
        machine: str | None = None,
        channels: Iterable[str] | None = None,
        start_us: int | None = None,
        end_us: int | None = None,
    ) -> Iterator[Sample]:
        """Samples by machine, channel and unit, each series in time order; `start_us`
        inclusive, `end_us` exclusive. Do not write to the store while iterating."""
        where, args = _filters(machine=machine, channel=channels)
        chosen = self._db.execute(
            f"SELECT id, machine, channel, unit FROM series{where} ORDER BY machine, channel, unit",
            args,
        ).fetchall()
        lo = -(1 << 63) if start_us is None else start_us
        hi = (1 << 63) - 1 if end_us is None else end_us
        for series_id, machine_key, channel, unit in chosen:
            rows = self._db.execute(
                "SELECT t_us, value, quality, seq FROM samples"
                " WHERE series = ? AND t_us >= ? AND t_us < ? ORDER BY t_us, seq",
                (series_id, lo, hi),
            )
            for t_us, value, quality, seq in rows:
                yield Sample(machine_key, channel, unit, t_us, value, quality, seq)

    def events(
        self, machine: str | None = None, start_us: int | None = None, end_us: int | None = None
    ) -> list[Event]:
        where, args = _filters(machine=machine, start_us=start_us, end_us=end_us)
        rows = self._db.execute(
            f"SELECT machine, boot, seq, t_us, kind, detail FROM events{where}"
            " ORDER BY machine, t_us, seq",
            args,
        )
        return [Event(*row[:5], json.loads(row[5])) for row in rows]

    def gaps(self, machine: str | None = None) -> list[Gap]:
        where, args = _filters(machine=machine)
        rows = self._db.execute(
            "SELECT machine, boot, seq, t_us, first_seq, last_seq, count, reason"
            f" FROM gaps{where} ORDER BY machine, first_seq, seq",
            args,
        )
        return [Gap(*row) for row in rows]

    def deaths(self, machine: str | None = None) -> list[Death]:
        where, args = _filters(machine=machine)
        rows = self._db.execute(
            "SELECT machine, boot, birth_seq, received_ns"
            f" FROM deaths{where} ORDER BY machine, received_ns",
            args,
        )
        return [Death(*row) for row in rows]

    def rejects(self, machine: str | None = None) -> list[Reject]:
        where, args = _filters(machine=machine)
        rows = self._db.execute(
            f"SELECT received_ns, topic, machine, error, body, size FROM rejects{where}"
            " ORDER BY received_ns, rowid",
            args,
        )
        return [Reject(*row) for row in rows]

    def conflicts(self, machine: str | None = None) -> list[Conflict]:
        where, args = _filters(machine=machine)
        rows = self._db.execute(
            "SELECT machine, boot, seq, kind, received_ns, stored_sha256, received_sha256, what"
            f" FROM conflicts{where} ORDER BY received_ns, rowid",
            args,
        )
        return [Conflict(*row) for row in rows]

    def missing_seqs(self, machine: str, unreported_only: bool = False) -> list[tuple[int, int]]:
        """Holes in a machine's sequence numbers between the lowest and the highest stored
        (across its boots: one space per agent), as inclusive ranges (first, last).
        `unreported_only` leaves out the seqs inside a gap the agent reported."""
        holes = [
            (first, last)
            for first, last in self._db.execute(
                "SELECT previous + 1, seq - 1 FROM ("
                " SELECT seq, LAG(seq) OVER (ORDER BY seq) AS previous"
                " FROM (SELECT DISTINCT seq FROM payloads WHERE machine = ?)"
                ") WHERE seq > previous + 1 ORDER BY seq",
                (machine,),
            )
        ]
        if not unreported_only:
            return holes
        reported = self._db.execute(
            "SELECT first_seq, last_seq FROM gaps WHERE machine = ? ORDER BY first_seq",
            (machine,),
        ).fetchall()
        return _subtract(holes, reported)

    def counts(self, machine: str | None = None) -> dict[str, int]:
        """Rows stored, by table (of one machine, or of all); `dropped` sums the frames the
        agents reported lost in gaps (in Python: a sum of 64-bit counts may not fit 64 bits,
        and SQLite's SUM() raises on that)."""
        where, args = _filters(machine=machine)
        db = self._db

        def one(sql: str, extra: tuple = ()) -> int:
            return db.execute(sql, (*extra, *args)).fetchone()[0] or 0

        dropped = sum(count for (count,) in db.execute(f"SELECT count FROM gaps{where}", args))

        status_where = " WHERE status = ?" + (" AND machine = ?" if machine is not None else "")
        return {
            "payloads": one(f"SELECT COUNT(*) FROM payloads{where}"),
            "births": one(f"SELECT COUNT(*) FROM births{where}"),
            "samples": one(
                f"SELECT COUNT(*) FROM samples WHERE series IN (SELECT id FROM series{where})"
            ),
            "events": one(f"SELECT COUNT(*) FROM events{where}"),
            "gaps": one(f"SELECT COUNT(*) FROM gaps{where}"),
            "dropped": dropped,
            "deaths": one(f"SELECT COUNT(*) FROM deaths{where}"),
            "pending_birth": one(f"SELECT COUNT(*) FROM payloads{status_where}", (PENDING_BIRTH,)),
            "undecodable": one(f"SELECT COUNT(*) FROM payloads{status_where}", (UNDECODABLE,)),
            "rejects": one(f"SELECT COUNT(*) FROM rejects{where}"),
            "conflicts": one(f"SELECT COUNT(*) FROM conflicts{where}"),
        }

    def export_csv(
        self,
        out: TextIO,
        machine: str | None = None,
        channels: Iterable[str] | None = None,
        start_us: int | None = None,
        end_us: int | None = None,
    ) -> int:
        """Samples as CSV (`CSV_HEADER`, a header line first); the number of sample rows."""
        return write_csv(out, self.samples(machine, channels, start_us, end_us))

    # -- upkeep --------------------------------------------------------------------------

    def prune(self, older_than_us: int) -> dict[str, int]:
        """Delete what is older than `older_than_us` (µs since the epoch): samples, payloads,
        events and gaps by their stamps, deaths, rejects and conflicts by when they arrived. Births
        stay (a row per agent start): a boot's late or replayed data still needs its table.
        Rows deleted, by table."""
        cutoff_ns = older_than_us * 1000
        deleted: Counter[str] = Counter()
        with self.batch():
            db = self._db
            for (series_id,) in db.execute("SELECT id FROM series").fetchall():
                deleted["samples"] += db.execute(
                    "DELETE FROM samples WHERE series = ? AND t_us < ?", (series_id, older_than_us)
                ).rowcount
            for table in ("payloads", "events", "gaps"):
                sql = f"DELETE FROM {table} WHERE t_us < ?"
                deleted[table] = db.execute(sql, (older_than_us,)).rowcount
            for table in ("deaths", "rejects", "conflicts"):
                sql = f"DELETE FROM {table} WHERE received_ns < ?"
                deleted[table] = db.execute(sql, (cutoff_ns,)).rowcount
            db.execute(
                "DELETE FROM series WHERE NOT EXISTS"
                " (SELECT 1 FROM samples WHERE samples.series = series.id)"
            )
            self._series_ids.clear()
        return {table: deleted[table] for table in _PRUNED}

    def close(self) -> None:
        self._db.close()


_PRUNED = ("samples", "payloads", "events", "gaps", "deaths", "rejects", "conflicts")


def write_csv(out: TextIO, samples: Iterable[Sample]) -> int:
    """Samples as CSV rows `machine,channel,unit,t_us,value,quality` under a header line; a
    value that is not good is empty. Values print as Python's shortest round-trip repr."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    n = 0
    for s in samples:
        writer.writerow(
            (s.machine, s.channel, s.unit, s.t_us, "" if s.value is None else s.value, s.quality)
        )
        n += 1
    return n


def _open_failure(path: str, exc: sqlite3.Error) -> str:
    """The one line for a database that did not open: a lock or a permission is said as such
    (the file may be fine), only the rest is "not a usable collector database"."""
    code = primary_code(exc)
    if code in LOCKED:
        return f"{path}: locked by another process ({exc}): a second collector on this file?"
    if code in NOT_WRITABLE or code == sqlite3.SQLITE_CANTOPEN:
        return f"{path}: cannot be written by this user ({exc})"
    return f"{path}: not a usable collector database: {exc}"


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _filters(
    machine: str | None = None,
    channel: Iterable[str] | None = None,
    start_us: int | None = None,
    end_us: int | None = None,
) -> tuple[str, tuple]:
    """A WHERE clause (or "") and its arguments."""
    terms, args = [], []
    if machine is not None:
        terms.append("machine = ?")
        args.append(machine)
    if channel is not None:
        names = list(channel)
        terms.append(f"channel IN ({', '.join('?' * len(names))})" if names else "0")
        args += names
    if start_us is not None:
        terms.append("t_us >= ?")
        args.append(start_us)
    if end_us is not None:
        terms.append("t_us < ?")
        args.append(end_us)
    return (" WHERE " + " AND ".join(terms) if terms else ""), tuple(args)


def _subtract(
    ranges: list[tuple[int, int]], covered: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Inclusive `ranges` less the inclusive `covered` ranges (both sorted by start)."""
    out = []
    for first, last in ranges:
        for c_first, c_last in covered:
            if c_last < first or c_first > last:
                continue
            if c_first > first:
                out.append((first, c_first - 1))
            first = max(first, c_last + 1)
            if first > last:
                break
        if first <= last:
            out.append((first, last))
    return out


def _table_json(channels: list[wire.Channel]) -> str:
    """The channel table as people query it: one [name, unit, quantum, kind, period_us,
    group, ref] row per alias, the quantum a number and the kind its name (the wire's row is
    terser: docs/wire-format.md)."""
    rows = [[c.name, c.unit, c.quantum, c.kind, c.period_us, c.group, c.ref] for c in channels]
    return json.dumps(rows, separators=(",", ":"))


def _table_from_json(text: str) -> list[wire.Channel]:
    return [wire.Channel(alias, *row) for alias, row in enumerate(json.loads(text))]
