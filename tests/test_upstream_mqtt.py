"""The publisher against a real Mosquitto: delivery in order and deletion on PUBACK (with
`delivery = "broker"`: no collector here; tests/test_delivery.py runs end to end), the
retained birth, outages and restarts without loss, TLS with and without a verifying
certificate, passwords, MQTT 3.1.1, and the death as the last will."""

import asyncio
import dataclasses
import socket

import pytest

from edge_agent.telemetry import wire
from tests.upstream_helpers import (
    BOOT,
    TOPICS,
    Subscriber,
    birth,
    data,
    mqtt_config,
    start_bench,
    watched_bench,
)

pytestmark = pytest.mark.timeout(30)


def seqs(subscriber, kind="data"):
    return [frame["s"] for frame in subscriber.decoded(kind)]


def test_payloads_arrive_in_order_and_leave_the_spool_once_acknowledged(broker, tmp_path):
    async def main():
        async with watched_bench(broker, tmp_path, mqtt_config(broker)) as (bench, subscriber):
            await bench.store([("birth", birth(1))] + [("data", data(s)) for s in range(2, 202)])
            await subscriber.wait_for(lambda s: len(seqs(s)) == 200)
            assert seqs(subscriber) == list(range(2, 202))
            assert await bench.publisher.drain(5)
            assert (await bench.spool.stats())["depth"] == 0
            late = Subscriber(broker.host, broker.port, TOPICS["birth"])
            await late.wait_for(lambda s: s.messages)
            topic, payload, retained = late.messages[0]
            assert retained and wire.decode(payload)["b"] == BOOT  # the table, for latecomers
            late.close()

    asyncio.run(main())


def test_an_unreachable_broker_loses_nothing_and_the_backlog_is_historical(broker, tmp_path):
    async def main():
        broker.stop()
        bench = await start_bench(tmp_path / "s.db", mqtt_config(broker))
        try:
            await bench.store([("birth", birth(1))] + [("data", data(s)) for s in range(2, 52)])
            await asyncio.sleep(0.5)
            assert bench.publisher.counters["connect_failures"] >= 1
            assert "cannot connect" in bench.publisher.last_error
            broker.start()
            subscriber = Subscriber(broker.host, broker.port)
            await subscriber.wait_for(lambda s: len(seqs(s)) == 50, timeout_s=15)
            frames = subscriber.decoded("data")
            assert [f["s"] for f in frames] == list(range(2, 52))
            assert all(f.get("h") is True for f in frames)  # stored while the broker was away
            await bench.store([("data", data(52))])
            await subscriber.wait_for(lambda s: len(seqs(s)) == 51)
            assert "h" not in subscriber.decoded("data")[-1]  # live again
            subscriber.close()
        finally:
            await bench.close()

    asyncio.run(main())


def test_a_broker_restart_mid_stream_loses_nothing(broker, tmp_path):
    async def main():
        subscriber = Subscriber(broker.host, broker.port)
        bench = await start_bench(tmp_path / "s.db", mqtt_config(broker), window=8)
        try:
            await bench.store([("birth", birth(1))])
            for s in range(2, 302):
                await bench.store([("data", data(s))])
                if s == 100:
                    broker.stop()
                    subscriber.close()
                if s == 200:
                    broker.start()
                    subscriber = Subscriber(broker.host, broker.port)  # a new one: closed below
            assert await bench.publisher.drain(15)
            await subscriber.wait_for(lambda sub: 301 in seqs(sub))
            before = set(range(2, 101))  # whatever the first subscriber saw is not re-checked
            assert set(seqs(subscriber)) >= set(range(2, 302)) - before
            assert bench.publisher.counters["disconnects"] >= 1
            assert (await bench.spool.stats())["depth"] == 0
        finally:
            await bench.close()
            subscriber.close()

    asyncio.run(main())


def test_tls_connects_with_a_verified_broker_certificate(broker, tmp_path, pki):
    async def main():
        cfg = dataclasses.replace(
            mqtt_config(broker), port=broker.tls_port, tls=True, ca_file=str(pki.ca_cert)
        )
        async with watched_bench(broker, tmp_path, cfg) as (bench, subscriber):
            await bench.store([("birth", birth(1)), ("data", data(2))])
            await subscriber.wait_for(lambda s: seqs(s) == [2])

    asyncio.run(main())


def test_tls_refuses_a_broker_whose_certificate_does_not_verify(broker, tmp_path, pki):
    async def main():
        cfg = dataclasses.replace(
            mqtt_config(broker), port=broker.tls_port, tls=True, ca_file=str(pki.other_ca_cert)
        )
        async with watched_bench(broker, tmp_path, cfg) as (bench, subscriber):
            await bench.store([("birth", birth(1)), ("data", data(2))])
            await asyncio.sleep(0.5)
            error = bench.publisher.last_error
            assert "TLS certificate does not verify" in error and "\n" not in error
            assert bench.publisher.counters["connects"] == 0
            assert seqs(subscriber) == []
            assert (await bench.spool.stats())["depth"] == 2  # kept for a broker that verifies

    asyncio.run(main())


def test_username_and_password_from_a_file(make_broker, tmp_path):
    broker = make_broker(users={"agent": "s3cret"})
    secret = tmp_path / "password"

    async def run(password: str):
        secret.write_text(password + "\n")
        secret.chmod(0o600)
        cfg = mqtt_config(broker, username="agent", password_file=str(secret))
        bench = await start_bench(tmp_path / f"{password}.db", cfg)
        try:
            await bench.store([("birth", birth(1))])
            await asyncio.sleep(0.5)
            return bench.publisher.counters["connects"], bench.publisher.last_error
        finally:
            await bench.close()

    assert asyncio.run(run("s3cret")) == (1, "")
    connects, error = asyncio.run(run("wrong"))
    assert connects == 0 and "refused the connection" in error and "wrong" not in error


def test_mqtt_3_1_1_works_too(broker, tmp_path):
    async def main():
        async with watched_bench(
            broker, tmp_path / "s.db", mqtt_config(broker, protocol="3.1.1")
        ) as (bench, subscriber):
            await bench.store([("birth", birth(1)), ("data", data(2))])
            await subscriber.wait_for(lambda s: seqs(s) == [2])

    asyncio.run(main())


def test_the_death_is_the_last_will_when_the_connection_dies(broker, tmp_path):
    async def main():
        async with watched_bench(broker, tmp_path, mqtt_config(broker)) as (bench, subscriber):
            await bench.store([("birth", birth(1))])
            assert await bench.publisher.drain(5)
            # The network dies under the agent: no DISCONNECT reaches the broker.
            bench.links[-1]._client.socket().shutdown(socket.SHUT_RDWR)
            await subscriber.wait_for(lambda s: s.decoded("death"))
            assert subscriber.decoded("death") == [{"v": 2, "k": "death", "b": BOOT, "bs": 1}]

    asyncio.run(main())
