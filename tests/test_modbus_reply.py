"""The check of a Modbus reply against its request (sans-IO): replies pymodbus' own server
encodes are taken as they are; any field that does not fit is a `BadReply` with one line;
arbitrary bytes never raise anything else, and never pass unless they are the one reply that
fits."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.pdu import bit_message, register_message

from edge_agent.sources.modbus_reply import BadReply, Sent, check_reply

UNIT = 1


def pymodbus_reply(pdu) -> bytes:
    """What pymodbus' server sends for a response object: function code, then its body."""
    return bytes([pdu.function_code]) + pdu.encode()


registers = st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125)
bits = st.lists(st.booleans(), min_size=1, max_size=2000)


@given(registers, st.sampled_from([3, 4]))
def test_a_register_reply_from_pymodbus_gives_its_registers(values, fc):
    response = (
        register_message.ReadHoldingRegistersResponse
        if fc == 3
        else register_message.ReadInputRegistersResponse
    )(registers=values)
    sent = Sent(UNIT, fc, 10, len(values))
    assert check_reply(sent, UNIT, pymodbus_reply(response)) == values


@given(bits, st.sampled_from([1, 2]))
def test_a_bit_reply_from_pymodbus_gives_its_bits(values, fc):
    response = (
        bit_message.ReadCoilsResponse if fc == 1 else bit_message.ReadDiscreteInputsResponse
    )(bits=values)
    sent = Sent(UNIT, fc, 0, len(values))
    assert check_reply(sent, UNIT, pymodbus_reply(response)) == [int(b) for b in values]


@given(st.integers(0, 0xFFFF), st.integers(1, 123))
def test_a_write_echo_from_pymodbus_is_a_success(address, count):
    response = register_message.WriteMultipleRegistersResponse(address=address, count=count)
    assert check_reply(Sent(UNIT, 16, address, count), UNIT, pymodbus_reply(response)) is None


@pytest.mark.parametrize("fc", [1, 2, 3, 4, 16])
def test_an_exception_reply_to_the_request_gives_its_code(fc):
    assert check_reply(Sent(UNIT, fc, 0, 1), UNIT, bytes([fc | 0x80, 2])) == 2


READ = Sent(UNIT, 3, 100, 2)
WRITE = Sent(UNIT, 16, 100, 1)
GOOD_READ = bytes([3, 4, 0, 1, 0, 2])
GOOD_WRITE = struct.pack(">BHH", 16, 100, 1)


@pytest.mark.parametrize(
    ("sent", "unit", "pdu", "says"),
    [
        (READ, UNIT, bytes([4, 4, 0, 0, 0, 0]), "FC 4 in reply to FC 3 for 2 at 100"),
        (READ, 7, GOOD_READ, "a reply from unit 7 to a request for unit 1"),
        (READ, UNIT, bytes([3, 2, 0, 1]), "byte count 2 in reply to FC 3 for 2 at 100"),
        (READ, UNIT, bytes([3, 4, 0, 1, 0]), "3 data bytes under byte count 4"),
        (READ, UNIT, bytes([3, 4, 0, 1, 0, 2, 0]), "5 data bytes under byte count 4"),
        (READ, UNIT, bytes([3]), "byte count no in reply"),
        (READ, UNIT, bytes([0x84, 2]), "an exception for FC 4 in reply to FC 3"),
        (READ, UNIT, bytes([0x83, 2, 0]), "an exception reply of 3 bytes"),
        (READ, UNIT, bytes([0x41, 0, 0]), "FC 65 in reply to FC 3"),
        (READ, UNIT, b"", "an empty reply to FC 3"),
        (WRITE, UNIT, struct.pack(">BHH", 6, 100, 1), "FC 6 in reply to FC 16"),
        (WRITE, UNIT, struct.pack(">BHH", 16, 101, 1), "for 1 at 101 to a write of 1 at 100"),
        (WRITE, UNIT, struct.pack(">BHH", 16, 100, 2), "for 2 at 100 to a write of 1 at 100"),
        (WRITE, UNIT, GOOD_WRITE + b"\0", "a write reply of 6 bytes"),
        (WRITE, UNIT, GOOD_READ, "FC 3 in reply to FC 16"),
    ],
)
def test_a_reply_that_does_not_fit_is_a_bad_reply_saying_what(sent, unit, pdu, says):
    with pytest.raises(BadReply) as caught:
        check_reply(sent, unit, pdu)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_the_fitting_replies_pass():
    assert check_reply(READ, UNIT, GOOD_READ) == [1, 2]
    assert check_reply(WRITE, UNIT, GOOD_WRITE) is None


sents = st.builds(
    Sent,
    unit=st.integers(0, 255),
    function_code=st.sampled_from([1, 2, 3, 4, 16]),
    address=st.integers(0, 0xFFFF),
    count=st.integers(1, 125),
)


def fitting(sent: Sent, values: list[int]) -> bytes:
    if sent.function_code == 16:
        return struct.pack(">BHH", 16, sent.address, sent.count)
    if sent.function_code in (1, 2):
        data = bytearray((sent.count + 7) // 8)
        for i, bit in enumerate(values[: sent.count]):
            data[i // 8] |= (bit & 1) << (i % 8)
        return bytes([sent.function_code, len(data)]) + bytes(data)
    words = values[: sent.count]
    return bytes([sent.function_code, 2 * len(words)]) + struct.pack(f">{len(words)}H", *words)


@given(sents, st.integers(0, 255), st.binary(max_size=300))
def test_arbitrary_bytes_are_values_only_when_they_are_the_reply_that_fits(sent, unit, pdu):
    try:
        result = check_reply(sent, unit, pdu)
    except BadReply as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert unit == sent.unit
    if isinstance(result, int):
        assert pdu == bytes([sent.function_code | 0x80, result])
    elif result is None:
        assert pdu == fitting(sent, [])
    else:
        assert len(result) == sent.count
        refit = fitting(sent, result)
        if sent.function_code in (1, 2):  # padding bits of the last byte are not ours
            assert pdu[:2] == refit[:2] and len(pdu) == len(refit)
        else:
            assert pdu == refit


@given(sents, st.data())
def test_every_single_byte_change_of_a_fitting_reply_is_refused_or_read_as_sent(sent, data):
    values = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=sent.count, max_size=sent.count))
    pdu = bytearray(fitting(sent, values))
    index = data.draw(st.integers(0, len(pdu) - 1))
    pdu[index] ^= data.draw(st.integers(1, 255))
    try:
        result = check_reply(sent, sent.unit, bytes(pdu))
    except BadReply:
        return
    # Only a data byte may change and still fit (then it reads as what came).
    assert index >= 2 and sent.function_code != 16
    assert isinstance(result, list) and len(result) == sent.count
