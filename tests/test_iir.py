"""The IIR kernels, specified: SOS cascades on one and many channels, decimation, bad samples.

Held to scipy (test-only) to 1e-12 of the signal's peak magnitude, bit for bit to the
plain-Python oracle in `tests/oracles/iir_oracle.py` (NaN equals NaN; every other value,
the sign of zero included, must match exactly), and to themselves: any split of a stream
into blocks gives the same output as the whole.
"""

from __future__ import annotations

import array
import math
import platform
import random
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.signal as ss
from hypothesis import given, settings
from hypothesis import strategies as st

import edge_agent.kernels
from edge_agent.filters.design import butter_sos, decimate_sos, sosfilt_zi
from edge_agent.kernels import MissingKernelFinder
from edge_agent.kernels.iir import Decimator, SosFilter, SosFilterBank, sosfilt
from tests.kernel_helpers import ROOT, in_blocks, one_line_error, run, spindle_power
from tests.oracles import iir_oracle as oracle

FS_HZ = 1000.0

# Designs across the range: orders 1-8, cutoffs near DC, mid-band and near Nyquist.
DESIGNS = {
    "lp1": butter_sos(1, 50.0, FS_HZ),
    "lp4": butter_sos(4, 10.0, FS_HZ),
    "lp4-low": butter_sos(4, 0.5, FS_HZ),
    "lp5": butter_sos(5, 300.0, FS_HZ),
    "lp8": butter_sos(8, 100.0, FS_HZ),
    "hp2": butter_sos(2, 5.0, FS_HZ, "highpass"),
    "hp7": butter_sos(7, 200.0, FS_HZ, "highpass"),
    "bp5": butter_sos(5, (20.0, 80.0), FS_HZ, "bandpass"),
    "bp8": butter_sos(8, (40.0, 300.0), FS_HZ, "bandpass"),
}
DESIGN_IDS = list(DESIGNS)
# Every cascade length the kernel specialises (1-4 sections) and the generic path (5, 8).
assert {len(s) for s in DESIGNS.values()} >= {1, 2, 3, 4, 5, 8}

DBL_MAX = 1.7976931348623157e308
SPECIAL_VALUES = [
    0.0, -0.0, 1.0, -1.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1e-300, 1e300, -1e300,
    DBL_MAX, -DBL_MAX, 1e16, math.nan, math.inf, -math.inf,
]  # fmt: skip
VALUE = st.one_of(
    st.floats(-1e3, 1e3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(SPECIAL_VALUES),
)
RUN = st.tuples(VALUE, st.integers(1, 30)).map(lambda run: [run[0]] * run[1])
ADVERSARIAL = st.lists(st.one_of(VALUE.map(lambda v: [v]), RUN), max_size=40).map(
    lambda runs: [v for run in runs for v in run]
)


def same(a, b) -> bool:
    """Bit-for-bit equality of two sequences, except that any NaN equals any NaN."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        return False
    for u, v in zip(a, b, strict=True):
        if math.isnan(u) or math.isnan(v):
            if not (math.isnan(u) and math.isnan(v)):
                return False
        elif struct.pack("<d", u) != struct.pack("<d", v):
            return False
    return True


def decimate(decimator, x) -> list[float]:
    data = array.array("d", x)
    out = array.array("d", bytes(8 * (len(x) // decimator.factor + 1)))
    written = decimator.process(data, out)
    return list(out[:written])


def close_to_peak(ours, reference, x, tol=1e-12) -> bool:
    ours, reference = np.asarray(ours), np.asarray(reference)
    peak = max(np.abs(np.asarray(x)).max(), np.abs(reference).max())
    return bool(np.abs(ours - reference).max() <= tol * peak)


def rows(data, n_channels):
    """A 2-D float64 buffer (n_samples, n_channels) over an array.array, as the agent has."""
    buffer = array.array("d", data)
    if not buffer:  # memoryview.cast refuses a zero in the shape
        return buffer, np.empty((0, n_channels))
    return buffer, memoryview(buffer).cast("B").cast("d", (len(buffer) // n_channels, n_channels))


def adversarial_signals(seed=7, n=3000):
    rng = np.random.default_rng(seed)
    step = np.zeros(n)
    step[n // 3 :] = 1.0
    impulse = np.zeros(n)
    impulse[17] = 1.0
    return {
        "noise": rng.normal(size=n),
        "step": step,
        "impulse": impulse,
        "large": 1e290 * rng.normal(size=n),
        "tiny": 1e-290 * rng.normal(size=n),
        "square": np.sign(np.sin(np.arange(n) / 7.0)) * 5.0 + 100.0,
        "chirp": np.sin(np.arange(n) ** 2 * 1e-4),
    }


SIGNALS = adversarial_signals()


# -- one channel against scipy --------------------------------------------------------------


@pytest.mark.parametrize("signal", list(SIGNALS))
@pytest.mark.parametrize("design", DESIGN_IDS)
def test_zeros_init_matches_scipy_sosfilt(design, signal):
    sos, x = DESIGNS[design], SIGNALS[signal]
    ours = run(SosFilter(sos, init="zeros"), x)
    assert close_to_peak(ours, ss.sosfilt(np.asarray(sos), x), x)


@pytest.mark.parametrize("signal", list(SIGNALS))
@pytest.mark.parametrize("design", DESIGN_IDS)
def test_steady_init_matches_scipy_started_at_sosfilt_zi_times_the_first_sample(design, signal):
    sos, x = DESIGNS[design], SIGNALS[signal]
    # Our zi_unit (design.sosfilt_zi), since scipy's differs from it by rounding on
    # ill-conditioned near-DC designs (tests/test_filter_design.py holds the two together).
    zi = np.asarray(sosfilt_zi(sos)) * x[0]
    reference, _ = ss.sosfilt(np.asarray(sos), x, zi=zi)
    assert close_to_peak(run(SosFilter(sos), x), reference, x)


@pytest.mark.parametrize("design", DESIGN_IDS)
def test_an_explicit_state_matches_scipy_zi_and_the_final_state_is_zf(design):
    sos = DESIGNS[design]
    x = SIGNALS["noise"]
    zi = np.random.default_rng(3).normal(size=(len(sos), 2))
    f = SosFilter(sos, init="zeros")
    f.set_state(zi.tolist())
    reference, zf = ss.sosfilt(np.asarray(sos), x, zi=zi)
    assert close_to_peak(run(f, x), reference, x)
    assert np.abs(np.asarray(f.state) - zf).max() <= 1e-12 * np.abs(zf).max()


@pytest.mark.parametrize("design", ["lp1", "lp4", "lp5", "lp8"])
def test_a_steady_filter_passes_a_constant_level_from_its_first_sample(design):
    y = run(SosFilter(DESIGNS[design]), [230.0] * 2000)
    assert max(abs(v - 230.0) for v in y) <= 1e-12 * 230.0


def test_a_near_dc_design_holds_its_level_to_its_coefficients_precision():
    # Cutoff 1/2000 of fs: 1 + a1 + a2 is about 1e-5, so rounding of the coefficients moves
    # the DC gain itself by about 1e-11. The level is held to that, with no transient.
    y = run(SosFilter(butter_sos(8, 0.5, FS_HZ)), [230.0] * 2000)
    assert max(abs(v - 230.0) for v in y) <= 1e-9 * 230.0


def test_a_zeros_filter_starts_from_zero_as_scipy_does():
    y = run(SosFilter(DESIGNS["lp4"], init="zeros"), [230.0] * 5)
    assert y[0] < 1.0


def test_real_spindle_power_matches_scipy_and_the_oracle():
    x = spindle_power()  # 100 ms sampling: a 0.5 Hz low-pass keeps the cutting load
    sos = butter_sos(4, 0.5, 10.0)
    unit = sosfilt_zi(sos)
    ours = run(SosFilter(sos, unit), x)
    reference, _ = ss.sosfilt(np.asarray(sos), x, zi=np.asarray(unit) * x[0])
    assert close_to_peak(ours, reference, x)
    assert same(ours, oracle.sosfilt(sos, x, unit)[0])
    decimator = Decimator(5, decimate_sos(5))
    assert same(decimate(decimator, x), oracle.decimate(decimate_sos(5), x, 5, unit_of(5)))


def unit_of(factor):
    return oracle.zi_unit(decimate_sos(factor))


# -- one channel against the oracle and itself -----------------------------------------------


@settings(max_examples=300, deadline=None)
@given(design=st.sampled_from(DESIGN_IDS), x=ADVERSARIAL, init=st.sampled_from(["steady", "zeros"]))
def test_matches_the_oracle_bit_for_bit_on_adversarial_input(design, x, init):
    sos = DESIGNS[design]
    f = SosFilter(sos, init=init)
    expected, state, initialised = oracle.sosfilt(sos, x, oracle.zi_unit(sos), init)
    assert same(run(f, x), expected)
    assert same([v for pair in f.state for v in pair], [v for pair in state for v in pair])
    assert f.initialised == initialised


@settings(max_examples=200, deadline=None)
@given(
    design=st.sampled_from(DESIGN_IDS),
    x=ADVERSARIAL,
    sizes=st.lists(st.integers(0, 50), max_size=20),
)
def test_any_block_split_gives_the_whole_blocks_output(design, x, sizes):
    sos = DESIGNS[design]
    assert same(in_blocks(SosFilter(sos), x, sizes), run(SosFilter(sos), x))


@pytest.mark.parametrize("design", DESIGN_IDS)
def test_one_sample_at_a_time_gives_the_whole_blocks_output(design):
    sos, x = DESIGNS[design], list(SIGNALS["chirp"][:500])
    assert same(in_blocks(SosFilter(sos), x, [1] * len(x)), run(SosFilter(sos), x))


def test_filtering_in_place_gives_the_same_output():
    sos, x = DESIGNS["bp8"], SIGNALS["noise"]
    data = array.array("d", x)
    SosFilter(sos).process(data, data)
    assert same(data, run(SosFilter(sos), x))


def test_reset_gives_a_new_filters_output():
    sos, x = DESIGNS["lp4"], list(SIGNALS["noise"][:100])
    f = SosFilter(sos)
    run(f, [5.0, 7.0])
    f.reset()
    assert f.initialised is False
    assert same(run(f, x), run(SosFilter(sos), x))


def test_the_kernel_computes_the_same_zi_unit_as_the_design():
    for sos in DESIGNS.values():
        assert same(
            [v for pair in SosFilter(sos).zi_unit for v in pair],
            [v for pair in sosfilt_zi(sos) for v in pair],
        )


def test_an_explicit_zi_unit_is_used_for_the_steady_start():
    sos = DESIGNS["lp4"]
    unit = [[0.5, 0.25], [0.125, 0.0625]]
    assert same(run(SosFilter(sos, unit), [2.0]), oracle.sosfilt(sos, [2.0], unit)[0])


def test_sosfilt_convenience_is_scipy_like():
    sos, x = DESIGNS["lp5"], SIGNALS["noise"]
    y = sosfilt(sos, x)
    assert isinstance(y, array.array)
    assert close_to_peak(y, ss.sosfilt(np.asarray(sos), x), x)
    zi = ss.sosfilt_zi(np.asarray(sos)) * 0.5
    y, zf = sosfilt(sos, list(x), zi.tolist())
    reference, reference_zf = ss.sosfilt(np.asarray(sos), x, zi=zi)
    assert close_to_peak(y, reference, x)
    assert np.abs(np.asarray(zf) - reference_zf).max() <= 1e-12


# -- bad samples -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("init", ["steady", "zeros"])
@pytest.mark.parametrize("design", DESIGN_IDS)
def test_a_bad_sample_gives_nan_and_the_next_finite_sample_restarts_at_steady_state(
    design, init, bad
):
    sos = DESIGNS[design]
    x = list(SIGNALS["square"][:300])
    x[100] = bad
    y = run(SosFilter(sos, init=init), x)
    assert math.isnan(y[100])
    assert not any(math.isnan(v) for v in y[:100] + y[101:])
    # Recovery is at once and without transient: as a new steady filter started there.
    assert same(y[101:], run(SosFilter(sos), x[101:]))


def test_a_run_of_bad_samples_gives_a_run_of_nans_then_recovers():
    sos = DESIGNS["lp8"]
    x = [1.0] * 10 + [math.nan, math.inf, math.nan] * 5 + [3.0] * 10
    y = run(SosFilter(sos), x)
    assert all(math.isnan(v) for v in y[10:25])
    assert max(abs(v - 3.0) for v in y[25:]) <= 1e-12 * 3.0


def test_nan_never_poisons_the_state():
    f = SosFilter(DESIGNS["hp7"])
    run(f, [math.nan])
    assert f.initialised is False and f.state == [[0.0, 0.0]] * 4
    assert not any(math.isnan(v) for v in run(f, list(SIGNALS["noise"][:50])))


def test_an_overflow_from_finite_input_is_a_bad_sample_too():
    sos = DESIGNS["hp2"]
    x = [DBL_MAX, -DBL_MAX, DBL_MAX, 1.0, 1.0, 1.0]
    y = run(SosFilter(sos), x)
    assert same(y, oracle.sosfilt(sos, x, oracle.zi_unit(sos))[0])
    # -DBL_MAX after DBL_MAX overflows; so does the step from DBL_MAX down to 1.0 (a
    # high-pass answers a step of -DBL_MAX); the next sample restarts at 1.0.
    assert [math.isnan(v) for v in y] == [False, True, False, True, False, False]


def test_leading_bad_samples_leave_a_steady_filter_waiting_for_its_first_sample():
    y = run(SosFilter(DESIGNS["lp4"]), [math.nan, math.nan, 42.0, 42.0])
    assert math.isnan(y[0]) and math.isnan(y[1])
    assert y[2:] == pytest.approx([42.0, 42.0], rel=1e-12)


# -- many channels ---------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    design=st.sampled_from(DESIGN_IDS),
    n_channels=st.integers(1, 9),
    data=st.data(),
    init=st.sampled_from(["steady", "zeros"]),
)
def test_each_channel_of_a_bank_is_a_single_channel_filter_bit_for_bit(
    design, n_channels, data, init
):
    sos = DESIGNS[design]
    columns = [data.draw(ADVERSARIAL) for _ in range(n_channels)]
    n = min(len(c) for c in columns)
    block = [columns[c][i] for i in range(n) for c in range(n_channels)]
    buffer, x = rows(block, n_channels)
    out_buffer, out = rows([0.0] * len(block), n_channels)
    bank = SosFilterBank(sos, n_channels, init=init)
    bank.process(x, out)
    for c in range(n_channels):
        single = SosFilter(sos, init=init)
        assert same(out_buffer[c::n_channels], run(single, columns[c][:n])), c
        assert same(
            [v for s in bank.state for pair in s for v in pair[c : c + 1]],
            [v for pair in single.state for v in pair],
        )
    assert bank.initialised == [
        oracle.sosfilt(sos, columns[c][:n], oracle.zi_unit(sos), init)[2] for c in range(n_channels)
    ]


@pytest.mark.parametrize("design", DESIGN_IDS)
def test_a_bank_matches_scipy_on_axis_0_with_zi(design):
    sos = np.asarray(DESIGNS[design])
    x = np.random.default_rng(5).normal(size=(2000, 8)) * np.arange(1, 9)
    zi = np.asarray(sosfilt_zi(sos.tolist()))[:, :, None] * x[0]  # ours: see steady test
    reference, zf = ss.sosfilt(sos, x, axis=0, zi=zi)
    bank = SosFilterBank(sos.tolist(), 8)
    out = np.empty_like(x)
    bank.process(x, out)
    assert close_to_peak(out, reference, x)
    assert np.abs(np.asarray(bank.state) - zf).max() <= 1e-12 * np.abs(zf).max()


@settings(max_examples=100, deadline=None)
@given(
    design=st.sampled_from(DESIGN_IDS),
    n_channels=st.integers(1, 5),
    n=st.integers(0, 120),
    sizes=st.lists(st.integers(0, 30), max_size=10),
)
def test_any_block_split_gives_the_same_bank_output(design, n_channels, n, sizes):
    sos = DESIGNS[design]
    x = np.random.default_rng(n).normal(size=(n, n_channels))
    x[x > 2.0] = np.nan
    whole = np.empty_like(x)
    SosFilterBank(sos, n_channels).process(x, whole)
    bank = SosFilterBank(sos, n_channels)
    parts, start = [], 0
    for size in [*sizes, n]:
        block = np.ascontiguousarray(x[start : start + size])
        out = np.empty_like(block)
        bank.process(block, out)
        parts.append(out)
        start += len(block)
    assert same(np.concatenate(parts).ravel(), whole.ravel())


def test_a_bank_filters_in_place_and_restarts_a_bad_channel_alone():
    sos = DESIGNS["lp4"]
    x = np.full((50, 3), 10.0)
    x[20, 1] = np.nan
    expected = np.empty_like(x)
    SosFilterBank(sos, 3).process(x, expected)
    SosFilterBank(sos, 3).process(x, x)
    assert same(x.ravel(), expected.ravel())
    assert np.isnan(x[20, 1]) and np.isnan(x).sum() == 1
    assert np.abs(x[~np.isnan(x)] - 10.0).max() <= 1e-12 * 10.0


def test_a_bank_set_state_and_reset():
    sos = DESIGNS["lp4"]
    bank = SosFilterBank(sos, 2, init="zeros")
    zi = [[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]
    bank.set_state(zi)
    assert bank.state == zi
    assert bank.initialised == [True, True]
    bank.reset()
    assert bank.state == [[[0.0, 0.0], [0.0, 0.0]]] * 2


# -- decimation ------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [1, 2, 3, 5, 10])
def test_decimation_matches_scipy_filter_then_every_factor_th_sample(factor):
    sos = decimate_sos(factor) if factor > 1 else DESIGNS["lp4"]
    x = SIGNALS["noise"]
    reference = ss.sosfilt(np.asarray(sos), x)[::factor]
    ours = decimate(Decimator(factor, sos, init="zeros"), x)
    assert close_to_peak(ours, reference, x)


@settings(max_examples=200, deadline=None)
@given(
    factor=st.integers(1, 7),
    x=ADVERSARIAL,
    sizes=st.lists(st.integers(0, 20), max_size=15),
)
def test_decimation_matches_the_oracle_for_any_block_split(factor, x, sizes):
    sos = DESIGNS["lp8"]
    expected = oracle.decimate(sos, x, factor, oracle.zi_unit(sos))
    decimator = Decimator(factor, sos)
    got, start = [], 0
    for size in [*sizes, len(x)]:
        got += decimate(decimator, x[start : start + size])
        start += size
    assert same(got, expected)
    assert decimator.phase == len(x) % factor


def test_decimation_in_place_and_with_the_tightest_output():
    x = list(SIGNALS["chirp"][:1000])
    data = array.array("d", x)
    decimator = Decimator(3, decimate_sos(3))
    written = decimator.process(data, data)
    assert written == 334
    assert same(data[:written], oracle.decimate(decimate_sos(3), x, 3, unit_of(3)))
    decimator.reset()
    assert decimator.process(array.array("d", x[:7]), array.array("d", [0.0] * 3)) == 3


def test_decimation_returns_no_sample_until_the_phase_comes_round():
    decimator = Decimator(4, decimate_sos(4))
    out = array.array("d", [0.0, 0.0])
    counts = [decimator.process(array.array("d", [1.0]), out) for _ in range(9)]
    assert counts == [1, 0, 0, 0, 1, 0, 0, 0, 1]


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sos", "what"),
    [
        ([], "sos has no sections"),
        (5, "sos must be a sequence"),
        ([[1.0, 0.0, 0.0, 1.0, 0.0]], "section 0: expected 6 coefficients, got 5"),
        ([[1.0] * 6, [1.0, 0.0, 0.0, 2.0, 0.0, 0.0]], "section 1: a0 must be 1.0"),
        ([[1.0, math.nan, 0.0, 1.0, 0.0, 0.0]], "section 0: coefficients must be finite"),
        ([[1.0, "x", 0.0, 1.0, 0.0, 0.0]], "section 0: coefficients must be numbers"),
        ([[1.0, 0.0, 0.0, 1.0, -1.0, 0.0]], "section 0: a pole at z = 1"),
        ([[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]] * 65, "more than the limit of 64"),
    ],
)
def test_a_bad_sos_is_refused_in_one_line(sos, what):
    assert what in one_line_error(lambda: SosFilter(sos))
    assert what in one_line_error(lambda: SosFilterBank(sos, 2))
    assert what in one_line_error(lambda: Decimator(2, sos))


def test_bad_arguments_are_refused_in_one_line():
    sos = DESIGNS["lp4"]
    f = SosFilter(sos)
    assert "init must be 'steady' or 'zeros'" in one_line_error(lambda: SosFilter(sos, init="x"))
    assert "zi_unit must be 2 rows" in one_line_error(lambda: SosFilter(sos, [[0.0, 0.0]]))
    assert "zi must be 2 rows of 2" in one_line_error(lambda: f.set_state([[0.0]] * 2))
    assert "output too short: 1 slots for 2" in one_line_error(
        lambda: f.process(array.array("d", [0.0, 0.0]), array.array("d", [0.0]))
    )
    assert "n_channels must be in 1..4096" in one_line_error(lambda: SosFilterBank(sos, 0))
    assert "n_channels must be an integer" in one_line_error(lambda: SosFilterBank(sos, 2.0))
    bank = SosFilterBank(sos, 3)
    _, x = rows([0.0] * 8, 2)
    assert "expected 3 channels" in one_line_error(lambda: bank.process(x, x))
    assert "zi must have shape (2, 2, 3)" in one_line_error(lambda: bank.set_state([[[0.0]]]))
    assert "factor must be in 1..1000000, got 0" in one_line_error(lambda: Decimator(0, sos))
    assert "factor must be an integer" in one_line_error(lambda: Decimator(2.5, sos))
    assert "decimating 7 samples by 3 needs 3" in one_line_error(
        lambda: Decimator(3, sos).process(array.array("d", [0.0] * 7), array.array("d", [0.0]))
    )


def test_an_empty_block_is_fine_and_changes_nothing():
    f = SosFilter(DESIGNS["lp4"])
    f.process(array.array("d"), array.array("d"))
    assert f.initialised is False
    assert Decimator(2, DESIGNS["lp4"]).process(array.array("d"), array.array("d")) == 0


# -- the module's boundaries ------------------------------------------------------------------


def test_the_kernel_imports_nothing_of_the_agent_and_no_numpy():
    source = ROOT / "edge_agent" / "kernels" / "iir.pyx"
    imports = re.findall(r"^\s*(?:from|c?import)\s+(\S+)", source.read_text(), re.MULTILINE)
    assert imports
    assert not [n for n in imports if "edge_agent" in n or n == "." or n.split(".")[0] in
                ("numpy", "scipy")]  # fmt: skip


def test_the_kernel_runs_without_numpy_or_scipy():
    code = (
        "import array, sys\n"
        "from edge_agent.kernels.iir import SosFilter\n"
        "f = SosFilter([[1.0, 0.0, 0.0, 1.0, -0.5, 0.0]])\n"
        "x = array.array('d', [1.0, 2.0])\n"
        "f.process(x, x)\n"
        "bad = [m for m in ('numpy', 'scipy') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_random_long_stream_matches_the_oracle():
    rng = random.Random(11)
    x = [rng.gauss(0.0, 1.0) for _ in range(5000)]
    for i in rng.sample(range(5000), 20):
        x[i] = math.nan
    for sos in DESIGNS.values():
        assert same(run(SosFilter(sos), x), oracle.sosfilt(sos, x, oracle.zi_unit(sos))[0])


@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64"),
    reason="scipy's aarch64 wheels may fuse multiply-adds; the 1e-12 tests hold everywhere",
)
@pytest.mark.parametrize("design", DESIGN_IDS)
def test_on_x86_64_the_output_is_scipys_bit_for_bit(design):
    sos, x = DESIGNS[design], SIGNALS["noise"] * 1e3
    assert same(run(SosFilter(sos, init="zeros"), x), ss.sosfilt(np.asarray(sos), x))


def test_a_kernel_that_was_never_compiled_fails_to_import_saying_how_to_build_it(tmp_path):
    (tmp_path / "notbuilt.pyx").write_text("")
    finder = MissingKernelFinder("edge_agent.kernels", tmp_path)
    with pytest.raises(ImportError, match=r"kernels.notbuilt is not compiled: run `make"):
        finder.find_spec("edge_agent.kernels.notbuilt")
    assert finder.find_spec("edge_agent.kernels.nosource") is None
    assert finder.find_spec("elsewhere.notbuilt") is None


def test_importing_an_uncompiled_kernel_names_the_fix(tmp_path):
    """A source tree without the built extensions, as after a clone without `make`."""
    kernels = Path(edge_agent.kernels.__file__).parent
    shutil.copytree(
        kernels, tmp_path / "edge_agent" / "kernels", ignore=shutil.ignore_patterns("*.so")
    )
    (tmp_path / "edge_agent" / "__init__.py").write_text("")
    result = subprocess.run(
        [sys.executable, "-c", "import edge_agent.kernels.iir"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert "edge_agent.kernels.iir is not compiled: run `make test`" in result.stderr
