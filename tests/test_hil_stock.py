"""The stock model: what a flat-end mill meets and leaves as it cuts a block, step by step.

Expectations come from the geometry of the cut, worked out here by hand, never from the model.
"""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.stock import Box, Engagement, HardSpot, HeightRegion, StockModel

pytestmark = pytest.mark.timeout(60)

BLOCK = Box((0.0, 100.0), (0.0, 60.0))
KC = 1000.0
D = 10.0
R = D / 2
CELL = 0.5
STEP_MM = 0.2  # a plant step at 1200 mm/min

# Lateral engagement is sampled in bins one cell wide across the tool, each reading the one
# cell it falls in. Where the tool's edge runs along an earlier cut, the bin at the edge may
# read either side of it: one bin, `CELL` of width, is the quantisation of any width we read.
WIDTH_TOL_MM = CELL


def stock(**kwargs) -> StockModel:
    args = {"box": BLOCK, "top_z": 0.0, "kc": KC, "tool_diameter_mm": D, "cell_mm": CELL}
    return StockModel(**(args | kwargs))


def walk(model, start, end, step_mm=STEP_MM):
    """Move from start to end (x, y, z) in equal steps of at most step_mm; [(position, eng)]."""
    n = max(1, math.ceil(math.dist(start, end) / step_mm))
    out = []
    prev = start
    for i in range(1, n + 1):
        here = (
            end if i == n else tuple(s + (e - s) * i / n for s, e in zip(start, end, strict=True))
        )
        out.append((here, model.step(*prev, *here)))
        prev = here
    return out


def slot_along_x(model, y, z, x_from=-10.0, x_to=110.0):
    """Rapid down outside the block at x_from, then cut along x at height z; [(x, eng)]."""
    model.step(x_from, y, 5.0, x_from, y, z)
    return [(p[0], e) for p, e in walk(model, (x_from, y, z), (x_to, y, z))]


def cell_centres(box=BLOCK, cell=CELL):
    nx, ny = round((box.x[1] - box.x[0]) / cell), round((box.y[1] - box.y[0]) / cell)
    for j in range(ny):
        for i in range(nx):
            yield box.x[0] + (i + 0.5) * cell, box.y[0] + (j + 0.5) * cell


# --- a slot through fresh stock -----------------------------------------------------------


def test_a_slot_reads_the_tool_diameter_times_the_depth_once_the_tool_is_in():
    passes = slot_along_x(stock(), y=30.0, z=-2.0)
    inside = [e for x, e in passes if R + CELL <= x <= 100 - R - CELL]
    assert len(inside) > 300
    for eng in inside:
        assert eng.ap_mm == pytest.approx(2.0)
        # a full-width slot has no earlier cut beside it: at most one bin off, in practice none
        assert eng.area_mm2 == pytest.approx(D * 2.0, abs=WIDTH_TOL_MM * 2.0)
        assert eng.ae_mm == pytest.approx(D, abs=WIDTH_TOL_MM)
        assert eng.kc == KC


def test_a_slot_reads_nothing_before_the_tool_reaches_the_block():
    passes = slot_along_x(stock(), y=30.0, z=-2.0)
    # the front looks less than a cell and a half ahead of the tool: nothing to see further off
    before = [e for x, e in passes if x + R + 1.5 * CELL < 0.0]
    assert len(before) > 10
    assert all(e.area_mm2 == 0.0 and e.ap_mm == 0.0 and e.ae_mm == 0.0 for e in before)
    assert all(e.kc == KC for e in before)


def test_a_slot_reads_nothing_once_the_front_has_left_the_block():
    passes = slot_along_x(stock(), y=30.0, z=-2.0)
    after = [e for x, e in passes if x - R > 100.0]
    assert len(after) > 10
    assert all(e.area_mm2 == 0.0 and e.ap_mm == 0.0 and e.plunge_area_mm2 == 0.0 for e in after)


def test_a_slot_above_the_stock_is_an_air_cut():
    model = stock()
    passes = slot_along_x(model, y=30.0, z=0.5)
    assert all(e == Engagement(0.0, 0.0, 0.0, 0.0, KC) for _, e in passes)
    assert model.removed_mm3() == 0.0


@settings(max_examples=25, deadline=None)
@given(
    heading=st.floats(0.0, 2 * math.pi),
    step_mm=st.floats(0.05, 0.5),
    depth=st.floats(0.5, 5.0),
)
def test_a_slot_in_any_direction_reads_the_same_width(heading, step_mm, depth):
    model = stock()
    start = (50.0, 30.0, -depth)
    end = (50.0 + 20 * math.cos(heading), 30.0 + 20 * math.sin(heading), -depth)
    model.step(start[0], start[1], 5.0, *start)  # plunge in
    passes = walk(model, start, end, step_mm)
    for (x, y, _), eng in passes:
        if math.dist((x, y), start[:2]) > R:  # out of the plunge's hole
            assert eng.ap_mm == pytest.approx(depth)
            assert eng.ae_mm == pytest.approx(D, abs=WIDTH_TOL_MM)


def test_a_curved_slot_reads_the_same_width_as_a_straight_one():
    model = stock()
    centre, radius = (50.0, 30.0), 20.0
    points = [
        (centre[0] + radius * math.cos(a), centre[1] + radius * math.sin(a), -2.0)
        for a in (k * STEP_MM / radius for k in range(int(4 / STEP_MM * radius)))
    ]  # a 230-degree arc at the plant's step
    model.step(points[0][0], points[0][1], 5.0, *points[0])
    engs = [model.step(*a, *b) for a, b in zip(points, points[1:], strict=False)]
    for eng in engs[int(D / STEP_MM) :]:
        assert eng.area_mm2 == pytest.approx(D * 2.0, abs=WIDTH_TOL_MM * 2.0)


# --- passes beside earlier cuts, over steps and through hard spots ------------------------


@pytest.mark.parametrize("stepover", [1.0, 4.0, 7.5])
def test_a_pass_beside_a_slot_reads_only_the_stepover(stepover):
    model = stock()
    slot_along_x(model, y=30.0, z=-2.0)
    passes = slot_along_x(model, y=30.0 + stepover, z=-2.0)
    inside = [e for x, e in passes if R + CELL <= x <= 100 - R - CELL]
    for eng in inside:
        assert eng.ap_mm == pytest.approx(2.0)
        assert eng.ae_mm == pytest.approx(stepover, abs=WIDTH_TOL_MM)
        assert eng.area_mm2 == pytest.approx(stepover * 2.0, abs=WIDTH_TOL_MM * 2.0)


@settings(max_examples=20, deadline=None)
@given(heading=st.floats(0.0, 2 * math.pi), stepover=st.floats(1.0, 9.0))
def test_a_pass_beside_a_slot_in_any_direction_reads_the_stepover(heading, stepover):
    model = stock()
    ux, uy = math.cos(heading), math.sin(heading)
    nx, ny = -uy, ux
    # both 30 mm passes are centred on the block's centre, and stay inside it whatever the heading
    first = ((50.0 - 15 * ux, 30.0 - 15 * uy, -2.0), (50.0 + 15 * ux, 30.0 + 15 * uy, -2.0))
    model.step(first[0][0], first[0][1], 5.0, *first[0])
    walk(model, *first)
    a = (first[0][0] + stepover * nx, first[0][1] + stepover * ny, -2.0)
    b = (first[1][0] + stepover * nx, first[1][1] + stepover * ny, -2.0)
    model.step(a[0], a[1], 5.0, *a)
    passes = walk(model, a, b)
    # away from both ends of the first slot, whose round ends a parallel pass sees differently
    middle = [e for p, e in passes if 2 * R < math.dist(p[:2], a[:2]) < 30 - 2 * R]
    assert len(middle) > 40
    # at an angle, the cell an edge bin reads lies up to half a diagonal off the bin: a bin
    # either side of the true edge
    for eng in middle:
        assert eng.ae_mm == pytest.approx(stepover, abs=2 * WIDTH_TOL_MM)
    mean = sum(e.ae_mm for e in middle) / len(middle)
    assert mean == pytest.approx(stepover, abs=WIDTH_TOL_MM)


def test_a_spring_pass_along_a_slot_cuts_nothing():
    model = stock()
    slot_along_x(model, y=30.0, z=-2.0)
    removed = model.removed_mm3()
    passes = slot_along_x(model, y=30.0, z=-2.0)
    assert all(e.area_mm2 == 0.0 and e.plunge_area_mm2 == 0.0 for _, e in passes)
    assert model.removed_mm3() == removed


@pytest.mark.parametrize(("region_z", "ap_there"), [(-1.0, 2.0), (1.0, 4.0)])
def test_a_pass_over_a_step_in_the_block_reads_its_depth_there(region_z, ap_there):
    # the block is 3 mm above the cut; the region is 1 mm lower (a pocket) or higher (a boss)
    region = HeightRegion(Box((40.0, 60.0), (0.0, 60.0)), top_z=region_z)
    passes = slot_along_x(stock(regions=[region]), y=30.0, z=-3.0)
    front_in_region = [e for x, e in passes if x >= 40.0 + CELL and x + R + 1.5 * CELL <= 60.0]
    front_out = [e for x, e in passes if x >= R + CELL and x + R + 1.5 * CELL <= 40.0]
    assert front_in_region and front_out
    assert all(e.ap_mm == pytest.approx(3.0) for e in front_out)
    assert all(e.ap_mm == pytest.approx(ap_there) for e in front_in_region)
    assert all(e.area_mm2 == pytest.approx(D * ap_there) for e in front_in_region)


def test_the_last_region_given_sets_the_height_where_regions_overlap():
    low = HeightRegion(Box((10.0, 30.0), (10.0, 30.0)), top_z=-4.0)
    high = HeightRegion(Box((20.0, 40.0), (20.0, 40.0)), top_z=3.0)
    model = stock(regions=[low, high])
    assert model.top_z(15.0, 15.0) == -4.0
    assert model.top_z(25.0, 25.0) == 3.0
    assert model.top_z(35.0, 35.0) == 3.0
    assert model.top_z(5.0, 5.0) == 0.0


def test_kc_doubles_while_the_front_is_inside_a_hard_spot():
    spot = HardSpot(Box((40.0, 60.0), (0.0, 60.0)), kc_factor=2.0)
    passes = slot_along_x(stock(hard_spots=[spot]), y=30.0, z=-2.0)
    front_in_spot = [e for x, e in passes if x >= 40.0 + CELL and x + R + 1.5 * CELL <= 60.0]
    front_out = [
        e for x, e in passes if R + CELL <= x <= 100 - R - CELL and not 40.0 - R - CELL < x < 60.0
    ]
    assert front_in_spot and front_out
    assert all(e.kc == pytest.approx(2 * KC) for e in front_in_spot)
    assert all(e.kc == pytest.approx(KC) for e in front_out)
    assert all(e.area_mm2 == pytest.approx(D * 2.0) for e in front_in_spot + front_out)


def test_kc_is_the_depth_weighted_mean_across_the_front():
    # the tool's left half (y > 30) runs in hard material that is also 1 mm lower:
    # 5 mm of width 1 mm deep at 2 x Kc, 5 mm 2 mm deep at Kc
    upper = Box((0.0, 100.0), (30.0, 60.0))
    model = stock(
        regions=[HeightRegion(upper, top_z=-1.0)], hard_spots=[HardSpot(upper, kc_factor=2.0)]
    )
    passes = slot_along_x(model, y=30.0, z=-2.0)
    inside = [e for x, e in passes if R + CELL <= x <= 100 - R - CELL]
    expected = (5 * 1.0 * 2 * KC + 5 * 2.0 * KC) / (5 * 1.0 + 5 * 2.0)
    for eng in inside:
        assert eng.kc == pytest.approx(expected)
        assert eng.area_mm2 == pytest.approx(5 * 1.0 + 5 * 2.0)
        assert eng.ap_mm == pytest.approx(2.0)
        assert eng.ae_mm == pytest.approx(15.0 / 2.0)


def test_overlapping_hard_spots_multiply():
    spots = [
        HardSpot(Box((0.0, 60.0), (0.0, 60.0)), 2.0),
        HardSpot(Box((40.0, 100.0), (0, 60)), 1.5),
    ]
    model = stock(hard_spots=spots)
    assert model.step(50.0, 30.0, 5.0, 50.0, 30.0, -1.0).kc == pytest.approx(3 * KC)
    assert model.step(20.0, 30.0, 5.0, 20.0, 30.0, -1.0).kc == pytest.approx(2 * KC)
    assert model.step(80.0, 30.0, 5.0, 80.0, 30.0, -1.0).kc == pytest.approx(1.5 * KC)


# --- plunges --------------------------------------------------------------------------------

# The cells centred in a disc of radius R cover pi R^2 give or take the cells its rim cuts
# through; half a cell of the rim's length bounds that, and is still 10 % of the area.
DISC_TOL_MM2 = 2 * math.pi * R * CELL / 2


@pytest.mark.parametrize("centre", [(50.0, 30.0), (50.1, 30.2), (50.25, 30.25), (37.37, 21.11)])
def test_a_plunge_reads_the_tool_footprint_and_no_lateral_cut(centre):
    model = stock()
    eng = model.step(*centre, 5.0, *centre, -2.0)
    assert eng.plunge_area_mm2 == pytest.approx(math.pi * R**2, abs=DISC_TOL_MM2)
    assert eng.area_mm2 == 0.0 and eng.ap_mm == 0.0 and eng.ae_mm == 0.0
    assert eng.kc == KC
    assert model.removed_mm3() == pytest.approx(eng.plunge_area_mm2 * 2.0)
    assert model.top_z(*centre) == -2.0


def test_plunging_again_to_the_same_depth_cuts_nothing_and_deeper_cuts_the_footprint_again():
    model = stock()
    first = model.step(50.0, 30.0, 5.0, 50.0, 30.0, -2.0)
    assert model.step(50.0, 30.0, 5.0, 50.0, 30.0, -2.0).plunge_area_mm2 == 0.0
    deeper = model.step(50.0, 30.0, -2.0, 50.0, 30.0, -3.0)
    assert deeper.plunge_area_mm2 == first.plunge_area_mm2
    assert model.removed_mm3() == pytest.approx(first.plunge_area_mm2 * 3.0)


def test_a_plunge_into_a_hard_spot_reads_its_kc():
    model = stock(hard_spots=[HardSpot(Box((40.0, 60.0), (20.0, 40.0)), kc_factor=2.5)])
    assert model.step(50.0, 30.0, 5.0, 50.0, 30.0, -1.0).kc == pytest.approx(2.5 * KC)


def test_a_plunge_at_the_corner_reads_a_quarter_of_the_footprint():
    model = stock()
    eng = model.step(0.0, 0.0, 5.0, 0.0, 0.0, -2.0)
    assert eng.plunge_area_mm2 == pytest.approx(math.pi * R**2 / 4, abs=DISC_TOL_MM2 / 4)


def test_a_ramp_weighs_the_kc_of_its_lateral_and_plunging_cuts_by_the_volume_each_removes():
    # hard material up to x = 44: the ramp's front (x > 46) is soft, its footprint half hard
    model = stock(hard_spots=[HardSpot(Box((0.0, 44.0), (0.0, 60.0)), kc_factor=2.0)])
    slot_along_x(model, y=30.0, z=-1.0, x_to=44.0)
    lateral, plunge = model.copy(), model.copy()
    ramp = model.step(44.0, 30.0, -1.0, 44.2, 30.0, -1.1)
    front = lateral.step(44.0, 30.0, -1.1, 44.2, 30.0, -1.1)  # the same front, no descent
    footprint = plunge.step(44.2, 30.0, -1.0, 44.2, 30.0, -1.1)  # the same disc, no travel
    assert front.kc == KC and KC < footprint.kc < 2 * KC
    assert ramp.area_mm2 == front.area_mm2 > 0.0
    assert ramp.plunge_area_mm2 == footprint.plunge_area_mm2 > 0.0
    lateral_mm3, plunging_mm3 = front.area_mm2 * 0.2, footprint.plunge_area_mm2 * 0.1
    expected = (front.kc * lateral_mm3 + footprint.kc * plunging_mm3) / (lateral_mm3 + plunging_mm3)
    assert ramp.kc == pytest.approx(expected)


# --- volume ---------------------------------------------------------------------------------


def test_a_slot_from_outside_removes_its_rectangle_and_the_end_half_disc():
    model = stock()
    length, depth = 60.0, 2.0
    model.step(-10.0, 30.0, 5.0, -10.0, 30.0, -depth)
    walk(model, (-10.0, 30.0, -depth), (length, 30.0, -depth))
    expected = D * depth * length + math.pi * R**2 * depth / 2
    # the slot's straight sides run along cell edges (30 +- 5 on a 0.5 mm grid) and are exact;
    # only the end's half circle cuts through cells: half a cell along it bounds the error
    tolerance = math.pi * R * CELL / 2 * depth
    assert model.removed_mm3() == pytest.approx(expected, abs=tolerance)


@settings(max_examples=20, deadline=None)
@given(
    heading=st.floats(0.0, 2 * math.pi),
    length=st.floats(1.0, 25.0),
    depth=st.floats(0.2, 4.0),
)
def test_a_slot_inside_the_block_removes_its_stadium(heading, length, depth):
    model = stock()
    start = (50.0, 30.0, -depth)
    end = (50.0 + length * math.cos(heading), 30.0 + length * math.sin(heading), -depth)
    model.step(50.0, 30.0, 5.0, *start)
    walk(model, start, end)
    expected = (D * length + math.pi * R**2) * depth
    # cells the stadium's outline cuts through may fall either way: at most half a cell of
    # the outline's length
    tolerance = (2 * length + 2 * math.pi * R) * CELL / 2 * depth
    assert model.removed_mm3() == pytest.approx(expected, abs=tolerance)


moves = st.lists(
    st.tuples(st.floats(-10.0, 110.0), st.floats(-10.0, 70.0), st.floats(-4.0, 2.0)),
    min_size=1,
    max_size=6,
)


@settings(max_examples=20, deadline=None)
@given(targets=moves)
def test_removed_volume_is_what_the_grid_has_lost(targets):
    region = HeightRegion(Box((20.0, 50.0), (10.0, 40.0)), top_z=-1.5)
    model = stock(regions=[region])
    position = (50.0, 30.0, 5.0)
    for target in targets:
        walk(model, position, target, step_mm=1.0)
        position = target
    lost = 0.0
    for x, y in cell_centres():
        initial = -1.5 if region.box.contains(x, y) else 0.0
        now = model.top_z(x, y)
        assert now <= initial
        lost += initial - now
    assert model.removed_mm3() == pytest.approx(lost * CELL * CELL, rel=1e-9, abs=1e-9)


@settings(max_examples=20, deadline=None)
@given(targets=moves)
def test_material_only_ever_comes_down_and_never_below_the_tool(targets):
    model = stock()
    position = (50.0, 30.0, 5.0)
    probes = [(x, y) for x, y in cell_centres() if int(x) % 7 == 0 and int(y) % 7 == 0]
    before = {p: model.top_z(*p) for p in probes}
    lowest = 0.0
    for target in targets:
        walk(model, position, target, step_mm=1.0)
        position = target
        lowest = min(lowest, target[2])
        for p in probes:
            now = model.top_z(*p)
            assert lowest <= now <= before[p]
            before[p] = now


# --- copies, determinism, the block's edges and bad arguments -------------------------------


def test_a_copy_is_cut_independently_of_its_original():
    original = stock()
    original.step(20.0, 20.0, 5.0, 20.0, 20.0, -1.0)
    removed = original.removed_mm3()
    twin = original.copy()
    plunge = twin.step(70.0, 30.0, 5.0, 70.0, 30.0, -2.0)
    assert original.top_z(70.0, 30.0) == 0.0
    assert twin.top_z(70.0, 30.0) == -2.0
    assert original.removed_mm3() == removed
    assert twin.removed_mm3() == pytest.approx(removed + plunge.plunge_area_mm2 * 2.0)
    original.step(20.0, 20.0, -1.0, 20.0, 20.0, -3.0)
    assert twin.top_z(20.0, 20.0) == -1.0
    assert original.top_z(20.0, 20.0) == -3.0
    assert twin.removed_mm3() == pytest.approx(removed + plunge.plunge_area_mm2 * 2.0)


def test_a_copy_replays_a_path_exactly_as_the_original_cut_it():
    model = stock(hard_spots=[HardSpot(Box((30.0, 40.0), (0.0, 60.0)), kc_factor=1.7)])
    fresh = model.copy()
    first = slot_along_x(model, y=27.3, z=-1.7)
    assert slot_along_x(fresh, y=27.3, z=-1.7) == first


def test_the_same_moves_give_the_same_engagements():
    def run():
        model = stock(regions=[HeightRegion(Box((30.0, 45.0), (0.0, 60.0)), top_z=-0.7)])
        engs = []
        for y in (20.0, 26.3, 32.6):
            engs += [e for _, e in slot_along_x(model, y=y, z=-2.2)]
        return engs, model.removed_mm3()

    assert run() == run()


def test_moves_outside_the_block_engage_nothing():
    model = stock()
    outside = [(-50.0, 30.0), (150.0, 30.0), (50.0, -20.0), (50.0, 90.0), (1e9, -1e9)]
    for x, y in outside:
        eng = model.step(x, y, 5.0, x, y, -3.0)
        assert eng == Engagement(0.0, 0.0, 0.0, 0.0, KC)
        eng = model.step(x, y, -3.0, x + 0.2, y + 0.1, -3.0)
        assert eng == Engagement(0.0, 0.0, 0.0, 0.0, KC)
    assert model.removed_mm3() == 0.0


def test_top_z_is_none_outside_the_block():
    model = stock()
    assert model.top_z(-0.01, 30.0) is None
    assert model.top_z(50.0, 60.01) is None
    assert model.top_z(0.0, 0.0) == 0.0
    assert model.top_z(100.0, 60.0) == 0.0


def test_a_block_not_a_whole_number_of_cells_is_covered_exactly():
    model = stock(box=Box((0.0, 10.3), (0.0, 10.1)))
    for x in (0.0, 2.0, 4.0, 6.0, 8.0, 10.0):
        for y in (0.0, 2.0, 4.0, 6.0, 8.0, 10.0):
            model.step(x, y, 5.0, x, y, -5.0)
    # plunges 2 mm apart with a 10 mm tool leave nothing: the whole block is 5 mm lower now,
    # whatever size the cells had to be to fit it
    assert model.removed_mm3() == pytest.approx(10.3 * 10.1 * 5.0)
    assert model.top_z(10.3, 10.1) == model.top_z(0.0, 0.0) == -5.0


def test_positions_must_be_finite():
    with pytest.raises(ValueError, match="finite"):
        stock().step(0.0, 0.0, 0.0, math.nan, 0.0, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"cell_mm": 0.0}, "cell_mm"),
        ({"cell_mm": -0.5}, "cell_mm"),
        ({"tool_diameter_mm": 1.0}, "tool_diameter_mm"),
        ({"tool_diameter_mm": math.inf}, "tool_diameter_mm"),
        ({"kc": 0.0}, "kc"),
        ({"kc": math.nan}, "kc"),
        ({"top_z": math.nan}, "top_z"),
        ({"box": Box((5.0, 1.0), (0.0, 60.0))}, "box.x"),
        ({"box": Box((0.0, 100.0), (3.0, 3.0))}, "box.y"),
        ({"regions": [HeightRegion(Box((0.0, 1.0), (2.0, 1.0)), -1.0)]}, r"regions\[0\].box.y"),
        (
            {"hard_spots": [HardSpot(Box((0.0, 1.0), (0.0, 1.0)), 0.0)]},
            r"hard_spots\[0\].kc_factor",
        ),
        (
            {"hard_spots": [HardSpot(Box((0.0, 1.0), (0.0, 1.0)), -2.0)]},
            r"hard_spots\[0\].kc_factor",
        ),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(kwargs, named):
    with pytest.raises(ValueError, match=rf"^{named}:"):
        stock(**kwargs)
