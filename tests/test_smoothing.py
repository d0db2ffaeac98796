"""The smoothing kernels, specified: EMA, moving average/RMS/min/max, Hampel, bad samples.

Held bit for bit to the plain-Python oracle in `tests/oracles/smoothing_oracle.py` (NaN equals
NaN; every other value, the sign of zero included, must match exactly) on random, adversarial
and real spindle-power input, and to themselves: any split of a stream into blocks gives the
same output as the whole.
"""

from __future__ import annotations

import array
import math
import random
import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.kernels.smoothing import (
    Ema,
    Hampel,
    MovingAverage,
    MovingMax,
    MovingMin,
    MovingRms,
)
from tests.kernel_helpers import ROOT, in_blocks, one_line_error, run, spindle_power
from tests.oracles import smoothing_oracle as oracle

DBL_MAX = 1.7976931348623157e308
TAU_S, DT_S = 0.05, 0.01

# name -> (kernel factory, oracle), given a window (ignored by the EMA).
KERNELS = {
    "ema": (lambda w: Ema(TAU_S, DT_S), lambda x, w: oracle.ema(x, TAU_S, DT_S)),
    "moving_average": (MovingAverage, oracle.moving_average),
    "moving_rms": (MovingRms, oracle.moving_rms),
    "moving_min": (MovingMin, oracle.moving_min),
    "moving_max": (MovingMax, oracle.moving_max),
    "hampel": (Hampel, oracle.hampel),
}
ALL_KINDS = list(KERNELS)
WINDOWED = [kind for kind in KERNELS if kind != "ema"]

# Magnitudes that break naive arithmetic: overflow of sums and squares, subnormals, zeros.
SPECIAL_VALUES = [
    0.0, -0.0, 1.0, -1.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1e-300, 1e300, -1e300,
    DBL_MAX, -DBL_MAX, 1.5e154, -1.5e154, 1e16, math.nan, math.inf, -math.inf,
]  # fmt: skip
VALUE = st.one_of(
    st.floats(-1e3, 1e3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(SPECIAL_VALUES),
)
# Constant runs (steps, plateaus, NaN bursts) of adversarial values.
SIGNAL = st.lists(st.tuples(VALUE, st.integers(1, 12)), max_size=40).map(
    lambda runs: [v for v, n in runs for _ in range(n)]
)
WINDOW = st.sampled_from([1, 2, 3, 4, 5, 7, 8, 16, 31])


def same_float(a: float, b: float) -> bool:
    """Bit-for-bit equality, except that any NaN equals any NaN."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return struct.pack("<d", a) == struct.pack("<d", b)


def assert_same(got, expected) -> None:
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert same_float(g, e), f"sample {i}: kernel {g!r}, oracle {e!r}"


def make(kind: str, window: int = 5):
    return KERNELS[kind][0](window)


# -- against the oracle -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("window", [1, 2, 3, 8, 31])
def test_random_gaussian_noise_matches_the_oracle_bit_for_bit(kind, window):
    rng = random.Random(window)
    x = [rng.gauss(100.0, 30.0) for _ in range(500)]
    assert_same(run(make(kind, window), x), KERNELS[kind][1](x, window))


@pytest.mark.parametrize("kind", ALL_KINDS)
@given(x=SIGNAL, window=WINDOW)
def test_adversarial_signals_match_the_oracle_bit_for_bit(kind, x, window):
    assert_same(run(make(kind, window), x), KERNELS[kind][1](x, window))


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("window", [1, 4, 10, 31])
def test_real_spindle_power_matches_the_oracle_bit_for_bit(kind, window):
    x = spindle_power()
    assert_same(run(make(kind, window), x), KERNELS[kind][1](x, window))


@pytest.mark.parametrize("kind", ALL_KINDS)
@given(x=st.lists(st.sampled_from([0.0, -0.0, 1.0, -1.0, 5.0]), max_size=60), window=WINDOW)
def test_signed_zeros_and_ties_come_out_as_the_oracle_says(kind, x, window):
    # Ties decide which of 0.0 and -0.0 a median or an extremum returns.
    assert_same(run(make(kind, window), x), KERNELS[kind][1](x, window))


# -- streaming ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
@given(x=SIGNAL, window=WINDOW, data=st.data())
def test_any_split_into_blocks_gives_the_same_output_as_the_whole(kind, x, window, data):
    sizes = data.draw(st.lists(st.integers(0, 40), max_size=12))
    whole = run(make(kind, window), x)
    assert_same(in_blocks(make(kind, window), x, sizes), whole)
    assert_same(in_blocks(make(kind, window), x, [1] * len(x)), whole)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_out_may_be_the_input_buffer_itself(kind):
    x = array.array("d", spindle_power()[:300])
    expected = run(make(kind), x)
    make(kind).process(x, x)
    assert_same(list(x), expected)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_reset_forgets_everything_seen_before(kind):
    x = spindle_power()[200:400]
    kernel = make(kind)
    run(kernel, [1e6, -3.0, 7.0, 0.25, 42.0, 1e-9, 5.0])
    kernel.reset()
    assert_same(run(kernel, x), run(make(kind), x))


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_an_empty_block_changes_nothing(kind):
    kernel = make(kind)
    run(kernel, [1.0, 2.0])
    kernel.process(array.array("d"), array.array("d"))
    assert_same(run(kernel, [3.0, 4.0]), run(make(kind), [1.0, 2.0, 3.0, 4.0])[2:])


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_a_longer_output_keeps_its_tail(kind):
    out = array.array("d", [9.0] * 4)
    make(kind).process(array.array("d", [1.0, 2.0]), out)
    assert list(out[2:]) == [9.0, 9.0]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_any_float64_buffer_is_accepted(kind):
    np = pytest.importorskip("numpy")
    x = spindle_power()[:100]
    out = np.empty(len(x))
    make(kind).process(np.asarray(x), out)
    assert_same(list(out), run(make(kind), x))


# -- bad samples ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_bad_sample_gives_nan_then_the_filter_starts_afresh(kind, bad):
    x = spindle_power()[100:200]
    after = spindle_power()[300:400]
    got = run(make(kind), x + [bad] + after)
    assert math.isnan(got[len(x)])
    assert_same(got[len(x) + 1 :], run(make(kind), after))


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_a_burst_of_bad_samples_is_all_nan_and_recovery_is_clean(kind):
    burst = [math.nan, math.inf, math.nan, -math.inf, math.nan]
    got = run(make(kind), [1.0, 2.0, 3.0] + burst + [10.0, 20.0])
    assert all(math.isnan(v) for v in got[3:8])
    assert_same(got[8:], run(make(kind), [10.0, 20.0]))


def test_an_ema_that_would_overflow_gives_nan_and_recovers():
    ema = Ema(1.0, 1.0)  # alpha 0.63: DBL_MAX - (-DBL_MAX) overflows
    got = run(ema, [-DBL_MAX, DBL_MAX, 5.0, 5.0])
    assert got[0] == -DBL_MAX and math.isnan(got[1]) and got[2:] == [5.0, 5.0]


def test_a_moving_sum_that_overflows_recovers_at_the_next_multiple_of_the_window():
    # The running sum of squares overflows to inf, then inf - inf is NaN; the re-sum at
    # sample index 4 (a multiple of the window) restores it from the buffer.
    got = run(MovingRms(4), [1.5e154, 1.5e154, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0])
    assert got[1] == math.inf
    assert got[8:] == [2.0, 2.0]


# -- EMA -----------------------------------------------------------------------------------


def test_ema_alpha_is_one_minus_exp_of_minus_dt_over_tau():
    assert Ema(0.5, 0.01).alpha == pytest.approx(1.0 - math.exp(-0.01 / 0.5), rel=1e-15)


def test_ema_alpha_keeps_its_precision_when_the_period_is_tiny_against_tau():
    # 1 - exp(-1e-12) would keep about 4 significant digits; -expm1 keeps them all.
    assert Ema(1.0, 1e-12).alpha == pytest.approx(1e-12 - 0.5e-24, rel=1e-15)


def test_ema_first_sample_initialises_the_state():
    assert run(Ema(10.0, 0.001), [42.0, 42.0]) == [42.0, 42.0]


def test_ema_step_response_reaches_63_percent_after_one_time_constant():
    tau_s, dt_s = 0.2, 0.001
    got = run(Ema(tau_s, dt_s), [0.0] + [1.0] * 200)
    assert got[200] == pytest.approx(1.0 - math.exp(-1.0), rel=1e-12)


def test_ema_of_a_constant_is_that_constant_exactly():
    assert set(run(Ema(0.3, 0.001), [0.1] * 1000)) == {0.1}


# -- moving average and RMS -----------------------------------------------------------------


def test_moving_average_averages_what_has_arrived_until_the_window_is_full():
    assert run(MovingAverage(4), [4.0, 8.0, 0.0, 4.0, 8.0, 8.0]) == [4.0, 6.0, 4.0, 4.0, 5.0, 5.0]


def test_moving_rms_of_a_sine_over_whole_periods_is_amplitude_over_root_two():
    x = [3.0 * math.sin(2 * math.pi * i / 50) for i in range(500)]
    assert run(MovingRms(50), x)[-1] == pytest.approx(3.0 / math.sqrt(2.0), rel=1e-12)


def test_moving_rms_reads_a_mean_square_cancelled_below_zero_as_zero_not_nan():
    # Once 1e8 (squared: 1e16) has left the window, the running sum of squares is off by
    # rounding at 1e16 and reads -1.0 at index 5: sqrt would give NaN. Index 7, a multiple
    # of the window, re-sums the buffer and is exact again.
    x = [1e8, 3.0, 1e-3, 1e-3, 1e-3, 0.0, 2.0, 2.0]
    got = run(MovingRms(4), x)
    assert oracle.moving_rms(x, 4)[5] == got[5] == 0.0
    assert got[7] == math.sqrt((1e-3 * 1e-3 + 0.0 + 4.0 + 4.0) / 4)


def test_the_running_sum_is_resummed_exactly_at_every_multiple_of_the_window():
    # 1e16 swallows the 1.0s added while it is in the window; once it has left, the running
    # sum is wrong until sample index 8, a multiple of the window, where it is re-summed.
    window = 4
    x = [1e16] + [1.0] * 11
    got = run(MovingAverage(window), x)
    assert got[4] != 1.0  # the drift the re-sum exists for
    assert got[7] == 1.0 and got[11] == 1.0


def test_resum_instants_count_samples_since_reset_not_blocks():
    x = [1e16] + [1.0] * 11
    kernel = MovingAverage(4)
    run(kernel, [5.0, 6.0, math.nan])  # the bad sample resets: counting restarts
    assert run(kernel, x) == run(MovingAverage(4), x)


# -- moving min and max ----------------------------------------------------------------------


@settings(max_examples=50)
@given(x=st.lists(st.floats(-1e6, 1e6), max_size=200), window=WINDOW)
def test_moving_min_and_max_are_the_extremes_of_the_trailing_window(x, window):
    lows, highs = run(MovingMin(window), x), run(MovingMax(window), x)
    for i in range(len(x)):
        trailing = x[max(0, i - window + 1) : i + 1]
        assert (lows[i], highs[i]) == (min(trailing), max(trailing))


def test_moving_max_keeps_the_newest_of_equal_maxima():
    assert [math.copysign(1, v) for v in run(MovingMax(3), [0.0, -0.0])] == [1.0, -1.0]


def test_moving_max_lets_a_peak_go_exactly_window_samples_later():
    assert run(MovingMax(3), [9.0, 1.0, 2.0, 3.0, 0.0]) == [9.0, 9.0, 9.0, 3.0, 3.0]


# -- Hampel -----------------------------------------------------------------------------------


def test_hampel_replaces_a_spike_by_the_window_median():
    x = [1.0, 1.1, 0.9, 1.0, 1.05, 50.0, 1.0]
    got = run(Hampel(5), x)
    assert got[5] == 1.05  # median of [1.1, 0.9, 1.0, 1.05, 50.0]
    assert got[:5] == x[:5] and got[6] == 1.0


def test_hampel_is_causal_the_current_sample_is_judged_now():
    # No delay: the spike is replaced at its own index, from the samples up to it.
    got = run(Hampel(7), [2.0, 2.1, 1.9, 2.0, -80.0])
    assert got[4] == 2.0


def test_hampel_passes_samples_within_n_sigmas_of_the_median():
    x = [10.0, 11.0, 9.0, 10.0, 12.0]  # median 10, MAD 1: 12 is 1.35 sigma away
    assert run(Hampel(5, 3.0), x) == x
    assert run(Hampel(5, 1.0), x)[-1] == 10.0


def test_hampel_passes_a_step_once_half_the_window_has_the_new_level():
    got = run(Hampel(5), [0.0] * 5 + [1.0] * 5)
    assert got[5:] == [0.0, 0.0, 1.0, 1.0, 1.0]  # median's delay on steps: window // 2


def test_hampel_removes_spikes_injected_into_real_spindle_power():
    clean = spindle_power()
    spiky = list(clean)
    at = list(range(60, len(clean), 97))
    for k, i in enumerate(at):
        spiky[i] += 2.0 if k % 2 else -1.5  # 4-5x the largest real power sample
    got = run(Hampel(9, 3.0), spiky)
    for i in at:
        assert abs(got[i] - clean[i]) < 0.06, (i, got[i], clean[i])
    assert_same(got, oracle.hampel(spiky, 9, 3.0))


def test_hampel_keeps_equal_values_in_arrival_order_like_a_stable_sort():
    # sorted([0.0, -0.0, 5.0]) keeps 0.0 before -0.0: the median is -0.0, and 5.0 (MAD 0)
    # is replaced by it.
    assert math.copysign(1.0, run(Hampel(3), [0.0, -0.0, 5.0])[-1]) == -1.0


def test_hampel_median_of_an_even_window_is_the_mean_of_the_middle_two():
    assert run(Hampel(4, 0.0), [1.0, 3.0, 100.0, 5.0])[-1] == 4.0


def test_hampel_median_of_two_huge_middle_values_does_not_overflow():
    got = run(Hampel(2, 0.0), [DBL_MAX, DBL_MAX / 2, DBL_MAX])
    assert got[-1] == 0.5 * DBL_MAX + 0.5 * (DBL_MAX / 2)


# -- construction errors ----------------------------------------------------------------------


@pytest.mark.parametrize("cls", [MovingAverage, MovingRms, MovingMin, MovingMax, Hampel])
@pytest.mark.parametrize("window", [0, -3, 2.5, True, "5"])
def test_a_bad_window_is_refused(cls, window):
    assert "window" in one_line_error(lambda: cls(window))


@pytest.mark.parametrize(
    ("tau_s", "dt_s", "what"),
    [(0.0, 0.01, "tau_s"), (-1.0, 0.01, "tau_s"), (math.inf, 0.01, "tau_s"),
     (math.nan, 0.01, "tau_s"), (1.0, 0.0, "dt_s"), (1.0, math.nan, "dt_s")],
)  # fmt: skip
def test_a_bad_time_constant_or_period_is_refused(tau_s, dt_s, what):
    assert what in one_line_error(lambda: Ema(tau_s, dt_s))


@pytest.mark.parametrize("n_sigmas", [-1.0, math.nan, math.inf])
def test_a_bad_n_sigmas_is_refused(n_sigmas):
    assert "n_sigmas" in one_line_error(lambda: Hampel(5, n_sigmas))


@pytest.mark.parametrize("kind", WINDOWED)
def test_a_window_may_be_any_integer_type(kind):
    np = pytest.importorskip("numpy")
    assert make(kind, np.int64(4)).window == 4


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_a_short_output_is_refused_naming_both_lengths(kind):
    message = one_line_error(
        lambda: make(kind).process(array.array("d", [1.0] * 3), array.array("d", [0.0] * 2))
    )
    assert "2" in message and "3" in message


def test_the_kernel_imports_nothing_of_the_agent_and_no_numpy():
    source = ROOT / "edge_agent" / "kernels" / "smoothing.pyx"
    imports = re.findall(r"^\s*(?:from|c?import)\s+(\S+)", source.read_text(), re.MULTILINE)
    assert imports
    assert not [n for n in imports if "edge_agent" in n or n.startswith(".") or "numpy" in n]
