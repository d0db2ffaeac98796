"""Benchmark of the IIR kernels (SOS cascade, bank, decimator) against scipy; never asserts.

Measures only (wall clock, side by side, on this machine, best of ROUNDS): figures belong to
`make bench`, not to tests. All costs (lower is better; the ratio printed is baseline / ours),
on an order-4 Butterworth low-pass (2 sections). The issue's targets are in each row's name;
a missed target is also reported on stderr with its shortfall. numpy and scipy are baselines
here only; the agent never imports them.
"""

from __future__ import annotations

import array
import sys
import time

import numpy as np
from scipy.signal import sosfilt

from edge_agent.filters.design import butter_sos, decimate_sos, sosfilt_zi
from edge_agent.kernels.iir import Decimator, SosFilter, SosFilterBank

ROUNDS = 7  # best of
FS_HZ = 5000.0  # the bridge's rate
SOS = butter_sos(4, 100.0, FS_HZ)
SMALL = 16  # samples per streaming block
LARGE = 1_000_000
BANK_LARGE = 100_000
CHANNELS = 8
DECIMATION = 10
CALLS = {"scipy": 2_000, "kernel": 50_000}  # calls per round of 16-sample blocks

Row = tuple[str, str, float, str, float, str]


def _best_ns(call, repeat: int = 1) -> float:
    """Best wall time of `repeat` calls, over ROUNDS rounds, in ns per call."""
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter_ns()
        for _ in range(repeat):
            call()
        best = min(best, (time.perf_counter_ns() - start) / repeat)
    return best


def _signal(n: int, seed: int = 2026) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 5.0 + np.sin(np.arange(n) * 0.01) + rng.normal(0.0, 0.2, n)


def _rows_view(buffer: array.array, n_channels: int) -> memoryview:
    return memoryview(buffer).cast("B").cast("d", (len(buffer) // n_channels, n_channels))


def _small_block() -> list[Row]:
    sos, zi = np.asarray(SOS), np.asarray(sosfilt_zi(SOS))
    x_np = _signal(SMALL)
    state = {"zi": zi * x_np[0]}

    def scipy_call():
        _, state["zi"] = sosfilt(sos, x_np, zi=state["zi"])

    x = array.array("d", x_np)
    out = array.array("d", bytes(8 * SMALL))
    f = SosFilter(SOS)
    scipy_us = _best_ns(scipy_call, CALLS["scipy"]) / 1e3
    ours_us = _best_ns(lambda: f.process(x, out), CALLS["kernel"]) / 1e3
    return [
        (
            f"order-4 LP, {SMALL}-sample block (target >= 30x, < 1 us)",
            "scipy sosfilt with zi",
            scipy_us,
            "SosFilter.process",
            ours_us,
            "us/call",
        )
    ]


def _large_block() -> list[Row]:
    sos = np.asarray(SOS)
    x_np = _signal(LARGE)
    x = array.array("d", x_np)
    out = array.array("d", bytes(8 * LARGE))
    f = SosFilter(SOS)
    return [
        (
            "order-4 LP, 10^6-sample block (target >= 1.5x)",
            "scipy sosfilt",
            _best_ns(lambda: sosfilt(sos, x_np)) / LARGE,
            "SosFilter.process",
            _best_ns(lambda: f.process(x, out)) / LARGE,
            "ns/sample",
        )
    ]


def _bank_small() -> list[Row]:
    channels = [array.array("d", _signal(SMALL, seed)) for seed in range(CHANNELS)]
    outs = [array.array("d", bytes(8 * SMALL)) for _ in range(CHANNELS)]
    singles = [SosFilter(SOS) for _ in range(CHANNELS)]
    pairs = list(zip(singles, channels, outs, strict=True))

    def eight_calls():
        for f, x, out in pairs:
            f.process(x, out)

    block = array.array("d", (channels[c][i] for i in range(SMALL) for c in range(CHANNELS)))
    out_block = array.array("d", bytes(8 * len(block)))
    x2, out2 = _rows_view(block, CHANNELS), _rows_view(out_block, CHANNELS)
    bank = SosFilterBank(SOS, CHANNELS)
    return [
        (
            f"{CHANNELS} channels, {SMALL}-sample blocks (target >= 4x)",
            f"{CHANNELS} SosFilter calls",
            _best_ns(eight_calls, CALLS["kernel"] // CHANNELS) / 1e3,
            "SosFilterBank, 1 call",
            _best_ns(lambda: bank.process(x2, out2), CALLS["kernel"]) / 1e3,
            "us/8-ch block",
        )
    ]


def _bank_large() -> list[Row]:
    x = array.array("d", _signal(BANK_LARGE))
    out = array.array("d", bytes(8 * BANK_LARGE))
    f = SosFilter(SOS)
    single_ns = _best_ns(lambda: f.process(x, out)) / BANK_LARGE
    block = array.array("d", np.repeat(_signal(BANK_LARGE), CHANNELS))
    out_block = array.array("d", bytes(8 * len(block)))
    x2, out2 = _rows_view(block, CHANNELS), _rows_view(out_block, CHANNELS)
    bank = SosFilterBank(SOS, CHANNELS)
    bank_ns = _best_ns(lambda: bank.process(x2, out2)) / (BANK_LARGE * CHANNELS)
    sos = np.asarray(SOS)
    x_np = np.asarray(block).reshape(BANK_LARGE, CHANNELS)
    scipy_ns = _best_ns(lambda: sosfilt(sos, x_np, axis=0)) / (BANK_LARGE * CHANNELS)
    what = f"{CHANNELS} channels, 10^5-sample blocks"
    return [
        (f"{what} (target >= 1.3x)", "SosFilter, 1 channel", single_ns,
         "SosFilterBank", bank_ns, "ns/ch-sample"),
        (what, "scipy sosfilt axis=0", scipy_ns, "SosFilterBank", bank_ns, "ns/ch-sample"),
    ]  # fmt: skip


def _decimation() -> list[Row]:
    sos8 = decimate_sos(DECIMATION)
    sos = np.asarray(sos8)
    x_np = _signal(LARGE)
    x = array.array("d", x_np)
    out = array.array("d", bytes(8 * (LARGE // DECIMATION + 1)))
    d = Decimator(DECIMATION, sos8)
    return [
        (
            f"decimate by {DECIMATION} (order-8 LP), 10^6 samples",
            "scipy sosfilt + [::q]",
            _best_ns(lambda: sosfilt(sos, x_np)[::DECIMATION].copy()) / LARGE,
            "Decimator.process",
            _best_ns(lambda: d.process(x, out)) / LARGE,
            "ns/in-sample",
        )
    ]


TARGETS = {  # row-name prefix -> the ratio baseline / ours the issue asks for
    f"order-4 LP, {SMALL}-sample block": 30.0,
    "order-4 LP, 10^6-sample block": 1.5,
    f"{CHANNELS} channels, {SMALL}-sample blocks": 4.0,
    f"{CHANNELS} channels, 10^5-sample blocks (target": 1.3,
}


def run() -> list[Row]:
    rows = _small_block() + _large_block() + _bank_small() + _bank_large() + _decimation()
    for what, _, base, _, ours, unit in rows:
        for prefix, target in TARGETS.items():
            if what.startswith(prefix) and base / ours < target:
                print(
                    f"bench_iir: target missed: {what}: {base / ours:.2f}x, "
                    f"{target / (base / ours):.2f} times short of {target}x",
                    file=sys.stderr,
                )
        if unit == "us/call" and ours >= 1.0:
            print(f"bench_iir: target missed: {what}: {ours:.2f} us/call", file=sys.stderr)
    return rows
