"""Plain-Python twin of `edge_agent.kernels.iir` (docs/filters.md); never used by the agent.

Exists to disagree with a wrong kernel: it shares no code with the kernel, filters one
whole list at a time, sample by sample and section by section, and writes the bad-sample
policy out as plainly as it can. It must never be used by the agent: one Python loop per
sample and section, slow and meant to be obviously right.

The kernel's arithmetic is its contract (transposed direct form II in scipy's order of
operations; the steady-state start zi_unit * x), so the oracle performs the same
floating-point operations in the same order and the two agree bit for bit (the kernels
are built with -ffp-contract=off: no fused multiply-adds).
"""

from __future__ import annotations

import math


def _bad(value: float) -> bool:
    return math.isnan(value) or math.isinf(value)


def zi_unit(sos) -> list[list[float]]:
    """The steady state for a constant 1 (scipy's sosfilt_zi), in closed form."""
    out = []
    scale = 1.0
    for b0, b1, b2, _a0, a1, a2 in sos:
        rhs0 = b1 - a1 * b0
        rhs1 = b2 - a2 * b0
        z0 = (rhs0 + rhs1) / (1.0 + a1 + a2)
        z1 = rhs1 - a2 * z0
        out.append([scale * z0, scale * z1])
        scale *= (b0 + b1 + b2) / (1.0 + a1 + a2)
    return out


def sosfilt(sos, x, unit, init: str = "steady", zi=None):
    """Filters the list x. Returns (y, final state, initialised).

    init "steady": the first finite sample sets the state to unit * sample; "zeros": the
    state starts at zero; zi (a [z0, z1] per section) overrides both. A sample whose input
    or output is not finite gives NaN, zeroes the state and leaves it uninitialised until
    the next finite sample, which sets it to unit * sample.
    """
    state = [[0.0, 0.0] for _ in sos]
    initialised = init != "steady"
    if zi is not None:
        state = [[float(a), float(b)] for a, b in zi]
        initialised = True
    y = []
    for v in x:
        if not initialised:
            if _bad(v):
                y.append(math.nan)
                continue
            state = [[u0 * v, u1 * v] for u0, u1 in unit]
            initialised = True
        value = v
        for s, (b0, b1, b2, _a0, a1, a2) in enumerate(sos):
            z0, z1 = state[s]
            out = b0 * value + z0
            state[s] = [(b1 * value - a1 * out) + z1, b2 * value - a2 * out]
            value = out
        if _bad(value):
            y.append(math.nan)
            state = [[0.0, 0.0] for _ in sos]
            initialised = False
        else:
            y.append(value)
    return y, state, initialised


def sosfilt_channels(sos, rows, unit, init: str = "steady"):
    """rows: a list of samples, each a list of channel values; returns output rows."""
    if not rows:
        return []
    columns = [sosfilt(sos, list(column), unit, init)[0] for column in zip(*rows, strict=True)]
    return [list(row) for row in zip(*columns, strict=True)]


def decimate(sos, x, factor: int, unit, init: str = "steady") -> list[float]:
    """The filtered stream's samples 0, factor, 2 x factor, ..."""
    return sosfilt(sos, x, unit, init)[0][::factor]
