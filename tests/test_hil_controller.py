"""The simulated controller over loopback Modbus TCP, and RTU over a pseudo-terminal pair."""

import asyncio
import contextlib
import os

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusIOException

from edge_agent.registers import Table, Tag, ValueType, encode_registers
from hil.controller import SimulatedController
from hil.plant import demo_plant
from hil.ptypair import PtyPair
from hil.register_map import AGENT_OVERRIDE, BY_NAME, TAGS

UNIT = 1
OVERRIDE = BY_NAME[AGENT_OVERRIDE].address


class FakeClock:
    def __init__(self, t_s: float = 0.0) -> None:
        self.t_s = t_s

    def __call__(self) -> float:
        return self.t_s


@contextlib.asynccontextmanager
async def serving(plant=None, *, timeout_s=1.0, **kwargs):
    clock = FakeClock()
    controller = SimulatedController(plant or demo_plant(), clock=clock, **kwargs)
    port = await controller.start_tcp("127.0.0.1", 0)
    client = AsyncModbusTcpClient(
        "127.0.0.1", port=port, timeout=timeout_s, retries=0, reconnect_delay=0
    )
    assert await client.connect()
    try:
        yield controller, client, clock
    finally:
        client.close()
        await controller.stop()


async def read_tag(client, tag: Tag) -> list[int]:
    """The tag's raw registers, or its bit as [0/1]."""
    if tag.table is Table.DISCRETE:
        reply = await client.read_discrete_inputs(tag.address, count=1, device_id=UNIT)
        assert not reply.isError(), (tag.name, reply)
        return [int(reply.bits[0])]
    read = (
        client.read_input_registers if tag.table is Table.INPUT else client.read_holding_registers
    )
    reply = await read(tag.address, count=tag.span, device_id=UNIT)
    assert not reply.isError(), (tag.name, reply)
    return list(reply.registers)


def test_every_tag_reads_as_the_plants_value_through_its_encoding():
    async def scenario():
        async with serving() as (controller, client, clock):
            for t_s in (2.0, 8.0, 22.0):
                clock.t_s = t_s
                for tag in TAGS:
                    raw = await read_tag(client, tag)
                    want = encode_registers(tag, controller.plant.values()[tag.name])
                    if tag.type is ValueType.BITFIELD:
                        raw = [(raw[0] >> tag.bit) & 1]
                        want = [(want[0] >> tag.bit) & 1]
                    assert raw == want, (t_s, tag.name)
                assert controller.plant.time_s == pytest.approx(t_s)

    asyncio.run(scenario())


def test_one_read_of_a_whole_block_matches_tag_by_tag_encoding():
    async def scenario():
        async with serving() as (controller, client, clock):
            clock.t_s = 8.0
            reply = await client.read_input_registers(10, count=17, device_id=UNIT)
            values = controller.plant.values()
            want = []
            for tag in TAGS:
                if tag.table is Table.INPUT and tag.address >= 10:
                    want += encode_registers(tag, values[tag.name])
            assert reply.registers == want

    asyncio.run(scenario())


def test_plant_time_is_the_injected_clock_since_the_controller_started():
    async def scenario():
        clock = FakeClock(1000.0)
        plant = demo_plant()
        controller = SimulatedController(plant, clock=clock)
        port = await controller.start_tcp()
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
        await client.connect()
        clock.t_s = 1005.0
        await client.read_input_registers(0, count=1, device_id=UNIT)
        assert plant.time_s == pytest.approx(5.0)
        client.close()
        await controller.stop()

    asyncio.run(scenario())


def test_override_write_is_accepted_and_reaches_the_plant():
    async def scenario():
        async with serving() as (controller, client, _clock):
            reply = await client.write_register(OVERRIDE, 120, device_id=UNIT)
            assert not reply.isError()
            assert controller.plant.values()[AGENT_OVERRIDE] == 120
            reply = await client.write_registers(OVERRIDE, [80], device_id=UNIT)
            assert not reply.isError()
            assert controller.plant.values()[AGENT_OVERRIDE] == 80
            reply = await client.read_holding_registers(OVERRIDE, count=1, device_id=UNIT)
            assert reply.registers == [80]

    asyncio.run(scenario())


def test_override_out_of_range_is_refused_with_illegal_data_value():
    async def scenario():
        async with serving() as (controller, client, _clock):
            reply = await client.write_register(OVERRIDE, 151, device_id=UNIT)
            assert reply.isError()
            assert reply.exception_code == ExcCodes.ILLEGAL_VALUE
            assert controller.plant.values()[AGENT_OVERRIDE] == 100

    asyncio.run(scenario())


def test_writes_anywhere_else_are_refused_with_illegal_address():
    # The knob mirrored in a holding register, as some controllers do: readable, not writable.
    spare = Tag("feed_knob", OVERRIDE + 1, Table.HOLDING, ValueType.UINT16)

    async def scenario():
        async with serving(tags=(*TAGS, spare)) as (controller, client, _clock):
            reply = await client.read_holding_registers(spare.address, count=1, device_id=UNIT)
            assert not reply.isError()  # readable ...
            for write in (
                client.write_register(spare.address, 1, device_id=UNIT),  # ... but read-only
                client.write_registers(OVERRIDE, [90, 1], device_id=UNIT),
                client.write_register(OVERRIDE + 2, 1, device_id=UNIT),  # unmapped
                client.write_coil(0, True, device_id=UNIT),
            ):
                reply = await write
                assert reply.isError()
                assert reply.exception_code == ExcCodes.ILLEGAL_ADDRESS
            assert controller.plant.values()[AGENT_OVERRIDE] == 100

    asyncio.run(scenario())


def test_gaps_in_the_map_answer_illegal_address():
    async def scenario():
        async with serving() as (_controller, client, _clock):
            for reply in (
                await client.read_input_registers(9, count=1, device_id=UNIT),
                await client.read_input_registers(0, count=11, device_id=UNIT),  # bridges 9
                await client.read_input_registers(27, count=1, device_id=UNIT),
                await client.read_holding_registers(0, count=1, device_id=UNIT),
                await client.read_discrete_inputs(0, count=4, device_id=UNIT),  # bit 3 unmapped
                await client.read_discrete_inputs(3, count=1, device_id=UNIT),
                await client.read_coils(0, count=1, device_id=UNIT),  # no coils at all
            ):
                assert reply.isError()
                assert reply.exception_code == ExcCodes.ILLEGAL_ADDRESS
            reply = await client.read_discrete_inputs(0, count=3, device_id=UNIT)
            assert not reply.isError()

    asyncio.run(scenario())


def test_fault_range_answers_its_exception_code():
    async def scenario():
        async with serving() as (controller, client, _clock):
            controller.faults.fail(Table.INPUT, 2, count=2, code=ExcCodes.DEVICE_BUSY)
            reply = await client.read_input_registers(0, count=3, device_id=UNIT)
            assert reply.exception_code == ExcCodes.DEVICE_BUSY
            assert not (await client.read_input_registers(0, count=2, device_id=UNIT)).isError()
            controller.faults.clear()
            assert not (await client.read_input_registers(0, count=3, device_id=UNIT)).isError()

    asyncio.run(scenario())


def test_fault_delay_makes_the_client_time_out():
    async def scenario():
        async with serving(timeout_s=0.1) as (controller, client, _clock):
            controller.faults.delay_s = 0.3
            with pytest.raises(ModbusIOException):
                await client.read_input_registers(0, count=1, device_id=UNIT)

    asyncio.run(scenario())


def test_fault_drop_closes_the_connection_without_a_reply():
    async def scenario():
        async with serving(timeout_s=0.2) as (controller, client, _clock):
            controller.faults.drop_connections = True
            with pytest.raises(ModbusIOException):
                await client.read_input_registers(0, count=1, device_id=UNIT)
            assert controller.connections_dropped == 1
            assert not client.connected
            controller.faults.clear()
            assert await client.connect()
            assert not (await client.read_input_registers(0, count=1, device_id=UNIT)).isError()
            assert controller.drop_connections() == 1
            await asyncio.sleep(0.05)
            assert not client.connected

    asyncio.run(scenario())


def test_requests_served_counts_replies_including_exceptions():
    async def scenario():
        async with serving() as (controller, client, _clock):
            await client.read_input_registers(0, count=1, device_id=UNIT)
            await client.read_input_registers(9, count=1, device_id=UNIT)
            await client.write_register(OVERRIDE, 110, device_id=UNIT)
            assert controller.requests_served == 3

    asyncio.run(scenario())


def test_another_unit_id_gets_no_reply():
    async def scenario():
        async with serving(timeout_s=0.1) as (controller, client, _clock):
            with pytest.raises(ModbusIOException):
                await client.read_input_registers(0, count=1, device_id=UNIT + 1)
            assert controller.requests_served == 0

    asyncio.run(scenario())


def test_stop_and_restart_serve_again_on_the_same_port():
    async def scenario():
        async with serving() as (controller, client, _clock):
            port = client.comm_params.port
            await controller.stop()
            assert not controller.running
            await asyncio.sleep(0.05)
            assert not client.connected
            await controller.restart()
            assert controller.address == f"127.0.0.1:{port}"
            assert await client.connect()
            assert not (await client.read_input_registers(0, count=1, device_id=UNIT)).isError()

    asyncio.run(scenario())


def test_ptypair_relays_bytes_both_ways_and_closes_cleanly():
    with PtyPair() as pair:
        a = os.open(pair.a, os.O_RDWR | os.O_NOCTTY)
        b = os.open(pair.b, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(a, b"\x01\x03hello")
            assert _read_exactly(b, 7) == b"\x01\x03hello"
            os.write(b, b"\x00\xffback")
            assert _read_exactly(a, 6) == b"\x00\xffback"
        finally:
            os.close(a)
            os.close(b)
    assert pair._fds == []


def _read_exactly(fd: int, n: int) -> bytes:
    import select

    data = b""
    while len(data) < n:
        ready, _, _ = select.select([fd], [], [], 2.0)
        assert ready, f"timed out after {data!r}"
        data += os.read(fd, n - len(data))
    return data


def test_rtu_over_a_pty_pair_reads_every_tag_and_takes_the_override():
    async def scenario():
        with PtyPair() as pair:
            clock = FakeClock()
            controller = SimulatedController(demo_plant(), clock=clock)
            await controller.start_rtu(pair.a, baudrate=115200)
            client = AsyncModbusSerialClient(pair.b, baudrate=115200, timeout=1, retries=0)
            assert await client.connect()
            try:
                clock.t_s = 8.0
                for tag in TAGS:
                    raw = await read_tag(client, tag)
                    want = encode_registers(tag, controller.plant.values()[tag.name])
                    if tag.type is ValueType.BITFIELD:
                        raw, want = [raw[0] >> tag.bit & 1], [want[0] >> tag.bit & 1]
                    assert raw == want, tag.name
                assert not (await client.write_register(OVERRIDE, 90, device_id=UNIT)).isError()
                assert controller.plant.values()[AGENT_OVERRIDE] == 90
                reply = await client.write_register(OVERRIDE, 200, device_id=UNIT)
                assert reply.exception_code == ExcCodes.ILLEGAL_VALUE
            finally:
                client.close()
                await controller.stop()

    asyncio.run(scenario())


def test_fault_exception_code_answers_every_request_with_it():
    async def scenario():
        async with serving() as (controller, client, _clock):
            controller.faults.exception_code = ExcCodes.DEVICE_FAILURE
            for reply in (
                await client.read_input_registers(0, count=1, device_id=UNIT),
                await client.read_discrete_inputs(0, count=1, device_id=UNIT),
                await client.write_register(OVERRIDE, 100, device_id=UNIT),
            ):
                assert reply.exception_code == ExcCodes.DEVICE_FAILURE
            controller.faults.clear()
            assert not (await client.read_input_registers(0, count=1, device_id=UNIT)).isError()

    asyncio.run(scenario())


def test_serve_command_line_takes_tcp_or_rtu_and_a_replay():
    from hil.__main__ import parse_args

    args = parse_args(["serve", "--tcp", "0.0.0.0:1502", "--replay", "experiment_03", "--loop"])
    assert (args.tcp, args.replay, args.loop, args.unit_id) == (
        ("0.0.0.0", 1502),
        "experiment_03",
        True,
        1,
    )
    assert parse_args(["serve", "--rtu", "/dev/ttyUSB0", "--unit-id", "3"]).rtu == "/dev/ttyUSB0"
    with pytest.raises(SystemExit):
        parse_args(["serve", "--tcp", "nowhere"])
