"""The stock a cutting-physics plant machines: a block as a 2.5-D height field (a Z-map) that a
flat-end mill cuts down step by step, reporting the engagement the plant turns into power.

Each cell of the grid holds the top height of the material at its centre and the material's
specific cutting force Kc there. `StockModel.step` measures the engagement at the tool's new
position, then cuts the tool's disc down to the tool's bottom. Steps are short (the plant's
10 ms step moves the tool well under a cell), so the lateral cut is measured by sampling the
material just ahead of the tool's front arc, not by counting newly cut cells, which would
jump between 0 and a whole row of cells from one step to the next.

Plain Python (`array`, `math`) because it runs on the bench's Raspberry Pi inside the
installed package. Never reads a clock, never does I/O, never draws a random number: the same
moves always give the same engagements and leave the same stock.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress

#: A lateral move shorter than this has no direction: the step is a pure plunge (or a dwell).
#: A thousandth of a micron per 10 ms step is 0.006 mm/min, far below any cutting feed.
MIN_TRAVEL_MM = 1e-6


@dataclass(frozen=True)
class Box:
    """An axis-aligned region in x/y: `x` and `y` are (min, max) in mm, edges included."""

    x: tuple[float, float]
    y: tuple[float, float]

    def contains(self, x: float, y: float) -> bool:
        return self.x[0] <= x <= self.x[1] and self.y[0] <= y <= self.y[1]


@dataclass(frozen=True)
class HeightRegion:
    """Part of the block whose top is at `top_z` instead of the block's: a step, a boss, a
    pocket already cut. Where regions overlap, the last one given wins."""

    box: Box
    top_z: float


@dataclass(frozen=True)
class HardSpot:
    """Part of the block whose Kc is `kc_factor` times the block's, through its whole depth: an
    inclusion, a hardened zone. Overlapping spots multiply."""

    box: Box
    kc_factor: float


@dataclass(frozen=True)
class Engagement:
    """What the tool meets in one step.

    `area_mm2` is the chip cross-section across the lateral motion (lateral MRR = area x v_xy);
    `plunge_area_mm2` is the footprint of material above the tool's bottom (axial MRR = plunge
    area x downward v_z); `ap_mm` is the deepest material ahead of the tool's front and `ae_mm`
    is area / ap. `kc` is the mean Kc of the material removed, weighted by what each part of
    it adds to the step's MRR (for a lateral move: by depth); the block's base Kc when nothing
    is engaged.
    """

    ap_mm: float
    ae_mm: float
    area_mm2: float
    plunge_area_mm2: float
    kc: float


def _check_number(name: str, value: float, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name}: must be > 0, got {value!r}")
    return float(value)


def _check_box(name: str, box: Box) -> Box:
    if not isinstance(box, Box):
        raise ValueError(f"{name}: must be a Box, got {box!r}")
    for axis in ("x", "y"):
        span = getattr(box, axis)
        if len(span) != 2:
            raise ValueError(f"{name}.{axis}: must be (min, max) in mm, got {span!r}")
        lo = _check_number(f"{name}.{axis}", span[0])
        hi = _check_number(f"{name}.{axis}", span[1])
        if not lo < hi:
            raise ValueError(f"{name}.{axis}: min must be below max, got {span!r}")
    return box


class StockModel:
    """A block of stock over `box`, `top_z` high (plus `regions`), of specific cutting force
    `kc` N/mm² (times the `hard_spots`' factors), cut by a flat-end mill `tool_diameter_mm`
    wide.

    The grid has about `cell_mm` square cells: the box is split into a whole number of cells
    along each axis, so a box that is not a multiple of `cell_mm` gets cells a little larger or
    smaller than asked (the pitch is `pitch_x_mm` x `pitch_y_mm`). Lateral engagement is
    sampled in bins `cell_mm` wide (as near as a whole number of bins across the tool allows),
    each reading the one cell 3/4 of a cell beyond the tool's edge, straight ahead of the bin.

    What that gives (tests/test_hil_stock.py holds it to this): a slot in fresh stock, straight
    or curved, in any direction, reads exactly D x ap; a pass beside an earlier cut reads its
    stepover give or take a bin or two at the cut's edge, a bin on average; a spring pass along
    an earlier cut at an angle to the grid now and then reads a bin or two at its edge, the cells
    there being centred just outside both passes' discs. The front sees material about 3/4 of
    a cell before the tool reaches it.
    """

    def __init__(
        self,
        *,
        box: Box,
        top_z: float,
        kc: float,
        tool_diameter_mm: float,
        cell_mm: float = 0.5,
        regions: Sequence[HeightRegion] = (),
        hard_spots: Sequence[HardSpot] = (),
    ) -> None:
        self.box = _check_box("box", box)
        top = _check_number("top_z", top_z)
        self.kc = _check_number("kc", kc, positive=True)
        self.cell_mm = cell = _check_number("cell_mm", cell_mm, positive=True)
        diameter = _check_number("tool_diameter_mm", tool_diameter_mm, positive=True)
        if diameter <= 2 * cell:
            raise ValueError(
                f"tool_diameter_mm: must be more than two cells ({2 * cell:g} mm), got {diameter:g}"
            )
        self.tool_diameter_mm = diameter
        for i, region in enumerate(regions):
            _check_box(f"regions[{i}].box", region.box)
            _check_number(f"regions[{i}].top_z", region.top_z)
        for i, spot in enumerate(hard_spots):
            _check_box(f"hard_spots[{i}].box", spot.box)
            _check_number(f"hard_spots[{i}].kc_factor", spot.kc_factor, positive=True)

        (x_lo, x_hi), (y_lo, y_hi) = box.x, box.y
        self._nx = nx = max(1, round((x_hi - x_lo) / cell))
        self._ny = ny = max(1, round((y_hi - y_lo) / cell))
        self.pitch_x_mm = (x_hi - x_lo) / nx
        self.pitch_y_mm = (y_hi - y_lo) / ny
        self._x0, self._y0 = float(x_lo), float(y_lo)

        # Row-major, one flat array: cell (i, j) is at j * nx + i, row j running along x.
        self._heights = heights = array("d", [top]) * (nx * ny)
        self._kcs: array | None = None  # None: every cell has the base Kc (saves a grid's worth)
        for region in regions:
            for a, b in self._spans(region.box):
                heights[a:b] = array("d", [float(region.top_z)]) * (b - a)
        if hard_spots:
            self._kcs = kcs = array("d", [self.kc]) * (nx * ny)
            for spot in hard_spots:
                for a, b in self._spans(spot.box):
                    kcs[a:b] = array("d", [k * spot.kc_factor for k in kcs[a:b]])
        self._lost_mm = 0.0  # sum over cells of height cut away; x cell area = volume

        # The front samples: bins across the tool, each with how far ahead of the centre (along
        # the motion) its sample point lies. The point is 3/4 of a cell beyond the tool's radius,
        # just past half a cell's diagonal, so the cell it falls in is centred outside every disc
        # already cut along the path and so still holds the material the front is about to
        # meet. (Half a cell ahead of the arc along the motion is not enough: near the tool's
        # sides, on a diagonal path, it lands in cells the last steps cut, and a slot read up
        # to a quarter narrower in some steps and a few % narrower on average.)
        radius = diameter / 2
        reach = radius + 0.75 * max(self.pitch_x_mm, self.pitch_y_mm)
        bins = max(1, round(diameter / cell))
        self._bin_mm = diameter / bins
        front = []
        for k in range(bins):
            u = -radius + (k + 0.5) * self._bin_mm
            front.append((u, math.sqrt(reach * reach - u * u)))
        self._front = tuple(front)

    def _spans(self, box: Box) -> list[tuple[int, int]]:
        """The cells centred in `box` (edges included), as [start, stop) index spans, row by row."""

        def cells(lo: float, hi: float, origin: float, pitch: float, n: int) -> range:
            first = max(0, math.ceil((lo - origin) / pitch - 0.5))
            last = min(n - 1, math.floor((hi - origin) / pitch - 0.5))
            return range(first, last + 1)

        columns = cells(*box.x, self._x0, self.pitch_x_mm, self._nx)
        if not columns:
            return []
        rows = cells(*box.y, self._y0, self.pitch_y_mm, self._ny)
        return [(j * self._nx + columns[0], j * self._nx + columns[-1] + 1) for j in rows]

    def copy(self) -> StockModel:
        """An independent copy: cutting one leaves the other as it was."""
        twin = object.__new__(StockModel)
        twin.__dict__.update(self.__dict__)
        twin._heights = array("d", self._heights)
        twin._kcs = None if self._kcs is None else array("d", self._kcs)
        return twin

    def top_z(self, x: float, y: float) -> float | None:
        """The current top of the material at (x, y), mm; None outside the block."""
        if not self.box.contains(x, y):
            return None
        i = min(self._nx - 1, int((x - self._x0) / self.pitch_x_mm))
        j = min(self._ny - 1, int((y - self._y0) / self.pitch_y_mm))
        return self._heights[j * self._nx + i]

    def removed_mm3(self) -> float:
        """The volume cut away so far, mm³."""
        return self._lost_mm * self.pitch_x_mm * self.pitch_y_mm

    def step(self, x0: float, y0: float, z0: float, x1: float, y1: float, z1: float) -> Engagement:
        """The tool moved from (x0, y0, z0) to (x1, y1, z1): the engagement at the new position,
        measured before the material in the tool's disc there is cut down to z1."""
        if not math.isfinite(x0 + y0 + z0 + x1 + y1 + z1):
            raise ValueError(f"step: positions must be finite, got {(x0, y0, z0, x1, y1, z1)}")
        area, ap, lateral_kc = self._front_engagement(x1 - x0, y1 - y0, x1, y1, z1)
        cells, footprint_kc = self._cut_disc(x1, y1, z1)
        plunge_area = cells * self.pitch_x_mm * self.pitch_y_mm
        # One Kc for both kinds of cut, weighted by the volume each removes in this step.
        lateral_mm3 = area * math.hypot(x1 - x0, y1 - y0)
        plunge_mm3 = plunge_area * max(0.0, z0 - z1)
        if plunge_mm3 == 0.0:
            kc = lateral_kc  # the base Kc when nothing is engaged either
        elif lateral_mm3 == 0.0 or footprint_kc == lateral_kc:
            kc = footprint_kc
        else:
            kc = (lateral_kc * lateral_mm3 + footprint_kc * plunge_mm3) / (lateral_mm3 + plunge_mm3)
        return Engagement(
            ap_mm=ap,
            ae_mm=area / ap if ap > 0.0 else 0.0,
            area_mm2=area,
            plunge_area_mm2=plunge_area,
            kc=kc,
        )

    def _front_engagement(
        self, dx: float, dy: float, x: float, y: float, z: float
    ) -> tuple[float, float, float]:
        """(area mm², ap mm, depth-weighted Kc) of the material just ahead of the front arc."""
        travel = math.hypot(dx, dy)
        if travel < MIN_TRAVEL_MM:
            return 0.0, 0.0, self.kc
        ux, uy = dx / travel, dy / travel
        heights, kcs, nx, ny = self._heights, self._kcs, self._nx, self._ny
        x0, y0 = self._x0, self._y0
        inv_px, inv_py = 1.0 / self.pitch_x_mm, 1.0 / self.pitch_y_mm
        base = self.kc
        depth_sum = kc_sum = ap = 0.0  # kc_sum: of the Kc above the base, so all-base is exact
        for u, ahead in self._front:
            fx = (x + ux * ahead - uy * u - x0) * inv_px
            fy = (y + uy * ahead + ux * u - y0) * inv_py
            if fx < 0.0 or fy < 0.0:
                continue
            i, j = int(fx), int(fy)
            if i >= nx or j >= ny:
                continue
            k = j * nx + i
            depth = heights[k] - z
            if depth > 0.0:
                depth_sum += depth
                if depth > ap:
                    ap = depth
                if kcs is not None:
                    kc_sum += depth * (kcs[k] - base)
        if depth_sum <= 0.0:
            return 0.0, 0.0, base
        return depth_sum * self._bin_mm, ap, base + kc_sum / depth_sum

    def _cut_disc(self, x: float, y: float, z: float) -> tuple[int, float]:
        """Cut every cell centred in the tool's disc at (x, y) down to z. Returns how many cells
        had material above z and their mean Kc (the base Kc when none)."""
        z = float(z)  # z.__lt__ below must be float's: an int's would not compare with floats
        heights, kcs, nx, last_i = self._heights, self._kcs, self._nx, self._nx - 1
        sqrt, ceil, floor = math.sqrt, math.ceil, math.floor
        # in cell units: the disc's centre, relative to the first cell's centre, and its radius
        cx = (x - self._x0) / self.pitch_x_mm - 0.5
        cy = (y - self._y0) / self.pitch_y_mm - 0.5
        rx = self.tool_diameter_mm / 2 / self.pitch_x_mm
        ry = self.tool_diameter_mm / 2 / self.pitch_y_mm
        cells, kc_sum, lost = 0, 0.0, 0.0  # kc_sum: of the Kc above the base, so all-base is exact
        for j in range(max(0, ceil(cy - ry)), min(self._ny - 1, floor(cy + ry)) + 1):
            off = (j - cy) / ry
            half_sq = 1.0 - off * off
            if half_sq < 0.0:
                continue
            half = rx * sqrt(half_sq)
            i_lo, i_hi = ceil(cx - half), floor(cx + half)
            if i_lo < 0:
                i_lo = 0
            if i_hi > last_i:
                i_hi = last_i
            if i_lo > i_hi:
                continue
            a, b = j * nx + i_lo, j * nx + i_hi + 1
            row = heights[a:b]
            if max(row) <= z:
                continue
            n = b - a
            # the usual case in fresh material: the whole span comes down
            if row[0] > z and min(row) > z:
                cells += n
                if kcs is not None:
                    kc_sum += math.fsum(kcs[a:b]) - n * self.kc  # both exact when all base
                lost += sum(row) - n * z
                heights[a:b] = array("d", [z]) * n
            else:  # cut only what stands above z, cell by cell
                for k in compress(range(a, b), map(z.__lt__, row)):
                    lost += heights[k] - z
                    heights[k] = z
                    cells += 1
                    if kcs is not None:
                        kc_sum += kcs[k] - self.kc
        self._lost_mm += lost
        if cells == 0:
            return 0, self.kc
        return cells, self.kc + kc_sum / cells
