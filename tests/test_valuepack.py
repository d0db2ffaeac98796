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

#: (counts, values) -> the exact bytes (docs/wire-format.md works the second one by hand).
GOLDEN = [
    ([1], [0], "010000"),
    ([3], [5, 5, 5], "032014"),
    ([4], [10, 11, 12, 13], "042a28820a"),
    ([5], [0, 0, 7, 0, 0], "05061c4805"),
    ([2, 3], [-1, 1, 100, 102, 104], "020a32f0e010640612"),
    ([10], [1000, 1001, 1003, 1002, 1002, 1005, 1009, 1008, 1010, 1011], "0a5aa05f9091f33801"),
    ([1, 1], [LIMIT, -LIMIT], "0188fdffffffffff23eeffffffffff0f"),
]


def kpack(counts, values):
    return kernel.pack(array.array("i", counts), array.array("q", values))


def kunpack(data, n):
    counts, values = kernel.unpack(data, n)
    return list(counts), list(values)


@pytest.mark.parametrize(("counts", "values", "hex_bytes"), GOLDEN)
def test_golden_vectors(counts, values, hex_bytes):
    assert kpack(counts, values).hex() == hex_bytes
    assert oracle.pack(counts, values).hex() == hex_bytes
    assert kunpack(bytes.fromhex(hex_bytes), len(counts)) == (counts, values)


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


@settings(max_examples=400, deadline=None)
@given(channels)
@example([[LIMIT, -LIMIT, LIMIT]])
@example([[0] * 8192])
def test_kernel_bytes_equal_the_oracle_and_both_round_trip(chans):
    counts = [len(c) for c in chans]
    values = [v for c in chans for v in c]
    packed = kpack(counts, values)
    assert packed == oracle.pack(counts, values)
    assert kunpack(packed, len(counts)) == (counts, values)
    assert oracle.unpack(packed, len(counts)) == (counts, values)


def test_a_constant_channel_costs_a_byte_or_two():
    """9 bits and the value's own: a count flag, the mode, a length, the zigzagged value."""
    counts = [10] * 20
    values = [v for i in range(20) for v in [i - 10] * 10]
    assert len(kpack(counts, values)) <= 1 + 2 * 20


@pytest.mark.parametrize(
    ("counts", "values", "message"),
    [
        ([1], [LIMIT + 1], "outside"),
        ([1], [-LIMIT - 1], "outside"),
        ([0], [], "counts must be 1..8192"),
        ([8193], [0] * 8193, "counts must be 1..8192"),
        ([2], [1], "counts sum to 2, but 1 values"),
    ],
)
def test_what_cannot_be_packed_is_refused(counts, values, message):
    with pytest.raises(kernel.PackError, match=message):
        kpack(counts, values)
    with pytest.raises(oracle.PackError):
        oracle.pack(counts, values)


def outcome(unpack, data, n):
    try:
        return unpack(data, n)
    except (kernel.PackError, oracle.PackError):
        return "error"


def kernel_outcome(data, n):
    return outcome(kunpack, data, n)


def oracle_outcome(data, n):
    return outcome(oracle.unpack, data, n)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 6))
def test_any_bytes_decode_or_fail_cleanly_and_kernel_and_oracle_agree(data, n):
    assert kernel_outcome(data, n) == oracle_outcome(data, n)


def test_mutated_and_truncated_blocks_fail_cleanly_and_agree():
    rng = random.Random(7)
    for _ in range(300):
        counts = [rng.choice([1, 2, 5, 10, 30]) for _ in range(rng.randint(1, 5))]
        values = [rng.randint(-5000, 5000) for _ in range(sum(counts))]
        packed = bytearray(kpack(counts, values))
        for cut in range(len(packed)):
            assert kernel_outcome(bytes(packed[:cut]), len(counts)) == "error"
        for _ in range(10):
            mutated = bytearray(packed)
            mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
            assert kernel_outcome(bytes(mutated), len(counts)) == oracle_outcome(
                bytes(mutated), len(counts)
            )
        assert kernel_outcome(bytes(packed) + b"\0", len(counts)) == "error"


def test_a_huge_declared_count_is_refused_not_allocated():
    with pytest.raises(kernel.PackError, match="bad count"):
        kernel.unpack(bytes([0xFF, 0xFF, 0x7F, 0x00]), 1)
    with pytest.raises(kernel.PackError, match="bad count"):
        kernel.unpack(bytes.fromhex("0a00"), 1, max_values=5)


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


def test_the_recordings_round_trip_and_pack_under_a_byte_a_point():
    size = points = 0
    for counts, values in recording_frames():
        packed = kpack(counts, values)
        assert kunpack(packed, len(counts)) == (counts, values)
        size += len(packed)
        points += len(values)
    assert size / points < 1.0  # 0.69 measured; make bench reports the figure
