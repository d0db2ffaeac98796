"""Registers back to physical values for the bench: what a client reads from the simulated
controller's registers, decoded by the agent's own kernel (`edge_agent.kernels.regdecode`,
held to the plain-Python oracle in tests/oracles), so the decoding exists once.

Pure functions, never does I/O.
"""

from __future__ import annotations

import array

from edge_agent.registers import Tag, encode_registers
from edge_agent.sources.decoding import make_decoder


def decode_registers(tag: Tag, registers: list[int]) -> float:
    """The physical value `registers` (or a 0/1 bit) hold for `tag`: raw * scale + offset."""
    out = array.array("d", [0.0])
    make_decoder([tag], tag.address).decode(array.array("H", registers[: tag.span]), out)
    return out[0]


def as_registered(tag: Tag, value: float) -> float:
    """`value` as it reads back through `tag`'s register: rounded to its scale, clamped to its
    type (a float32 keeps float32 precision)."""
    return decode_registers(tag, encode_registers(tag, value))
