"""The LinuxCNC adapter: a running LinuxCNC served over Modbus TCP with the simulated
controller's register map (hil/register_map.py, docs/register-map.md), the agent's writes of
`agent_feed_override` applied by the feed rule (override.py, docs/linuxcnc.md).

Two interpreters meet here. LinuxCNC's `hal` and `linuxcnc` modules load only in Debian's
python3, so the machine side (machine_side.py: a userspace HAL component and the status
channel) runs there as a child process, streaming one JSON status line every period and taking
one JSON line per agent write. This side, in the project's interpreter, serves Modbus with the
bench's own `SimulatedController`, so the map, its gaps, its exceptions and its write checks are
the simulated controller's, byte for byte; `LinuxCNCMachine` is the `Plant` it serves.

The spindle load has one of two sources, chosen by the caller:
- `PlantLoad`: the bench. A [stock] scenario's cutting-physics plant (`CuttingPlant.drive`)
  follows the tool positions LinuxCNC reports, a fresh blank for each program run, and works
  out the load;
- `HalLoad`: a real machine. A HAL pin (or signal) holding the spindle load in %, e.g. a spindle
  drive's load output, read on every status poll.

Never writes to LinuxCNC itself: only the machine side does, and only by the feed rule. When the
machine side stops reporting (LinuxCNC or the child gone) the Modbus server falls silent, so the
agent sees its link down and fails safe on its side too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from hil.controller import SimulatedController
from hil.linuxcnc import REPO_ROOT, SCENARIOS_DIR, SYSTEM_PYTHON
from hil.plant import CuttingPlant, RunResult
from hil.register_map import AGENT_OVERRIDE, AGENT_OVERRIDE_RANGE_PCT, RUN_STATE
from hil.scenario import Scenario, load_scenario, scenario_path

log = logging.getLogger(__name__)

#: A status line older than this makes the Modbus server fall silent: ten periods of the
#: machine side, far above its jitter, well below the agent's own staleness limits.
STALE_S = 0.1
#: The machine side's first status: it starts Python, loads `hal` and `linuxcnc` (~0.3 s here).
FIRST_STATUS_TIMEOUT_S = 10.0
#: How long the machine side may take to release the override and exit when asked.
CHILD_STOP_S = 3.0
_AMBIENT_DEGC = 22.0


@dataclass(frozen=True)
class PlantLoad:
    """The load from a [stock] scenario's cutting plant driven by LinuxCNC's positions."""

    scenario: Scenario
    record: bool = False  # keep each run's trace (reports); off for long serving


@dataclass(frozen=True)
class HalLoad:
    """The load from a HAL pin, signal or parameter (`pin`), in % of `rated_power_kw`."""

    pin: str
    rated_power_kw: float = 5.5


def load_source(spec: str) -> PlantLoad | HalLoad:
    """`scenario:NAME|PATH` (hil/linuxcnc/scenarios, then hil/scenarios) or `hal:PIN`."""
    kind, sep, what = spec.partition(":")
    if sep and kind == "hal" and what:
        return HalLoad(what)
    if sep and kind == "scenario" and what:
        path = SCENARIOS_DIR / f"{what}.toml"
        return PlantLoad(load_scenario(path if path.exists() else scenario_path(what)))
    raise ValueError(f"{spec!r}: expected scenario:NAME|PATH or hal:PIN")


class LinuxCNCMachine:
    """The `Plant` the simulated controller serves: LinuxCNC's last status, the load from the
    chosen source, and the agent's writes passed on to the machine side by `send`.

    Time comes from the status stream (each line carries the machine side's monotonic time):
    `update` moves the plant; `advance_to`, which the controller calls, has nothing to do.
    """

    def __init__(self, load: PlantLoad | HalLoad, send, *, program_number: int = 1) -> None:
        self.load = load
        self.send = send
        self.program_number = program_number
        self.status: dict | None = None
        self.plant: CuttingPlant | None = None  # the current (or last) program run's
        self.runs: list[RunResult] = []  # each finished run's figures, from the plant
        self.cycle_times_s: list[float] = []  # each finished run, by LinuxCNC's status
        #: each run's status lines, with `record`: (plant time s, override in effect %,
        #: adaptive-feed, feed override, speed mm/min (servo), feed stop servo time or None)
        self.status_traces: list[list[tuple]] = []
        self.run_clocks_s: list[float] = []  # each run's start on the plant's clock (servo)
        self.writes = 0
        self._run_t0: float | None = None  # monotonic time of the run's start
        self._plant_t0 = 0.0  # and on the clock the plant runs on
        self._last_cycle_s = 0.0

    def update(self, status: dict) -> None:
        running, t = status["running"], status["t"]
        previous = self.status
        was_running = previous is not None and previous["running"]
        self.status = status
        if running and not was_running:
            self._run_t0 = t
            self._plant_t0 = _clock(status)
            self.run_clocks_s.append(self._plant_t0)
            if self.recording:
                self.status_traces.append([])
            if isinstance(self.load, PlantLoad):
                self.plant = CuttingPlant(self.load.scenario, record=self.load.record)
                self.plant.drive(*status["pos"], running=True)
                previous = status
        if self.plant is not None and self._run_t0 is not None:
            self._drive(previous, status)
        if self.recording and self._run_t0 is not None and self.status_traces:
            self.status_traces[-1].append(
                (
                    _clock(status) - self._plant_t0,
                    status["override_pct"],
                    status["adaptive_feed"],
                    status["feed_override"],
                    status.get("vel_servo_mm_min", status["vel_mm_min"]),
                    status.get("feed_stop_servo_s"),
                )
            )
        if was_running and not running:
            self._last_cycle_s = t - self._run_t0
            self.cycle_times_s.append(self._last_cycle_s)
            if self.plant is not None:
                self.runs.append(self.plant.result)
            self._run_t0 = None

    @property
    def recording(self) -> bool:
        return isinstance(self.load, PlantLoad) and self.load.record

    def _drive(self, before: dict, now: dict) -> None:
        """Drive the plant step by step on its own grid, the tool where it was at each step
        (linear between two status lines), on the servo clock when the machine has one: the
        status lines come every period give or take a millisecond of poll and task-cycle
        jitter, and a 10 ms step that got 11 ms of travel would read a load 10 % high."""
        plant, step_s = self.plant, self.plant.machine.step_s
        t0, t1 = _clock(before) - self._plant_t0, _clock(now) - self._plant_t0
        feed = now["programmed_mm_min"]
        # The feed in effect (feed override x adaptive-feed), for the plant's trace only: a
        # driven plant's feed is LinuxCNC's, whatever it is written.
        plant.write(AGENT_OVERRIDE, 100 * now["adaptive_feed"] * now["feed_override"])
        for k in range(round(plant.time_s / step_s) + 1, math.floor(t1 / step_s + 1e-9) + 1):
            share = (k * step_s - t0) / (t1 - t0) if t1 > t0 else 1.0
            x, y, z = (a + (b - a) * share for a, b in zip(before["pos"], now["pos"], strict=True))
            plant.drive(x, y, z, running=True, programmed_feed_mm_min=feed)
            plant.advance_to(k * step_s)
        if not now["running"]:
            plant.drive(*now["pos"], running=False, programmed_feed_mm_min=feed)

    # -- the Plant protocol ---------------------------------------------------------------

    def advance_to(self, t_s: float) -> None:
        """Nothing: the status stream moves the plant (`update`)."""

    def write(self, name: str, value: float) -> None:
        if name != AGENT_OVERRIDE:
            raise ValueError(f"{name}: read-only, only {AGENT_OVERRIDE} is writable")
        lo, hi = AGENT_OVERRIDE_RANGE_PCT
        self.writes += 1
        self.send({"override": min(hi, max(lo, float(value)))})

    def values(self) -> dict[str, float]:
        s = self.status
        load, power, temperature, overload = self._load()
        estop, servo = bool(s["estop"]), bool(s["servo_fault"])
        running = bool(s["running"])
        alarm = estop or servo or overload
        if alarm:
            state = RUN_STATE["alarm"]
        elif not s["on"]:
            state = RUN_STATE["stopped"]
        elif not running:
            state = RUN_STATE["idle"]
        elif s["paused"] or s["feed_override"] * s["adaptive_feed"] == 0.0:
            state = RUN_STATE["feed_hold"]
        else:
            state = RUN_STATE["running"]
        cycle = s["t"] - self._run_t0 if self._run_t0 is not None else self._last_cycle_s
        x, y, z = s["pos"]
        return {
            "spindle_load": load,
            "spindle_speed": s["spindle_rpm"],
            "programmed_feed": s["programmed_mm_min"],
            "actual_feed": s["vel_mm_min"],
            "feed_knob": s["knob_pct"],
            "run_state": float(state),
            "alarm_spindle_overload": float(overload),
            "alarm_servo": float(servo),
            "alarm_emergency_stop": float(estop),
            "x_position": x,
            "y_position": y,
            "z_position": z,
            "program_number": float(self.program_number),
            "tool_number": float(s["tool"]),
            "block_number": float(s["line"]),
            "spindle_power": power,
            "cycle_time": cycle,
            "spindle_temperature": temperature,
            AGENT_OVERRIDE: s["override_pct"],
            "spindle_on": float(s["spindle_on"]),
            "program_running": float(running),
            "in_alarm": float(alarm),
        }

    def _load(self) -> tuple[float, float, float, bool]:
        """(load %, power kW, spindle temperature degC, overload alarm)."""
        if isinstance(self.load, HalLoad):
            load = self.status["load_pct"]  # no temperature: NaN, as the replay's gaps
            return load, load / 100 * self.load.rated_power_kw, math.nan, False
        if self.plant is None:
            return 0.0, 0.0, _AMBIENT_DEGC, False
        v = self.plant.values()
        return (
            v["spindle_load"],
            v["spindle_power"],
            v["spindle_temperature"],
            bool(v["alarm_spindle_overload"]),
        )


def _clock(status: dict) -> float:
    """The time a status line's positions were taken: servo time if the machine side has a
    servo clock (config/edge_agent.hal), else its poll time."""
    servo_s = status.get("servo_s")
    return servo_s if servo_s is not None else status["t"]


class LinuxCNCAdapter:
    """The machine side as a child process plus the Modbus server.

    `env`: the environment to reach LinuxCNC in (the runner's `LinuxCNC.env` on the bench; on a
    real machine the caller's own, with the repository added to PYTHONPATH).
    """

    def __init__(
        self,
        load: PlantLoad | HalLoad,
        *,
        env: dict[str, str] | None = None,
        refresh_timeout_s: float = 2.0,
        fallback_pct: float = 100.0,
        period_s: float = 0.01,
        program_number: int = 1,
        unit_id: int = 1,
        component: str = "edge-adapter",
    ) -> None:
        self.load = load
        self.env = dict(env if env is not None else os.environ)
        self.env["PYTHONPATH"] = str(REPO_ROOT)
        self.args = [
            f"--name={component}",
            f"--period-s={period_s}",
            f"--refresh-timeout-s={refresh_timeout_s}",
            f"--fallback-pct={fallback_pct}",
        ]
        if isinstance(load, HalLoad):
            self.args.append(f"--load-pin={load.pin}")
        self.machine = LinuxCNCMachine(load, self._send, program_number=program_number)
        self.controller = SimulatedController(self.machine, unit_id=unit_id)
        self.port = 0
        self.statuses = 0
        self._received_s = 0.0
        self._child: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task] = []
        self._first = asyncio.Event()
        self.ended = asyncio.Event()  # the machine side exited (or was stopped)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start the machine side, wait for its first status, serve; returns the TCP port."""
        self._child = await asyncio.create_subprocess_exec(
            SYSTEM_PYTHON,
            "-m",
            "hil.linuxcnc.machine_side",
            *self.args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=self.env,
            cwd=Path(REPO_ROOT),
        )
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._watch())]
        try:
            await asyncio.wait_for(self._first.wait(), FIRST_STATUS_TIMEOUT_S)
        except TimeoutError:
            await self.stop()
            raise RuntimeError(
                f"LinuxCNC adapter: no status from the machine side in {FIRST_STATUS_TIMEOUT_S:g} s"
            ) from None
        if self.ended.is_set():
            await self.stop()
            raise RuntimeError(f"LinuxCNC adapter: machine side exited ({self._child.returncode})")
        self.port = await self.controller.start_tcp(host, port)
        return self.port

    async def stop(self) -> None:
        """Stop serving; the machine side releases the override (never above the fallback,
        at most 100 %) and exits, or is killed after CHILD_STOP_S."""
        await self.controller.stop()
        child = self._child
        if child is not None and child.returncode is None:
            with contextlib.suppress(OSError):
                child.stdin.close()
            try:
                await asyncio.wait_for(child.wait(), CHILD_STOP_S)
            except TimeoutError:
                child.kill()
                await child.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.ended.set()

    def _send(self, message: dict) -> None:
        if self._child is not None and self._child.returncode is None:
            self._child.stdin.write((json.dumps(message) + "\n").encode())

    async def _read(self) -> None:
        try:
            async for line in self._child.stdout:
                self.machine.update(json.loads(line))
                self._received_s = time.monotonic()
                self.statuses += 1
                self._first.set()
        finally:
            await self._child.wait()
            log.log(
                logging.INFO if self._child.returncode == 0 else logging.ERROR,
                "LinuxCNC adapter: machine side exited with status %s",
                self._child.returncode,
            )
            self.controller.faults.silent = True
            self.ended.set()
            self._first.set()

    async def _watch(self) -> None:
        """Silence the Modbus server while the status is stale."""
        while True:
            await asyncio.sleep(STALE_S / 2)
            stale = time.monotonic() - self._received_s > STALE_S
            self.controller.faults.silent = stale or self.ended.is_set()
