# cython: language_level=3
"""Decodes one Modbus read reply (raw 16-bit registers, or bits as 0/1) into scaled floats.

The agent's hot path: 200 tags at 10 Hz on a Pi. Imports nothing of the agent (type codes
are `edge_agent.registers.ValueType.code`, kept in step by hand); never allocates per value
and never holds the GIL in its inner loop. The plain-Python twin is
`tests/oracles/regdecode_oracle.py`.

A field is (offset, type_code, byte_swap, word_swap, bit, width, scale, add):
  type codes 0 int16, 1 uint16, 2 int32, 3 uint32, 4 float32, 5 float64, 6 bool, 7 bitfield;
  byte_swap: the two bytes of each register are swapped; word_swap: the value's registers
  come least-significant word first. Physical value = raw * scale + add, with raw exact.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int16_t, int32_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

cdef enum:
    T_INT16 = 0
    T_UINT16 = 1
    T_INT32 = 2
    T_UINT32 = 3
    T_FLOAT32 = 4
    T_FLOAT64 = 5
    T_BOOL = 6
    T_BITFIELD = 7

# Registers each type occupies, indexed by type code.
cdef int[8] _WORDS = [1, 1, 2, 2, 2, 4, 1, 1]

_TYPE_NAMES = ("int16", "uint16", "int32", "uint32", "float32", "float64", "bool", "bitfield")

cdef struct Field:
    Py_ssize_t offset
    int type_code
    int words
    bint byte_swap
    bint word_swap
    int bit
    uint32_t mask
    double scale
    double add


cdef inline uint16_t _word(const uint16_t* regs, Py_ssize_t i, bint byte_swap) noexcept nogil:
    cdef uint16_t w = regs[i]
    if byte_swap:
        w = <uint16_t>((w << 8) | (w >> 8))
    return w


cdef inline double _raw(const Field* f, const uint16_t* regs) noexcept nogil:
    """The field's raw value, exactly, as a double."""
    cdef uint64_t bits = 0
    cdef int j
    cdef uint32_t bits32
    cdef float f32 = 0
    cdef double f64 = 0
    cdef Py_ssize_t last = f.offset + f.words - 1
    if f.type_code == T_BOOL:
        return 1.0 if regs[f.offset] != 0 else 0.0
    # Most significant word first: word j of the value is register offset + j, or
    # offset + words - 1 - j when the controller puts the low word first.
    for j in range(f.words):
        bits = (bits << 16) | _word(regs, last - j if f.word_swap else f.offset + j, f.byte_swap)
    if f.type_code == T_INT16:
        return <double><int16_t><uint16_t>bits
    if f.type_code == T_UINT16:
        return <double><uint16_t>bits
    if f.type_code == T_INT32:
        return <double><int32_t><uint32_t>bits
    if f.type_code == T_UINT32:
        return <double><uint32_t>bits
    if f.type_code == T_FLOAT32:
        bits32 = <uint32_t>bits
        memcpy(&f32, &bits32, 4)
        return <double>f32
    if f.type_code == T_FLOAT64:
        memcpy(&f64, &bits, 8)
        return f64
    # T_BITFIELD
    return <double>((<uint32_t>bits >> f.bit) & f.mask)


cdef class BlockDecoder:
    """Decodes a block of registers into one float64 per field; built once per read request."""

    cdef Field* _fields
    cdef Py_ssize_t _n
    cdef Py_ssize_t _required

    def __cinit__(self, fields):
        self._fields = NULL
        self._n = 0
        self._required = 0

    def __init__(self, fields):
        fields = list(fields)
        cdef Py_ssize_t n = len(fields)
        cdef Field* table = <Field*>PyMem_Malloc(max(n, 1) * sizeof(Field))
        if table == NULL:
            raise MemoryError()
        try:
            for i, spec in enumerate(fields):
                _parse(i, spec, &table[i])
        except BaseException:
            PyMem_Free(table)
            raise
        PyMem_Free(self._fields)
        self._fields = table
        self._n = n
        self._required = 0
        for i in range(n):
            self._required = max(self._required, table[i].offset + table[i].words)

    def __dealloc__(self):
        PyMem_Free(self._fields)

    @property
    def n_fields(self) -> int:
        return self._n

    @property
    def required_length(self) -> int:
        """Registers (or bits) the block must hold: max(offset + words) over the fields."""
        return self._required

    def decode(self, const uint16_t[::1] regs, double[::1] out) -> None:
        """Writes field i's physical value to out[i]. Raises ValueError on short inputs."""
        if regs.shape[0] < self._required:
            raise ValueError(
                f"register block too short: {regs.shape[0]} registers, "
                f"the fields need {self._required}"
            )
        if out.shape[0] < self._n:
            raise ValueError(f"output too short: {out.shape[0]} slots for {self._n} fields")
        cdef Py_ssize_t i
        cdef const Field* f
        cdef const uint16_t* words = &regs[0] if regs.shape[0] else NULL
        with nogil:
            for i in range(self._n):
                f = &self._fields[i]
                out[i] = _raw(f, words) * f.scale + f.add


cdef _parse(Py_ssize_t i, spec, Field* f):
    """Fills `f` from one field tuple, or raises a one-line ValueError naming field `i`."""
    try:
        offset, type_code, byte_swap, word_swap, bit, width, scale, add = spec
        offset, type_code, bit, width = int(offset), int(type_code), int(bit), int(width)
        scale, add = float(scale), float(add)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(
            f"field {i}: expected (offset, type_code, byte_swap, word_swap, bit, width, "
            f"scale, add) with integer offset/type_code/bit/width, got {spec!r}"
        ) from None
    if not 0 <= type_code < len(_TYPE_NAMES):
        raise ValueError(f"field {i}: unknown type code {type_code} (known: 0..7)")
    if offset < 0:
        raise ValueError(f"field {i}: negative offset {offset}")
    if offset > 0xFFFF:
        raise ValueError(f"field {i}: offset {offset} beyond the Modbus address space (65535)")
    if type_code == T_BITFIELD:
        if not 0 <= bit <= 15:
            raise ValueError(f"field {i}: bitfield bit {bit} outside 0..15")
        if not 1 <= width <= 16:
            raise ValueError(f"field {i}: bitfield width {width} outside 1..16")
        if bit + width > 16:
            raise ValueError(f"field {i}: bitfield bit {bit} + width {width} exceeds 16 bits")
    else:
        bit, width = 0, 16
    f.offset = offset
    f.type_code = type_code
    f.words = _WORDS[type_code]
    f.byte_swap = bool(byte_swap)
    f.word_swap = bool(word_swap)
    f.bit = bit
    f.mask = (<uint32_t>1 << width) - 1
    f.scale = scale
    f.add = add
