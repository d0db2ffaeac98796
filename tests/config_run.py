"""Runs a configuration the way the agent would, for a few simulated seconds, without sleeping.

What `check-config` admits must run: this is the "runs" half of the config property test
(tests/test_config_property.py, tests/config_soak.py). A document goes through the command
line's own `check-config` (exit 0, or 2 with one line on stderr); a valid one then runs as an
`Agent` on a `FakeClock`: the spool opened (birth, start event), every poll group polled on
its period, the control loop ticked on its period (its thread not started), bridge blocks fed
at their rate, frames closed and committed as the agent does, the stop's safe write and last
commit, and every stored payload decoded back with `edge_agent.telemetry.decode`.

The controller is `RegisterBank`, an in-process fake client, not hil's `SimulatedController`:
a generated register map names addresses and types the simulator does not serve (it answers
them with "illegal address"), and real pymodbus over loopback costs milliseconds per request,
hours for the soak's ten thousand documents. The bank answers any address with words drawn
from a seeded generator, biased to the extremes (0, 0x7FFF, 0x8000, 0xFFFF, float NaN and
infinity patterns), so every scale, offset and quantum meets its worst values; it reads back
what the actuator wrote, and now and then answers with an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import math
import random
import re
from pathlib import Path
from types import SimpleNamespace

from edge_agent import cli
from edge_agent.clock import FakeClock
from edge_agent.collector.service import CollectorService
from edge_agent.collector.store import SqliteStore
from edge_agent.config import (
    AgentConfig,
    CollectorConfig,
    ConfigError,
    load_collector_config,
    load_config,
)
from edge_agent.daemon import AgentService
from edge_agent.samples import Sample
from edge_agent.service import Agent
from edge_agent.telemetry.decode import decode_payload
from edge_agent.upstream import UpstreamError

#: Register words a hostile or unlucky controller sends: the ends of every integer type, and
#: the high words of float32 infinity and NaN.
EXTREME_WORDS = (0, 1, 0x7FFF, 0x8000, 0xFFFF, 0x7F80, 0xFF80, 0x7FC0)


class RegisterBank:
    """A controller that answers every read, with words from a seeded generator."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.holding: dict[int, int] = {}  # what was written, read back
        self.connected = False

    def client(self, _cfg) -> RegisterBank:
        return self

    async def connect(self) -> bool:
        self.connected = True
        return True

    def close(self) -> None:
        self.connected = False

    def _word(self) -> int:
        if self.rng.random() < 0.3:
            return self.rng.choice(EXTREME_WORDS)
        return self.rng.randrange(0x10000)

    def _reply(self, registers=(), bits=()):
        if self.rng.random() < 0.02:  # illegal address (a gap is split) or device busy
            code = self.rng.choice((2, 6))
            return SimpleNamespace(isError=lambda: True, exception_code=code)
        return SimpleNamespace(registers=list(registers), bits=list(bits), isError=lambda: False)

    async def read_holding_registers(self, address, count, device_id):
        words = [self.holding.get(address + i, self._word()) for i in range(count)]
        return self._reply(registers=words)

    async def read_input_registers(self, address, count, device_id):
        return self._reply(registers=[self._word() for _ in range(count)])

    async def _bits(self, address, count, device_id):
        return self._reply(bits=[self.rng.random() < 0.5 for _ in range(count)])

    read_coils = read_discrete_inputs = _bits

    async def write_registers(self, address, values, device_id):
        for i, word in enumerate(values):
            if not 0 <= word <= 0xFFFF:
                raise AssertionError(f"write of {word} to {address + i}: not a register word")
            self.holding[address + i] = word
        return SimpleNamespace(isError=lambda: False)


# -- a document's outcome: refused in one line, or it runs --------------------------------


def agent_outcome(data: bytes, workdir: Path, **run) -> str:
    """What the agent makes of the document `data`: "valid" (it ran), or "refused <key>"
    (one line on stderr, as `check-config` and `run` print it). Raises AssertionError for
    anything else, and whatever the running agent raised."""
    path = workdir / "agent.toml"
    path.write_bytes(data)
    status, err = check_config(path)
    if status == 2:
        return "refused " + refused_key(err.removeprefix("edge-agent: "), path)
    assert status == 0, f"check-config exited {status}: {err}"
    try:
        asyncio.run(run_config(load_config(path), workdir, **run))
    except UpstreamError as exc:  # `run` prints it as one line too: a secret it cannot use
        return "refused " + refused_key(str(exc), path, at_start=True)
    return "valid"


def collector_outcome(data: bytes, workdir: Path) -> str:
    """The same for a collector document: loaded (and its retention pass run once), or one
    line, as `collect run` prints it."""
    path = workdir / "collector.toml"
    path.write_bytes(data)
    try:
        cfg = load_collector_config(path)
    except ConfigError as exc:
        return "refused " + refused_key(str(exc), path)
    try:
        asyncio.run(prune_once(cfg, workdir))
    except UpstreamError as exc:
        return "refused " + refused_key(str(exc), path, at_start=True)
    return "valid"


_LOCATION = re.compile(r"^(?P<key>[^:]+?):(?: |$)")


def refused_key(message: str, path: Path, at_start: bool = False) -> str:
    """The key a one-line error names (array indexes and table names folded, so that the
    outcomes can be counted by key); fails unless it is one line."""
    assert message.count("\n") <= 1 and message.strip(), f"not one line: {message!r}"
    message = message.strip()
    if at_start:
        return "(when the agent is made) " + message.split(":")[0]
    assert message.startswith(str(path)), f"does not say where: {message!r}"
    rest = re.sub(r"^:\d+", "", message[len(str(path)) :]).removeprefix(": ")
    if rest.startswith(("invalid TOML", "not UTF-8", "cannot read")):
        return rest.split(":")[0].split(" (")[0]
    key = _LOCATION.match(rest)
    assert key, f"names no key: {message!r}"
    folded = re.sub(r"\[\d+\]", "[]", key["key"])
    return re.sub(r"^(poll_groups|channels)\.[^.]+", r"\1.*", folded)


async def prune_once(cfg: CollectorConfig, workdir: Path) -> None:
    """The collector made on `cfg` and its retention pass run once, on a store in workdir."""
    db = str(workdir / "collector.db")
    cfg = dataclasses.replace(cfg, collector=dataclasses.replace(cfg.collector, db=db))
    service = CollectorService(cfg)
    service.store = await service._in_store_thread(SqliteStore, db)
    try:
        service._pruned_at = -math.inf
        await service._prune_if_due()
    finally:
        await service._in_store_thread(service.store.close)
        service._executor.shutdown(wait=True)


def check_config(path: Path) -> tuple[int, str]:
    """`edge-agent check-config PATH`: (exit status, stderr). Anything but 0, or 2 with one
    line, is a failure of the caller's assertions."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(["check-config", str(path)])
    return status, err.getvalue()


def in_workdir(config: AgentConfig, workdir: Path) -> AgentConfig:
    """The same configuration with its files (spool, teach file, upstream file) in `workdir`."""
    return dataclasses.replace(
        config,
        spool=dataclasses.replace(config.spool, path=str(workdir / "spool.db")),
        control=dataclasses.replace(config.control, teach_file=str(workdir / "teach.json")),
        upstream=dataclasses.replace(config.upstream, file_path=str(workdir / "up.msgpack")),
    )


@dataclasses.dataclass
class RunReport:
    steps: int
    simulated_s: float
    payloads: int
    samples_decoded: int


async def run_config(
    config: AgentConfig,
    workdir: Path,
    *,
    seconds: float = 3.0,
    max_steps: int = 2000,
    seed: int = 0,
) -> RunReport:
    """Run `config` for `seconds` of simulated time or `max_steps` scheduled steps (polls,
    ticks, bridge blocks, frame closes), whichever ends first; raises whatever the agent
    raises. The stored payloads must all decode."""
    config = in_workdir(config, workdir)
    clock = FakeClock()
    bank = RegisterBank(seed)
    agent = Agent(config, clock=clock, connect={"controller": bank.client})
    await agent.open_spool()
    link = asyncio.create_task(agent.controller_source.link.maintain())
    try:
        await agent.controller_source.link.wait_connected(1.0)
        loop = asyncio.get_running_loop()
        if config.control.enabled:
            agent.control_host.make(loop)
        steps, elapsed_ns = await _drive(agent, clock, seconds, max_steps, random.Random(seed))
        agent.health_line(await agent.journal.spool.stats())
        service = AgentService("agent.toml", config, env={})
        service.agent = agent
        service.status_line()
        # The stop, as Agent.run's: the feed made safe, the open batch framed and committed.
        await agent.control_host.stop()
        await agent.journal.flush()
        await agent.journal.store_event("agent_stop", {"reason": "stop"})
        payloads, decoded = _decode_spool(agent)
    finally:
        link.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await link
        await agent.journal.spool.close()
    return RunReport(steps, elapsed_ns / 1e9, payloads, decoded)


async def _drive(agent: Agent, clock: FakeClock, seconds: float, max_steps: int, rng):
    """Every periodic part of the agent on one simulated timeline, earliest first."""
    config = agent.config
    start_ns = clock.monotonic_ns()
    end_ns = start_ns + round(seconds * 1e9)
    due: dict[tuple, int] = {("poll", name): start_ns for name in config.poll_groups}
    periods: dict[tuple, int] = {
        ("poll", name): _ns(group.period_s) for name, group in config.poll_groups.items()
    }
    if agent.control is not None:
        due[("control",)] = start_ns
        periods[("control",)] = _ns(config.control.period_s)
    if config.bridge is not None:
        bridge = config.bridge
        due[("bridge",)] = start_ns
        periods[("bridge",)] = _ns(bridge.block_samples / bridge.sample_hz)
    due[("frame",)] = start_ns + _ns(config.telemetry.frame_interval_s)
    periods[("frame",)] = _ns(config.telemetry.frame_interval_s)
    steps = 0
    while steps < max_steps:
        what = min(due, key=due.get)
        if due[what] > end_ns:
            break
        if due[what] > clock.monotonic_ns():
            clock.advance((due[what] - clock.monotonic_ns()) / 1e9)
        now = clock.monotonic_ns()
        if what[0] == "poll":
            await agent.controller_source.poller.poll_once(what[1])
        elif what[0] == "control":
            agent.control.tick(now)
        elif what[0] == "bridge":
            agent._on_samples(_bridge_block(config, clock.stamp_ns(), rng))
        if what[0] == "frame" or agent.journal._full.is_set():
            await agent.journal.flush()
        await asyncio.sleep(0)  # the writer's and the control events' callbacks
        due[what] = now + periods[what]
        steps += 1
    return steps, clock.monotonic_ns() - start_ns


def _ns(seconds: float) -> int:
    return max(1, round(seconds * 1e9))


def _bridge_block(config: AgentConfig, stamp_ns: int, rng: random.Random) -> list[Sample]:
    """One block of every bridge stream: raw samples and the block's features, from ADC
    counts at the extremes of a 12-bit converter and a 16-bit accelerometer."""
    bridge = config.bridge
    block_ns = round(bridge.block_samples / bridge.sample_hz * 1e9)
    samples = []
    for name, board, kind, period_s in bridge.streams():
        counts = [rng.choice((0, 4095, -32768, 32767, rng.randrange(-32768, 32768)))]
        if kind == "raw":
            n = bridge.block_samples
            counts = [rng.randrange(-32768, 32768) for _ in range(n)]
            stamps = [stamp_ns - block_ns + round((i + 1) * period_s * 1e9) for i in range(n)]
        else:
            stamps = [stamp_ns]
        samples += [
            Sample(name, t, c * board.scale + board.offset)
            for t, c in zip(stamps, counts, strict=False)
        ]
    return samples


def _decode_spool(agent: Agent) -> tuple[int, int]:
    """Every payload in the spool decoded with its boot's birth; (payloads, samples)."""
    tables: dict = {}
    payloads = samples = 0
    for row in agent.journal.spool.spool.frames():
        decoded = decode_payload(row.body, tables)
        payloads += 1
        if decoded["kind"] == "data":
            samples += sum(len(c["v"]) for c in decoded["channels"].values())
    return payloads, samples
