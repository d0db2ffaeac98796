"""The adaptive feed controller: a sans-IO state machine around the control law.

Fed the samples the sources produced (each with its monotonic arrival time) and the time now,
it answers with the feed override it wants and the events to record. It never reads a clock,
never touches the machine and never waits: the control loop (`loop.py`) owns the time and
hands the override to the one actuator. docs/adaptive-control.md is its specification; the
safety rules it keeps are in docs/safety.md.

States: starting (inputs not all seen yet), idle (spindle off, program not running, or
control disabled for this tool or program: no writes), teach (a teach-in cut at the neutral
override), air (boost), entry, cutting (the PI law), hold (feed hold after an overload or a
breakage, until the program ends), fault (an input stale, bad or missing, the link down, a
controller alarm: override := min(current, safe) at once; a fault never raises the feed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from ..config import ControlConfig
from ..kernels.feedlaw import FeedLaw
from ..samples import Quality, Sample
from .breakage import BreakageRule, BreakageWatch
from .loss import ProfileLossWatch
from .noise import NoiseEstimate
from .part import PartRecord, PartRecorder
from .predictor import ReadingModel
from .preview import MIN_K_PCT, Preview, Timing
from .profile import Profile
from .teach import TeachIn, ToolRecord

NS = 1_000_000_000

#: How far the learned idle load moves toward each air-cut sample near it: about a 50-sample
#: average, a few tenths of a second at the usual poll rates.
IDLE_AVERAGING = 0.02

#: Samples in a row over idle + margin that make an entry: one noisy sample does not.
ENTRY_SAMPLES = 2

#: The override that stops the feed: a feed hold through the agent's own register.
FEED_HOLD = 0.0

#: Margins over the idle load (entry, learning idle) are at least this many noise sigmas.
NOISE_SIGMAS = 4.0
#: The predictor's correction (predictor.py) counts only beyond this many noise sigmas.
CORRECTION_SIGMAS = 3.0

#: "At the lowest override" for the overload rule: within this share of it (noise moves the
#: law's output a little off the clamp; 50.1 % is still at the 50 % floor).
AT_FLOOR_SHARE = 1.05

#: An overload's persistence counts on while the readings since it began are over its line on
#: the mean, each counting at most this far either way: one wild reading neither makes a hold
#: nor restarts the count.
OVER_STEP_PCT = 10.0

#: A severe overload holds sooner: when the load's excess over the hard limit, integrated over
#: time (% x s, as a drive's I2t protection counts), reaches what 10 % of the limit held for
#: `overload_persist_s` would add up to. 44 points over holds in a quarter of the persistence,
#: before a drive that trips at 150 % for 1 s does; 5 points over waits the whole persistence.
SEVERE_SHARE = 0.1
#: The longest gap between samples counted into that integral (a stale signal is a fault).
SEVERE_DT_NS = 100_000_000

#: A clean reading (its noise under its resolution) standing still is stuck when the override
#: moved this much (% of the programmed feed) in a cut since it last moved: the cutting load
#: follows the feed, and a register's resolution (0.1-1 %) is finer than 5 % of feed moves it.
FROZEN_FEED_CHANGE_PCT = 5.0
#: A breakage's level must be at least this share of the target's cutting load: a tool
#: barely touching the part has no load to lose.
BREAKAGE_MIN_SHARE = 0.25


class State(StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    TEACH = "teach"
    AIR = "air"
    ENTRY = "entry"
    CUTTING = "cutting"
    HOLD = "hold"
    FAULT = "fault"


#: States in which the tool may be cutting, so overload and breakage are watched.
_WATCHED = (State.TEACH, State.ENTRY, State.CUTTING, State.AIR)
#: States in which a learned profile scales the override where it knows of a cut ahead.
_PREVIEWED = (State.AIR, State.ENTRY, State.CUTTING)
#: Between polls of the positions the path is extrapolated at the last speed, this long at most.
PREVIEW_EXTRAPOLATE_S = 0.1
#: A stretch ahead this much harder than here (k) is met without a trim above 100 %.
HARDER_AHEAD = 1.1
#: The override written within this of its clamp, or the feed reported this far short of
#: the asked (% of the programmed), is saturated: the trim does not wind up.
SATURATED_SLACK_PCT = 3.0


@dataclass
class Command:
    """What one update decided: the override to write (None: write nothing) and events."""

    override: float | None
    events: list[tuple[str, dict]] = field(default_factory=list)


def required_inputs(cfg: ControlConfig) -> tuple[str, ...]:
    """The channels control cannot run without: one stale, bad or missing is a fault."""
    return tuple(
        name
        for name in (
            cfg.signal,
            cfg.override_tag,
            cfg.spindle_on_tag,
            cfg.program_running_tag,
            cfg.alarm_tag,
            cfg.tool_tag,
            cfg.program_tag,
            cfg.block_tag,
            cfg.knob_tag,
            cfg.enable_tag,
        )
        if name
    )


def control_inputs(cfg: ControlConfig) -> tuple[str, ...]:
    """Every channel the controller reads: the required ones, and those only the part
    record follows (the path's positions, the feed), which a fault never waits for."""
    recorded = (*cfg.path_tags, cfg.actual_feed_tag, cfg.programmed_feed_tag)
    return required_inputs(cfg) + tuple(name for name in recorded if name)


class AdaptiveController:
    """One machine's feed control. `update` is the only entry point that changes anything."""

    def __init__(self, cfg: ControlConfig, taught: dict[int, ToolRecord] | None = None):
        self.cfg = cfg
        self.taught = dict(taught or {})
        self._pending_taught: dict[int, ToolRecord] | None = None
        self.law = FeedLaw(
            cfg.kp,
            cfg.ki,
            cfg.override_min_pct,
            cfg.override_max_pct,
            cfg.rise_pct_per_s,
            cfg.fall_pct_per_s,
            cfg.safe_override_pct,
            cfg.deadband,
            cfg.neutral_override_pct,
        )
        self.state = State.STARTING
        self.link_up = True
        # Latest sample of each input and when it arrived (monotonic ns).
        self.latest: dict[str, tuple[int, Sample]] = {}
        self.override: float | None = None  # what the register holds, as far as we know
        self.idle_pct: float | None = cfg.idle_load_pct or None
        self.hold_reason = ""
        self.inputs = control_inputs(cfg)
        self._required = required_inputs(cfg)
        # Inputs that must be younger than `stale_s`: the signal and the run state. The others
        # (tool, program, block, knob, enable) may sit in a slow poll group: their samples'
        # quality (stale after their group's limit) is what counts.
        self._timely = frozenset(
            name
            for name in (cfg.signal, cfg.spindle_on_tag, cfg.program_running_tag, cfg.alarm_tag)
            if name
        )
        self._events: list[tuple[str, dict]] = []
        self._started_ns: int | None = None
        self._signal_changed_ns = 0
        self._override_at_change: float | None = None  # the override when the reading moved
        self._stuck = False  # judged frozen since it last moved
        self.loss = ProfileLossWatch()  # breakage against the learned profile
        self._resolution = math.inf  # the smallest move of the reading seen: its register's
        self._now_ns = 0
        self._settled_ns = 0
        self._over_idle = 0
        self._last_cut_override: float | None = None
        self._exit_override = 0.0
        self._last_signal_ns: int | None = None
        self._entry_until_ns = 0
        self._exit_since_ns: int | None = None
        self._over_since_ns: int | None = None
        # The readings' summed distance over the overload line since the overload began: the
        # count goes on while their mean is over it, so one noisy sample under the line does
        # not restart it, and a load that only sits at the line, noise across it, does not hold.
        self._over_sum = 0.0
        self._excess = 0.0  # load over the hard limit, integrated since the overload began (% s)
        self._excess_ns = 0  # the sample it was last added to at
        self.noise = NoiseEstimate()
        self.breakage = BreakageWatch(
            BreakageRule(
                window_ns=round(cfg.breakage_window_s * NS),
                spike_ratio=cfg.breakage_spike_ratio,
                drop_fraction=cfg.breakage_drop_fraction,
                min_share=BREAKAGE_MIN_SHARE,
            )
        )
        self._signal_load = math.nan  # the last load reading taken
        self._teach: TeachIn | None = None
        self._block: int | None = None
        self._cut_in_block = False
        self.parts = PartRecorder()
        self.last_part: PartRecord | None = None  # the last program run, once it ended
        # The learned profiles and the loop's timing (`set_profiles`), and this part's preview.
        self._profiles: dict[tuple[int, int], Profile] = {}
        self._timing = Timing()
        self._pending_profiles: tuple[dict, Timing] | None = None
        self._preview: Preview | None = None
        self._model: ReadingModel | None = None  # the reading by the profile, with a preview
        self._trim = False  # the law's override is a trim (%) of the profile's, not the override
        self._preview_tool: int | None = None
        # (ns, s mm along the profile's path, speed mm/s), and the part's own s then
        self._s_at: tuple[int, float, float] | None = None
        self._raw_s_mm = 0.0

    # -- the entry point ---------------------------------------------------------------------

    def update(self, now_ns: int, arrivals: list[tuple[int, Sample]]) -> Command:
        """Take the samples that arrived since the last update; decide for `now_ns`."""
        signal = self.cfg.signal
        self._now_ns = now_ns
        for arrived_ns, sample in arrivals:
            previous = self.latest.get(sample.channel)
            if sample.channel == signal and (previous is None or previous[1].value != sample.value):
                self._signal_changed_ns, self._override_at_change = arrived_ns, self.override
                self._stuck = False
                if previous is not None and math.isfinite(sample.value - previous[1].value):
                    self._resolution = min(self._resolution, abs(sample.value - previous[1].value))
            self.latest[sample.channel] = (arrived_ns, sample)
            if sample.channel == self.cfg.override_tag and sample.quality is Quality.GOOD:
                self.override = sample.value if self.override is None else self.override
        if self.state is State.STARTING:
            self._started_ns = self._started_ns if self._started_ns is not None else now_ns
            waited = now_ns - self._started_ns > self.cfg.stale_s * NS
            if not waited and any(name not in self.latest for name in self._required):
                return self._command(None)
        fault = self._fault(now_ns)
        self._follow_part(now_ns, arrivals)
        if fault:
            return self._command(self._enter_fault(fault))
        if self.state is State.STARTING:
            self._go(State.IDLE, "inputs ready")
        if not self._active():
            return self._command(self._enter_idle())
        if self.state in (State.IDLE, State.FAULT):
            self._start_control(recovered=self.state is State.FAULT)
        self._watch_block()
        for arrived_ns, sample in arrivals:
            if sample.channel == signal and self.state is not State.HOLD:
                self._on_signal(arrived_ns, sample.value)
        self._overload_due(now_ns)
        return self._command(self._desired())

    def set_taught(self, taught: dict[int, ToolRecord]) -> None:
        """New teach-in records (the file changed); used from the next program start, never
        in the middle of a cut. Safe to call from another thread (one reference swap)."""
        self._pending_taught = dict(taught)

    @property
    def previewing(self) -> bool:
        """The override written now is the learned profile's, trimmed by the law."""
        return self._trim

    def set_profiles(self, profiles: dict[tuple[int, int], Profile], timing: Timing) -> None:
        """New learned profiles (`ProfileBook.profiles`) and the loop's timing; used from the
        next program start. Safe to call from another thread (one reference swap)."""
        self._pending_profiles = (dict(profiles), timing)

    def commanded(self, override: float) -> None:
        """The actuator wrote `override`: that is what the register holds now."""
        self.override = override

    # -- inputs ------------------------------------------------------------------------------

    def _value(self, name: str) -> float:
        return self.latest[name][1].value

    def _fault(self, now_ns: int) -> str:
        """Why the inputs cannot be trusted now; "" when they can."""
        if not self.link_up:
            return "controller link down"
        stale_ns = self.cfg.stale_s * NS
        for name in self._required:
            seen = self.latest.get(name)
            if seen is None:
                return f"{name} missing"
            arrived_ns, sample = seen
            if sample.quality is not Quality.GOOD:
                return f"{name} {sample.quality.name.lower()}"
            if not math.isfinite(sample.value):
                return f"{name} not a number"
            if name in self._timely and now_ns - arrived_ns > stale_ns:
                return f"{name} stale"
        cfg = self.cfg
        if cfg.alarm_tag and self._value(cfg.alarm_tag):
            return "controller alarm"
        turning = self._value(cfg.spindle_on_tag) and self._value(cfg.program_running_tag)
        if cfg.frozen_s and turning and self._frozen(now_ns):
            return f"{cfg.signal} frozen"
        return ""

    def _frozen(self, now_ns: int) -> bool:
        """The load reading is stuck: it stood still for `frozen_s` though its noise moves it
        by a step of its resolution or more from poll to poll; or, a clean reading, quieter
        than its resolution (it stands still at a steady load), though the override moved
        under it in a cut by FROZEN_FEED_CHANGE_PCT."""
        if now_ns - self._signal_changed_ns <= self.cfg.frozen_s * NS:
            return False
        if not self._stuck:  # once stuck, stuck until the reading moves
            then, now = self._override_at_change, self.override
            moved = None not in (then, now) and abs(now - then) >= FROZEN_FEED_CHANGE_PCT
            in_cut = self.state in (State.ENTRY, State.CUTTING)
            self._stuck = self.noise.sigma >= self._resolution or (moved and in_cut)
        return self._stuck

    def _active(self) -> bool:
        cfg = self.cfg
        if not (self._value(cfg.spindle_on_tag) and self._value(cfg.program_running_tag)):
            return False
        if cfg.tools and int(self._value(cfg.tool_tag)) not in cfg.tools:
            return False
        if cfg.programs and int(self._value(cfg.program_tag)) not in cfg.programs:
            return False
        return not cfg.enable_tag or bool(self._value(cfg.enable_tag))

    # -- state changes -----------------------------------------------------------------------

    def _go(self, state: State, reason: str, **detail) -> None:
        if state is not self.state:
            change = {"from": self.state.value, "to": state.value, "reason": reason, **detail}
            self._events.append(("control_state", change))
            self.state = state

    def _enter_fault(self, reason: str) -> float | None:
        self.parts.reject(f"fault: {reason}")
        if self.state is not State.FAULT:
            self._finish_teach()
            self._go(State.FAULT, reason)
        if self.override is None:
            return None  # never read: min(current, safe) is unknown, so write nothing
        return min(self.override, self.cfg.safe_override_pct)

    def _enter_idle(self) -> float | None:
        was = self.state
        if was is State.IDLE:
            return None
        self._finish_teach()
        self._go(State.IDLE, "program not running, spindle off or control disabled")
        if was is State.STARTING or self.override is None:
            return None
        # The one write outside active control: leave the programmed feed as it was written.
        return self.cfg.neutral_override_pct

    def _start_control(self, recovered: bool) -> None:
        """Control starts (the program started, or was enabled), or resumes after a fault.
        A resumption keeps the idle load learned before: the tool may be in the material
        now, and its load is not the spindle turning in air (docs/adaptive-control.md)."""
        cfg = self.cfg
        if self._pending_taught is not None:
            self.taught, self._pending_taught = self._pending_taught, None
        tool = int(self._value(cfg.tool_tag)) if cfg.tool_tag else 0
        self.breakage.reset()
        self._trim = False  # the law is reset to the override below; a preview trims afresh
        self._over_since_ns = self._exit_since_ns = self._last_signal_ns = None
        resume = recovered and self.idle_pct is not None
        if not resume:
            self._settled_ns = self._now_ns + round(cfg.idle_settle_s * NS)
            self._last_cut_override = None
        self.law.reset(self.override if self.override is not None else cfg.neutral_override_pct)
        if cfg.target_mode == "teach_in" and tool not in self.taught:
            program = int(self._value(cfg.program_tag)) if cfg.program_tag else 0
            self._teach = TeachIn(tool, program, self.idle_pct or 0.0)
            self._go(State.TEACH, "no teach-in for this tool yet", tool=tool)
        elif resume and self._signal_load > self.idle_pct + self._margin():
            self._go(State.CUTTING, "resumed in the material", load_pct=self._signal_load)
        else:
            self._go(State.AIR, "resumed in air" if resume else "program running")

    def _finish_teach(self) -> None:
        if self._teach is None:
            return
        recorder, self._teach = self._teach, None
        record = recorder.finish(datetime.now(UTC).isoformat(timespec="seconds"))
        if record is not None:
            self.taught[record.tool] = record
            self._events.append(("teach_in_learned", {"record": record}))

    def _hold(self, kind: str, **detail) -> None:
        self.hold_reason = kind
        self.parts.reject(f"hold: {kind}")
        self._events.append((kind, detail))
        self._go(State.HOLD, kind)

    # -- the signal --------------------------------------------------------------------------

    def target_pct(self) -> float:
        cfg = self.cfg
        if cfg.target_mode == "teach_in":
            tool = int(self._value(cfg.tool_tag)) if cfg.tool_tag else 0
            record = self.taught.get(tool)
            if record is not None:
                return record.target_pct(cfg.teach_fraction, cfg.hard_limit_pct)
        return cfg.target_load_pct

    def _margin(self) -> float:
        """How far over idle the load must be to be cutting: the configured margin, or more
        on a noisy reading."""
        return max(self.cfg.entry_margin_pct, NOISE_SIGMAS * self.noise.sigma)

    def _on_signal(self, t_ns: int, load: float) -> None:
        cfg = self.cfg
        dt = (t_ns - self._last_signal_ns) / NS if self._last_signal_ns is not None else 0.0
        self._last_signal_ns = t_ns
        self._signal_load = load
        self.noise.add(load)
        idle = self._track_idle(t_ns, load)
        target = self.target_pct()
        span = target - idle
        cutting = load > idle + self._margin()
        self._over_idle = self._over_idle + 1 if cutting else 0
        if t_ns < self._settled_ns:
            return
        if cutting:
            self._cut_in_block = True
        seen = self._seen(t_ns, load, idle, target)
        if self._watch(t_ns, load, idle, span):
            return
        if self.state is State.TEACH:
            self._teach.observe(load, self._block or 0, cutting)
        elif self.state is State.AIR:
            if self._over_idle >= ENTRY_SAMPLES:
                self._entry_until_ns = t_ns + round(cfg.entry_s * NS)
                # A previewed cut starts untrimmed: the profile's override is the entry's.
                entry = 100.0 if self._trim else min(self.law.override, self._entry_override())
                self.law.reset(entry)
                self._go(State.ENTRY, "load rose over idle", load_pct=load)
            elif not self._trim:  # up at the rise rate to the air override; out of a boosted
                # cut, down at once (the profile's override instead where it knows a cut ahead)
                boost = self.law.override + cfg.rise_pct_per_s * dt
                wanted = min(self._air_override(), self._no_raise(boost, self.law.override))
                self.law.reset(wanted)
        elif self.state is State.ENTRY:
            if self._trim and seen > target and dt > 0:  # a cut the profile knew lighter
                self.law.limit(min(100.0, self.law.step(seen, target, idle, dt)))
            if not cutting:
                self.breakage.reset()
                self._go(State.AIR, "load fell back to idle")
            elif t_ns >= self._entry_until_ns:
                self._go(State.CUTTING, "entry done")
        elif self.state is State.CUTTING:
            before = self.law.override
            after = self.law.step(seen, target, idle, dt) if dt > 0 else before
            self.law.limit(self._no_raise(after, before))  # the knob down, or over target
            ahead = self._feed_forward() if self._trim else None
            if ahead is not None:  # no trim the override's clamp would undo: no windup
                if after > before and self._saturated():
                    self.law.limit(before)
                self.law.limit(max(before, 100.0 * cfg.override_max_pct / ahead))
                # Into a harder stretch `_desired` carries no trim over 100 %: the law is held
                # there too, or it winds up beneath the hold and lets go at the step.
                if self._harder_ahead():
                    self.law.limit(100.0)
            if load - idle < max(cfg.exit_fraction * span, self._margin()):
                if self._exit_since_ns is None:
                    self._exit_since_ns, self._exit_override = t_ns, before
                if t_ns - self._exit_since_ns >= cfg.exit_s * NS:
                    self._exit_since_ns = None
                    self._last_cut_override = self._exit_override
                    self.breakage.reset()
                    self._go(State.AIR, "load fell to the exit level", load_pct=load)
            else:
                self._exit_since_ns = None

    def _seen(self, t_ns: int, load: float, idle: float, target: float) -> float:
        """The load the law is fed: in a previewed part, the reading with the sensor's delay
        taken out by the profile (predictor.py); where the profile knows nothing of the
        tool's place (or the part left its way), the reading itself."""
        model = self._model
        if model is None:
            return load
        now = self._path_now()
        k = self._preview.profile.at(now[0]) if now and self._preview.matching else math.nan
        override = self.override if self.override is not None else math.nan
        knob = self._knob()
        # A feed move runs at most at the highest override: faster, the axes are in a rapid,
        # which cuts nothing (and makes the profile's air, k under MIN_K_PCT, no load).
        feed = min(self._feed_pct(override, knob), self.cfg.override_max_pct * knob / 100.0)
        if not math.isfinite(k * feed):
            model.reset()
            return load
        if k < MIN_K_PCT:
            k = 0.0
        # The profile learned a noisy reading's noise too, smaller but bin to bin: its wiggles
        # are no step to take the delay out of, and fed to the law they ratchet the override
        # down (it cuts faster than it raises). Only what stands out of the noise corrects.
        gap = model.correction(t_ns, idle + k * feed / 100.0)
        band = CORRECTION_SIGMAS * self.noise.sigma
        seen = load + math.copysign(max(0.0, abs(gap) - band), gap)
        # Towards the target only: the model may hold the law back from chasing the sensor's
        # delay, never move it by itself (a profile's edge a bin off is no load to cut for).
        return max(min(load, target), seen)

    def _entry_override(self) -> float:
        """The configured entry override, or (0) the one the last cut of this program ended
        with: the next cut is most likely like the last (a pass beside a pass)."""
        if self.cfg.entry_override_pct:
            return self.cfg.entry_override_pct
        if self._last_cut_override is None:
            return self.cfg.neutral_override_pct
        return self._last_cut_override

    def _no_raise(self, wanted: float, current: float) -> float:
        """The agent lowers but never raises while the operator's knob is below 100 % (they
        asked for less), or while the load read is over the target (whatever the state or the
        law's memory says, a raise then can only make it worse)."""
        cfg = self.cfg
        knob_down = cfg.knob_tag and self._value(cfg.knob_tag) < 100.0
        over = self._signal_load > self.target_pct()
        if knob_down or over:
            return min(wanted, current)
        return wanted

    def _track_idle(self, t_ns: int, load: float) -> float:
        """The spindle's load turning in air: configured, or learned. While the spindle
        settles after control starts, the idle level is the load itself (no entry can be
        seen); then, in air, an average of the samples near it (noise averages out, a warming
        spindle drifts), snapping down to any sample clearly below it. Never learned from a
        load over it: after a fault the tool may be in the material."""
        cfg = self.cfg
        if cfg.idle_load_pct:
            return cfg.idle_load_pct
        margin = self._margin()
        if self.idle_pct is None or t_ns < self._settled_ns or load < self.idle_pct - margin:
            self.idle_pct = load
        elif self.state is State.AIR and abs(load - self.idle_pct) < margin:
            self.idle_pct += (load - self.idle_pct) * IDLE_AVERAGING
        return self.idle_pct

    def _watch(self, t_ns: int, load: float, idle: float, span: float) -> bool:
        """Overload and breakage; True when they stopped the feed."""
        cfg = self.cfg
        if self.state not in _WATCHED:
            return False
        at_min = (
            self.state is State.CUTTING
            and self.law.override <= cfg.override_min_pct * AT_FLOOR_SHARE
        )
        over = load - cfg.hard_limit_pct
        if at_min:
            over = max(over, load - (idle + 1.1 * span))
        if self._over_since_ns is None and over > 0:
            self._over_since_ns, self._over_sum = t_ns, 0.0
            self._excess, self._excess_ns = 0.0, t_ns
        if self._over_since_ns is not None:
            self._over_sum += max(-OVER_STEP_PCT, min(OVER_STEP_PCT, over))
            dt_ns = min(t_ns - self._excess_ns, SEVERE_DT_NS)
            self._excess += max(0.0, load - cfg.hard_limit_pct) * dt_ns / NS
            self._excess_ns = t_ns
            if self._over_sum <= 0:
                self._over_since_ns = None
            else:
                severe = SEVERE_SHARE * cfg.hard_limit_pct * cfg.overload_persist_s
                if self._overload_persisted(t_ns) or self._excess >= severe:
                    since = self._over_since_ns
                    self._hold("overload", load_pct=load, since_ns=since, at_ns=t_ns)
                    return True
        delay = self._timing.sensor_delay_s
        if self._preview is not None and delay is not None:
            lost = self.loss.observe(
                t_ns, load - idle, self._preview, delay, BREAKAGE_MIN_SHARE * span
            )
            if lost is not None:
                self._hold("breakage", load_pct=load, idle_pct=idle, at_ns=t_ns, **lost)
                return True
        if self.state not in (State.ENTRY, State.CUTTING):
            return False
        feed = self.override if self._trim and self.override is not None else self.law.override
        if self.cfg.knob_tag:
            feed *= self._value(self.cfg.knob_tag) / 100.0
        block = self._block if self.cfg.block_tag else None
        seen = self.breakage.observe(t_ns, load - idle, feed, block, span, self.noise.sigma)
        if seen is not None:
            self._hold("breakage", load_pct=load, idle_pct=idle, at_ns=t_ns, **seen)
            return True
        return False

    def _overload_due(self, now_ns: int) -> None:
        """An overload's persistence runs on the clock, not from sample to sample: at a slow
        poll the hold would otherwise wait for the next sample past `overload_persist_s`."""
        if self.state in _WATCHED and self._overload_persisted(now_ns):
            since = self._over_since_ns
            self._hold("overload", load_pct=self._signal_load, since_ns=since, at_ns=now_ns)

    def _overload_persisted(self, t_ns: int) -> bool:
        """The load read has been over the overload line, on the mean, for
        `overload_persist_s` by `t_ns`."""
        since = self._over_since_ns
        return since is not None and t_ns - since >= self.cfg.overload_persist_s * NS

    def _good(self, name: str) -> float | None:
        """A configured input's latest value when it is good and a number; else None."""
        seen = self.latest.get(name) if name else None
        if seen is None or seen[1].quality is not Quality.GOOD or not math.isfinite(seen[1].value):
            return None
        return seen[1].value

    def _follow_part(self, now_ns: int, arrivals: list[tuple[int, Sample]]) -> None:
        """The part record: opened as the program starts (or another program does), filled
        with each load reading where the path has got to, closed (a `part` event) as the
        program ends. An unknown run state changes nothing: the part goes on."""
        cfg, parts = self.cfg, self.parts
        running = self._good(cfg.program_running_tag)
        if running is None:
            return
        program = int(self._good(cfg.program_tag) or 0)
        current = parts.current
        if current is not None and (not running or program != current.program):
            self.last_part = parts.finish(now_ns)
            self._events.append(("part", self.last_part.summary()))
        if not running:
            return
        if parts.current is None:
            parts.start(now_ns, program, self.state.value)
            if self._pending_profiles is not None:
                (self._profiles, self._timing), self._pending_profiles = (
                    self._pending_profiles,
                    None,
                )
            self._preview, self._preview_tool, self._s_at = None, None, None
            self._model = None
            self.loss.reset()
        channels = {sample.channel for _, sample in arrivals}
        moved = cfg.block_tag in channels or bool(channels.intersection(cfg.path_tags))
        if moved:
            block = self._good(cfg.block_tag)
            position = tuple(self._good(name) for name in cfg.path_tags)
            parts.move(
                None if block is None else int(block),
                position if position and None not in position else None,
            )
            self._moved(now_ns, program)
        knob = self._knob()
        tool = int(self._good(cfg.tool_tag) or 0)
        override = self.override if self.override is not None else math.nan
        feed = self._feed_pct(override, knob)
        if moved and self._preview is not None and self._s_at is not None:
            self.loss.moved(now_ns, self._s_at[1], feed)
        idle = self.idle_pct
        for arrived_ns, sample in arrivals:
            good = sample.quality is Quality.GOOD and math.isfinite(sample.value)
            if sample.channel == cfg.signal and good:
                cutting = idle is not None and sample.value > idle + self._margin()
                parts.reading(
                    arrived_ns,
                    sample.value,
                    self.target_pct(),
                    override,
                    knob,
                    feed,
                    tool,
                    cutting,
                )

    def _moved(self, now_ns: int, program: int) -> None:
        """The path moved on: where and how fast, and whether it still goes the profile's way
        (a `profile_mismatch` event once, and no preview for the rest of the part, if not)."""
        cfg, path = self.cfg, self.parts.path
        actual = self._good(cfg.actual_feed_tag) if cfg.actual_feed_tag else None
        if actual is not None:
            speed = actual / 60.0
        elif self._s_at is not None and now_ns > self._s_at[0]:
            speed = (path.s_mm - self._raw_s_mm) / ((now_ns - self._s_at[0]) / NS)
        else:
            speed = 0.0
        self._s_at, self._raw_s_mm = (now_ns, path.s_mm, speed), path.s_mm
        if not cfg.preview:
            return
        tool = int(self._good(cfg.tool_tag) or 0)
        if tool != self._preview_tool:
            profile = self._profiles.get((program, tool))
            # Full effect: the axes' lag, and the fall from the highest override to the lowest
            # at the fall rate (a harder stretch is met at the override it needs), and a tick.
            ramp_s = (cfg.override_max_pct - cfg.override_min_pct) / cfg.fall_pct_per_s
            lead_s = self._timing.axes_lag_s + ramp_s + cfg.period_s
            self._preview = profile and Preview(profile, lead_s, self._timing.margin_s)
            sensor = self._timing.sensor
            self._model = ReadingModel(*sensor) if profile and sensor is not None else None
            self._preview_tool = tool
        if self._preview is not None:
            why = self._preview.check(path.visits, path.s_mm)
            if why:
                detail = {"program": program, "tool": tool, "why": why}
                self._events.append(("profile_mismatch", detail))
            self._s_at = (now_ns, path.s_mm + self._preview.offset_mm, speed)

    def _feed_pct(self, override: float, knob: float) -> float:
        """The feed the axes run at, % of the programmed: the controller's actual feed over the
        programmed one where both are read (the axes' lag and the controller's clamps in it),
        else what the knob and the override ask."""
        cfg = self.cfg
        if cfg.actual_feed_tag and cfg.programmed_feed_tag:
            actual = self._good(cfg.actual_feed_tag)
            programmed = self._good(cfg.programmed_feed_tag)
            if actual is None or not programmed:
                return math.nan
            return 100.0 * actual / programmed
        return override * knob / 100.0

    def _watch_block(self) -> None:
        """Undercut: a block the teach-in cut in passed without cutting (a missing tool)."""
        cfg = self.cfg
        if not cfg.block_tag:
            return
        block = int(self._value(cfg.block_tag))
        if block == self._block:
            return
        previous, self._block = self._block, block
        cut, self._cut_in_block = self._cut_in_block, False
        tool = int(self._value(cfg.tool_tag)) if cfg.tool_tag else 0
        record = self.taught.get(tool)
        if previous is not None and record and previous in record.cut_blocks and not cut:
            self._events.append(("undercut", {"tool": tool, "block": previous}))

    # -- output ------------------------------------------------------------------------------

    def _desired(self) -> float | None:
        if self.state is State.HOLD:
            return FEED_HOLD
        if self.state is State.TEACH:
            return self.cfg.neutral_override_pct
        ahead = self._feed_forward() if self.state in _PREVIEWED else None
        if ahead is None:
            if self._trim:  # back to the law alone, from the override it last wrote
                self._trim = False
                back = self.override if self.override is not None else self.law.override
                self.law.reset(back)
            return self.law.override
        cfg = self.cfg
        if not self._trim:  # the law now trims the profile's override, from none (100 %)
            self._trim = True
            self.law.reset(100.0)
        # In air the profile's override alone; at an entry, cut by the law where the load
        # read is over target; into a harder stretch than here, no trim above 100 %: what
        # raised it (less stock here, a clamp) is not known to hold there, and the
        # profile's override is the safe side.
        trim = self.law.override if self.state in (State.ENTRY, State.CUTTING) else 100.0
        if trim > 100.0 and self._harder_ahead():
            trim = 100.0
        wanted = min(cfg.override_max_pct, max(cfg.override_min_pct, ahead * trim / 100.0))
        current = self.override if self.override is not None else wanted
        return self._no_raise(wanted, current)

    def _knob(self) -> float:
        """The operator's knob (%): 100 without a knob tag, NaN while it is not read good."""
        if not self.cfg.knob_tag:
            return 100.0
        knob = self._good(self.cfg.knob_tag)
        return math.nan if knob is None else knob

    def _saturated(self) -> bool:
        """A raise would not reach the cut: the override written is at its clamp, or the
        controller's own feed clamp holds the axes short of what it asks (the feed it
        reports, where read)."""
        cfg, written = self.cfg, self.override
        if written is None:
            return False
        if written >= cfg.override_max_pct - SATURATED_SLACK_PCT:
            return True
        knob = self._knob()
        feed = self._feed_pct(written, knob)
        return feed < written * knob / 100.0 - SATURATED_SLACK_PCT  # False if unknown (NaN)

    def _path_now(self) -> tuple[float, float] | None:
        """Where the tool is along the path now (mm) and its speed (mm/s), extrapolated from
        the last positions read; None without a preview or positions."""
        if self._preview is None or self._s_at is None:
            return None
        at_ns, s_mm, speed = self._s_at
        return s_mm + speed * min((self._now_ns - at_ns) / NS, PREVIEW_EXTRAPOLATE_S), speed

    def _feed_forward(self) -> float | None:
        """The override that holds the target where the tool will be when an override written
        now takes effect, by the learned profile; None where it knows of no cut there."""
        now = self._path_now()
        k = None if now is None else self._preview.k_at(*now)
        if k is None:
            return None
        return 100.0 * (self.target_pct() - (self.idle_pct or 0.0)) / k

    def _harder_ahead(self) -> bool:
        """The profile's hardest k ahead (the window the override is for) is over
        HARDER_AHEAD x the hardest in the lead's travel just behind, where the trim was
        learned (a window each: the profile's bin-to-bin noise is no step)."""
        s_mm, speed = self._path_now()
        ahead = self._preview.k_at(s_mm, speed)
        behind = self._preview.k_at(s_mm - speed * self._preview.lead_s, speed)
        return ahead is not None and (behind is None or ahead > HARDER_AHEAD * behind)

    def _air_override(self) -> float:
        """The override in air: the configured one, or the highest where the learned profile
        knows the path from here to the lead ahead as air (the tool went there part after
        part without cutting, so no material is there to enter at that feed)."""
        now = self._path_now()
        if now is not None and self._preview.known_air(*now):
            return self.cfg.override_max_pct
        return self.cfg.air_override_pct

    def _command(self, override: float | None) -> Command:
        self.parts.state(self._now_ns, self.state.value)
        events, self._events = self._events, []
        return Command(override, events)
