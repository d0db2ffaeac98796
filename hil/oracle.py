"""The physical limit: the shortest cycle time a scenario allows with perfect knowledge.

Every stretch of path runs at the feed that puts the steady-state spindle load exactly at the
target (air at the highest override), with the override inside its limits and the feed inside
the machine's clamp. Dynamics are ignored (no acceleration, no sensor lag, no 1 % steps), and
so are the scenario's faults: a broken tool or a lost link is not a faster way to cut.
Rapids and dwells take what they take. This is what adaptive control is measured against.
"""

from __future__ import annotations

from dataclasses import dataclass

from hil.physics import feed_for_power
from hil.plant import cut_along, new_stock, program_of
from hil.scenario import Scenario, Segment

#: Path resolution for the stock model's engagement: a tenth of a typical plant step at
#: 1200 mm/min would be overkill; 0.2 mm keeps a 2 m path under a second and the error
#: against a finer walk below 0.1 % on the shipped scenarios (tests/test_hil_oracle.py).
STOCK_STEP_MM = 0.2


@dataclass(frozen=True)
class OracleResult:
    part_times_s: tuple[float, ...]

    @property
    def cycle_time_s(self) -> float:
        return sum(self.part_times_s)


def oracle(scenario: Scenario, stock_step_mm: float = STOCK_STEP_MM) -> OracleResult:
    return OracleResult(
        tuple(_part_time(scenario, part, stock_step_mm) for part in range(1, scenario.parts + 1))
    )


def ideal_feed(scenario: Scenario, kc: float, area_mm2: float, programmed: float) -> float:
    """The feed, mm/min, that holds the target load over an engaged cross-section `area_mm2`
    (a_p x a_e) of material `kc`, within the override limits and the machine's clamp."""
    m, c = scenario.machine, scenario.control
    cutting_kw = c.target_load_pct / 100 * m.rated_power_kw - m.idle_power_kw
    wanted = feed_for_power(kc, area_mm2, 1.0, cutting_kw, m.efficiency)
    override = min(
        c.override_max_pct, m.max_feed_pct, max(c.override_min_pct, 100 * wanted / programmed)
    )
    return min(programmed * override / 100, m.max_feed_mm_min)


def _part_time(series: Scenario, part: int, stock_step_mm: float) -> float:
    """Part `part` of the series: its own program and stock (`Scenario.variant`), its wear."""
    wear = 1.0 + series.tool.wear_kc_per_part * (part - 1)
    scenario = series.variant(part)
    stock = new_stock(scenario)
    total = 0.0
    for piece in program_of(scenario):
        if piece.kind == "dwell":
            total += piece.seconds
        elif piece.kind == "rapid":
            total += piece.length_mm / scenario.machine.rapid_mm_min * 60
            if stock is not None:  # a rapid through the stock would cut it: keep the model true
                for _ in cut_along(stock, piece.start, piece.end, stock_step_mm):
                    pass
        elif piece.segment is not None:
            total += _segment_time(scenario, piece.segment, wear)
        else:
            for mm, kc, mm3, _ in cut_along(stock, piece.start, piece.end, stock_step_mm):
                if not mm:
                    continue
                # the volume per mm of path is the cross-section a_p x a_e the feed acts on
                feed = ideal_feed(scenario, kc * wear, mm3 / mm, piece.feed_mm_min)
                total += mm / feed * 60
    return total


def _segment_time(scenario: Scenario, seg: Segment, wear: float) -> float:
    """A cut segment, stretch by stretch between its hard-zone edges."""
    edges = sorted(
        {0.0, seg.length_mm, *(z.from_mm for z in seg.hard_zones)}
        | {z.to_mm for z in seg.hard_zones}
    )
    total = 0.0
    for start, end in zip(edges, edges[1:], strict=False):
        kc = scenario.kc(seg.material) * seg.kc_factor((start + end) / 2) * wear
        feed = ideal_feed(scenario, kc, seg.depth_mm * seg.width_mm, seg.feed_mm_min)
        total += (end - start) / feed * 60
    return total
