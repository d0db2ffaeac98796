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
from . import bridge, modbus
from .base import Declaration, Emit, Source


@dataclass(frozen=True)
class SourceKind:
    name: str  # the source's name: its config section
    configured: Callable[[AgentConfig], bool]
    declare: Callable[[AgentConfig], Declaration]
    #: (config, clock, emit, on_identity, connect): `connect` is the source's way to its
    #: device (a client factory, a port opener), injected by tests; None for the real one.
    make: Callable[..., Source]


#: In the order the channel table gives them aliases and time groups.
KINDS = (
    SourceKind(
        "controller",
        lambda config: True,
        modbus.declare,
        lambda config, clock, emit, on_identity, connect: modbus.ModbusSource(
            config, clock, emit, connect
        ),
    ),
    SourceKind(
        "bridge",
        lambda config: config.bridge is not None,
        bridge.declare,
        lambda config, clock, emit, on_identity, connect: bridge.BridgeSource(
            config.bridge, clock, emit, on_identity, connect
        ),
    ),
)


def declared(config: AgentConfig) -> list[tuple[str, Declaration]]:
    """Each configured source's name and declaration, in table order."""
    return [(kind.name, kind.declare(config)) for kind in KINDS if kind.configured(config)]


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
