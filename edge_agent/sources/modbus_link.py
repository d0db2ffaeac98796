"""The one connection to one controller (Modbus TCP or RTU, pymodbus async client).

Owns reconnection (capped, jittered exponential backoff) and turns pymodbus' replies and
exceptions into three outcomes a poller can count: registers, an exception code, or a
`LinkError`. Never writes registers: reads only (writes belong to the actuator).
A request on a link that is down fails at once; it never waits for the reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from ..config import ControllerConfig
from ..registers import Table
from .poll_plan import ReadRequest

log = logging.getLogger(__name__)


class LinkError(Exception):
    """The request got no usable reply: `kind` is "down" (not connected), "timeout" or
    "bad_reply" (a reply that does not fit the request)."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class Backoff:
    """Capped exponential backoff with full jitter (AWS architecture blog's "full jitter"):
    delay n is uniform in [min, min(max, min * 2**n)]. Sans-IO: the caller sleeps."""

    def __init__(self, min_s: float, max_s: float, rng: Callable[[], float] = random.random):
        self.min_s, self.max_s, self._rng = min_s, max_s, rng
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.min_s * 2 ** min(self.attempt, 32))
        self.attempt += 1
        return self.min_s + (ceiling - self.min_s) * self._rng()

    def reset(self) -> None:
        self.attempt = 0


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
