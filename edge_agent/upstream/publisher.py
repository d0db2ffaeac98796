"""Spool -> upstream: payloads in sequence order, deleted from the spool only once the plant
stored them (docs/upstream.md, "End-to-end delivery").

On every connection the boot's birth goes first (retained, so a collector that subscribes
later still gets the channel table), then the spool from its oldest payload: what was stored
before the connection came up is replayed with data frames flagged historical, and a boot's
birth is re-sent before that boot's frames.

With `delivery = "stored"` (the default) a broker's PUBACK only frees a place in the window
of `window` publishes; a payload leaves the spool when the collector's acknowledgement on
`<prefix>/<site>/<machine>/ack` names it (`ack.py`). What the plant has not confirmed is
sent again after a timeout, with backoff and a congestion limit (`outstanding.py`). With
`delivery = "broker"`, or a link whose acknowledgement means stored (the file upstream's
fsync), the PUBACK is the confirmation. A payload the broker refuses (an MQTT 5 PUBACK reason
code of 0x80 or more) stays in the spool, counted, and is sent again after the timeout.
Confirmed payloads are deleted in batches: fewer commits, less SD-card wear. The spool's
operational errors (locked, disk full) are logged once and retried; they never end the
publisher.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import suppress

from ..backoff import Backoff
from ..config import DELIVERY_MODES
from ..telemetry import wire
from ..telemetry.spool import AsyncSpool, SpoolError, Stored
from . import UpstreamError, ack
from .mqtt_link import REFUSED
from .outstanding import Outstanding
from .reconnect import Link, stay_connected

log = logging.getLogger(__name__)

#: Confirmed payloads are deleted at least this often, or every `ACK_BATCH` of them.
ACK_INTERVAL_S = 0.25
ACK_BATCH = 256
#: Unconfirmed payloads sent again wait twice as long each time, up to this: a collector back
#: from an outage hears from an agent within a minute, and a payload the plant never takes
#: costs one message a minute.
RESEND_MAX_S = 60.0
#: After a spool error (locked by another process, disk full) the spool is tried again after
#: this: a lock clears in moments, a full disk when space is freed; a retry costs one query.
SPOOL_RETRY_S = 1.0


#: Makes a link: (the death payload to leave as its will, the event to set on progress).
LinkFactory = Callable[[bytes, asyncio.Event], Link]


class Topics:
    """`<prefix>/<site>/<machine>/{birth,data,event,death,ack}`."""

    def __init__(self, prefix: str, site: str, machine: str):
        self.base = f"{prefix}/{site}/{machine}"

    def __getitem__(self, kind: str) -> str:
        return f"{self.base}/{kind}"


class Publisher:
    """Runs until cancelled: connect (with jittered backoff), publish, reconnect."""

    def __init__(
        self,
        spool: AsyncSpool,
        make_link: LinkFactory,
        topics: Topics,
        boot: bytes,
        window: int,
        backoff: Backoff,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        *,
        delivery: str = "stored",
        max_unacked: int = 256,
        ack_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if delivery not in DELIVERY_MODES:
            raise ValueError(f"delivery {delivery!r} is not one of {', '.join(DELIVERY_MODES)}")
        self.spool = spool
        self._make_link = make_link
        self.topics = topics
        self.boot = boot
        self.window = window
        self.backoff = backoff
        self.delivery = delivery
        self.max_unacked = max_unacked
        self.ack_timeout_s = ack_timeout_s
        self._sleep = sleep
        self._clock = clock
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # connected, nothing unconfirmed, nothing left to send
        self._birth_seq = 0  # the running boot's birth, as last read (for the death)
        self.link: Link | None = None
        self.connected = False
        self.counters: Counter[str] = Counter()
        self.last_error = ""

    def notify(self) -> None:
        """New payloads are in the spool."""
        self._idle.clear()
        self._wake.set()

    async def run(self) -> None:
        async def make_link() -> Link:
            return self._make_link(await self._death(), self._wake)

        await stay_connected(
            make_link, self._connected, self.backoff, self.counters, self._note, self._sleep
        )

    async def _connected(self, link: Link) -> None:
        self.link, self.connected = link, True
        log.info("upstream connected: %s", link.where)
        try:
            plant_confirms = self.delivery == "stored" and not link.acks_stored
            await _Session(self, link, plant_confirms).run()
        finally:
            self.connected = False
            self._idle.clear()

    def _note(self, message: str) -> None:
        """Log a failure once, not on every retry of the same one."""
        message = f"upstream {message}"
        if message != self.last_error:
            log.warning("%s", message)
        self.last_error = message

    async def _death(self) -> bytes:
        """The death naming the running boot's birth (the last one read if the spool cannot
        be read now)."""
        with suppress(SpoolError):
            birth = await self.spool.birth_of(self.boot)
            self._birth_seq = birth.seq if birth else 0
        return wire.death(self.boot, self._birth_seq)

    async def drain(self, timeout_s: float) -> bool:
        """Wait (bounded) until everything spooled so far is confirmed; whether it was."""
        self.notify()
        await asyncio.sleep(0)  # let a session see the wake before asking whether it is idle
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    async def send_death(self, timeout_s: float) -> bool:
        """Publish the death on a clean stop (a clean disconnect suppresses the will)."""
        if not self.connected or self.link is None:
            return False
        future = self.link.publish(self.topics["death"], await self._death())
        try:
            return await asyncio.wait_for(future, timeout_s) < REFUSED
        except (TimeoutError, UpstreamError):
            return False


class _Session:
    """One connection's publishing: what is in the broker's window (`in_flight`), what the
    plant has not confirmed (`outstanding`), what it confirmed and is still to be deleted."""

    def __init__(self, publisher: Publisher, link: Link, plant_confirms: bool):
        self.p = publisher
        self.link = link
        self.plant_confirms = plant_confirms
        self.in_flight: dict[int, asyncio.Future] = {}
        self.outstanding = Outstanding(publisher.max_unacked, publisher.ack_timeout_s, RESEND_MAX_S)
        self.confirmed: list[int] = []  # to delete from the spool
        self.acks: list[tuple[bytes, list[tuple[int, int]]]] = []  # received, not applied
        self.births_sent = {publisher.boot}
        self.cursor = 0
        self.backlog_end = 0
        self.deleted_at = publisher._clock()
        self.spool_retry_at: float | None = None  # after a spool error: when to try again
        self.resending = False  # re-sending, logged once until all is confirmed

    async def run(self) -> None:
        p, link = self.p, self.link
        if self.plant_confirms:
            link.on_message = self._received
            topic = p.topics["ack"]
            codes = await link.subscribe([topic])
            if any(code >= REFUSED for code in codes):
                raise UpstreamError(
                    f"subscription to {topic} refused (reason code 0x{max(codes):02x}): the "
                    "broker's ACL must let the agent read its acknowledgements"
                )
        try:
            birth = await p.spool.birth_of(p.boot)
            if birth is not None:
                p._birth_seq = birth.seq
                reason = await link.publish(p.topics["birth"], birth.body, retain=True)
                if reason >= REFUSED:
                    self._refused(reason, birth.seq)
            self.backlog_end = await p.spool.last_seq()
        except SpoolError as exc:
            raise UpstreamError(f"spool: {exc}") from None
        p.backoff.reset()  # the broker answered a publish: this connection works
        p.last_error = ""
        try:
            await self._loop()
        finally:
            for future in self.in_flight.values():  # lost with the connection: sent again
                future.add_done_callback(_quiet)
            await self._delete(force=True)

    async def _loop(self) -> None:
        p = self.p
        while True:
            p._wake.clear()
            now = p._clock()
            self._settle(now)
            self._apply_acks()
            self.outstanding.expire(now)
            sent = 0
            if self.spool_retry_at is None or now >= self.spool_retry_at:
                try:
                    await self._delete()
                    sent = await self._resend(now) + await self._send_new()
                except SpoolError as exc:
                    p.counters["spool_errors"] += 1
                    p._note(f"spool: {exc}; retrying in {SPOOL_RETRY_S:g} s")
                    self.spool_retry_at = now + SPOOL_RETRY_S
                else:
                    if self.spool_retry_at is not None:  # it had failed: say it is back
                        self.spool_retry_at = None
                        p.last_error = ""
                        log.info("upstream: the spool answers again")
            if not sent and not self.in_flight and not self.outstanding and not self.confirmed:
                p._idle.set()
            if self.link.closed.done():
                self.link.closed.result()  # raises why it closed
                raise UpstreamError("upstream closed")
            if not sent:
                with suppress(TimeoutError):
                    await asyncio.wait_for(p._wake.wait(), self._wait_s(now))

    def _wait_s(self, now: float) -> float | None:
        """Until the next thing to do without being woken: a batch of deletions, a timeout,
        a spool retry (None: nothing, wait to be woken)."""
        times = [self.outstanding.next_timeout(), self.spool_retry_at]
        if self.confirmed:
            times.append(self.deleted_at + ACK_INTERVAL_S)
        future = [t for t in times if t is not None and t > now]
        return max(0.0, min(future) - now) if future else None

    # -- what came back -------------------------------------------------------------------

    def _settle(self, now: float) -> None:
        """The broker's PUBACKs: a place in the window each; the confirmation itself unless
        the plant's is awaited. A refusal is kept and its timeout starts."""
        for seq, future in list(self.in_flight.items()):
            if not future.done():
                continue
            del self.in_flight[seq]
            reason = future.result()  # an MqttError when the connection ended: the session ends
            if reason >= REFUSED:
                self._refused(reason, seq)
            elif not self.plant_confirms:
                self._confirm(self.outstanding.stored(None, [(seq, seq)]))
                continue
            self.outstanding.arm(seq, now)

    def _received(self, message) -> None:
        """An acknowledgement from the plant (on the event loop; applied by the session)."""
        try:
            if message.topic != self.p.topics["ack"]:
                raise ack.AckError(f"on {message.topic}, not {self.p.topics['ack']}")
            self.acks.append(ack.decode(message.payload))
        except ack.AckError as exc:
            self.p.counters["bad_acks"] += 1
            log.warning("upstream: acknowledgement ignored: %s", exc)
            return
        self.p.counters["acks_received"] += 1
        self.p._wake.set()

    def _apply_acks(self) -> None:
        for boot, runs in self.acks:
            self._confirm(self.outstanding.stored(boot, runs))
        self.acks.clear()

    def _confirm(self, seqs: list[int]) -> None:
        self.confirmed += seqs
        if not self.outstanding:
            self.resending = False

    def _refused(self, reason: int, seq: int) -> None:
        self.p.counters["refused"] += 1
        self.p._note(f"refused payload {seq} (reason code 0x{reason:02x}); kept")

    # -- what goes out --------------------------------------------------------------------

    async def _resend(self, now: float) -> int:
        """Send again, oldest first, what the plant did not confirm in time."""
        room = min(self.p.window - len(self.in_flight), self.outstanding.room())
        seqs = self.outstanding.take_lost(room)
        if seqs and not self.resending:
            self.resending = True  # once, until everything sent has been confirmed
            log.warning(
                "upstream: payloads not confirmed %s within %g s, sending them again%s",
                "stored by the plant" if self.plant_confirms else "by the broker",
                self.p.ack_timeout_s,
                _COLLECTOR_HINT if self.plant_confirms else "",
            )
        for i, seq in enumerate(seqs):
            try:
                rows = await self.p.spool.pending(seq - 1, 1)
            except SpoolError:
                self.outstanding.give_back(seqs[i:])
                raise
            if rows and rows[0].seq == seq:
                self._publish(rows[0])
                self.p.counters["resent"] += 1
            else:  # the spool's budget or age limit dropped it meanwhile (a gap event says so)
                self.outstanding.forget(seq)
        return len(seqs)

    async def _send_new(self) -> int:
        """The spool's next payloads, within the window and the limit of unconfirmed ones."""
        room = min(self.p.window - len(self.in_flight), self.outstanding.room_for_new())
        if room <= 0:
            return 0
        rows = await self.p.spool.pending(self.cursor, room)
        for row in rows:
            if row.boot is not None and row.boot not in self.births_sent:
                self.births_sent.add(row.boot)
                await self._resend_birth(row.boot, row.kind)
            self._publish(row)
            self.cursor = row.seq
        self.p.counters["published"] += len(rows)
        return len(rows)

    def _publish(self, row: Stored) -> None:
        body = row.body
        if row.kind == "data" and row.seq <= self.backlog_end:
            body = wire.as_historical(body)
        self.in_flight[row.seq] = self.link.publish(self.p.topics[row.kind], body)
        self.outstanding.sent(row.seq, row.boot)

    async def _resend_birth(self, boot: bytes, kind: str) -> None:
        """Before the first payload of an older boot: its birth (not retained: the retained
        one is the running boot's), unless that payload is the birth itself."""
        if kind == "birth":
            return
        birth = await self.p.spool.birth_of(boot)
        if birth is not None:
            self.link.publish(self.p.topics["birth"], birth.body).add_done_callback(_quiet)
            self.p.counters["births_resent"] += 1

    async def _delete(self, force: bool = False) -> None:
        """Delete what was confirmed: every `ACK_INTERVAL_S`, every `ACK_BATCH`, once nothing
        is outstanding, or (`force`) at the end of the session. A spool error keeps the list
        for the next try (on a last try, the plant confirms the re-sends again)."""
        now = self.p._clock()
        due = (
            len(self.confirmed) >= ACK_BATCH
            or now - self.deleted_at >= ACK_INTERVAL_S
            or not self.outstanding
        )
        if not self.confirmed or not (due or force):
            return
        try:
            self.p.counters["acked"] += await self.p.spool.ack(self.confirmed)
        except SpoolError as exc:
            if not force:
                raise
            self.p.counters["spool_errors"] += 1
            self.p._note(f"spool: {exc}; confirmed payloads stay until sent again")
            return
        self.confirmed, self.deleted_at = [], now


_COLLECTOR_HINT = (
    " (is the collector running? A consumer that sends no acknowledgements needs"
    ' delivery = "broker")'
)


def _quiet(future: asyncio.Future) -> None:
    """A fire-and-forget publish: its outcome is not needed, only retrieved."""
    if not future.cancelled():
        future.exception()
