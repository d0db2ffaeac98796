"""Helpers for the upstream tests: a subscriber that records what a real broker delivers, a
fake link for the publisher's logic, and an agent-less publisher over a spool."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

from edge_agent.backoff import Backoff
from edge_agent.config import UpstreamConfig
from edge_agent.telemetry import wire
from edge_agent.telemetry.spool import AsyncSpool
from edge_agent.upstream import UpstreamError, ack
from edge_agent.upstream.mqtt_link import MqttLink, settings_from
from edge_agent.upstream.publisher import Publisher, Topics

BOOT = bytes.fromhex("0123456789abcdef")
TOPICS = Topics("edge", "plant", "m1")
TABLE = [wire.Channel(0, "spindle_load", "%", 0.1, "sampled", 100_000, 0)]


def birth(seq: int, boot: bytes = BOOT) -> bytes:
    return wire.birth(boot, seq, 1_800_000_000_000_000, "0.1.0", bytes(8), TABLE)


def data(seq: int, boot: bytes = BOOT) -> bytes:
    t = 1_800_000_000_000_000 + seq * 1_000_000
    return wire.data(boot, seq, TABLE, {0: wire.Series((t,), (seq / 10,))})


class Subscriber:
    """A paho client in its own thread recording (topic, payload, retain) of `edge/#`."""

    def __init__(self, host: str, port: int, topic: str = "edge/#"):
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        assert self._ready.wait(5), "subscriber did not subscribe"

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload, bool(message.retain)))

    def decoded(self, kind: str = "data") -> list[dict]:
        with self._lock:
            return [
                wire.decode(payload)
                for topic, payload, _ in self.messages
                if topic.endswith("/" + kind)
            ]

    async def wait_for(self, predicate, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate(self):
            assert time.monotonic() < deadline, f"timed out; got {len(self.messages)} messages"
            await asyncio.sleep(0.02)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def mqtt_config(broker, **options) -> UpstreamConfig:
    """`[upstream]` for `broker`; the broker's PUBACK confirms (`delivery = "broker"`) unless
    `delivery` says otherwise: the tests of the link itself run without a collector
    (tests/test_delivery.py runs with one, end to end)."""
    options = {"delivery": "broker", "reconnect_min_s": 0.05, **options}
    return UpstreamConfig(kind="mqtt", host=broker.host, port=broker.port, **options)


@dataclass
class Bench:
    """A spool with a publisher over a real MQTT link (no agent): what the tests drive."""

    spool: AsyncSpool
    publisher: Publisher
    task: asyncio.Task
    links: list = field(default_factory=list)

    async def store(self, payloads: list[tuple[str, bytes]]) -> list[int]:
        seqs = await self.spool.store([(kind, BOOT, body) for kind, body in payloads])
        self.publisher.notify()
        return seqs

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.spool.close()


async def start_bench(path, cfg: UpstreamConfig, window: int = 16) -> Bench:
    spool = AsyncSpool(path)
    await spool.open()
    settings = settings_from(cfg, "test-agent")
    links = []

    def make_link(death: bytes, wake: asyncio.Event):
        link = MqttLink(settings, will=(TOPICS["death"], death), wake=wake)
        links.append(link)
        return link

    backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s)
    publisher = Publisher(
        spool,
        make_link,
        TOPICS,
        BOOT,
        window,
        backoff,
        delivery=cfg.delivery,
        max_unacked=max(window, cfg.max_unacked),
        ack_timeout_s=cfg.ack_timeout_s,
    )
    task = asyncio.create_task(publisher.run())
    return Bench(spool, publisher, task, links)


@contextlib.asynccontextmanager
async def watched_bench(broker, tmp_path, cfg: UpstreamConfig, window: int = 16):
    """A bench (its spool in `tmp_path`) publishing to `broker` and a subscriber watching what
    arrives; both closed after."""
    subscriber = Subscriber(broker.host, broker.port)
    bench = await start_bench(tmp_path / "s.db", cfg, window)
    try:
        yield bench, subscriber
    finally:
        await bench.close()
        subscriber.close()


@dataclass
class FakeMessage:
    """What the publisher reads of a received MQTT message."""

    topic: str
    payload: bytes


class FakeLink:
    """A link whose acknowledgements the test hands out: `ack(n, reason)` settles the n
    oldest publishes (the broker's PUBACKs); `confirm(seqs)` delivers the plant's ack of
    them on the ack topic; `drop()` ends the connection. With `acks_stored` (a file's
    fsync) the PUBACK is the confirmation; else the publisher subscribes (`subscribed`)."""

    def __init__(self, wake: asyncio.Event, fail_open: bool = False, acks_stored: bool = True):
        self._wake = wake
        self.fail_open = fail_open
        self.acks_stored = acks_stored
        self.sent: list[tuple[str, bytes, bool]] = []
        self.waiting: list[asyncio.Future] = []
        self.closed = asyncio.get_running_loop().create_future()
        self.auto_ack = False
        self.where = "fake"
        self.subscribed: list[str] = []
        self.suback = 0
        self.on_message = None

    def subscribe(self, topics: list[str]) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.subscribed += topics
        future.set_result([self.suback] * len(topics))
        return future

    def confirm(self, seqs, boot: bytes = BOOT, topic: str | None = None) -> None:
        """The collector's acknowledgement of `seqs` arrives."""
        for payload in ack.encode(boot, seqs):
            self.on_message(FakeMessage(topic or TOPICS["ack"], payload))

    async def open(self) -> None:
        if self.fail_open:
            raise UpstreamError("fake: unreachable")

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.sent.append((topic, payload, retain))
        if self.auto_ack:
            future.set_result(0)
            self._wake.set()
        else:
            self.waiting.append(future)
        return future

    def ack(self, n: int | None = None, reason: int = 0) -> None:
        n = len(self.waiting) if n is None else n
        for future in self.waiting[:n]:
            future.set_result(reason)
        del self.waiting[:n]
        self._wake.set()

    def drop(self) -> None:
        error = UpstreamError("fake: connection lost")
        for future in self.waiting:
            future.set_exception(error)
        self.waiting.clear()
        self.closed.set_exception(error)
        self.closed.exception()  # as MqttLink: nobody has to await a link that went
        self._wake.set()

    async def close(self) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
