"""The collector service's inbox (what arrived and waits for the store) is bounded in messages
and bytes (issue 16, item 12): a QoS 0 flood is dropped and counted at the bound; a QoS 1
message over it is left with the broker and delivered again after a reconnect, never lost;
batches are bounded in bytes; a payload larger than anything stored never reaches memory
(MQTT 5 maximum packet size) or is refused at the door."""

import asyncio

import paho.mqtt.client as mqtt
import pytest

from edge_agent.collector import service as service_module
from edge_agent.collector.ingest import Collector
from edge_agent.collector.service import CollectorService
from edge_agent.collector.store import SqliteStore
from edge_agent.config import parse_collector_config
from edge_agent.telemetry import wire
from tests.test_collector_service import config_text, publish, wait_until
from tests.upstream_helpers import TOPICS, birth, data

MACHINE = "plant/m1"


def message(payload: bytes, qos: int, mid: int = 1) -> mqtt.MQTTMessage:
    """A message as paho hands it to the collector."""
    m = mqtt.MQTTMessage(mid, TOPICS["data"].encode())
    m.payload, m.qos = payload, qos
    return m


def idle_service(tmp_path) -> CollectorService:
    text = '[collector]\ndb = "{}"\n[broker]\nhost = "127.0.0.1"\n'.format(tmp_path / "c.db")
    return CollectorService(parse_collector_config(text))


def test_a_qos0_flood_stops_at_the_inbox_bound_and_is_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(service_module, "INBOX_MESSAGES", 50)
    monkeypatch.setattr(service_module, "INBOX_BYTES", 30_000)
    service = idle_service(tmp_path)
    for i in range(1000):  # nothing stored meanwhile: the store is busy
        service._received(message(bytes(1000), qos=0, mid=i))
    assert len(service._inbox) == 30 and service._inbox_bytes == 30_000
    assert service.counters["inbox_dropped"] == 970
    for i in range(100):  # small ones: the message bound
        service._received(message(b"", qos=0, mid=i))
    assert len(service._inbox) == 50 and service.counters["inbox_dropped"] == 1050


def test_a_qos1_message_over_the_bound_is_left_with_the_broker(tmp_path, monkeypatch):
    monkeypatch.setattr(service_module, "INBOX_MESSAGES", 3)
    service = idle_service(tmp_path)
    for i in range(5):
        service._received(message(b"x", qos=1, mid=i))
    assert [m.mid for m, _ in service._inbox] == [0, 1, 2]
    assert (service.counters["inbox_deferred"], service._left_with_broker) == (2, 2)


def test_a_batch_is_bounded_in_messages_and_bytes_and_takes_one_at_least(tmp_path, monkeypatch):
    monkeypatch.setattr(service_module, "BATCH_BYTES", 10_000)
    service = idle_service(tmp_path)
    for size in (4000, 4000, 4000, 20_000, 10):
        service._received(message(bytes(size), qos=1))
    sizes = lambda batch: [len(m.payload) for m, _ in batch]  # noqa: E731
    assert sizes(service._take_batch()) == [4000, 4000]
    assert sizes(service._take_batch()) == [4000]
    assert sizes(service._take_batch()) == [20_000]  # alone over the bound: taken alone
    assert sizes(service._take_batch()) == [10]
    assert service._inbox == [] and service._inbox_bytes == 0
    monkeypatch.setattr(service_module, "BATCH_MAX", 2)
    for _ in range(5):
        service._received(message(b"", qos=1))
    assert len(service._take_batch()) == 2


@pytest.mark.timeout(60)
def test_qos1_messages_left_with_the_broker_are_all_stored_exactly_once(
    broker, tmp_path, monkeypatch
):
    """An inbox of one message, a burst of 60: most are left with the broker, which delivers
    them again after the collector reconnects, until every one is stored."""
    monkeypatch.setattr(service_module, "INBOX_MESSAGES", 1)
    cfg = parse_collector_config(config_text(broker, tmp_path / "c.db"))

    async def run():
        service = CollectorService(cfg)
        task = asyncio.create_task(service.run())
        await wait_until(lambda: service.counters["connects"] == 1)
        await asyncio.sleep(0.2)
        messages = [(TOPICS["birth"], birth(1))] + [(TOPICS["data"], data(s)) for s in range(2, 61)]
        await asyncio.to_thread(publish, broker, messages)
        await wait_until(lambda: service.collector.counters["stored"] == 60, timeout_s=40)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return service

    service = asyncio.run(run())
    assert service.counters["inbox_deferred"] > 0 and service.counters["connects"] > 1
    # Messages stored just before a reconnect may have their PUBACKs still queued when the
    # connection closes: the broker delivers them again (QoS 1 is at least once) and the store
    # keeps each once, counted as duplicates. Exactly once is the store's figure, below.
    assert service.collector.counters["bad"] == 0
    store = SqliteStore(tmp_path / "c.db", readonly=True)
    assert store.missing_seqs(MACHINE) == [] and store.counts()["payloads"] == 60


@pytest.mark.timeout(30)
def test_the_broker_does_not_send_the_collector_a_packet_over_its_maximum(
    broker, tmp_path, monkeypatch
):
    monkeypatch.setattr(service_module, "MAX_PACKET_BYTES", 4096)
    cfg = parse_collector_config(config_text(broker, tmp_path / "c.db"))

    async def run():
        service = CollectorService(cfg)
        task = asyncio.create_task(service.run())
        await wait_until(lambda: service.counters["connects"] == 1)
        await asyncio.sleep(0.2)
        big = wire.event(bytes(8), 2, 0, "note", {"text": "x" * 10_000})
        await asyncio.to_thread(
            publish, broker, [(TOPICS["event"], big), (TOPICS["birth"], birth(1))]
        )
        await wait_until(lambda: service.collector.counters["received"] == 1)
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return service

    service = asyncio.run(run())
    assert service.collector.counters["births"] == 1
    assert service.collector.counters["received"] == 1 and service.counters["oversized"] == 0


@pytest.mark.timeout(30)
def test_an_oversized_payload_that_arrives_is_refused_at_the_door_and_not_redelivered(
    broker, tmp_path, monkeypatch, caplog
):
    """Without the packet limit (MQTT 3.1.1, or a broker that ignores it)."""
    monkeypatch.setattr(service_module, "MAX_PAYLOAD", 1000)
    monkeypatch.setattr(service_module, "MAX_PACKET_BYTES", 0)
    cfg = parse_collector_config(config_text(broker, tmp_path / "c.db"))

    async def run(stop_after):
        service = CollectorService(cfg)
        task = asyncio.create_task(service.run())
        await wait_until(lambda: service.counters["connects"] == 1)
        await asyncio.sleep(0.2)
        await stop_after(service)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return service

    async def publish_both(service):
        big = (TOPICS["event"], bytes(2000))
        await asyncio.to_thread(publish, broker, [big, (TOPICS["birth"], birth(1))])
        await wait_until(lambda: service.collector.counters["received"] == 1)
        await asyncio.sleep(0.3)

    first = asyncio.run(run(publish_both))
    assert first.counters["oversized"] == 1 and first.collector.counters["births"] == 1
    assert any(
        "2000 bytes, over the 1000 maximum; refused" in r.getMessage() for r in caplog.records
    )
    # Acknowledged: the broker does not keep it for the collector's next session.
    again = asyncio.run(run(lambda service: asyncio.sleep(1.0)))
    assert again.counters["oversized"] == 0 and again.collector.counters["received"] == 0


def test_a_topic_that_is_not_utf8_is_rejected_not_fatal(tmp_path):
    service = idle_service(tmp_path)
    bad = mqtt.MQTTMessage(1, b"edge/plant/\xff/data")
    bad.payload, bad.qos = data(2), 1

    async def run():
        service.store = SqliteStore(tmp_path / "c.db")
        service.collector = Collector(service.store)
        try:
            await service._store([(bad, 0)])
        finally:
            service._executor.shutdown()
        return service.collector.counters

    counters = asyncio.run(run())
    assert counters["bad"] == 1
    assert service.store.rejects()[0].error == "topic is a bytes, not a string"
