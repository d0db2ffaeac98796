"""How the agent hands payloads to the spool, on simulated time: data frames wait for their
commit interval and go in one transaction; an event commits what waits before it, so numbers
follow time; the stop commits everything. When the spool cannot take payloads (a full disk,
made here with SQLite's max_page_count) they are held in memory within a bound, the oldest
data frames dropped first, and stored in order once it can, with an event saying what
happened."""

import asyncio
import dataclasses
import gc

import edge_agent.telemetry.spool as spooling
from edge_agent.clock import FakeClock
from edge_agent.control.teach import TeachStore, ToolRecord
from edge_agent.samples import Sample
from edge_agent.service import Agent
from edge_agent.telemetry import journal, wire
from edge_agent.telemetry.spool import Spool
from hil.demo import demo_config


def agent_with(tmp_path, commit_interval_s: float) -> tuple[Agent, FakeClock]:
    config = demo_config(spool=str(tmp_path / "spool.db"))
    spool = dataclasses.replace(config.spool, commit_interval_s=commit_interval_s)
    upstream = dataclasses.replace(config.upstream, kind="none")
    clock = FakeClock()
    return Agent(dataclasses.replace(config, spool=spool, upstream=upstream), clock=clock), clock


def one_second_of_samples(agent: Agent, clock: FakeClock) -> None:
    clock.advance(1.0)
    stamp = clock.stamp_ns()
    agent.journal.builder.add("spindle_load", Sample("spindle_load", stamp, 42.0), stamp)


def kinds(spool) -> list[tuple[int, str]]:
    return [(row.seq, row.kind) for row in spool.frames()]


def test_frames_wait_for_the_commit_interval_then_go_together(tmp_path):
    async def main():
        agent, clock = agent_with(tmp_path, commit_interval_s=5.0)
        spool = await agent.journal.spool.open()
        await agent.store_birth()
        for _ in range(4):
            one_second_of_samples(agent, clock)
            await agent.journal.flush()
        assert kinds(spool) == [(1, "birth")]  # four frames wait
        one_second_of_samples(agent, clock)
        await agent.journal.flush()  # 5 s since the last commit
        assert [kind for _, kind in kinds(spool)] == ["birth"] + ["data"] * 5
        stamps = [wire.decode(row.body)["t"] for row in spool.frames() if row.kind == "data"]
        assert stamps == sorted(stamps)  # numbers follow time
        await agent.journal.spool.close()

    asyncio.run(main())


def test_an_event_commits_the_frames_waiting_before_it(tmp_path):
    async def main():
        agent, clock = agent_with(tmp_path, commit_interval_s=60.0)
        spool = await agent.journal.spool.open()
        await agent.store_birth()
        for _ in range(2):
            one_second_of_samples(agent, clock)
            await agent.journal.flush()
        await agent.journal.store_event("overload", {"load_pct": 120})
        assert kinds(spool) == [(1, "birth"), (2, "data"), (3, "data"), (4, "event")]
        one_second_of_samples(agent, clock)
        await agent.journal.flush()
        assert len(kinds(spool)) == 4
        await agent.journal.store_event("agent_stop", {})  # as the agent's stop does
        assert kinds(spool)[-2:] == [(5, "data"), (6, "event")]
        await agent.journal.spool.close()

    asyncio.run(main())


def test_one_second_commits_store_every_frame_as_it_closes(tmp_path):
    async def main():
        agent, clock = agent_with(tmp_path, commit_interval_s=1.0)
        spool = await agent.journal.spool.open()
        await agent.store_birth()
        for n in range(1, 4):
            one_second_of_samples(agent, clock)
            await agent.journal.flush()
            assert len(kinds(spool)) == 1 + n
        await agent.journal.spool.close()

    asyncio.run(main())


def test_a_corrupt_spool_is_moved_aside_and_the_agent_says_so_in_an_event(tmp_path, caplog):
    (tmp_path / "spool.db").write_bytes(b"not a database, a scratched card" * 64)

    async def main():
        agent, _ = agent_with(tmp_path, commit_interval_s=1.0)
        await agent.open_spool()
        rows = list(agent.journal.spool.spool.frames())
        await agent.journal.spool.close()
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
        line = agent.health_line(await agent.journal.spool.stats())
        await agent.journal.spool.close()
        return line

    line = asyncio.run(main())
    assert line.endswith("frames stored (last seq 2), spool 2 payloads (oldest 90 s)")


# -- when the spool cannot take payloads --------------------------------------------------------

MAX_PAGES = 1073741823  # SQLite's default max_page_count


def disk_full(spool) -> None:
    """SQLITE_FULL for every store that needs a new page, as a full file system gives it
    (tests/test_spool_faults.py shows both the same)."""
    spool.pragma(f"max_page_count = {spool.pragma('page_count')}")


def room_again(spool) -> None:
    spool.pragma(f"max_page_count = {MAX_PAGES}")


async def until_the_spool_refuses(agent: Agent, clock: FakeClock) -> None:
    for _ in range(500):  # frames go into the last page's free room first
        one_second_of_samples(agent, clock)
        await (
            agent.journal.flush()
        )  # (before the fix: an OperationalError out of here ended the agent)
        if agent.journal.spool_trouble is not None:
            return
    raise AssertionError("the spool never refused a store")


def decoded(spool) -> list[tuple[int, str, dict]]:
    out = []
    for row in spool.frames():
        frame = wire.decode(row.body)
        assert frame["s"] == row.seq  # every payload carries the number it is stored under
        out.append((row.seq, row.kind, frame))
    return out


def test_a_full_disk_while_running_holds_telemetry_in_memory_then_stores_it_in_order(tmp_path):
    async def main():
        agent, clock = agent_with(tmp_path, commit_interval_s=1.0)
        await agent.open_spool()
        spool = agent.journal.spool.spool
        disk_full(spool)
        await until_the_spool_refuses(agent, clock)
        assert isinstance(agent.journal.spool_trouble, spooling.SpoolFull)
        stored = decoded(spool)
        for _ in range(3):
            one_second_of_samples(agent, clock)
            await agent.journal.flush()
        await agent.journal.store_event("overload", {"load_pct": 120})
        one_second_of_samples(agent, clock)
        await agent.journal.flush()
        assert decoded(spool) == stored  # nothing stored, nothing lost
        assert [item.kind for item in agent.journal.held.items()] == ["data"] * 4 + [
            "event",
            "data",
        ]
        assert "spool NOT TAKING PAYLOADS (disk_full): 6 held" in agent.health_line(
            await agent.journal.spool.stats()
        )
        room_again(spool)
        assert await agent.journal.store_held()
        after = decoded(spool)
        await agent.journal.spool.close()
        return stored, after, agent

    stored, after, agent = asyncio.run(main())
    assert after[: len(stored)] == stored
    seqs = [seq for seq, _, _ in after]
    assert seqs == list(range(1, len(after) + 1))  # numbers continue, none skipped
    late = after[len(stored) :]
    assert [kind for _, kind, _ in late] == ["data"] * 4 + ["event"] + ["data"] + ["event"]
    assert late[4][2]["e"] == "overload"
    stamps = [frame["t"] for _, kind, frame in late if kind == "data"]
    assert stamps == sorted(stamps)
    outage = late[-1][2]
    assert outage["e"] == "spool_outage"
    assert outage["d"]["reason"] == "disk_full" and "disk full" in outage["d"]["error"]
    assert outage["d"]["stored_late"] == 6 and outage["d"]["dropped_frames"] == 0
    assert agent.journal.spool_trouble is None and agent.journal.store_failures["disk_full"] >= 1


def test_beyond_the_memory_bound_the_oldest_frames_go_events_stay_and_the_event_says_so(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(journal, "HELD_MAX_BYTES", 700)

    async def main():
        agent, clock = agent_with(tmp_path, commit_interval_s=1.0)
        await agent.open_spool()
        spool = agent.journal.spool.spool
        disk_full(spool)
        await until_the_spool_refuses(agent, clock)
        frame_stamps = []
        for n in range(30):
            one_second_of_samples(agent, clock)
            frame_stamps.append(clock.stamp_ns() // 1000)
            await agent.journal.flush()
            if n % 10 == 0:
                await agent.journal.store_event("control_state", {"state": f"s{n}"})
        line = agent.health_line(await agent.journal.spool.stats())
        room_again(spool)
        assert await agent.journal.store_held()
        rows = decoded(spool)
        await agent.journal.spool.close()
        return rows, line, frame_stamps

    rows, line, frame_stamps = asyncio.run(main())
    events = [frame["d"]["state"] for _, kind, frame in rows if frame.get("e") == "control_state"]
    assert events == ["s0", "s10", "s20"]  # control actions are kept
    outage = rows[-1][2]["d"]
    dropped = outage["dropped_frames"]
    assert dropped > 10 and outage["dropped_points"] == dropped  # one sample a frame here
    assert outage["dropped_events"] == 0
    kept = [frame["t"] for _, kind, frame in rows if kind == "data"][-(30 - dropped) :]
    assert outage["dropped_from_us"] < outage["dropped_to_us"] < min(kept)  # the oldest went
    assert f"{dropped} frames ({dropped} points) and 0 events never stored" in line
    assert [seq for seq, _, _ in rows] == list(range(1, len(rows) + 1))


def test_the_stop_tries_once_more_and_says_what_it_could_not_store(tmp_path, caplog):
    async def main():
        agent, clock = agent_with(tmp_path, commit_interval_s=1.0)
        await agent.open_spool()
        disk_full(agent.journal.spool.spool)
        await until_the_spool_refuses(agent, clock)
        await agent.journal.store_event("agent_stop", {"reason": "stop"})
        await agent.journal.store_held_at_stop()
        await agent.journal.spool.close()

    asyncio.run(main())
    assert any(
        r.levelname == "ERROR" and "stopping with 2 payloads the spool did not take" in r.message
        for r in caplog.records
    )


def test_held_payloads_numbered_when_stored_are_the_payloads_made_with_that_number():
    table = wire_table()
    boot = b"B" * 8
    series = {0: wire.Series((1_000_000, 1_000_100), (1.5, 2.5))}
    for make in (
        lambda seq: wire.data(boot, seq, table, series),
        lambda seq: wire.event(boot, seq, 7, "overload", {"load_pct": 120.5, "raw": b"\x00"}),
        lambda seq: wire.birth(boot, seq, 7, "0.1.0", b"h" * 8, table, "fw 1"),
    ):
        assert wire.with_seq(make(0), 12345) == make(12345)


def wire_table() -> list:
    return [wire.Channel(0, "spindle_load", "%", 0.1, "on_change", 0, None)]


def test_a_teach_record_that_cannot_be_saved_is_one_counted_line(tmp_path, caplog):
    """The teach file's sibling of a full disk: storing the record fails (here its folder is
    a file; a full disk fails it the same way, with a TeachError)."""
    (tmp_path / "not-a-folder").write_text("")
    agent, _ = agent_with(tmp_path, commit_interval_s=1.0)
    agent.control_host.teach = TeachStore(tmp_path / "not-a-folder" / "teach.json")
    record = ToolRecord(3, 80.0, 10.0, (1, 2), 7, 50, "2026-01-01T00:00:00Z")

    async def main():
        await agent.open_spool()
        agent.control_host._on_events([("teach_in_learned", {"record": record})])
        while agent.control_host._tasks_in_flight:
            await asyncio.wait(list(agent.control_host._tasks_in_flight))
        await agent.journal.spool.close()

    asyncio.run(main())
    gc.collect()  # an unretrieved task exception is logged when the task is collected
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].name == "edge_agent.control.host"
    message = errors[0].getMessage()
    assert "teach.json: cannot " in message and "tool 3's record is used" in message
    assert agent.control_host.events["teach_save_failed"] == 1


def test_a_spool_an_older_agent_moved_aside_is_an_error_and_an_event_at_every_start(
    tmp_path, caplog
):
    orphan = Spool(tmp_path / "spool.db.corrupt-20250101T000000")
    orphan.store([("data", b"A" * 8, b"unsent %d" % i) for i in range(159)])
    orphan.close()

    async def start() -> list[dict]:
        agent, _ = agent_with(tmp_path, commit_interval_s=1.0)
        await agent.open_spool()
        frames = [wire.decode(row.body) for row in agent.journal.spool.spool.frames()]
        await agent.journal.spool.close()
        return [f for f in frames if f.get("e") == "spool_orphan"]

    for _ in range(2):
        caplog.clear()
        [event] = asyncio.run(start())[-1:]
        assert event["d"]["file"] == "spool.db.corrupt-20250101T000000"
        assert "numbered 1..159 in it were never sent" in event["d"]["detail"]
        assert any(
            r.levelname == "ERROR" and "never salvaged" in r.getMessage() for r in caplog.records
        )
    assert len(asyncio.run(start())) == 3  # one per start
