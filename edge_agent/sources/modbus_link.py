"""The one connection to one controller (Modbus TCP or RTU, pymodbus async client).

Owns reconnection (capped, jittered exponential backoff), the order of the requests
(`modbus_queue.RequestQueue`: the safe override never waits behind reads) and the check of
every reply against its request (`modbus_reply.check_reply`). It turns each request into one
of three outcomes a poller can count: values, an exception code, or a `LinkError`. Writes go
only through the one `RegisterWriter` the link hands out, once, to the actuator
(`take_writer`): no other code can write to the machine. A request on a link that is down
fails at once; it never waits for the reconnect.

pymodbus frames the bytes (the MBAP header or the RTU CRC) and matches a reply to its request
by transaction id (TCP); its own decoding is bypassed (`_TcpFrames`, `_RtuFrames`): it trusted
function codes and byte counts, and an undecodable reply raised out of asyncio's
`data_received` (a multi-line "Fatal error" log and a dropped connection per reply).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import ModbusPDU

from ..backoff import Backoff
from ..registers import Table, Tag, encode_registers
from .modbus_config import ControllerConfig
from .modbus_queue import Job, RequestQueue
from .modbus_reply import READ_FUNCTION, WRITE_REGISTERS, BadReply, Sent, check_reply
from .poll_plan import ReadRequest

log = logging.getLogger(__name__)


class LinkError(Exception):
    """The request got no usable reply: `kind` is "down" (not connected), "timeout",
    "bad_reply" (a reply that does not fit the request) or "preempted" (abandoned in flight
    for an urgent write; TCP only)."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind, self.detail = kind, detail


# -- pymodbus framing without pymodbus decoding ----------------------------------------------


class _Reply(ModbusPDU):
    """A reply's PDU (function code and data) as it arrived, for `check_reply`. `dev_id` is
    the one pymodbus expects (its own check passes); `unit` is the one the frame carried."""

    def __init__(self, unit: int, pdu: bytes, dev_id: int, tid: int, garbled: str = ""):
        super().__init__(dev_id=dev_id, transaction_id=tid)
        self.function_code = pdu[0] if pdu else 0
        self.unit, self.pdu, self.garbled = unit, pdu, garbled


class _PassThrough:
    """Every complete frame goes to the link as a `_Reply`, never decoded here and never
    dropped, except (TCP) a reply whose transaction id is not the request's: a late reply to
    a request that timed out or was abandoned, counted in `late_replies`."""

    late_replies = 0
    _garbled = ""

    def handleFrame(self, data: bytes, exp_devid: int, exp_tid: int):  # noqa: N802 (pymodbus)
        used = 0
        while used < len(data):
            self._garbled = ""
            length, unit, tid, pdu = self.decode(data[used:])
            if not length:
                return used, None
            used += length
            if exp_tid and tid and tid != exp_tid:
                self.late_replies += 1
                continue
            return used, _Reply(unit, bytes(pdu), exp_devid, tid, self._garbled)
        return used, None


class _TcpFrames(_PassThrough, FramerSocket):
    def decode(self, data: bytes):
        if len(data) >= 6:
            protocol = int.from_bytes(data[2:4], "big")
            length = int.from_bytes(data[4:6], "big")
            if protocol or not 2 <= length <= 254:
                # Out of step: nothing in the stream marks where a frame starts. Drop what
                # arrived; pymodbus starts afresh with the next request.
                self._garbled = f"not a Modbus TCP header (protocol {protocol}, length {length})"
                return len(data), 0, 0, self.EMPTY
        return super().decode(data)


class _RtuFrames(_PassThrough, FramerRTU):
    def decode(self, data: bytes):
        length, unit, tid, pdu = super().decode(data)
        if length and not pdu:  # pymodbus drops the buffer when a frame fails its CRC
            self._garbled = "a frame that fails its CRC"
        return length, unit, tid, pdu


def make_client(cfg: ControllerConfig):
    """A pymodbus async client with its own reconnect and retries off (the link decides),
    framing replies without decoding them (the link checks them)."""
    common = {"timeout": cfg.timeout_s, "retries": 0, "reconnect_delay": 0}
    if cfg.protocol == "rtu":
        client = AsyncModbusSerialClient(
            cfg.serial_port,
            baudrate=cfg.baudrate,
            parity=cfg.parity,
            stopbits=cfg.stopbits,
            bytesize=cfg.bytesize,
            **common,
        )
        frames = _RtuFrames
    else:
        client = AsyncModbusTcpClient(cfg.host, port=cfg.port, **common)
        frames = _TcpFrames
    client.ctx.framer = frames(client.ctx.framer.decoder)
    return client


# -- the requests ----------------------------------------------------------------------------


@dataclass(eq=False)
class _Request:
    """One request on its way: what it asks, how to send it, who waits for the outcome."""

    sent: Sent
    send: Callable[[object], object]  # client -> the pymodbus call's awaitable
    outcome: asyncio.Future  # values, an exception code, None (a write), or a LinkError
    what: str  # for log lines: "read holding 0..9", "write agent_feed_override"


class RegisterWriter:
    """Hands writes from any thread to the link's event loop, never waiting for them."""

    def __init__(self, link: ModbusLink, loop: asyncio.AbstractEventLoop):
        self._link, self._loop = link, loop

    def write(self, tag: Tag, value: float, urgent: bool = False) -> None:
        """Queue a write of `value` to `tag`; an urgent one (a safe override, a feed hold)
        goes before anything else waiting (`modbus_queue`)."""
        self._loop.call_soon_threadsafe(self._link._write, tag, value, urgent)

    async def flush(self) -> None:
        """Wait for the writes already asked for (the agent's last write on the way out):
        each ends with its reply, its timeout, the link down, or a newer write replacing it."""
        await asyncio.sleep(0)  # let call_soon_threadsafe callbacks queue their writes
        await self._link._writes_settled()


class ModbusLink:
    """One connection per controller, shared by every poll group and the actuator."""

    def __init__(
        self,
        cfg: ControllerConfig,
        client_factory=make_client,
        rng: Callable[[], float] = random.random,
    ):
        self.cfg = cfg
        self._client_factory = client_factory
        self._client = None
        self.backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s, rng)
        self.connects = 0
        self.disconnects = 0
        self._up = asyncio.Event()
        self._lost = asyncio.Event()
        self._lost.set()
        self._writer: RegisterWriter | None = None
        self.write_counters: Counter[str] = Counter()
        # Modbus TCP replies carry the transaction id: a request in flight can be abandoned.
        self.queue = RequestQueue(can_abandon=cfg.protocol != "rtu")
        self._work = asyncio.Event()  # a job was queued
        self._preempt = asyncio.Event()  # the queue wants the job in flight abandoned
        self._writes: set[asyncio.Future] = set()
        self._late_replies = 0  # of the connections closed

    def take_writer(self, loop: asyncio.AbstractEventLoop) -> RegisterWriter:
        """The link's one writer, for the actuator; a second call is refused, so whoever
        holds it is the only code that can write to the machine."""
        if self._writer is not None:
            raise RuntimeError(f"controller {self.where}: the register writer is already taken")
        self._writer = RegisterWriter(self, loop)
        return self._writer

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    @property
    def where(self) -> str:
        if self.cfg.protocol == "rtu":
            return f"{self.cfg.serial_port} unit {self.cfg.unit_id}"
        return f"{self.cfg.host}:{self.cfg.port} unit {self.cfg.unit_id}"

    @property
    def late_replies(self) -> int:
        """Replies dropped because they answered a request that had timed out or was
        abandoned (TCP; on RTU such a reply fails the next request's check instead)."""
        return self._late_replies + _late_replies(self._client)

    # -- connection ---------------------------------------------------------------------------

    async def maintain(self) -> None:
        """Keep the link up for as long as the task runs: connect, wait for a loss, back off.
        Its requests are sent, one at a time, by a task it runs beside."""
        requests = asyncio.create_task(self._send_requests(), name="modbus-requests")
        failing_since_logged = False
        try:
            while True:
                await self._lost.wait()
                self._close()
                self._client = self._client_factory(self.cfg)
                if await self._client.connect():
                    self.connects += 1
                    self.backoff.reset()
                    self._lost.clear()
                    self._up.set()
                    log.info("controller %s: connected", self.where)
                    failing_since_logged = False
                    continue
                delay = self.backoff.next_delay()
                if not failing_since_logged:
                    log.warning(
                        "controller %s: cannot connect; retrying with backoff up to %.1f s",
                        self.where,
                        self.cfg.reconnect_max_s,
                    )
                    failing_since_logged = True
                await asyncio.sleep(delay)
        finally:
            requests.cancel()
            self._close()
            self._fail_waiting()

    async def wait_connected(self, timeout_s: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._up.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def mark_lost(self, reason: str) -> None:
        if not self._lost.is_set():
            self.disconnects += 1
            log.warning("controller %s: link lost (%s); reconnecting", self.where, reason)
            self._up.clear()
            self._lost.set()

    def _close(self) -> None:
        if self._client is not None:
            self._late_replies += _late_replies(self._client)
            self._client.close()
            self._client = None

    def _check_up(self) -> None:
        if not self.connected:
            if self._up.is_set():
                self.mark_lost("connection closed by peer")
            raise LinkError("down")

    # -- reads and writes ---------------------------------------------------------------------

    async def read(self, request: ReadRequest) -> list[int] | int:
        """The request's registers (bits as 0/1), or the Modbus exception code of the reply."""
        self._check_up()
        unit, address, count = self.cfg.unit_id, request.address, request.count
        method = {
            Table.HOLDING: "read_holding_registers",
            Table.INPUT: "read_input_registers",
            Table.COIL: "read_coils",
            Table.DISCRETE: "read_discrete_inputs",
        }[request.table]
        pending = _Request(
            Sent(unit, READ_FUNCTION[request.table], address, count),
            lambda client: getattr(client, method)(address, count=count, device_id=unit),
            asyncio.get_running_loop().create_future(),
            f"read {request.table.value} {address}..{request.end - 1}",
        )
        job = Job(payload=pending)
        self._queue(job)
        try:
            return await pending.outcome
        except asyncio.CancelledError:
            self.queue.discard(job)
            raise

    def _write(self, tag: Tag, value: float, urgent: bool) -> None:
        """One holding-register write, queued (on the event loop); its outcome is counted,
        and logged once per kind."""
        try:
            self._check_up()
        except LinkError:
            self._count_write("down", "link down")
            return
        registers = encode_registers(tag, value)
        unit, address = self.cfg.unit_id, tag.address
        pending = _Request(
            Sent(unit, WRITE_REGISTERS, address, len(registers)),
            lambda client: client.write_registers(address, registers, device_id=unit),
            asyncio.get_running_loop().create_future(),
            f"write {tag.name}",
        )
        pending.outcome.add_done_callback(self._write_ended)
        self._writes.add(pending.outcome)
        superseded = self._queue(Job(address, urgent, pending))
        if superseded is not None:
            superseded.payload.outcome.set_exception(LinkError("superseded"))

    def _write_ended(self, outcome: asyncio.Future) -> None:
        self._writes.discard(outcome)
        if outcome.cancelled():
            return
        error = outcome.exception()
        if error is None:
            code = outcome.result()
            if code is None:
                self.write_counters["ok"] += 1
            else:
                self._count_write(f"exception_{code:02d}", "the controller refused it")
        elif error.kind in ("superseded", "preempted"):  # a newer or urgent write went instead
            self.write_counters[error.kind] += 1
        else:
            self._count_write(error.kind, error.detail or error.kind)

    def _count_write(self, kind: str, detail: str) -> None:
        if not self.write_counters[kind]:
            log.warning(
                "controller %s: write %s: %s (further ones counted)", self.where, kind, detail
            )
        self.write_counters[kind] += 1

    async def _writes_settled(self) -> None:
        if self._writes:
            await asyncio.wait(list(self._writes))

    def _queue(self, job: Job) -> Job | None:
        superseded = self.queue.put(job)
        self._work.set()
        if self.queue.preempts():
            self._preempt.set()
        return superseded

    def _fail_waiting(self) -> None:
        """The link stops: whatever waits fails "down" (nobody is left to send it)."""
        for job in self.queue.drain():
            _settle(job.payload.outcome, LinkError("down"))

    # -- the one request in flight ------------------------------------------------------------

    async def _send_requests(self) -> None:
        """One request at a time, in the queue's order, for as long as the link runs."""
        while True:
            job = self.queue.take()
            if job is None:
                self._work.clear()
                await self._work.wait()
                continue
            try:
                await self._send(job.payload)
            finally:
                self.queue.done(job)

    async def _send(self, request: _Request) -> None:
        if request.outcome.done():  # its caller gave up waiting
            return
        if not self.connected:
            _settle(request.outcome, LinkError("down"))
            return
        exchange = asyncio.ensure_future(self._exchange(request))
        preempt = None
        try:
            while not exchange.done() and not self.queue.preempts():
                self._preempt.clear()
                preempt = asyncio.ensure_future(self._preempt.wait())
                await asyncio.wait({exchange, preempt}, return_when=asyncio.FIRST_COMPLETED)
                preempt.cancel()
            if not exchange.done():
                # An urgent write waits: abandon this one (its late reply, if any, carries
                # a transaction id pymodbus no longer expects and is dropped, counted).
                exchange.cancel()
                await asyncio.wait({exchange})
                _settle(request.outcome, LinkError("preempted"))
        finally:
            exchange.cancel()  # the link stopping cancels this task (mid-wait, too:
            if preempt is not None:  # its waiter must not outlive it, pending)
                preempt.cancel()
            if exchange.done() and not exchange.cancelled() and exchange.exception():
                log.error(
                    "controller %s: %s failed: %r", self.where, request.what, exchange.exception()
                )
            _settle(request.outcome, LinkError("down"))  # whatever did not settle it

    async def _exchange(self, request: _Request) -> None:
        """Send the request, wait for its reply (pymodbus' timeout), settle its outcome."""
        client = self._client
        if client is None:  # closed since the request was taken
            _settle(request.outcome, LinkError("down"))
            return
        try:
            reply = await request.send(client)
        except ModbusIOException as exc:
            if not client.connected:
                self.mark_lost("no replies")
            _settle(request.outcome, LinkError("timeout", _first_line(exc)))
            return
        except (ConnectionException, OSError) as exc:
            self.mark_lost(_first_line(exc))
            _settle(request.outcome, LinkError("down"))
            return
        except ModbusException as exc:  # any other pymodbus error (replies are not decoded)
            _settle(request.outcome, LinkError("bad_reply", _first_line(exc)))
            return
        try:
            if reply.garbled:
                raise BadReply(reply.garbled)
            _settle(request.outcome, check_reply(request.sent, reply.unit, reply.pdu))
        except BadReply as exc:
            _settle(request.outcome, LinkError("bad_reply", str(exc)))


def _settle(outcome: asyncio.Future, result) -> None:
    if outcome.done():
        return
    if isinstance(result, BaseException):
        outcome.set_exception(result)
    else:
        outcome.set_result(result)


def _late_replies(client) -> int:
    framer = getattr(getattr(client, "ctx", None), "framer", None)
    return getattr(framer, "late_replies", 0)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
