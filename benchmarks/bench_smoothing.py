"""Benchmark of the smoothing kernels against numpy/scipy and the Python oracle; never asserts.

Measures only (wall clock, side by side, on this machine): figures belong to
`make bench`, not to tests. Costs are ns per sample on one 10^6-sample block (the issue's
target: EMA and moving RMS at 200 M samples/s or more, i.e. 5 ns/sample or less). Also runs
the drift check: 10^8 samples streamed through the moving average and moving RMS, the
result compared at checkpoints with an exact (math.fsum) recomputation of the window.
numpy and scipy are baselines here only; the agent never imports them.
"""

from __future__ import annotations

import math
import time

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import maximum_filter1d
from scipy.signal import lfilter

from edge_agent.kernels.smoothing import Ema, Hampel, MovingAverage, MovingMax, MovingRms
from tests.oracles import smoothing_oracle as oracle

BLOCK = 1_000_000
ORACLE_SAMPLES = 20_000  # the oracle costs microseconds per sample
HAMPEL_BASELINE_SAMPLES = 100_000  # numpy's sliding median makes a window-wide copy
ROUNDS = 5  # best of
WINDOW = 100  # 20 ms at the bridge's 5 kHz
HAMPEL_WINDOW = 31  # the configurable maximum
TAU_S, DT_S = 0.01, 0.0002
TARGET_NS = 1e9 / 200e6  # 200 M samples/s

#: Drift check: 10^8 samples of 1000 + N(0, 1) (a large offset makes rounding matter), in
#: blocks of 10^6, window 4099 (prime: checkpoints fall mid-way between re-sums).
DRIFT_SAMPLES = 100_000_000
DRIFT_BLOCK = 1_000_000
DRIFT_WINDOW = 4099


def _best_ns_per_sample(call, samples: int, rounds: int = ROUNDS) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter_ns()
        call()
        best = min(best, (time.perf_counter_ns() - start) / samples)
    return best


def _signal(n: int, seed: int = 2026) -> np.ndarray:
    """Spindle-power-like: a level, a slow ripple, noise and the odd spike."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    x = 5.0 + 0.5 * np.sin(2 * np.pi * t / 2500) + rng.normal(0.0, 0.2, n)
    x[rng.integers(0, n, n // 1000)] += 10.0
    return x


def _lfilter_ema(x: np.ndarray, alpha: float) -> np.ndarray:
    return lfilter([alpha], [1.0, alpha - 1.0], x, zi=[(1.0 - alpha) * x[0]])[0]


def _cumsum_moving_mean(terms: np.ndarray, window: int) -> np.ndarray:
    c = np.cumsum(terms)
    out = np.empty_like(terms)
    out[:window] = c[:window] / np.arange(1, window + 1)
    out[window:] = (c[window:] - c[:-window]) / window
    return out


def _numpy_hampel(x: np.ndarray, window: int, n_sigmas: float = 3.0) -> np.ndarray:
    views = sliding_window_view(x, window)
    med = np.median(views, axis=1)
    mad = np.median(np.abs(views - med[:, None]), axis=1)
    current = x[window - 1 :]
    out = x.copy()
    out[window - 1 :] = np.where(np.abs(current - med) > n_sigmas * 1.4826 * mad, med, current)
    return out


def _speed_rows() -> list[tuple]:
    x = _signal(BLOCK)
    out = np.empty_like(x)
    small = x[:ORACLE_SAMPLES].tolist()
    ema = Ema(TAU_S, DT_S)
    rms, mean = MovingRms(WINDOW), MovingAverage(WINDOW)
    high, hampel = MovingMax(WINDOW), Hampel(HAMPEL_WINDOW)
    ns = {
        "ema": _best_ns_per_sample(lambda: ema.process(x, out), BLOCK),
        "rms": _best_ns_per_sample(lambda: rms.process(x, out), BLOCK),
        "mean": _best_ns_per_sample(lambda: mean.process(x, out), BLOCK),
        "max": _best_ns_per_sample(lambda: high.process(x, out), BLOCK),
        "hampel": _best_ns_per_sample(lambda: hampel.process(x, out), BLOCK),
    }
    one = "one 10^6-sample block"
    w = f"window {WINDOW}"
    hx = x[:HAMPEL_BASELINE_SAMPLES]
    return [
        (f"EMA, {one}", "scipy.signal.lfilter", _best_ns_per_sample(
            lambda: _lfilter_ema(x, ema.alpha), BLOCK), "Ema kernel", ns["ema"], "ns/sample"),
        (f"EMA, {one}", "oracle (pure Python)", _best_ns_per_sample(
            lambda: oracle.ema(small, TAU_S, DT_S), ORACLE_SAMPLES, 1), "Ema kernel", ns["ema"],
         "ns/sample"),
        (f"EMA, {one}", "target 200 M samples/s", TARGET_NS, "Ema kernel", ns["ema"],
         "ns/sample"),
        (f"moving RMS, {w}, {one}", "numpy cumsum", _best_ns_per_sample(
            lambda: np.sqrt(_cumsum_moving_mean(x * x, WINDOW)), BLOCK), "MovingRms kernel",
         ns["rms"], "ns/sample"),
        (f"moving RMS, {w}, {one}", "oracle (pure Python)", _best_ns_per_sample(
            lambda: oracle.moving_rms(small, WINDOW), ORACLE_SAMPLES, 1), "MovingRms kernel",
         ns["rms"], "ns/sample"),
        (f"moving RMS, {w}, {one}", "target 200 M samples/s", TARGET_NS, "MovingRms kernel",
         ns["rms"], "ns/sample"),
        (f"moving average, {w}, {one}", "numpy cumsum", _best_ns_per_sample(
            lambda: _cumsum_moving_mean(x, WINDOW), BLOCK), "MovingAverage kernel", ns["mean"],
         "ns/sample"),
        (f"moving max, {w}, {one}", "scipy.ndimage.maximum_filter1d", _best_ns_per_sample(
            lambda: maximum_filter1d(x, WINDOW, origin=(WINDOW - 1) // 2), BLOCK),
         "MovingMax kernel", ns["max"], "ns/sample"),
        (f"Hampel, window {HAMPEL_WINDOW}, {one}", "numpy sliding median (10^5)",
         _best_ns_per_sample(lambda: _numpy_hampel(hx, HAMPEL_WINDOW),
                             HAMPEL_BASELINE_SAMPLES, 2), "Hampel kernel", ns["hampel"],
         "ns/sample"),
        (f"Hampel, window {HAMPEL_WINDOW}, {one}", "oracle (pure Python)", _best_ns_per_sample(
            lambda: oracle.hampel(small, HAMPEL_WINDOW), ORACLE_SAMPLES, 1), "Hampel kernel",
         ns["hampel"], "ns/sample"),
    ]  # fmt: skip


def _drift_rows() -> list[tuple]:
    """Max |error| against math.fsum of the window, at the end of each block of the stream.

    The baseline is numpy's cumsum moving average carried across blocks (a running sum that
    is never re-summed): its error grows with the run; the kernels' must not.
    """
    rng = np.random.default_rng(7)
    n = DRIFT_WINDOW
    mean, rms = MovingAverage(n), MovingRms(n)
    out_mean = np.empty(DRIFT_BLOCK)
    out_rms = np.empty(DRIFT_BLOCK)
    carry = {"sum": 0.0, "squares": 0.0}
    tail = np.empty(0)
    worst = {"mean": 0.0, "rms": 0.0, "cumsum mean": 0.0, "cumsum rms": 0.0}
    exact = {}
    for _ in range(DRIFT_SAMPLES // DRIFT_BLOCK):
        x = 1000.0 + rng.standard_normal(DRIFT_BLOCK)
        mean.process(x, out_mean)
        rms.process(x, out_rms)
        # The numpy baseline: running sums carried across blocks, never re-summed.
        joined = np.concatenate((tail, x))
        c = carry["sum"] + np.cumsum(x)
        c2 = carry["squares"] + np.cumsum(x * x)
        carry["sum"], carry["squares"] = c[-1], c2[-1]
        window = joined[-n:].tolist()
        exact["mean"] = math.fsum(window) / n
        exact["rms"] = math.sqrt(math.fsum(v * v for v in window) / n)
        if len(tail):  # c[-1] - c at n samples back: the window's sum by difference
            cumsum_mean = (c[-1] - c[-1 - n]) / n
            cumsum_rms = math.sqrt((c2[-1] - c2[-1 - n]) / n)
            worst["cumsum mean"] = max(worst["cumsum mean"], abs(cumsum_mean - exact["mean"]))
            worst["cumsum rms"] = max(worst["cumsum rms"], abs(cumsum_rms - exact["rms"]))
        worst["mean"] = max(worst["mean"], abs(out_mean[-1] - exact["mean"]))
        worst["rms"] = max(worst["rms"], abs(out_rms[-1] - exact["rms"]))
        tail = x[-n:]
    what = f"drift over {DRIFT_SAMPLES:.0e} samples, window {n}: max |error| vs fsum"
    return [
        (f"{what}, moving average", "numpy cumsum running sum",
         worst["cumsum mean"], "MovingAverage kernel", worst["mean"], "abs error"),
        (f"{what}, moving RMS", "numpy cumsum running sum",
         worst["cumsum rms"], "MovingRms kernel", worst["rms"], "abs error"),
    ]  # fmt: skip


def run() -> list[tuple[str, str, float, str, float, str]]:
    return _speed_rows() + _drift_rows()
