"""Butterworth IIR design (low-pass, high-pass, band-pass) as second-order sections; no numpy.

Plain Python with `cmath`, run once when a filter chain is built: it must never import numpy
or scipy (tens of MB on a Pi) and never runs per sample. The results match
`scipy.signal.butter(..., output="sos")` and `scipy.signal.sosfilt_zi` to about 1e-12
(tests/test_filter_design.py holds them to it), because the steps are scipy's own:

1. the analog prototype: N poles `-exp(i*pi*m/(2N))`, m = -N+1, -N+3, ..., N-1, no zeros;
2. pre-warping of the cutoff(s), `4 * tan(pi * Wn / 2)` with Wn the cutoff over Nyquist
   (scipy's `iirfilter` with its normalised fs = 2), then `lp2lp` / `lp2hp` / `lp2bp`;
3. the bilinear transform (zeros at infinity go to z = -1);
4. scipy's `zpk2sos` "nearest" pairing: the pole closest to the unit circle goes last with
   the zero nearest to it, and the gain goes into the first section.

An SOS is a list of sections `[b0, b1, b2, 1.0, a1, a2]`, the layout of scipy and of
`edge_agent.kernels.iir`. Bad arguments raise a one-line ValueError.
"""

from __future__ import annotations

import cmath
import math
from numbers import Real

KINDS = ("lowpass", "highpass", "bandpass")
MAX_ORDER = 8  # the range; band-pass doubles it (order 8 -> 8 sections)
# scipy's `_cplxreal` tolerance: 100 * machine epsilon, relative to |z|.
_TOL = 100 * 2.220446049250313e-16

Sos = list[list[float]]


# -- arguments --------------------------------------------------------------------------


def _frequency(name: str, value, fs_hz: float) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number of Hz, got {value!r}")
    value = float(value)
    if not 0.0 < value < fs_hz / 2:
        raise ValueError(f"{name} must satisfy 0 < {name} < fs/2 = {fs_hz / 2:g} Hz, got {value:g}")
    return value


def _check(order, cutoff_hz, fs_hz, kind) -> tuple[int, float, list[float]]:
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= MAX_ORDER:
        raise ValueError(f"order must be an integer in 1..{MAX_ORDER}, got {order!r}")
    if isinstance(fs_hz, bool) or not isinstance(fs_hz, Real):
        raise ValueError(f"fs_hz must be a number of Hz, got {fs_hz!r}")
    fs_hz = float(fs_hz)
    if not (math.isfinite(fs_hz) and fs_hz > 0.0):
        raise ValueError(f"fs_hz must be finite and > 0, got {fs_hz!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "bandpass":
        try:
            low, high = cutoff_hz
        except (TypeError, ValueError):
            raise ValueError(
                f"a bandpass needs cutoff_hz=(low, high) in Hz, got {cutoff_hz!r}"
            ) from None
        low, high = _frequency("low", low, fs_hz), _frequency("high", high, fs_hz)
        if not low < high:
            raise ValueError(f"bandpass needs low < high, got low={low:g} Hz, high={high:g} Hz")
        return order, fs_hz, [low, high]
    return order, fs_hz, [_frequency("cutoff_hz", cutoff_hz, fs_hz)]


# -- zeros, poles, gain -------------------------------------------------------------------


def _prod(values) -> complex:
    result = 1.0 + 0.0j
    for v in values:
        result *= v
    return result


def butter_zpk(order: int, cutoff_hz, fs_hz: float, kind: str = "lowpass"):
    """Digital zeros, poles and gain, as scipy's `butter(..., output="zpk")` gives them."""
    order, fs_hz, cutoffs = _check(order, cutoff_hz, fs_hz, kind)
    # Prototype: the middle pole of an odd order is exactly -1 (m = 0).
    poles = [-cmath.exp(1j * math.pi * m / (2 * order)) for m in range(-order + 1, order, 2)]
    zeros: list[complex] = []
    gain = 1.0
    # Normalised to Nyquist = 1 with fs = 2, as scipy's iirfilter does, then pre-warped.
    warped = [2 * 2.0 * math.tan(math.pi * (2 * f / fs_hz) / 2.0) for f in cutoffs]
    if kind == "lowpass":
        (wo,) = warped
        poles = [wo * p for p in poles]
        gain = gain * wo**order
    elif kind == "highpass":
        (wo,) = warped
        gain = gain * (_prod(-z for z in zeros) / _prod(-p for p in poles)).real
        poles = [wo / p for p in poles]
        zeros = [0j] * order  # the prototype's zeros at infinity move to the origin
    else:
        bw = warped[1] - warped[0]
        wo = math.sqrt(warped[0] * warped[1])
        scaled = [p * bw / 2 for p in poles]
        poles = [p + cmath.sqrt(p**2 - wo**2) for p in scaled] + [
            p - cmath.sqrt(p**2 - wo**2) for p in scaled
        ]
        zeros = [0j] * order
        gain = gain * bw**order
    # Bilinear transform at fs = 2 (fs2 = 4); zeros at infinity go to Nyquist (z = -1).
    fs2 = 4.0
    degree = len(poles) - len(zeros)
    gain = gain * (_prod(fs2 - z for z in zeros) / _prod(fs2 - p for p in poles)).real
    zeros = [(fs2 + z) / (fs2 - z) for z in zeros] + [-1.0 + 0j] * degree
    poles = [(fs2 + p) / (fs2 - p) for p in poles]
    return zeros, poles, gain


# -- pairing into sections (scipy's zpk2sos, pairing="nearest", digital) -----------------


def _cplxreal(values: list[complex]) -> list[complex]:
    """One member (positive imaginary part) of each conjugate pair, then the reals, sorted."""
    values = sorted(values, key=lambda v: (v.real, abs(v.imag)))
    reals = [complex(v.real, 0.0) for v in values if abs(v.imag) <= _TOL * abs(v)]
    rest = [v for v in values if abs(v.imag) > _TOL * abs(v)]
    upper = [v for v in rest if v.imag > 0]
    lower = [v for v in rest if v.imag < 0]
    if len(upper) != len(lower):
        raise ValueError("a complex zero or pole has no conjugate")
    # Runs of (nearly) equal real part are ordered by |imag|, as scipy does.
    upper, lower = _sort_runs(upper), _sort_runs(lower)
    for u, w in zip(upper, lower, strict=True):
        if abs(u - w.conjugate()) > _TOL * abs(w):
            raise ValueError("a complex zero or pole has no conjugate")
    pairs = [(u + w.conjugate()) / 2 for u, w in zip(upper, lower, strict=True)]
    return pairs + reals


def _sort_runs(values: list[complex]) -> list[complex]:
    out: list[complex] = []
    i = 0
    while i < len(values):
        j = i + 1
        while j < len(values) and values[j].real - values[j - 1].real <= _TOL * abs(values[j - 1]):
            j += 1
        out.extend(sorted(values[i:j], key=lambda v: abs(v.imag)))
        i = j
    return out


def _is_real(v: complex) -> bool:
    return v.imag == 0.0


def _worst(poles: list[complex]) -> int:
    """Index of the pole closest to the unit circle (the first of equals)."""
    distances = [abs(1.0 - abs(p)) for p in poles]
    return distances.index(min(distances))


def _nearest(candidates: list[complex], to: complex, which: str) -> int:
    order = sorted(range(len(candidates)), key=lambda i: abs(candidates[i] - to))
    for i in order:
        if which == "any" or _is_real(candidates[i]) == (which == "real"):
            return i
    raise ValueError(f"no {which} zero left to pair")  # unreachable for Butterworth designs


def _poly(roots: list[complex]) -> list[complex]:
    coefs = [1.0 + 0j]
    for r in roots:
        coefs = [a - r * b for a, b in zip([*coefs, 0j], [0j, *coefs], strict=True)]
    return coefs


def _section(zeros: list[complex], poles: list[complex]) -> list[float]:
    b, a = _poly(zeros), _poly(poles)
    # Right-aligned, as scipy's _single_zpksos: [0, 1, -p] for a single root. Conjugate
    # pairs and reals give real polynomials; the imaginary residue is rounding.
    b = [0.0] * (3 - len(b)) + [c.real for c in b]
    a = [0.0] * (3 - len(a)) + [c.real for c in a]
    return b + a


def zpk2sos(zeros: list[complex], poles: list[complex], gain: float) -> Sos:
    """scipy's `zpk2sos(z, p, k)` for a digital filter, pairing "nearest"."""
    zeros, poles = list(zeros), list(poles)
    poles += [0j] * max(len(zeros) - len(poles), 0)
    zeros += [0j] * max(len(poles) - len(zeros), 0)
    n_sections = (len(poles) + 1) // 2
    if len(poles) % 2 == 1:
        poles.append(0j)
        zeros.append(0j)
    zeros, poles = _cplxreal(zeros), _cplxreal(poles)
    sos: Sos = [[]] * n_sections
    for si in range(n_sections - 1, -1, -1):
        p1 = poles.pop(_worst(poles))
        n_real_poles = sum(_is_real(p) for p in poles)
        if _is_real(p1) and n_real_poles == 0:
            # The last real pole: a first-order section, padded with a pole/zero at 0.
            z1 = zeros.pop(_nearest(zeros, p1, "real"))
            sos[si] = _section([z1, 0j], [p1, 0j])
        elif (
            len(poles) + 1 == len(zeros)
            and not _is_real(p1)
            and n_real_poles == 1
            and sum(_is_real(z) for z in zeros) == 1
        ):
            # One real pole and one real zero left: this pole must take a complex zero.
            z1 = zeros.pop(_nearest(zeros, p1, "complex"))
            sos[si] = _section([z1, z1.conjugate()], [p1, p1.conjugate()])
        else:
            if _is_real(p1):
                real_idx = [i for i, p in enumerate(poles) if _is_real(p)]
                p2 = poles.pop(real_idx[_worst([poles[i] for i in real_idx])])
            else:
                p2 = p1.conjugate()
            if not zeros:
                sos[si] = _section([], [p1, p2])
                continue
            z1 = zeros.pop(_nearest(zeros, p1, "any"))
            if not _is_real(z1):
                sos[si] = _section([z1, z1.conjugate()], [p1, p2])
            elif zeros:
                z2 = zeros.pop(_nearest(zeros, p1, "real"))
                sos[si] = _section([z1, z2], [p1, p2])
            else:
                sos[si] = _section([z1], [p1, p2])
    sos[0] = [c * gain for c in sos[0][:3]] + sos[0][3:]
    return sos


# -- the public API -----------------------------------------------------------------------


def butter_sos(order: int, cutoff_hz, fs_hz: float, kind: str = "lowpass") -> Sos:
    """A Butterworth filter as second-order sections, like `butter(..., output="sos")`.

    `kind` is "lowpass", "highpass" or "bandpass"; for a band-pass `cutoff_hz` is
    `(low_hz, high_hz)` and the filter has `order` sections (2 x order poles), else
    `(order + 1) // 2` sections. Cutoffs are the -3 dB points, 0 < cutoff < fs_hz / 2.
    """
    return zpk2sos(*butter_zpk(order, cutoff_hz, fs_hz, kind))


def decimate_sos(factor: int, order: int = 8) -> Sos:
    """The anti-alias low-pass for decimation by `factor`: cutoff 0.8 x the new Nyquist.

    scipy's `decimate` uses the same cutoff and order (with a Chebyshev I design); the
    sample rate cancels out, so the design is made at fs = 2 (Nyquist 1).
    """
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
        raise ValueError(f"decimation factor must be an integer >= 2, got {factor!r}")
    return butter_sos(order, 0.8 / factor, 2.0, "lowpass")


def sosfilt_zi(sos: Sos) -> Sos:
    """Per-section state for a unit step's steady state, like scipy's `sosfilt_zi`.

    Multiply by the first sample x0 to start a filter as if x0 had always been its input
    (no start-up transient). Section i solves scipy's `lfilter_zi` 2x2 system
    `zi = A zi + B` in closed form and is scaled by the DC gain of the sections before it.
    """
    zi: Sos = []
    scale = 1.0
    for i, section in enumerate(sos):
        if len(section) != 6:
            raise ValueError(f"section {i}: expected 6 coefficients, got {len(section)}")
        b0, b1, b2, a0, a1, a2 = (float(c) for c in section)
        if a0 != 1.0:
            b0, b1, b2, a1, a2 = b0 / a0, b1 / a0, b2 / a0, a1 / a0, a2 / a0
            a0 = 1.0
        denominator = 1.0 + a1 + a2
        if denominator == 0.0:
            raise ValueError(f"section {i}: a pole at z = 1 has no steady state")
        # (1 + a1) z0 - z1 = b1 - a1 b0 ;  a2 z0 + z1 = b2 - a2 b0
        rhs0 = b1 - a1 * b0
        rhs1 = b2 - a2 * b0
        z0 = (rhs0 + rhs1) / denominator
        z1 = rhs1 - a2 * z0
        zi.append([scale * z0, scale * z1])
        scale *= (b0 + b1 + b2) / (a0 + a1 + a2)
    return zi
