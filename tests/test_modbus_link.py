"""The link's checks on what pymodbus hands back: a reply that cannot belong to the request
(too few registers or bits: a late reply matched after a timeout) is a counted `bad_reply`,
never a decode error that would stop the poller."""

import asyncio
from types import SimpleNamespace

import pytest

from edge_agent.config import ControllerConfig
from edge_agent.registers import Table
from edge_agent.sources.modbus_link import LinkError, ModbusLink
from edge_agent.sources.poll_plan import ReadRequest


class FakeClient:
    def __init__(self, reply):
        self.reply = reply
        self.connected = False

    async def connect(self):
        self.connected = True
        return True

    def close(self):
        self.connected = False

    async def _read(self, address, count, device_id):
        return self.reply

    read_holding_registers = read_input_registers = _read
    read_coils = read_discrete_inputs = _read


def _reply(registers=(), bits=()):
    return SimpleNamespace(registers=list(registers), bits=list(bits), isError=lambda: False)


async def _read(reply, table: Table, count: int):
    link = ModbusLink(ControllerConfig(), client_factory=lambda cfg: FakeClient(reply))
    task = asyncio.create_task(link.maintain())
    try:
        await link.wait_connected(1)
        return await link.read(ReadRequest(table, 0, count, ()))
    finally:
        task.cancel()


@pytest.mark.parametrize(
    ("reply", "table", "count", "expected"),
    [
        (_reply(bits=[True, False, True] + [False] * 5), Table.DISCRETE, 3, [1, 0, 1]),
        (_reply(registers=[1, 2]), Table.INPUT, 2, [1, 2]),
    ],
)
def test_a_reply_that_fits_is_returned(reply, table, count, expected):
    assert asyncio.run(_read(reply, table, count)) == expected


@pytest.mark.parametrize(
    ("reply", "table", "count", "message"),
    [
        (_reply(bits=[]), Table.DISCRETE, 3, "reply holds 0 bits, asked for 3"),
        (_reply(bits=[True] * 8), Table.COIL, 9, "reply holds 8 bits, asked for 9"),
        (_reply(registers=[1]), Table.HOLDING, 2, "reply holds 1 registers, asked for 2"),
    ],
)
def test_a_reply_too_short_for_the_request_is_a_bad_reply(reply, table, count, message):
    with pytest.raises(LinkError) as caught:
        asyncio.run(_read(reply, table, count))
    assert caught.value.kind == "bad_reply" and message in str(caught.value)
