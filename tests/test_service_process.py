"""`edge-agent run` as systemd runs it: its own process, a real NOTIFY_SOCKET and watchdog
period, signals from outside. The simulated controller runs in the test (so the test sees
every register write) and, for the stop's order, a real Mosquitto takes the telemetry."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

from edge_agent.telemetry import wire
from edge_agent.telemetry.spool import Spool
from hil.controller import SimulatedController
from hil.plant import demo_plant
from hil.register_map import AGENT_OVERRIDE
from tests.service_helpers import demo_toml
from tests.test_daemon import Notifications
from tests.upstream_helpers import Subscriber


class Agent:
    """The agent's process, its notifications and its log."""

    def __init__(self, tmp_path, text: str):
        self.tmp = tmp_path
        self.config = tmp_path / "agent.toml"
        self.config.write_text(text)
        self.log = tmp_path / "agent.log"
        self.notify = Notifications(str(tmp_path / "notify"))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.notify.sock, self.notify.poll)
        env = dict(os.environ, NOTIFY_SOCKET=str(self.tmp / "notify"), WATCHDOG_USEC="1000000")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge_agent",
            "run",
            str(self.config),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=open(self.log, "wb"),  # noqa: SIM115 (the child holds it)
        )

    async def wait_for_log(self, text: str, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log.read_text():
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.log.read_text()}"
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.notify.sock)
        self.notify.sock.close()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 55))


def test_ready_watchdog_reloads_and_stopping_over_the_notify_socket(tmp_path):
    async def scenario():
        controller = SimulatedController(demo_plant())
        port = await controller.start_tcp("127.0.0.1", 0)
        text = demo_toml(port, tmp_path / "spool.db")
        agent = Agent(tmp_path, text)
        await agent.start()
        try:
            await agent.notify.wait_for("READY=1")
            t0 = agent.notify.mark()
            await asyncio.sleep(1.6)
            assert agent.notify.since(t0, "WATCHDOG=1") >= 2  # every 0.5 s

            agent.config.write_text(text.replace("frame_interval_s = 1.0", "frame_interval_s = -1"))
            agent.process.send_signal(signal.SIGHUP)
            await agent.wait_for_log("reload refused, the running configuration stays")
            t1 = agent.notify.mark()
            await asyncio.sleep(1.2)
            assert agent.notify.since(t1, "WATCHDOG=1") >= 2  # the old one runs on

            agent.config.write_text(
                text.replace("frame_interval_s = 1.0", "frame_interval_s = 0.5")
            )
            t2 = agent.notify.mark()
            agent.process.send_signal(signal.SIGHUP)
            await agent.wait_for_log("applied: starting again with it")
            while agent.notify.since(t2, "READY=1") < 1:  # the new agent is up
                await asyncio.sleep(0.02)
            assert agent.notify.since(t2, "RELOADING=1") == 1

            t3 = agent.notify.mark()
            agent.process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(agent.process.wait(), 20) == 0
            assert agent.notify.since(t3, "STOPPING=1") == 1
        finally:
            await agent.close()
            await controller.stop()
        return agent.log.read_text()

    log = run(scenario())
    assert "Traceback" not in log


def test_sigterm_makes_the_feed_safe_then_spools_then_publishes_the_death(tmp_path, broker):
    async def scenario():
        plant = demo_plant()
        controller = SimulatedController(plant)
        writes: list[tuple[float, float]] = []
        write = plant.write

        def recording_write(name: str, value: float) -> None:
            if name == AGENT_OVERRIDE:
                writes.append((time.monotonic(), value))
            write(name, value)

        plant.write = recording_write
        port = await controller.start_tcp("127.0.0.1", 0)
        subscriber = Subscriber(broker.host, broker.port)
        arrivals: dict[str, float] = {}
        on_message = subscriber.client.on_message

        def stamped(client, userdata, message):
            arrivals.setdefault(message.topic.rsplit("/", 1)[1], time.monotonic())
            on_message(client, userdata, message)

        subscriber.client.on_message = stamped
        # A plain subscriber, no collector to acknowledge: the broker's PUBACK confirms.
        config = demo_toml(port, tmp_path / "spool.db", broker=broker, delivery="broker")
        agent = Agent(tmp_path, config)
        await agent.start()
        try:
            await agent.notify.wait_for("READY=1")
            # Air moves: the loop boosts the feed over the safe 100 %.
            deadline = time.monotonic() + 20
            while not writes or writes[-1][1] <= 120:
                assert time.monotonic() < deadline, f"no boost; writes {writes[-5:]}"
                await asyncio.sleep(0.01)
            term_at = time.monotonic()
            agent.process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(agent.process.wait(), 20) == 0
            await subscriber.wait_for(lambda s: "death" in arrivals)
        finally:
            await agent.close()
            await controller.stop()
            subscriber.close()
        return term_at, writes, arrivals, subscriber

    term_at, writes, arrivals, subscriber = run(scenario())
    after = [(t, v) for t, v in writes if t >= term_at]
    safe = next(i for i, (_, v) in enumerate(after) if v <= 100.0)
    assert safe <= 1  # min(current, safe), after at most the one write already on the wire
    assert after[safe][1] == 100.0 and max(v for _, v in after[safe:]) <= 100.0
    assert after[safe][0] < arrivals["death"]  # the feed was safe before the death went out
    # Spool intact: every number is either delivered or still in the spool, once; the stop
    # event (written after the last batch) was among them.
    spool = Spool(tmp_path / "spool.db", readonly=True)
    try:
        kept = {stored.seq: wire.decode(stored.body) for stored in spool.frames()}
        last = spool.last_seq()
    finally:
        spool.close()
    delivered = {
        (frame := wire.decode(payload))["s"]: frame
        for topic, payload, _ in subscriber.messages
        if not topic.endswith("/death")
    }
    assert set(delivered) | set(kept) == set(range(1, last + 1))
    frames = {**delivered, **kept}
    assert frames[last]["k"] == "event" and frames[last]["e"] == "agent_stop"
    assert frames[last - 1]["k"] == "data"  # the open batch, spooled at the stop
