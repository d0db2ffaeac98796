"""The telemetry channel table: which channels the agent publishes, from its configuration.

One row per published channel (docs/wire-format.md): every tag (and bridge channel) telemetry
includes, and a `<tag>_filtered` channel where a tag's filter chain ships both. A channel's
alias is its row;
sampled channels of one poll group share a time group (their stamps); a filtered channel
whose chain decimates gets a time group of its own; on-change channels have none.
"""

from __future__ import annotations

from ..config import AgentConfig, ChannelConfig
from ..registers import Tag, ValueType
from .batcher import ChangeFilter
from .wire import Channel, check_table

#: A float register's default quantum: a thousandth of its unit (1 W of a kW, 1 um of a mm).
FLOAT_QUANTUM = 0.001


def default_quantum(tag: Tag) -> float:
    """What a channel's values are integers of, unless configured: the register's own
    resolution (its scale) for integer registers, FLOAT_QUANTUM for floats."""
    if tag.type in (ValueType.FLOAT32, ValueType.FLOAT64):
        return FLOAT_QUANTUM
    return tag.scale if tag.scale > 0 else 1.0


def bridge_quantum(scale: float, kind: str) -> float:
    """A bridge channel's default quantum: one ADC count for raw samples and peaks (integers
    of counts on the board), a hundredth of one for the block mean and RMS (averages)."""
    return abs(scale) if kind in ("raw", "peak") else abs(scale) / 100


def channel_table(config: AgentConfig) -> list[Channel]:
    """The published channels, in alias order; a WireError names a table that cannot work.

    The bridge's channels (docs/bridge-host.md) follow the tags: its raw channels share one
    time group (every sample, at the board's rate), its feature channels another (one value
    per block)."""
    streams = config.bridge.streams() if config.bridge else []
    included = set(config.telemetry.include) or (
        {t.name for t in config.tags} | {name for name, *_ in streams}
    )
    group_of = {name: i for i, name in enumerate(sorted(config.poll_groups))}
    next_group = len(group_of)
    # (name, unit, default quantum, period in us, time group) of every channel a source feeds
    sources = [
        (
            tag.name,
            tag.unit,
            default_quantum(tag),
            round(config.poll_groups[tag.poll_group].period_s * 1e6),
            group_of[tag.poll_group],
        )
        for tag in config.tags
    ]
    if streams:
        bridge_group = {"raw": next_group, "features": next_group + 1}
        next_group += 2
        for name, board, kind, period_s in streams:
            group = bridge_group["raw" if kind == "raw" else "features"]
            sources.append(
                (name, board.unit, bridge_quantum(board.scale, kind), round(period_s * 1e6), group)
            )
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
