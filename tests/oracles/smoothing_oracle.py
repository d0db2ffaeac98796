"""Plain-Python twin of `edge_agent.kernels.smoothing` (docs/filters.md); never used by the agent.

Exists to disagree with a wrong kernel: it shares no code with the kernel, keeps each window
as a plain list (oldest first) and recomputes what the kernel maintains incrementally (the
extremum by a scan, the median and MAD by `sorted`). It must never be used by the agent:
one Python call per sample, slow and meant to be obviously right.

Where the kernel's arithmetic is part of its contract (the running sum's update and re-sum
rule, the EMA update, the midpoint of two middle values), the oracle performs the same
floating-point operations in the same order, so the two agree bit for bit.
"""

from __future__ import annotations

import math

MAD_TO_SIGMA = 1.4826


def _bad(value: float) -> bool:
    return math.isnan(value) or math.isinf(value)


def ema(x, tau_s: float, dt_s: float) -> list[float]:
    """y = y + alpha * (x - y), alpha = 1 - exp(-dt/tau); the first good sample sets y."""
    alpha = -math.expm1(-dt_s / tau_s)  # 1 - exp(-dt/tau) without cancellation
    out = []
    y = None
    for v in x:
        if _bad(v):
            out.append(math.nan)
            y = None
        elif y is None:
            y = v
            out.append(y)
        else:
            y = y + alpha * (v - y)
            if _bad(y):  # overflow from finite inputs: a bad sample too
                out.append(math.nan)
                y = None
            else:
                out.append(y)
    return out


def _running_means(terms, window: int) -> list[float]:
    """Mean of the last `window` terms with the kernel's running-sum rule (None = bad)."""
    out = []
    kept: list[float] = []  # oldest first
    total = 0.0
    since_reset = 0
    for term in terms:
        if term is None:
            out.append(None)
            kept, total, since_reset = [], 0.0, 0
            continue
        # A full window: add the change (term - oldest); a filling one: add the term.
        change = term - kept.pop(0) if len(kept) == window else term
        total = total + change
        kept.append(term)
        since_reset += 1
        if since_reset % window == 0:
            total = 0.0
            for t in kept:
                total = total + t
        out.append(total / len(kept))
    return out


def moving_average(x, window: int) -> list[float]:
    means = _running_means([None if _bad(v) else v for v in x], window)
    return [math.nan if m is None else m for m in means]


def _root(mean_square: float | None) -> float:
    """NaN for a bad sample; a mean square cancelled below zero reads as 0.0."""
    if mean_square is None:
        return math.nan
    if mean_square < 0.0:
        return 0.0
    return math.sqrt(mean_square)  # NaN stays NaN: inf - inf between re-sums


def moving_rms(x, window: int) -> list[float]:
    return [_root(m) for m in _running_means([None if _bad(v) else v * v for v in x], window)]


def _extremum(x, window: int, better) -> list[float]:
    """The value no other in the window beats; among equals, the newest."""
    out = []
    kept: list[float] = []
    for v in x:
        if _bad(v):
            out.append(math.nan)
            kept = []
            continue
        kept = (kept + [v])[-window:]
        best = kept[0]
        for candidate in kept[1:]:
            if not better(best, candidate):
                best = candidate
        out.append(best)
    return out


def moving_min(x, window: int) -> list[float]:
    return _extremum(x, window, lambda best, c: best < c)


def moving_max(x, window: int) -> list[float]:
    return _extremum(x, window, lambda best, c: best > c)


def midpoint(a: float, b: float) -> float:
    """(a + b) / 2 as the kernel computes it: halve the sum, or the halves if it overflows."""
    total = a + b
    if math.isinf(total):
        return 0.5 * a + 0.5 * b
    return 0.5 * total


def median(values) -> float:
    ordered = sorted(values)  # stable: equal values (0.0, -0.0) keep their arrival order
    m = len(ordered)
    if m % 2:
        return ordered[m // 2]
    return midpoint(ordered[m // 2 - 1], ordered[m // 2])


def hampel(x, window: int, n_sigmas: float = 3.0) -> list[float]:
    """Causal Hampel: the current sample against the trailing window that includes it."""
    out = []
    kept: list[float] = []
    for v in x:
        if _bad(v):
            out.append(math.nan)
            kept = []
            continue
        kept = (kept + [v])[-window:]
        med = median(kept)
        mad = median([abs(k - med) for k in kept])
        out.append(med if abs(v - med) > n_sigmas * MAD_TO_SIGMA * mad else v)
    return out
