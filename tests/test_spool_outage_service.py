"""The agent as a service when its spool cannot be written. While it runs (a full disk): the
control loop keeps ticking, telemetry is held in memory and the oldest frames dropped beyond
the bound, and once the spool takes payloads again they are stored with numbers that
continue and an event says what was lost. At the start (a lock another process holds, a full
disk): `edge-agent run` exits with one line and status 2, and the spool is left as it was."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import textwrap

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import edge_agent.telemetry.spool as spooling
from edge_agent.metrics import AgentCollector
from edge_agent.status import Scrape, _agent_lines
from edge_agent.telemetry import journal, wire
from edge_agent.telemetry.spool import Spool
from tests.service_helpers import demo_toml
from tests.small_disk import run_on_small_disk
from tests.test_daemon import Running
from tests.test_spool_faults import contents, locked_by_another_process, moved_aside, spool_with

NO_METRICS = '[service]\nmetrics_listen = ""\n'


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 50))


class FastFrames(Running):
    """The agent in this process with a frame every 0.1 s (committed once a second)."""

    def write(self, frame_interval_s: float = 0.1, extra: str | None = None) -> None:
        super().write(frame_interval_s, extra)


@pytest.mark.timeout(60)
def test_the_agent_and_its_control_loop_run_through_a_full_disk_then_store_what_was_held(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(journal, "HELD_RETRY_MIN_S", 0.05)
    monkeypatch.setattr(journal, "HELD_RETRY_MAX_S", 0.2)
    monkeypatch.setattr(journal, "HELD_MAX_BYTES", 6000)

    async def scenario():
        async with FastFrames(tmp_path, extra=NO_METRICS) as r:
            agent = r.service.agent
            spool = agent.journal.spool.spool
            pages = await agent.journal.spool._run(spool.pragma, "page_count")
            await agent.journal.spool._run(spool.pragma, f"max_page_count = {pages}")
            # An event larger than a page needs new pages at once: the spool refuses it.
            await agent.journal.store_event("operator_note", {"text": "x" * 5000})
            assert agent.journal.spool_trouble is not None
            ticks = agent.control.ticks
            for _ in range(40):  # two seconds of a full disk
                await asyncio.sleep(0.05)
                assert not r.task.done(), "the agent stopped on a full disk"
            assert agent.control.ticks > ticks + 50  # 100 Hz: the loop never noticed
            assert agent.journal.store_failures["disk_full"] >= 3  # retried with backoff
            assert (
                agent.journal.held.dropped_total["data"] > 0
            )  # beyond the bound, the oldest frames
            loop = asyncio.get_running_loop()
            status = await asyncio.to_thread(status_lines, r.service, loop)
            assert any(line.startswith("  spool       NOT TAKING PAYLOADS: ") for line in status)
            assert any("payloads never stored" in line for line in status)
            await agent.journal.spool._run(spool.pragma, "max_page_count = 1073741823")
            for _ in range(100):
                if agent.journal.spool_trouble is None:
                    break
                await asyncio.sleep(0.05)
            assert agent.journal.spool_trouble is None
            assert agent.control.ticks > ticks + 100
        return dict(agent.journal.held.dropped_total)

    dropped = run(scenario())
    assert dropped.get("data", 0) > 0 and not dropped.get("event")  # events kept
    spool = Spool(tmp_path / "spool.db", readonly=True)
    rows = [(row.seq, wire.decode(row.body)) for row in spool.frames()]
    assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1))  # nothing skipped
    assert all(frame["s"] == seq for seq, frame in rows)
    events = [frame["e"] for _, frame in rows if "e" in frame]
    assert events.index("operator_note") < events.index("spool_outage")  # held, then stored
    outage = [frame["d"] for _, frame in rows if frame.get("e") == "spool_outage"]
    assert len(outage) == 1
    assert outage[0]["reason"] == "disk_full"
    assert outage[0]["dropped_frames"] == dropped["data"] > 0
    assert outage[0]["dropped_from_us"] <= outage[0]["dropped_to_us"]
    assert events[-1] == "agent_stop"
    assert moved_aside(tmp_path) == []


def damage_under_it(spool) -> None:
    """Overwrite the frames' pages in the file under the open connection, then make it read
    them again (its page cache dropped): a card that went bad while the agent ran."""
    spool.pragma("wal_checkpoint(TRUNCATE)")
    with open(spool.path, "r+b") as f:
        f.seek(4096)
        f.write(b"\xa5" * 4096 * 3)
    spool.pragma("shrink_memory")


@pytest.mark.timeout(60)
def test_damage_found_while_running_stops_the_agent_safely_and_the_restart_salvages(tmp_path):
    async def scenario():
        r = FastFrames(tmp_path, extra=NO_METRICS)
        await r.__aenter__()
        agent = r.service.agent
        await agent.journal.spool._run(damage_under_it, agent.journal.spool.spool)
        try:
            await asyncio.wait_for(asyncio.shield(r.task), 10)
        except spooling.SpoolCorrupt as exc:
            stopped_with = exc
        else:
            raise AssertionError("the agent ran on with a damaged spool")
        finally:
            await r.controller.stop()
            asyncio.get_running_loop().remove_reader(r.notify.sock)
            r.notify.sock.close()
        assert not agent.control.running
        return stopped_with

    error = run(scenario())
    assert str(error).startswith(f"{tmp_path / 'spool.db'}: damaged: ")
    restarted = Spool(tmp_path / "spool.db")  # what systemd's restart does first
    assert restarted.recovered and [leftover.salvaged for leftover in restarted.leftovers()] == [
        True
    ]


def status_lines(agent_service, loop) -> list[str]:
    """`edge-agent status`'s lines about the running agent, from a scrape of its metrics (in
    a thread other than the agent's loop, as the endpoint serves them)."""
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent_service, loop))
    return _agent_lines(Scrape(generate_latest(registry).decode()))


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)
def test_run_on_a_spool_locked_by_another_process_exits_with_one_line_and_moves_nothing(tmp_path):
    path = tmp_path / "spool.db"
    rows = spool_with(path, 30)
    config = tmp_path / "agent.toml"
    config.write_text(demo_toml(dead_port(), path, keep=True, extra=NO_METRICS))
    with locked_by_another_process(path, "IMMEDIATE"):
        agent = subprocess.run(
            [sys.executable, "-m", "edge_agent", "run", str(config)],
            capture_output=True,
            text=True,
            timeout=40,
        )
    assert agent.returncode == 2, agent.stderr
    assert "Traceback" not in agent.stderr
    last = agent.stderr.strip().splitlines()[-1]
    assert last.startswith(f"edge-agent: {path}: locked by another process for more than 5 s")
    assert moved_aside(tmp_path) == []
    assert contents(Spool(path)) == rows


RUN_ON_A_FULL_DISK = """
import json
from edge_agent.telemetry.spool import Spool
path = os.path.join(SMALL_DISK, "spool.db")
spool = Spool(path)
spool.store([("data", b"A" * 8, b"payload %d" % i) for i in range(159)])
spool.close()
with open(os.path.join(SMALL_DISK, "agent.toml"), "w") as f:
    f.write(sys.argv[3])
fill()
runs = []
for attempt in range(2):  # the start, and systemd's restart
    agent = subprocess.run(
        [sys.executable, "-m", "edge_agent", "run", os.path.join(SMALL_DISK, "agent.toml")],
        capture_output=True, text=True, timeout=30,
    )
    runs.append([agent.returncode, agent.stderr, sorted(os.listdir(SMALL_DISK))])
free()
spool = Spool(path)
print(json.dumps({"runs": runs, "bodies": [r.body.decode() for r in spool.frames()],
                  "next": spool.store([("data", None, b"more")])}))
"""


@pytest.mark.timeout(90)
def test_run_on_a_full_disk_exits_with_one_line_twice_and_orphans_nothing(tmp_path):
    """The issue's case: a traceback, then a restart that moved the spool aside."""
    spool = tmp_path / "small-disk" / "spool.db"
    config = demo_toml(dead_port(), spool, keep=True, extra=NO_METRICS)
    script = RUN_ON_A_FULL_DISK.replace("sys.argv[3]", repr(config))
    child = run_on_small_disk(tmp_path, textwrap.dedent(script), timeout_s=80)
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    for returncode, stderr, files in result["runs"]:
        assert returncode == 2 and "Traceback" not in stderr, stderr
        assert stderr.strip().splitlines()[-1].startswith(f"edge-agent: {spool}: disk full (")
        assert not [name for name in files if ".corrupt-" in name]
    assert result["bodies"] == [f"payload {i}" for i in range(159)]
    assert result["next"] == [160]
