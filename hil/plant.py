"""The machine behind the simulated controller: the `Plant` protocol and `CuttingPlant`, a
milling machine whose spindle load comes from cutting physics.

Spindle power = idle + Kc x MRR / (60e6 x eta), MRR from the engagement: given per segment,
or worked out by the stock model as the tool moves (hil/scenario.py). Actual feed =
programmed x operator knob x agent override, in 1 % steps, within the controller's clamps;
with `[machine] override_watchdog_s` set, an override the agent has not written for that long
falls to min(current, 100 %), as a controller-side watchdog does (docs/safety.md).
The controller reads the load through a sensor with lag, dead time, noise and quantisation.

Never reads the wall clock and never does I/O: whoever owns time calls `advance_to`. Time
only moves forward, on the plant's own fixed step, and randomness is seeded, so the same
scenario and seed give the same run, bit for bit, on any computer.
"""

from __future__ import annotations

import array
import math
import random
from dataclasses import dataclass, field
from typing import Protocol

from hil.physics import LoadSensor
from hil.register_map import AGENT_OVERRIDE, AGENT_OVERRIDE_RANGE_PCT, RUN_STATE
from hil.scenario import SCENARIO_DIR, Event, Scenario, Segment, load_scenario
from hil.stock import StockModel


class Plant(Protocol):
    """A machine the simulated controller serves through its register map."""

    def advance_to(self, t_s: float) -> None:
        """Step the model to time `t_s` (seconds since the plant started); never backwards."""

    def values(self) -> dict[str, float]:
        """Physical values by register-map tag name, one for every tag in `register_map.TAGS`."""

    def write(self, name: str, value: float) -> None:
        """The agent's write; only `agent_feed_override` is writable."""


class NotWritable(ValueError):
    """A write to a tag the machine does not accept writes to."""


#: What the tool is doing, as recorded in the trace and plotted.
MOTION = {"idle": 0, "rapid": 1, "air": 2, "cut": 3, "dwell": 4, "hold": 5, "alarm": 6}

TRACE_COLUMNS = (
    "t_s",
    "load_true_pct",  # the load the spindle really has
    "load_pct",  # what the controller reads (the sensor's output)
    "override_pct",  # the agent's request
    "feed_pct",  # what the controller applies: knob x override, 1 % steps, clamped
    "feed_mm_min",  # actual path speed
    "programmed_mm_min",
    "motion",  # MOTION code
    "part",
    "area_mm2",  # engaged cross-section (a_p x a_e)
    "kc",  # specific cutting force of what is engaged, wear included (0 in air)
)

_AMBIENT_DEGC = 22.0
_HEATING_DEGC_PER_LOAD_PCT = 0.25  # steady state: 60 % load -> 15 K above ambient
_THERMAL_LAG_S = 300.0


@dataclass
class RunResult:
    """What the plant measured of a run: the figures the HIL report is made of."""

    part_times_s: list[float] = field(default_factory=list)
    finished: bool = False
    alarm_at_s: float | None = None
    peak_load_pct: float = 0.0
    above_limit_s: float = 0.0
    broken_at_s: float | None = None
    fault_at_s: float | None = None  # when the first sensor freeze or link loss began

    @property
    def cycle_time_s(self) -> float:
        return sum(self.part_times_s)


@dataclass(frozen=True)
class _Piece:
    """One step of the plant's program: a move (straight, from `start` to `end`) or a dwell."""

    kind: str  # rapid, cut or dwell
    start: tuple[float, float, float]
    end: tuple[float, float, float]
    feed_mm_min: float = 0.0
    seconds: float = 0.0
    segment: Segment | None = None  # given engagement; None: the stock model's

    @property
    def length_mm(self) -> float:
        return math.dist(self.start, self.end)


def program_of(scenario: Scenario) -> tuple[_Piece, ...]:
    """The scenario's work as pieces: the spindle start, then the segments laid end to end
    along X, or the moves."""
    pieces = []
    if scenario.segments:
        x = 0.0
        for seg in scenario.segments:
            end = x + seg.length_mm
            pieces.append(
                _Piece(seg.kind, (x, 0.0, 0.0), (end, 0.0, 0.0), seg.feed_mm_min, seg.seconds, seg)
            )
            x = end
    else:
        here = scenario.start
        for move in scenario.moves:
            end = (move.x, move.y, move.z)
            pieces.append(_Piece("rapid" if move.rapid else "cut", here, end, move.feed_mm_min))
            here = end
    origin = pieces[0].start
    spindle_start = _Piece("dwell", origin, origin, seconds=scenario.machine.spindle_start_s)
    return (spindle_start, *pieces)


def new_stock(scenario: Scenario) -> StockModel | None:
    """A fresh blank of the scenario's stock; None when its engagement is given per segment."""
    spec = scenario.stock
    if spec is None:
        return None
    return StockModel(
        box=spec.box,
        top_z=spec.top_z,
        kc=scenario.kc(spec.material),
        tool_diameter_mm=scenario.tool.diameter_mm,
        cell_mm=spec.cell_mm,
        regions=spec.regions,
        hard_spots=spec.hard_spots,
    )


def cut_along(stock: StockModel, a, b, max_step_mm: float):
    """Cut the stock along the straight line a -> b in equal steps of at most `max_step_mm`;
    for each: (length mm, Kc, volume removed mm³, lateral cross-section mm²)."""
    length = math.dist(a, b)
    n = max(1, math.ceil(length / max_step_mm))
    for i in range(1, n + 1):
        p0 = tuple(s + (e - s) * (i - 1) / n for s, e in zip(a, b, strict=True))
        p1 = tuple(s + (e - s) * i / n for s, e in zip(a, b, strict=True))
        eng = stock.step(*p0, *p1)
        lateral = math.dist(p0[:2], p1[:2])
        plunge = max(0.0, p0[2] - p1[2])
        yield (
            length / n,
            eng.kc,
            eng.area_mm2 * lateral + eng.plunge_area_mm2 * plunge,
            eng.area_mm2,
        )


class CuttingPlant:
    """A machine running `scenario` for its number of parts, then idle (or again, if `loop`).

    `record=True` keeps a trace of every step (`trace`, columns `TRACE_COLUMNS`) for reports;
    leave it off for long-running serving. `result` holds the run's figures.
    """

    program_number = 1001

    def __init__(self, scenario: Scenario, *, loop: bool = False, record: bool = False):
        self.scenario = scenario
        self.machine = scenario.machine
        self.loop = loop
        self.feed_knob_pct = 100.0  # the operator's knob; the agent only reads it
        self._override_pct = 100.0
        self._written_s = 0.0  # the agent's last write, for the override watchdog
        self._rng = random.Random(scenario.seed)
        self.sensor = self._new_sensor()
        self.trace = {name: array.array("d") for name in TRACE_COLUMNS} if record else None
        self._steps = 0
        self._temp = _AMBIENT_DEGC
        self._driven_to: tuple[float, float, float] | None = None  # see `drive`
        self._driven_running = False
        self._heading = (0.0, 0.0, 0.0)
        self._engaged_kc = 0.0
        self._start_run()

    # -- the Plant protocol ---------------------------------------------------------------

    @property
    def time_s(self) -> float:
        return self._steps * self.machine.step_s

    def advance_to(self, t_s: float) -> None:
        target = math.floor(t_s / self.machine.step_s + 1e-9)
        while self._steps < target:
            if self._driven_to is not None:  # cover the rest of the way in equal steps
                share = 1.0 / (target - self._steps)
                self._heading = tuple(
                    p + (q - p) * share for p, q in zip(self._pos, self._driven_to, strict=True)
                )
            self._steps += 1
            self._step()

    def write(self, name: str, value: float) -> None:
        if name != AGENT_OVERRIDE:
            raise NotWritable(f"{name}: read-only, only {AGENT_OVERRIDE} is writable")
        lo, hi = AGENT_OVERRIDE_RANGE_PCT
        self._override_pct = min(hi, max(lo, float(value)))
        self._written_s = self.time_s

    def values(self) -> dict[str, float]:
        running = self.running
        if self._alarm:
            state = RUN_STATE["alarm"]
        elif not running:
            state = RUN_STATE["idle"]
        elif self._feed_held:
            state = RUN_STATE["feed_hold"]
        else:
            state = RUN_STATE["running"]
        x, y, z = self._pos
        spinning = running and not self._alarm
        reading = self.sensor.reading
        return {
            "spindle_load": reading,
            "spindle_speed": self.machine.spindle_rpm if spinning else 0.0,
            "programmed_feed": self._programmed,
            "actual_feed": self._speed,
            "feed_knob": self.feed_knob_pct,
            "run_state": float(state),
            "alarm_spindle_overload": float(self._alarm),
            "alarm_servo": 0.0,
            "alarm_emergency_stop": 0.0,
            "x_position": x,
            "y_position": y,
            "z_position": z,
            "program_number": float(self.program_number),
            "tool_number": float(self.scenario.tool.number),
            "block_number": float(10 * (self._index + 1)),
            "spindle_power": reading / 100 * self.machine.rated_power_kw,
            "cycle_time": self._part_steps * self.machine.step_s,
            "spindle_temperature": self._temp,
            AGENT_OVERRIDE: self._override_pct,
            "spindle_on": float(spinning),
            "program_running": float(running),
            "in_alarm": float(self._alarm),
        }

    # -- what the bench asks besides -------------------------------------------------------

    @property
    def running(self) -> bool:
        external = self._driven_to is None or self._driven_running
        changing = self._changing_steps > 0
        return external and not changing and not self.result.finished and not self._alarm

    @property
    def done(self) -> bool:
        """The run is over: every part made, or stopped by an alarm (a part change is not)."""
        return self.result.finished or self._alarm

    def drive(
        self, x: float, y: float, z: float, *, running: bool, programmed_feed_mm_min: float = 0.0
    ) -> None:
        """Tool positions from outside (a real motion controller) instead of the scenario's
        moves: the tool reaches (x, y, z) at the next `advance_to`, moving evenly over the
        steps it takes, and the stock model works out the cut. `running` is the controller's
        program state: its rising edge starts a part, its falling edge ends one."""
        if self.stock is None:
            raise ValueError(f"{self.scenario.source}: only a [stock] scenario can be driven")
        if self._driven_to is None:
            self._pos = (x, y, z)
        if running and not self._driven_running:
            self._part_steps = 0
        elif self._driven_running and not running:
            self._end_part()
        self._driven_to = (x, y, z)
        self._driven_running = running
        self._programmed = programmed_feed_mm_min

    def feed_pct(self) -> int:
        """The feed percentage the controller applies: knob x agent override, in 1 % steps."""
        pct = round(round(self.feed_knob_pct) * round(self._override_pct) / 100)
        return min(pct, int(self.machine.max_feed_pct))

    def reset_alarm(self) -> None:
        """The operator's reset: clears the alarm and starts the program again."""
        self._start_run()

    def link_down(self) -> bool:
        """True while a `link_loss` event of the scenario is on (the bench applies it)."""
        return self._fault_on("link_loss")

    def _fault_on(self, kind: str) -> bool:
        """True while an event of `kind` (sensor_freeze, link_loss) is on at this step."""
        now = self.time_s
        for event, onset in zip(self.scenario.events, self._onsets, strict=True):
            if event.kind == kind and onset is not None and onset <= now < onset + event.duration_s:
                return True
        return False

    def _place_faults(self) -> None:
        """Start the freezes and link losses placed on the path whose place has come; note
        when the first fault began."""
        now = self.time_s
        for i, event in enumerate(self.scenario.events):
            if event.kind == "breakage":
                continue
            onset = self._onsets[i]
            if onset is None and event.part == self._part and self._part_mm >= event.at_mm:
                onset = self._onsets[i] = now
            if onset is not None and onset <= now + 1e-9 and self.result.fault_at_s is None:
                self.result.fault_at_s = onset

    # -- the model --------------------------------------------------------------------------

    def _new_sensor(self) -> LoadSensor:
        s = self.scenario.sensor
        return LoadSensor(
            self.machine.step_s, s.lag_s, s.dead_time_s, s.quantum_pct, s.noise_pct, self._rng
        )

    def _start_run(self) -> None:
        self.result = RunResult()
        self._alarm = False
        self._overload_steps = 0
        self._part = 1
        self._breakage: Event | None = None
        self._spike_until_s = 0.0
        # when each freeze and link loss begins (plant time): its start_s, or once the tool
        # reaches its place on the path (None until then); breakages keep None here
        self._onsets: list[float | None] = [
            None if e.by_position or e.kind == "breakage" else e.start_s
            for e in self.scenario.events
        ]
        self._start_part()

    def _start_part(self) -> None:
        """A fresh blank on the table and the program from its first piece: the part's own
        (`Scenario.variant`)."""
        made = self.scenario.variant(self._part)
        self.program = program_of(made)
        self.stock = new_stock(made)
        self._changing_steps = 0
        self._index = 0
        self._piece_mm = 0.0
        self._piece_steps = 0
        self._part_steps = 0
        self._part_mm = 0.0
        self._pos = self.program[0].start
        self._speed = 0.0
        self._programmed = 0.0
        self._feed_held = False

    def _step(self) -> None:
        m, dt = self.machine, self.machine.step_s
        watchdog_s = m.override_watchdog_s
        if watchdog_s and self.time_s - self._written_s >= watchdog_s - 1e-9:
            # The controller's watchdog: an override nobody refreshes falls, never rises.
            self._override_pct = min(self._override_pct, 100.0)
        motion, area, cutting_kw = "idle", 0.0, 0.0
        self._engaged_kc = 0.0
        if self._changing_steps:
            self._changing_steps -= 1
            if not self._changing_steps:
                self._part += 1
                self._start_part()
        elif self.running:
            self._part_steps += 1
            if self._driven_to is None:
                motion, area, cutting_kw = self._move(dt)
            else:
                motion, area, cutting_kw = self._move_driven(dt)
        elif self._alarm:
            motion = "alarm"
        if self._broken_now():
            spike = self.time_s < self._spike_until_s
            cutting_kw *= self._breakage.spike_factor if spike else self._breakage.residual
        spinning = self.running
        load = 100 * (m.idle_power_kw + cutting_kw) / m.rated_power_kw if spinning else 0.0
        self._watch(load)
        reading = self.sensor.reading
        self.sensor.update(load)
        self._place_faults()
        if self._fault_on("sensor_freeze"):
            self.sensor.reading = reading
        heat_target = _AMBIENT_DEGC + _HEATING_DEGC_PER_LOAD_PCT * self.sensor.reading
        self._temp += (heat_target - self._temp) * dt / _THERMAL_LAG_S
        if self.trace is not None:
            row = (
                self.time_s,
                load,
                self.sensor.reading,
                self._override_pct,
                float(self.feed_pct()),
                self._speed,
                self._programmed,
                float(MOTION[motion]),
                float(self._part),
                area,
                self._engaged_kc,
            )
            for column, value in zip(self.trace.values(), row, strict=True):
                column.append(value)

    def _move(self, dt: float) -> tuple[str, float, float]:
        """Advance along the program by one step: (motion, engaged area, cutting power kW)."""
        m = self.machine
        piece = self.program[self._index]
        if piece.kind == "dwell":
            self._speed = 0.0
            self._piece_steps += 1
            if self._piece_steps * dt >= piece.seconds - 1e-9:
                self._next_piece()
            return "dwell", 0.0, 0.0
        if piece.kind == "rapid":
            target = m.rapid_mm_min
            self._feed_held = False
        else:
            self._programmed = piece.feed_mm_min
            pct = self.feed_pct()
            self._feed_held = pct == 0
            target = min(piece.feed_mm_min * pct / 100, m.max_feed_mm_min)
        if target < self._speed:  # look-ahead: the axes slow down before the change
            self._speed = target
        else:
            self._speed += (target - self._speed) * (1.0 - math.exp(-dt / m.feed_lag_s))
        travel = self._speed / 60 * dt
        kc_volume, volume, area = 0.0, 0.0, 0.0
        while travel > 1e-12 and piece.kind != "dwell":
            ahead = min(travel, piece.length_mm - self._piece_mm)
            kc, mm3, area = self._cut(piece, ahead)
            kc_volume += kc * mm3
            volume += mm3
            travel -= ahead
            self._part_mm += ahead
            if self._piece_mm >= piece.length_mm - 1e-9:
                if not self._next_piece():
                    break
                piece = self.program[self._index]
                if piece.kind != self.program[self._index - 1].kind:
                    break  # a change of kind starts with the next step's speed
        if self._feed_held:
            return "hold", 0.0, 0.0
        if volume <= 0.0:
            return ("rapid" if piece.kind == "rapid" else "air"), 0.0, 0.0
        return "cut", area, self._cutting_kw(kc_volume / volume, volume, dt)

    def _move_driven(self, dt: float) -> tuple[str, float, float]:
        """One step of a `drive`n tool: wherever the motion controller put it."""
        start, self._pos = self._pos, self._heading
        travel = math.dist(start, self._pos)
        self._speed = travel / dt * 60
        self._part_mm += travel
        if not travel:
            return "hold", 0.0, 0.0
        kc, volume, area = self._stock_cut(start, self._pos)
        if volume <= 0.0:
            return "air", 0.0, 0.0
        return "cut", area, self._cutting_kw(kc, volume, dt)

    def _cutting_kw(self, kc: float, volume_mm3: float, dt: float) -> float:
        """Cutting power for `volume_mm3` removed in `dt` s from material `kc`, worn tool."""
        wear = 1.0 + self.scenario.tool.wear_kc_per_part * (self._part - 1)
        self._engaged_kc = kc * wear
        return self._engaged_kc * (volume_mm3 / dt * 60) / (60e6 * self.machine.efficiency)

    def _cut(self, piece: _Piece, ahead_mm: float) -> tuple[float, float, float]:
        """Move `ahead_mm` along the piece: (Kc, volume removed mm³, engaged area mm²)."""
        seg = piece.segment
        before = self._piece_mm
        self._piece_mm += ahead_mm
        end = self._piece_mm / piece.length_mm if piece.length_mm else 1.0
        pos = tuple(
            a + (b - a) * min(1.0, end) for a, b in zip(piece.start, piece.end, strict=True)
        )
        previous, self._pos = self._pos, pos
        if piece.kind == "rapid":
            return 0.0, 0.0, 0.0
        if seg is not None:
            area = seg.depth_mm * seg.width_mm
            # the hard zones holding the middle of the stretch moved this step
            kc = self.scenario.kc(seg.material) * seg.kc_factor((before + self._piece_mm) / 2)
            return kc, area * ahead_mm, area
        return self._stock_cut(previous, pos)

    def _stock_cut(self, a, b) -> tuple[float, float, float]:
        """The stock model's cut from a to b, in sub-steps under a quarter of the tool."""
        steps = list(cut_along(self.stock, a, b, self.scenario.tool.diameter_mm / 4))
        volume = sum(mm3 for _, _, mm3, _ in steps)
        kc_volume = sum(kc * mm3 for _, kc, mm3, _ in steps)
        return (kc_volume / volume if volume else 0.0), volume, steps[-1][3]

    def _next_piece(self) -> bool:
        """On to the next piece; False when the part (or the whole run) is over."""
        self._index += 1
        self._piece_mm = 0.0
        self._piece_steps = 0
        if self._index < len(self.program):
            return True
        self._end_part()
        return False

    def _end_part(self) -> None:
        """Count the part's time; then the next part, the next loop, or the end."""
        self.result.part_times_s.append(self._part_steps * self.machine.step_s)
        change = round(self.machine.part_change_s / self.machine.step_s)
        if self._part < self.scenario.parts and change and self._driven_to is None:
            self._changing_steps = change  # program ended, spindle off; the next part after
            self._speed = 0.0
        elif self._part < self.scenario.parts:
            self._part += 1
            self._start_part()
        elif self.loop:
            self._start_run()
        else:
            self.result.finished = True
            self._index = len(self.program) - 1
            self._speed = 0.0

    def _broken_now(self) -> bool:
        """Breaks the tool when the scenario says so; True once it is broken."""
        if self._breakage is None:
            for event in self.scenario.events:
                if (
                    event.kind == "breakage"
                    and event.part == self._part
                    and self._part_mm >= event.at_mm
                ):
                    self._breakage = event
                    self._spike_until_s = self.time_s + event.spike_s
                    self.result.broken_at_s = self.time_s
        return self._breakage is not None

    def _watch(self, load_pct: float) -> None:
        """Peak load, time above the hard limit, and the drive's overload alarm."""
        m, result = self.machine, self.result
        result.peak_load_pct = max(result.peak_load_pct, load_pct)
        if load_pct > self.scenario.control.hard_limit_pct:
            result.above_limit_s += m.step_s
        self._overload_steps = self._overload_steps + 1 if load_pct > m.overload_alarm_pct else 0
        if self._overload_steps * m.step_s >= m.overload_alarm_s - 1e-9 and not self._alarm:
            self._alarm = True
            result.alarm_at_s = self.time_s
            self._speed = 0.0


def demo_plant() -> CuttingPlant:
    """The machine `make demo` and `python -m hil serve` run: the demo part, in a loop."""
    return CuttingPlant(load_scenario(SCENARIO_DIR / "demo_part.toml"), loop=True)
