"""The machine behind the simulated controller: the `Plant` protocol and `SimplePlant`, a
deterministic little mill running a looping program.

Never reads the wall clock and never does I/O: whoever owns time calls `advance_to`. Time
only moves forward, on the plant's own fixed step, so a run is the same on any computer.
The full cutting-physics plant comes later behind the same protocol.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Protocol

from hil.register_map import AGENT_OVERRIDE, AGENT_OVERRIDE_RANGE_PCT, RUN_STATE


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


@dataclass(frozen=True)
class Block:
    """One block of the part program. `kind` is rapid, feed, dwell, spindle, tool or end.

    `depth_mm` is how deep the tool is engaged during a feed move (0 = air cut); `seconds` is
    how long a dwell, spindle, tool or end block lasts.
    """

    kind: str
    x: float | None = None
    y: float | None = None
    z: float | None = None
    feed_mm_min: float = 0.0
    depth_mm: float = 0.0
    seconds: float = 0.0
    rpm: float = 0.0
    tool: int = 0


#: A roughing and a finishing pass on a 120 mm face, about 45 s a cycle, then M30 and again.
DEMO_PROGRAM: tuple[Block, ...] = (
    Block("tool", tool=1, seconds=3.0),
    Block("spindle", rpm=8000, seconds=1.5),
    Block("rapid", x=0, y=0, z=5),
    Block("feed", z=-2, feed_mm_min=300, depth_mm=0.5),
    Block("feed", x=120, feed_mm_min=1200, depth_mm=2.0),
    Block("feed", y=10, feed_mm_min=1200, depth_mm=2.0),
    Block("feed", x=0, feed_mm_min=1000, depth_mm=3.0),
    Block("rapid", z=5),
    Block("rapid", y=20),
    Block("feed", x=120, feed_mm_min=1200, depth_mm=0.0),  # an air cut above the stock
    Block("feed", z=-1, feed_mm_min=300, depth_mm=0.5),
    Block("feed", x=0, feed_mm_min=1500, depth_mm=1.0),
    Block("rapid", z=50),
    Block("spindle", rpm=0, seconds=1.0),
    Block("tool", tool=2, seconds=3.0),
    Block("spindle", rpm=12000, seconds=1.5),
    Block("rapid", x=0, y=30, z=2),
    Block("feed", z=-0.5, feed_mm_min=300, depth_mm=0.3),
    Block("feed", x=120, feed_mm_min=2000, depth_mm=0.5),
    Block("rapid", z=50),
    Block("spindle", rpm=0, seconds=1.0),
    Block("end", seconds=4.0),
)


@dataclass(frozen=True)
class MachineLimits:
    """The controller's and the spindle's figures; each default says why it is what it is."""

    step_s: float = 0.01  # 100 Hz: finer than the agent's 10 Hz poll, coarse enough to be cheap
    max_feed_mm_min: float = 5000.0  # a small VMC's cutting-feed clamp
    rapid_mm_min: float = 8000.0  # rapids ignore feed overrides, as on most controllers
    feed_lag_s: float = 0.1  # axis acceleration, as a first-order lag
    spindle_ramp_rpm_s: float = 8000.0
    idle_load_pct: float = 5.0  # spindle turning in air
    cutting_coefficient: float = 0.01875  # load % per (mm depth x mm/min): 2 mm at 1200 -> 50 %
    load_lag_s: float = 0.15  # the load reading's first-order lag
    load_noise_pct: float = 0.3  # standard deviation, seeded: deterministic
    overload_pct: float = 150.0  # the controller's spindle-overload alarm threshold
    rated_power_kw: float = 7.5  # 100 % load = rated power
    ambient_degc: float = 22.0
    heating_degc_per_load_pct: float = 0.25  # steady state: 60 % load -> 15 K above ambient
    thermal_lag_s: float = 300.0


class SimplePlant:
    """A deterministic mill stepping `program` in a loop on a fixed internal step.

    effective feed = programmed x `feed_knob` % x agent override % (in 1 % steps, clamped to
    the controller's max feed); spindle load = idle + k x depth x actual feed, lagged; power
    follows load; temperature drifts slowly. Load above `overload_pct` latches the overload
    alarm: feed and spindle stop until `reset_alarm()` (like an operator's reset).
    """

    program_number = 1001

    def __init__(
        self,
        *,
        program: tuple[Block, ...] = DEMO_PROGRAM,
        limits: MachineLimits | None = None,
        seed: int = 0,
    ) -> None:
        self.limits = limits or MachineLimits()
        self.program = program
        self.feed_knob_pct = 100.0  # the operator's knob; the agent only reads it
        self._override_pct = 100.0
        self._rng = random.Random(seed)
        self._steps = 0
        self._pos = [0.0, 0.0, 50.0]
        self._actual_feed = 0.0
        self._modal_feed = 0.0
        self._rpm = 0.0
        self._rpm_command = 0.0
        self._tool = 0
        self._load = 0.0
        self._temp = self.limits.ambient_degc
        self._overload = False
        self._feed_held = False
        self._start_program()

    @property
    def time_s(self) -> float:
        return self._steps * self.limits.step_s

    def advance_to(self, t_s: float) -> None:
        target = math.floor(t_s / self.limits.step_s + 1e-9)
        while self._steps < target:
            self._step()
            self._steps += 1

    def write(self, name: str, value: float) -> None:
        if name != AGENT_OVERRIDE:
            raise NotWritable(f"{name}: read-only, only {AGENT_OVERRIDE} is writable")
        lo, hi = AGENT_OVERRIDE_RANGE_PCT
        self._override_pct = min(hi, max(lo, float(value)))

    def reset_alarm(self) -> None:
        """The operator's reset: clears the alarm and rewinds the program."""
        self._overload = False
        self._start_program()

    def feed_pct(self) -> int:
        """The feed percentage the controller applies: knob x agent override, in 1 % steps."""
        return round(round(self.feed_knob_pct) * round(self._override_pct) / 100)

    def values(self) -> dict[str, float]:
        block = self.program[self._block]
        running = not self._overload and block.kind != "end"
        if self._overload:
            state = RUN_STATE["alarm"]
        elif not running:
            state = RUN_STATE["idle"]
        elif self._feed_held:
            state = RUN_STATE["feed_hold"]
        else:
            state = RUN_STATE["running"]
        x, y, z = self._pos
        out = {
            "spindle_load": self._load,
            "spindle_speed": self._rpm,
            "programmed_feed": self._modal_feed,
            "actual_feed": self._actual_feed,
            "feed_knob": self.feed_knob_pct,
            "run_state": float(state),
            "alarm_spindle_overload": float(self._overload),
            "alarm_servo": 0.0,
            "alarm_emergency_stop": 0.0,
            "x_position": x,
            "y_position": y,
            "z_position": z,
            "program_number": float(self.program_number),
            "tool_number": float(self._tool),
            "block_number": float(10 * (self._block + 1)),
            "spindle_power": self._load / 100 * self.limits.rated_power_kw,
            "cycle_time": self._cycle_steps * self.limits.step_s,
            "spindle_temperature": self._temp,
            AGENT_OVERRIDE: self._override_pct,
            "spindle_on": float(self._rpm_command > 0),
            "program_running": float(running),
            "in_alarm": float(self._overload),
        }
        return out

    # -- the model ------------------------------------------------------------------------

    def _start_program(self) -> None:
        self._block = 0
        self._block_steps = 0
        self._cycle_steps = 0

    def _next_block(self) -> None:
        self._block_steps = 0
        self._block += 1
        if self._block == len(self.program):
            self._start_program()

    def _step(self) -> None:
        lim, dt = self.limits, self.limits.step_s
        block = self.program[self._block]
        depth = 0.0
        speed_target = 0.0
        self._feed_held = False
        if self._overload:
            self._rpm_command = 0.0
        else:
            self._cycle_steps += block.kind != "end"
            self._block_steps += 1
            if block.kind in ("rapid", "feed"):
                if block.kind == "rapid":
                    speed_target = lim.rapid_mm_min
                else:
                    self._modal_feed = block.feed_mm_min
                    pct = self.feed_pct()
                    self._feed_held = pct == 0
                    speed_target = min(block.feed_mm_min * pct / 100, lim.max_feed_mm_min)
                    depth = block.depth_mm
                if self._move_towards(block, self._actual_feed / 60 * dt):
                    self._next_block()
            else:
                if block.kind == "spindle":
                    self._rpm_command = block.rpm
                elif block.kind == "tool":
                    self._tool = block.tool
                if self._block_steps * dt >= block.seconds - 1e-9:
                    self._next_block()
        if speed_target < self._actual_feed:  # look-ahead slows down before the block starts
            self._actual_feed = speed_target
        else:
            self._actual_feed += (speed_target - self._actual_feed) * dt / lim.feed_lag_s
        ramp = lim.spindle_ramp_rpm_s * dt
        self._rpm += max(-ramp, min(ramp, self._rpm_command - self._rpm))
        spinning = self._rpm > 0
        load_target = 0.0
        if spinning:
            load_target = lim.idle_load_pct + lim.cutting_coefficient * depth * self._actual_feed
            load_target += self._rng.gauss(0.0, lim.load_noise_pct)
        self._load = max(0.0, self._load + (load_target - self._load) * dt / lim.load_lag_s)
        heat_target = lim.ambient_degc + lim.heating_degc_per_load_pct * self._load
        self._temp += (heat_target - self._temp) * dt / lim.thermal_lag_s
        if self._load > lim.overload_pct:
            self._overload = True

    def _move_towards(self, block: Block, travel_mm: float) -> bool:
        """Move along the straight line to the block's end point; True once there."""
        target = [
            p if t is None else t
            for p, t in zip(self._pos, (block.x, block.y, block.z), strict=True)
        ]
        delta = [t - p for p, t in zip(self._pos, target, strict=True)]
        remaining = math.sqrt(sum(d * d for d in delta))
        if remaining <= travel_mm or remaining < 1e-9:
            self._pos = target
            return True
        self._pos = [p + d * travel_mm / remaining for p, d in zip(self._pos, delta, strict=True)]
        return False
