"""A hostile Modbus controller for the link's tests: a real asyncio TCP server, or an RTU peer
on a pseudo-terminal pair, that parses each request the agent sends and answers with whatever
frame the test crafts (a wrong function code, another unit id, a bad byte count, garbage...),
late, or not at all.

`answer(request) -> Reply | None` decides per request; `Reply.pdu` is the PDU (function code
and data) sent back under `Reply.unit` (default: the request's) after `Reply.delay_s`; `raw`
bytes go out as they are, framing and all. Test code only: it never serves a real machine.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field

from pymodbus.framer import FramerRTU


@dataclass(frozen=True)
class Request:
    """One request as the controller received it."""

    arrived_s: float  # time.monotonic() when its last byte arrived
    unit: int
    function_code: int
    address: int
    count: int
    values: tuple[int, ...] = ()  # a write's registers
    tid: int = 0  # TCP only


@dataclass(frozen=True)
class Reply:
    pdu: bytes = b""
    unit: int | None = None  # None: the request's
    delay_s: float = 0.0
    raw: bytes | None = None  # sent instead of a framed `pdu`
    tid: int | None = None  # TCP: None: the request's


Answer = Callable[[Request], "Reply | list[Reply] | None"]


def registers_reply(request: Request, values=None, function_code=None, byte_count=None) -> bytes:
    """A read reply PDU: the registers (default 0x1234 each) under the request's function code
    unless told otherwise; `byte_count` overrides the count byte only."""
    values = list(values) if values is not None else [0x1234] * request.count
    data = b"".join(struct.pack(">H", v) for v in values)
    count = len(data) if byte_count is None else byte_count
    return bytes([function_code or request.function_code, count]) + data


def bits_reply(request: Request, bits=None, function_code=None) -> bytes:
    bits = list(bits) if bits is not None else [1] * request.count
    data = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        data[i // 8] |= (1 if bit else 0) << (i % 8)
    return bytes([function_code or request.function_code, len(data)]) + bytes(data)


def write_echo(request: Request, address=None, count=None, function_code=None) -> bytes:
    return struct.pack(
        ">BHH",
        function_code or request.function_code,
        request.address if address is None else address,
        request.count if count is None else count,
    )


def exception_reply(function_code: int, code: int = 4) -> bytes:
    return bytes([function_code | 0x80, code])


def honest(request: Request) -> Reply:
    """What a sound controller answers: registers 0x1234, bits 1, writes echoed."""
    if request.function_code in (3, 4):
        return Reply(registers_reply(request))
    if request.function_code in (1, 2):
        return Reply(bits_reply(request))
    return Reply(write_echo(request))


def _parse_pdu(pdu: bytes) -> tuple[int, int, int, tuple[int, ...]]:
    fc = pdu[0]
    address, count = struct.unpack(">HH", pdu[1:5])
    values: tuple[int, ...] = ()
    if fc == 16:
        values = struct.unpack(f">{count}H", pdu[6 : 6 + 2 * count])
    return fc, address, count, values


class _Peer:
    def __init__(self, answer: Answer):
        self.answer = answer
        self.requests: list[Request] = []
        self._tasks: set[asyncio.Task] = set()

    def _respond(self, request: Request, send: Callable[[Reply, Request], None]) -> None:
        self.requests.append(request)
        replies = self.answer(request)
        if replies is None:
            return
        for reply in replies if isinstance(replies, list) else [replies]:
            if reply.delay_s:
                task = asyncio.get_running_loop().create_task(self._later(reply, request, send))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                send(reply, request)

    @staticmethod
    async def _later(reply: Reply, request: Request, send) -> None:
        await asyncio.sleep(reply.delay_s)
        send(reply, request)

    def _cancel(self) -> None:
        for task in self._tasks:
            task.cancel()


class HostileTcpController(_Peer):
    """Modbus TCP on 127.0.0.1 (an ephemeral port): requests parsed by their MBAP header."""

    def __init__(self, answer: Answer = honest):
        super().__init__(answer)
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: set[asyncio.Task] = set()
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        self._cancel()
        for writer in self._writers:
            writer.close()
        if self._handlers:  # each ends on its closed connection
            await asyncio.wait(self._handlers)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        self._handlers.add(asyncio.current_task())

        def send(reply: Reply, request: Request) -> None:
            if writer.is_closing():
                return
            if reply.raw is not None:
                writer.write(reply.raw)
                return
            unit = request.unit if reply.unit is None else reply.unit
            tid = request.tid if reply.tid is None else reply.tid
            writer.write(struct.pack(">HHHB", tid, 0, len(reply.pdu) + 1, unit) + reply.pdu)

        try:
            while True:
                header = await reader.readexactly(7)
                tid, _, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                fc, address, count, values = _parse_pdu(pdu)
                request = Request(time.monotonic(), unit, fc, address, count, values, tid)
                self._respond(request, send)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    frame = bytes([unit]) + pdu
    return frame + FramerRTU.compute_CRC(frame).to_bytes(2, "big")


class HostileRtuController(_Peer):
    """Modbus RTU on one end of a `PtyPair` (the agent opens the other): requests parsed by
    their known sizes (8 bytes for FC 1-4, 9 + byte count for FC 16)."""

    def __init__(self, port_path: str, answer: Answer = honest):
        super().__init__(answer)
        self.port_path = port_path
        self._fd = -1
        self._buffer = bytearray()

    async def start(self) -> None:
        self._fd = os.open(self.port_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self._fd)
        asyncio.get_running_loop().add_reader(self._fd, self._readable)

    async def stop(self) -> None:
        self._cancel()
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _send(self, reply: Reply, request: Request) -> None:
        if self._fd < 0:
            return
        unit = request.unit if reply.unit is None else reply.unit
        os.write(self._fd, reply.raw if reply.raw is not None else rtu_frame(unit, reply.pdu))

    def _readable(self) -> None:
        try:
            self._buffer += os.read(self._fd, 4096)
        except BlockingIOError:
            return
        while len(self._buffer) >= 8:
            fc = self._buffer[1]
            size = 9 + self._buffer[6] if fc == 16 and len(self._buffer) > 6 else 8
            if len(self._buffer) < size:
                return
            frame, self._buffer = bytes(self._buffer[:size]), self._buffer[size:]
            fc, address, count, values = _parse_pdu(frame[1:-2])
            request = Request(time.monotonic(), frame[0], fc, address, count, values)
            self._respond(request, self._send)


@dataclass
class Script:
    """Answers request n with `replies[n]` (a callable of the request), honestly after them."""

    replies: list[Callable[[Request], Reply | list[Reply] | None]] = field(default_factory=list)

    def __call__(self, request: Request):
        if self.replies:
            return self.replies.pop(0)(request)
        return honest(request)
