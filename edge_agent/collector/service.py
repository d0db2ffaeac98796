"""`edge-agent collect run`: subscribe to the agents' topics and store what arrives.

A message is acknowledged only after the transaction that stored it committed: to the broker
(its PUBACK), on a session the broker keeps while the collector is away (`session_expiry_s`),
so a collector that crashes or stops gets what it had not stored delivered again; and to the
agent, on `<prefix>/<site>/<machine>/ack` (`upstream/ack.py`), so the agent deletes from its
spool only what the plant stored, and sends again what a broker dropped on the way. The store
runs in one worker thread; a storage failure (disk full) acknowledges nothing and reconnects
after a backoff, so the broker keeps the messages meanwhile. Retention prunes once an hour.

What waits to be stored (the inbox) is bounded in messages and bytes. At the bound a QoS 1
message is not taken and not acknowledged, so the broker keeps it, and once the inbox is
stored the collector reconnects for the broker to deliver it again; a QoS 0 message (its
sender accepted losing it) is dropped and counted. A message larger than any payload the
collector stores is refused at the door (acknowledged, counted, one line): the broker is asked
not to send such packets at all (MQTT 5 maximum packet size).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import paho.mqtt.client as mqtt

from ..backoff import Backoff
from ..config import CollectorConfig
from ..telemetry import wire
from ..upstream import UpstreamError, ack
from ..upstream.mqtt_link import REFUSED, MqttLink, settings_from
from ..upstream.reconnect import stay_connected
from .ingest import Collector, Receipt
from .store import SqliteStore, StoreError

log = logging.getLogger(__name__)

#: Messages stored per transaction at most, and their bytes (a batch is decoded in memory at
#: once: 16 MiB is two of the largest data frames, some 200 MB of decoded rows at the worst).
BATCH_MAX = 500
BATCH_BYTES = 16 << 20
#: The inbox: what arrived and waits for the store. It fills only when messages come faster
#: than they are stored (some 10,000 a second here); 10,000 messages are seconds of a plant's
#: traffic, 64 MiB eight of the largest payloads.
INBOX_MESSAGES = 10_000
INBOX_BYTES = 64 << 20
#: The largest payload stored (wire.MAX_PAYLOAD_BYTES), and what the broker may send at most:
#: that, a topic of up to 64 KiB and the PUBLISH header.
MAX_PAYLOAD = max(wire.MAX_PAYLOAD_BYTES.values())
MAX_PACKET_BYTES = MAX_PAYLOAD + (64 << 10) + 16
PRUNE_EVERY_S = 3600.0


def subscriptions(cfg: CollectorConfig) -> list[str]:
    """`<prefix>/+/+/<kind>` for the agents' four kinds (not `ack`: the collector's own), or
    their shared forms `$share/<group>/<prefix>/+/+/<kind>`."""
    return [_shared(cfg, f"{cfg.collector.topic_prefix}/+/+/{kind}") for kind in wire.KINDS]


def _shared(cfg: CollectorConfig, topic: str) -> str:
    group = cfg.collector.share_group
    return f"$share/{group}/{topic}" if group else topic


def ack_topic(prefix: str, machine: str) -> str:
    """Where the agent `machine` ("site/machine") reads what the plant stored."""
    return f"{prefix}/{machine}/ack" if prefix else f"{machine}/ack"


class CollectorService:
    """Runs until cancelled; `counters` holds the connection's, `collector.counters` the
    messages'."""

    def __init__(self, cfg: CollectorConfig):
        self.cfg = cfg
        self.topics = subscriptions(cfg)
        # Before the ack topic existed the collector took `<prefix>/+/+/+`; a session the
        # broker kept from then would deliver it its own acks.
        self.old_topic = _shared(cfg, f"{cfg.collector.topic_prefix}/+/+/+")
        self.settings = dataclasses.replace(
            settings_from(
                cfg.broker,
                f"edge-collector-{socket.gethostname()}"
                + (f"-{cfg.collector.share_group}" if cfg.collector.share_group else ""),
                cfg.collector.session_expiry_s,
            ),
            max_packet_bytes=MAX_PACKET_BYTES,
        )
        self.backoff = Backoff(cfg.broker.reconnect_min_s, cfg.broker.reconnect_max_s)
        self.counters: Counter[str] = Counter()
        self.last_error = ""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collector")
        self._inbox: list[tuple[mqtt.MQTTMessage, int]] = []
        self._inbox_bytes = 0
        self._left_with_broker = 0  # QoS 1 messages not taken since the last connect
        self._link: MqttLink | None = None
        self._arrived = asyncio.Event()
        self._pruned_at = 0.0
        self.store: SqliteStore | None = None
        self.collector: Collector | None = None

    async def run(self) -> None:
        self.store = await self._in_store_thread(SqliteStore, self.cfg.collector.db)
        self.collector = Collector(self.store, self.cfg.collector.topic_prefix)
        log.info("collector: %s into %s", ", ".join(self.topics), self.cfg.collector.db)
        try:
            await stay_connected(
                self._make_link, self._session, self.backoff, self.counters, self._note
            )
        finally:
            await self._in_store_thread(self.store.close)
            self._executor.shutdown(wait=True)

    async def _make_link(self) -> MqttLink:
        self._inbox.clear()  # unacknowledged: the broker delivers them again
        self._inbox_bytes = self._left_with_broker = 0
        self._link = MqttLink(
            self.settings, on_message=self._received, wake=self._arrived, manual_ack=True
        )
        return self._link

    def _received(self, message: mqtt.MQTTMessage) -> None:
        size = len(message.payload)
        if size > MAX_PAYLOAD:
            self.counters["oversized"] += 1
            log.warning(
                "collector: %.200r: a payload of %d bytes, over the %d maximum; refused",
                _topic_of(message),
                size,
                MAX_PAYLOAD,
            )
            self._link.ack(message)  # refused for good: the broker need not keep it
            return
        if len(self._inbox) >= INBOX_MESSAGES or self._inbox_bytes + size > INBOX_BYTES:
            if message.qos == 0:
                self.counters["inbox_dropped"] += 1
            else:  # not acknowledged: the broker keeps it and delivers it after a reconnect
                self.counters["inbox_deferred"] += 1
                self._left_with_broker += 1
            return
        self._inbox.append((message, time.time_ns()))
        self._inbox_bytes += size
        self._arrived.set()

    def _take_batch(self) -> list[tuple[mqtt.MQTTMessage, int]]:
        """The oldest messages of the inbox, up to BATCH_MAX and BATCH_BYTES (one at least)."""
        n, size = 0, 0
        while n < min(len(self._inbox), BATCH_MAX):
            size += len(self._inbox[n][0].payload)
            if n and size > BATCH_BYTES:
                break
            n += 1
        batch, self._inbox = self._inbox[:n], self._inbox[n:]
        self._inbox_bytes -= sum(len(m.payload) for m, _ in batch)
        return batch

    async def _session(self, link: MqttLink) -> None:
        await link.unsubscribe([self.old_topic])
        codes = await link.subscribe(self.topics)
        refused = [t for t, code in zip(self.topics, codes, strict=False) if code >= REFUSED]
        if refused:
            raise UpstreamError(f"{self.settings.where}: subscription to {refused[0]} refused")
        log.info("collector: subscribed to %s on %s", ", ".join(self.topics), self.settings.where)
        self.backoff.reset()
        self.last_error = ""
        while True:
            self._arrived.clear()
            while self._inbox:
                batch = self._take_batch()
                stored = await self._store(batch)
                self._acknowledge(link, stored)
                for message, _ in batch:
                    link.ack(message)
            if self._left_with_broker:
                raise UpstreamError(
                    f"the inbox was full: reconnecting for the {self._left_with_broker}"
                    " messages left with the broker"
                )
            await self._prune_if_due()
            if link.closed.done():
                link.closed.result()
                raise UpstreamError(f"{self.settings.where}: closed")
            await self._arrived.wait()

    async def _store(self, batch: list[tuple[mqtt.MQTTMessage, int]]) -> list[Receipt]:
        """Store a batch in one transaction; what the store now holds of it."""
        messages = [(_topic_of(m), m.payload, received_ns) for m, received_ns in batch]
        stored: list[Receipt] = []
        try:
            await self._in_store_thread(self.collector.ingest_many, messages, stored)
        except StoreError as exc:
            self.counters["store_failures"] += 1
            raise UpstreamError(f"store failed, nothing acknowledged: {exc}") from None
        return stored

    def _acknowledge(self, link: MqttLink, stored: list[Receipt]) -> None:
        """Tell each agent what of its payloads the plant now holds: one ack per (machine,
        boot) of the batch, QoS 1. An ack that does not arrive costs a re-send, never data."""
        seqs: dict[tuple[str, bytes], list[int]] = {}
        for machine, boot, seq in stored:
            seqs.setdefault((machine, boot), []).append(seq)
        prefix = self.cfg.collector.topic_prefix
        for (machine, boot), numbers in seqs.items():
            topic = ack_topic(prefix, machine)
            for payload in ack.encode(boot, numbers):
                future = link.publish(topic, payload)
                future.add_done_callback(functools.partial(self._ack_published, topic))
                self.counters["acks_sent"] += 1

    def _ack_published(self, topic: str, future: asyncio.Future) -> None:
        """A refused ack (the broker's ACL must let the collector publish `<prefix>/+/+/ack`)
        is counted and logged once; the agent keeps its payloads and sends them again."""
        if future.cancelled() or future.exception() is not None:
            return  # the connection ended: the session reconnects
        if future.result() >= REFUSED:
            self.counters["acks_refused"] += 1
            self._note(
                f"refused the acknowledgement on {topic} (reason code 0x{future.result():02x}); "
                "the agent keeps its payloads and sends them again"
            )

    async def _prune_if_due(self) -> None:
        days = self.cfg.collector.retention_days
        now = time.monotonic()
        if not days or now - self._pruned_at < PRUNE_EVERY_S:
            return
        self._pruned_at = now
        cutoff_us = time.time_ns() // 1000 - int(days * 86_400_000_000)
        removed = await self._in_store_thread(self.store.prune, cutoff_us)
        if any(removed.values()):
            log.info("collector: retention of %g days removed %s", days, removed)

    def _note(self, message: str) -> None:
        message = f"collector: broker {message}"
        if message != self.last_error:
            log.warning("%s", message)
        self.last_error = message

    async def _in_store_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def _topic_of(message: mqtt.MQTTMessage) -> str | bytes:
    """The topic as text, or its bytes when they are not UTF-8 (which a broker should refuse):
    the collector then rejects the message instead of failing on it."""
    try:
        return message.topic
    except UnicodeDecodeError:
        return message._topic
