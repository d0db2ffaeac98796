"""What the collector acknowledges to the agents: what its store holds once the transaction
committed (new payloads and copies of stored ones), never what it refused or what conflicts,
published on `<prefix>/<site>/<machine>/ack`; and it never receives acks itself."""

import asyncio
import sqlite3
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from edge_agent.collector.ingest import Collector
from edge_agent.collector.service import CollectorService, ack_topic
from edge_agent.collector.store import SqliteStore, StoreError
from edge_agent.config import parse_collector_config
from edge_agent.telemetry import wire
from edge_agent.upstream import ack
from tests.upstream_helpers import BOOT, TOPICS, birth, data

MACHINE = "plant/m1"  # TOPICS' site/machine
OTHER_BOOT = bytes(8)


def msg(kind, payload, topic=None):
    return (topic or TOPICS[kind], payload, 0)


@pytest.fixture
def collector(tmp_path):
    store = SqliteStore(tmp_path / "c.db")
    yield Collector(store)
    store.close()


def test_a_batch_reports_what_the_store_holds_of_it(collector):
    stored = []
    collector.ingest_many(
        [msg("birth", birth(1)), msg("data", data(2)), msg("data", data(3, OTHER_BOOT))], stored
    )
    assert stored == [(MACHINE, BOOT, 1), (MACHINE, BOOT, 2), (MACHINE, OTHER_BOOT, 3)]


def test_a_copy_of_a_stored_payload_is_reported_again(collector):
    collector.ingest_many([msg("birth", birth(1)), msg("data", data(2))])
    stored = []
    copy = wire.as_historical(data(2))
    collector.ingest_many([msg("data", copy), msg("birth", birth(1))], stored)
    assert stored == [(MACHINE, BOOT, 2), (MACHINE, BOOT, 1)]


def test_refused_conflicting_and_death_messages_are_not_reported(collector):
    collector.ingest_many([msg("birth", birth(1)), msg("data", data(2))])
    stored = []
    other_content = wire.event(BOOT, 2, 0, "forged", {})
    collector.ingest_many(
        [
            msg("data", b"\xc1 not msgpack"),
            msg("event", other_content),  # seq 2 is stored with other content
            msg("death", wire.death(BOOT, 1)),
            msg("data", data(4), topic="edge/plant/m1/nonsense"),
        ],
        stored,
    )
    assert stored == []
    assert collector.counters["conflicts"] == 1 and collector.counters["bad"] == 2


def test_a_data_frame_waiting_for_its_birth_is_reported_it_is_stored(collector):
    stored = []
    collector.ingest_many([msg("data", data(2))], stored)
    assert stored == [(MACHINE, BOOT, 2)]


def test_a_batch_that_failed_to_store_reports_nothing(tmp_path):
    class FullDisk(SqliteStore):
        def add_samples(self, machine, seq, series):
            raise sqlite3.OperationalError("database or disk is full")

    store = FullDisk(tmp_path / "c.db")
    stored = []
    with pytest.raises(StoreError):
        Collector(store).ingest_many([msg("birth", birth(1)), msg("data", data(2))], stored)
    assert stored == []
    store.close()


# -- the service, against a real Mosquitto ---------------------------------------------------


def config(broker, db, client_id="collector-acks"):
    return parse_collector_config(
        f'[collector]\ndb = "{db}"\n\n[broker]\nhost = "{broker.host}"\nport = {broker.port}\n'
        f'client_id = "{client_id}"\nreconnect_min_s = 0.05\n'
    )


class Client:
    """A plain paho client: publishes with QoS 1 and records what it is subscribed to."""

    def __init__(self, broker, subscribe=(), client_id="", clean=True):
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        properties = None
        if not clean:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 3600
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port, clean_start=clean, properties=properties)
        self.client.loop_start()
        if subscribe:
            self.client.subscribe([(t, 1) for t in subscribe])
            assert subscribed.wait(5)
        else:
            subscribed.set()

    def _on_message(self, client, userdata, message):
        with self._lock:
            self.messages.append((message.topic, message.payload))

    def publish(self, messages):
        for topic, payload in messages:
            self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


async def wait_until(predicate, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def running(service):
    task = asyncio.create_task(service.run())
    await wait_until(lambda: service.counters["connects"] == 1)
    await asyncio.sleep(0.3)  # its subscriptions
    return task


async def stop(task):
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.timeout(30)
def test_the_service_acknowledges_what_it_stored_on_the_machines_ack_topic(broker, tmp_path):
    agent = Client(broker, subscribe=[TOPICS["ack"]])

    def acked():
        return {s for _, p in agent.messages for a, b in ack.decode(p)[1] for s in range(a, b + 1)}

    async def main():
        service = CollectorService(config(broker, tmp_path / "c.db"))
        task = await running(service)
        payloads = [(TOPICS["birth"], birth(1))] + [(TOPICS["data"], data(s)) for s in range(2, 22)]
        await asyncio.to_thread(agent.publish, payloads)
        await wait_until(lambda: acked() == set(range(1, 22)))
        await wait_until(lambda: len(agent.messages) == service.counters["acks_sent"])
        before = len(agent.messages)
        await asyncio.to_thread(agent.publish, [(TOPICS["data"], data(5))])  # a re-send
        await wait_until(lambda: len(agent.messages) == before + 1)
        await stop(task)
        return service

    try:
        service = asyncio.run(main())
    finally:
        agent.close()
    assert {topic for topic, _ in agent.messages} == {ack_topic("edge", MACHINE)}
    assert {ack.decode(p)[0] for _, p in agent.messages} == {BOOT}
    assert ack.decode(agent.messages[-1][1])[1] == [(5, 5)]  # the copy is acknowledged again
    assert service.collector.counters["received"] == 22  # its own acks never reach it


@pytest.mark.timeout(30)
def test_a_session_kept_from_the_catch_all_subscription_does_not_feed_it_acks(broker, tmp_path):
    """A collector from before the ack topic subscribed to `<prefix>/+/+/+` in a session the
    broker keeps (7 days): the new one, with the same client id, drops that filter."""
    old = Client(broker, subscribe=["edge/+/+/+"], client_id="collector-acks", clean=False)
    old.close()

    async def main():
        service = CollectorService(config(broker, tmp_path / "c.db"))
        task = await running(service)
        other = Client(broker)
        await asyncio.to_thread(other.publish, [(TOPICS["ack"], ack.encode(BOOT, [1])[0])])
        await asyncio.to_thread(other.publish, [(TOPICS["birth"], birth(1))])
        other.close()
        await wait_until(lambda: service.collector.counters["received"] >= 1)
        await asyncio.sleep(0.3)
        await stop(task)
        return service

    service = asyncio.run(main())
    assert service.collector.counters["received"] == 1 and service.collector.counters["bad"] == 0
