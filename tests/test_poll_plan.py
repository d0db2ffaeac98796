"""The poll planner: fewest requests, every register exactly once, never over the maximum."""

from hypothesis import given
from hypothesis import strategies as st

from edge_agent.registers import Table, Tag, ValueType
from edge_agent.sources.poll_plan import PlanLimits, plan_reads, without_gaps

REGISTER_TYPES = [t for t in ValueType if t is not ValueType.BITFIELD]


@st.composite
def register_maps(draw):
    """Non-overlapping tags over the four tables, bitfields sharing some registers."""
    tags, cursor = [], {table: draw(st.integers(0, 200)) for table in Table}
    for i in range(draw(st.integers(1, 120))):
        table = draw(st.sampled_from(list(Table)))
        cursor[table] += draw(st.integers(0, 40))
        if table.is_bits:
            vtype = ValueType.BOOL
        else:
            vtype = draw(st.sampled_from([*REGISTER_TYPES, ValueType.BITFIELD]))
        if cursor[table] + vtype.words > 65536:
            continue
        if vtype is ValueType.BITFIELD:
            for bit in range(draw(st.integers(1, 4))):
                tags.append(Tag(f"t{i}_{bit}", cursor[table], table, vtype, bit=bit))
        else:
            tags.append(Tag(f"t{i}", cursor[table], table, vtype))
        cursor[table] += 1 if table.is_bits else vtype.words
    return tags


limits_strategy = st.builds(
    PlanLimits,
    max_registers=st.integers(4, 125),
    max_bits=st.integers(1, 2000),
    max_gap_registers=st.integers(0, 30),
    max_gap_bits=st.integers(0, 200),
)


def covered(requests):
    cells = []
    for r in requests:
        cells += [(r.table, a) for a in range(r.address, r.end)]
    return cells


@given(register_maps(), limits_strategy)
def test_every_register_is_read_exactly_once(tags, limits):
    requests = plan_reads(tags, limits)
    cells = covered(requests)
    assert len(cells) == len(set(cells)), "a register is read twice"
    needed = {(t.table, a) for t in tags for a in range(t.address, t.end)}
    assert needed <= set(cells)


@given(register_maps(), limits_strategy)
def test_every_tag_rides_in_exactly_one_request_that_holds_it(tags, limits):
    requests = plan_reads(tags, limits)
    carried = [t for r in requests for t in r.tags]
    assert sorted(t.name for t in carried) == sorted(t.name for t in tags)
    for r in requests:
        for t in r.tags:
            assert r.table is t.table and r.address <= t.address and t.end <= r.end


@given(register_maps(), limits_strategy)
def test_no_request_exceeds_the_protocol_maximum(tags, limits):
    for r in plan_reads(tags, limits):
        assert 1 <= r.count <= (limits.max_bits if r.table.is_bits else limits.max_registers)
        assert r.count <= (2000 if r.table.is_bits else 125)


@given(register_maps(), limits_strategy)
def test_never_more_requests_than_tags(tags, limits):
    assert len(plan_reads(tags, limits)) <= len(tags)


@given(register_maps(), limits_strategy)
def test_gaps_within_limit_are_bridged_and_wider_ones_split(tags, limits):
    requests = plan_reads(tags, limits)
    for r in requests:
        _, max_gap = limits.for_table(r.table)
        reach = r.address
        for t in r.tags:
            assert t.address - reach <= max_gap
            reach = max(reach, t.end)


@given(register_maps())
def test_without_gaps_reads_only_mapped_registers(tags):
    for r in plan_reads(tags, PlanLimits(max_gap_registers=20, max_gap_bits=100)):
        parts = without_gaps(r)
        assert not any(p.has_gaps for p in parts)
        assert sorted(t.name for p in parts for t in p.tags) == sorted(t.name for t in r.tags)


def test_contiguous_registers_merge_into_one_request():
    tags = [Tag(f"r{i}", i, Table.HOLDING, ValueType.UINT16) for i in range(10)]
    [request] = plan_reads(tags)
    assert (request.address, request.count, len(request.tags)) == (0, 10, 10)


def test_a_gap_wider_than_the_limit_splits():
    tags = [Tag("a", 0, Table.INPUT, ValueType.UINT16), Tag("b", 10, Table.INPUT, ValueType.UINT16)]
    assert len(plan_reads(tags, PlanLimits(max_gap_registers=8))) == 2
    assert len(plan_reads(tags, PlanLimits(max_gap_registers=9))) == 1


def test_a_long_map_splits_at_the_protocol_maximum():
    tags = [Tag(f"r{i}", 2 * i, Table.HOLDING, ValueType.FLOAT32) for i in range(100)]
    requests = plan_reads(tags)
    assert [r.count for r in requests] == [124, 76]
