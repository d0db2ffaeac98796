"""The register map's vocabulary: Modbus tables, value types, byte and word orders, and a tag.

Pure data and pure functions: never does I/O. The decoding hot path lives in
`edge_agent.kernels.regdecode`; `encode_registers` here is its inverse, used by the
simulated controller and by tests.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from enum import StrEnum

#: Modbus protocol maxima for one read request (Modbus Application Protocol v1.1b3,
#: function codes 0x03/0x04 and 0x01/0x02).
MAX_REGISTERS_PER_READ = 125
MAX_BITS_PER_READ = 2000


class Table(StrEnum):
    """The four Modbus data tables."""

    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"
    DISCRETE = "discrete"

    @property
    def is_bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE)


class ValueType(StrEnum):
    """How a tag's raw registers (or bit) become a number.

    `code` is the integer the decoding kernel switches on; keep it in step with
    `edge_agent/kernels/regdecode.pyx`.
    """

    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BOOL = "bool"
    BITFIELD = "bitfield"

    @property
    def code(self) -> int:
        return _TYPE_CODES[self]

    @property
    def words(self) -> int:
        """Registers the type occupies (bit tables: one bit)."""
        return _TYPE_WORDS[self]


_TYPE_CODES = {t: i for i, t in enumerate(ValueType)}
_TYPE_WORDS = {
    ValueType.INT16: 1,
    ValueType.UINT16: 1,
    ValueType.INT32: 2,
    ValueType.UINT32: 2,
    ValueType.FLOAT32: 2,
    ValueType.FLOAT64: 4,
    ValueType.BOOL: 1,
    ValueType.BITFIELD: 1,
}
_STRUCT_FORMAT = {
    ValueType.INT16: "h",
    ValueType.UINT16: "H",
    ValueType.INT32: "i",
    ValueType.UINT32: "I",
    ValueType.FLOAT32: "f",
    ValueType.FLOAT64: "d",
}


class Order(StrEnum):
    """Byte order within a register, or word order across the registers of one value.

    Modbus itself is big-endian within a register; many controllers put the low word
    first for 32- and 64-bit values ("word swap"), a few swap the bytes too.
    """

    BIG = "big"
    LITTLE = "little"


@dataclass(frozen=True)
class Tag:
    """One named value in the controller's register map.

    physical value = raw * scale + offset. A `bitfield` tag is `width` bits starting at
    bit `bit` (0 = least significant) of one register; several may share a register.
    """

    name: str
    address: int
    table: Table
    type: ValueType
    byte_order: Order = Order.BIG
    word_order: Order = Order.BIG
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    poll_group: str = "default"
    bit: int = 0
    width: int = 1

    @property
    def span(self) -> int:
        """Registers (or bits, in a bit table) the tag occupies."""
        return 1 if self.table.is_bits else self.type.words

    @property
    def end(self) -> int:
        """One past the last address the tag occupies."""
        return self.address + self.span

    @property
    def resolution(self) -> float:
        """The smallest step a written value takes: one count of the register."""
        return self.scale


def encode_registers(tag: Tag, value: float) -> list[int]:
    """The raw registers (or the one bit, as 0/1) that decode to `value` for `tag`.

    The inverse of decoding: value -> (value - offset) / scale -> raw. Integer types and
    bitfields are rounded to the nearest raw step and clamped to their range (NaN becomes
    the lowest value); a float32 beyond its range becomes infinity. So a simulated
    controller never fails on an out-of-range physical value.
    """
    raw = (value - tag.offset) / tag.scale if tag.scale != 1.0 or tag.offset else value
    if tag.table.is_bits or tag.type is ValueType.BOOL:
        return [1 if raw else 0]
    if tag.type is ValueType.BITFIELD:
        mask = (1 << tag.width) - 1
        register = (_clamp_int(raw, 0, mask) & mask) << tag.bit
        if tag.byte_order is Order.LITTLE:  # bit numbers count in the value, not the wire
            register = ((register & 0xFF) << 8) | (register >> 8)
        return [register]
    fmt = _STRUCT_FORMAT[tag.type]
    if fmt in "hHiI":
        bits = 16 if fmt in "hH" else 32
        signed = fmt in "hi"
        lo = -(1 << (bits - 1)) if signed else 0
        raw = _clamp_int(raw, lo, lo + (1 << bits) - 1)
    try:
        data = struct.pack(">" + fmt, raw)
    except OverflowError:  # beyond float32: what a controller's float register would hold
        data = struct.pack(">f", math.copysign(math.inf, raw))
    words = [data[i : i + 2] for i in range(0, len(data), 2)]
    if tag.word_order is Order.LITTLE:
        words.reverse()
    if tag.byte_order is Order.LITTLE:
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def _clamp_int(raw: float, lo: int, hi: int) -> int:
    return lo if math.isnan(raw) else int(round(min(hi, max(lo, raw))))
