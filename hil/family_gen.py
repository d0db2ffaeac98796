"""The randomized scenario family's generator: seeded cases drawn from declared ranges.

`generate(seed, count)` gives `count` cases; case `index` draws from its own generator seeded by
`"{seed}.{index}"`, so `case(seed, index)` rebuilds any one of them alone, bit for bit. A case
is an in-memory `Scenario` (no TOML), a poll period, a fault class and, for a fault, where on
the path it strikes. The ranges are the table below (docs/hil-scenarios.md, "The family").
Never runs anything and never does I/O.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from hil.physics import MATERIALS, feed_for_power
from hil.scenario import (
    Control,
    Event,
    HardZone,
    Machine,
    Move,
    Scenario,
    Segment,
    Sensor,
    StockSpec,
    Tool,
)
from hil.stock import Box, HardSpot, HeightRegion

# -- the ranges (documented in docs/hil-scenarios.md; change both together) ------------------
TARGET_PCT = (60.0, 80.0)
HARD_LIMIT_PCT = 110.0
NOISE_PCT = (0.0, 3.0)
LAG_S = (0.05, 0.5)
DEAD_TIME_S = (0.0, 0.1)
POLL_S = (0.02, 0.1)  # drawn in 10 ms steps, the plant's and the loop's step
DEFAULT_SENSOR_SHARE = 0.3  # cases with the default sensor (lag 0.15 s, dead time 0.05 s)
PARTS = (1, 3)
CUTS_PER_PART = (1, 3)
STOCK_SHARE = 0.35  # cases whose engagement the stock model works out
CUTTING_S_PER_CASE = (18.0, 36.0)  # cutting time of the whole case at a fixed 100 %
WEAR_KC_PER_PART = (0.0, 0.05)
MAX_FEED_PCT = (110.0, 150.0)  # the controller's override clamp, drawn in half the cases
FEED_CLAMP_SHARE = 0.3  # cases whose max_feed_mm_min binds: 1.0-1.4 x the fastest cut's feed
FEED_CLAMP_OVER = (1.0, 1.4)
PROGRAMMED_SHARE = (0.35, 1.3)  # load at 100 %, as a share of the target's cutting load
LIGHT_CUT_SHARE = (0.25, 0.35)  # the `light_cut` placement's cut
FEED_MM_MIN = (300.0, 3000.0)  # drawn first; the depth is solved for the share
WIDTH_MM = (1.5, 10.0)
TOOL_DIAMETER_MM = 12.0
STRETCHES_PER_CUT = (1, 4)  # engagement levels in a cut: 0-3 steps
STEP_DOWN = (0.4, 1.0)
STEP_UP = (1.0, 1.6)  # capped per case so that a target-held cut stays under the hard limit
STRETCH_S = (1.5, 8.0)
SHORT_STRETCH_S = (0.3, 1.0)
SHORT_STRETCH_SHARE = 0.25
ZONE_KC = (1.15, 1.5)  # also capped, as steps are
ZONES_PER_CUT_WEIGHTS = (0.45, 0.35, 0.2)  # 0, 1 or 2 (two: in series)
ZONE_S = (0.3, 3.0)
SKIN_MM = (2.0, 10.0)
ZONE_AT_ENTRY_SHARE = 0.3
#: A rise must stay within the step cap of the lowest work of this much cutting before it:
#: two rises closer than the agent can settle count as one.
SETTLE_WINDOW_S = 2.0
#: Work at 100 % at most this share of the target's cutting load in no-fault work: at the 50 %
#: floor it stays below the target even with the most wear (no overload a fault did not make).
MAX_WORK_SHARE = 1.8
AIR_MM = (5.0, 60.0)
RAPID_MM = (20.0, 80.0)
# faults
CLASS_WEIGHTS = {
    "no_fault": 0.55,
    "breakage": 0.1125,
    "overload": 0.1125,
    "sensor_freeze": 0.1125,
    "link_loss": 0.1125,
}
PLACEMENTS = ("entry", "first_10mm", "steady", "light_cut", "after_step")
SPIKE_FACTOR = (2.0, 4.0)
SPIKE_S = (0.02, 0.1)
RESIDUAL = (0.0, 0.2)
OUTAGE_S = (0.3, 3.0)  # sensor freeze and link loss
ENTRY_ONSET_MM = (0.0, 1.5)
FIRST_MM = (2.0, 10.0)
AFTER_STEP_MM = (2.0, 8.0)
STEADY_ONSET_S = (2.0, 4.0)  # into the faulted stretch, at 100 %
OVERLOAD_ZONE_S = (1.5, 2.5)  # at 100 %: 3-5 s of cutting at the 50 % floor
#: Overload at the floor: above the hard limit by this much (kind "limit") ...
OVER_LIMIT_PCT = (5.0, 25.0)
#: ... or between target + this share of the cutting load and 3 % under the hard limit ("floor").
OVER_FLOOR_SHARE = 0.15


@dataclass(frozen=True)
class Case:
    """One member of the family: its scenario, how often the agent polls, and its fault."""

    id: str  # "SEED.INDEX": `case(*parse_id(id))` rebuilds it
    scenario: Scenario
    poll_s: float
    fault_class: str  # no_fault, breakage, overload, sensor_freeze, link_loss
    placement: str = ""  # one of PLACEMENTS, for a fault
    onset_mm: float = 0.0  # along the faulted part's path
    fault_part: int = 1
    toolpath: str = "segments"  # or "stock"
    overload_kind: str = ""  # "limit" or "floor"


@dataclass(frozen=True)
class _Zone:
    from_mm: float
    to_mm: float
    kc_factor: float


@dataclass
class _Cut:
    """One cut as planned: its base engagement and feed, then levels of work along it."""

    share: float  # load at 100 % over the first level, share of the target's cutting load
    feed: float
    depth: float
    width: float
    lengths: list[float]  # mm of each level
    factors: list[float]  # work of each level over the first's
    zones: list[_Zone]
    fault_at_mm: float | None = None  # from the cut's entry

    @property
    def length_mm(self) -> float:
        return sum(self.lengths)

    def starts(self) -> list[float]:
        return [sum(self.lengths[:i]) for i in range(len(self.lengths))]


def parse_id(case_id: str) -> tuple[int, int]:
    """ "SEED.INDEX" as (seed, index); a one-line error otherwise."""
    seed, dot, index = case_id.partition(".")
    if not (dot and seed.isdigit() and index.isdigit()):
        raise ValueError(f"{case_id}: a case id is SEED.INDEX, e.g. 1.42")
    return int(seed), int(index)


def generate(seed: int, count: int) -> list[Case]:
    return [case(seed, index) for index in range(count)]


@dataclass(frozen=True)
class Limits:
    """The ranges above that the series family (`series_gen.py`) draws otherwise."""

    parts: tuple[int, int] = PARTS
    cutting_s: tuple[float, float] = CUTTING_S_PER_CASE
    wear_kc_per_part: tuple[float, float] = WEAR_KC_PER_PART
    max_work_share: float = MAX_WORK_SHARE


def case(seed: int, index: int) -> Case:
    rng = random.Random(f"{seed}.{index}")
    fault = rng.choices(list(CLASS_WEIGHTS), list(CLASS_WEIGHTS.values()))[0]
    placement = rng.choice(PLACEMENTS) if fault != "no_fault" else ""
    return draw(rng, f"{seed}.{index}", fault, placement)


def draw(
    rng: random.Random, case_id: str, fault: str, placement: str, limits: Limits = Limits()
) -> Case:
    """One case with `fault` at `placement`, drawn from `rng` within `limits`."""
    return _Drawer(rng, case_id, fault, placement, limits).case()


class _Drawer:
    """Draws one case from its own generator, in a fixed order."""

    def __init__(
        self, rng: random.Random, case_id: str, fault: str, placement: str, limits: Limits
    ):
        self.rng, self.id, self.fault, self.placement = rng, case_id, fault, placement
        self.limits = limits
        self.overload_kind = ""
        self.outage_s = 0.0

    def u(self, span: tuple[float, float]) -> float:
        return self.rng.uniform(*span)

    def case(self) -> Case:
        rng = self.rng
        if self.fault in ("sensor_freeze", "link_loss"):
            self.outage_s = round(self.u(OUTAGE_S), 3)
        self.material = rng.choice(sorted(MATERIALS))
        self.kc = MATERIALS[self.material]
        machine = Machine(max_feed_pct=round(self.u(MAX_FEED_PCT)) if rng.random() < 0.5 else 150)
        self.machine = machine
        target = round(self.u(TARGET_PCT), 1)
        self.control = Control(target_load_pct=target, hard_limit_pct=HARD_LIMIT_PCT)
        self.idle = 100 * machine.idle_power_kw / machine.rated_power_kw
        self.span = target - self.idle
        self.span_kw = self.span / 100 * machine.rated_power_kw
        self.cap = min(STEP_UP[1], (HARD_LIMIT_PCT - self.idle) / self.span)
        if rng.random() < DEFAULT_SENSOR_SHARE:
            lag, dead = Sensor.lag_s, Sensor.dead_time_s
        else:
            lag, dead = round(self.u(LAG_S), 3), round(self.u(DEAD_TIME_S), 3)
        sensor = Sensor(lag_s=lag, dead_time_s=dead, noise_pct=round(self.u(NOISE_PCT), 2))
        poll_s = rng.randint(round(POLL_S[0] * 100), round(POLL_S[1] * 100)) / 100
        parts = rng.randint(*self.limits.parts)
        tool = Tool(
            diameter_mm=TOOL_DIAMETER_MM,
            wear_kc_per_part=round(self.u(self.limits.wear_kc_per_part), 4),
        )
        stock = rng.random() < STOCK_SHARE
        n_cuts = rng.randint(*CUTS_PER_PART)
        budget_s = self.u(self.limits.cutting_s) / parts / n_cuts
        fault_cut = rng.randrange(n_cuts) if self.fault != "no_fault" else -1
        fault_part = rng.randint(1, parts)
        if self.fault == "overload" or stock:
            fault_cut, fault_part = (0 if self.fault != "no_fault" else -1), 1
        scenario = Scenario(
            name=f"family {self.id}",
            description=f"family case {self.id}: {self.fault} {self.placement}".strip(),
            seed=rng.randrange(2**31),
            parts=parts,
            machine=machine,
            sensor=sensor,
            control=self.control,
            tool=tool,
        )
        if stock:
            scenario, onset_mm = self.stock(scenario, n_cuts, budget_s)
        else:
            scenario, onset_mm = self.segments(scenario, n_cuts, budget_s, fault_cut)
        clamp = rng.random() < FEED_CLAMP_SHARE
        if clamp:
            fastest = max(
                [s.feed_mm_min for s in scenario.segments] + [m.feed_mm_min for m in scenario.moves]
            )
            machine = replace(machine, max_feed_mm_min=round(fastest * self.u(FEED_CLAMP_OVER)))
            scenario = replace(scenario, machine=machine)
        event = self.event(onset_mm, fault_part)
        if event is not None:
            scenario = replace(scenario, events=(event,))
        return Case(
            id=self.id,
            scenario=scenario,
            poll_s=poll_s,
            fault_class=self.fault,
            placement=self.placement,
            onset_mm=onset_mm if self.fault != "no_fault" else 0.0,
            fault_part=fault_part,
            toolpath="stock" if stock else "segments",
            overload_kind=self.overload_kind,
        )

    # -- cuts ---------------------------------------------------------------------------------

    def cut(self, budget_s: float, faulted: bool, share: float | None = None) -> _Cut:
        """A cut's plan: levels of work and hard zones, redrawn until every rise stays within
        the cap of the work before it; the faulted cut is shaped for its placement."""
        rng = self.rng
        light = faulted and self.placement == "light_cut"
        share = (
            share if share is not None else self.u(LIGHT_CUT_SHARE if light else PROGRAMMED_SHARE)
        )
        feed = self.u(FEED_MM_MIN)
        width = self.u(WIDTH_MM)
        depth = self.share_depth(share, feed, width)
        for _ in range(50):
            levels = 1 if light else rng.randint(*STRETCHES_PER_CUT)
            if faulted and self.placement == "after_step":
                levels = max(levels, 2)
            factors, seconds, short = [1.0], [], []
            for i in range(levels):
                if i:
                    span = STEP_UP if rng.random() < 0.5 else STEP_DOWN
                    factors.append(factors[-1] * self.u((span[0], min(span[1], self.cap))))
                short.append(rng.random() < SHORT_STRETCH_SHARE)
                seconds.append(self.u(SHORT_STRETCH_S if short[-1] else STRETCH_S))
            # the long levels fill the cut's time; the short ones stay short
            long_s = sum(s for s, brief in zip(seconds, short, strict=True) if not brief)
            scale = max(0.3, (budget_s - (sum(seconds) - long_s)) / long_s) if long_s else 1.0
            lengths = [
                feed / 60 * s * (1.0 if brief else scale)
                for s, brief in zip(seconds, short, strict=True)
            ]
            plan = _Cut(share, feed, depth, width, lengths, factors, [])
            if faulted:
                self.shape_fault(plan)
            else:
                plan.zones = self.zones(plan)
            if self.fits(plan):
                return plan
        return _Cut(share, feed, depth, width, [feed / 60 * budget_s], [1.0], [])

    def share_depth(self, share: float, feed: float, width: float) -> float:
        """The depth at which `feed` makes `share` of the target's cutting load at 100 %."""
        power_kw = share * self.span_kw
        area = feed_for_power(self.kc, 1.0, 1.0, power_kw, self.machine.efficiency) / feed
        return area / width

    def zones(self, plan: _Cut) -> list[_Zone]:
        rng = self.rng
        count = rng.choices((0, 1, 2), ZONES_PER_CUT_WEIGHTS)[0]
        zones: list[_Zone] = []
        at = 0.0 if rng.random() < ZONE_AT_ENTRY_SHARE else rng.uniform(0.0, plan.length_mm)
        for _ in range(count):
            skin = rng.random() < 0.3
            length = self.u(SKIN_MM) if skin else plan.feed / 60 * self.u(ZONE_S)
            end = min(at + length, plan.length_mm)
            if end - at < 1.0:
                break
            zones.append(_Zone(at, end, self.u((ZONE_KC[0], min(ZONE_KC[1], self.cap)))))
            at = end  # the second of two: in series
        return zones

    def shape_fault(self, plan: _Cut) -> None:
        """Where the fault strikes in its cut, and a stretch long enough after it."""
        feed = plan.feed
        mm_per_s = feed / 60
        after_s = 1.5 * (self.outage_s + 3.0)
        if self.placement in ("entry", "first_10mm"):
            level = 0
            offset = self.u(ENTRY_ONSET_MM if self.placement == "entry" else FIRST_MM)
        elif self.placement == "after_step":
            level = 1
            offset = self.u(AFTER_STEP_MM)
        else:  # steady, light_cut: well into the last level
            level = len(plan.lengths) - 1
            offset = mm_per_s * self.u(STEADY_ONSET_S)
        if self.fault == "overload":
            after_s = max(after_s, 1.5 * OVERLOAD_ZONE_S[1] + 2.0)
        plan.lengths[level] = offset + mm_per_s * after_s
        start = plan.starts()[level]
        end = start + plan.lengths[level]
        plan.fault_at_mm = start + offset
        plan.zones = [z for z in self.zones(plan) if z.to_mm <= start or z.from_mm >= end]
        if self.fault == "overload":
            plan.zones = [z for z in plan.zones if z.to_mm <= plan.fault_at_mm]
            plan.zones.append(self.overload_zone(plan, level))

    def overload_zone(self, plan: _Cut, level: int) -> _Zone:
        """A zone so hard that even at the 50 % floor the load stays over the hard limit
        ("limit") or over target + 10 % of the cutting load ("floor")."""
        self.overload_kind = self.rng.choice(("limit", "floor"))
        if self.overload_kind == "limit":
            load = HARD_LIMIT_PCT + self.u(OVER_LIMIT_PCT)
        else:
            low = self.control.target_load_pct + OVER_FLOOR_SHARE * self.span
            load = self.u((low, HARD_LIMIT_PCT - 3.0))
        work_at_floor = (load - self.idle) / self.span  # share of the cutting load at 50 %
        kc_factor = 2 * work_at_floor / (plan.share * plan.factors[level])
        start = plan.fault_at_mm
        length = plan.feed / 60 * self.u(OVERLOAD_ZONE_S)
        return _Zone(start, start + length, max(kc_factor, 1.0))

    def fits(self, plan: _Cut) -> bool:
        """Every rise of work (levels x zones) within the cap of the lowest work over the
        SETTLE_WINDOW_S before it; work at 100 % within the limits' max_work_share; overload
        zone aside."""
        edges = sorted(
            {0.0, plan.length_mm, *plan.starts()}
            | {z.from_mm for z in plan.zones}
            | {z.to_mm for z in plan.zones}
        )
        window = plan.feed / 60 * SETTLE_WINDOW_S
        history: list[tuple[float, float]] = []  # (end mm, work) of each stretch so far
        for a, b in zip(edges, edges[1:], strict=False):
            if b - a < 1e-9:
                continue
            mid = (a + b) / 2
            if (
                self.fault == "overload"
                and plan.zones
                and plan.zones[-1].from_mm <= mid < plan.zones[-1].to_mm
            ):
                history.append((b, math.inf))
                continue
            work = self.work(plan, mid)
            if plan.share * work > self.limits.max_work_share:
                return False
            before = [w for end, w in history if end > a - window]
            if before and work > self.cap * min(before) + 1e-9:
                return False
            history.append((b, work))
        return True

    @staticmethod
    def work(plan: _Cut, at_mm: float) -> float:
        level = max(i for i, start in enumerate(plan.starts()) if start <= at_mm + 1e-9)
        kc = math.prod(z.kc_factor for z in plan.zones if z.from_mm <= at_mm < z.to_mm)
        return plan.factors[level] * kc

    # -- toolpaths ----------------------------------------------------------------------------

    def segments(self, scenario: Scenario, n_cuts: int, budget_s: float, fault_cut: int):
        rng = self.rng
        segments = [Segment("rapid", length_mm=round(self.u(RAPID_MM), 1))]
        onset_mm = 0.0
        for i in range(n_cuts):
            plan = self.cut(budget_s, faulted=i == fault_cut)
            if i and rng.random() < 0.5:
                segments.append(Segment("rapid", length_mm=round(self.u(RAPID_MM), 1)))
            segments.append(
                Segment("cut", length_mm=round(self.u(AIR_MM), 1), feed_mm_min=plan.feed)
            )
            entry_mm = sum(s.length_mm for s in segments)
            if plan.fault_at_mm is not None:
                onset_mm = entry_mm + plan.fault_at_mm
            segments += self.cut_segments(plan)
        segments.append(
            Segment("cut", length_mm=round(self.u(AIR_MM), 1), feed_mm_min=segments[-1].feed_mm_min)
        )
        segments.append(Segment("rapid", length_mm=round(self.u(RAPID_MM), 1)))
        return replace(scenario, segments=tuple(segments)), onset_mm

    def cut_segments(self, plan: _Cut) -> list[Segment]:
        """The plan's levels as segments: width scaled first, depth for what the tool's
        diameter cannot take; zones cut at level edges and made relative to each."""
        out = []
        for start, length, factor in zip(plan.starts(), plan.lengths, plan.factors, strict=True):
            width = min(plan.width * factor, TOOL_DIAMETER_MM)
            depth = plan.depth * plan.width * factor / width
            zones = tuple(
                HardZone(
                    max(z.from_mm, start) - start, min(z.to_mm, start + length) - start, z.kc_factor
                )
                for z in plan.zones
                if z.from_mm < start + length and z.to_mm > start
            )
            out.append(
                Segment(
                    "cut",
                    length_mm=length,
                    depth_mm=depth,
                    width_mm=width,
                    feed_mm_min=plan.feed,
                    material=self.material,
                    hard_zones=zones,
                )
            )
        return out

    def stock(self, scenario: Scenario, n_passes: int, budget_s: float):
        """A block side-milled in `n_passes` passes along X at one Z, each a new stepover; the
        first pass's plan sets the block's top steps (depth levels) and hard spots."""
        plan = self.cut(budget_s, faulted=self.fault != "no_fault")
        radius = TOOL_DIAMETER_MM / 2
        length = plan.length_mm
        z_cut = -plan.depth
        regions = tuple(
            HeightRegion(Box((s, s + n), (-1.0, 41.0)), z_cut + plan.depth * f)
            for s, n, f in zip(plan.starts(), plan.lengths, plan.factors, strict=True)
            if f != 1.0
        )
        spots = tuple(
            HardSpot(Box((z.from_mm, z.to_mm), (-1.0, 41.0)), z.kc_factor) for z in plan.zones
        )
        spec = StockSpec(
            box=Box((0.0, length), (0.0, 40.0)),
            top_z=0.0,
            material=self.material,
            cell_mm=1.0,
            regions=regions,
            hard_spots=spots,
        )
        safe_z = plan.depth * 2 + 5
        y_edge, moves, path, onset_mm = 40.0, [], 0.0, 0.0
        start = (-radius - self.u(AIR_MM), 40.0 + radius - plan.width, safe_z)
        here = start
        for i in range(n_passes):
            width = plan.width if i == 0 else min(self.u(WIDTH_MM), 0.8 * y_edge)
            share = plan.share if i == 0 else self.u(PROGRAMMED_SHARE)
            feed = (
                plan.feed
                if i == 0
                else min(
                    max(plan.feed * plan.width * share / (width * plan.share), FEED_MM_MIN[0]),
                    4 * FEED_MM_MIN[1],
                )
            )
            y = y_edge + radius - width
            y_edge -= width
            x0 = -radius - self.u(AIR_MM)
            for point in ((x0, y, safe_z), (x0, y, z_cut)):
                path += math.dist(here, point)
                moves.append(Move(*point, rapid=True, feed_mm_min=0.0))
                here = point
            if i == 0 and plan.fault_at_mm is not None:
                onset_mm = path + (-radius - x0) + plan.fault_at_mm
            end = (length + radius + self.u(AIR_MM), y, z_cut)
            path += math.dist(here, end)
            moves.append(Move(*end, rapid=False, feed_mm_min=round(feed, 1)))
            up = (end[0], y, safe_z)
            path += math.dist(end, up)
            moves.append(Move(*up, rapid=True, feed_mm_min=0.0))
            here = up
        return replace(scenario, stock=spec, start=start, moves=tuple(moves)), onset_mm

    # -- the fault ----------------------------------------------------------------------------

    def event(self, onset_mm: float, part: int) -> Event | None:
        if self.fault == "breakage":
            return Event(
                "breakage",
                at_mm=round(onset_mm, 3),
                part=part,
                spike_factor=round(self.u(SPIKE_FACTOR), 3),
                spike_s=round(self.u(SPIKE_S), 3),
                residual=round(self.u(RESIDUAL), 3),
            )
        if self.fault in ("sensor_freeze", "link_loss"):
            return Event(self.fault, at_mm=round(onset_mm, 3), part=part, duration_s=self.outage_s)
        return None
