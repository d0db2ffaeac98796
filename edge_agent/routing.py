"""Where each sample goes: through its channel's filter chain, to the control loop, and to
telemetry as raw, filtered or both. The agent's sources and the simulated bench feed the same
router, so the bench tests the routing that runs on the machine (docs/architecture.md).

Sans-IO: samples and their arrival time in, lists out; it never queues, writes or waits (the
agent puts the control arrivals in the loop's inbox and the telemetry pairs in its frame
builder).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from .config import ChannelConfig
from .filters.chain import FilterChain
from .samples import Arrival, Quality, Sample


class Routed(NamedTuple):
    """What one delivery of samples gives each consumer."""

    control: list[Arrival]  # control inputs, filtered where their channel has a chain
    telemetry: list[tuple[str, Sample]]  # (channel name on the wire, sample)


class SampleRouter:
    """Runs the configured filter chains and keeps each channel's latest raw and filtered
    sample. `control_tags` are the channels the control loop reads (none until it exists)."""

    def __init__(
        self,
        channels: Mapping[str, ChannelConfig],
        control_tags: Iterable[str] = (),
    ):
        # a channel section with wire settings only has no chain to run
        self.chains = {name: FilterChain(c) for name, c in channels.items() if c.filters}
        self.telemetry_modes = {name: channels[name].telemetry for name in self.chains}
        self.control_tags = frozenset(control_tags)
        self.latest: dict[str, Sample] = {}
        self.filtered: dict[str, Sample] = {}

    def route(self, samples: Iterable[Sample], arrived_ns: int) -> Routed:
        """One delivery from a source, `arrived_ns` on the monotonic clock."""
        control: list[Arrival] = []
        telemetry: list[tuple[str, Sample]] = []
        for sample in samples:
            name = sample.channel
            self.latest[name] = sample
            chain = self.chains.get(name)
            if chain is None:
                if name in self.control_tags:
                    control.append((arrived_ns, sample))
                telemetry.append((name, sample))
                continue
            filtered = _filter(chain, sample)
            mode = self.telemetry_modes[name]
            if mode in ("raw", "both"):
                telemetry.append((name, sample))
            if filtered is None:  # decimation kept no sample
                continue
            self.filtered[name] = filtered
            if name in self.control_tags:
                control.append((arrived_ns, filtered))
            if mode == "filtered":
                telemetry.append((name, filtered))
            elif mode == "both":
                telemetry.append((f"{name}_filtered", filtered))
        return Routed(control, telemetry)


def _filter(chain: FilterChain, sample: Sample) -> Sample | None:
    """The chain's output for one sample: a stale sample passes unfiltered (there is no new
    value to feed); a non-finite output is bad; None when decimation keeps no sample."""
    if sample.quality is Quality.STALE:
        return sample
    value = chain.push(sample.value)
    if value is None:
        return None
    quality = Quality.GOOD if math.isfinite(value) else Quality.BAD
    return sample._replace(value=value, quality=quality)
