"""The publisher's rules, against a fake link whose acknowledgements the test hands out:
birth first, spool order, a bounded window, delete only on acknowledgement, refusals kept,
replay after a lost connection flagged historical, older boots' births re-sent, backoff."""

import asyncio
import logging

import msgpack

from edge_agent.backoff import Backoff
from edge_agent.telemetry import wire
from edge_agent.telemetry.spool import AsyncSpool, SpoolError
from edge_agent.upstream.publisher import ACK_INTERVAL_S, RESEND_MAX_S, SPOOL_RETRY_S, Publisher
from tests.upstream_helpers import BOOT, TOPICS, FakeLink, FakeMessage, birth, data

OLD_BOOT = bytes(8)


class Harness:
    """A spool, a publisher, and the fake links it made, one per connection attempt; the
    publisher's clock is the test's (`advance`). With `acks_stored` false the links are a
    broker's: the plant's acknowledgements come from the test (`link.confirm`)."""

    def __init__(self, tmp_path, window=4, failing=0, acks_stored=True, **options):
        self.path = tmp_path / "s.db"
        self.window = window
        self.failing = failing  # this many connection attempts fail first
        self.acks_stored = acks_stored
        self.options = options  # for the publisher
        self.links: list[FakeLink] = []
        self.delays: list[float] = []
        self.now = 1000.0

    async def __aenter__(self):
        self.spool = AsyncSpool(self.path)
        await self.spool.open()

        def make_link(death, wake):
            link = FakeLink(
                wake, fail_open=len(self.links) < self.failing, acks_stored=self.acks_stored
            )
            link.death = death
            self.links.append(link)
            return link

        async def sleep(delay):
            self.delays.append(delay)
            await asyncio.sleep(0)

        backoff = Backoff(0.5, 8.0, rng=lambda: 0.5)
        self.publisher = Publisher(
            self.spool,
            make_link,
            TOPICS,
            BOOT,
            self.window,
            backoff,
            sleep=sleep,
            clock=lambda: self.now,
            **self.options,
        )
        return self

    async def advance(self, seconds):
        """Simulated time passes; the publisher looks at it."""
        self.now += seconds
        self.publisher._wake.set()
        await self.settle()

    async def store(self, *payloads, boot=BOOT):
        seqs = await self.spool.store([(kind, boot, body) for kind, body in payloads])
        self.publisher.notify()
        return seqs

    def start(self):
        self.task = asyncio.create_task(self.publisher.run())

    async def settle(self):
        for _ in range(50):
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)  # the spool's thread
        for _ in range(50):
            await asyncio.sleep(0)

    async def spooled(self):
        return [row.seq for row in await self.spool.pending(0, 10_000)]

    async def __aexit__(self, *exc):
        if hasattr(self, "task"):
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.spool.close()


def kinds_and_seqs(link):
    out = []
    for topic, payload, retain in link.sent:
        frame = wire.decode(payload)
        out.append((topic.rsplit("/", 1)[1], frame.get("s"), retain))
    return out


def test_birth_goes_first_then_the_spool_in_order_within_the_window(tmp_path):
    async def main():
        async with Harness(tmp_path, window=4) as h:
            await h.store(("birth", birth(1)), *[("data", data(s)) for s in range(2, 12)])
            h.start()
            await h.settle()
            link = h.links[0]
            link.ack(1)  # the retained birth on connecting
            await h.settle()
            assert kinds_and_seqs(link) == [
                ("birth", 1, True),
                ("birth", 1, False),
                ("data", 2, False),
                ("data", 3, False),
                ("data", 4, False),
            ]
            link.ack(2)
            await h.settle()
            assert [s for _, s, _ in kinds_and_seqs(link)][-2:] == [5, 6]
            assert len(link.waiting) == 4  # never more than the window
            link.ack()
            await h.settle()
            link.ack()
            await h.settle()
            link.ack()
            await h.settle()
            assert [s for _, s, _ in kinds_and_seqs(link)][1:] == list(range(1, 12))
            assert await h.spooled() == []
            assert h.publisher.counters["acked"] == 11

    asyncio.run(main())


def test_nothing_leaves_the_spool_unacknowledged_and_a_refusal_is_kept(tmp_path, caplog):
    async def main():
        async with Harness(tmp_path, window=8) as h:
            await h.store(("birth", birth(1)), ("data", data(2)), ("data", data(3)))
            h.start()
            await h.settle()
            link = h.links[0]
            link.ack(1)
            await h.settle()
            assert await h.spooled() == [1, 2, 3]  # published, not yet acknowledged
            link.ack(2)  # seq 1 and 2 accepted
            link.ack(1, reason=0x87)  # seq 3: not authorized
            await h.advance(ACK_INTERVAL_S)  # the deletions' batch
            assert await h.spooled() == [3]
            assert h.publisher.counters["refused"] == 1

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    refusals = [r.message for r in caplog.records if "refused" in r.message]
    assert refusals == ["upstream refused payload 3 (reason code 0x87); kept"]


def test_a_lost_connection_replays_what_was_not_acknowledged_flagged_historical(tmp_path):
    async def main():
        async with Harness(tmp_path, window=8) as h:
            await h.store(("birth", birth(1)), ("data", data(2)), ("data", data(3)))
            h.start()
            await h.settle()
            first = h.links[0]
            first.ack(1)  # the retained birth
            await h.settle()
            first.ack(2)  # seq 1 and 2
            await h.settle()
            first.drop()  # seq 3 was in flight
            await h.settle()
            await h.store(("data", data(4)))  # stored while disconnected
            await h.settle()
            second = h.links[1]
            second.auto_ack = True
            second.ack()
            await h.settle()
            sent = kinds_and_seqs(second)
            assert sent[0] == ("birth", 1, True)
            assert [s for _, s, _ in sent[1:]] == [3, 4]
            replayed = [wire.decode(p) for t, p, _ in second.sent[1:]]
            assert all(frame.get("h") is True for frame in replayed)
            assert await h.spooled() == []
            assert h.publisher.counters["disconnects"] == 1

    asyncio.run(main())


def test_frames_published_live_are_not_historical(tmp_path):
    async def main():
        async with Harness(tmp_path) as h:
            await h.store(("birth", birth(1)))
            h.start()
            await h.settle()
            link = h.links[0]
            link.auto_ack = True
            link.ack()
            await h.settle()
            await h.store(("data", data(2)))
            await h.settle()
            frame = wire.decode(link.sent[-1][1])
            assert frame["s"] == 2 and "h" not in frame

    asyncio.run(main())


def test_an_older_boots_birth_is_resent_before_its_frames(tmp_path):
    async def main():
        async with Harness(tmp_path, window=8) as h:
            await h.store(("birth", birth(1, OLD_BOOT)), boot=OLD_BOOT)
            await h.spool.ack([1])  # the old birth was delivered long ago ...
            await h.store(("data", data(2, OLD_BOOT)), boot=OLD_BOOT)  # ... its data not
            await h.store(("birth", birth(3)))
            h.start()
            await h.settle()
            link = h.links[0]
            link.auto_ack = True
            link.ack()
            await h.settle()
            sent = [(k, wire.decode(p)["b"]) for k, p in ((t, p) for t, p, _ in link.sent)]
            assert sent == [
                (TOPICS["birth"], BOOT),  # the running boot's, retained
                (TOPICS["birth"], OLD_BOOT),  # re-sent before the old boot's data
                (TOPICS["data"], OLD_BOOT),
                (TOPICS["birth"], BOOT),
            ]
            assert h.publisher.counters["births_resent"] == 1

    asyncio.run(main())


def test_an_unreachable_upstream_is_retried_with_capped_backoff_and_logged_once(tmp_path, caplog):
    async def main():
        async with Harness(tmp_path, failing=6) as h:
            await h.store(("birth", birth(1)))
            h.start()
            await h.settle()
            link = h.links[6]
            link.auto_ack = True
            link.ack()
            await h.settle()
            assert await h.spooled() == []
            assert h.publisher.counters["connect_failures"] == 6
            # rng 0.5: halfway between 0.5 s and a ceiling doubling up to 8 s
            assert h.delays == [0.5, 0.75, 1.25, 2.25, 4.25, 4.25]

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    assert [r.message for r in caplog.records] == ["upstream unreachable: fake: unreachable"]


def test_drain_waits_for_everything_and_the_death_names_the_birth(tmp_path):
    async def main():
        async with Harness(tmp_path) as h:
            await h.store(("birth", birth(1)), ("data", data(2)))
            h.start()
            await h.settle()
            link = h.links[0]
            link.auto_ack = True
            link.ack()
            await h.store(("event", wire.event(BOOT, 3, 0, "agent_stop", {})))
            assert await h.publisher.drain(5.0)
            assert await h.spooled() == []
            assert await h.publisher.send_death(1.0)
            assert wire.decode(link.sent[-1][1]) == {"v": 2, "k": "death", "b": BOOT, "bs": 1}
            assert wire.decode(link.death)["bs"] == 1  # the will registered at connect

    asyncio.run(main())


def test_drain_gives_up_after_its_time_when_the_upstream_is_away(tmp_path):
    async def main():
        async with Harness(tmp_path, failing=1000) as h:
            await h.store(("birth", birth(1)))
            h.start()
            assert not await h.publisher.drain(0.05)
            assert not await h.publisher.send_death(0.05)
            assert await h.spooled() == [1]

    asyncio.run(main())


# -- end to end: the plant's acknowledgement, not the broker's, lets a payload go ----------


def plant(tmp_path, **options):
    """A harness whose links are a broker's: PUBACKs from `ack`, the collector's acks from
    `confirm`; the default timeout of 10 s, a limit of 8 unconfirmed payloads."""
    return Harness(tmp_path, acks_stored=False, **{"window": 4, "max_unacked": 8, **options})


async def connected(h, *payloads):
    """Store `payloads`, start, and PUBACK everything sent (the broker has it all)."""
    await h.store(*payloads)
    h.start()
    await h.settle()
    link = h.links[-1]
    link.auto_ack = True
    link.ack()
    await h.settle()
    return link


def data_seqs(link):
    return [s for kind, s, _ in kinds_and_seqs(link) if kind == "data"]


def test_a_payload_leaves_the_spool_only_once_the_plant_stored_it(tmp_path):
    async def main():
        async with plant(tmp_path) as h:
            link = await connected(h, ("birth", birth(1)), ("data", data(2)), ("data", data(3)))
            assert link.subscribed == [TOPICS["ack"]]
            await h.advance(1.0)
            assert await h.spooled() == [1, 2, 3]  # the broker has them: not enough
            link.confirm([1, 2])
            await h.advance(ACK_INTERVAL_S)
            assert await h.spooled() == [3]
            link.confirm([3])
            await h.settle()  # nothing else outstanding: deleted at once
            assert await h.spooled() == []
            assert h.publisher.counters["acked"] == 3
            assert h.publisher.counters["resent"] == 0

    asyncio.run(main())


def test_an_unconfirmed_payload_is_sent_again_after_the_timeout_then_less_often(tmp_path, caplog):
    async def main():
        async with plant(tmp_path, ack_timeout_s=10.0) as h:
            link = await connected(h, ("birth", birth(1)), ("data", data(2)))
            link.confirm([1])  # seq 2 was dropped on the way to the collector
            await h.advance(9.9)
            assert data_seqs(link) == [2]
            await h.advance(0.2)  # 10 s after the broker took it
            assert data_seqs(link) == [2, 2]
            await h.advance(19.8)  # the second attempt waits twice as long
            assert data_seqs(link) == [2, 2]
            await h.advance(0.3)
            assert data_seqs(link) == [2, 2, 2]
            link.confirm([2])
            await h.settle()
            assert await h.spooled() == []
            await h.advance(1000.0)
            assert data_seqs(link) == [2, 2, 2]  # confirmed: never again
            assert h.publisher.counters["resent"] == 2

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not confirmed stored by the plant within 10 s" in warnings[0]


def test_a_payload_never_confirmed_is_sent_at_most_once_a_minute(tmp_path):
    async def main():
        async with plant(tmp_path, ack_timeout_s=10.0) as h:
            link = await connected(h, ("birth", birth(1)), ("data", data(2)))
            link.confirm([1])  # seq 2 is refused by the collector every time (bad payload)
            for _ in range(60):
                await h.advance(RESEND_MAX_S / 6)
            # sent, then again after 10, 30, 70 s and every 60 s from there: 130, ..., 550 s
            assert data_seqs(link).count(2) == 1 + 3 + 8
            assert await h.spooled() == [2]  # kept all along

    asyncio.run(main())


def test_published_and_unconfirmed_payloads_are_bounded(tmp_path):
    async def main():
        async with plant(tmp_path, window=4, max_unacked=8) as h:
            payloads = [("birth", birth(1))] + [("data", data(s)) for s in range(2, 21)]
            link = await connected(h, *payloads)
            assert [s for _, s, _ in kinds_and_seqs(link)[1:]] == list(range(1, 9))
            link.confirm([1, 2, 3])
            await h.settle()
            assert [s for _, s, _ in kinds_and_seqs(link)[1:]] == list(range(1, 12))

    asyncio.run(main())


def test_an_absent_collector_gets_one_payload_per_timeout_not_the_window(tmp_path):
    async def main():
        async with plant(tmp_path, window=8, max_unacked=8, ack_timeout_s=10.0) as h:
            payloads = [("birth", birth(1))] + [("data", data(s)) for s in range(2, 9)]
            link = await connected(h, *payloads)
            sent = len(link.sent)
            counts = []
            for _ in range(5):  # nobody confirms anything
                await h.advance(RESEND_MAX_S)
                counts.append(len(link.sent) - sent)
                sent = len(link.sent)
            assert counts == [1, 1, 1, 1, 1]  # the oldest, as a probe; not all eight
            assert [s for _, s, _ in kinds_and_seqs(link)[9:]] == [1] * 5
            link.confirm([1])  # the collector is back: the limit grows from one ...
            await h.settle()
            assert len(link.sent) - sent == 2
            link.confirm([2, 3])  # ... to the threshold the timeouts left (2), then by one
            await h.settle()  # per round trip
            assert len(link.sent) - sent == 2 + 2
            assert [s for _, s, _ in kinds_and_seqs(link)[14:]] == [2, 3, 4, 5]

    asyncio.run(main())


def test_a_reconnect_sends_again_from_the_oldest_unconfirmed(tmp_path):
    async def main():
        async with plant(tmp_path, window=8) as h:
            payloads = [("birth", birth(1))] + [("data", data(s)) for s in range(2, 6)]
            first = await connected(h, *payloads)
            first.confirm([1, 2, 4])
            await h.settle()
            first.drop()
            await h.settle()
            second = h.links[1]
            second.auto_ack = True
            second.ack()
            await h.settle()
            assert [s for _, s, _ in kinds_and_seqs(second)[1:]] == [3, 5]
            assert await h.spooled() == [3, 5]

    asyncio.run(main())


def test_acks_of_another_boot_malformed_or_elsewhere_delete_nothing(tmp_path, caplog):
    async def main():
        async with plant(tmp_path) as h:
            link = await connected(h, ("birth", birth(1)), ("data", data(2)))
            link.confirm([1, 2], boot=OLD_BOOT)
            link.confirm([1, 2], topic=TOPICS["ack"] + "/x")
            link.on_message(FakeMessage(TOPICS["ack"], b"\xc1 not msgpack"))
            link.on_message(FakeMessage(TOPICS["ack"], msgpack.packb([1, 4, BOOT, [2, 1]])))
            await h.advance(1.0)
            assert await h.spooled() == [1, 2]
            assert h.publisher.counters["bad_acks"] == 3
            link.confirm([1, 2])
            link.confirm([1, 2])  # a duplicate (the collector stored a re-send again)
            await h.settle()
            assert await h.spooled() == []

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    lines = [r.message for r in caplog.records]
    assert len(lines) == 3 and all(
        line.startswith("upstream: acknowledgement ignored: ") for line in lines
    )
    assert all("\n" not in line for line in lines)


def test_a_refused_ack_subscription_is_one_line_and_retried(tmp_path, caplog):
    async def main():
        async with plant(tmp_path) as h:
            h.acks_stored = False
            await h.store(("birth", birth(1)))
            original = h.publisher._make_link

            def refusing(death, wake):
                link = original(death, wake)
                link.suback = 0x87 if len(h.links) < 3 else 0
                return link

            h.publisher._make_link = refusing
            h.start()
            await h.settle()
            assert h.publisher.counters["disconnects"] >= 2
            assert h.links[-1].sent  # the third connection publishes

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    refusals = {r.message for r in caplog.records if "refused" in r.message}
    assert refusals == {
        "upstream lost: subscription to edge/plant/m1/ack refused (reason code 0x87): the "
        "broker's ACL must let the agent read its acknowledgements"
    }


def test_with_broker_delivery_the_puback_confirms(tmp_path):
    async def main():
        async with plant(tmp_path, delivery="broker") as h:
            link = await connected(h, ("birth", birth(1)), ("data", data(2)))
            assert link.subscribed == []
            assert await h.spooled() == []

    asyncio.run(main())


class FlakySpool(AsyncSpool):
    """The real spool, with its deletions and reads failing as a locked database makes
    them fail while `failing` is set (the spool's operational `SpoolError`)."""

    failing = False

    async def ack(self, seqs):
        if self.failing:
            raise SpoolError(f"{self.path}: database is locked")
        return await super().ack(seqs)

    async def pending(self, after_seq=0, limit=1000):
        if self.failing:
            raise SpoolError(f"{self.path}: database is locked")
        return await super().pending(after_seq, limit)


def test_spool_errors_are_logged_once_and_retried_never_fatal(tmp_path, caplog):
    async def main():
        async with plant(tmp_path) as h:
            h.spool = FlakySpool(h.path)
            await h.spool.open()
            h.publisher.spool = h.spool
            link = await connected(h, ("birth", birth(1)), ("data", data(2)))
            h.spool.failing = True
            link.confirm([1, 2])
            await h.settle()
            await h.store(("data", data(3)))
            for _ in range(5):
                await h.advance(SPOOL_RETRY_S)
            assert not h.task.done()
            assert h.publisher.counters["spool_errors"] >= 2
            h.spool.failing = False
            await h.advance(SPOOL_RETRY_S)
            link.confirm([3])
            await h.settle()
            assert await h.spooled() == []

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    spool_lines = [r.message for r in caplog.records if "spool" in r.message]
    assert len(spool_lines) == 1 and "database is locked; retrying in 1 s" in spool_lines[0]
