"""The one connection to one controller (Modbus TCP or RTU, pymodbus async client).

Owns reconnection (capped, jittered exponential backoff) and turns pymodbus' replies and
exceptions into three outcomes a poller can count: registers, an exception code, or a
`LinkError`. Writes go only through the one `RegisterWriter` the link hands out, once, to the
actuator (`take_writer`): no other code can write to the machine. A request on a link that is
down fails at once; it never waits for the reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from ..backoff import Backoff
from ..config import ControllerConfig
from ..registers import Table, Tag, encode_registers
from .poll_plan import ReadRequest

log = logging.getLogger(__name__)


class LinkError(Exception):
    """The request got no usable reply: `kind` is "down" (not connected), "timeout" or
    "bad_reply" (a reply that does not fit the request)."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


def make_client(cfg: ControllerConfig):
    """A pymodbus async client with its own reconnect and retries off: the link decides."""
    common = {"timeout": cfg.timeout_s, "retries": 0, "reconnect_delay": 0}
    if cfg.protocol == "rtu":
        return AsyncModbusSerialClient(
            cfg.serial_port,
            baudrate=cfg.baudrate,
            parity=cfg.parity,
            stopbits=cfg.stopbits,
            bytesize=cfg.bytesize,
            **common,
        )
    return AsyncModbusTcpClient(cfg.host, port=cfg.port, **common)


class RegisterWriter:
    """Hands writes from any thread to the link's event loop, never waiting for them."""

    def __init__(self, link: ModbusLink, loop: asyncio.AbstractEventLoop):
        self._link, self._loop = link, loop
        self._pending: set[asyncio.Task] = set()

    def write(self, tag: Tag, value: float) -> None:
        self._loop.call_soon_threadsafe(self._start, tag, value)

    def _start(self, tag: Tag, value: float) -> None:
        task = self._loop.create_task(self._link._write(tag, value))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def flush(self) -> None:
        """Wait for the writes already started (the agent's last write on the way out)."""
        await asyncio.sleep(0)  # let call_soon_threadsafe callbacks start their tasks
        if self._pending:
            await asyncio.wait(list(self._pending))


class ModbusLink:
    """One connection per controller, shared by every poll group (and later the actuator)."""

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

    def take_writer(self, loop: asyncio.AbstractEventLoop) -> RegisterWriter:
        """The link's one writer, for the actuator; a second call is refused, so whoever
        holds it is the only code that can write to the machine."""
        if self._writer is not None:
            raise RuntimeError(f"controller {self.where}: the register writer is already taken")
        self._writer = RegisterWriter(self, loop)
        return self._writer

    async def _write(self, tag: Tag, value: float) -> None:
        """One holding-register write; failures are counted and logged once per kind."""
        if not self.connected:
            self._write_failed("down", "link down")
            return
        try:
            reply = await self._client.write_registers(
                tag.address, encode_registers(tag, value), device_id=self.cfg.unit_id
            )
        except (ModbusException, OSError) as exc:
            self._write_failed("failed", str(exc).splitlines()[0] or type(exc).__name__)
            return
        if reply.isError():
            self._write_failed(f"exception_{reply.exception_code:02d}", f"{tag.name} refused")
            return
        self.write_counters["ok"] += 1

    def _write_failed(self, kind: str, detail: str) -> None:
        if not self.write_counters[kind]:
            log.warning(
                "controller %s: write %s: %s (further ones counted)", self.where, kind, detail
            )
        self.write_counters[kind] += 1

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    @property
    def where(self) -> str:
        if self.cfg.protocol == "rtu":
            return f"{self.cfg.serial_port} unit {self.cfg.unit_id}"
        return f"{self.cfg.host}:{self.cfg.port} unit {self.cfg.unit_id}"

    async def maintain(self) -> None:
        """Keep the link up for as long as the task runs: connect, wait for a loss, back off."""
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
            self._close()

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

    async def read(self, request: ReadRequest) -> list[int] | int:
        """The request's registers (bits as 0/1), or the Modbus exception code of the reply."""
        if not self.connected:
            if self._up.is_set():
                self.mark_lost("connection closed by peer")
            raise LinkError("down")
        client = self._client
        read = {
            Table.HOLDING: client.read_holding_registers,
            Table.INPUT: client.read_input_registers,
            Table.COIL: client.read_coils,
            Table.DISCRETE: client.read_discrete_inputs,
        }[request.table]
        try:
            reply = await read(request.address, count=request.count, device_id=self.cfg.unit_id)
        except ModbusIOException as exc:
            if not client.connected:
                self.mark_lost("no replies")
            raise LinkError("timeout", str(exc).splitlines()[0]) from None
        except (ConnectionException, OSError) as exc:
            self.mark_lost(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise LinkError("down") from None
        except ModbusException as exc:  # a reply pymodbus could not make sense of
            raise LinkError("bad_reply", str(exc).splitlines()[0]) from None
        if reply.isError():
            return int(reply.exception_code)
        if request.table.is_bits:
            # A reply carries its bits in whole bytes, so more than asked is normal; fewer is
            # a reply to another request (a late one matched after a timeout).
            if len(reply.bits) < request.count:
                raise LinkError(
                    "bad_reply", f"reply holds {len(reply.bits)} bits, asked for {request.count}"
                )
            return [1 if bit else 0 for bit in reply.bits[: request.count]]
        if len(reply.registers) != request.count:
            raise LinkError(
                "bad_reply",
                f"reply holds {len(reply.registers)} registers, asked for {request.count}",
            )
        return reply.registers

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
