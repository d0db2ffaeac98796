"""Telemetry frames, version 0: samples batched per channel into msgpack frame bodies.

Sans-IO: samples in, bytes out. The sequence number is not in the body: the durable sink
allocates it when it stores the frame (docs/telemetry-v0.md). The compact wire format of a
later version replaces the body; `v` tells them apart. Never blocks and never does I/O.
"""

from __future__ import annotations

import msgpack

from ..samples import Quality, Sample

VERSION = 0


#: A frame's point limit unless told otherwise: the same as `[telemetry] max_points_per_frame`.
#: 20,000 points is ~200 tags at 10 Hz for 10 s, or 4 s of a 5 kHz bridge channel: about
#: 250 KB of msgpack (measured), small enough for one SQLite row and one MQTT message on a Pi.
MAX_POINTS = 20_000


class Batcher:
    """Accumulates samples per channel until the frame is closed (by the caller: when `add`
    says it is full, or when its frame interval has passed)."""

    def __init__(self, boot_id: str, machine: dict[str, str], max_points: int = MAX_POINTS):
        if max_points < 1:
            raise ValueError(f"max_points must be at least 1, not {max_points}")
        self.boot_id = boot_id
        self.machine = machine
        self.max_points = max_points
        self._channels: dict[str, tuple[list[int], list[float], list[int]]] = {}
        self.points = 0

    def add(self, sample: Sample) -> bool:
        """Add one sample; True when the frame is now full and should be closed."""
        stamps, values, qualities = self._channels.setdefault(sample.channel, ([], [], []))
        stamps.append(sample.stamp_ns // 1_000_000)
        values.append(float(sample.value))
        qualities.append(int(sample.quality))
        self.points += 1
        return self.points >= self.max_points

    def close(self) -> bytes | None:
        """The frame body of everything added since the last close; None when empty."""
        if not self.points:
            return None
        t0 = min(min(stamps) for stamps, _, _ in self._channels.values())
        channels = {}
        for name, (stamps, values, qualities) in self._channels.items():
            entry = {"t": [t - t0 for t in stamps], "v": values}
            if any(qualities):  # "q" is left out when every point is GOOD
                entry["q"] = qualities
            channels[name] = entry
        body = {
            "v": VERSION,
            "type": "data",
            "boot": self.boot_id,
            **self.machine,
            "t0": t0,
            "ch": channels,
        }
        self._channels = {}
        self.points = 0
        return msgpack.packb(body, use_bin_type=True)


def event_body(boot_id: str, stamp_ns: int, kind: str, detail: dict) -> bytes:
    """An event frame body: state changes, errors, gaps, control actions."""
    return msgpack.packb(
        {
            "v": VERSION,
            "type": "event",
            "boot": boot_id,
            "t": stamp_ns // 1_000_000,
            "kind": kind,
            "detail": detail,
        },
        use_bin_type=True,
    )


def unpack_samples(body: bytes) -> list[Sample]:
    """The samples of a data frame body (to the ms), for decoders and tests."""
    frame = msgpack.unpackb(body, raw=False)
    samples = []
    for name, entry in frame["ch"].items():
        qualities = entry.get("q") or [0] * len(entry["v"])
        for dt, value, quality in zip(entry["t"], entry["v"], qualities, strict=True):
            samples.append(Sample(name, (frame["t0"] + dt) * 1_000_000, value, Quality(quality)))
    return samples
