"""The packed values block: the kernel against its oracle, round trips, golden vectors, the
recordings, and malformed input (it must fail cleanly, never crash or hang)."""

import array
import csv
import math
import random
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from edge_agent.kernels import valuepack as kernel
from tests.oracles import valuepack_oracle as oracle

pytestmark = pytest.mark.timeout(120)

RECORDINGS = Path(__file__).resolve().parent.parent / "hil" / "data" / "cnc-mill-tool-wear"
LIMIT = (1 << 48) - 1

C = kernel.COUNTED

#: (counts, values, share) -> the exact bytes (docs/wire-format.md works the second by hand).
GOLDEN = [
    ([1], [0], [C], "21"),
    ([3], [5, 5, 5], [C], "6347"),
    ([4], [10, 11, 12, 13], [C], "05894412"),
    ([5], [0, 0, 7, 0, 0], [C], "a539a402"),
    ([2, 3], [-1, 1, 100, 102, 104], [C, C], "834062f4902402"),
    ([10], [1000, 1001, 1003, 1002, 1002, 1005, 1009, 1008, 1010, 1011], [C], "472af42223e77102"),
    ([1, 1], [LIMIT, -LIMIT], [C, C], "a10ffbffffffffff873edcffffffffff0f"),
    ([3, 3, 3], [0, 0, 0, 7, 8, 9, 2, 2, 2], [C, 0, 0], "631c8ba402"),
]


def kpack(counts, values, share=None):
    share = [C] * len(counts) if share is None else share
    return kernel.pack(array.array("i", counts), array.array("q", values), array.array("i", share))


def kunpack(data, share, max_values=1 << 20):
    counts, values = kernel.unpack(data, array.array("i", share), max_values)
    return list(counts), list(values)


def opack(counts, values, share=None):
    return oracle.pack(counts, values, [C] * len(counts) if share is None else share)


@pytest.mark.parametrize(("counts", "values", "share", "hex_bytes"), GOLDEN)
def test_golden_vectors(counts, values, share, hex_bytes):
    assert kpack(counts, values, share).hex() == hex_bytes
    assert oracle.pack(counts, values, share).hex() == hex_bytes
    assert kunpack(bytes.fromhex(hex_bytes), share) == (counts, values)


def series(draw_int):
    """A channel's values: constant, ramp, noisy, sparse spikes, or anything in range."""
    return st.one_of(
        st.tuples(st.integers(-LIMIT, LIMIT), st.integers(1, 40)).map(lambda t: [t[0]] * t[1]),
        st.tuples(st.integers(-(10**9), 10**9), st.integers(-1000, 1000), st.integers(1, 40)).map(
            lambda t: [t[0] + i * t[1] for i in range(t[2])]
        ),
        st.lists(st.integers(-300, 300), min_size=1, max_size=60),
        st.lists(st.sampled_from([0, 0, 0, 0, 0, 1, -1, 5000]), min_size=1, max_size=60),
        st.lists(st.integers(-LIMIT, LIMIT), min_size=1, max_size=20),
        st.lists(st.sampled_from([-LIMIT, LIMIT, 0]), min_size=1, max_size=20),
    )


channels = st.lists(series(None), min_size=1, max_size=8)
#: One huge delta among hundreds of small ones: no Rice parameter around the mean keeps the
#: quotients short, so Rice falls back to bitlen(top) - 6.
ONE_HUGE_DELTA = [0, 1] * 250 + [1 << 40]


@settings(max_examples=400, deadline=None)
@given(channels)
@example([[LIMIT, -LIMIT, LIMIT]])
@example([[0] * 8192])
@example([ONE_HUGE_DELTA])
def test_kernel_bytes_equal_the_oracle_and_both_round_trip(chans):
    counts = [len(c) for c in chans]
    values = [v for c in chans for v in c]
    share = [C] * len(counts)
    packed = kpack(counts, values)
    assert packed == oracle.pack(counts, values, share)
    assert kunpack(packed, share) == (counts, values)
    assert oracle.unpack(packed, share) == (counts, values)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 30), st.lists(series(None), min_size=1, max_size=4))
def test_series_that_share_a_count_round_trip_without_it(n, shapes):
    """Stamps first, with their count; then values that have as many as their stamps."""
    chans = [(c * n)[:n] for c in shapes]
    counts = [n] * (len(chans) + 1)
    values = [v for c in [[0] * n, *chans] for v in c]
    share = [C] + [0] * len(chans)
    packed = kpack(counts, values, share)
    assert packed == oracle.pack(counts, values, share)
    assert kunpack(packed, share) == (counts, values)
    assert len(packed) <= len(kpack(counts, values))  # the shared counts are not written


def test_the_rice_fallback_is_taken_and_round_trips():
    packed = kpack([len(ONE_HUGE_DELTA)], ONE_HUGE_DELTA)
    assert packed == opack([len(ONE_HUGE_DELTA)], ONE_HUGE_DELTA)
    assert oracle.rice_candidates([oracle.zigzag(1)] * 499 + [oracle.zigzag(1 << 40)]) == []
    assert kunpack(packed, [C]) == ([len(ONE_HUGE_DELTA)], ONE_HUGE_DELTA)


def test_a_constant_channel_costs_a_few_bits():
    """The mode (2 bits) and the value: one bit for 0, else 5 and its bits but the top one."""
    counts = [10] * 20
    values = [v for i in range(20) for v in [i - 10] * 10]
    assert len(kpack(counts, values, [C] + [0] * 19)) <= 2 + 20 * 11 // 8
    assert len(kpack([10] * 8, [0] * 80, [C] + [0] * 7)) == 4  # 8 bits of count, 3 a channel


@pytest.mark.parametrize(
    ("counts", "values", "share", "message"),
    [
        ([1], [LIMIT + 1], [C], "outside"),
        ([1], [-LIMIT - 1], [C], "outside"),
        ([0], [], [C], "counts must be 1..8192"),
        ([8193], [0] * 8193, [C], "counts must be 1..8192"),
        ([2], [1], [C], "counts sum to 2, but 1 values"),
        ([1, 2], [1, 2, 3], [C, 0], "series 1 has another count than series 0"),
        ([1, 1], [1, 2], [0, C], "series 0 shares the count of a bad series 0"),
        ([1, 1, 1], [1, 2, 3], [C, 0, 1], "series 2 shares the count of a bad series 1"),
        ([1], [1], [C, C], "share"),
    ],
)
def test_what_cannot_be_packed_is_refused(counts, values, share, message):
    with pytest.raises(kernel.PackError, match=message):
        kpack(counts, values, share)
    with pytest.raises(oracle.PackError):
        oracle.pack(counts, values, share)


def outcome(unpack, data, share):
    try:
        return unpack(data, share)
    except (kernel.PackError, oracle.PackError):
        return "error"


def kernel_outcome(data, share):
    return outcome(kunpack, data, share)


def oracle_outcome(data, share):
    return outcome(oracle.unpack, data, share)


layouts = st.sampled_from([[], [C], [C, C], [C, 0], [C, 0, 0], [C, C, 1, 0], [C] * 5])


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64), layouts)
def test_any_bytes_decode_or_fail_cleanly_and_kernel_and_oracle_agree(data, share):
    assert kernel_outcome(data, share) == oracle_outcome(data, share)


def test_mutated_and_truncated_blocks_fail_cleanly_and_agree():
    rng = random.Random(7)
    for _ in range(300):
        counts = [rng.choice([1, 2, 5, 10, 30]) for _ in range(rng.randint(1, 5))]
        values = [rng.randint(-5000, 5000) for _ in range(sum(counts))]
        share = [C] * len(counts)
        packed = bytearray(kpack(counts, values))
        for cut in range(len(packed)):
            assert kernel_outcome(bytes(packed[:cut]), share) == "error"
        for _ in range(10):
            mutated = bytearray(packed)
            mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
            assert kernel_outcome(bytes(mutated), share) == oracle_outcome(bytes(mutated), share)
        assert kernel_outcome(bytes(packed) + b"\0", share) == "error"


def test_a_huge_declared_count_is_refused_not_allocated():
    writer = oracle.BitWriter()
    writer.num(1 << 40)  # a count of 2^40, then nothing
    huge = writer.tobytes()
    with pytest.raises(kernel.PackError, match="bad count"):
        kunpack(huge, [C])
    with pytest.raises(kernel.PackError, match="claims 10 values"):
        kunpack(kpack([10], [0] * 10), [C], max_values=5)


@pytest.mark.parametrize("unpack", [kunpack, oracle.unpack], ids=["kernel", "oracle"])
def test_a_count_claims_the_values_of_every_series_sharing_it_before_any_is_decoded(unpack):
    """One count of 8192 shared by 128 series claims 1,048,576 values: refused at that
    count, though what follows it is not even a valid series."""
    writer = oracle.BitWriter()
    writer.num(8192)  # the count, then no series at all
    share = [C] + [0] * 127
    refused = (kernel.PackError, oracle.PackError)
    with pytest.raises(refused, match="claims 1048576 values or more, over 400000"):
        unpack(writer.tobytes(), array.array("i", share), 400_000)
    packed = kpack([3] * 4, [1, 2, 3] * 4, [C, 0, 0, 0])
    assert list(map(list, unpack(packed, array.array("i", [C, 0, 0, 0]), 12))) == [
        [3] * 4,
        [1, 2, 3] * 4,
    ]
    with pytest.raises(refused, match="claims 12 values or more, over 11"):
        unpack(packed, array.array("i", [C, 0, 0, 0]), 11)


def recording_frames(limit_files=3):
    """Every numeric column of the recordings, quantized to 4 significant digits of its full
    scale (the benchmark's rule), in 1-second frames of 10 rows."""
    for path in sorted(RECORDINGS.glob("experiment_*.csv"))[:limit_files]:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        columns = []
        for name in rows[0]:
            try:
                column = [float(r[name]) for r in rows]
            except ValueError:
                continue
            top = max(abs(v) for v in column)
            quantum = 10 ** (math.floor(math.log10(top)) - 3) if top else 1.0
            columns.append([round(v / quantum) for v in column])
        for start in range(0, len(rows), 10):
            chunk = [c[start : start + 10] for c in columns]
            yield [len(c) for c in chunk], [v for c in chunk for v in c]


def test_the_recordings_round_trip_and_pack_well_under_a_byte_a_point():
    size = points = 0
    for counts, values in recording_frames():
        share = [C] + [0] * (len(counts) - 1)
        packed = kpack(counts, values, share)
        assert kunpack(packed, share) == (counts, values)
        size += len(packed)
        points += len(values)
    assert size / points < 0.8  # 0.60 measured; make bench reports the figure
