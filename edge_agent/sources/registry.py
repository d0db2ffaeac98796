"""The kinds of source, and which of them a configuration asks for.

Adding a source is one new module (its `declare` and its `Source` class), its config section,
and one entry in `KINDS` (docs/architecture.md). Everything that shows or publishes sources
loops over what is here: the channel table, the config's cross-checks, the agent, the health
line, the metrics, `status` and the demo.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..config import AgentConfig
from . import bridge, modbus, opcua
from .base import Declaration, Emit, Source


@dataclass(frozen=True)
class SourceKind:
    name: str  # the source's name: its config section
    configured: Callable[[AgentConfig], bool]
    declare: Callable[[AgentConfig], Declaration]
    #: (config, clock, emit, on_identity, connect): `connect` is the source's way to its
    #: device (a client factory, a port opener), injected by tests; None for the real one.
    make: Callable[..., Source]
    #: What `check-config` adds to a time group's line (the Modbus read plan), by group.
    details: Callable[[AgentConfig], dict[str, str]] = lambda config: {}


#: In the order the channel table gives them aliases and time groups.
KINDS = (
    SourceKind(
        "controller",
        lambda config: bool(config.tags),
        modbus.declare,
        lambda config, clock, emit, on_identity, connect: modbus.ModbusSource(
            config, clock, emit, connect
        ),
        modbus.read_plan,
    ),
    SourceKind(
        "bridge",
        lambda config: config.bridge is not None,
        bridge.declare,
        lambda config, clock, emit, on_identity, connect: bridge.BridgeSource(
            config.bridge, clock, emit, on_identity, connect
        ),
    ),
    SourceKind(
        "opcua",
        lambda config: config.opcua is not None,
        lambda config: opcua.declare(config.opcua),
        lambda config, clock, emit, on_identity, connect: opcua.OpcUaSource(
            config.opcua, clock, emit, connect
        ),
    ),
)


def declared(config: AgentConfig) -> list[tuple[str, Declaration]]:
    """Each configured source's name and declaration, in table order."""
    return [(kind.name, kind.declare(config)) for kind in KINDS if kind.configured(config)]


def describe(config: AgentConfig) -> list[str]:
    """`check-config`'s lines: each source's time groups, their periods and channels, and
    what the source adds (the Modbus read plan)."""
    lines = []
    for kind in KINDS:
        if not kind.configured(config):
            continue
        declaration, details = kind.declare(config), kind.details(config)
        for group in declaration.time_groups:
            channels = [c for c in declaration.channels if c.time_group == group]
            if not channels:
                continue
            line = (
                f"  {kind.name} {group}: every {channels[0].period_s:g} s, {len(channels)} channels"
            )
            lines.append(line + (f"; {details[group]}" if group in details else ""))
    return lines


def make_sources(
    config: AgentConfig,
    clock,
    emit: Emit,
    on_identity: Callable[[Source, dict], None],
    connect: Mapping[str, Callable] | None = None,
) -> list[Source]:
    """A running source for each configured kind; `on_identity(source, identity)` when a
    device says what it is."""
    connect = connect or {}
    sources: list[Source] = []
    for kind in KINDS:
        if not kind.configured(config):
            continue

        def identified(identity: dict, name: str = kind.name) -> None:
            on_identity(next(s for s in sources if s.name == name), identity)

        sources.append(kind.make(config, clock, emit, identified, connect.get(kind.name)))
    return sources
