"""Store-and-forward, wall clock: an hour of the standard load spooled while the broker was
away, then drained to a local Mosquitto once it is back; never asserts.

3,600 one-second data frames of the standard load (200 channels at 10 Hz and one at 1 kHz,
synthetic random walks), stored as the agent stores them (one transaction a second, fsync
each), then published with QoS 1 by the agent's publisher to a Mosquitto on loopback with a
subscriber attached, until every frame is acknowledged and deleted. Reported: the drain time
against the 10 s target (360x real time), publish throughput with the window of 64 beside a
window of 1 (a PUBACK before each next publish), and the bytes the process wrote to disk
(/proc/self/io, spooling and draining) per telemetry byte, with a commit a second (the
default) and with a commit every 10 s.
"""

from __future__ import annotations

import asyncio
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
from tests.mosquitto import Broker, find_mosquitto

BOOT = bytes(8)
FRAMES = 3600
TOPICS = Topics("edge", "bench", "m1")


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
    """A subscriber on the broker, as a collector would be: counts data frames."""

    def __init__(self, broker: Broker):
        self.count = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        ready = threading.Event()
        self.client.on_connect = lambda c, *a: c.subscribe(TOPICS["data"], qos=1)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        ready.wait(5)

    def _on_message(self, *args) -> None:
        self.count += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def _drain(path: Path, broker: Broker, window: int) -> tuple[float, int]:
    """Seconds until the spool at `path` is empty, and the frames the subscriber saw."""
    spool = AsyncSpool(path)
    await spool.open()
    cfg = UpstreamConfig(kind="mqtt", host=broker.host, port=broker.port)
    settings = settings_from(cfg, f"bench-{window}")

    def make_link(death, wake):
        return MqttLink(settings, will=(TOPICS["death"], death), wake=wake)

    publisher = Publisher(spool, make_link, TOPICS, BOOT, window, Backoff(0.05, 1.0))
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
    return rows
