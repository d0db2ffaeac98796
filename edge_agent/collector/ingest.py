"""The collector's sans-IO core: (topic, payload, time received) in, records in a `Store` out.

Parses the topic, decodes the payload (`edge_agent.telemetry.wire`), de-duplicates by
(machine, boot, seq), decodes data frames with their boot's birth (keeping those that arrive
before it until it does), and hands the store births, samples, events, gaps and deaths. Never
opens a socket or reads a clock: the MQTT side passes the time it received each message. Bad
input never raises: it gets one log line naming the topic and what is wrong, is counted and is
kept in the store's rejects, and the rest of its batch is stored. What is stored is never
replaced: a later payload that disagrees with it is a conflict, recorded beside it. Every size
is bounded before it is paid for (`wire.MAX_PAYLOAD_BYTES`, `wire.MAX_FRAME_VALUES`,
`wire.MAX_CHANNELS`) and every check is linear in the payload.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Iterable
from typing import NamedTuple

import msgpack

from .. import names
from ..telemetry import wire
from ..telemetry.wire import ChecksumError, WireError
from .store import (
    PENDING_BIRTH,
    REJECT_BODY_BYTES,
    STORED,
    UNDECODABLE,
    Birth,
    Conflict,
    Death,
    Event,
    Gap,
    Payload,
    Reject,
    Store,
    StoreError,
)

logger = logging.getLogger(__name__)

#: The agent's default `[upstream] topic_prefix`.
DEFAULT_PREFIX = "edge"
BOOT_BYTES = 8
#: Sequence numbers and stamps are SQLite (and most databases') 64-bit integers.
_INT64_MAX = (1 << 63) - 1
#: Channels of the decoded tables kept in memory (a channel is some 200 bytes of objects: 13
#: MB). Data frames need one live boot per machine, and a miss costs one indexed read: 256
#: machines of 200 channels stay cached, and a birth of wire.MAX_CHANNELS cannot evict more
#: than its share. The newest table always stays.
TABLE_CACHE_CHANNELS = 65_536
#: Machines the collector warns about for sending unchecked (wire v1) payloads, once each; past
#: this many, only the counter (every machine of a large plant fits, forged names do not grow it).
UNCHECKED_WARNED = 4096
#: How much of a bad value an error line quotes, and the longest error line kept.
_QUOTE = 60
_ERROR_CHARS = 400

#: One message as the MQTT side hands it over: topic, payload, time received (ns since epoch).
Message = tuple[str, bytes, int]
#: A payload the store holds: (machine key, boot, seq).
Receipt = tuple[str, bytes, int]


class _Received(NamedTuple):
    topic: str
    machine: str
    frame: dict
    payload: bytes
    received_ns: int


class Collector:
    """Turns the agents' messages into stored records. `counters` counts, over the collector's
    life, every message `received`, and then exactly one of `stored`, `duplicates` (another
    copy of a stored payload, the historical re-wrap of a data frame included), `conflicts`
    (the same machine, boot and seq with other content: the first is kept) or `bad` (refused:
    logged, kept in rejects); and besides: `births`, `data`, `events`, `deaths`, `samples`
    (rows), `historical` (replayed data frames stored), `pending_birth` (data frames stored to
    wait for their birth), `decoded_late` (those decoded when it came), `undecodable` (those
    that did not decode with it), `gaps`, `bad_gaps` (gap events whose detail is not usable:
    the event is stored, no gap), `birth_conflicts` (a further birth of a boot with another
    channel table: the first is kept), `bad_checksum` (those of `bad` that failed their
    checksum: damaged on the way) and `unchecked` (wire v1 payloads, which carry no checksum:
    decoded unchecked, then counted as any other)."""

    def __init__(self, store: Store, prefix: str = DEFAULT_PREFIX):
        self.store = store
        self.prefix = prefix.strip("/")
        self.counters: Counter[str] = Counter()
        self._tables: OrderedDict[tuple[str, bytes], list[wire.Channel]] = OrderedDict()
        self._cached_channels = 0
        self._unchecked_machines: set[str] = set()
        self._receipts: list[Receipt] = []  # the batch being stored

    def ingest(self, topic: str, payload: bytes, received_ns: int) -> Counter[str]:
        """One message; what it added to `counters`."""
        return self.ingest_many([(topic, payload, received_ns)])

    def ingest_many(
        self, messages: Iterable[Message], stored: list[Receipt] | None = None
    ) -> Counter[str]:
        """Messages in one store transaction; what they added to `counters` (counted once the
        batch is stored). `stored` gets, once the transaction committed, the (machine, boot,
        seq) of each message the store now holds: stored, or a copy of a stored one (what the
        collector acknowledges to the agent; a refused message or a conflict is not there).
        A storage failure (`StoreError`) stores none of the batch and is raised, so the caller
        neither acknowledges nor loses it. A message that makes the collector itself fail (a
        bug) is found by retrying the batch one message at a time, logged with its traceback
        and rejected; the others are stored."""
        messages = list(messages)
        try:
            return self._ingest_batch(messages, stored)
        except StoreError:
            raise
        except Exception as exc:
            if len(messages) > 1:
                total: Counter[str] = Counter()
                for message in messages:
                    total.update(self.ingest_many([message], stored))
                return total
            logger.exception("%s: internal error; payload rejected", _shown(messages[0][0]))
            error = f"internal error: {type(exc).__name__}: {exc}"
            return self._ingest_batch(messages, stored, error)

    def _ingest_batch(
        self, messages: list[Message], stored: list[Receipt] | None, internal_error: str = ""
    ) -> Counter[str]:
        """One transaction; with `internal_error`, each message is only rejected for it."""
        counts: Counter[str] = Counter()
        self._receipts = []
        try:
            with self.store.batch():
                for topic, payload, received_ns in messages:
                    if internal_error:
                        counts["received"] += 1
                        self._reject(topic, None, payload, received_ns, internal_error, counts)
                    else:
                        self._ingest_one(topic, payload, received_ns, counts)
        except BaseException:
            self._tables.clear()  # births of the batch were not stored
            self._cached_channels = 0
            raise
        self.counters.update(counts)
        if stored is not None:
            stored += self._receipts
        return counts

    def _ingest_one(self, topic: str, payload: bytes, received_ns: int, counts: Counter) -> None:
        """Every check that can refuse a message runs before its first write."""
        counts["received"] += 1
        machine = None
        try:
            if not isinstance(payload, bytes | bytearray | memoryview):
                raise WireError(f"payload is a {type(payload).__name__}, not bytes")
            payload = bytes(payload)
            machine, kind = self._parse_topic(topic)
            wire.check_size(payload, kind)
            frame = wire.decode(payload)
            if frame["v"] == wire.UNCHECKED_VERSION:
                self._unchecked(topic, machine, counts)
            if frame["k"] != kind:
                raise WireError(f"a {frame['k']} payload on a {kind} topic")
            _check_envelope(frame)
            handle = getattr(self, f"_{kind}")
            handle(_Received(topic, machine, frame, payload, received_ns), counts)
        except WireError as exc:
            if isinstance(exc, ChecksumError):
                counts["bad_checksum"] += 1
            self._reject(topic, machine, payload, received_ns, str(exc), counts)

    def _unchecked(self, topic: str, machine: str, counts: Counter) -> None:
        """A wire v1 payload (an agent not yet upgraded, or its spool from before): counted,
        and a warning the first time a machine sends one (bounded: a line per machine)."""
        counts["unchecked"] += 1
        if machine in self._unchecked_machines or len(self._unchecked_machines) >= UNCHECKED_WARNED:
            return
        self._unchecked_machines.add(machine)
        logger.warning(
            "%s: wire v1 payload, which has no checksum: read unchecked (counted `unchecked`;"
            " this line once per machine)",
            _shown(topic),
        )

    def _parse_topic(self, topic: str) -> tuple[str, str]:
        """`<prefix>/<site>/<machine>/<kind>` -> ("site/machine", kind)."""
        if not isinstance(topic, str):
            raise WireError(f"topic is a {type(topic).__name__}, not a string")
        rest = topic
        if self.prefix:
            if not topic.startswith(self.prefix + "/"):
                raise WireError(f"topic is not under the prefix {self.prefix + '/'!r}")
            rest = topic[len(self.prefix) + 1 :]
        levels = rest.split("/")
        if len(levels) != 3:
            raise WireError(f"topic is not {self._topic('<site>/<machine>', '<kind>')}")
        site, machine, kind = levels
        for what, level in (("site", site), ("machine", machine)):
            if not names.is_name(level):
                raise WireError(f"topic level {what} {_quote(level)} is not {names.RULE}")
        if kind not in wire.KINDS:
            raise WireError(
                f"topic level kind {_quote(kind)} is not one of {', '.join(wire.KINDS)}"
            )
        return f"{site}/{machine}", kind

    # -- by kind: each raises WireError only before it writes ----------------------------

    def _birth(self, m: _Received, counts: Counter) -> None:
        frame = m.frame
        channels = wire.channels_of(frame)
        twice = [n for n, k in Counter(c.name for c in channels).items() if k > 1]
        if twice:
            raise WireError(f"birth: more than one channel named {_quote(', '.join(twice))}")
        boot, seq = frame["b"], frame["s"]
        copy = self._copy_of_stored(m, counts)
        if copy is not None:
            if copy:  # the same birth again: the agent reconnected
                self.store.birth_seen(m.machine, boot, m.received_ns)
            return
        self._add_payload(m, counts)
        known = self._table(m.machine, boot)
        if known is not None:
            if known == channels:
                self.store.birth_seen(m.machine, boot, m.received_ns)
                return
            counts["birth_conflicts"] += 1
            first = self.store.birth_seq(m.machine, boot)
            self._conflict(m, self.store.payload_body(m.machine, boot, first), "channel_table")
            logger.warning(
                "%s: birth seq %d of boot %s has another channel table than the boot's "
                "first birth; data keeps decoding with the first",
                _shown(m.topic),
                seq,
                boot.hex(),
            )
            return
        agent, config_hash, firmware = (frame.get(key) for key in ("agent", "cfg", "fw"))
        self.store.add_birth(
            Birth(
                m.machine,
                boot,
                seq,
                frame["t"],
                m.received_ns,
                agent if isinstance(agent, str) else None,
                config_hash if isinstance(config_hash, bytes) else None,
                firmware if isinstance(firmware, str) else None,
                tuple(channels),
            )
        )
        self._remember(m.machine, boot, channels)
        self._decode_pending(m.machine, boot, channels, counts)

    def _data(self, m: _Received, counts: Counter) -> None:
        frame = m.frame
        if self._copy_of_stored(m, counts) is not None:
            return
        table = self._table(m.machine, frame["b"])
        if table is None:
            self._add_payload(m, counts, PENDING_BIRTH)
            counts["pending_birth"] += 1
            return
        series = _decoded(frame, table)
        self._add_payload(m, counts)
        counts["samples"] += self.store.add_samples(m.machine, frame["s"], series)

    def _event(self, m: _Received, counts: Counter) -> None:
        frame = m.frame
        kind, detail = frame["e"], frame["d"]
        if not (isinstance(kind, str) and isinstance(detail, dict)):
            raise WireError("event: its kind must be a string and its detail a map")
        if self._copy_of_stored(m, counts) is not None:
            return
        boot, seq, t_us = frame["b"], frame["s"], frame["t"]
        self._add_payload(m, counts)
        self.store.add_event(Event(m.machine, boot, seq, t_us, kind, detail))
        if kind != "gap":
            return
        try:
            first, last, count, reason = _gap_of(detail)
        except WireError as exc:
            counts["bad_gaps"] += 1
            logger.warning(
                "%s: event seq %d: %s; stored as an event only", _shown(m.topic), seq, exc
            )
            return
        self.store.add_gap(Gap(m.machine, boot, seq, t_us, first, last, count, reason))
        counts["gaps"] += 1

    def _death(self, m: _Received, counts: Counter) -> None:
        frame = m.frame
        if self.store.add_death(Death(m.machine, frame["b"], frame["bs"], m.received_ns)):
            counts["stored"] += 1
            counts["deaths"] += 1
        else:
            counts["duplicates"] += 1

    # -- helpers --------------------------------------------------------------------------

    def _copy_of_stored(self, m: _Received, counts: Counter) -> bool | None:
        """None when no payload of this (machine, boot, seq) is stored yet; True for another
        copy of the same content (its historical flag aside: a duplicate); False for other
        content (a conflict: recorded, the first kept, nothing of the second stored)."""
        frame = m.frame
        stored = self.store.payload_body(m.machine, frame["b"], frame["s"])
        if stored is None:
            return None
        if stored == m.payload or _content(wire.decode(stored)) == _content(frame):
            counts["duplicates"] += 1
            self._receipts.append((m.machine, frame["b"], frame["s"]))
            return True
        counts["conflicts"] += 1
        self._conflict(m, stored, "content")
        logger.warning(
            "%s: %s seq %d of boot %s is already stored with other content; kept the first",
            _shown(m.topic),
            frame["k"],
            frame["s"],
            frame["b"].hex(),
        )
        return False

    def _conflict(self, m: _Received, stored: bytes, what: str) -> None:
        frame = m.frame
        self.store.add_conflict(
            Conflict(
                m.machine,
                frame["b"],
                frame["s"],
                frame["k"],
                m.received_ns,
                hashlib.sha256(stored).digest(),
                hashlib.sha256(m.payload).digest(),
                what,
            )
        )

    def _add_payload(self, m: _Received, counts: Counter, status: str = STORED) -> None:
        frame = m.frame
        historical = frame["k"] == "data" and frame.get("h") is True
        self.store.add_payload(
            Payload(
                m.machine,
                frame["b"],
                frame["s"],
                frame["k"],
                frame["t"],
                historical,
                m.received_ns,
                m.payload,
                status,
            )
        )
        counts["stored"] += 1
        counts[_PLURAL[frame["k"]]] += 1
        self._receipts.append((m.machine, frame["b"], frame["s"]))
        if historical:
            counts["historical"] += 1

    def _decode_pending(
        self, machine: str, boot: bytes, table: list[wire.Channel], counts: Counter
    ) -> None:
        """Decode the data frames of a boot that arrived before its birth."""
        for seq in self.store.pending_seqs(machine, boot):
            body = self.store.payload_body(machine, boot, seq)
            try:
                series = _decoded(wire.decode(body), table)
            except WireError as exc:
                error = _one_line(str(exc))
                self.store.set_status(machine, boot, seq, UNDECODABLE, error)
                counts["undecodable"] += 1
                logger.warning(
                    "%s: data seq %d of boot %s, kept until its birth came, does not decode: %s",
                    self._topic(machine, "data"),
                    seq,
                    boot.hex(),
                    error,
                )
                continue
            counts["samples"] += self.store.add_samples(machine, seq, series)
            self.store.set_status(machine, boot, seq, STORED)
            counts["decoded_late"] += 1

    def _table(self, machine: str, boot: bytes) -> list[wire.Channel] | None:
        key = (machine, boot)
        table = self._tables.get(key)
        if table is not None:
            self._tables.move_to_end(key)
            return table
        table = self.store.channel_table(machine, boot)
        if table is not None:
            self._remember(machine, boot, table)
        return table

    def _remember(self, machine: str, boot: bytes, table: list[wire.Channel]) -> None:
        old = self._tables.pop((machine, boot), None)
        self._cached_channels += len(table) - (len(old) if old is not None else 0)
        self._tables[(machine, boot)] = table
        while self._cached_channels > TABLE_CACHE_CHANNELS and len(self._tables) > 1:
            _, evicted = self._tables.popitem(last=False)
            self._cached_channels -= len(evicted)

    def _reject(
        self,
        topic: str,
        machine: str | None,
        payload: bytes,
        received_ns: int,
        error: str,
        counts: Counter,
    ) -> None:
        error = _one_line(error)
        logger.warning("%s: %s", _shown(topic), error)
        counts["bad"] += 1
        body = bytes(payload) if isinstance(payload, bytes | bytearray | memoryview) else b""
        self.store.add_reject(
            Reject(received_ns, _shown(topic), machine, error, body[:REJECT_BODY_BYTES], len(body))
        )

    def _topic(self, machine: str, kind: str) -> str:
        return f"{self.prefix}/{machine}/{kind}" if self.prefix else f"{machine}/{kind}"


_PLURAL = {"birth": "births", "data": "data", "event": "events"}


def _check_envelope(frame: dict) -> None:
    """What every payload of its kind must carry, in the ranges a database can hold."""
    kind, boot = frame["k"], frame["b"]
    if not (isinstance(boot, bytes) and len(boot) == BOOT_BYTES):
        raise WireError(f"{kind}: the boot id must be a bin of {BOOT_BYTES} bytes")
    if kind == "death":
        if not _is_int(frame["bs"], 0):  # 0: the agent had no birth yet
            raise WireError(f"death: birth seq {_quote(frame['bs'])} is not an integer >= 0")
        return
    if not _is_int(frame["s"], 1):
        raise WireError(f"{kind}: seq {_quote(frame['s'])} is not a positive integer")
    if not _is_int(frame["t"], 0):
        raise WireError(f"{kind}: t {_quote(frame['t'])} is not µs since the epoch")


def _decoded(frame: dict, table: list[wire.Channel]) -> list[tuple[wire.Channel, wire.Series]]:
    """A data frame's series with their channels; stamps checked to fit 64 bits."""
    by_name = {c.name: c for c in table}
    out = []
    for name, series in wire.samples(frame, table).items():
        if not all(0 <= t <= _INT64_MAX for t in series.stamps_us):
            raise WireError(f"data: channel {name}: a stamp out of range")
        out.append((by_name[name], series))
    return out


def _gap_of(detail: dict) -> tuple[int, int, int, str]:
    first, last, count, reason = (
        detail.get(k) for k in ("first_seq", "last_seq", "count", "reason")
    )
    if not (
        _is_int(first, 1)
        and _is_int(last, first)
        and _is_int(count, 0, last - first + 1)
        and isinstance(reason, str)
    ):
        raise WireError(
            "gap: detail needs 1 <= first_seq <= last_seq, 0 <= count <= last_seq - first_seq"
            f" + 1 and a reason; got {_quote(detail)}"
        )
    return first, last, count, reason


def _content(frame: dict) -> bytes:
    """A decoded payload's content for comparing copies: the historical flag left out."""
    return msgpack.packb(sorted((k, v) for k, v in frame.items() if k != "h"))


def _is_int(value, low: int, high: int = _INT64_MAX) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _quote(value) -> str:
    text = repr(value)
    return text if len(text) <= _QUOTE else text[: _QUOTE - 3] + "..."


def _one_line(text: str) -> str:
    """An error as one line of at most _ERROR_CHARS (it may quote what a client sent)."""
    line = " ".join(text.splitlines())
    return line if len(line) <= _ERROR_CHARS else line[: _ERROR_CHARS - 3] + "..."


def _text(topic) -> str:
    """A topic as text a database takes (no lone surrogates)."""
    return str(topic).encode("utf-8", "backslashreplace").decode("utf-8")


def _shown(topic) -> str:
    """A topic for a log line: as it is when printable and short, else quoted."""
    text = _text(topic)
    return text if text.isprintable() and len(text) <= 200 else _quote(text)
