"""`make hil`: every scenario on the bench, measured against its oracle, with two drivers.

The baseline holds the agent override at a fixed 100 %; the adaptive driver is the agent's
control. In real time (the default) each scenario's plant is served by its own simulated
controller on loopback: the baseline is a Modbus client that writes the override and reads
the load, the adaptive run is the whole agent (`Agent`, control enabled) over Modbus; link-loss
events silence the controller. On simulated time (`--sim`) the plant is stepped directly,
without Modbus: the baseline writes the plant, the adaptive run ticks the agent's own control
loop, actuator and filter chain against it. The same physics, in seconds.
"""

from __future__ import annotations

import array
import asyncio
import dataclasses
import queue
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from edge_agent.config import ChannelConfig, ControlConfig, FilterSpec
from edge_agent.control.actuator import Actuator
from edge_agent.control.adaptive import AdaptiveController, State
from edge_agent.control.loop import ControlLoop
from edge_agent.control.preview import ProfileBook
from edge_agent.routing import SampleRouter
from edge_agent.samples import Sample
from edge_agent.service import Agent
from hil.controller import SimulatedController
from hil.demo import demo_config, opcua_demo_config
from hil.opcua_server import OpcUaController
from hil.oracle import oracle
from hil.plant import CuttingPlant, RunResult
from hil.register_map import AGENT_OVERRIDE, BY_NAME
from hil.scenario import Scenario

BASELINE = "baseline 100 %"
BASELINE_OVERRIDE_PCT = 100


@dataclass(frozen=True)
class Run:
    """One scenario run by one driver: what the plant measured, and the physical limit."""

    scenario: Scenario
    driver: str
    result: RunResult
    oracle_s: float
    trace: dict[str, array.array]
    stopped_at_s: float  # plant time when the run ended (finished, alarm or time limit)
    held: str = ""  # why the agent held the feed, if it did (overload, breakage)

    @property
    def ratio(self) -> float:
        """Cycle time over the oracle's: 1.0 is the physical limit, above is slower."""
        return self.result.cycle_time_s / self.oracle_s if self.result.finished else float("nan")


def time_limit_s(oracle_s: float) -> float:
    """How long a run may take before it counts as unfinished: well past any sane driver."""
    return 4 * oracle_s + 20.0


def run_simulated(scenario: Scenario) -> Run:
    """The baseline on simulated time, the plant stepped directly."""
    ideal = oracle(scenario).cycle_time_s
    plant = CuttingPlant(scenario, record=True)
    plant.write(AGENT_OVERRIDE, BASELINE_OVERRIDE_PCT)
    limit = time_limit_s(ideal)
    while not plant.done and plant.time_s < limit:
        plant.advance_to(plant.time_s + 1.0)
    return Run(scenario, BASELINE, plant.result, ideal, plant.trace, plant.time_s)


async def run_realtime(scenario: Scenario, tick_s: float = 0.01) -> Run:
    """The baseline in real time, through the simulated controller over Modbus TCP."""
    ideal = oracle(scenario).cycle_time_s
    plant = CuttingPlant(scenario, record=True)
    controller = SimulatedController(plant)
    port = await controller.start_tcp("127.0.0.1", 0)
    driver = asyncio.create_task(_baseline_client(port))
    try:
        await _serve(plant, controller, time_limit_s(ideal), tick_s)
    finally:
        driver.cancel()
        await asyncio.gather(driver, return_exceptions=True)
        await controller.stop()
    return Run(scenario, BASELINE, plant.result, ideal, plant.trace, plant.time_s)


async def _baseline_client(port: int, period_s: float = 0.1) -> None:
    """Writes the fixed override until the controller takes it, then reads the spindle load
    every period like a monitoring client (and rides out a silent controller)."""
    override, load = BY_NAME[AGENT_OVERRIDE], BY_NAME["spindle_load"]
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=0.5, retries=0)
    written = False
    try:
        while True:
            try:
                if not client.connected:
                    await client.connect()
                elif not written:
                    reply = await client.write_register(override.address, BASELINE_OVERRIDE_PCT)
                    written = not reply.isError()
                else:
                    await client.read_input_registers(load.address, count=1)
            except (ModbusException, OSError):
                pass  # a lost link: the next period tries again
            await asyncio.sleep(period_s)
    finally:
        client.close()


async def run_agent_realtime(
    scenario: Scenario, workdir: Path, tick_s: float = 0.01, opcua: bool = False
) -> Run:
    """The agent itself, control enabled, against the scenario's plant over Modbus TCP in
    real time (or the bench's OPC UA server): the same program `edge-agent run` is, with the
    demo's register map (or its nodes)."""
    ideal = oracle(scenario).cycle_time_s
    plant = CuttingPlant(scenario, record=True)
    workdir.mkdir(parents=True, exist_ok=True)
    spool = str(workdir / f"{scenario.name}.db")
    # The plant waits at time 0 until the agent is up, over either protocol alike: an OPC UA
    # server's start (its address space) and session take a second or two that Modbus does not.
    clock = _HeldClock()
    if opcua:
        controller = OpcUaController(plant, clock=clock)
        await controller.start("127.0.0.1", 0)
        config = opcua_demo_config(controller.url, spool=spool)
    else:
        controller = SimulatedController(plant, clock=clock)
        port = await controller.start_tcp("127.0.0.1", 0)
        config = demo_config(port=port, spool=spool)
    control = dataclasses.replace(control_config(scenario), teach_file=str(workdir / "teach.json"))
    agent = Agent(dataclasses.replace(config, control=control))
    stop = asyncio.Event()
    running = asyncio.create_task(agent.run(stop))
    hold = HoldWatch()

    def over() -> bool:
        held = agent.control is not None and agent.control.controller.state is State.HOLD
        return running.done() or hold.ended(held, plant.time_s)

    try:
        await asyncio.wait([asyncio.create_task(agent.up.wait()), running], timeout=30)
        clock.release()
        if opcua:
            await _serve_opcua(plant, controller, time_limit_s(ideal), tick_s, over)
        else:
            await _serve(plant, controller, time_limit_s(ideal), tick_s, over)
    finally:
        stop.set()
        await running
        await controller.stop()
    held = agent.control.controller.hold_reason if agent.control is not None else ""
    label = AGENT_OPCUA if opcua else AGENT
    return Run(scenario, label, plant.result, ideal, plant.trace, plant.time_s, held)


class _HeldClock:
    """Monotonic seconds from `release()`; 0 before it."""

    def __init__(self):
        self._t0: float | None = None

    def release(self) -> None:
        self._t0 = time.monotonic()

    def __call__(self) -> float:
        return 0.0 if self._t0 is None else time.monotonic() - self._t0


async def _serve_opcua(plant, controller, limit_s: float, tick_s: float, over) -> None:
    """`_serve` for the OPC UA server (its advance is a coroutine: subscriptions are told)."""
    while not plant.done and await controller.advance() < limit_s and not over():
        controller.faults.silent = plant.link_down()
        await asyncio.sleep(tick_s)


async def run_all_realtime(
    scenarios: list[Scenario],
    workdir: Path,
    progress: Callable[[int, int, float], None],
    opcua: bool = False,
) -> list[Run]:
    """The baseline of every scenario at once, each on its own controller; then the agent on
    each in turn (one agent at a time, so that they do not share the CPU and the GIL), over
    Modbus and, with `opcua`, over OPC UA too;
    `progress(done, total, elapsed)`."""
    started = time.monotonic()
    both = scenarios if opcua else []
    total = 2 * len(scenarios) + len(both)
    tasks = [asyncio.create_task(run_realtime(s)) for s in scenarios]
    while not all(t.done() for t in tasks):
        progress(sum(t.done() for t in tasks), total, time.monotonic() - started)
        await asyncio.wait(tasks, timeout=0.5)
    runs = [t.result() for t in tasks]
    agents = [(s, False) for s in scenarios] + [(s, True) for s in both]
    for scenario, over_opcua in agents:
        task = asyncio.create_task(run_agent_realtime(scenario, workdir, opcua=over_opcua))
        while not task.done():
            progress(len(runs), total, time.monotonic() - started)
            await asyncio.wait([task], timeout=0.5)
        runs.append(task.result())
    progress(total, total, time.monotonic() - started)
    return runs


class Progress:
    """One status line, redrawn on a terminal; a line every 5 s otherwise (CI logs)."""

    def __init__(self, stream=sys.stderr, what: str = "scenarios"):
        self.stream = stream
        self.what = what
        self.tty = stream.isatty()
        self._last = -1e9

    def __call__(self, done: int, total: int, elapsed_s: float) -> None:
        width = 20
        bar = "#" * (width * done // total) + "." * (width - width * done // total)
        line = f"hil: [{bar}] {done}/{total} {self.what} finished, {elapsed_s:.0f} s"
        if self.tty:
            end = "\n" if done == total else ""
            print(f"\r{line}", end=end, file=self.stream, flush=True)
        elif elapsed_s - self._last >= 5.0 or done == total:
            self._last = elapsed_s
            print(line, file=self.stream, flush=True)


ADAPTIVE = "adaptive (simulated time)"
AGENT = "adaptive (agent over Modbus)"
AGENT_OPCUA = "adaptive (agent over OPC UA)"


#: The agent's control settings on the bench: the defaults, aimed at the scenario's target.
#: Tags are the simulated controller's register map (hil/register_map.py). A machine with an
#: override watchdog gets its override re-written every third of the watchdog's time, so
#: that two refreshes may be lost before it trips (docs/safety.md).
def control_config(scenario: Scenario, **change) -> ControlConfig:
    c = scenario.control
    return dataclasses.replace(
        ControlConfig(
            enabled=True,
            target_load_pct=c.target_load_pct,
            hard_limit_pct=c.hard_limit_pct,
            override_min_pct=c.override_min_pct,
            override_max_pct=c.override_max_pct,
            refresh_s=scenario.machine.override_watchdog_s / 3,
        ),
        **change,
    )


class _PlantWriter:
    """The actuator's writer on simulated time: straight into the plant, as the controller
    would apply a Modbus write; lost while the scenario's link is down."""

    def __init__(self, plant: CuttingPlant):
        self.plant = plant

    def write(self, tag, value: float, urgent: bool = False) -> None:
        if not self.plant.link_down():
            self.plant.write(tag.name, value)


def run_adaptive_simulated(
    scenario: Scenario,
    cfg: ControlConfig | None = None,
    poll_s: float = 0.02,
    filters: tuple[FilterSpec, ...] = (),
    observe: Callable[[int, ControlLoop], None] | None = None,
    book: ProfileBook | None = None,
) -> tuple[Run, ControlLoop]:
    """The agent's control path on simulated time: the plant polled every `poll_s` (no
    replies while the link is down), the signal through the agent's filter chain, the
    agent's own control loop ticked every period; `observe(now_ns, loop)` after each tick
    (what the controller decided: its state, learned idle, the law's override). With `book`,
    each finished part is learned at once and its profiles handed to the controller, as the
    agent's control host does in a worker thread."""
    cfg = cfg or control_config(scenario)
    ideal = oracle(scenario).cycle_time_s
    plant = CuttingPlant(scenario, record=True)
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    now_ns = 0
    loop = ControlLoop(
        AdaptiveController(cfg),
        Actuator(cfg, BY_NAME, _PlantWriter(plant)),
        inbox,
        link_up=lambda: not plant.link_down(),
        on_events=lambda events: on_events(events),
        clock_ns=lambda: now_ns,
    )
    loop.events = []

    def on_events(events) -> None:
        loop.events.extend((now_ns, e) for e in events)
        if book is not None and any(kind == "part" for kind, _ in events):
            controller = loop.controller
            learned = book.learn(controller.last_part, controller.idle_pct)
            loop.events.extend((now_ns, e) for e in learned)
            controller.set_profiles(book.profiles, book.timing)

    router = SampleRouter(  # the agent's own routing: its filter chain, qualities, control tags
        {cfg.signal: ChannelConfig(cfg.signal, filters, sample_rate_hz=1 / poll_s)},
        loop.controller.inputs,
    )
    period_ns, poll_ns = round(cfg.period_s * 1e9), round(poll_s * 1e9)
    limit_ns = round(time_limit_s(ideal) * 1e9)
    next_poll_ns = 0
    hold = HoldWatch()

    def poll() -> None:
        if not plant.link_down():  # every tag, as the agent's poll groups read them
            polled = [Sample(name, now_ns, v) for name, v in plant.values().items()]
            arrivals = router.route(polled, now_ns).control
            if arrivals:
                inbox.put(arrivals)

    while not plant.done and now_ns < limit_ns:
        now_ns += period_ns
        plant.advance_to(now_ns / 1e9)
        if now_ns >= next_poll_ns:
            next_poll_ns += poll_ns
            poll()
        loop.tick(now_ns)
        if observe is not None:
            observe(now_ns, loop)
        if hold.ended(loop.controller.state is State.HOLD, now_ns / 1e9):
            break
    if plant.done:  # the next poll reads the machine at its end: the agent sees the last part end
        now_ns = max(next_poll_ns, now_ns + period_ns)
        poll()
        loop.tick(now_ns)
    held = loop.controller.hold_reason
    return Run(scenario, ADAPTIVE, plant.result, ideal, plant.trace, plant.time_s, held), loop


#: A feed hold this long ends a bench run: on a real machine an operator would step in.
HOLD_ENDS_RUN_S = 2.0


class HoldWatch:
    """Says when the agent's feed hold has lasted HOLD_ENDS_RUN_S of plant time."""

    def __init__(self):
        self._since_s: float | None = None

    def ended(self, held: bool, t_s: float) -> bool:
        if not held:
            self._since_s = None
            return False
        if self._since_s is None:
            self._since_s = t_s
        return t_s - self._since_s >= HOLD_ENDS_RUN_S


async def _serve(plant, controller, limit_s: float, tick_s: float, over=lambda: False) -> None:
    """Keep the plant on the controller's clock until it is done, the time limit passes or
    `over()` says so; the scenario's link-loss events silence the controller meanwhile."""
    while not plant.done and controller.advance() < limit_s and not over():
        controller.faults.silent = plant.link_down()
        await asyncio.sleep(tick_s)
