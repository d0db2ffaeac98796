"""The register-decoding kernel, specified: types, byte and word orders, scaling, errors.

Held to `struct` (the reference for what the bytes mean) and to the plain-Python oracle
in `tests/oracles/regdecode_oracle.py` (bit for bit, scale and add included).
"""

from __future__ import annotations

import array
import math
import re
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.kernels.regdecode import BlockDecoder
from edge_agent.registers import Order, Table, Tag, ValueType, encode_registers
from edge_agent.sources.decoding import fields_for, make_decoder
from tests.oracles.regdecode_oracle import decode_reference

INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64, BOOL, BITFIELD = range(8)
WORDS = {INT16: 1, UINT16: 1, INT32: 2, UINT32: 2, FLOAT32: 2, FLOAT64: 4, BOOL: 1, BITFIELD: 1}
STRUCT_FORMAT = {INT16: "h", UINT16: "H", INT32: "i", UINT32: "I", FLOAT32: "f", FLOAT64: "d"}
ORDERS = [(False, False), (False, True), (True, False), (True, True)]  # (byte_swap, word_swap)
ORDER_IDS = ["ABCD", "CDAB", "BADC", "DCBA"]

FLOAT32_MAX = struct.unpack(">f", b"\x7f\x7f\xff\xff")[0]
FLOAT32_TINIEST = struct.unpack(">f", b"\x00\x00\x00\x01")[0]  # smallest denormal
FLOAT32_BIGGEST_DENORMAL = struct.unpack(">f", b"\x00\x7f\xff\xff")[0]
EDGE_VALUES = {
    INT16: [-(2**15), 2**15 - 1, 0, -1, 1],
    UINT16: [0, 1, 2**16 - 1, 2**15],
    INT32: [-(2**31), 2**31 - 1, 0, -1, 1, 2**16, -(2**16)],
    UINT32: [0, 1, 2**32 - 1, 2**31, 2**16 - 1, 2**16],
    FLOAT32: [0.0, -0.0, 1.0, -1.0, math.nan, math.inf, -math.inf, FLOAT32_MAX, -FLOAT32_MAX,
              FLOAT32_TINIEST, -FLOAT32_TINIEST, FLOAT32_BIGGEST_DENORMAL, 2.0**-126],
    FLOAT64: [0.0, -0.0, 1.0, -1.0, math.nan, math.inf, -math.inf, 1.7976931348623157e308,
              5e-324, -5e-324, 2.2250738585072014e-308, 0.1],
}  # fmt: skip
VALUES = {
    INT16: st.integers(-(2**15), 2**15 - 1),
    UINT16: st.integers(0, 2**16 - 1),
    INT32: st.integers(-(2**31), 2**31 - 1),
    UINT32: st.integers(0, 2**32 - 1),
    FLOAT32: st.floats(width=32),
    FLOAT64: st.floats(),
}


def field(offset=0, type_code=UINT16, byte_swap=False, word_swap=False, bit=0, width=1,
          scale=1.0, add=-0.0):  # fmt: skip
    """A kernel field; the defaults leave the raw value as it is.

    add=-0.0, not 0.0: -0.0 is the additive identity that keeps a raw -0.0 negative
    (in Python as in C, -0.0 + 0.0 is +0.0).
    """
    return (offset, type_code, byte_swap, word_swap, bit, width, scale, add)


def decode(regs, *fields) -> list[float]:
    out = array.array("d", [-12345.0] * len(fields))
    BlockDecoder(fields).decode(array.array("H", regs), out)
    return list(out)


def on_the_wire(value_bytes: bytes, byte_swap: bool, word_swap: bool) -> list[int]:
    """Registers a controller sends for a value whose bytes are most significant first."""
    words = [value_bytes[i : i + 2] for i in range(0, len(value_bytes), 2)]
    if word_swap:
        words.reverse()
    return [int.from_bytes(w, "little" if byte_swap else "big") for w in words]


def same_float(a: float, b: float) -> bool:
    """Bit-for-bit equality, except that any NaN equals any NaN."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return struct.pack("<d", a) == struct.pack("<d", b)


def numeric_cases(values):
    return [
        pytest.param(code, byte_swap, word_swap, value, id=f"{code}-{order}-{value!r}")
        for code in STRUCT_FORMAT
        for (byte_swap, word_swap), order in zip(ORDERS, ORDER_IDS, strict=True)
        for value in values(code)
    ]


# -- what the bytes mean ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("byte_swap", "word_swap", "regs"),
    [
        (False, False, [0x0102, 0x0304]),
        (False, True, [0x0304, 0x0102]),
        (True, False, [0x0201, 0x0403]),
        (True, True, [0x0403, 0x0201]),
    ],
    ids=ORDER_IDS,
)
def test_int32_0x01020304_in_each_of_the_four_controller_layouts(byte_swap, word_swap, regs):
    assert decode(regs, field(type_code=INT32, byte_swap=byte_swap, word_swap=word_swap)) == [
        0x01020304
    ]


def test_float64_word_swap_reverses_all_four_registers():
    regs = [0x0000, 0x0000, 0x0000, 0x3FF0]  # 1.0 = 0x3FF0_0000_0000_0000, low word first
    assert decode(regs, field(type_code=FLOAT64, word_swap=True)) == [1.0]


@pytest.mark.parametrize(
    ("code", "byte_swap", "word_swap", "value"), numeric_cases(EDGE_VALUES.get)
)
def test_edge_values_decode_exactly_in_every_layout(code, byte_swap, word_swap, value):
    regs = on_the_wire(struct.pack(">" + STRUCT_FORMAT[code], value), byte_swap, word_swap)
    (decoded,) = decode(regs, field(type_code=code, byte_swap=byte_swap, word_swap=word_swap))
    assert same_float(decoded, float(value)), (decoded, value)


@pytest.mark.parametrize(("byte_swap", "word_swap"), ORDERS, ids=ORDER_IDS)
@pytest.mark.parametrize("code", list(STRUCT_FORMAT), ids=list(STRUCT_FORMAT.values()))
@given(data=st.data())
def test_every_type_and_layout_decodes_what_struct_packed(code, byte_swap, word_swap, data):
    value = data.draw(VALUES[code])
    regs = on_the_wire(struct.pack(">" + STRUCT_FORMAT[code], value), byte_swap, word_swap)
    (decoded,) = decode(regs, field(type_code=code, byte_swap=byte_swap, word_swap=word_swap))
    assert same_float(decoded, float(value))


@pytest.mark.parametrize(("byte_swap", "word_swap"), ORDERS, ids=ORDER_IDS)
@pytest.mark.parametrize("code", list(STRUCT_FORMAT), ids=list(STRUCT_FORMAT.values()))
@given(regs=st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4))
def test_any_raw_bit_pattern_decodes_as_struct_unpacks_it(code, byte_swap, word_swap, regs):
    words = regs[: WORDS[code]]
    ordered = list(reversed(words)) if word_swap else words
    raw = b"".join(w.to_bytes(2, "little" if byte_swap else "big") for w in ordered)
    (expected,) = struct.unpack(">" + STRUCT_FORMAT[code], raw)
    (decoded,) = decode(regs, field(type_code=code, byte_swap=byte_swap, word_swap=word_swap))
    assert same_float(decoded, float(expected))


def test_a_float32_nan_stays_nan_and_signs_of_zero_survive():
    nan, negative_zero = decode(
        [0x7FC0, 0x0000, 0x8000, 0x0000], field(0, FLOAT32), field(2, FLOAT32)
    )
    assert math.isnan(nan)
    assert negative_zero == 0.0 and math.copysign(1.0, negative_zero) == -1.0


# -- scale and add ----------------------------------------------------------------------


def test_physical_value_is_raw_times_scale_plus_add():
    assert decode([1234], field(scale=0.1, add=-20.0)) == [1234 * 0.1 + -20.0]


def test_a_zero_add_turns_negative_zero_positive_as_python_does():
    (decoded,) = decode([0x8000, 0x0000], field(type_code=FLOAT32, add=0.0))
    assert math.copysign(1.0, decoded) == math.copysign(1.0, -0.0 * 1.0 + 0.0) == 1.0


def test_scale_then_add_rounds_twice_like_python_not_fused():
    # 3 * 0.1 rounds up to 0.30000000000000004; a fused multiply-add (what GCC emits on
    # aarch64 without -ffp-contract=off) would keep the exact product and return -2.8e-17.
    assert decode([3], field(scale=0.1, add=-(3 * 0.1))) == [0.0]


@st.composite
def blocks(draw):
    """A reply of 1..125 registers and up to 40 fields of any type that fit in it."""
    length = draw(st.integers(1, 125))
    regs = draw(st.lists(st.integers(0, 0xFFFF), min_size=length, max_size=length))
    fields = []
    for _ in range(draw(st.integers(0, 40))):
        code = draw(st.sampled_from([c for c, words in WORDS.items() if words <= length]))
        bit = draw(st.integers(0, 15))
        fields.append(
            field(
                offset=draw(st.integers(0, length - WORDS[code])),
                type_code=code,
                byte_swap=draw(st.booleans()),
                word_swap=draw(st.booleans()),
                bit=bit,
                width=draw(st.integers(1, 16 - bit)),
                scale=draw(st.floats()),
                add=draw(st.floats()),
            )
        )
    return regs, fields


@given(blocks())
def test_kernel_matches_the_oracle_bit_for_bit_on_random_blocks(block):
    regs, fields = block
    decoded = decode(regs, *fields)
    expected = decode_reference(regs, fields)
    assert all(same_float(d, e) for d, e in zip(decoded, expected, strict=True))


# -- bitfields and bools ------------------------------------------------------------------


def test_bitfields_sharing_one_register_each_read_their_own_bits():
    alarm_word = 0b1011_0110_0000_0101
    assert decode(
        [alarm_word],
        field(type_code=BITFIELD, bit=0, width=1),
        field(type_code=BITFIELD, bit=1, width=1),
        field(type_code=BITFIELD, bit=2, width=1),
        field(type_code=BITFIELD, bit=9, width=3),
        field(type_code=BITFIELD, bit=12, width=4),
        field(type_code=BITFIELD, bit=0, width=16),
    ) == [1, 0, 1, 0b011, 0b1011, alarm_word]


@given(register=st.integers(0, 0xFFFF), cuts=st.sets(st.integers(1, 15)))
def test_bitfields_that_tile_a_register_reassemble_it(register, cuts):
    edges = [0, *sorted(cuts), 16]
    fields = [
        field(type_code=BITFIELD, bit=lo, width=hi - lo)
        for lo, hi in zip(edges, edges[1:], strict=False)
    ]
    parts = decode([register], *fields)
    assert sum(int(part) << f[4] for part, f in zip(parts, fields, strict=True)) == register


def test_bitfield_bit_numbers_count_in_the_byte_swapped_value():
    assert decode([0x0100], field(type_code=BITFIELD, byte_swap=True, bit=0, width=1)) == [1]


@pytest.mark.parametrize(
    ("register", "expected"), [(0, 0.0), (1, 1.0), (0x8000, 1.0), (0xFFFF, 1.0)]
)
def test_bool_in_a_register_is_one_when_any_bit_is_set(register, expected):
    assert decode([register], field(type_code=BOOL, byte_swap=True, word_swap=True)) == [expected]


@pytest.mark.parametrize("table", [Table.COIL, Table.DISCRETE])
def test_bool_in_a_bit_table_is_the_bit_itself(table):
    tags = [Tag(f"bit_{a}", a, table, ValueType.BOOL) for a in range(10, 14)]
    out = array.array("d", bytes(8 * len(tags)))
    make_decoder(tags, 10).decode(array.array("H", [0, 1, 1, 0]), out)
    assert list(out) == [0.0, 1.0, 1.0, 0.0]


# -- encode_registers is the inverse ------------------------------------------------------

TAG_CASES = [
    pytest.param(value_type, byte_order, word_order, id=f"{value_type.value}-{b}{w}")
    for value_type in ValueType
    for byte_order, b in ((Order.BIG, "AB"), (Order.LITTLE, "BA"))
    for word_order, w in ((Order.BIG, "-hi-first"), (Order.LITTLE, "-lo-first"))
]
TAG_VALUES = {
    ValueType.INT16: VALUES[INT16],
    ValueType.UINT16: VALUES[UINT16],
    ValueType.INT32: VALUES[INT32],
    ValueType.UINT32: VALUES[UINT32],
    ValueType.FLOAT32: st.floats(-FLOAT32_MAX, FLOAT32_MAX) | st.sampled_from([math.nan]),
    ValueType.FLOAT64: st.floats(),
    ValueType.BOOL: st.sampled_from([0, 1]),
}


def decode_tag(tag: Tag, regs: list[int]) -> float:
    out = array.array("d", [0.0])
    make_decoder([tag], tag.address).decode(array.array("H", regs), out)
    return out[0]


@pytest.mark.parametrize(("value_type", "byte_order", "word_order"), TAG_CASES)
@given(data=st.data())
def test_encode_registers_then_decode_round_trips(value_type, byte_order, word_order, data):
    bit, width = 0, 1
    if value_type is ValueType.BITFIELD:
        bit = data.draw(st.integers(0, 15), label="bit")
        width = data.draw(st.integers(1, 16 - bit), label="width")
        value = data.draw(st.integers(0, (1 << width) - 1), label="value")
    else:
        value = data.draw(TAG_VALUES[value_type], label="value")
    tag = Tag("t", 7, Table.HOLDING, value_type, byte_order, word_order, bit=bit, width=width)
    regs = encode_registers(tag, value)
    assert len(regs) == value_type.words
    expected = float(value)
    if value_type is ValueType.FLOAT32:
        expected = struct.unpack("<f", struct.pack("<f", value))[0]  # float32 precision
    # The tag's own formula, raw * 1.0 + 0.0: a -0.0 comes back as +0.0, as in Python.
    assert same_float(decode_tag(tag, regs), expected * tag.scale + tag.offset)


@pytest.mark.parametrize("value_type", [ValueType.INT16, ValueType.UINT16, ValueType.INT32])
@given(step=st.integers(0, 30000), scale=st.sampled_from([0.1, 0.001, 0.25, 3.0]))
def test_scaled_integer_tags_round_trip_values_on_their_raw_step(value_type, step, scale):
    tag = Tag("t", 0, Table.INPUT, value_type, scale=scale, offset=-50.0)
    value = step * scale + -50.0
    assert decode_tag(tag, encode_registers(tag, value)) == value


@pytest.mark.parametrize("table", [Table.COIL, Table.DISCRETE])
@pytest.mark.parametrize("value", [0.0, 1.0])
def test_bit_table_tags_round_trip(table, value):
    tag = Tag("spindle_on", 3, table, ValueType.BOOL)
    assert decode_tag(tag, encode_registers(tag, value)) == value


def test_the_hil_register_map_decodes_what_it_encodes_in_one_block():
    from hil.register_map import TAGS

    tags = [t for t in TAGS if t.table is Table.INPUT]
    values = {
        t.name: float(i % 2 if t.type is ValueType.BITFIELD else i + 1) for i, t in enumerate(tags)
    }
    base = min(t.address for t in tags)
    block = [0] * (max(t.end for t in tags) - base)
    for tag in tags:
        for i, register in enumerate(encode_registers(tag, values[tag.name])):
            block[tag.address - base + i] |= register  # bitfields share their register
    out = array.array("d", bytes(8 * len(tags)))
    make_decoder(tags, base).decode(array.array("H", block), out)
    for tag, decoded in zip(tags, out, strict=True):
        assert decoded == pytest.approx(values[tag.name], rel=1e-12), tag.name


# -- fields from tags ---------------------------------------------------------------------


def test_fields_for_makes_offsets_relative_to_the_read_and_maps_orders_to_swaps():
    tags = [
        Tag("spindle_power", 120, Table.INPUT, ValueType.FLOAT32, word_order=Order.LITTLE),
        Tag("x_position", 124, Table.INPUT, ValueType.INT32, byte_order=Order.LITTLE,
            scale=0.001, offset=2.5),
        Tag("alarm_servo", 126, Table.INPUT, ValueType.BITFIELD, bit=3, width=2),
    ]  # fmt: skip
    assert fields_for(tags, 120) == [
        (0, ValueType.FLOAT32.code, False, True, 0, 1, 1.0, 0.0),
        (4, ValueType.INT32.code, True, False, 0, 1, 0.001, 2.5),
        (6, ValueType.BITFIELD.code, False, False, 3, 2, 1.0, 0.0),
    ]


def test_any_type_in_a_bit_table_decodes_as_the_bit():
    tag = Tag("door_closed", 5, Table.DISCRETE, ValueType.INT32)
    assert fields_for([tag], 5)[0][1] == ValueType.BOOL.code
    assert make_decoder([tag], 5).required_length == 1


def test_type_codes_and_widths_match_the_register_vocabulary():
    # The kernel cannot import edge_agent, so the codes are kept in step by hand.
    names = ["int16", "uint16", "int32", "uint32", "float32", "float64", "bool", "bitfield"]
    assert {t.value: (t.code, t.words) for t in ValueType} == {
        name: (code, WORDS[code]) for code, name in enumerate(names)
    }


def test_the_kernel_imports_nothing_of_the_agent():
    source = Path(__file__).parents[1] / "edge_agent" / "kernels" / "regdecode.pyx"
    imports = re.findall(r"^\s*(?:from|c?import)\s+(\S+)", source.read_text(), re.MULTILINE)
    assert imports and not [name for name in imports if "edge_agent" in name or name == "."]


# -- shape of the decoder -----------------------------------------------------------------


def test_required_length_is_the_furthest_register_any_field_reads():
    decoder = BlockDecoder([field(0, UINT16), field(3, FLOAT64), field(5, BITFIELD)])
    assert (decoder.n_fields, decoder.required_length) == (3, 7)


def test_an_empty_decoder_needs_nothing_and_writes_nothing():
    decoder = BlockDecoder([])
    out = array.array("d", [9.0])
    decoder.decode(array.array("H"), out)
    assert (decoder.n_fields, decoder.required_length, list(out)) == (0, 0, [9.0])


def test_longer_inputs_are_accepted_and_extra_slots_left_alone():
    out = array.array("d", [7.0, 7.0, 7.0])
    BlockDecoder([field(1, INT16)]).decode(array.array("H", [1, 0xFFFF, 3]), out)
    assert list(out) == [-1.0, 7.0, 7.0]


def test_the_same_decoder_decodes_successive_replies():
    decoder = BlockDecoder([field(0, UINT16, scale=0.5)])
    out = array.array("d", [0.0])
    seen = []
    for register in (2, 4, 6):
        decoder.decode(array.array("H", [register]), out)
        seen.append(out[0])
    assert seen == [1.0, 2.0, 3.0]


# -- errors -------------------------------------------------------------------------------


def one_line_error(call) -> str:
    with pytest.raises(ValueError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_short_reply_is_refused_naming_both_lengths():
    decoder = BlockDecoder([field(0, FLOAT64)])
    message = one_line_error(
        lambda: decoder.decode(array.array("H", [0, 0, 0]), array.array("d", [0.0]))
    )
    assert "3" in message and "4" in message


def test_a_short_output_is_refused_naming_both_lengths():
    decoder = BlockDecoder([field(0), field(1)])
    message = one_line_error(lambda: decoder.decode(array.array("H", [0, 0]), array.array("d")))
    assert "0" in message and "2" in message


@pytest.mark.parametrize(
    ("bad_field", "what"),
    [
        (field(type_code=8), "unknown type code 8"),
        (field(type_code=-1), "unknown type code -1"),
        (field(offset=-1), "negative offset -1"),
        (field(offset=2**16), "offset 65536 beyond"),
        (field(type_code=BITFIELD, bit=16), "bit 16"),
        (field(type_code=BITFIELD, bit=-1), "bit -1"),
        (field(type_code=BITFIELD, width=0), "width 0"),
        (field(type_code=BITFIELD, width=17), "width 17"),
        (field(type_code=BITFIELD, bit=12, width=5), "exceeds 16 bits"),
        ((0, UINT16, False, False), "expected (offset, type_code"),
        ((0, "uint16", False, False, 0, 1, 1.0, 0.0), "expected (offset, type_code"),
    ],
)
def test_a_bad_field_is_refused_naming_its_index_and_fault(bad_field, what):
    message = one_line_error(lambda: BlockDecoder([field(), field(), bad_field]))
    assert message.startswith("field 2: ") and what in message


def test_bool_and_numeric_fields_ignore_bit_and_width():
    assert decode([5], field(type_code=UINT16, bit=99, width=0)) == [5.0]
