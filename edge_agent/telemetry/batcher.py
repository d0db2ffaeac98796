"""Samples -> the content of one data frame at a time; sans-IO (the caller owns time and seq).

Sampled channels keep every sample; on-change channels keep a sample only when report-by-
exception lets it through (`ChangeFilter`). Channels of one time group are aligned on the
group's stamps when the frame closes: a channel that has no sample at one of its group's
stamps (a read that failed that cycle) gets its last value there, marked stale.
"""

from __future__ import annotations

import math

from ..kernels.valuepack import MAX_COUNT
from ..samples import Quality, Sample
from .wire import Channel, Series

_NS_PER_US = 1000
#: A frame is full when one of its series reaches this many values: the packed block holds
#: at most MAX_COUNT per series, and half of it leaves room for what arrives before the
#: frame closes (a 1 kHz poll group or 5 kHz bridge samples in a frame of several seconds).
SERIES_FULL = MAX_COUNT // 2


class ChangeFilter:
    """Report-by-exception for one channel: a sample goes out when it moved more than the
    deadband (absolute, or percent of the last value sent) from the last one sent, when its
    quality changed, or when `heartbeat_ns` passed since the last one sent (so a silent
    channel is still known to be alive), as EdgeX's onChangeThreshold and MTConnect's
    MINIMUM_DELTA do."""

    def __init__(self, deadband: float, deadband_pct: float, heartbeat_ns: int):
        self.deadband, self.deadband_pct, self.heartbeat_ns = deadband, deadband_pct, heartbeat_ns
        self._value: float | None = None
        self._quality: Quality | None = None
        self._sent_ns = 0

    def offer(self, value: float, quality: Quality, now_ns: int) -> bool:
        if self._value is None or quality is not self._quality:
            return self._send(value, quality, now_ns)
        if now_ns - self._sent_ns >= self.heartbeat_ns:
            return self._send(value, quality, now_ns)
        if not (math.isfinite(value) and math.isfinite(self._value)):
            return False
        band = max(self.deadband, abs(self._value) * self.deadband_pct / 100)
        if abs(value - self._value) > band or (band == 0 and value != self._value):
            return self._send(value, quality, now_ns)
        return False

    def _send(self, value: float, quality: Quality, now_ns: int) -> bool:
        self._value, self._quality, self._sent_ns = value, quality, now_ns
        return True


class FrameBuilder:
    """Collects samples by channel name until `take` hands the frame's content over."""

    def __init__(self, channels: list[Channel], filters: dict[str, ChangeFilter], max_points: int):
        self.channels = {c.name: c for c in channels}
        self._by_alias = list(channels)
        self.filters = filters
        self.max_points = max_points
        self.points = 0
        self._samples: dict[int, dict[int, tuple[float, Quality]]] = {}
        self._group_stamps: dict[int, set[int]] = {}
        self._last: dict[int, float] = {}

    def add(self, name: str, sample: Sample, now_ns: int) -> bool:
        """Add one sample of channel `name`; True when the frame is now full."""
        channel = self.channels.get(name)
        if channel is None:
            return False
        change = self.filters.get(name)
        if change is not None and not change.offer(sample.value, sample.quality, now_ns):
            return False
        stamp_us = sample.stamp_ns // _NS_PER_US
        by_stamp = self._samples.setdefault(channel.alias, {})
        if stamp_us not in by_stamp:
            self.points += 1
        by_stamp[stamp_us] = (sample.value, sample.quality)
        series = by_stamp
        if channel.group is not None:
            series = self._group_stamps.setdefault(channel.group, set())
            series.add(stamp_us)
        return self.points >= self.max_points or len(series) >= SERIES_FULL

    def take(self) -> dict[int, Series]:
        """The frame's series by alias (empty when nothing was added); starts the next frame."""
        series = {}
        for alias, by_stamp in self._samples.items():
            channel = self._by_alias[alias]
            stamps = (
                sorted(self._group_stamps[channel.group])
                if channel.group is not None
                else sorted(by_stamp)
            )
            values, quality = [], []
            last = self._last.get(alias, 0.0)
            for i, stamp in enumerate(stamps):
                value, q = by_stamp.get(stamp, (last, Quality.STALE))
                if q is Quality.GOOD and math.isfinite(value):
                    last = value
                else:
                    quality.append((i, int(q) if q is not Quality.GOOD else int(Quality.BAD)))
                values.append(value)
            self._last[alias] = last
            series[alias] = Series(tuple(stamps), tuple(values), tuple(quality))
        self._samples.clear()
        self._group_stamps.clear()
        self.points = 0
        return series
