"""The sensor bridge's configuration: `[bridge]` and its `[[bridge.channels]]`, with one-line
errors naming the key (docs/bridge-host.md has each figure's reason).

Pure: parses TOML data through the agent's checker (`config.py` composes the sections);
never opens the serial port.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from dataclasses import replace as dataclass_replace

from .. import limits
from ..tomlcheck import KeyPath, TomlChecker

#: What the board computes per block of each channel (docs/bridge-protocol.md, FEATURES).
BRIDGE_FEATURES = ("mean", "rms", "peak")


@dataclass(frozen=True)
class BridgeChannel:
    """One input of the sensor bridge (docs/bridge-host.md): board channel `index` (0 the
    spindle power ADC, 1..3 accelerometer x, y, z), calibrated as raw * scale + offset."""

    name: str
    index: int
    unit: str = ""
    scale: float = 1.0
    offset: float = 0.0
    raw: bool = False  # every sample, as channel `name`
    features: tuple[str, ...] = ("rms",)  # per block, as channels `<name>_<feature>`


@dataclass(frozen=True)
class BridgeConfig:
    """The sensor bridge on a serial port (docs/bridge-host.md has each figure's reason)."""

    port: str = ""
    # USB CDC ignores the rate; a UART needs about 300 kbaud for 4 raw channels at 2 kHz.
    baudrate: int = 921_600
    sample_hz: int = 2000  # 2 kHz: spindle-current ripple and tooth-pass vibration to 1 kHz
    block_samples: int = 32  # 16 ms blocks at 2 kHz: latency for control, few frames per s
    # A PONG every 0.5 s gives the clock fit 16 round trips per 8 s window to pick from.
    ping_interval_s: float = 0.5
    # A USB CDC command is answered in about a ms; 0.5 s tolerates a busy host.
    command_timeout_s: float = 0.5
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 10.0
    channels: tuple[BridgeChannel, ...] = ()

    def streams(self) -> list[tuple[str, BridgeChannel, str, float]]:
        """The agent channels the bridge feeds, in order: (name, its board channel, "raw" or
        the feature, period in s)."""
        block_s = self.block_samples / self.sample_hz
        out = []
        for channel in self.channels:
            if channel.raw:
                out.append((channel.name, channel, "raw", 1 / self.sample_hz))
            out += [(f"{channel.name}_{f}", channel, f, block_s) for f in channel.features]
        return out


#: A channel of every default, for the keys a [[bridge.channels]] entry leaves out.
_CHANNEL = BridgeChannel("", 0)


def parse_bridge(checker: TomlChecker, data: dict, tag_names: set[str]) -> BridgeConfig | None:
    if "bridge" not in data:
        return None
    path: KeyPath = ("bridge",)
    raw = checker.table(data["bridge"], path, [f.name for f in dataclass_fields(BridgeConfig)])
    entries, d = raw.get("channels"), BridgeConfig()
    port = checker.value(raw, path, "port", str)
    if not port:
        raise checker.fail((*path, "port"), "must name the bridge's serial device")
    # The board's limits (docs/bridge-protocol.md, Behaviour: SET_RATES) and the link's.
    cfg = BridgeConfig(
        port,
        **{k: checker.within(raw, path, k, r, getattr(d, k)) for k, r in limits.BRIDGE.items()},
    )
    checker.reconnect_bounds(cfg, path)
    if not isinstance(entries, list) or not entries:
        raise checker.fail(
            (*path, "channels"), "needs one or more [[bridge.channels]] (name, index, ...)"
        )
    channels, taken, indices = [], {}, {}
    for i, entry in enumerate(entries):
        where: KeyPath = (*path, "channels", i)
        entry = checker.table(entry, where, [f.name for f in dataclass_fields(BridgeChannel)])
        name = checker.channel_name((*where, "name"), checker.value(entry, where, "name", str))
        index = checker.within(entry, where, "index", limits.BRIDGE_CHANNEL["index"])
        if index in indices:
            raise checker.fail(
                (*where, "index"),
                f"board channel {index} is already bridge.channels[{indices[index]}]",
            )
        indices[index] = i
        features = checker.value(entry, where, "features", list, list(_CHANNEL.features))
        for k, feature in enumerate(features):
            if feature not in BRIDGE_FEATURES or features.index(feature) != k:
                raise checker.fail(
                    (*where, "features", k),
                    f"must be distinct ones of {', '.join(BRIDGE_FEATURES)}, got {feature!r}",
                )
        channel = BridgeChannel(
            name,
            index,
            checker.value(entry, where, "unit", str, _CHANNEL.unit),
            checker.within(entry, where, "scale", limits.BRIDGE_CHANNEL["scale"], _CHANNEL.scale),
            checker.within(
                entry, where, "offset", limits.BRIDGE_CHANNEL["offset"], _CHANNEL.offset
            ),
            checker.value(entry, where, "raw", bool, _CHANNEL.raw),
            tuple(features),
        )
        if not channel.raw and not channel.features:
            raise checker.fail((*where, "features"), "is empty and raw is false: nothing to read")
        made = [channel.name] if channel.raw else []
        made += [f"{channel.name}_{f}" for f in channel.features]
        for stream in made:
            if stream in tag_names:
                raise checker.fail((*where, "name"), f"channel {stream!r} is also a tag name")
            if stream in taken:
                raise checker.fail(
                    (*where, "name"),
                    f"channel {stream!r} is also made by bridge.channels[{taken[stream]}]",
                )
            taken[stream] = i
        channels.append(channel)
    return dataclass_replace(cfg, channels=tuple(channels))
