"""Wire format v2: the birth, data, event and death payloads (docs/wire-format.md is the spec).

Sans-IO: channel tables, samples and bytes in, bytes and decoded frames out; no clock, no
socket. Every payload is a plain msgpack array any decoder can read (optional fields in a
trailing map) whose last element is the CRC-32 of the bytes before it; a data frame's stamps
and values travel as one packed block (`edge_agent.kernels.valuepack`). Decoding is strict and
every failure is one `WireError` line (a `ChecksumError` when the payload fails its checksum).
Payloads of v1, which had no checksum, still decode, as unchecked (their "v" is 1).
"""

from __future__ import annotations

import array
import math
import zlib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import msgpack

from ..kernels.valuepack import COUNTED, MAX_ABS, PackError, pack, unpack

VERSION = 2
#: The version before the checksum: still read (an agent's spool or an older agent may hold
#: it), exactly as v1 wrote it, and reported unchecked (a decoded frame's "v" says which).
UNCHECKED_VERSION = 1
#: The checksum's last element: msgpack's uint 32 marker, then the 4 bytes of the CRC-32 of
#: every byte before them, least significant first.
CHECKSUM_MARKER = 0xCE
CHECKSUM_BYTES = 4
#: Kinds by their number on the wire; every payload is an array [v, kind, boot, ...].
KINDS = ("birth", "data", "event", "death")
#: Positions after [v, kind]: what a decoder reads; in v2, further elements before the
#: checksum are ignored (a later v2.x adds fields there); a v1 payload has exactly these.
FIELDS = {
    "birth": ("b", "s", "t", "info"),  # info: map of agent, cfg, ch, fw (unknown keys ignored)
    "data": ("b", "s", "t", "p", "x", "ext"),  # ext (optional): map of h, q
    "event": ("b", "s", "t", "e", "d"),
    "death": ("b", "bs"),
}
REQUIRED = {"birth": 4, "data": 5, "event": 5, "death": 2}
#: Channel kinds by their number in the birth's table.
CHANNEL_KINDS = ("sampled", "on_change")
#: A quantum travels as [m, e], exactly m x 10^e; e within this bound (a quantum within
#: 1e-300..1e300 has up to 17 digits of m: |e| <= 317).
MAX_QUANTUM_EXPONENT = 330
#: Nesting a decoder accepts: frames nest 3 levels; event details a few more.
MAX_DEPTH = 16

# Decode-side limits: what a decoder takes at most, derived from the most an agent makes, so
# that a hostile payload costs bounded memory and time and a real one is never refused
# (docs/wire-format.md, "Decoder limits"; tests/test_collector_limits.py holds the agent's largest
# payloads to them).

#: Points (samples) an agent puts in one data frame at most: the upper bound of its
#: `[telemetry] max_points_per_frame` (config.py takes it from here). Five times the
#: default of 20,000, which already holds a second of the design's load (200 tags at 10 Hz,
#: the bridge's 4 channels at 5 kHz).
MAX_FRAME_POINTS = 100_000
#: Numbers a data frame's packed block may hold (stamps and values). A point is a value and
#: at most one stamp (a time group's channels share theirs); twice the points again for what
#: arrives between the frame filling up and its being taken. Refused from the counts, before
#: a value is decoded: a frame of 77 bytes cannot make a million rows.
MAX_FRAME_VALUES = 4 * MAX_FRAME_POINTS
#: Channels a birth may declare: a channel per forwarded tag (two when it ships raw and
#: filtered) and the bridge's (16 at most); 4096 is ten times the design's 200 tags twice.
MAX_CHANNELS = 4096
#: Payload bytes by kind, checked before a byte is unpacked.
#: - birth: 4096 channels at 256 bytes a row (the agent's rows are some 100: a name of up to
#:   73 characters, a short unit, the quantum, period, group and ref).
#: - data: the block's numbers at 8 bytes at most (a 56-bit field and its code), and a
#:   quality entry per point (7 bytes): 4.6 MB for the largest frame at the worst; 8 MiB.
#: - event: the agent's largest is the bridge's identity (at most 1000 bytes of JSON, its
#:   frame's payload limit) or a teach-in record (some 300); 64 KiB leaves room for new kinds.
#: - death: 22 bytes ([v, kind, boot, birth seq]); 1 KiB for fields a later version adds.
MAX_PAYLOAD_BYTES = {"birth": 1 << 20, "data": 8 << 20, "event": 64 << 10, "death": 1 << 10}
_MAX_ANY_PAYLOAD = max(MAX_PAYLOAD_BYTES.values())
#: Elements of one msgpack array: a data frame's quality list holds 3 per point that is not
#: good, for up to twice MAX_FRAME_POINTS points (a link down for a whole frame).
_MAX_ARRAY = 3 * 2 * MAX_FRAME_POINTS


class WireError(ValueError):
    """A payload that is not a valid frame: one line saying what is wrong."""


class ChecksumError(WireError):
    """A payload whose last 4 bytes are not the CRC-32 of the bytes before them (and that is not
    a v1 payload, which has none): damaged on its way, never to be decoded."""


@dataclass(frozen=True)
class Channel:
    """One row of the birth's channel table. `group` names the time group of a sampled
    channel (channels polled together share their stamps); an on-change channel has none."""

    alias: int
    name: str
    unit: str
    quantum: float
    kind: str  # "sampled" or "on_change"
    period_us: int  # nominal; 0 for on-change
    group: int | None
    ref: int | None = None  # a channel this one is sent as the difference from (same quantum)

    def row(self) -> list:
        """The birth's row: the quantum as an exact decimal [m, e], the kind by its number,
        the ref only when there is one."""
        row = [
            self.name,
            self.unit,
            decimal_quantum(self.quantum),
            CHANNEL_KINDS.index(self.kind),
            self.period_us,
            self.group,
        ]
        return row if self.ref is None else [*row, self.ref]


def decimal_quantum(quantum: float) -> list[int]:
    """[m, e] with m x 10^e the shortest decimal that reads back as `quantum` (0.001 is
    [1, -3], 2.5 is [25, -1]): three bytes where a float takes nine, and exact."""
    sign, digits, exponent = Decimal(repr(quantum)).normalize().as_tuple()
    mantissa = int("".join(map(str, digits)))
    return [-mantissa if sign else mantissa, exponent]


def quantum_of(pair) -> float:
    """The quantum [m, e] of a birth's row as a float; WireError when it is not one."""
    try:
        m, e = pair
        if not (type(m) is int and type(e) is int and m > 0 and abs(e) <= MAX_QUANTUM_EXPONENT):
            raise ValueError
        quantum = float(Decimal(m).scaleb(e))
    except (TypeError, ValueError, InvalidOperation, OverflowError):
        raise WireError(f"birth: quantum {pair!r} is not [m, e] with m > 0") from None
    if not 1e-300 <= quantum <= 1e300:
        raise WireError(f"birth: quantum {pair!r} is out of range")
    return quantum


@dataclass(frozen=True)
class Series:
    """One channel's samples in a frame: stamps (µs since the epoch), values (real units) and,
    where a sample is not good, its quality by index (1 stale, 2 bad; its value is then NaN
    on decoding, and travels as the last good one)."""

    stamps_us: tuple[int, ...]
    values: tuple[float, ...]
    quality: tuple[tuple[int, int], ...] = ()


# -- encoding ---------------------------------------------------------------------------


def birth(
    boot: bytes,
    seq: int,
    t_us: int,
    agent: str,
    config_hash: bytes,
    channels: list[Channel],
    firmware: str | None = None,
) -> bytes:
    check_table(channels)
    info = {"agent": agent, "cfg": config_hash, "ch": [c.row() for c in channels]}
    if firmware is not None:
        info["fw"] = firmware
    return seal([VERSION, 0, boot, seq, t_us, info])


def check_table(channels: list[Channel]) -> None:
    """What a channel table must hold to be usable: aliases in order, one period per time
    group, references to unreferenced channels of the same quantum."""
    if [c.alias for c in channels] != list(range(len(channels))):
        raise WireError("birth: aliases must be 0, 1, 2, ... in table order")
    periods: dict[int, int] = {}
    for c in channels:
        if not 1e-300 <= c.quantum <= 1e300:
            raise WireError(f"birth: channel {c.name}: the quantum must be within 1e-300..1e300")
        if c.group is not None and periods.setdefault(c.group, c.period_us) != c.period_us:
            raise WireError(f"birth: channel {c.name}: its time group has another period")
        if c.ref is None:
            continue
        ref = channels[c.ref] if 0 <= c.ref < len(channels) else None
        if ref is None or ref is c or ref.ref is not None or ref.quantum != c.quantum:
            raise WireError(
                f"birth: channel {c.name}: ref must name another channel of the same quantum "
                "that has no ref itself"
            )


def data(
    boot: bytes,
    seq: int,
    channels: list[Channel],
    series: dict[int, Series],
    historical: bool = False,
) -> bytes:
    """A data frame of the channels in `series` (by alias). Stamps are offsets from the
    frame's base time `t`, the earliest stamp; values are quantized to each channel's quantum
    (lossless to it). The sampled channels of one time group must share their stamps."""
    if not series:
        raise WireError("data: a frame needs at least one channel")
    present = sorted(series)
    t0 = min(s.stamps_us[0] for s in series.values() if s.stamps_us)
    stamp_series: list[list[int]] = []
    groups: dict[int, tuple[int, ...]] = {}
    for alias in present:
        channel, s = channels[alias], series[alias]
        if not s.stamps_us or len(s.stamps_us) != len(s.values):
            raise WireError(f"data: channel {channel.name}: stamps and values must pair up")
        if channel.group is None:
            stamp_series.append(_on_grid(s.stamps_us, t0, 0))
        elif channel.group not in groups:
            groups[channel.group] = s.stamps_us
        elif groups[channel.group] != s.stamps_us:
            raise WireError(f"data: channel {channel.name}: stamps differ from its group's")
    periods = {c.group: c.period_us for c in channels if c.group is not None}
    group_order = sorted(groups)
    stamp_series = [_on_grid(groups[g], t0, periods[g]) for g in group_order] + stamp_series
    solo = [a for a in present if channels[a].group is None]
    quantized, flagged = {}, {}
    for alias in present:
        quantized[alias], flagged[alias] = _quantize_series(series[alias], channels[alias])
    values, exceptions = [], []
    for alias in present:
        values.append(_as_sent(channels[alias], quantized, flagged[alias]))
        exceptions += [
            x for index in sorted(flagged[alias]) for x in (alias, index, flagged[alias][index])
        ]
    body = [
        VERSION,
        1,
        boot,
        seq,
        t0,
        True if len(present) == len(channels) else _bitmap(present, len(channels)),
        _pack(stamp_series + values, _layout(channels, present, group_order, solo)),
    ]
    ext = {}
    if exceptions:
        ext["q"] = exceptions
    if historical:
        ext["h"] = True
    if ext:
        body.append(ext)
    return seal(body)


def as_historical(payload: bytes) -> bytes:
    """A stored data frame re-wrapped for replay: the same content, flagged `h` (historical),
    its checksum checked and made anew. A v1 frame is re-wrapped as v1, unchecked: a checksum
    made now would vouch for bytes nobody checked. Anything else (another kind, a payload that
    fails its checksum or does not unpack) is returned as it is, to be refused and counted
    where it is decoded; this never raises, so a damaged spool row cannot stop a replay."""
    try:
        checked = decode(payload)["v"] == VERSION
    except WireError:
        return payload
    body = msgpack.unpackb(payload, raw=False)  # it decoded: it unpacks
    if body[1] != 1:
        return payload
    if checked:
        body = body[:-1]
    ext = dict(body[7]) if len(body) > 7 and isinstance(body[7], dict) else {}
    ext["h"] = True
    rewrapped = [*body[:7], ext, *body[8:]]
    return seal(rewrapped) if checked else msgpack.packb(rewrapped)


def with_seq(payload: bytes, seq: int) -> bytes:
    """A birth, data frame or event made with another sequence number (the agent makes a
    payload it has to hold in memory before the spool numbers it), otherwise the same, its
    checksum checked and made anew."""
    if not checksum_ok(payload):
        raise ChecksumError("checksum mismatch: a held payload changed in memory")
    body = msgpack.unpackb(payload, raw=False)[:-1]  # the checksum: `seal` makes it anew
    body[3] = seq  # [v, kind, boot, seq, ...] for all three
    return seal(body)


def event(boot: bytes, seq: int, t_us: int, kind: str, detail: dict) -> bytes:
    return seal([VERSION, 2, boot, seq, t_us, kind, detail])


def death(boot: bytes, birth_seq: int) -> bytes:
    """The MQTT last will: registered at connect, so it names the birth it ends."""
    return seal([VERSION, 3, boot, birth_seq])


def seal(body: list) -> bytes:
    """`body` as a msgpack array with one more element, its checksum: msgpack's uint 32 marker
    and the CRC-32 (zlib's) of every byte before the checksum's 4, least significant byte
    first. In that order the whole payload is a CRC codeword: every burst of up to 32 bits
    is detected, the checksum's own bytes included (big-endian, 15 burst shapes across the
    boundary escape). The 5 bytes are written here: msgpack would pack a small value shorter."""
    head = msgpack.packb([*body, 0])[:-1] + bytes((CHECKSUM_MARKER,))  # 0 packs as one byte
    return head + zlib.crc32(head).to_bytes(CHECKSUM_BYTES, "little")


def checksum_ok(payload: bytes) -> bool:
    """Whether `payload` ends with a checksum (`seal`) that matches the bytes before it."""
    return (
        len(payload) > CHECKSUM_BYTES + 1
        and payload[-CHECKSUM_BYTES - 1] == CHECKSUM_MARKER
        and zlib.crc32(payload[:-CHECKSUM_BYTES])
        == int.from_bytes(payload[-CHECKSUM_BYTES:], "little")
    )


def _on_grid(stamps_us, t0: int, period_us: int) -> list[int]:
    """A stamp series as its offsets from t0 less i x the nominal period: a regular series is
    a constant (a few bits), an on-change one (period 0) its rising offsets."""
    return [t - t0 - i * period_us for i, t in enumerate(stamps_us)]


def _reference(channel: Channel, columns: dict[int, list[int]]) -> list[int] | None:
    """The column a channel is sent as the difference from: its ref's, when the ref is in the
    frame with as many values (the decoder applies the same rule)."""
    if channel.ref is None:
        return None
    ref = columns.get(channel.ref)
    return ref if ref is not None and len(ref) == len(columns[channel.alias]) else None


def _quantize_series(s: Series, channel: Channel) -> tuple[list[int], dict[int, int]]:
    """The quantized values, and the quality by index of the samples that are not good: a
    value that is not a number, or more quanta than the wire carries (+-MAX_ABS: a
    controller's float register can hold 3e38), is bad; a sample not good travels as the
    last good value (or 0)."""
    flagged = dict(s.quality)
    out, last = [], 0
    for i, value in enumerate(s.values):
        scaled = value / channel.quantum if i not in flagged else math.nan
        if not abs(scaled) <= MAX_ABS:  # NaN and infinity too
            flagged.setdefault(i, 2)
            out.append(last)
            continue
        last = round(scaled)
        out.append(last)
    bad = {i: flagged[i] for i in flagged if 0 <= i < len(s.values)}
    if any(quality not in (1, 2) for quality in bad.values()):
        raise WireError(f"data: channel {channel.name}: quality must be 1 (stale) or 2 (bad)")
    return out, bad


def _as_sent(channel: Channel, columns: dict[int, list[int]], flagged: dict[int, int]):
    """A channel's column as it travels: its quantized values, or their differences from its
    ref's; a difference over MAX_ABS (two values of opposite extremes) travels as 0, flagged
    bad in `flagged`."""
    column, ref = columns[channel.alias], _reference(channel, columns)
    if ref is None:
        return column
    sent = []
    for i, (v, r) in enumerate(zip(column, ref, strict=True)):
        if abs(v - r) > MAX_ABS:
            flagged[i], v = 2, r
        sent.append(v - r)
    return sent


def _bitmap(present: list[int], n: int) -> bytes:
    bits = bytearray((n + 7) // 8)
    for alias in present:
        bits[alias // 8] |= 1 << (alias % 8)
    return bytes(bits)


def _layout(channels: list[Channel], present: list[int], groups: list[int], solo: list[int]):
    """The block's series and which count each shares (`valuepack.pack`'s `share`): first a
    stamp series per time group present and per on-change channel present, each with its
    count; then the present channels' values, each as many as its stamp series."""
    series_of = {("g", g): i for i, g in enumerate(groups)}
    series_of.update({("c", a): len(groups) + i for i, a in enumerate(solo)})
    share = [COUNTED] * (len(groups) + len(solo))
    for alias in present:
        group = channels[alias].group
        share.append(series_of[("c", alias) if group is None else ("g", group)])
    return array.array("i", share)


def _pack(columns: list[list[int]], share: array.array) -> bytes:
    try:
        return pack(
            array.array("i", [len(c) for c in columns]),
            array.array("q", [v for c in columns for v in c]),
            share,
        )
    except PackError as exc:
        raise WireError(f"data: {exc}") from None


# -- decoding ---------------------------------------------------------------------------


def check_size(payload: bytes, kind: str) -> None:
    """WireError when a payload of `kind` (by its topic) is larger than `MAX_PAYLOAD_BYTES`
    allows: checked before decoding, so an oversized payload costs nothing more."""
    limit = MAX_PAYLOAD_BYTES[kind]
    if len(payload) > limit:
        raise WireError(f"{kind}: payload of {len(payload)} bytes, over the {limit} maximum")


def decode(payload: bytes) -> dict:
    """Any payload -> a map of its fields by name (`FIELDS`), "v" and "k" included; the
    birth's info and the data frame's ext are merged in. Unknown keys in the maps, and in v2
    elements past those it knows, are ignored (forward compatibility). A payload larger than
    the largest kind's limit is refused unread. A payload that fails its checksum is a
    `ChecksumError`, unless it is a v1 payload: that has none, and decodes with "v" 1,
    unchecked."""
    if len(payload) > _MAX_ANY_PAYLOAD:
        raise WireError(f"payload of {len(payload)} bytes, over the {_MAX_ANY_PAYLOAD} maximum")
    checked = checksum_ok(payload)
    try:
        body = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            max_bin_len=MAX_PAYLOAD_BYTES["data"],
            max_str_len=1 << 16,
            max_array_len=_MAX_ARRAY,
            max_map_len=1 << 12,
        )
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        error = f"not msgpack: {type(exc).__name__}: {exc}".rstrip(": ")
        raise (WireError(error) if checked else _mismatch(payload, error)) from None
    if not isinstance(body, list) or len(body) < 3:
        error = (
            f"payload is an array of {len(body)}, not [v, kind, ..., checksum]"
            if isinstance(body, list)
            else f"payload is a {type(body).__name__}, not an array [v, kind, ..., checksum]"
        )
        raise WireError(error) if checked else _mismatch(payload, error)
    version, kind = body[0], body[1]
    if checked:
        if version != VERSION:
            raise WireError(
                f"unknown version {version!r} (this decoder reads v{VERSION}, "
                f"and v{UNCHECKED_VERSION} without a checksum)"
            )
        if body[-1] != int.from_bytes(payload[-CHECKSUM_BYTES:], "big"):
            raise WireError("the checksum is not the payload's last element, a uint 32")
        fields = body[2:-1]
    elif version == UNCHECKED_VERSION and type(version) is int:
        fields = body[2:]
    else:
        raise _mismatch(payload)
    if not (isinstance(kind, int) and not isinstance(kind, bool) and 0 <= kind < len(KINDS)):
        raise WireError(f"unknown kind {kind!r}")
    name = KINDS[kind]
    if len(fields) < REQUIRED[name]:
        raise WireError(f"{name}: {len(fields)} fields, needs {REQUIRED[name]}")
    if not checked and not _as_v1_wrote(name, fields):
        # A v2 payload damaged in its version: its checksum is one element too many for v1
        # (read unchecked, it could decode as something else).
        raise _mismatch(payload, f"nor a v1 {name} as v1 wrote it")
    _check_depth(body, 0)
    frame = {"v": version, "k": name, **dict(zip(FIELDS[name], fields, strict=False))}
    for key in ("info", "ext"):
        extra = frame.pop(key, {})
        if not isinstance(extra, dict):
            raise WireError(f"{name}: its {key} must be a map")
        frame.update({k: v for k, v in extra.items() if k not in frame})
    return frame


def _as_v1_wrote(name: str, fields: list) -> bool:
    """Whether a payload's fields are what the v1 writer wrote: no more than v1 has, and a
    data frame's optional sixth a map."""
    if name == "data" and len(fields) == len(FIELDS[name]):
        return isinstance(fields[-1], dict)
    return len(fields) <= len(FIELDS[name])


def _mismatch(payload: bytes, why: str = "") -> ChecksumError:
    """The error for a payload that fails its checksum and is no v1 payload either."""
    if len(payload) <= CHECKSUM_BYTES + 1 or payload[-CHECKSUM_BYTES - 1] != CHECKSUM_MARKER:
        what = "no checksum at its end"
    else:
        what = f"the CRC-32 of its first {len(payload) - CHECKSUM_BYTES} bytes is not its last 4"
    return ChecksumError(f"checksum mismatch: {what}" + (f" ({why})" if why else ""))


def channels_of(birth_frame: dict) -> list[Channel]:
    """The channel table of a decoded birth."""
    table = birth_frame.get("ch")
    if not isinstance(table, list):
        raise WireError("birth: ch must be an array")
    if len(table) > MAX_CHANNELS:
        raise WireError(f"birth: {len(table)} channels, over the {MAX_CHANNELS} maximum")
    out = []
    for alias, row in enumerate(table):
        if not (isinstance(row, list) and len(row) >= 6):
            raise WireError(f"birth: channel {alias}: a row needs 6 fields")
        name, unit, quantum, kind, period, group = row[:6]
        ref = row[6] if len(row) > 6 else None
        ok = (
            isinstance(name, str)
            and isinstance(unit, str)
            and type(kind) is int
            and 0 <= kind < len(CHANNEL_KINDS)
            and type(period) is int
            and period >= 0
            and (group is None or type(group) is int)
            and (ref is None or type(ref) is int)
        )
        if not ok:
            raise WireError(f"birth: channel {alias}: bad row {row!r}")
        kind_name = CHANNEL_KINDS[kind]
        out.append(Channel(alias, name, unit, quantum_of(quantum), kind_name, period, group, ref))
    check_table(out)
    return out


def samples(frame: dict, channels: list[Channel]) -> dict[str, Series]:
    """A decoded data frame's samples by channel name, in real units."""
    if frame.get("k") != "data":
        raise WireError(f"not a data frame but {frame.get('k')!r}")
    t0, bitmap, block = (frame.get(key) for key in ("t", "p", "x"))
    if not (
        isinstance(t0, int)
        and (bitmap is True or isinstance(bitmap, bytes))
        and isinstance(block, bytes)
    ):
        raise WireError("data: t, p and x must be an integer, true or a bin, and a bin")
    present = list(range(len(channels))) if bitmap is True else _present(bitmap, len(channels))
    groups = sorted({channels[a].group for a in present if channels[a].group is not None})
    solo = [a for a in present if channels[a].group is None]
    share = _layout(channels, present, groups, solo)
    try:
        counts, numbers = unpack(block, share, MAX_FRAME_VALUES)
    except PackError as exc:
        raise WireError(f"data: {exc}") from None
    period_of: dict[int, int] = {}
    for alias in present:
        if channels[alias].group is not None:
            period_of.setdefault(channels[alias].group, channels[alias].period_us)
    periods = [period_of[g] for g in groups] + [0] * len(solo)
    series_stamps, start = [], 0
    for count, period in zip(counts, periods, strict=False):
        offsets_of = numbers[start : start + count]
        series_stamps.append(tuple(t0 + o + i * period for i, o in enumerate(offsets_of)))
        start += count
    by_group = dict(zip(groups, series_stamps, strict=False))
    solo_stamps = dict(zip(solo, series_stamps[len(groups) :], strict=False))
    vcounts = counts[len(periods) :]
    exceptions = _exceptions(
        frame.get("q", []), {a: c for a, c in zip(present, vcounts, strict=True)}
    )
    columns = {}
    for alias, count in zip(present, vcounts, strict=True):
        columns[alias] = list(numbers[start : start + count])
        start += count
    out = {}
    for alias in present:
        channel, column = channels[alias], columns[alias]
        stamps_us = by_group[channel.group] if channel.group is not None else solo_stamps[alias]
        ref = _reference(channel, columns)
        if ref is not None:
            column = [v + r for v, r in zip(column, ref, strict=True)]
            if any(abs(v) > MAX_ABS for v in column):
                raise WireError(f"data: channel {channel.name}: a value out of range")
        values = _real(column, channel.quantum)
        quality = exceptions.get(alias, ())
        for i, _ in quality:
            values[i] = math.nan
        out[channel.name] = Series(stamps_us, tuple(values), quality)
    return out


def _real(column: list[int], quantum: float) -> list[float]:
    """Quantized values in real units. A quantum of 10^-k divides by 10^k instead of
    multiplying: 3 x 0.1 is 0.30000000000000004, 3 / 10 is 0.3, the double nearest the
    decimal a person reads (and what a CSV should hold)."""
    inverse = round(1 / quantum)
    if inverse > 1 and 1 / inverse == quantum:
        return [q / inverse for q in column]
    return [q * quantum for q in column]


def _present(bitmap: bytes, n: int) -> list[int]:
    if len(bitmap) != (n + 7) // 8:
        raise WireError(f"data: presence bitmap of {len(bitmap)} bytes for {n} channels")
    if n % 8 and bitmap[-1] >> (n % 8):
        raise WireError("data: presence bitmap names a channel the birth does not have")
    return [a for a in range(n) if bitmap[a // 8] >> (a % 8) & 1]


def _exceptions(flat, counts: dict[int, int]) -> dict[int, tuple[tuple[int, int], ...]]:
    """`q`: [alias, index, quality, ...] triples -> (index, quality) pairs by alias."""
    if not (isinstance(flat, list) and len(flat) % 3 == 0):
        raise WireError("data: q must be [alias, index, quality, ...] triples")
    out: dict[int, list[tuple[int, int]]] = {}
    for alias, index, quality in zip(flat[::3], flat[1::3], flat[2::3], strict=True):
        ok = isinstance(index, int) and quality in (1, 2) and alias in counts
        if not ok or not 0 <= index < counts[alias]:
            raise WireError(f"data: bad quality entry {[alias, index, quality]}")
        out.setdefault(alias, []).append((index, quality))
    return {alias: tuple(pairs) for alias, pairs in out.items()}


#: What msgpack decodes a payload's leaves to: checked in place, without a call each (a
#: frame's quality list may hold 600,000 of them).
_LEAVES = frozenset((type(None), bool, int, float, str, bytes))


def _check_depth(value, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise WireError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict | list):
        for item in value.values() if isinstance(value, dict) else value:
            if type(item) not in _LEAVES:
                _check_depth(item, depth + 1)
    elif type(value) not in _LEAVES:
        raise WireError(f"holds a {type(value).__name__}, which payloads never contain")
