"""Plain-Python twin of `edge_agent.kernels.regdecode`, written from the spec with `struct`.

Exists to disagree with a wrong kernel: it shares no code with the kernel or with
`edge_agent.registers`, and must never be used by the agent (one `struct` call per
field: slow, and meant to be obviously right rather than fast).
"""

from __future__ import annotations

import struct

# type code -> (struct format, registers)
_LAYOUT = {
    0: ("h", 1),  # int16
    1: ("H", 1),  # uint16
    2: ("i", 2),  # int32
    3: ("I", 2),  # uint32
    4: ("f", 2),  # float32
    5: ("d", 4),  # float64
    6: (None, 1),  # bool: register != 0 (in bit tables, the bit itself)
    7: (None, 1),  # bitfield: (register >> bit) & (2**width - 1)
}


def value_bytes(regs, offset: int, words: int, byte_swap: bool, word_swap: bool) -> bytes:
    """The value's bytes, most significant first, as the controller meant them."""
    chunks = [struct.pack("<H" if byte_swap else ">H", regs[offset + j]) for j in range(words)]
    if word_swap:
        chunks.reverse()
    return b"".join(chunks)


def decode_field(regs, field) -> float:
    offset, type_code, byte_swap, word_swap, bit, width, scale, add = field
    fmt, words = _LAYOUT[type_code]
    if type_code == 6:
        raw = 1 if regs[offset] else 0
    elif type_code == 7:
        (register,) = struct.unpack(">H", value_bytes(regs, offset, 1, byte_swap, False))
        raw = (register >> bit) % (1 << width)
    else:
        (raw,) = struct.unpack(">" + fmt, value_bytes(regs, offset, words, byte_swap, word_swap))
    return float(raw) * scale + add


def decode_reference(regs, fields) -> list[float]:
    """One physical value per field: raw * scale + add."""
    return [decode_field(regs, field) for field in fields]
