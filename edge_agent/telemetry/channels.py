"""The telemetry channel table: which channels the agent publishes, from its configuration.

One row per published channel (docs/wire-format.md): every source channel telemetry includes,
and a `<name>_filtered` channel where a channel's filter chain ships both. A channel's alias
is its row; sampled channels of one time group of a source (a poll group) share their stamps;
a filtered channel whose chain decimates gets a time group of its own; on-change channels
have none.
"""

from __future__ import annotations

from ..config import AgentConfig, ChannelConfig
from ..sources.registry import declared
from .batcher import ChangeFilter
from .wire import Channel, check_table


def channel_table(config: AgentConfig) -> list[Channel]:
    """The published channels, in alias order; a WireError names a table that cannot work.

    Each source's channels in the order it declares them, source after source
    (`sources/registry.py`); each source's time groups numbered in its order, one after
    another."""
    sources = []  # (name, unit, default quantum, period in us, time group) of every channel
    next_group = 0
    for _, declaration in declared(config):
        number = {group: next_group + i for i, group in enumerate(declaration.time_groups)}
        next_group += len(number)
        sources += [
            (c.name, c.unit, c.quantum, round(c.period_s * 1e6), number[c.time_group])
            for c in declaration.channels
        ]
    included = set(config.telemetry.include) or {name for name, *_ in sources}
    rows: list[tuple[str, str, float, str, int, int | None, str]] = []
    for name, unit, default_q, period_us, source_group in sources:
        if name not in included:
            continue
        cfg = config.channels.get(name) or ChannelConfig(name)
        quantum = cfg.quantum or default_q
        sampled = cfg.report == "sampled"
        group = source_group if sampled else None
        shipping = cfg.telemetry if cfg.filters else "raw"
        factor = 1
        for spec in cfg.filters:
            if spec.kind == "decimate":
                factor *= spec.params["factor"]
        own_group = None
        if sampled and factor > 1 and shipping != "raw":
            own_group, next_group = next_group, next_group + 1
        if shipping == "filtered" and own_group is not None:  # the tag's channel, decimated
            rows.append((name, unit, quantum, cfg.report, period_us * factor, own_group, cfg.ref))
            continue
        rows.append((name, unit, quantum, cfg.report, period_us if sampled else 0, group, cfg.ref))
        if shipping == "both":
            rows.append(
                (
                    f"{name}_filtered",
                    unit,
                    quantum,
                    cfg.report,
                    period_us * factor if sampled else 0,
                    own_group if factor > 1 else group,
                    "",
                )
            )
    names = [row[0] for row in rows]
    table = [
        Channel(
            alias,
            name,
            unit,
            quantum,
            kind,
            period,
            group,
            names.index(ref) if ref in names else None,
        )
        for alias, (name, unit, quantum, kind, period, group, ref) in enumerate(rows)
    ]
    check_table(table)
    return table


def change_filters(config: AgentConfig, table: list[Channel]) -> dict[str, ChangeFilter]:
    """Report-by-exception for each on-change channel of the table, from its channel config."""
    filters = {}
    for channel in table:
        if channel.kind != "on_change":
            continue
        tag = channel.name.removesuffix("_filtered")
        cfg = config.channels.get(tag) or ChannelConfig(tag)
        filters[channel.name] = ChangeFilter(
            cfg.deadband, cfg.deadband_pct, round(cfg.heartbeat_s * 1e9)
        )
    return filters
