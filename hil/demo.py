"""`python -m hil demo` (`make demo`): the simulated controller and the agent on loopback, for
a bounded time, then a short human summary. Needs no broker, no hardware and no configuration
file. Part of the bench, not of the agent: the agent's install on a device carries no simulated
machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import sys
import time
from importlib import resources
from pathlib import Path

from edge_agent.config import parse_config
from edge_agent.service import Agent
from edge_agent.sources.modbus import default_quantum
from edge_agent.sources.opcua_config import OpcUaConfig, OpcUaGroup, OpcUaNode
from hil.controller import SimulatedController
from hil.opcua_server import OpcUaController
from hil.opcua_space import MACHINE, NAMESPACE_URI, VARIABLES
from hil.plant import demo_plant
from hil.ptypair import PtyPair
from hil.replay import ReplayPlant, recording_path


def demo_config(
    host: str = "127.0.0.1",
    port: int = 5020,
    spool: str = "demo-spool.db",
    serial_port: str | None = None,
    telemetry: str | None = None,
):
    """The embedded demo configuration, pointed at a controller, a spool and the file the
    telemetry goes to (by default `demo-telemetry.msgpack` beside the spool)."""
    telemetry = telemetry or str(Path(spool).with_name("demo-telemetry.msgpack"))
    text = resources.files("edge_agent.defaults").joinpath("demo.toml").read_text()
    config = parse_config(text, "edge_agent/defaults/demo.toml")
    controller = dataclasses.replace(config.controller, host=host, port=port)
    if serial_port:
        controller = dataclasses.replace(
            controller, protocol="rtu", serial_port=serial_port, baudrate=115200
        )
    return dataclasses.replace(
        config,
        controller=controller,
        spool=dataclasses.replace(config.spool, path=spool),
        upstream=dataclasses.replace(config.upstream, file_path=telemetry),
    )


#: The OPC UA type names of [[opcua.nodes]] `type`, by the bench's variant types.
_NODE_TYPES = {"Double": "double", "Boolean": "boolean", "UInt32": "uint32", "Int32": "int32"}


def opcua_demo_config(url: str, spool: str = "demo-spool.db", telemetry: str | None = None):
    """The demo's configuration reading the bench's OPC UA server (`hil/opcua_server.py`)
    instead of Modbus: the same channels (names, units, quanta, time groups and periods),
    each a node of `hil/opcua_space.py` by its browse path, the agent's override the one
    node marked writable."""
    config = demo_config(spool=spool, telemetry=telemetry)
    tags = {t.name: t for t in config.tags}
    groups = {
        name: OpcUaGroup(name, group.period_s, group.stale_after_s)
        for name, group in config.poll_groups.items()
    }
    nodes = tuple(
        OpcUaNode(
            var.tag,
            browse_path=f"Objects/Machines/{MACHINE}/{var.path}",
            unit=tags[var.tag].unit,
            quantum=default_quantum(tags[var.tag]),
            group=tags[var.tag].poll_group,
            writable=var.writable,
            type=_NODE_TYPES.get(var.type.name, "string"),
        )
        for var in VARIABLES
        if var.tag in tags
    )
    opcua = OpcUaConfig(
        url,
        namespace=NAMESPACE_URI,
        timeout_s=config.controller.timeout_s,
        groups=groups,
        nodes=nodes,
    )
    return dataclasses.replace(config, tags=(), poll_groups={}, opcua=opcua)


def _plant(replay: str | None):
    if replay is None:
        return demo_plant(), "cutting plant, demo part"
    path = recording_path(replay)
    return ReplayPlant(path, loop=True), f"replay of {path.name}"


async def run_demo(
    duration_s: float,
    *,
    replay: str | None = None,
    rtu: bool = False,
    opcua: bool = False,
    spool: str | None = None,
    telemetry: str | None = None,
    out=sys.stdout,
    progress=sys.stderr,
) -> Agent:
    plant, what = _plant(replay)
    controller = OpcUaController(plant) if opcua else SimulatedController(plant)
    spool = spool or "demo-spool.db"
    telemetry = telemetry or str(Path(spool).with_name("demo-telemetry.msgpack"))
    with contextlib.ExitStack() as stack:
        if opcua:
            await controller.start("127.0.0.1", 0)
            config = opcua_demo_config(controller.url, spool=spool, telemetry=telemetry)
            where = f"OPC UA at {controller.url}"
        elif rtu:
            pair = stack.enter_context(PtyPair())
            await controller.start_rtu(pair.a, baudrate=115200)
            config = demo_config(spool=spool, serial_port=pair.b, telemetry=telemetry)
            where = f"Modbus RTU on {pair.b}"
        else:
            port = await controller.start_tcp("127.0.0.1", 0)
            config = demo_config(port=port, spool=spool, telemetry=telemetry)
            where = f"Modbus TCP on 127.0.0.1:{port}"
        print(
            f"demo: simulated controller ({what}) on {where}; running {duration_s:g} s",
            file=out,
            flush=True,
        )
        agent = Agent(config)
        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))
        started = time.monotonic()
        try:
            await _show_progress(agent, run, started, duration_s, progress)
        finally:
            stop.set()
            await run
            await controller.stop()
        elapsed = time.monotonic() - started
        print(summary(agent, elapsed, spool, telemetry), file=out, flush=True)
    return agent


async def _show_progress(
    agent: Agent, run: asyncio.Task, started: float, duration_s: float, stream
) -> None:
    """A one-line progress bar on a terminal; a line every 10 s otherwise."""
    tty = stream.isatty()
    last_line = 0.0
    while (elapsed := time.monotonic() - started) < duration_s and not run.done():
        await asyncio.sleep(min(0.5, max(0.0, duration_s - elapsed)))
        elapsed = min(duration_s, time.monotonic() - started)
        filled = int(30 * elapsed / duration_s)
        line = (
            f"[{'#' * filled}{'.' * (30 - filled)}] {elapsed:4.0f}/{duration_s:g} s  "
            f"samples {sum(s.samples for s in agent.source_stats())}  "
            f"frames {agent.journal.frames_stored}"
        )
        if tty:
            stream.write("\r" + line)
            stream.flush()
        elif elapsed - last_line >= 10 or elapsed >= duration_s:
            print(line, file=stream, flush=True)
            last_line = elapsed
    if tty:
        stream.write("\n")
    if run.done():
        run.result()


def summary(agent: Agent, elapsed_s: float, spool: str, telemetry: str) -> str:
    sources = agent.source_stats()
    lines = [f"ran {elapsed_s:.1f} s against " + ", ".join(f"{s.where}" for s in sources)]
    for s in sources:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(s.faults.items()) if v) or "none"
        work = "".join(f", {v} {k}" for k, v in s.counts.items())
        lines.append(
            f"  {s.name:<18} {s.samples} samples ({s.samples / elapsed_s:.0f}/s){work}, "
            f"{s.disconnects} connections lost; faults: {faults}"
        )
        for name, group in s.groups.items():
            p50, p99, _ = (v * 1e3 for v in group.latency_s)
            lines.append(
                f"    group {name:<12} {group.cycles} cycles, latency p50 {p50:.2f} ms "
                f"p99 {p99:.2f} ms, {group.overruns} overruns"
            )
    if agent.control is not None:
        lines += control_summary(agent)
    journal, acked = agent.journal, agent.publisher.counters["acked"]
    lines += [
        f"  frames stored      {journal.frames_stored} ({journal.bytes_stored} bytes, "
        f"last seq {journal.last_seq}) in {spool}",
        f"  bytes per point    {journal.bytes_stored / max(1, journal.points_stored):.2f} "
        f"({journal.points_stored} points)",
        f"  published          {acked} payloads to {telemetry}, "
        f"{journal.frames_stored - acked} left in the spool",
        f"  see the frames:    edge-agent decode {telemetry}",
    ]
    return "\n".join(lines)


def control_summary(agent: Agent) -> list[str]:
    loop, cfg = agent.control, agent.config.control
    actuator = loop.actuator
    written = actuator.value.get(cfg.override_tag)
    events = ", ".join(f"{k} {v}" for k, v in sorted(agent.control_host.events.items())) or "none"
    override = "-" if written is None else f"{written:g} %"
    return [
        f"  adaptive control   target {loop.controller.target_pct():g} %, "
        f"now {loop.controller.state}, override {override}; "
        f"{actuator.counters['writes']} writes, {actuator.counters['verified']} read back",
        f"  control loop       {1 / cfg.period_s:g} Hz: {loop.ticks} ticks, lateness p99 "
        f"{loop.lateness.percentile(99) * 1e3:.2f} ms, sample-to-write p99 "
        f"{_ms(loop.latency.percentile(99))}, {loop.overruns} overruns",
        f"  control events     {events}",
    ]


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.1f} ms"  # NaN: nothing written
