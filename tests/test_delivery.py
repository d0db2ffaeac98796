"""End to end, through a real Mosquitto that drops: the agent's publisher, the collector
service, and a broker whose limits are set low (2 messages in flight and 5 queued per client,
where Mosquitto's defaults are 20 and 1000), so that it drops what a slow collector cannot
take ("Outgoing messages are being dropped"), as a flood did with the defaults in issue 16.

With `delivery = "stored"` every sequence number ends up stored exactly once and no payload
leaves the spool before the collector stored it; with `delivery = "broker"` (the broker's
PUBACK as the confirmation) the same run loses payloads, which shows the test can fail.
"""

import asyncio
import sqlite3
import threading
import time

import pytest

from edge_agent.collector.service import CollectorService
from edge_agent.config import ConfigError, parse_collector_config, parse_config
from tests.test_config import MINIMAL
from tests.upstream_helpers import birth, data, mqtt_config, start_bench

pytestmark = pytest.mark.timeout(120)

MACHINE = "plant/m1"  # TOPICS' site/machine
LIMITS = {"max_inflight_messages": 2, "max_queued_messages": 5}
PAYLOADS = 200  # a birth and 199 data frames: many times what the broker holds
DROPPED = "Outgoing messages are being dropped"


def collector_config(broker, db, protocol):
    return parse_collector_config(
        f'[collector]\ndb = "{db}"\n\n'
        f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\nprotocol = "{protocol}"\n'
        'client_id = "collector-under-test"\nreconnect_min_s = 0.05\n'
    )


def stored_seqs(db) -> list[int]:
    """Every stored payload's seq, one entry per row."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT seq FROM payloads WHERE machine = ?", (MACHINE,))
        return sorted(seq for (seq,) in rows)
    finally:
        conn.close()


class DeletionWitness:
    """Wraps the spool's `ack` (the deletion) to record any seq deleted before the collector's
    database holds it: read from the collector's committed state, as another reader would."""

    def __init__(self, spool, db):
        self.early: list[int] = []
        self.deleted: list[int] = []
        real_ack = spool.ack

        async def ack(seqs):
            held = set(stored_seqs(db)) if db.exists() else set()
            self.early += [s for s in seqs if s not in held]
            self.deleted += seqs
            return await real_ack(seqs)

        spool.ack = ack


async def wait_until(predicate, timeout_s):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def settled(bench, db, timeout_s=60.0, quiet_s=1.5):
    """Until the spool is empty and the collector has stored nothing new for `quiet_s` (what
    was dropped for good never comes), within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        held = len(stored_seqs(db)) if db.exists() else 0
        if held != last:
            last, since = held, time.monotonic()
        depth = (await bench.spool.stats())["depth"]
        if depth == 0 and time.monotonic() - since >= quiet_s:
            return
        await asyncio.sleep(0.1)


def run_through_a_dropping_broker(broker, tmp_path, delivery, protocol="5"):
    """The collector's disk stalls (its store thread held) while the agent publishes
    `PAYLOADS`; then it is back. Returns (stored seqs, spool depth, the witness)."""
    db = tmp_path / "collector.db"

    async def main():
        service = CollectorService(collector_config(broker, db, protocol))
        collecting = asyncio.create_task(service.run())
        await wait_until(lambda: service.counters["connects"] == 1, 10)
        await asyncio.sleep(0.3)  # its subscriptions
        stalled = threading.Event()
        service._executor.submit(stalled.wait, 30)  # a disk that does not answer
        cfg = mqtt_config(broker, delivery=delivery, protocol=protocol, ack_timeout_s=0.5)
        bench = await start_bench(tmp_path / "spool.db", cfg, window=16)
        witness = DeletionWitness(bench.spool, db)
        try:
            await bench.store([("birth", birth(1))] + [("data", data(s)) for s in range(2, 201)])
            assert await wait_until(lambda: DROPPED in broker.log(), 10), "nothing dropped"
            stalled.set()
            await settled(bench, db)
            return stored_seqs(db), (await bench.spool.stats())["depth"], witness
        finally:
            stalled.set()
            await bench.close()
            collecting.cancel()
            await asyncio.gather(collecting, return_exceptions=True)

    return asyncio.run(main())


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_every_payload_is_stored_exactly_once_through_a_dropping_broker(
    make_broker, tmp_path, protocol
):
    broker = make_broker(limits=LIMITS)
    stored, depth, witness = run_through_a_dropping_broker(broker, tmp_path, "stored", protocol)
    assert stored == list(range(1, PAYLOADS + 1))  # every seq, each once
    assert witness.early == []  # nothing left the spool before the collector held it
    assert sorted(witness.deleted) == stored and depth == 0  # and all of it left after


def test_with_broker_acknowledgements_the_same_run_loses_payloads(make_broker, tmp_path):
    broker = make_broker(limits=LIMITS)
    stored, depth, witness = run_through_a_dropping_broker(broker, tmp_path, "broker")
    assert depth == 0  # the spool let go of everything on the broker's PUBACK ...
    missing = set(range(1, PAYLOADS + 1)) - set(stored)
    assert len(missing) > PAYLOADS // 2  # ... and the dropped payloads are gone for good
    assert set(witness.early) >= missing


def test_collectors_sharing_the_machines_each_acknowledge_what_they_stored(broker, tmp_path):
    """A shared subscription splits one agent's payloads between two collectors: neither sees
    every number (a highest-contiguous ack from one would never advance), each acknowledges
    its own, and the agent's spool empties."""

    def cfg(name):
        return parse_collector_config(
            f'[collector]\ndb = "{tmp_path / name}.db"\nshare_group = "plant"\n\n'
            f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\n'
            f'client_id = "collector-{name}"\nreconnect_min_s = 0.05\n'
        )

    async def main():
        services = [CollectorService(cfg("a")), CollectorService(cfg("b"))]
        tasks = [asyncio.create_task(s.run()) for s in services]
        await wait_until(lambda: all(s.counters["connects"] == 1 for s in services), 10)
        await asyncio.sleep(0.3)
        bench = await start_bench(tmp_path / "spool.db", mqtt_config(broker, delivery="stored"))
        try:
            await bench.store([("birth", birth(1))] + [("data", data(s)) for s in range(2, 201)])
            assert await bench.publisher.drain(20)
            return bench.publisher.counters["resent"]
        finally:
            await bench.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    resent = asyncio.run(main())
    a, b = (stored_seqs(tmp_path / f"{name}.db") for name in "ab")
    assert a and b  # both took a share
    assert set(a) | set(b) == set(range(1, PAYLOADS + 1)) and resent == 0
    assert not set(a) & set(b) - {1}  # each data frame once (the birth goes out twice a connect)


# -- the configuration ------------------------------------------------------------------------


def agent_error(upstream: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(MINIMAL + "\n[upstream]\n" + upstream, "agent.toml")
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_delivery_defaults_to_stored_and_is_checked_in_one_line():
    assert parse_config(MINIMAL).upstream.delivery == "stored"
    assert parse_config(MINIMAL + '[upstream]\ndelivery = "broker"\n').upstream.delivery == "broker"
    assert agent_error('delivery = "end-to-end"\n').endswith(
        "upstream.delivery: must be one of stored, broker, got 'end-to-end'"
    )
    assert "upstream.max_unacked: must not be less than window (64)" in agent_error(
        "max_unacked = 10\n"
    )
    assert "upstream.max_unacked: must be an integer in 1..10000" in agent_error(
        "max_unacked = 100000\n"
    )
    assert "upstream.ack_timeout_s: must be a number in 0.1..3600, got 0.01" in agent_error(
        "ack_timeout_s = 0.01\n"
    )
    assert "upstream.ack_timeout_s: must be a number in 0.1..3600, got -1" in agent_error(
        "ack_timeout_s = -1\n"
    )


def test_the_delivery_keys_are_the_agents_not_the_collectors():
    for key in ('delivery = "broker"', "max_unacked = 300", "ack_timeout_s = 5.0"):
        with pytest.raises(ConfigError, match="is an agent's \\[upstream\\] setting"):
            parse_collector_config(f'[collector]\n[broker]\nhost = "b"\n{key}\n')
