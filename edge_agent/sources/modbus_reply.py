"""A Modbus reply checked against the request it answers: sans-IO, bytes in, values out.

pymodbus matches a reply to its request by transaction id (TCP) and unit id only; it decodes
whatever function code arrives (an FC 4 reply to an FC 3 read came back as registers), and its
decoders trust the byte count. So the link hands the reply's raw PDU here, and only a reply
that fits its request in every field yields values: the unit id, the function code (or its
exception form), the byte count and the length of the data (reads), the address and quantity
echoed (writes). Anything else is `BadReply`, one line saying what did not fit. Never raises
anything else, whatever the bytes: tests/test_modbus_reply.py fuzzes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..registers import Table

#: Function codes the agent sends: reads by table, and Write Multiple Registers.
READ_FUNCTION = {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}
WRITE_REGISTERS = 16
_BIT_READS = frozenset((1, 2))


class BadReply(Exception):
    """A reply that does not answer the request it came for."""


@dataclass(frozen=True)
class Sent:
    """What a request asked: its unit, function code, first address and quantity."""

    unit: int
    function_code: int
    address: int
    count: int

    def describe(self) -> str:
        return f"FC {self.function_code} for {self.count} at {self.address}"


def check_reply(sent: Sent, unit: int, pdu: bytes) -> list[int] | int | None:
    """The values of a read (registers, or bits as 0/1), None for a write's echo, or the
    exception code of an exception reply; `BadReply` when the reply does not fit `sent`."""
    if not pdu:
        raise BadReply(f"an empty reply to {sent.describe()}")
    if unit != sent.unit:
        raise BadReply(f"a reply from unit {unit} to a request for unit {sent.unit}")
    fc = pdu[0]
    if fc == sent.function_code | 0x80:
        if len(pdu) != 2:
            raise BadReply(f"an exception reply of {len(pdu)} bytes (2 expected)")
        return pdu[1]
    if fc != sent.function_code:
        what = f"an exception for FC {fc & 0x7F}" if fc & 0x80 else f"FC {fc}"
        raise BadReply(f"{what} in reply to {sent.describe()}")
    if fc == WRITE_REGISTERS:
        return _write_echo(sent, pdu)
    return _read_values(sent, pdu)


def _read_values(sent: Sent, pdu: bytes) -> list[int]:
    bits = sent.function_code in _BIT_READS
    expected = (sent.count + 7) // 8 if bits else 2 * sent.count
    if len(pdu) < 2 or pdu[1] != expected:
        count = pdu[1] if len(pdu) >= 2 else "no"
        raise BadReply(f"byte count {count} in reply to {sent.describe()} ({expected} expected)")
    if len(pdu) != 2 + expected:
        raise BadReply(f"{len(pdu) - 2} data bytes under byte count {expected}")
    data = pdu[2:]
    if bits:
        return [(data[i // 8] >> (i % 8)) & 1 for i in range(sent.count)]
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, expected, 2)]


def _write_echo(sent: Sent, pdu: bytes) -> None:
    if len(pdu) != 5:
        raise BadReply(f"a write reply of {len(pdu)} bytes (5 expected)")
    address = int.from_bytes(pdu[1:3], "big")
    count = int.from_bytes(pdu[3:5], "big")
    if (address, count) != (sent.address, sent.count):
        raise BadReply(
            f"a write reply for {count} at {address} to a write of {sent.count} at {sent.address}"
        )
    return None
