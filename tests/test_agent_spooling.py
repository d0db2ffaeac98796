"""How the agent hands payloads to the spool, on simulated time: data frames wait for their
commit interval and go in one transaction; an event commits what waits before it, so numbers
follow time; the stop commits everything."""

import asyncio
import dataclasses

from edge_agent.clock import FakeClock
from edge_agent.demo import demo_config
from edge_agent.samples import Sample
from edge_agent.service import Agent
from edge_agent.telemetry import wire


def agent_with(tmp_path, commit_interval_s: float) -> tuple[Agent, FakeClock]:
    config = demo_config(spool=str(tmp_path / "spool.db"))
    spool = dataclasses.replace(config.spool, commit_interval_s=commit_interval_s)
    upstream = dataclasses.replace(config.upstream, kind="none")
    clock = FakeClock()
    return Agent(dataclasses.replace(config, spool=spool, upstream=upstream), clock=clock), clock


def one_second_of_samples(agent: Agent, clock: FakeClock) -> None:
    clock.advance(1.0)
    stamp = clock.stamp_ns()
    agent.builder.add("spindle_load", Sample("spindle_load", stamp, 42.0), stamp)


def kinds(spool) -> list[tuple[int, str]]:
    return [(row.seq, row.kind) for row in spool.frames()]


def test_frames_wait_for_the_commit_interval_then_go_together(tmp_path):
    async def main():
        agent, clock = agent_with(tmp_path, commit_interval_s=5.0)
        spool = await agent.spool.open()
        await agent.store_birth()
        for _ in range(4):
            one_second_of_samples(agent, clock)
            await agent.flush()
        assert kinds(spool) == [(1, "birth")]  # four frames wait
        one_second_of_samples(agent, clock)
        await agent.flush()  # 5 s since the last commit
        assert [kind for _, kind in kinds(spool)] == ["birth"] + ["data"] * 5
        stamps = [wire.decode(row.body)["t"] for row in spool.frames() if row.kind == "data"]
        assert stamps == sorted(stamps)  # numbers follow time
        await agent.spool.close()

    asyncio.run(main())


def test_an_event_commits_the_frames_waiting_before_it(tmp_path):
    async def main():
        agent, clock = agent_with(tmp_path, commit_interval_s=60.0)
        spool = await agent.spool.open()
        await agent.store_birth()
        for _ in range(2):
            one_second_of_samples(agent, clock)
            await agent.flush()
        await agent.store_event("overload", {"load_pct": 120})
        assert kinds(spool) == [(1, "birth"), (2, "data"), (3, "data"), (4, "event")]
        one_second_of_samples(agent, clock)
        await agent.flush()
        assert len(kinds(spool)) == 4
        await agent.store_event("agent_stop", {})  # as the agent's stop does
        assert kinds(spool)[-2:] == [(5, "data"), (6, "event")]
        await agent.spool.close()

    asyncio.run(main())


def test_one_second_commits_store_every_frame_as_it_closes(tmp_path):
    async def main():
        agent, clock = agent_with(tmp_path, commit_interval_s=1.0)
        spool = await agent.spool.open()
        await agent.store_birth()
        for n in range(1, 4):
            one_second_of_samples(agent, clock)
            await agent.flush()
            assert len(kinds(spool)) == 1 + n
        await agent.spool.close()

    asyncio.run(main())


def test_a_corrupt_spool_is_moved_aside_and_the_agent_says_so_in_an_event(tmp_path, caplog):
    (tmp_path / "spool.db").write_bytes(b"not a database, a scratched card" * 64)

    async def main():
        agent, _ = agent_with(tmp_path, commit_interval_s=1.0)
        await agent.open_spool()
        rows = list(agent.spool.spool.frames())
        await agent.spool.close()
        return rows

    rows = asyncio.run(main())
    assert [row.kind for row in rows] == ["birth", "event", "event"]
    event = wire.decode(rows[-1].body)
    assert event["e"] == "spool_corrupt"
    assert "moved to spool.db.corrupt-" in event["d"]["detail"]
    assert [p.name.split(".corrupt-")[0] for p in tmp_path.glob("*.corrupt-*")] == ["spool.db"]
    assert any("corrupt" in r.message and r.levelname == "ERROR" for r in caplog.records)


def test_the_health_line_tells_the_spool_depth_and_its_oldest_payload(tmp_path):
    async def main():
        agent, clock = agent_with(tmp_path, commit_interval_s=1.0)
        await agent.open_spool()
        clock.advance(90)
        line = agent.health_line(await agent.spool.stats())
        await agent.spool.close()
        return line

    line = asyncio.run(main())
    assert line.endswith("frames stored (last seq 2), spool 2 payloads (oldest 90 s)")
