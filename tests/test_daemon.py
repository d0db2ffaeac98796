"""The service around the agent, in this process: the watchdog's judgement (sans-IO), then the
real thing against the simulated controller with a real notify socket: READY, WATCHDOG only
while the control loop progresses, SIGHUP reloads (good, bad, unchanged, a moved spool), the
metrics endpoint and `edge-agent status`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time

import pytest

from edge_agent.config import load_config
from edge_agent.daemon import AgentService, Watchdog
from edge_agent.status import report
from edge_agent.telemetry import wire
from edge_agent.telemetry.spool import Spool
from hil.controller import SimulatedController
from hil.plant import demo_plant
from tests.mosquitto import _free_ports
from tests.service_helpers import demo_toml

# -- the watchdog's judgement -----------------------------------------------------------------


def test_a_part_whose_counter_did_not_move_is_stalled():
    watchdog = Watchdog()
    assert watchdog.stalled({"control loop": 10, "poller": 5}) == []  # first look
    assert watchdog.stalled({"control loop": 20, "poller": 6}) == []
    assert watchdog.stalled({"control loop": 20, "poller": 7}) == ["control loop"]
    assert watchdog.stalled({"control loop": 20, "poller": 7}) == ["control loop", "poller"]
    assert watchdog.stalled({"control loop": 21, "poller": 8}) == []


def test_a_part_not_running_is_not_judged():
    watchdog = Watchdog()
    watchdog.stalled({"control loop": 5, "poller": None})
    assert watchdog.stalled({"control loop": None, "poller": None}) == []  # stopping
    assert watchdog.stalled({"control loop": 5, "poller": 0}) == []  # a new agent
    assert watchdog.stalled({"control loop": 5, "poller": 0}) == ["control loop", "poller"]


# -- the service in this process -------------------------------------------------------------


class Notifications:
    """The test's end of NOTIFY_SOCKET: every datagram with its arrival time."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.received: list[tuple[float, str]] = []

    def poll(self) -> list[str]:
        with contextlib.suppress(BlockingIOError):
            while True:
                self.received.append((time.monotonic(), self.sock.recv(4096).decode()))
        return [text for _, text in self.received]

    def mark(self) -> float:
        """Now, with what arrived before now taken in (stamps are taken as datagrams are
        read)."""
        self.poll()
        return time.monotonic()

    def since(self, t: float, field: str) -> int:
        self.poll()
        return sum(1 for at, text in self.received if at >= t and field in text.split("\n"))

    async def wait_for(self, field: str, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(field in text.split("\n") for text in self.poll()):
            assert time.monotonic() < deadline, f"no {field} in {self.poll()}"
            await asyncio.sleep(0.02)


class Running:
    """An AgentService on this loop against a simulated controller; config in a file."""

    def __init__(self, tmp_path, *, extra: str = ""):
        self.tmp = tmp_path
        self.spool = tmp_path / "spool.db"
        self.extra = extra
        self.notify = Notifications(str(tmp_path / "notify"))

    async def __aenter__(self):
        self.controller = SimulatedController(demo_plant())
        self.port = await self.controller.start_tcp("127.0.0.1", 0)
        self.path = self.tmp / "agent.toml"
        self.write()
        env = {"NOTIFY_SOCKET": str(self.tmp / "notify"), "WATCHDOG_USEC": "400000"}
        self.service = AgentService(str(self.path), load_config(self.path), env=env)
        asyncio.get_running_loop().add_reader(self.notify.sock, self.notify.poll)
        self.task = asyncio.create_task(self.service.run())
        await self.notify.wait_for("READY=1")
        return self

    def write(self, frame_interval_s: float = 1.0, extra: str | None = None) -> None:
        text = demo_toml(
            self.port,
            self.spool,
            keep=True,
            frame_interval_s=frame_interval_s,
            extra=self.extra if extra is None else extra,
        )
        self.path.write_text(text)

    async def __aexit__(self, *exc):
        self.service.stop()
        await asyncio.wait_for(self.task, 20)
        await self.controller.stop()
        asyncio.get_running_loop().remove_reader(self.notify.sock)
        self.notify.sock.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 50))


def test_watchdog_pings_only_while_the_control_loop_progresses(tmp_path, caplog):
    async def scenario():
        async with Running(tmp_path) as r:
            agent = r.service.agent
            t0 = r.notify.mark()
            await asyncio.sleep(1.0)
            assert r.notify.since(t0, "WATCHDOG=1") >= 3  # every 0.2 s while healthy
            release = threading.Event()
            stalled_at = []

            def hung_tick(now_ns: int) -> None:  # a tick that never returns: a hung thread
                stalled_at.append(time.monotonic())
                release.wait(20)

            agent.control.tick = hung_tick
            while not stalled_at:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # one look may still see the last ticks move
            t1 = r.notify.mark()
            await asyncio.sleep(1.2)
            assert r.notify.since(t1, "WATCHDOG=1") == 0
            # the poller went on; the loop not
            assert agent.controller_source.poller.counters["requests"] > 0
            release.set()
            del agent.control.tick  # the loop's own tick again
            t2 = r.notify.mark()
            await asyncio.sleep(1.0)
            assert r.notify.since(t2, "WATCHDOG=1") >= 2

    with caplog.at_level(logging.ERROR, logger="edge_agent.daemon"):
        run(scenario())
    assert any("no progress in the control loop" in r.message for r in caplog.records)


def _spooled(path) -> list[dict]:
    spool = Spool(path, readonly=True)
    try:
        return [wire.decode(stored.body) for stored in spool.frames()]
    finally:
        spool.close()


def test_sighup_applies_a_changed_config_as_a_new_boot_and_keeps_every_payload(tmp_path):
    async def scenario():
        async with Running(tmp_path) as r:
            first = r.service.agent
            await asyncio.sleep(1.5)
            r.write(frame_interval_s=0.5)
            t0 = r.notify.mark()
            os.kill(os.getpid(), signal.SIGHUP)
            while r.service.agent is first or not r.service.agent.up.is_set():
                assert time.monotonic() - t0 < 15, "the new configuration did not start"
                await asyncio.sleep(0.02)
            assert r.service.config.telemetry.frame_interval_s == 0.5
            while r.notify.since(t0, "READY=1") < 1:  # up again, on the new configuration
                assert time.monotonic() - t0 < 15, "no READY=1 from the new agent"
                await asyncio.sleep(0.02)
            while r.service.agent.journal.points_stored == 0:  # a data frame of the new boot
                assert time.monotonic() - t0 < 20, "the new agent made no data frame"
                await asyncio.sleep(0.05)
            return first.boot, r.service.agent.boot, r.service.reloads

    old_boot, new_boot, reloads = run(scenario())
    assert old_boot != new_boot and reloads["applied"] == 1
    frames = _spooled(tmp_path / "spool.db")
    assert [f["s"] for f in frames] == list(range(1, len(frames) + 1))  # none lost, in order
    old = [f for f in frames if f["b"] == old_boot]
    new = [f for f in frames if f["b"] == new_boot]
    assert old and new and old[-1]["s"] < new[0]["s"]
    assert old[-1]["k"] == "event" and old[-1]["e"] == "agent_stop"
    assert old[-1]["d"] == {"reason": "reload"}
    assert new[0]["k"] == "birth" and any(f["k"] == "data" for f in new)


def test_sighup_with_a_bad_or_moved_config_keeps_the_running_agent(tmp_path, caplog):
    async def scenario():
        async with Running(tmp_path) as r:
            agent = r.service.agent
            r.write(frame_interval_s=-1)
            assert not await r.service.reload()
            r.write(extra="\n[bogus]\nx = 1\n")
            os.kill(os.getpid(), signal.SIGHUP)
            while r.service.reloads["refused"] < 2:
                await asyncio.sleep(0.02)
            r.write()
            r.path.write_text(r.path.read_text().replace(str(r.spool), str(r.tmp / "other.db")))
            assert not await r.service.reload()
            r.write()
            mqtt = '[upstream]\nkind = "mqtt"\nhost = "127.0.0.1"\ntls = true\n'
            r.path.write_text(
                r.path.read_text().replace(
                    '[upstream]\nkind = "none"', mqtt + 'ca_file = "/nonexistent/ca.pem"'
                )
            )
            assert not await r.service.reload()  # found only when the agent is made
            r.write()  # back to what runs
            assert not await r.service.reload()
            ticks = agent.control.ticks
            await asyncio.sleep(0.3)
            assert r.service.agent is agent and agent.control.ticks > ticks
            return dict(r.service.reloads)

    with caplog.at_level(logging.ERROR, logger="edge_agent.daemon"):
        reloads = run(scenario())
    assert reloads == {"applied": 0, "refused": 4, "unchanged": 1}
    refusals = [r.message for r in caplog.records if "reload refused" in r.message]
    assert len(refusals) == 4 and all("\n" not in m for m in refusals)
    assert "telemetry.frame_interval_s: must be a number in 0.1..600, got -1.0" in refusals[0]
    assert "bogus: unknown key" in refusals[1]
    assert "[spool] path changed" in refusals[2]
    assert "upstream TLS files: [Errno 2] No such file or directory" in refusals[3]


def test_a_reload_of_a_file_that_is_not_utf8_is_refused_and_counted(tmp_path, caplog):
    path = tmp_path / "agent.toml"
    path.write_text(demo_toml(5020, tmp_path / "spool.db", keep=True))
    service = AgentService(str(path), load_config(path), env={})
    text = path.read_bytes()
    path.write_bytes(text.replace(b"demo-shop", b"demo-\xffshop"))
    offset = text.index(b"demo-shop") + len(b"demo-")

    async def sighup() -> None:
        service._on_sighup()  # what SIGHUP runs: the reload as a background task
        await asyncio.gather(*service._background)

    with caplog.at_level(logging.ERROR, logger="edge_agent.daemon"):
        run(sighup())
    assert service.reloads == {"applied": 0, "refused": 1, "unchanged": 0}
    [refusal] = [r.getMessage() for r in caplog.records]
    assert refusal.endswith(
        f"{path}:7: not UTF-8 text (byte 0xff at offset {offset}); TOML files are UTF-8"
    )


def test_a_reload_whose_loading_raises_anything_is_refused_in_one_line(tmp_path, caplog):
    path = tmp_path / "agent.toml"
    path.write_text(demo_toml(5020, tmp_path / "spool.db", keep=True))

    def broken(_path):
        raise RuntimeError("a bug in loading\nwith a second line")

    service = AgentService(str(path), load_config(path), env={}, load=broken)
    with caplog.at_level(logging.ERROR, logger="edge_agent.daemon"):
        assert run(service.reload()) is False
    assert service.reloads["refused"] == 1
    [refusal] = [r.getMessage() for r in caplog.records]
    assert refusal.endswith(f"{path}: RuntimeError: a bug in loading")


def test_metrics_endpoint_and_status_summary(tmp_path):
    (port,) = _free_ports(1)

    async def scenario():
        extra = f'\n[service]\nmetrics_listen = "127.0.0.1:{port}"\n'
        async with Running(tmp_path, extra=extra) as r:
            await asyncio.sleep(1.5)
            lines, status = await asyncio.to_thread(report, r.service.config)
            from edge_agent.status import Scrape, fetch

            scrape = Scrape(await asyncio.to_thread(fetch, f"127.0.0.1:{port}"))
            return lines, status, scrape, r.service.agent

    lines, status, scrape, agent = run(scenario())
    assert status == 0
    assert scrape.get("edge_agent_ready") == 1
    assert scrape.get("edge_agent_source_up", source="controller") == 1
    assert scrape.get("edge_agent_source_state", source="controller", state="up") == 1
    assert scrape.get("edge_agent_control_ticks_total") > 50
    assert scrape.get("edge_agent_control_period_seconds") == 0.01
    assert scrape.get("edge_agent_source_work_total", source="controller", kind="requests") > 10
    assert scrape.get("edge_agent_source_samples_total", source="controller") > 100
    assert scrape.get("edge_agent_spool_payloads") >= 1  # kept: no upstream
    assert scrape.get("edge_agent_info", boot=agent.boot_id) == 1
    assert scrape.get("process_resident_memory_bytes") > 1e6
    latency = {"source": "controller", "group": "fast", "quantile": "0.99"}
    assert scrape.get("edge_agent_source_cycle_seconds", **latency) > 0
    assert lines[0].startswith("edge-agent ") and lines[0].endswith(": ready")
    assert lines[1].startswith("  controller  up; 0 connections lost; ")
    assert "; p99 fast " in lines[1]
    assert any(line.strip().startswith("control ") for line in lines)
    assert lines[-1].startswith(f"spool {tmp_path / 'spool.db'}: ")


def test_status_of_a_stopped_agent_still_reports_its_spool(tmp_path):
    (port,) = _free_ports(1)
    path = tmp_path / "agent.toml"
    extra = f'\n[service]\nmetrics_listen = "127.0.0.1:{port}"\n'
    path.write_text(demo_toml(5020, tmp_path / "spool.db", extra=extra))
    lines, status = report(load_config(path))
    assert status == 3
    assert lines[0].startswith(f"agent: not answering on 127.0.0.1:{port}")
    assert lines[1] == f"spool: {tmp_path / 'spool.db'}: no such spool file"


@pytest.fixture(autouse=True)
def _no_stray_signal_handlers():
    yield
    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        assert signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler)


def test_sighup_to_a_config_whose_override_is_a_bitfield_keeps_the_running_agent(tmp_path, caplog):
    """Refused by the configuration or, before that, by the agent as it is made: one line,
    and the running agent carries on."""

    async def scenario():
        async with Running(tmp_path) as r:
            agent = r.service.agent
            r.write()
            whole = (
                'name = "agent_feed_override"\naddress = 100\ntable = "holding"\ntype = "uint16"'
            )
            bits = whole.replace('type = "uint16"', 'type = "bitfield"\nbit = 0\nwidth = 8')
            text = r.path.read_text()
            assert whole in text
            r.path.write_text(text.replace(whole, bits))
            assert not await r.service.reload()
            assert r.service.agent is agent
            return dict(r.service.reloads)

    with caplog.at_level(logging.ERROR, logger="edge_agent.daemon"):
        reloads = run(scenario())
    assert reloads["refused"] == 1 and reloads["applied"] == 0
    refusals = [r.message for r in caplog.records if "reload refused" in r.message]
    assert len(refusals) == 1 and "\n" not in refusals[0] and "bitfield" in refusals[0]
