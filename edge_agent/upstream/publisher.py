"""Spool -> upstream: payloads in sequence order, a bounded window awaiting acknowledgement,
deleted from the spool only once acknowledged (docs/upstream.md).

On every connection the boot's birth goes first (retained, so a collector that subscribes
later still gets the channel table), then the spool from its oldest payload: what was stored
before the connection came up is replayed with data frames flagged historical, and a boot's
birth is re-sent before that boot's frames. A payload the broker refuses (an MQTT 5 PUBACK
reason code of 0x80 or more) stays in the spool and is counted; nothing is deleted unless
acknowledged. Acknowledgements are deleted in batches: fewer commits, less SD-card wear.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import suppress

from ..backoff import Backoff
from ..telemetry import wire
from ..telemetry.spool import AsyncSpool
from . import UpstreamError
from .mqtt_link import REFUSED
from .reconnect import Link, stay_connected

log = logging.getLogger(__name__)

#: Acknowledged payloads are deleted at least this often, or every `ACK_BATCH` of them.
ACK_INTERVAL_S = 0.25
ACK_BATCH = 256


#: Makes a link: (the death payload to leave as its will, the event to set on progress).
LinkFactory = Callable[[bytes, asyncio.Event], Link]


class Topics:
    """`<prefix>/<site>/<machine>/{birth,data,event,death}`."""

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
    ):
        self.spool = spool
        self._make_link = make_link
        self.topics = topics
        self.boot = boot
        self.window = window
        self.backoff = backoff
        self._sleep = sleep
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # connected, nothing in flight, nothing left to send
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
            await self._session(link)
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
        birth = await self.spool.birth_of(self.boot)
        return wire.death(self.boot, birth.seq if birth else 0)

    async def _session(self, link: Link) -> None:
        birth = await self.spool.birth_of(self.boot)
        if birth is not None:
            reason = await link.publish(self.topics["birth"], birth.body, retain=True)
            self._check(reason, birth.seq)
        self.backoff.reset()  # the broker took a payload: this connection works
        self.last_error = ""
        backlog_end = await self.spool.last_seq()
        births_sent = {self.boot}
        in_flight: dict[int, asyncio.Future] = {}
        acked: list[int] = []
        cursor, loop = 0, asyncio.get_running_loop()
        committed_at = loop.time()
        try:
            while True:
                self._wake.clear()
                for seq, future in list(in_flight.items()):
                    if future.done():
                        del in_flight[seq]
                        if self._check(future.result(), seq):
                            acked.append(seq)
                room = self.window - len(in_flight)
                rows = await self.spool.pending(cursor, room) if room > 0 else []
                for row in rows:
                    if row.boot is not None and row.boot not in births_sent:
                        births_sent.add(row.boot)
                        await self._resend_birth(link, row.boot, row.kind)
                    body = row.body
                    if row.kind == "data" and row.seq <= backlog_end:
                        body = wire.as_historical(body)
                    in_flight[row.seq] = link.publish(self.topics[row.kind], body)
                    cursor = row.seq
                self.counters["published"] += len(rows)
                now = loop.time()
                if acked and (
                    len(acked) >= ACK_BATCH or now - committed_at >= ACK_INTERVAL_S or not in_flight
                ):
                    await self._ack(acked)
                    acked, committed_at = [], now
                if not rows and not in_flight:
                    self._idle.set()
                if link.closed.done():
                    link.closed.result()  # raises why it closed
                    raise UpstreamError("upstream closed")
                if not rows:
                    timeout = ACK_INTERVAL_S if acked else None
                    with suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            for future in in_flight.values():  # lost with the connection: sent again later
                future.add_done_callback(_quiet)
            if acked:
                await self._ack(acked)

    async def _resend_birth(self, link: Link, boot: bytes, kind: str) -> None:
        """Before the first payload of an older boot: its birth (not retained: the retained
        one is the running boot's), unless that payload is the birth itself."""
        if kind == "birth":
            return
        birth = await self.spool.birth_of(boot)
        if birth is not None:
            link.publish(self.topics["birth"], birth.body).add_done_callback(_quiet)
            self.counters["births_resent"] += 1

    def _check(self, reason: int, seq: int) -> bool:
        """Whether the broker accepted a payload; a refusal is counted and logged."""
        if reason < REFUSED:
            return True
        self.counters["refused"] += 1
        self._note(f"refused payload {seq} (reason code 0x{reason:02x}); kept")
        return False

    async def _ack(self, seqs: list[int]) -> None:
        self.counters["acked"] += await self.spool.ack(seqs)

    async def drain(self, timeout_s: float) -> bool:
        """Wait (bounded) until everything spooled so far is acknowledged; whether it was."""
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


def _quiet(future: asyncio.Future) -> None:
    """A fire-and-forget publish: its outcome is not needed, only retrieved."""
    if not future.cancelled():
        future.exception()
