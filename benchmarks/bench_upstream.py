"""Store-and-forward, wall clock: an hour of the standard load spooled while the broker was
away, then drained to a local Mosquitto once it is back; never asserts.

3,600 one-second data frames of the standard load (200 channels at 10 Hz and one at 1 kHz,
synthetic random walks), stored as the agent stores them (one transaction a second, fsync
each), then published with QoS 1 by the agent's publisher to a Mosquitto on loopback with a
subscriber attached, until every frame is acknowledged and deleted. Reported: the drain time
against the 10 s target (360x real time), publish throughput with the window of 64 beside a
window of 1 (a PUBACK before each next publish), and the bytes the process wrote to disk
(/proc/self/io, spooling and draining) per telemetry byte, with a commit a second (the
default) and with a commit every 10 s. These runs take the broker's PUBACK as the
confirmation (`delivery = "broker"`): they measure the publisher and the spool.

End to end, side by side (docs/upstream.md, "What it costs"): the same hour drained into the
collector (`edge-agent collect run`, its own process) through Mosquitto with its default
limits, with `delivery = "broker"` and with `delivery = "stored"` (the default): the time until
the spool is empty and the payloads the collector never got; then a live stream (10 frames a
second for 30 s) for the collector's acknowledgements per payload, the bytes they add on the
agent's link, and the time from a frame's store in the spool to its deletion.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import standard_load

from edge_agent.backoff import Backoff
from edge_agent.config import UpstreamConfig
from edge_agent.telemetry import wire
from edge_agent.telemetry.spool import AsyncSpool, Spool
from edge_agent.upstream.mqtt_link import MqttLink, settings_from
from edge_agent.upstream.publisher import Publisher, Topics
from tests.collector_process import CollectorProcess
from tests.mosquitto import Broker, find_mosquitto

BOOT = bytes(8)
FRAMES = 3600
TOPICS = Topics("edge", "bench", "m1")
MACHINE = "bench/m1"
#: The live stream: 10 frames a second (ten times the agent's default) for 30 s.
LIVE_FRAMES, LIVE_PERIOD_S = 300, 0.1
#: The collector has stored all that reached it once its count stays put this long: a
#: batch of 500 standard-load frames (1.5 million sample rows) takes it some 5 s here.
QUIET_S = 15.0


def standard_load_frames(count: int) -> tuple[bytes, list]:
    """A birth and `count` one-second frame makers (seq -> payload) of the standard load."""
    channels = standard_load.CHANNELS
    makers = [
        lambda seq, s=series: wire.data(BOOT, seq, channels, s)
        for series in standard_load.seconds(standard_load.samples(count))
    ]
    return wire.birth(BOOT, 1, 0, "bench", bytes(8), channels), makers


def _disk_written() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("write_bytes")).split()[1])


class _Counter:
    """A subscriber on the broker: counts the messages of a topic (data frames, as a
    collector would take them; the collector's acks, as the agent does) and their bytes."""

    def __init__(self, broker: Broker, topic: str = TOPICS["data"]):
        self.count = self.bytes = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        ready = threading.Event()
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        ready.wait(5)

    def _on_message(self, client, userdata, message) -> None:
        self.count += 1
        self.bytes += len(message.payload)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _publisher(spool: AsyncSpool, broker: Broker, window: int, delivery: str) -> Publisher:
    """The agent's publisher over MQTT, with the agent's defaults but `window` and `delivery`."""
    defaults = UpstreamConfig()
    cfg = UpstreamConfig(kind="mqtt", host=broker.host, port=broker.port)
    settings = settings_from(cfg, f"bench-{window}-{delivery}")

    def make_link(death, wake):
        return MqttLink(settings, will=(TOPICS["death"], death), wake=wake)

    return Publisher(
        spool,
        make_link,
        TOPICS,
        BOOT,
        window,
        Backoff(0.05, 1.0),
        delivery=delivery,
        max_unacked=max(window, defaults.max_unacked),
        ack_timeout_s=defaults.ack_timeout_s,
    )


async def _drain(path: Path, broker: Broker, window: int) -> tuple[float, int]:
    """Seconds until the spool at `path` is empty (the broker's PUBACK confirming), and the
    frames the subscriber saw."""
    spool = AsyncSpool(path)
    await spool.open()
    publisher = _publisher(spool, broker, window, "broker")
    counter = _Counter(broker)
    started = time.perf_counter()
    task = asyncio.create_task(publisher.run())
    while (await spool.stats())["depth"] > 0:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await spool.close()
    await asyncio.sleep(0.2)  # the last deliveries to the subscriber
    counter.close()
    return elapsed, counter.count


def _spool_hour(path: Path, birth: bytes, makers, per_commit: int = 1) -> int:
    """Store the birth, then the frames `per_commit` to a transaction, as the agent does with
    `[spool] commit_interval_s` of that many seconds; the payload bytes."""
    spool = Spool(path)
    spool.store([("birth", BOOT, birth)])
    for start in range(0, len(makers), per_commit):
        spool.store([("data", BOOT, make) for make in makers[start : start + per_commit]])
    payload = spool.stats()["bytes"]
    spool.close()
    return payload


def _written_per_byte(path: Path, broker: Broker, birth, makers, per_commit: int):
    """Spool the hour and drain it: disk bytes per payload byte, drain seconds, delivered."""
    written0 = _disk_written()
    payload = _spool_hour(path, birth, makers, per_commit)
    drain_s, seen = asyncio.run(_drain(path, broker, window=64))
    return (_disk_written() - written0) / payload, payload, drain_s, seen


def _settled(collector: CollectorProcess) -> int:
    """The data frames the collector holds once it has stopped storing more."""
    held, since = -1, time.monotonic()
    while time.monotonic() - since < QUIET_S:
        now = len(collector.seqs(MACHINE, "data"))
        if now != held:
            held, since = now, time.monotonic()
        time.sleep(0.2)
    return held


def _end_to_end_drain(workdir: Path, broker: Broker, birth, makers, delivery: str):
    """The hour spooled, then drained into a collector of its own: seconds until the spool is
    empty, and the frames the collector never got."""
    collector = CollectorProcess(broker, workdir, f"collector-{delivery}")
    collector.start()
    try:
        path = workdir / f"e2e-{delivery}.db"
        _spool_hour(path, birth, makers)

        async def drain() -> float:
            spool = AsyncSpool(path)
            await spool.open()
            publisher = _publisher(spool, broker, 64, delivery)
            started = time.perf_counter()
            task = asyncio.create_task(publisher.run())
            while (await spool.stats())["depth"] > 0:
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - started
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await spool.close()
            return elapsed

        drain_s = asyncio.run(drain())
        return drain_s, len(makers) - _settled(collector)
    finally:
        collector.stop()


def _live(workdir: Path, broker: Broker, birth, makers, delivery: str) -> dict:
    """`LIVE_FRAMES` stored one every `LIVE_PERIOD_S` while the publisher runs, into a
    collector of its own: the acks the agent got, and each frame's seconds from spool to
    deletion."""
    collector = CollectorProcess(broker, workdir, f"collector-live-{delivery}")
    collector.start()
    acks = _Counter(broker, TOPICS["ack"])

    async def stream() -> list[float]:
        spool = AsyncSpool(workdir / f"live-{delivery}.db")
        await spool.open()
        deleted_at: dict[int, float] = {}
        real_ack = spool.ack

        async def ack(seqs):
            count = await real_ack(seqs)
            deleted_at.update(dict.fromkeys(seqs, time.perf_counter()))
            return count

        spool.ack = ack
        publisher = _publisher(spool, broker, 64, delivery)
        task = asyncio.create_task(publisher.run())
        stored_at = {}
        await spool.store([("birth", BOOT, birth)])
        publisher.notify()
        next_at = time.perf_counter()
        for make in makers[:LIVE_FRAMES]:
            next_at += LIVE_PERIOD_S
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            (seq,) = await spool.store([("data", BOOT, make)])
            stored_at[seq] = time.perf_counter()
            publisher.notify()
        await publisher.drain(30)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await spool.close()
        return [deleted_at[seq] - t for seq, t in stored_at.items() if seq in deleted_at]

    try:
        latencies = asyncio.run(stream())
        time.sleep(0.5)  # the last acks to the watcher
    finally:
        acks.close()
        collector.stop()
    return {"latencies": sorted(latencies), "acks": acks.count, "ack_bytes": acks.bytes}


def _publish_bytes(topic: str, payload_bytes: float) -> float:
    """An MQTT 5 QoS 1 PUBLISH on the wire: fixed header (1 + 1-2 length bytes), topic, packet
    id, property length, payload."""
    body = 2 + len(topic) + 2 + 1 + payload_bytes
    return 1 + (1 if body < 128 else 2) + body


#: An MQTT 5 PUBACK with reason "success" and no properties: header, length, packet id.
PUBACK_BYTES = 4


def run():
    if find_mosquitto() is None:
        print("bench_upstream: mosquitto not installed (make test-deps); skipped")
        return []
    birth, makers = standard_load_frames(FRAMES)
    rows = []
    tmp_dir = tempfile.TemporaryDirectory(prefix="bench-upstream-", dir="/var/tmp")
    with tmp_dir as tmp, Broker() as broker:
        per_byte, payload, drain_s, seen = _written_per_byte(
            Path(tmp) / "hour.db", broker, birth, makers, per_commit=1
        )
        per_byte_10, *_ = _written_per_byte(
            Path(tmp) / "hour10.db", broker, birth, makers, per_commit=10
        )
        _spool_hour(Path(tmp) / "slow.db", birth, makers[:300])
        slow_s, slow_seen = asyncio.run(_drain(Path(tmp) / "slow.db", broker, window=1))
        e2e = {
            delivery: _end_to_end_drain(Path(tmp), broker, birth, makers, delivery)
            for delivery in ("broker", "stored")
        }
        live = {
            delivery: _live(Path(tmp), broker, birth, makers, delivery)
            for delivery in ("broker", "stored")
        }
    what = f"{FRAMES} 1-s frames of the standard load ({payload / FRAMES / 1024:.1f} KiB each)"
    rows += [
        (
            f"drain a one-hour backlog to local Mosquitto ({seen} delivered): {what}",
            "target",
            10.0,
            "publisher, window 64",
            drain_s,
            "s",
        ),
        (
            "publish throughput, QoS 1 (time per frame)",
            f"window 1 ({slow_seen} frames)",
            slow_s / 300 * 1e3,
            "window 64",
            drain_s / FRAMES * 1e3,
            "ms/frame",
        ),
        (
            "disk bytes written per telemetry byte (spool the hour, drain it), 1-s commits",
            "telemetry bytes",
            1.0,
            "spool + acks",
            per_byte,
            "B/B",
        ),
        (
            "disk bytes written per telemetry byte: [spool] commit_interval_s 1 vs 10",
            "1-s commits (default)",
            per_byte,
            "10-s commits",
            per_byte_10,
            "B/B",
        ),
    ]
    frame_bytes = payload / FRAMES
    link = {}  # bytes on the agent's link per frame: its PUBLISH and PUBACK, and the acks
    for delivery, figures in live.items():
        # The collector acks either way; only an agent with delivery "stored" subscribes.
        acks = figures["acks"] if delivery == "stored" else 0
        per_ack = figures["ack_bytes"] / acks if acks else 0
        ack_bytes = acks * (_publish_bytes(TOPICS["ack"], per_ack) + PUBACK_BYTES)
        own = _publish_bytes(TOPICS["data"], frame_bytes) + PUBACK_BYTES
        link[delivery] = (own + ack_bytes / LIVE_FRAMES, acks / LIVE_FRAMES, per_ack)
    lat = {d: figures["latencies"] for d, figures in live.items()}
    rows += [
        (
            "the hour into the collector via Mosquitto (default limits): time to empty the spool",
            "delivery broker",
            e2e["broker"][0],
            "delivery stored",
            e2e["stored"][0],
            "s",
        ),
        (
            f"the hour into the collector via Mosquitto (default limits): frames lost of {FRAMES}",
            "delivery broker",
            e2e["broker"][1],
            "delivery stored",
            e2e["stored"][1],
            "frames",
        ),
        (
            f"live ({1 / LIVE_PERIOD_S:g} frames/s): collector acks per frame",
            "delivery broker",
            link["broker"][1],
            "delivery stored",
            link["stored"][1],
            "msgs",
        ),
        (
            f"live: bytes on the agent's link per {frame_bytes:.0f}-B frame (publish, acks)",
            "delivery broker",
            link["broker"][0],
            "delivery stored",
            link["stored"][0],
            "B",
        ),
        (
            "live: spool to deletion, median",
            "delivery broker",
            statistics.median(lat["broker"]) * 1e3,
            "delivery stored",
            statistics.median(lat["stored"]) * 1e3,
            "ms",
        ),
        (
            "live: spool to deletion, p99",
            "delivery broker",
            _p99(lat["broker"]) * 1e3,
            "delivery stored",
            _p99(lat["stored"]) * 1e3,
            "ms",
        ),
    ]
    return rows


def _p99(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(0.99 * len(values)))]
