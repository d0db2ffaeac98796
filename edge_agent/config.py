"""The agent's configuration: one TOML file -> typed, validated, frozen dataclasses.

Every mistake is one `ConfigError` whose message names the file, the line (where it can
be found), the key path and what is wrong, e.g.
``agent.toml:42: tags[3].address: must be an integer in 0..65535, got -1``.
Unknown keys are errors: a misspelt key silently ignored is a setting that never took effect.
Never touches the network or the machine. Each source's sections are checked next to the
source (`sources/modbus_config.py`, `sources/bridge_config.py`, `sources/opcua_config.py`);
this module composes them with the sections every agent has and checks what they owe each
other (channel names, control roles, periods).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from dataclasses import replace as dataclass_replace
from pathlib import Path
from typing import Any

from . import limits, names
from .registers import Tag
from .sources import modbus_config
from .sources.base import SourceChannel
from .sources.bridge_config import BridgeConfig, parse_bridge
from .sources.modbus_config import ControllerConfig, PollGroup
from .sources.opcua_config import OpcUaConfig, OpcUaNode, check_writable_node, parse_opcua
from .tomlcheck import KeyPath, Range, TomlChecker, kind_name, read_toml_text


class ConfigError(ValueError):
    """A configuration mistake, as one line: where, which key, what is wrong."""


@dataclass(frozen=True)
class MachineConfig:
    site: str
    machine_id: str


@dataclass(frozen=True)
class TelemetryConfig:
    # One frame a second keeps the per-frame envelope overhead small and the latency
    # to the plant low.
    frame_interval_s: float = 1.0
    # Bounds a frame's size (and the memory held) when many fast channels report.
    max_points_per_frame: int = 20_000
    # Tags to forward; empty means every tag.
    include: tuple[str, ...] = ()


@dataclass(frozen=True)
class FilterSpec:
    """One stage of a channel's filter chain: its kind and its validated parameters."""

    kind: str
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ChannelConfig:
    """How one tag's samples are cleaned before control and telemetry."""

    name: str
    filters: tuple[FilterSpec, ...] = ()
    # What telemetry ships: the raw samples, the filtered ones, or both (the filtered
    # ones then as channel "<name>_filtered").
    telemetry: str = "filtered"
    # Sampling rate the chain starts at: the tag's poll rate.
    sample_rate_hz: float = 1.0
    # The wire format (docs/wire-format.md): values travel as integers of `quantum` (0: the
    # register's own resolution); "sampled" ships every sample, "on_change" only a change
    # past the deadband (absolute, or percent of the last value sent) or after `heartbeat_s`.
    quantum: float = 0.0
    report: str = "sampled"
    deadband: float = 0.0
    deadband_pct: float = 0.0
    heartbeat_s: float = 10.0
    ref: str = ""  # a tag this channel travels as the difference from (same quantum)


#: Filter kinds and their parameters: name -> (range, default; ... when required). A range
#: of FREQUENCY bounds a frequency by the rate the stage sees (after any decimation before
#: it): above fs x 1e-6 and below the Nyquist rate fs/2 (limits.MIN_RELATIVE_FREQUENCY).
FREQUENCY = "frequency"
_F = limits.FILTER
_FILTER_PARAMS: dict[str, dict[str, tuple[Range | str, Any]]] = {
    "lowpass": {"order": (_F["order"], ...), "cutoff_hz": (FREQUENCY, ...)},
    "highpass": {"order": (_F["order"], ...), "cutoff_hz": (FREQUENCY, ...)},
    "bandpass": {
        "order": (_F["order"], ...),
        "low_hz": (FREQUENCY, ...),
        "high_hz": (FREQUENCY, ...),
    },
    "ema": {"tau_s": (_F["tau_s"], ...)},
    "moving_average": {"window": (_F["window"], ...)},
    "moving_rms": {"window": (_F["window"], ...)},
    "moving_min": {"window": (_F["window"], ...)},
    "moving_max": {"window": (_F["window"], ...)},
    "hampel": {"window": (_F["hampel_window"], ...), "n_sigmas": (_F["n_sigmas"], 3.0)},
    # Order 8 is scipy.signal.decimate's IIR default.
    "decimate": {"factor": (_F["factor"], ...), "order": (_F["order"], 8)},
}


@dataclass(frozen=True)
class SpoolConfig:
    path: str = "/var/lib/edge-agent/spool.db"
    # The payload bytes kept while the upstream is away: 1 GiB is about five days of the
    # standard load (200 channels at 10 Hz and one at 1 kHz). Past it, or past the age,
    # the oldest payloads go and a gap event says how many (docs/spool.md).
    max_bytes: int = 1 << 30
    max_age_s: float = 7 * 86400.0
    # Data frames are committed together at most this often: each commit rewrites a few
    # 4 KiB pages, so fewer commits wear an SD card less; frames not yet committed are lost
    # in a crash like samples not yet framed (docs/spool.md has the measured bytes).
    commit_interval_s: float = 1.0


@dataclass(frozen=True)
class ControlConfig:
    """Adaptive feed control (docs/adaptive-control.md has each figure's reason)."""

    enabled: bool = False
    # What the loop reads (tag names; a filtered channel for the signal) and the one register
    # it writes; `writable` is the actuator's whitelist, which must hold `override_tag`.
    signal: str = "spindle_load"
    override_tag: str = "agent_feed_override"
    writable: tuple[str, ...] = ("agent_feed_override",)
    knob_tag: str = "feed_knob"
    spindle_on_tag: str = "spindle_on"
    program_running_tag: str = "program_running"
    alarm_tag: str = "in_alarm"
    tool_tag: str = "tool_number"
    program_tag: str = "program_number"
    block_tag: str = "block_number"
    enable_tag: str = ""  # a register the part program or operator sets (0: off); "" = none
    # The axis positions (mm, linear axes) whose path each part's record follows (the learned
    # profile's coordinate, issue 19); empty: the record knows the blocks, not the path.
    path_tags: tuple[str, ...] = ()
    # The controller's actual and programmed path feed (any one unit, both alike): the feed
    # the axes really ran at, acceleration and clamps in it, for the learned profile; "": the
    # record takes what the knob and the override ask.
    actual_feed_tag: str = ""
    programmed_feed_tag: str = ""
    # The learned preview (docs/adaptive-control.md, "Learned profiles"): the law's override
    # scaled by the profile of the material ahead, once a part of this program was learned.
    preview: bool = False
    tools: tuple[int, ...] = ()  # tools under control; empty: every tool
    programs: tuple[int, ...] = ()  # programs under control; empty: every program
    period_s: float = 0.01  # 100 Hz
    # 1..99: run the loop's thread under SCHED_FIFO at this priority (docs/service.md says
    # what the unit must allow); 0: normal scheduling.
    realtime_priority: int = 0
    stale_s: float = 0.3  # the signal or the run state older than this is a fault
    frozen_s: float = 0.5  # a load reading that has not moved this long is a stuck sensor; 0: off
    # The target: a fixed load, or a fraction of the peak a teach-in cut learned per tool.
    target_mode: str = "fixed"
    target_load_pct: float = 70.0
    teach_fraction: float = 0.9
    teach_file: str = "/var/lib/edge-agent/teach.json"
    hard_limit_pct: float = 110.0
    idle_load_pct: float = 0.0  # 0: learned while the spindle turns in air
    idle_settle_s: float = 0.5  # after control starts, the load settles to idle (no entry)
    override_min_pct: float = 50.0
    override_max_pct: float = 150.0
    safe_override_pct: float = 100.0  # a fault: override := min(current, this)
    neutral_override_pct: float = 100.0  # written once when control ends
    # Above 100 % a cut that starts where the program's air move ends meets the material
    # boosted before the reading shows it: off (100) unless the part's air moves are known.
    air_override_pct: float = 100.0
    entry_override_pct: float = 0.0  # 0: the override the last cut ended with (100 at first)
    entry_margin_pct: float = 2.0  # load this far over idle: the tool enters the material
    entry_s: float = 0.2  # hold the entry override this long (about a cutter radius)
    exit_fraction: float = 0.08  # cutting load below this share of the target's: exit
    exit_s: float = 0.1
    kp: float = 0.6
    ki: float = 4.0
    deadband: float = 0.01
    rise_pct_per_s: float = 60.0  # raise slowly ...
    fall_pct_per_s: float = 1000.0  # ... cut fast
    overload_persist_s: float = 1.0
    # Breakage, relative to the level the tool was cutting at (docs/adaptive-control.md):
    breakage_spike_ratio: float = 1.3  # cutting load spiking to this x its level ...
    breakage_drop_fraction: float = 0.8  # ... then falling back below this share of it ...
    breakage_window_s: float = 0.5  # ... within this time: the tool broke
    # 0: write on change only (and re-send what is not read back); > 0: re-write this often,
    # for a controller-side watchdog that reverts an override nobody refreshes.
    refresh_s: float = 0.0
    verify_s: float = 0.5  # a write not read back within this long is counted and re-sent


@dataclass(frozen=True)
class UpstreamConfig:
    """Where spooled payloads go (docs/upstream.md): an MQTT broker, a file, or nowhere yet
    (they wait in the spool, within its budget)."""

    kind: str = "none"  # "mqtt", "file" or "none"
    topic_prefix: str = "edge"
    host: str = "localhost"
    port: int = 0  # 0: 1883, or 8883 with TLS
    protocol: str = "5"  # MQTT "5" or "3.1.1"
    client_id: str = ""  # "": edge-agent-<site>-<machine_id>
    keepalive_s: int = 30
    window: int = 64  # QoS 1 publishes awaiting their PUBACK
    # "stored": a payload leaves the spool once the plant's collector acknowledged storing it
    # (end to end); "broker": once the broker's PUBACK came (a consumer that sends no acks).
    delivery: str = "stored"
    # Published and not yet acknowledged stored, at most: the collector's ack comes some 50 ms
    # after the publish (make bench), and 256 keep a backlog moving at the drain target of 360
    # payloads/s with up to 0.7 s of it; an absent collector finds no more than this of an
    # agent on the broker's queue (docs/upstream.md, "End-to-end delivery").
    max_unacked: int = 256
    # Not acknowledged stored this long after the broker took it: sent again (each further
    # time after twice as long, up to 60 s). A collector acks within its commit, milliseconds.
    ack_timeout_s: float = 10.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 60.0
    drain_on_stop_s: float = 2.0  # on stop, time given to publish what is pending
    username: str = ""
    password_file: str = ""  # a file holding the password (not readable by others) ...
    password_env: str = ""  # ... or the name of an environment variable holding it
    tls: bool = False
    ca_file: str = ""  # "": the system's certificate authorities
    cert_file: str = ""  # a client certificate, with key_file
    key_file: str = ""
    tls_verify: bool = True  # false only for a lab broker: the link is then unauthenticated
    file_path: str = ""  # kind "file": payloads back to back (what `edge-agent decode` reads)
    file_rotate_bytes: int = 64 << 20


@dataclass(frozen=True)
class ServiceConfig:
    log_level: str = "info"
    # How often the agent logs a one-line health summary.
    stats_interval_s: float = 60.0
    # The Prometheus endpoint, "host:port"; "" turns it off. Loopback only by default: the
    # figures say what the machine is doing, which is the plant's business.
    metrics_listen: str = "127.0.0.1:9846"
    # A message that repeats (same logger and text) is logged this many times per window,
    # then counted: a dead controller must not fill the SD card with one line.
    log_repeat_burst: int = 5
    log_repeat_window_s: float = 60.0


@dataclass(frozen=True)
class AgentConfig:
    machine: MachineConfig
    controller: ControllerConfig
    tags: tuple[Tag, ...]
    poll_groups: dict[str, PollGroup]
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    channels: dict[str, ChannelConfig] = field(default_factory=dict)
    control: ControlConfig = field(default_factory=ControlConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    bridge: BridgeConfig | None = None  # None: no [bridge] section
    opcua: OpcUaConfig | None = None  # None: no [opcua] section
    source: str = "<memory>"


@dataclass(frozen=True)
class CollectorSection:
    """The plant-side collector (docs/collector.md)."""

    db: str = "/var/lib/edge-collector/telemetry.db"
    topic_prefix: str = "edge"  # the agents' [upstream] topic_prefix
    # Several collectors with the same group split a plant's machines between them (MQTT 5
    # shared subscription `$share/<group>/...`); "" subscribes alone.
    share_group: str = ""
    retention_days: float = 0.0  # samples, payloads and events older than this go; 0 keeps all
    # The broker keeps the collector's messages while it is away for this long.
    session_expiry_s: int = 7 * 86400


@dataclass(frozen=True)
class CollectorConfig:
    collector: CollectorSection
    broker: UpstreamConfig
    source: str = "<memory>"


def load_collector_config(path: str | Path) -> CollectorConfig:
    """Read and validate a collector configuration: `[collector]` and `[broker]` (the MQTT
    keys of the agent's `[upstream]`)."""
    return parse_collector_config(_read(path), str(path))


def _read(path: str | Path) -> str:
    return read_toml_text(path, ConfigError)


#: `[upstream] delivery`: confirmed by the plant's collector (end to end), or by the broker.
DELIVERY_MODES = ("stored", "broker")

_PUBLISHER_ONLY = (
    "kind",
    "topic_prefix",
    "window",
    "delivery",
    "max_unacked",
    "ack_timeout_s",
    "drain_on_stop_s",
    "file_path",
    "file_rotate_bytes",
)


def parse_collector_config(text: str, source: str = "<memory>") -> CollectorConfig:
    checker = _Validator(source, text, ConfigError)
    data = checker.table(checker.parse(), (), ("collector", "broker"))
    collector = checker.section(data, "collector", CollectorSection)
    if not collector.db:
        raise checker.fail(("collector", "db"), "must not be empty")
    checker.ranges(collector, ("collector",), limits.COLLECTOR)
    if collector.share_group and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", collector.share_group):
        raise checker.fail(("collector", "share_group"), "must be letters, digits, '_', '.', '-'")
    if "broker" not in data:
        raise checker.fail(("broker",), "missing section")
    broker = checker.section(data, "broker", UpstreamConfig)
    for key in _PUBLISHER_ONLY:
        if key in data["broker"]:
            raise checker.fail(("broker", key), "is an agent's [upstream] setting, not a broker's")
    broker = dataclass_replace(broker, kind="mqtt", topic_prefix=collector.topic_prefix)
    checker.broker(broker, data["broker"], ("broker",))
    return CollectorConfig(collector, broker, source)


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate one agent configuration file."""
    return parse_config(_read(path), str(path))


def parse_config(text: str, source: str = "<memory>") -> AgentConfig:
    """Validate TOML text; `source` names it in errors."""
    checker = _Validator(source, text, ConfigError)
    return checker.agent(checker.parse())


#: The raw values of the integer types a writable register may have.
_SECTIONS = (
    "machine",
    "bridge",
    "opcua",
    "controller",
    "tags",
    "poll_groups",
    "channels",
    "control",
    "telemetry",
    "spool",
    "upstream",
    "service",
)
#: The sections of a Modbus controller: required unless [opcua] reads the controller.


def _declared_channels(config: AgentConfig) -> dict[str, SourceChannel]:
    """Every configured source's channels by name (`sources/registry.py`)."""
    from .sources.registry import declared  # the sources read this module's classes

    return {c.name: c for _, declaration in declared(config) for c in declaration.channels}


class _Validator(TomlChecker):
    # -- sections -------------------------------------------------------------------

    def agent(self, data: dict) -> AgentConfig:
        self.table(data, (), _SECTIONS)
        machine = self.machine(data)
        # Modbus is the controller unless [opcua] is (then it may still read a PLC beside it).
        if "opcua" not in data or any(k in data for k in modbus_config.SECTIONS):
            controller = modbus_config.parse_controller(self, data)
            groups = modbus_config.parse_poll_groups(self, data)
            tags = modbus_config.parse_tags(self, data, groups)
        else:
            controller, groups, tags = ControllerConfig(), {}, ()
        bridge = parse_bridge(self, data, {t.name for t in tags})
        taken = {t.name for t in tags} | {n for n, *_ in (bridge.streams() if bridge else ())}
        opcua = parse_opcua(self, data, taken)
        sources = _declared_channels(
            AgentConfig(
                machine, controller, tags, groups, bridge=bridge, opcua=opcua, source=self.source
            )
        )
        telemetry = self.telemetry(data, set(sources))
        channels = self.channels(data, sources)
        self.refs(channels, sources)
        periods = {name: (c.period_s, c.origin) for name, c in sources.items()}
        for name, channel in channels.items():  # a decimating chain passes every n-th sample
            factor = math.prod(f.params["factor"] for f in channel.filters if f.kind == "decimate")
            if factor > 1:
                period, source = periods[name]
                periods[name] = (period * factor, f"{source}, decimated by {factor}")
        nodes = {n.name: n for n in opcua.nodes} if opcua else {}
        control = self.control(data, {t.name: t for t in tags}, nodes, periods)
        spool = self.spool(data)
        upstream = self.upstream(data)
        service = self.section(data, "service", ServiceConfig)
        self.choice(
            {"log_level": service.log_level},
            ("service",),
            "log_level",
            ("debug", "info", "warning", "error"),
        )
        self.ranges(service, ("service",), limits.SERVICE)
        if service.metrics_listen:
            self.listen_address(("service", "metrics_listen"), service.metrics_listen)
        config = AgentConfig(
            machine=machine,
            controller=controller,
            tags=tags,
            poll_groups=groups,
            telemetry=telemetry,
            channels=channels,
            control=control,
            spool=spool,
            upstream=upstream,
            service=service,
            bridge=bridge,
            opcua=opcua,
            source=self.source,
        )
        self.channel_count(config)
        return config

    def channel_count(self, config: AgentConfig) -> None:
        """The birth's channel table must fit what a collector takes (wire.MAX_CHANNELS)."""
        from .telemetry.channels import channel_table  # it reads this module's classes
        from .telemetry.wire import MAX_CHANNELS

        count = len(channel_table(config))
        if count > MAX_CHANNELS:
            raise self.fail(
                ("tags",),
                f"{count} published channels (tags, bridge channels, filtered twins), over the "
                f"{MAX_CHANNELS} a birth may carry; narrow [telemetry] include",
            )

    def spool(self, data: dict) -> SpoolConfig:
        spool = self.section(data, "spool", SpoolConfig)
        if not spool.path:
            raise self.fail(("spool", "path"), "must not be empty")
        self.ranges(spool, ("spool",), limits.SPOOL)
        return spool

    def upstream(self, data: dict, name: str = "upstream") -> UpstreamConfig:
        cfg = self.section(data, name, UpstreamConfig)
        raw, path = data.get(name, {}), (name,)
        self.choice(raw, path, "kind", ("mqtt", "file", "none"), cfg.kind)
        self.choice(raw, path, "delivery", DELIVERY_MODES, cfg.delivery)
        self.ranges(cfg, path, limits.PUBLISHER)
        if cfg.max_unacked < cfg.window:
            raise self.fail((*path, "max_unacked"), f"must not be less than window ({cfg.window})")
        if cfg.kind == "file" and not cfg.file_path:
            raise self.fail((*path, "file_path"), 'is needed with kind = "file"')
        self.broker(cfg, raw, path)
        return cfg

    def broker(self, cfg: UpstreamConfig, raw: dict, path: tuple[str, ...]) -> None:
        """The MQTT settings of `[upstream]` (or of the collector's `[broker]`)."""
        self.choice(raw, path, "protocol", ("5", "3.1.1"), cfg.protocol)
        self.ranges(cfg, path, limits.BROKER)
        self.reconnect_bounds(cfg, path)
        # Topic levels: no separators or wildcards (MQTT would route them elsewhere).
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}(/[A-Za-z0-9_.-]{1,64})*", cfg.topic_prefix):
            raise self.fail(
                (*path, "topic_prefix"),
                f"must be topic levels of letters, digits, '_', '.', '-', got {cfg.topic_prefix!r}",
            )
        if cfg.kind != "mqtt":
            return
        if not cfg.host:
            raise self.fail((*path, "host"), "must not be empty")
        if cfg.password_file and cfg.password_env:
            raise self.fail((*path, "password_env"), "set password_file or password_env, not both")
        if (cfg.password_file or cfg.password_env) and not cfg.username:
            raise self.fail((*path, "username"), "is needed with a password")
        if bool(cfg.cert_file) != bool(cfg.key_file):
            raise self.fail((*path, "key_file"), "cert_file and key_file go together")
        for key in ("ca_file", "cert_file", "key_file"):
            if getattr(cfg, key) and not cfg.tls:
                raise self.fail((*path, key), "is used only with tls = true")
        for key in ("password_file", "key_file"):
            if getattr(cfg, key):
                self.private_file((*path, key), getattr(cfg, key))

    def listen_address(self, path: KeyPath, text: str) -> None:
        """ "host:port" (an IPv6 host in brackets): where a local server listens."""
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise self.fail(path, f'must be "host:port" (e.g. "127.0.0.1:9846"), got {text!r}')

    def machine(self, data: dict) -> MachineConfig:
        cfg = self.section(data, "machine", MachineConfig, required=True)
        for key in ("site", "machine_id"):
            # Both end up in MQTT topic levels and the broker identity (edge_agent/names.py).
            value = getattr(cfg, key)
            if not names.is_name(value):
                raise self.fail(("machine", key), f"must be {names.RULE}, got {value!r}")
        return cfg

    def telemetry(self, data: dict, tag_names: set[str]) -> TelemetryConfig:
        raw = self.table(
            data.get("telemetry", {}),
            ("telemetry",),
            ("frame_interval_s", "max_points_per_frame", "include"),
        )
        path = ("telemetry",)
        interval = self.within(
            raw, path, "frame_interval_s", limits.TELEMETRY["frame_interval_s"], 1.0
        )
        max_points = self.within(
            raw, path, "max_points_per_frame", limits.TELEMETRY["max_points_per_frame"], 20_000
        )
        include = self.value(raw, path, "include", list, [])
        for i, name in enumerate(include):
            if name not in tag_names:
                raise self.fail((*path, "include", i), f"no tag named {name!r}")
        return TelemetryConfig(interval, max_points, tuple(include))

    def control(
        self,
        data: dict,
        tags: dict[str, Tag],
        nodes: dict[str, OpcUaNode],
        periods: dict[str, tuple[float, str]],
    ) -> ControlConfig:
        """`periods`: every source channel's sampling period (s) and where it is set; `tags`
        and `nodes`: what a controller source could write (Modbus registers, OPC UA nodes)."""
        cfg = self.section(data, "control", ControlConfig)
        raw, path = data.get("control", {}), ("control",)
        self.choice(raw, path, "target_mode", ("fixed", "teach_in"), "fixed")
        self.ranges(cfg, path, limits.CONTROL)
        self.control_relations(cfg, path)
        if cfg.enabled:
            self.control_roles(cfg, path, tags, nodes, periods)
        return cfg

    def control_relations(self, cfg: ControlConfig, path: KeyPath) -> None:
        """What the keys of [control] owe each other (limits.CONTROL has each one's range)."""
        lo, hi = cfg.override_min_pct, cfg.override_max_pct
        if lo > hi:
            raise self.fail(
                (*path, "override_min_pct"), f"must not be above override_max_pct ({hi:g})"
            )
        for key in ("safe_override_pct", "neutral_override_pct"):
            if not lo <= getattr(cfg, key) <= min(100.0, hi):
                raise self.fail(
                    (*path, key),
                    f"must lie within override_min_pct..min(100, override_max_pct) "
                    f"({lo:g}..{min(100.0, hi):g}): never a hold, never a boost, got "
                    f"{getattr(cfg, key):g}",
                )
        for key in ("air_override_pct", "entry_override_pct"):
            value = getattr(cfg, key)
            if value and not lo <= value <= hi:
                raise self.fail(
                    (*path, key),
                    f"must lie within override_min_pct..override_max_pct ({lo:g}..{hi:g}), "
                    f"got {value:g}",
                )
        if not cfg.target_load_pct < cfg.hard_limit_pct:
            raise self.fail((*path, "target_load_pct"), "must be below hard_limit_pct")
        if cfg.idle_load_pct and not cfg.idle_load_pct < cfg.target_load_pct:
            raise self.fail(
                (*path, "idle_load_pct"), "must be below target_load_pct (or 0: learned)"
            )
        if cfg.kp == cfg.ki == 0:
            raise self.fail((*path, "ki"), "kp and ki are both 0: the law would never move")
        floor = max(cfg.rise_pct_per_s, hi - lo)
        if cfg.fall_pct_per_s < floor:
            raise self.fail(
                (*path, "fall_pct_per_s"),
                f"must be at least rise_pct_per_s and override_max_pct - override_min_pct "
                f"({floor:g} %/s): a cut reaches the floor within a second, got "
                f"{cfg.fall_pct_per_s:g}",
            )
        if cfg.period_s > cfg.stale_s:
            raise self.fail(
                (*path, "period_s"),
                f"must not be above stale_s ({cfg.stale_s:g}): a stale input is noticed at a tick",
            )

    #: [control]'s tag roles: what it reads (each its own tag) and the one register it writes.
    _ROLES = (
        "signal",
        "spindle_on_tag",
        "program_running_tag",
        "alarm_tag",
        "knob_tag",
        "tool_tag",
        "program_tag",
        "block_tag",
        "enable_tag",
        "override_tag",
    )
    #: Roles control cannot run without (the others may be "": none).
    _REQUIRED_ROLES = ("signal", "spindle_on_tag", "program_running_tag", "override_tag")
    #: Roles whose samples must be younger than stale_s (the others' quality counts).
    _TIMELY_ROLES = ("signal", "spindle_on_tag", "program_running_tag", "alarm_tag")

    def control_roles(
        self,
        cfg: ControlConfig,
        path: KeyPath,
        tags: dict[str, Tag],
        nodes: dict[str, OpcUaNode],
        periods: dict[str, tuple[float, str]],
    ) -> None:
        """The channels control reads and writes: present, one role each, a writable register
        that a whole-register write cannot harm (or an OPC UA node marked writable), and
        periods its timers can work with. The signal may come from any source; the other
        roles are the controller's (a Modbus tag or an OPC UA node)."""
        roles: dict[str, str] = {}
        for key in self._ROLES:
            name = getattr(cfg, key)
            if not name:
                if key in self._REQUIRED_ROLES:
                    raise self.fail((*path, key), "must name a tag: control needs it")
                continue
            if name not in tags and name not in nodes and not (key == "signal" and name in periods):
                what = "tag, node or bridge channel" if key == "signal" else "tag or node"
                raise self.fail((*path, key), f"no {what} named {name!r}")
            if name in roles:
                raise self.fail(
                    (*path, key),
                    f"{name!r} is already control.{roles[name]}: each role needs its own tag",
                )
            roles[name] = key
        recorded = [((*path, "path_tags", i), name) for i, name in enumerate(cfg.path_tags)]
        recorded += [
            ((*path, key), getattr(cfg, key))
            for key in ("actual_feed_tag", "programmed_feed_tag")
            if getattr(cfg, key)
        ]
        for where, name in recorded:  # what only the part record reads
            if name not in tags and name not in nodes:
                raise self.fail(where, f"no tag or node named {name!r}")
            if name in roles:
                raise self.fail(where, f"{name!r} is already control.{roles[name]}")
            roles[name] = where[1]
        if bool(cfg.actual_feed_tag) != bool(cfg.programmed_feed_tag):
            raise self.fail((*path, "programmed_feed_tag"), "goes with actual_feed_tag")
        for key, needs in (("tools", "tool_tag"), ("programs", "program_tag")):
            if getattr(cfg, key) and not getattr(cfg, needs):
                raise self.fail((*path, key), f"needs {needs} to tell which one runs")
        for i, name in enumerate(cfg.writable):
            if name in nodes:
                check_writable_node(self, nodes[name], (*path, "writable", i), roles)
            else:
                modbus_config.check_writable(
                    self, tags.get(name), name, (*path, "writable", i), roles
                )
        if cfg.override_tag not in cfg.writable:
            raise self.fail((*path, "override_tag"), f"{cfg.override_tag!r} is not in writable")
        if cfg.override_tag in tags:
            modbus_config.check_override_range(
                self, tags[cfg.override_tag], cfg.override_max_pct, (*path, "override_tag")
            )
        for key in self._TIMELY_ROLES:
            name = getattr(cfg, key)
            if name:
                self.at_least_two_periods(cfg.stale_s, (*path, "stale_s"), name, periods)
        if cfg.frozen_s:
            self.at_least_two_periods(cfg.frozen_s, (*path, "frozen_s"), cfg.signal, periods)
        self.at_least_two_periods(cfg.verify_s, (*path, "verify_s"), cfg.override_tag, periods)

    def at_least_two_periods(
        self, value: float, path: KeyPath, name: str, periods: dict[str, tuple[float, str]]
    ) -> None:
        """A timer on a sampled input must span two of its samples: one late poll is not a
        fault."""
        period, source = periods[name]
        if value < 2 * period:
            raise self.fail(
                path,
                f"must be at least twice the {period:g} s period of {name!r} ({source}), "
                f"got {value:g}",
            )

    def channels(self, data: dict, sources: dict[str, SourceChannel]) -> dict[str, ChannelConfig]:
        """`[channels]`: filters and wire keys of any source's channel."""
        rates = {name: 1.0 / c.period_s for name, c in sources.items()}
        raw = self.table(data.get("channels", {}), ("channels",), list(rates))
        channels = {}
        for name, entry in raw.items():
            path = ("channels", name)
            self.table(
                entry,
                path,
                (
                    "filters",
                    "telemetry",
                    "quantum",
                    "report",
                    "deadband",
                    "deadband_pct",
                    "heartbeat_s",
                    "ref",
                ),
            )
            telemetry = self.choice(
                entry, path, "telemetry", ("raw", "filtered", "both"), "filtered"
            )
            wire_keys = self.wire_keys(entry, path, set(rates))
            stages, fs = [], rates[name]
            specs = self.value(entry, path, "filters", list, [])
            if len(specs) > limits.MAX_FILTER_STAGES:
                raise self.fail(
                    (*path, "filters"),
                    f"{len(specs)} stages: at most {limits.MAX_FILTER_STAGES} "
                    "(each runs on every sample)",
                )
            for i, stage in enumerate(specs):
                spec = self.filter_spec(stage, (*path, "filters", i), fs)
                if spec.kind == "decimate":
                    fs /= spec.params["factor"]
                stages.append(spec)
            channels[name] = ChannelConfig(name, tuple(stages), telemetry, rates[name], **wire_keys)
        return channels

    def refs(self, channels: dict[str, ChannelConfig], sources: dict[str, SourceChannel]) -> None:
        """A channel sent as the difference from another (`ref`) needs the same quantum as it,
        and the other must be sent whole (no ref of its own): the birth's rule
        (docs/wire-format.md), found here rather than when the agent starts."""
        quantum = {name: c.quantum for name, c in sources.items()}
        quantum |= {name: c.quantum for name, c in channels.items() if c.quantum}
        for name, channel in channels.items():
            ref = channels.get(channel.ref)
            path = ("channels", name, "ref")
            if ref is not None and ref.ref:
                raise self.fail(path, f"{channel.ref!r} is itself sent relative to {ref.ref!r}")
            if channel.ref and quantum[channel.ref] != quantum[name]:
                raise self.fail(
                    path,
                    f"{channel.ref!r} travels in quanta of {quantum[channel.ref]:g}, this "
                    f"channel in {quantum[name]:g}: a difference needs the same quantum",
                )

    def wire_keys(self, entry: dict, path: KeyPath, tag_names: set[str]) -> dict:
        d = ChannelConfig("")
        keys = {
            key: self.within(entry, path, key, r, getattr(d, key))
            for key, r in limits.CHANNEL.items()
        }
        keys["report"] = self.choice(entry, path, "report", ("sampled", "on_change"), d.report)
        keys["ref"] = self.value(entry, path, "ref", str, d.ref)
        if keys["ref"] and (keys["ref"] not in tag_names or keys["ref"] == path[-1]):
            raise self.fail((*path, "ref"), f"must name another tag, got {keys['ref']!r}")
        return keys

    def filter_spec(self, stage: Any, path: KeyPath, fs: float) -> FilterSpec:
        """One filter stage, its frequencies checked against the rate it will see."""
        if not isinstance(stage, dict):
            raise self.fail(
                path, f'must be a table like {{kind = "lowpass", ...}}, got {kind_name(stage)}'
            )
        kind = self.choice(stage, path, "kind", list(_FILTER_PARAMS))
        spec = _FILTER_PARAMS[kind]
        self.table(stage, path, ("kind", *spec))
        params = {}
        for key, (allowed, default) in spec.items():
            if isinstance(allowed, Range):
                params[key] = self.within(stage, path, key, allowed, default)
                continue
            value = self.value(stage, path, key, float, default)
            low = fs * limits.MIN_RELATIVE_FREQUENCY
            if not low <= value < fs / 2:
                raise self.fail(
                    (*path, key),
                    f"must be at least {low:g} (a millionth of the rate: no lower filter can "
                    f"be designed) and below {fs / 2:g} (half the {fs:g} Hz sampling rate), "
                    f"got {value:g}",
                )
            params[key] = value
        if kind == "bandpass" and params["low_hz"] >= params["high_hz"]:
            raise self.fail((*path, "high_hz"), "must be above low_hz")
        return FilterSpec(kind, params)
