"""The publisher's rules, against a fake link whose acknowledgements the test hands out:
birth first, spool order, a bounded window, delete only on acknowledgement, refusals kept,
replay after a lost connection flagged historical, older boots' births re-sent, backoff."""

import asyncio
import logging

from edge_agent.backoff import Backoff
from edge_agent.telemetry import wire
from edge_agent.telemetry.spool import AsyncSpool
from edge_agent.upstream.publisher import Publisher
from tests.upstream_helpers import BOOT, TOPICS, FakeLink, birth, data

OLD_BOOT = bytes(8)


class Harness:
    """A spool, a publisher, and the fake links it made, one per connection attempt."""

    def __init__(self, tmp_path, window=4, failing=0):
        self.path = tmp_path / "s.db"
        self.window = window
        self.failing = failing  # this many connection attempts fail first
        self.links: list[FakeLink] = []
        self.delays: list[float] = []

    async def __aenter__(self):
        self.spool = AsyncSpool(self.path)
        await self.spool.open()

        def make_link(death, wake):
            link = FakeLink(wake, fail_open=len(self.links) < self.failing)
            link.death = death
            self.links.append(link)
            return link

        async def sleep(delay):
            self.delays.append(delay)
            await asyncio.sleep(0)

        backoff = Backoff(0.5, 8.0, rng=lambda: 0.5)
        self.publisher = Publisher(
            self.spool, make_link, TOPICS, BOOT, self.window, backoff, sleep=sleep
        )
        return self

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
            await h.settle()
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
