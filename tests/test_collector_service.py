"""`edge-agent collect`: its configuration, the service against a real Mosquitto (stores what
agents publish; shared subscriptions split the load), and the export and status commands."""

import asyncio
import csv
import io
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge_agent.cli import main
from edge_agent.collector.ingest import Collector
from edge_agent.collector.service import CollectorService, subscriptions
from edge_agent.collector.store import SqliteStore
from edge_agent.config import ConfigError, load_collector_config, parse_collector_config
from edge_agent.telemetry import wire
from tests.upstream_helpers import BOOT, TOPICS, birth, data

EXAMPLE = Path(__file__).parent.parent / "deploy" / "edge-collector.example.toml"
MACHINE = "plant/m1"  # TOPICS' site/machine


def config_text(broker, db, extra_collector="", extra_broker=""):
    return (
        f'[collector]\ndb = "{db}"\n{extra_collector}\n'
        f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\nreconnect_min_s = 0.05\n'
        f"{extra_broker}"
    )


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_collector_config(text, "collector.toml")
    return str(caught.value)


def test_the_shipped_example_loads():
    cfg = load_collector_config(EXAMPLE)
    assert cfg.broker.kind == "mqtt" and cfg.broker.host == "broker.plant.example"
    assert subscriptions(cfg) == [f"edge/+/+/{k}" for k in ("birth", "data", "event", "death")]


def test_collector_settings_are_checked_where_they_are_written():
    base = '[collector]\ndb = "x.db"\n'
    assert error_of(base) == "collector.toml: broker: missing section"
    broker = '[broker]\nhost = "b"\n'
    assert "broker.window: is an agent's [upstream] setting" in error_of(
        base + broker + "window = 4\n"
    )
    assert "collector.share_group: must be letters" in error_of(
        '[collector]\ndb = "x.db"\nshare_group = "a/b"\n' + broker
    )
    assert "collector.retention_days: must be 0 (keep all) or a number in 1..36500" in error_of(
        '[collector]\ndb = "x.db"\nretention_days = -1\n' + broker
    )
    shared = parse_collector_config('[collector]\nshare_group = "plant"\n' + broker)
    assert subscriptions(shared)[0] == "$share/plant/edge/+/+/birth"


def publish(broker, messages):
    """Publish (topic, payload) with QoS 1 and wait for every PUBACK."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


async def wait_until(predicate, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.mark.timeout(30)
def test_the_service_stores_what_an_agent_publishes(broker, tmp_path):
    cfg = parse_collector_config(config_text(broker, tmp_path / "c.db"))

    async def run():
        service = CollectorService(cfg)
        task = asyncio.create_task(service.run())
        await wait_until(lambda: service.counters["connects"] == 1)
        await asyncio.sleep(0.2)  # the subscription
        await asyncio.to_thread(
            publish,
            broker,
            [(TOPICS["birth"], birth(1))] + [(TOPICS["data"], data(s)) for s in range(2, 22)],
        )
        await wait_until(lambda: service.collector.counters["stored"] == 21)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return service

    service = asyncio.run(run())
    store = SqliteStore(tmp_path / "c.db", readonly=True)
    assert store.machines() == [MACHINE]
    assert store.missing_seqs(MACHINE) == []
    assert [s.value for s in store.samples(MACHINE)] == pytest.approx(
        [s / 10 for s in range(2, 22)]
    )
    assert service.collector.counters["bad"] == 0


@pytest.mark.timeout(30)
def test_a_shared_subscription_splits_the_messages_between_collectors(broker, tmp_path):
    def cfg(name):
        text = config_text(
            broker,
            tmp_path / f"{name}.db",
            extra_collector='share_group = "plant"\n',
            extra_broker=f'client_id = "collector-{name}"\n',
        )
        return parse_collector_config(text)

    async def run():
        services = [CollectorService(cfg("a")), CollectorService(cfg("b"))]
        tasks = [asyncio.create_task(s.run()) for s in services]
        await wait_until(lambda: all(s.counters["connects"] == 1 for s in services))
        await asyncio.sleep(0.2)
        messages = [(TOPICS["birth"], birth(1))] + [
            (TOPICS["event"], wire_event(s)) for s in range(2, 102)
        ]
        await asyncio.to_thread(publish, broker, messages)
        total = lambda: sum(s.collector.counters["received"] for s in services)  # noqa: E731
        await wait_until(lambda: total() == 101)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return [s.collector.counters["received"] for s in services]

    shares = asyncio.run(run())
    assert sum(shares) == 101 and min(shares) > 0  # each message to one of the two, both work


def wire_event(seq):
    return wire.event(BOOT, seq, 1_800_000_000_000_000 + seq, "control_state", {"n": seq})


def filled_store(path):
    store = SqliteStore(path)
    collector = Collector(store)
    collector.ingest_many(
        [(TOPICS["birth"], birth(1), 0)] + [(TOPICS["data"], data(s), 0) for s in (2, 3, 5)]
    )
    store.close()


def test_export_prints_the_samples_as_csv(tmp_path, capsys):
    filled_store(tmp_path / "c.db")
    assert main(["collect", "export", str(tmp_path / "c.db"), "--machine", MACHINE]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["machine", "channel", "unit", "t_us", "value", "quality"]
    assert [(r[1], r[4]) for r in rows[1:]] == [
        ("spindle_load", "0.2"),
        ("spindle_load", "0.3"),
        ("spindle_load", "0.5"),
    ]


def test_status_names_the_missing_numbers(tmp_path, capsys):
    filled_store(tmp_path / "c.db")
    assert main(["collect", "status", str(tmp_path / "c.db")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{MACHINE}: 4 payloads, 3 samples")
    assert line.endswith("1 numbers missing [(4, 4)]")


def test_a_missing_database_or_a_bad_config_is_one_line(tmp_path, capsys):
    assert main(["collect", "status", str(tmp_path / "none.db")]) == 2
    assert capsys.readouterr().err.strip().endswith("none.db: no such collector database")
    (tmp_path / "c.toml").write_text('[collector]\ndb = "x.db"\n')
    assert main(["collect", "run", str(tmp_path / "c.toml")]) == 2
    assert capsys.readouterr().err.strip().endswith("c.toml: broker: missing section")
