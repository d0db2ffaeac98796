"""The Modbus controller's configuration: `[controller]` (the link), `[poll_groups]` and
`[[tags]]` (the register map), with one-line errors naming the key (docs/config.md), and what
`[control]` may write of it (a whole holding register of its own).

Pure: parses TOML data through the agent's checker (`config.py` composes the sections);
never touches the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import limits
from ..registers import MAX_BITS_PER_READ, MAX_REGISTERS_PER_READ, Order, Table, Tag, ValueType
from ..tomlcheck import KeyPath, TomlChecker
from .base import INTEGER_RANGES

#: The sections of a Modbus controller: required unless another source reads the controller.
SECTIONS = ("controller", "tags", "poll_groups")


@dataclass(frozen=True)
class ControllerConfig:
    protocol: str = "tcp"
    host: str = "127.0.0.1"
    # 502 is the registered Modbus TCP port.
    port: int = 502
    unit_id: int = 1
    serial_port: str = ""
    baudrate: int = 19200
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8
    # A controller answers in a few ms on a LAN; 1 s tolerates a busy PLC scan without
    # letting a dead link hold a 10 Hz poll group for long.
    timeout_s: float = 1.0
    # Reconnect backoff doubles from min to max, with jitter so a shop's agents do not
    # all hammer a restarted controller in the same instant.
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    # Registers (bits) of unmapped gap the planner may read to save a round trip, as
    # Telegraf's "max_insert" optimisation does. A controller that refuses a gap with
    # "illegal address" makes the poller split that request and remember it.
    max_gap_registers: int = 8
    max_gap_bits: int = 64
    # Protocol maxima by default; some controllers accept less per request.
    max_registers_per_read: int = MAX_REGISTERS_PER_READ
    max_bits_per_read: int = MAX_BITS_PER_READ


@dataclass(frozen=True)
class PollGroup:
    name: str
    period_s: float
    # A value older than this is stale; three missed polls by default.
    stale_after_s: float


TAG_KEYS = {
    "name",
    "address",
    "table",
    "type",
    "byte_order",
    "word_order",
    "scale",
    "offset",
    "unit",
    "poll_group",
    "bit",
    "width",
}


#: A tag of every default, for the keys a [[tags]] entry leaves out.
_TAG = Tag("", 0, Table.HOLDING, ValueType.UINT16)


def parse_controller(checker: TomlChecker, data: dict) -> ControllerConfig:
    cfg = checker.section(data, "controller", ControllerConfig, required=True)
    raw, path = data["controller"], ("controller",)
    checker.choice(raw, path, "protocol", ("tcp", "rtu"), "tcp")
    if cfg.protocol == "rtu" and not cfg.serial_port:
        raise checker.fail((*path, "serial_port"), 'missing (required when protocol = "rtu")')
    checker.choice(raw, path, "parity", ("N", "E", "O"), "N")
    checker.ranges(cfg, path, limits.CONTROLLER)
    checker.reconnect_bounds(cfg, path)
    return cfg


def parse_poll_groups(checker: TomlChecker, data: dict) -> dict[str, PollGroup]:
    if "poll_groups" not in data:
        raise checker.fail(("poll_groups",), "missing section")
    raw = data["poll_groups"]
    if not isinstance(raw, dict) or not raw:
        raise checker.fail(("poll_groups",), "must be a table of at least one group")
    groups = {}
    for name, group in raw.items():
        path = ("poll_groups", name)
        checker.channel_name(path, name, group=True)
        checker.table(group, path, ("period_s", "stale_after_s"))
        period = checker.within(group, path, "period_s", limits.POLL_GROUP["period_s"])
        stale = checker.within(
            group, path, "stale_after_s", limits.POLL_GROUP["stale_after_s"], 3 * period
        )
        if stale < period:
            raise checker.fail((*path, "stale_after_s"), f"must be at least period_s ({period})")
        groups[name] = PollGroup(name, period, stale)
    return groups


def parse_tags(checker: TomlChecker, data: dict, groups: dict[str, PollGroup]) -> tuple[Tag, ...]:
    raw = data.get("tags")
    if raw is None:
        raise checker.fail(("tags",), "missing: at least one [[tags]] entry is needed")
    if not isinstance(raw, list) or not raw:
        raise checker.fail(("tags",), "must be an array of tables ([[tags]]) with one or more")
    tags, seen = [], {}
    for i, entry in enumerate(raw):
        tag = _tag(checker, entry, ("tags", i), groups)
        if tag.name in seen:
            raise checker.fail(
                ("tags", i, "name"),
                f"duplicate tag name {tag.name!r} (first at tags[{seen[tag.name]}])",
            )
        seen[tag.name] = i
        tags.append(tag)
    _check_overlaps(checker, tags)
    return tuple(tags)


def _tag(checker: TomlChecker, entry: Any, path: KeyPath, groups: dict[str, PollGroup]) -> Tag:
    entry = checker.table(entry, path, TAG_KEYS)
    name = checker.channel_name((*path, "name"), checker.value(entry, path, "name", str))
    table = Table(checker.choice(entry, path, "table", [t.value for t in Table]))
    default_type = "bool" if table.is_bits else ...
    vtype = ValueType(
        checker.choice(entry, path, "type", [t.value for t in ValueType], default_type)
    )
    if table.is_bits and vtype is not ValueType.BOOL:
        raise checker.fail(
            (*path, "type"),
            f"a {table.value} tag is one bit: type must be bool, got {vtype.value!r}",
        )
    address = checker.within(entry, path, "address", limits.TAG["address"])
    span = 1 if table.is_bits else vtype.words
    if address + span - 1 > 65535:
        raise checker.fail((*path, "address"), f"{vtype.value} at {address} runs past 65535")
    orders = [o.value for o in Order]
    byte_order = Order(checker.choice(entry, path, "byte_order", orders, _TAG.byte_order))
    word_order = Order(checker.choice(entry, path, "word_order", orders, _TAG.word_order))
    scale = checker.within(entry, path, "scale", limits.TAG["scale"], _TAG.scale)
    offset = checker.within(entry, path, "offset", limits.TAG["offset"], _TAG.offset)
    unit = checker.value(entry, path, "unit", str, _TAG.unit)
    group = checker.value(entry, path, "poll_group", str, _TAG.poll_group)
    if group not in groups:
        raise checker.fail(
            (*path, "poll_group"),
            f"no poll group {group!r} in [poll_groups] (have: {', '.join(groups)})",
        )
    bit, width = 0, 1
    if vtype is ValueType.BITFIELD:
        bit = checker.within(entry, path, "bit", limits.TAG["bit"])
        width = checker.int_in(entry, path, "width", 1, 16 - bit, 1)
    else:
        for key in ("bit", "width"):
            if key in entry:
                raise checker.fail((*path, key), "only a bitfield tag has bit and width")
    return Tag(
        name,
        address,
        table,
        vtype,
        byte_order,
        word_order,
        scale,
        offset,
        unit,
        group,
        bit,
        width,
    )


def _check_overlaps(checker: TomlChecker, tags: list[Tag]) -> None:
    """Bitfield tags may share a register with each other; nothing else may overlap."""
    index = {tag.name: i for i, tag in enumerate(tags)}
    for table in Table:
        in_table = sorted((t for t in tags if t.table is table), key=lambda t: t.address)
        for before, after in zip(in_table, in_table[1:], strict=False):
            both_bitfields = before.type is after.type is ValueType.BITFIELD
            if after.address < before.end and not both_bitfields:
                raise checker.fail(
                    ("tags", index[after.name], "address"),
                    f"{table.value} register {after.address} of {after.name!r} "
                    f"overlaps {before.name!r} ({before.address}..{before.end - 1})",
                )


def check_writable(
    checker: TomlChecker, tag: Tag | None, name: str, path: KeyPath, roles: dict
) -> None:
    """A register the actuator may write: a whole holding register (or registers) of its
    own, holding a number. A write sends whole registers (FC 16): a bitfield's or a bool's
    register may hold other bits the write would clear (docs/safety.md)."""
    if tag is None:
        raise checker.fail(path, f"no tag named {name!r}")
    if tag.table is not Table.HOLDING:
        raise checker.fail(
            path, f"{name!r} is a {tag.table.value} tag: only holding registers are written"
        )
    if tag.type in (ValueType.BITFIELD, ValueType.BOOL):
        raise checker.fail(
            path,
            f"{name!r} is a {tag.type.value} tag: a write sends the whole register and "
            "would clear the other bits in it; give the override a register of its own",
        )
    if tag.scale < 0:
        raise checker.fail(path, f"{name!r} has a negative scale: an override register counts up")
    if name in roles and roles[name] != "override_tag":
        raise checker.fail(
            path, f"{name!r} is read as control.{roles[name]}: it cannot also be written"
        )


def check_override_range(checker: TomlChecker, tag: Tag, most_pct: float, path: KeyPath) -> None:
    """The override register can hold 0 (the feed hold) and override_max_pct."""
    if tag.type not in INTEGER_RANGES:
        return
    lowest, highest = INTEGER_RANGES[tag.type]
    for value in (0.0, most_pct):
        raw = (value - tag.offset) / tag.scale
        if not lowest <= raw <= highest:
            span = f"{lowest * tag.scale + tag.offset:g}..{highest * tag.scale + tag.offset:g}"
            raise checker.fail(
                path,
                f"{tag.name!r} ({tag.type.value}, scale {tag.scale:g}, offset "
                f"{tag.offset:g}) holds {span}: it cannot hold {value:g} %",
            )
