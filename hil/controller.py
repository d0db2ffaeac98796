"""The simulated CNC controller: serves a `Plant` over Modbus TCP or RTU through a register map,
with fault injection for tests.

Never reads the wall clock itself (the clock is injected) and never changes the plant except by
`Plant.write` of a whitelisted tag. Uses only pymodbus 3.16's non-deprecated server API: a
`SimDevice` with an `action` callback is the server's context.

Like a real controller, unmapped addresses answer ILLEGAL_ADDRESS (so a poll planner must not
bridge gaps blindly), read-only registers refuse writes with ILLEGAL_ADDRESS, and an agent
override outside its range is refused with ILLEGAL_VALUE.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge_agent.registers import Table, Tag, ValueType, encode_registers
from hil import register_map
from hil.codec import decode_registers
from hil.plant import Plant

#: Function code -> the table it addresses (23 = read/write multiple registers).
_FC_TABLE = {
    1: Table.COIL,
    5: Table.COIL,
    15: Table.COIL,
    2: Table.DISCRETE,
    3: Table.HOLDING,
    6: Table.HOLDING,
    16: Table.HOLDING,
    23: Table.HOLDING,
    4: Table.INPUT,
}
_READS = frozenset((1, 2, 3, 4))
_BIT_FCS = frozenset((1, 2, 5, 15))
#: A bit address beyond every bit block: a request sent there gets ILLEGAL_ADDRESS.
_NOWHERE = 0xFFFF
#: The order of SimDevice's tuple of separate tables.
_TABLE_ORDER = (Table.COIL, Table.DISCRETE, Table.HOLDING, Table.INPUT)


@dataclass(frozen=True)
class FaultRange:
    """Requests touching [start, stop) of `table` are answered with exception `code`."""

    table: Table
    start: int
    stop: int
    code: ExcCodes


@dataclass
class Faults:
    """What the controller does wrong, on purpose. Tests change these at any time.

    In the bit tables pymodbus shows the callback whole 16-bit words, so a fault range there
    catches any request that touches the word its bits are in.
    """

    exception_code: int | None = None  # every request answered with this exception code
    ranges: list[FaultRange] = field(default_factory=list)
    delay_s: float = 0.0  # every reply this late: provokes client timeouts
    drop_connections: bool = False  # every request: close all client connections, no reply
    silent: bool = False  # every request swallowed: no reply at all

    def fail(
        self, table: Table, start: int, count: int = 1, code: ExcCodes = ExcCodes.DEVICE_FAILURE
    ) -> None:
        self.ranges.append(FaultRange(Table(table), start, start + count, code))

    def clear(self) -> None:
        self.ranges.clear()
        self.exception_code = None
        self.delay_s = 0.0
        self.drop_connections = self.silent = False


class SimulatedController:
    """A Modbus server whose registers are a plant's values, encoded by the register map.

    Plant time is `clock()` minus `clock()` at construction: every read first calls
    `plant.advance_to(plant time)`, so a fake clock the test advances drives the plant.
    """

    def __init__(
        self,
        plant: Plant,
        *,
        clock: Callable[[], float] = time.monotonic,
        unit_id: int = 1,
        tags: Iterable[Tag] = register_map.TAGS,
    ) -> None:
        self.plant = plant
        self.unit_id = unit_id
        self.tags = tuple(tags)
        self.faults = Faults()
        self.requests_served = 0  # replies sent, exceptions included
        # Called with every request PDU as it arrives, before any fault: a test or a bench
        # timing what reaches the wire (faults.silent swallows the request afterwards).
        self.on_request: Callable[[object], None] | None = None
        self.connections_dropped = 0  # client connections closed by drop_connections
        self._clock = clock
        self._t0 = clock()
        self._by_table = {t: [tag for tag in self.tags if tag.table is t] for t in Table}
        self._writable = {
            tag.address: tag
            for tag in self._by_table[Table.HOLDING]
            if tag.name == register_map.AGENT_OVERRIDE
        }
        self._bits = {t: {tag.address for tag in self._by_table[t]} for t in Table if t.is_bits}
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._start: Callable[[], object] | None = None
        self.address = ""  # where it serves, for logs: "127.0.0.1:5020" or "/dev/pts/3"

    # -- life cycle -----------------------------------------------------------------------

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on `host`:`port` (0: an ephemeral port); return the bound port."""
        self._check_stopped()
        server = ModbusTcpServer(self._device(), address=(host, port), trace_pdu=self._trace_pdu)
        await server.serve_forever(background=True)  # raises if it cannot listen
        bound = server.transport.sockets[0].getsockname()[1]
        self._server = server
        self._start = lambda: self.start_tcp(host, bound)
        self.address = f"{host}:{bound}"
        return bound

    async def start_rtu(self, port_path: str, baudrate: int = 19200, parity: str = "N") -> None:
        """Serve Modbus RTU on the serial device `port_path` (a PtyPair end works)."""
        self._check_stopped()
        server = ModbusSerialServer(
            self._device(),
            port=port_path,
            baudrate=baudrate,
            parity=parity,
            trace_pdu=self._trace_pdu,
        )
        await server.serve_forever(background=True)
        self._server = server
        self._start = lambda: self.start_rtu(port_path, baudrate, parity)
        self.address = port_path

    async def stop(self) -> None:
        """Stop serving and close every client connection; `restart()` serves again."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()
            await asyncio.sleep(0)  # let the transports finish closing

    async def restart(self) -> None:
        """Stop, then serve again where it served before (the same TCP port)."""
        if self._start is None:
            raise RuntimeError("restart() before start_tcp() or start_rtu()")
        await self.stop()
        await self._start()

    @property
    def running(self) -> bool:
        return self._server is not None

    def advance(self) -> float:
        """Bring the plant up to the clock (requests do this too); the plant time, s."""
        t_s = self._clock() - self._t0
        self.plant.advance_to(t_s)
        return t_s

    def drop_connections(self) -> int:
        """Close every client connection now (TCP); return how many there were."""
        if self._server is None or isinstance(self._server, ModbusSerialServer):
            return 0
        connections = list(self._server.active_connections.values())
        for connection in connections:
            connection.close()
        self.connections_dropped += len(connections)
        return len(connections)

    def _check_stopped(self) -> None:
        if self._server is not None:
            raise RuntimeError(f"already serving on {self.address}")

    # -- the device -----------------------------------------------------------------------

    def _device(self) -> SimDevice:
        """Separate tables (coils, discrete, holding, input); gaps are left undefined."""
        blocks = tuple(self._blocks(table) for table in _TABLE_ORDER)
        return SimDevice(id=self.unit_id, simdata=blocks, action=self._action)

    def _blocks(self, table: Table) -> list[SimData]:
        spans: dict[int, bool] = {}  # address -> writable
        for tag in self._by_table[table]:
            for address in range(tag.address, tag.end):
                spans[address] = spans.get(address, False) or tag.address in self._writable
        blocks: list[SimData] = []
        run: list[int] = []
        for address in sorted(spans) + [-1]:
            if run and (address != run[-1] + 1 or spans.get(address) != spans[run[0]]):
                if table.is_bits:
                    blocks.append(
                        SimData(run[0], count=len(run), values=False, datatype=DataType.BITS)
                    )
                else:
                    writable = spans[run[0]]
                    blocks.append(
                        SimData(
                            run[0],
                            count=len(run),
                            datatype=DataType.REGISTERS,
                            readonly=not writable,
                        )
                    )
                run = []
            run.append(address)
        if not blocks:  # pymodbus needs one block per table; the trace hook refuses bits
            kind = DataType.BITS if table.is_bits else DataType.INVALID
            blocks.append(SimData(0, datatype=kind))
        return blocks

    def _trace_pdu(self, sending: bool, pdu):
        """Every PDU in and out: counts replies, injects drops, and checks bit ranges exactly
        (the action callback sees only whole 16-bit words of the bit tables)."""
        if sending:
            self.requests_served += 1
            return pdu
        if self.on_request is not None:
            self.on_request(pdu)
        if self.faults.drop_connections:
            self.drop_connections()
            return None
        if self.faults.silent or pdu.dev_id != self.unit_id:
            return None  # like an RS-485 device addressed by another unit id: no reply
        if pdu.function_code in _BIT_FCS:
            table = _FC_TABLE[pdu.function_code]
            count = getattr(pdu, "count", 0) or len(getattr(pdu, "bits", ())) or 1
            wanted = range(pdu.address, pdu.address + count)
            if pdu.function_code in (5, 15) or not self._bits[table].issuperset(wanted):
                pdu.address = _NOWHERE  # answered ILLEGAL_ADDRESS by the device itself
        return pdu

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        table = _FC_TABLE[function_code]
        first_call = set_values is not None or function_code in _READS
        if first_call and self.faults.delay_s > 0:
            await asyncio.sleep(self.faults.delay_s)
        if self.faults.exception_code is not None:
            return ExcCodes(self.faults.exception_code)
        stop = (address // 16 + count) * 16 if table.is_bits else address + count
        for fault in self.faults.ranges:
            if fault.table is table and fault.start < stop and address < fault.stop:
                return fault.code
        self.advance()
        if set_values is not None:
            return self._write(table, address, list(set_values))
        if table.is_bits:
            self._fill_bits(table, start_address, registers)
        else:
            self._fill_registers(table, start_address, address, address + count, registers)
        return None

    def _write(self, table: Table, address: int, values: list) -> ExcCodes | None:
        if table is not Table.HOLDING:
            return ExcCodes.ILLEGAL_ADDRESS
        accepted: list[tuple[Tag, float]] = []
        for tag in self._writable.values():
            if address <= tag.address and tag.end <= address + len(values):
                raw = values[tag.address - address : tag.end - address]
                value = decode_registers(tag, raw)
                lo, hi = register_map.AGENT_OVERRIDE_RANGE_PCT
                if not lo <= value <= hi:
                    return ExcCodes.ILLEGAL_VALUE
                accepted.append((tag, value))
            elif address < tag.end and tag.address < address + len(values):
                return ExcCodes.ILLEGAL_ADDRESS  # half of a multi-register value
        for tag, value in accepted:
            self.plant.write(tag.name, value)
        return None

    def _fill_registers(
        self, table: Table, base: int, lo: int, hi: int, registers: list[int]
    ) -> None:
        values = self.plant.values()
        image: dict[int, int] = {}
        for tag in self._by_table[table]:
            if tag.address < hi and lo < tag.end:
                words = encode_registers(tag, values[tag.name])
                for i, word in enumerate(words):
                    if tag.type is ValueType.BITFIELD:
                        word |= image.get(tag.address + i, 0)
                    image[tag.address + i] = word
        for address, word in image.items():
            registers[address - base] = word

    def _fill_bits(self, table: Table, base: int, registers: list[int]) -> None:
        values = self.plant.values()
        for tag in self._by_table[table]:
            index, bit = tag.address // 16 - base, tag.address % 16
            (on,) = encode_registers(tag, values[tag.name])
            registers[index] = (registers[index] & ~(1 << bit)) | (on << bit)
