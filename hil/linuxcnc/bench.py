"""`make hil-linuxcnc`: the bench's G-code programs on a real LinuxCNC, each with a fixed 100 %
override and with the agent adapting the feed (`edge-agent run`, control on, over the adapter),
one run at a time on one LinuxCNC; a table and a plot per program (reports/hil-linuxcnc/).

Each program's load comes from its [stock] scenario's cutting plant (scenarios/, same name),
driven by LinuxCNC's positions on the servo clock (adapter.py). A breakage run: when the
agent's feed hold has stopped the feed for HOLD_ENDS_RUN_S, the program is aborted (an
operator would step in); the reaction time is from the plant's breakage onset to the servo
cycle after the adapter set motion.adaptive-feed to 0, both on the servo clock.

Never runs two LinuxCNCs or two agents at once; never writes to LinuxCNC but through the
adapter. The figures come from the plant's trace, the adapter's status stream and the agent's
own control_state events (its spool).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from hil.linuxcnc import PROGRAMS_DIR, REPO_ROOT, SCENARIOS_DIR
from hil.linuxcnc.adapter import LinuxCNCAdapter, PlantLoad
from hil.linuxcnc.runner import LinuxCNC, LinuxCNCError, ProgramRun
from hil.plant import MOTION, RunResult
from hil.report import markdown_table
from hil.scenario import Scenario, load_scenario

FIXED = "fixed 100 %"
AGENT = "adaptive (agent)"
#: The programs `make hil-linuxcnc` runs, each with its scenario of the same name.
PROGRAMS = ("pocket_depth_steps", "slot_hard_spot", "contour_air_moves", "slot_breakage")
#: config/edge_sim.ini's servo period: reaction times are counted in these.
SERVO_PERIOD_S = 0.001
#: A feed stopped this long ends a run (as hil/bench.py's HOLD_ENDS_RUN_S): the program is
#: aborted, as an operator would after a feed hold, and counts as unfinished.
HOLD_ENDS_RUN_S = 2.0
#: The agent polls before the program starts: it has learned nothing yet, but sees the machine.
AGENT_READY_REQUESTS = 100
AGENT_READY_TIMEOUT_S = 20.0
AGENT_STOP_S = 15.0
#: Any program's bound: well past the slowest it may run (50 % over 25 s, plus the run-up).
RUN_TIMEOUT_S = 90.0
CONTROL_STATES = ("air", "entry", "cutting", "hold")


@dataclass(frozen=True)
class Reaction:
    """A breakage seen through the loop, on the servo clock (seconds from the run's start)."""

    onset_s: float  # the plant's breakage onset
    feed_stop_s: float | None  # the adapter set adaptive-feed to 0 (motion reads it next cycle)
    stopped_s: float | None  # the first status with the commanded speed 0 after that (10 ms)

    @property
    def cycles(self) -> int | None:
        """Servo cycles from the onset to the cycle in which motion.adaptive-feed is 0."""
        if self.feed_stop_s is None:
            return None
        return math.floor((self.feed_stop_s - self.onset_s) / SERVO_PERIOD_S + 1e-6) + 1

    @property
    def to_standstill_cycles(self) -> int | None:
        if self.stopped_s is None:
            return None
        return round((self.stopped_s - self.onset_s) / SERVO_PERIOD_S)


@dataclass(frozen=True)
class BenchRun:
    """One program run by one driver."""

    program: str
    driver: str
    scenario: Scenario
    done: ProgramRun  # LinuxCNC's: cycle time, ok (False: aborted, unfinished)
    #: the plant's: peak load, time above the hard limit, breakage; None: the machine never
    #: moved (LinuxCNC rejected the program, `done.messages` say why)
    result: RunResult | None
    trace: dict  # the plant's (hil.plant.TRACE_COLUMNS); override_pct: the feed in effect
    states_s: dict[str, float]  # agent only: seconds in each control state during the run
    events: list[dict]  # agent only: its control events during the run
    reaction: Reaction | None = None
    wall_s: tuple[float, float] = (0.0, 0.0)  # the run's start and end, wall clock

    @property
    def finished(self) -> bool:
        return self.done.ok

    @property
    def rejected(self) -> bool:
        return self.result is None

    @property
    def why(self) -> str:
        """What LinuxCNC (or the runner) said about the run, if anything."""
        return "; ".join(self.done.messages)

    def hil_run(self, oracle_s: float):
        """This run as the simulated bench's `Run` (hil/bench.py), which hil/report.py plots
        and hil/metrics.py measures; `oracle_s`: the scenario's oracle cycle time."""
        from hil.bench import Run

        return Run(
            self.scenario,
            self.driver,
            self.result,
            oracle_s,
            self.trace,
            self.done.cycle_s,
            self.held,
        )

    @property
    def held(self) -> str:
        kinds = [e["event"] for e in self.events if e["event"] in ("breakage", "overload")]
        return ", ".join(kinds)

    def load_errors(self) -> tuple[float, float]:
        """(peak, RMS) of the load read minus the target, % points, while cutting."""
        target = self.scenario.control.target_load_pct
        trace = self.trace
        cut = [
            load - target
            for load, motion in zip(trace.get("load_pct", ()), trace.get("motion", ()), strict=True)
            if motion == MOTION["cut"]
        ]
        if not cut:
            return math.nan, math.nan
        return max(cut), math.sqrt(sum(e * e for e in cut) / len(cut))


def scenario_for(program: Path) -> Scenario:
    return load_scenario(SCENARIOS_DIR / f"{program.stem}.toml")


#: The agent's `[control] refresh_s` against the adapter: three refreshes and a reply's time
#: fit in its default 2 s refresh timeout, so two lost ones do not trip it (docs/safety.md).
AGENT_REFRESH_S = 0.5


def agent_toml(port: int, workdir: Path, *, preview: bool = False) -> str:
    """The demo configuration (edge_agent/defaults/demo.toml: control on, target 70 %) pointed
    at the adapter, its spool in `workdir`, no upstream: every event stays in the spool; the
    override re-written every AGENT_REFRESH_S for the adapter's watchdog; with `preview`, the
    learned preview of repeat parts on (its profiles in `workdir`)."""
    text = resources.files("edge_agent.defaults").joinpath("demo.toml").read_text()
    spool = workdir / "spool.db"
    for pattern, replacement in (
        (r"\nport = 5020\n", f"\nport = {port}\n"),
        # The adapter falls back when the agent has not written for --refresh-timeout-s
        # (2 s): its controller-side watchdog needs the re-write the demo does not configure.
        (
            r'teach_file = "demo-teach.json"',
            f'teach_file = "{workdir / "teach.json"}"\nrefresh_s = {AGENT_REFRESH_S}'
            + ("\npreview = true" if preview else ""),
        ),
        (r'\[spool\]\npath = "demo-spool.db"', f'[spool]\npath = "{spool}"'),
        (
            r'\[upstream\]\nkind = "file"\nfile_path = "demo-telemetry.msgpack"',
            '[upstream]\nkind = "none"',
        ),
    ):
        text, n = re.subn(pattern, replacement, text)
        if n != 1:
            raise RuntimeError(f"demo.toml changed: {pattern!r} not found")
    return text


def spool_events(path: Path) -> list[dict]:
    """The agent's events in its spool: {"t": wall s, "event": kind, "detail": {...}}."""
    from edge_agent.telemetry.decode import decode_payload
    from edge_agent.telemetry.spool import Spool

    spool = Spool(str(path), readonly=True)
    tables: dict = {}
    events = []
    try:
        for row in spool.frames():
            decoded = decode_payload(row.body, tables)
            if decoded["kind"] == "event":
                events.append(
                    {
                        "t": decoded["t"] / 1e6,
                        "event": decoded["event"],
                        "detail": decoded["detail"],
                    }
                )
    finally:
        spool.close()
    return events


def state_times(events: list[dict], start: float, end: float) -> dict[str, float]:
    """Seconds in each control state between wall times `start` and `end`."""
    changes = sorted((e["t"], e["detail"]["to"]) for e in events if e["event"] == "control_state")
    state = "starting"
    for t, to in changes:
        if t <= start:
            state = to
    times: dict[str, float] = {}
    at = start
    for t, to in changes:
        if start < t < end:
            times[state] = times.get(state, 0.0) + t - at
            at, state = t, to
    times[state] = times.get(state, 0.0) + end - at
    return times


async def start_agent(
    config: Path, log: Path, adapter: LinuxCNCAdapter
) -> asyncio.subprocess.Process:
    """`edge-agent run CONFIG` as its own process (stderr to `log`), returned once the
    adapter has served it AGENT_READY_REQUESTS requests; the caller stops it (SIGTERM)."""
    with open(log, "wb") as stderr:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge_agent",
            "run",
            str(config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
    deadline = time.monotonic() + AGENT_READY_TIMEOUT_S
    while adapter.controller.requests_served < AGENT_READY_REQUESTS:
        if child.returncode is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
            raise RuntimeError(f"the agent did not start polling: {log.read_text()[-2000:]}")
        await asyncio.sleep(0.1)
    return child


async def run_program(
    cnc: LinuxCNC, program: Path, *, agent: bool, workdir: Path, log=lambda text: None
) -> BenchRun:
    """One run of `program` on the running `cnc`, through a fresh adapter; with the agent
    (`edge-agent run` on the demo configuration) or without (the adapter's 100 %)."""
    scenario = scenario_for(program)
    workdir.mkdir(parents=True, exist_ok=True)
    adapter = LinuxCNCAdapter(PlantLoad(scenario, record=True), env=cnc.env)
    port = await adapter.start()
    child = None
    try:
        if agent:
            config = workdir / "agent.toml"
            config.write_text(agent_toml(port, workdir))
            child = await start_agent(config, workdir / "agent.log", adapter)
        run = await run_on_adapter(cnc, program, adapter, AGENT if agent else FIXED)
    finally:
        if child is not None:
            await stop_agent(child)
        await adapter.stop()
    if agent:
        run = with_agent_events(run, workdir / "spool.db")
    log_run(run, log)
    return run


async def run_on_adapter(
    cnc: LinuxCNC, program: Path, adapter: LinuxCNCAdapter, driver: str
) -> BenchRun:
    """`program` run once to its end on `cnc` while `adapter` serves it (and whoever drives
    it); a feed held at 0 for HOLD_ENDS_RUN_S aborts it. The run's figures come from the
    adapter's plant and status stream; its `started`/`ended` wall times bound the agent's
    events (`with_agent_events`)."""
    loop = asyncio.get_running_loop()
    machine = adapter.machine
    runs_before = len(machine.run_clocks_s)
    started = time.time()
    running = loop.run_in_executor(None, _run_on, cnc, program)
    stopped_since = None
    while not running.done():
        await asyncio.sleep(0.05)
        s = machine.status
        if s["running"] and s["adaptive_feed"] * s["feed_override"] == 0.0:
            stopped_since = stopped_since or time.monotonic()
            if time.monotonic() - stopped_since >= HOLD_ENDS_RUN_S:
                cnc.abort()
                stopped_since = math.inf  # once
        elif stopped_since is not math.inf:
            stopped_since = None
    done = await running
    ended = time.time()
    await asyncio.sleep(0.1)  # the adapter's next status lines see the end
    result = None  # the machine never moved: LinuxCNC rejected the program
    if len(machine.run_clocks_s) > runs_before:
        result = dataclasses.replace(machine.plant.result, finished=done.ok)
    reaction = None
    if result is not None and result.broken_at_s is not None:
        reaction = _reaction(
            result.broken_at_s, machine.run_clocks_s[-1], machine.status_traces[-1]
        )
    return BenchRun(
        program.stem,
        driver,
        scenario_for(program),
        done,
        result,
        machine.plant.trace if result is not None else {},
        {},
        [],
        reaction,
        (started, ended),
    )


def with_agent_events(run: BenchRun, spool: Path) -> BenchRun:
    """`run` with the agent's control events and state times during it, from its spool."""
    events = spool_events(spool)
    started, ended = run.wall_s
    return dataclasses.replace(
        run,
        events=[e for e in events if started <= e["t"] <= ended],
        states_s=state_times(events, started, ended),
    )


async def stop_agent(child: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signal.SIGTERM)
    await asyncio.wait_for(child.wait(), AGENT_STOP_S)


def log_run(run: BenchRun, log) -> None:
    if run.rejected:
        log(f"{run.program}, {run.driver}: rejected: {run.why}")
    else:
        finished = "" if run.finished else " (unfinished)"
        log(f"{run.program}, {run.driver}: {_cycle(run)} s{finished}")


def _run_on(cnc: LinuxCNC, program: Path) -> ProgramRun:
    """`program` to its end at 100 %; a program the runner refuses (no such file) is a run
    that failed, with the reason, like one LinuxCNC's interpreter rejects."""
    try:
        return cnc.run(program, feed_override=1.0, timeout_s=RUN_TIMEOUT_S)
    except LinuxCNCError as exc:
        return ProgramRun(str(program), 0.0, False, (str(exc),))


def _reaction(onset_s: float, clock0_s: float, statuses: list[tuple]) -> Reaction:
    """From the breakage onset (plant time) to the adaptive-feed stop and to standstill."""
    stops = [s[5] - clock0_s for s in statuses if s[5] is not None and s[5] - clock0_s >= onset_s]
    feed_stop = min(stops) if stops else None
    still = None
    if feed_stop is not None:
        still = next((s[0] for s in statuses if s[0] >= feed_stop and s[4] == 0.0), None)
    return Reaction(onset_s, feed_stop, still)


async def run_bench(
    programs: list[Path], workdir: Path, *, drivers=(FIXED, AGENT), log=lambda text: None
) -> list[BenchRun]:
    """Every program with every driver, one at a time, on one LinuxCNC. A program without
    its scenario is refused here, before any run, rather than after the runs before it."""
    for program in programs:
        scenario_for(program)
    loop = asyncio.get_running_loop()
    cnc = LinuxCNC()
    await loop.run_in_executor(None, cnc.start)
    log(f"LinuxCNC ready in {cnc.ready_s:.2f} s")
    runs = []
    try:
        for program in programs:
            for driver in drivers:
                where = workdir / f"{program.stem}-{'agent' if driver == AGENT else 'fixed'}"
                runs.append(
                    await run_program(cnc, program, agent=driver == AGENT, workdir=where, log=log)
                )
    finally:
        await loop.run_in_executor(None, cnc.stop)
    return runs


# -- the report ------------------------------------------------------------------------------

HEADER = (
    "program",
    "driver",
    "cycle s",
    "vs fixed",
    "peak load %",
    "peak err %",
    "RMS err %",
    "above limit s",
    *(f"{state} s" for state in CONTROL_STATES),
    "notes",
)


def _cycle(run: BenchRun) -> str:
    return f"{run.done.cycle_s:.2f}" if run.finished else "-"


def _row(run: BenchRun, fixed: BenchRun | None) -> tuple[str, ...]:
    if run.rejected:
        blank = ("-",) * (len(HEADER) - 3)
        return (
            run.program,
            run.driver,
            *blank,
            f"failed: rejected: {run.why or 'no reason given'}",
        )
    versus = ""
    if fixed is not None and run is not fixed:
        versus = (
            f"{run.done.cycle_s / fixed.done.cycle_s - 1:+.1%}"
            if run.finished and fixed.finished
            else "-"
        )
    peak_err, rms_err = run.load_errors()
    states = (
        tuple(f"{run.states_s.get(s, 0.0):.2f}" for s in CONTROL_STATES)
        if run.driver == AGENT
        else ("-",) * len(CONTROL_STATES)
    )
    notes = []
    if run.held:
        notes.append(f"agent held the feed: {run.held}")
    if not run.finished:
        said = f" ({run.why})" if run.why else ""
        notes.append(f"unfinished, stopped at {run.done.cycle_s:.1f} s{said}")
    if run.result.broken_at_s is not None:
        notes.append(f"tool broke at {run.result.broken_at_s:.2f} s")
    if run.reaction is not None and run.reaction.cycles is not None:
        notes.append(f"feed stop {run.reaction.cycles} servo cycles after the breakage")
    return (
        run.program,
        run.driver,
        _cycle(run),
        versus,
        f"{run.result.peak_load_pct:.1f}",
        f"{peak_err:+.1f}",
        f"{rms_err:.1f}",
        f"{run.result.above_limit_s:.2f}",
        *states,
        ", ".join(notes),
    )


def table(runs: list[BenchRun]) -> str:
    fixed = {r.program: r for r in runs if r.driver == FIXED}
    return markdown_table(HEADER, [_row(r, fixed.get(r.program)) for r in runs])


def reactions(runs: list[BenchRun]) -> list[str]:
    out = []
    for run in runs:
        r = run.reaction
        if r is None or run.driver != AGENT:
            continue
        if r.cycles is None:
            out.append(f"{run.program}: tool broke at {r.onset_s:.3f} s; the feed never stopped")
            continue
        still = (
            f"; commanded speed 0 by {r.to_standstill_cycles} cycles (status every 10 ms)"
            if r.to_standstill_cycles is not None
            else ""
        )
        out.append(
            f"{run.program}: breakage onset at {r.onset_s:.3f} s (servo clock), "
            f"motion.adaptive-feed = 0 from {r.onset_s + r.cycles * SERVO_PERIOD_S:.3f} s: "
            f"**{r.cycles} servo cycles** ({r.cycles * SERVO_PERIOD_S * 1000:.0f} ms){still}"
        )
    return out


def write_report(runs: list[BenchRun], out: Path) -> Path:
    """report.md, report.json and a PNG per program (hil/report.py's plot) into `out`."""
    from hil.oracle import oracle
    from hil.report import plot

    out.mkdir(parents=True, exist_ok=True)
    text = table(runs)
    lines = [
        "# LinuxCNC in the loop",
        "",
        "Each program on LinuxCNC with a fixed 100 % override and with the agent (`edge-agent "
        "run`, demo configuration, target 70 %, hard limit 110 %). Load errors: the load read "
        "minus the target while cutting, % points; control states: the agent's control_state "
        "events (its spool) during the run.",
        "",
        text,
        "",
        *(f"- {line}" for line in reactions(runs)),
        "",
    ]
    by_program: dict[str, list[BenchRun]] = {}
    for run in runs:
        if not run.rejected:  # nothing ran: nothing to plot
            by_program.setdefault(run.program, []).append(run)
    for program, group in by_program.items():
        png = out / f"{program}.png"
        ideal = oracle(group[0].scenario).cycle_time_s
        plot(
            [r.hil_run(ideal) for r in group],
            png,
        )
        lines.append(f"![{program}]({png.name})")
    records = [
        {
            "program": r.program,
            "driver": r.driver,
            "finished": r.finished,
            "rejected": r.rejected,
            "cycle_s": r.done.cycle_s,
            "peak_load_pct": None if r.rejected else r.result.peak_load_pct,
            "load_errors_pct": r.load_errors(),
            "above_limit_s": None if r.rejected else r.result.above_limit_s,
            "states_s": r.states_s,
            "broken_at_s": None if r.rejected else r.result.broken_at_s,
            "reaction_cycles": r.reaction.cycles if r.reaction else None,
            "messages": list(r.done.messages),
        }
        for r in runs
    ]
    (out / "report.json").write_text(json.dumps(records, indent=1) + "\n")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(programs: list[str], out: Path) -> int:
    paths = [Path(p) for p in programs] or [PROGRAMS_DIR / f"{name}.ngc" for name in PROGRAMS]
    with tempfile.TemporaryDirectory(prefix="edge-hil-linuxcnc-") as workdir:
        runs = asyncio.run(run_bench(paths, Path(workdir), log=lambda t: print(t, flush=True)))
    path = write_report(runs, out)
    print(table(runs))
    for line in reactions(runs):
        print(line)
    print(f"\nreport: {path}")
    expected = all(r.finished != bool(r.reaction and r.driver == AGENT) for r in runs)
    return 0 if expected else 1
