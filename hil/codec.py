"""Registers back to physical values, in plain Python: what a client decodes from the simulated
controller's registers, so the bench can say what the agent should see.

Pure functions, never does I/O. The agent decodes with its own kernel
(`edge_agent.kernels.regdecode`); this twin serves the bench and its tests only.
"""

from __future__ import annotations

import struct

from edge_agent.registers import Order, Tag, ValueType, encode_registers

_FORMAT = {
    ValueType.INT16: "h",
    ValueType.UINT16: "H",
    ValueType.INT32: "i",
    ValueType.UINT32: "I",
    ValueType.FLOAT32: "f",
    ValueType.FLOAT64: "d",
}


def decode_registers(tag: Tag, registers: list[int]) -> float:
    """The physical value `registers` (or a 0/1 bit) hold for `tag`: raw * scale + offset."""
    if tag.table.is_bits or tag.type is ValueType.BOOL:
        raw: float = 1 if registers[0] else 0
    elif tag.type is ValueType.BITFIELD:
        register = registers[0]
        if tag.byte_order is Order.LITTLE:
            register = ((register & 0xFF) << 8) | (register >> 8)
        raw = (register >> tag.bit) & ((1 << tag.width) - 1)
    else:
        words = [r.to_bytes(2, "big") for r in registers[: tag.type.words]]
        if tag.byte_order is Order.LITTLE:
            words = [w[::-1] for w in words]
        if tag.word_order is Order.LITTLE:
            words.reverse()
        (raw,) = struct.unpack(">" + _FORMAT[tag.type], b"".join(words))
    return raw * tag.scale + tag.offset if tag.scale != 1.0 or tag.offset else float(raw)


def as_registered(tag: Tag, value: float) -> float:
    """`value` as it reads back through `tag`'s register: rounded to its scale, clamped to its
    type (a float32 keeps float32 precision)."""
    return decode_registers(tag, encode_registers(tag, value))
