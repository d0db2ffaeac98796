"""A channel's filter chain: the configured stages, built from the kernels, applied in order.

Built once from a `ChannelConfig`; each stage keeps its own streaming state, so feeding a
channel sample by sample or block by block gives the same output. A NaN or infinite input
gives a NaN output (the caller marks it bad) and the stages reset and recover on the next
finite sample (docs/filters.md). Never allocates per sample and never does I/O.
"""

from __future__ import annotations

import array

from ..config import ChannelConfig, FilterSpec
from ..kernels.iir import Decimator, SosFilter
from ..kernels.smoothing import Ema, Hampel, MovingAverage, MovingMax, MovingMin, MovingRms
from .design import butter_sos, sosfilt_zi

_WINDOWED = {
    "moving_average": MovingAverage,
    "moving_rms": MovingRms,
    "moving_min": MovingMin,
    "moving_max": MovingMax,
}


def build_stage(spec: FilterSpec, fs_hz: float):
    """The kernel object for one stage at sampling rate `fs_hz`."""
    p = spec.params
    if spec.kind in ("lowpass", "highpass"):
        sos = butter_sos(p["order"], p["cutoff_hz"], fs_hz, spec.kind)
        return SosFilter(sos, sosfilt_zi(sos))
    if spec.kind == "bandpass":
        sos = butter_sos(p["order"], (p["low_hz"], p["high_hz"]), fs_hz, "bandpass")
        return SosFilter(sos, sosfilt_zi(sos))
    if spec.kind == "decimate":
        # Anti-alias at 0.8 x the new Nyquist rate, as scipy.signal.decimate does.
        sos = butter_sos(p["order"], 0.8 * fs_hz / (2 * p["factor"]), fs_hz, "lowpass")
        return Decimator(p["factor"], sos, sosfilt_zi(sos))
    if spec.kind == "ema":
        return Ema(p["tau_s"], 1.0 / fs_hz)
    if spec.kind == "hampel":
        return Hampel(p["window"], p["n_sigmas"])
    return _WINDOWED[spec.kind](p["window"])


class FilterChain:
    """The stages of one channel, in order."""

    def __init__(self, channel: ChannelConfig):
        self.name = channel.name
        self.stages = []
        fs = channel.sample_rate_hz
        for spec in channel.filters:
            self.stages.append(build_stage(spec, fs))
            if spec.kind == "decimate":
                fs /= spec.params["factor"]
        self.output_rate_hz = fs
        self._one = array.array("d", [0.0])
        self._spare = array.array("d", [0.0, 0.0])

    def push(self, value: float) -> float | None:
        """Filter one sample; None when a decimating stage keeps none."""
        buf = self._one
        buf[0] = value
        for stage in self.stages:
            if isinstance(stage, Decimator):
                if not stage.process(buf, self._spare):
                    return None
                buf[0] = self._spare[0]
            else:
                stage.process(buf, buf)
        return buf[0]

    def process(self, block: array.array) -> array.array:
        """Filter a block (float64 array.array); the output is shorter after decimation."""
        data = array.array("d", block)
        for stage in self.stages:
            if isinstance(stage, Decimator):
                out = array.array("d", bytes(8 * (len(data) // stage.factor + 1)))
                written = stage.process(data, out)
                data = out[:written]
            else:
                stage.process(data, data)
        return data

    def reset(self) -> None:
        for stage in self.stages:
            stage.reset()
