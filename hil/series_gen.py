"""The randomized series family's generator (issue 19): seeded series of one program made
5-7 times, each part differing from the first as the parts of a series do in a shop.

A series is a family case (`family_gen.draw`: its sensor, target, toolpath and cuts, one
program) made `parts` times with a part change between, and per-part variation on top:
- **stock allowance**: some parts have a little more or less stock on every cut;
- **wear**: the tool's Kc grows part by part (the family's wear, drawn smaller: series are
  longer);
- **a hard zone new to one part** (3rd on) in some series: what no profile can know;
- **an edited program** in some series: from one part (3rd on) one cut is shorter or
  longer, and stays so;
- **a breakage** in some series, in a part past the first, placed as the family places it.

`series(seed, index)` rebuilds any one alone, bit for bit, from its own generator. The
ranges are the table below (docs/hil-scenarios.md, "The series family"). Never runs
anything and never does I/O.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from hil import family_gen
from hil.family_gen import HARD_LIMIT_PCT, PLACEMENTS, STEP_UP, Limits
from hil.scenario import HardZone, PartVariant, Scenario
from hil.stock import Box, HardSpot

# -- the ranges (documented in docs/hil-scenarios.md; change both together) ------------------
PARTS = (5, 7)
CUTTING_S_PER_PART = (8.0, 20.0)
WEAR_KC_PER_PART = (0.0, 0.03)
PART_CHANGE_S = (1.0, 5.0)
ALLOWANCE_PART_SHARE = 0.5  # parts past the first whose stock differs from the program's
ALLOWANCE_SHARE = (-0.08, 0.12)  # of the shallowest cut's depth, on every cut of the part
NEW_ZONE_SHARE = 0.3  # series with a hard zone in one part alone (3rd on)
NEW_ZONE_KC = (1.15, 1.35)  # capped as the family's steps are
NEW_ZONE_S = (0.5, 2.0)  # at 100 %
EDIT_SHARE = 0.15  # series whose program is edited from one part (3rd on) on
EDIT_LENGTH = ((0.6, 0.85), (1.15, 1.4))  # the edited cut's length over its own ...
EDIT_MIN_MM = 5.0  # ... changed by more than this and than 4 polls' travel at the top feed
EDIT_POLLS = 4
MAX_FEED_SHARE = 1.5
BREAKAGE_SHARE = 0.25
#: Work at 100 % at most this share of the target's cutting load: the family's bound, less
#: the most wear and allowance a series adds, so that the 50 % floor still holds the target.
MAX_WORK_SHARE = family_gen.MAX_WORK_SHARE / (1 + WEAR_KC_PER_PART[1] * PARTS[1]) / 1.12
#: A new zone starts this long (at 100 %) into its cut and ends before the cut does: a rise of
#: its own, not one on top of the cut's step.
ZONE_CLEAR_S = family_gen.SETTLE_WINDOW_S


@dataclass(frozen=True)
class Series:
    """One member of the series family: the parts' scenario, the poll, and what varies."""

    id: str  # "SEED.INDEX": `series(*parse_id(id))` rebuilds it
    scenario: Scenario
    poll_s: float
    fault_class: str  # no_fault or breakage
    placement: str = ""
    fault_part: int = 0  # the part the tool breaks in (0: none)
    new_zone_part: int = 0  # the part with a hard zone of its own (0: none)
    edit_part: int = 0  # the first part of the edited program (0: none)
    toolpath: str = "segments"  # or "stock"

    def unlearnable(self, part: int) -> str:
        """Why `part` meets what its profile cannot know, or ""."""
        if part == self.fault_part:
            return "breakage"
        if part == self.new_zone_part:
            return "new hard zone"
        if part == self.edit_part:
            return "edited program"
        return ""


def generate(seed: int, count: int) -> list[Series]:
    return [series(seed, index) for index in range(count)]


def series(seed: int, index: int) -> Series:
    series_id = f"{seed}.{index}"
    rng = random.Random(f"series.{series_id}")
    parts = rng.randint(*PARTS)
    fault = "breakage" if rng.random() < BREAKAGE_SHARE else "no_fault"
    placement = rng.choice(PLACEMENTS) if fault == "breakage" else ""
    limits = Limits(
        parts=(parts, parts),
        cutting_s=(CUTTING_S_PER_PART[0] * parts, CUTTING_S_PER_PART[1] * parts),
        wear_kc_per_part=WEAR_KC_PER_PART,
        max_work_share=MAX_WORK_SHARE,
    )
    base = family_gen.draw(rng, series_id, fault, placement, limits)
    machine = replace(base.scenario.machine, part_change_s=round(rng.uniform(*PART_CHANGE_S), 2))
    scenario = replace(base.scenario, name=f"series {series_id}", machine=machine)
    scenario = replace(scenario, description=f"series {series_id}: {parts} parts, {fault}")
    fault_part = rng.randint(2, parts) if fault == "breakage" else 0
    if fault_part:
        scenario = replace(scenario, events=(replace(scenario.events[0], part=fault_part),))
    varied = _Varier(
        rng, scenario, base.poll_s, stock=base.toolpath == "stock", breakage=bool(fault_part)
    )
    return Series(
        id=series_id,
        scenario=varied.scenario(),
        poll_s=base.poll_s,
        fault_class=fault,
        placement=placement,
        fault_part=fault_part,
        new_zone_part=varied.new_zone_part,
        edit_part=varied.edit_part,
        toolpath=base.toolpath,
    )


class _Varier:
    """Draws each part's `[[vary]]` entry, in a fixed order."""

    def __init__(
        self, rng: random.Random, scenario: Scenario, poll_s: float, stock: bool, breakage: bool
    ):
        self.rng, self.base, self.poll_s, self.stock = rng, scenario, poll_s, stock
        self.breakage = breakage
        self.new_zone_part = self.edit_part = 0

    def scenario(self) -> Scenario:
        rng, base = self.rng, self.base
        parts = base.parts
        allowance = {
            p: round(rng.uniform(*ALLOWANCE_SHARE) * self.shallowest_mm(), 3)
            for p in range(2, parts + 1)
            if rng.random() < ALLOWANCE_PART_SHARE
        }
        zone = None
        if rng.random() < NEW_ZONE_SHARE:
            zone = self.new_zone()
            self.new_zone_part = rng.randint(3, parts) if zone is not None else 0
        edit = None
        if not self.stock and not self.breakage and rng.random() < EDIT_SHARE:
            edit = self.edit()
            self.edit_part = rng.randint(3, parts) if edit is not None else 0
        variants = []
        for p in range(2, parts + 1):
            zones = (zone,) if p == self.new_zone_part and not self.stock else ()
            spots = (zone,) if p == self.new_zone_part and self.stock else ()
            edits = (edit,) if self.edit_part and p >= self.edit_part else ()
            if allowance.get(p) or zones or spots or edits:
                variants.append(PartVariant(p, allowance.get(p, 0.0), zones, spots, edits))
        return replace(base, variants=tuple(variants))

    def shallowest_mm(self) -> float:
        if self.stock:
            return self.base.stock.top_z - min(m.z for m in self.base.moves)
        return min(s.depth_mm for s in self.base.segments if s.kind == "cut" and s.depth_mm > 0)

    def cap(self) -> float:
        """The highest rise of work that a target-held cut meets under the hard limit."""
        m, target = self.base.machine, self.base.control.target_load_pct
        idle = 100 * m.idle_power_kw / m.rated_power_kw
        return min(STEP_UP[1], (HARD_LIMIT_PCT - idle) / (target - idle))

    def new_zone(self) -> tuple[int, HardZone] | HardSpot | None:
        """A hard zone in one cut (a hard spot across the block for stock), clear of the
        cut's own steps and zones; None where no cut is long enough."""
        rng = self.rng
        kc = rng.uniform(NEW_ZONE_KC[0], min(NEW_ZONE_KC[1], self.cap()))
        if self.stock:
            stock = self.base.stock
            feed = min(m.feed_mm_min for m in self.base.moves if not m.rapid)
            (x0, x1), y = stock.box.x, stock.box.y
            length = feed / 60 * rng.uniform(*NEW_ZONE_S)
            clear = feed / 60 * ZONE_CLEAR_S
            taken = [s.box.x for s in stock.hard_spots] + [r.box.x for r in stock.regions]
            for _ in range(20):
                start = rng.uniform(x0 + clear, max(x0 + clear, x1 - clear - length))
                span = (start - clear, start + length + clear)
                if start + length < x1 and not any(a < span[1] and b > span[0] for a, b in taken):
                    return HardSpot(Box((start, start + length), (y[0] - 1, y[1] + 1)), kc)
            return None
        fits = [
            i
            for i, s in enumerate(self.base.segments)
            if s.kind == "cut"
            and s.depth_mm > 0
            and not s.hard_zones
            and s.length_mm > s.feed_mm_min / 60 * (2 * ZONE_CLEAR_S + NEW_ZONE_S[0])
        ]
        if not fits:
            return None
        index = rng.choice(fits)
        segment = self.base.segments[index]
        clear = segment.feed_mm_min / 60 * ZONE_CLEAR_S
        length = min(segment.feed_mm_min / 60 * rng.uniform(*NEW_ZONE_S), segment.length_mm / 4)
        start = rng.uniform(clear, segment.length_mm - clear - length)
        return index, HardZone(round(start, 3), round(start + length, 3), round(kc, 4))

    def edit(self) -> tuple[int, tuple[tuple[str, object], ...]] | None:
        """One cut made shorter or longer (its hard zones move with it), by more than a
        part's path may differ by polling alone (EDIT_POLLS polls' travel at either end)."""
        factor = self.rng.uniform(*self.rng.choice(EDIT_LENGTH))
        cuts = [
            i
            for i, s in enumerate(self.base.segments)
            if s.kind == "cut"
            and s.depth_mm > 0
            and s.length_mm * abs(factor - 1)
            > max(EDIT_MIN_MM, EDIT_POLLS * s.feed_mm_min * MAX_FEED_SHARE / 60 * self.poll_s)
        ]
        if not cuts:
            return None
        index = self.rng.choice(cuts)
        return index, (("length_mm", round(self.base.segments[index].length_mm * factor, 3)),)


def parse_id(series_id: str) -> tuple[int, int]:
    return family_gen.parse_id(series_id)
