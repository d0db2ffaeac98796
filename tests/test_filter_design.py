"""Butterworth SOS design and steady-state initial conditions, specified against scipy.

scipy is the reference here and only here (test-only): `butter_sos` must match
`scipy.signal.butter(..., output="sos")` section by section to 1e-12 of the section's
largest coefficient, and `sosfilt_zi` must be the steady state `scipy.signal.sosfilt_zi`
finds. The design module itself must never import numpy or scipy.
"""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
import scipy.signal as ss
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.filters.design import butter_sos, butter_zpk, decimate_sos, sosfilt_zi
from tests.kernel_helpers import one_line_error

KINDS = ["lowpass", "highpass", "bandpass"]
RATES_HZ = [1.0, 10.0, 100.0, 1000.0, 5000.0, 44100.0]


def _close(a, b, tol) -> bool:
    return bool(np.all(np.abs(a - b) <= tol * np.maximum(1.0, np.abs(b).max())))


def assert_same_sos(ours, reference, tol=1e-12):
    """Section by section; or, where pole pairs tie, the same sections in another order.

    Pairing takes the pole pair nearest the unit circle last. When two pairs are equally
    near (a band-pass centred on fs/4 puts them symmetrically about the imaginary axis),
    rounding decides their order, in scipy as in ours. Then the gain (carried by the first
    section) must match, and the sections, with their numerators scaled to b0 = 1, must
    match as a set.
    """
    ours = np.asarray(ours, dtype=float)
    assert ours.shape == reference.shape
    if all(_close(o, r, tol) for o, r in zip(ours, reference, strict=True)):
        return
    radii = sorted(abs(np.roots(r[3:])).max() for r in reference)
    assert any(b - a < 1e-9 for a, b in itertools.pairwise(radii)), "reordered without a tie"
    assert ours[0][0] == pytest.approx(reference[0][0], rel=tol)

    def unit_gain(sections):
        return [np.concatenate((r[:3] / r[0], r[3:])) for r in sections]

    left = unit_gain(reference)
    for section in unit_gain(ours):
        match = [i for i, r in enumerate(left) if _close(section, r, tol)]
        assert match, (ours, reference)
        left.pop(match[0])


def scipy_sos(order, cutoff_hz, fs_hz, kind):
    return ss.butter(order, cutoff_hz, btype=kind, fs=fs_hz, output="sos")


# -- the design matches scipy -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lowpass", "highpass"])
@pytest.mark.parametrize("order", range(1, 9))
@pytest.mark.parametrize("fraction", [0.001, 0.02, 0.1, 0.25, 0.4, 0.499])
def test_low_and_high_pass_sections_match_scipy_butter(kind, order, fraction):
    fs = 1000.0
    cutoff = fraction * fs
    assert_same_sos(butter_sos(order, cutoff, fs, kind), scipy_sos(order, cutoff, fs, kind))


@pytest.mark.parametrize("order", range(1, 9))
@pytest.mark.parametrize(
    "band", [(0.001, 0.002), (0.01, 0.2), (0.1, 0.4), (0.2, 0.3), (0.3, 0.499), (0.02, 0.45)]
)
def test_band_pass_sections_match_scipy_butter(order, band):
    fs = 5000.0
    cutoffs = (band[0] * fs, band[1] * fs)
    assert_same_sos(
        butter_sos(order, cutoffs, fs, "bandpass"), scipy_sos(order, cutoffs, fs, "bandpass")
    )


@settings(max_examples=300, deadline=None)
@given(
    order=st.integers(1, 8),
    kind=st.sampled_from(KINDS),
    fs=st.sampled_from(RATES_HZ),
    a=st.floats(0.0005, 0.4995),
    b=st.floats(0.0005, 0.4995),
)
def test_any_valid_design_matches_scipy_butter(order, kind, fs, a, b):
    if kind == "bandpass":
        low, high = sorted((a, b))
        if high - low < 1e-4:
            return
        cutoff = (low * fs, high * fs)
    else:
        cutoff = a * fs
    assert_same_sos(butter_sos(order, cutoff, fs, kind), scipy_sos(order, cutoff, fs, kind))


@pytest.mark.parametrize("kind", KINDS)
def test_zeros_poles_and_gain_match_scipy(kind):
    cutoff = (50.0, 120.0) if kind == "bandpass" else 80.0
    zeros, poles, gain = butter_zpk(5, cutoff, 1000.0, kind)
    z, p, k = ss.butter(5, cutoff, btype=kind, fs=1000.0, output="zpk")
    assert np.allclose(sorted(zeros, key=lambda v: (v.real, v.imag)),
                       sorted(z, key=lambda v: (v.real, v.imag)), rtol=0, atol=1e-12)  # fmt: skip
    assert np.allclose(sorted(poles, key=lambda v: (v.real, v.imag)),
                       sorted(p, key=lambda v: (v.real, v.imag)), rtol=0, atol=1e-12)  # fmt: skip
    assert gain == pytest.approx(k, rel=1e-12)


@pytest.mark.parametrize(("order", "sections"), [(1, 1), (2, 1), (3, 2), (4, 2), (7, 4), (8, 4)])
def test_low_pass_has_half_the_order_in_sections_and_a0_one(order, sections):
    sos = butter_sos(order, 10.0, 1000.0)
    assert len(sos) == sections
    assert all(len(section) == 6 and section[3] == 1.0 for section in sos)


def test_band_pass_has_order_sections():
    assert len(butter_sos(8, (10.0, 50.0), 1000.0, "bandpass")) == 8


def test_low_pass_passes_dc_and_high_pass_passes_nyquist():
    low = np.asarray(butter_sos(4, 10.0, 1000.0))
    high = np.asarray(butter_sos(4, 10.0, 1000.0, "highpass"))
    _, h_low = ss.sosfreqz(low, worN=[0.0, np.pi])
    _, h_high = ss.sosfreqz(high, worN=[0.0, np.pi])
    assert abs(h_low[0]) == pytest.approx(1.0, rel=1e-12)
    assert abs(h_high[1]) == pytest.approx(1.0, rel=1e-12)


def test_cutoff_is_the_minus_3_db_point():
    sos = np.asarray(butter_sos(6, 123.0, 1000.0))
    _, h = ss.sosfreqz(sos, worN=[123.0], fs=1000.0)
    assert abs(h[0]) == pytest.approx(2**-0.5, rel=1e-9)


@pytest.mark.parametrize("factor", [2, 3, 5, 10, 100])
def test_decimation_low_pass_is_order_8_at_0_8_of_the_new_nyquist(factor):
    assert_same_sos(decimate_sos(factor), ss.butter(8, 0.8 / factor, output="sos"))


# -- steady state -------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    order=st.integers(1, 8),
    kind=st.sampled_from(KINDS),
    a=st.floats(0.002, 0.498),
    b=st.floats(0.002, 0.498),
)
def test_sosfilt_zi_matches_scipy(order, kind, a, b):
    fs = 1000.0
    if kind == "bandpass":
        low, high = sorted((a, b))
        if high - low < 1e-3:
            return
        cutoff = (low * fs, high * fs)
    else:
        cutoff = a * fs
    sos = scipy_sos(order, cutoff, fs, kind)
    reference = ss.sosfilt_zi(sos)
    ours = np.asarray(sosfilt_zi(sos.tolist()))
    # Both solve the same small system, scipy by LU, ours in closed form; near-DC designs
    # are ill-conditioned (1 + a1 + a2 -> 0), so they agree to 1e-10 of the state's size,
    # and each is a steady state to 1e-12 (next test).
    assert np.abs(ours - reference).max() <= 1e-10 * max(1.0, np.abs(reference).max())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("order", [1, 2, 5, 8])
def test_sosfilt_zi_is_a_fixed_point_for_a_constant_input(kind, order):
    cutoff = (20.0, 200.0) if kind == "bandpass" else 20.0
    sos = butter_sos(order, cutoff, 1000.0, kind)
    zi = np.asarray(sosfilt_zi(sos))
    y, zf = ss.sosfilt(np.asarray(sos), np.full(100, 3.0), zi=3.0 * zi)
    dc_gain = 1.0 if kind == "lowpass" else 0.0
    assert np.abs(zf - 3.0 * zi).max() <= 1e-12 * max(1.0, np.abs(zi).max())
    assert np.abs(y - 3.0 * dc_gain).max() <= 1e-12 * 3.0


def test_sosfilt_zi_refuses_a_pole_at_dc():
    with pytest.raises(ValueError, match="section 0: a pole at z = 1"):
        sosfilt_zi([[1.0, 0.0, 0.0, 1.0, -1.0, 0.0]])


# -- arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "what"),
    [
        ((0, 10.0, 100.0), "order must be an integer in 1..8, got 0"),
        ((9, 10.0, 100.0), "got 9"),
        ((2.0, 10.0, 100.0), "got 2.0"),
        ((True, 10.0, 100.0), "got True"),
        ((2, 0.0, 100.0), "0 < cutoff_hz < fs/2 = 50 Hz, got 0"),
        ((2, 50.0, 100.0), "got 50"),
        ((2, -1.0, 100.0), "got -1"),
        ((2, float("nan"), 100.0), "got nan"),
        ((2, "10", 100.0), "cutoff_hz must be a number of Hz"),
        ((2, 10.0, 0.0), "fs_hz must be finite and > 0"),
        ((2, 10.0, float("inf")), "fs_hz must be finite and > 0"),
        ((2, 10.0, 100.0, "bandstop"), "kind must be one of lowpass, highpass, bandpass"),
        ((2, 10.0, 100.0, "bandpass"), "a bandpass needs cutoff_hz=(low, high)"),
        ((2, (20.0, 10.0), 100.0, "bandpass"), "low < high"),
        ((2, (10.0, 10.0), 100.0, "bandpass"), "low < high"),
        ((2, (10.0, 60.0), 100.0, "bandpass"), "0 < high < fs/2"),
        ((2, (10.0, 20.0, 30.0), 100.0, "bandpass"), "a bandpass needs cutoff_hz=(low, high)"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(args, what):
    assert what in one_line_error(lambda: butter_sos(*args))


@pytest.mark.parametrize("factor", [0, 1, 2.0, True])
def test_decimation_factor_must_be_an_integer_of_at_least_2(factor):
    assert "decimation factor" in one_line_error(lambda: decimate_sos(factor))


def test_design_runs_without_numpy_or_scipy():
    code = (
        "import sys\n"
        "from edge_agent.filters.design import butter_sos, sosfilt_zi\n"
        "sosfilt_zi(butter_sos(4, (1.0, 2.0), 10.0, 'bandpass'))\n"
        "bad = [m for m in ('numpy', 'scipy') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
