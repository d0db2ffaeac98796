"""`edge-agent probe` of a Modbus controller: every tag read once, as the agent reads it.

Two parts, as the Modbus source is split:

- sans-IO: `tag_row()` turns one tag's registers (or the exception its read got) into a row:
  the value as the agent decodes it (the register-decoding kernel, `sources/decoding.py`),
  the raw registers in hex, and the value under each other byte and word order, named as
  controller manuals name them (ABCD, CDAB, BADC, DCBA), so a wrong map shows at once.
- `ModbusProbe`, the shell: the agent's own read plan (`group_requests`) sent once over the
  agent's own link (`ModbusLink`: the same client, framing and reply checks).

Never writes: it reads every tag, the writable override included, and never takes the link's
writer.
"""

from __future__ import annotations

import array
import asyncio
import itertools
import math
import time
from dataclasses import replace

from ..registers import Order, Tag, ValueType
from ..sources.decoding import make_decoder
from ..sources.modbus_link import LinkError, ModbusLink
from ..sources.modbus_poll import EXCEPTION_NAMES, group_requests
from ..sources.poll_plan import ReadRequest
from ..tasks import cancel_and_wait
from .report import GOOD, Report, bad, number, with_unit

COLUMNS = ("tag", "address", "type", "value", "quality", "raw (hex)", "control", "other orders")

#: Every (byte order, word order) a value's registers may come in.
ORDERS = tuple(itertools.product(Order, Order))
#: The types whose registers' order matters (bits and bitfields are read as they are).
_ORDERED = (
    ValueType.INT16,
    ValueType.UINT16,
    ValueType.INT32,
    ValueType.UINT32,
    ValueType.FLOAT32,
    ValueType.FLOAT64,
)
#: Significant digits of a value under another order: enough to tell a plausible reading
#: (1234.57) from a wrong one (-1.98705e+111), short enough to keep the row on a screen.
OTHER_DIGITS = 6
#: How long the probe waits for the connection, in request timeouts: a connect attempt is
#: bounded by one, and a refused one is tried again after the link's backoff (the OPC UA
#: source gives its first connection as long).
CONNECT_TIMEOUTS = 2


# -- sans-IO --------------------------------------------------------------------------------


def order_label(words: int, byte_order: Order, word_order: Order) -> str:
    """The value's bytes in the order they come over the wire, A its most significant: for two
    registers ABCD (big-endian), CDAB (word_order little, "word swap"), BADC (byte_order
    little), DCBA (both little); AB or BA for one register, GHEFCDAB etc. for four."""
    letters = "ABCDEFGH"
    pairs = [letters[2 * i : 2 * i + 2] for i in range(words)]
    if word_order is Order.LITTLE:
        pairs.reverse()
    if byte_order is Order.LITTLE:
        pairs = [pair[::-1] for pair in pairs]
    return "".join(pairs)


def has_orders(tag: Tag) -> bool:
    return not tag.table.is_bits and tag.type in _ORDERED


def tag_order_label(tag: Tag) -> str:
    """The tag's configured order (word order means nothing to a one-register value)."""
    words = tag.type.words
    return order_label(words, tag.byte_order, tag.word_order if words > 1 else Order.BIG)


def other_orders(tag: Tag) -> list[Tag]:
    """The same tag under every other byte and word order it could have (one register: the
    other byte order only); none for bits and bitfields."""
    if not has_orders(tag):
        return []
    words = tag.type.words
    orders = ORDERS if words > 1 else [(b, Order.BIG) for b in Order]
    configured = (tag.byte_order, tag.word_order if words > 1 else Order.BIG)
    return [replace(tag, byte_order=b, word_order=w) for b, w in orders if (b, w) != configured]


def decode(tag: Tag, registers: list[int]) -> float:
    """The tag's physical value from its own registers (bits as 0/1), by the agent's kernel."""
    out = array.array("d", [0.0])
    make_decoder([tag], tag.address).decode(array.array("H", registers), out)
    return out[0]


def digits(tag: Tag) -> int:
    """Significant digits worth showing: a float32 holds 7, everything else fits 10."""
    return 7 if tag.type is ValueType.FLOAT32 and not tag.table.is_bits else 10


def where(tag: Tag) -> str:
    """The tag's table and address(es): "input 2..3", "input 8 bit 1", "discrete 0"."""
    if tag.table.is_bits or tag.type is not ValueType.BITFIELD:
        span = f"{tag.address}..{tag.end - 1}" if tag.span > 1 else f"{tag.address}"
        return f"{tag.table.value} {span}"
    bits = f"bit {tag.bit}" if tag.width == 1 else f"bits {tag.bit}..{tag.bit + tag.width - 1}"
    return f"{tag.table.value} {tag.address} {bits}"


def type_text(tag: Tag) -> str:
    """The type as read: its register order where it matters, its scale and offset if any."""
    if tag.table.is_bits:
        return "bit"
    text = tag.type.value
    if has_orders(tag) and (tag.type.words > 1 or tag.byte_order is Order.LITTLE):
        text += f" {tag_order_label(tag)}"
    if tag.scale != 1.0:
        text += f" x{number(tag.scale)}"
    if tag.offset:
        text += f" {'+' if tag.offset > 0 else '-'}{number(abs(tag.offset))}"
    return text


def exception_text(code: int) -> str:
    name = EXCEPTION_NAMES.get(code)
    return f"exception {code:02d}" + (f" ({name})" if name else "")


def tag_row(tag: Tag, reply: list[int] | int | str, role: str = "") -> tuple[tuple[str, ...], bool]:
    """One tag's row under `COLUMNS` and whether it read good. `reply`: the tag's own
    registers (bits as 0/1), the exception code its read got, or why it got no reply."""
    head = (tag.name, where(tag), type_text(tag))
    if isinstance(reply, str):
        return (*head, "", bad(reply), "", role, ""), False
    if isinstance(reply, int):
        return (*head, "", bad(exception_text(reply)), "", role, ""), False
    value = decode(tag, reply)
    raw = " ".join(f"{r:01X}" if tag.table.is_bits else f"{r:04X}" for r in reply)
    others = ", ".join(
        f"{tag_order_label(other)} {number(decode(other, reply), OTHER_DIGITS)}"
        for other in other_orders(tag)
    )
    good = math.isfinite(value)
    quality = GOOD if good else bad("not a finite number")
    shown = with_unit(number(value, digits(tag)), tag.unit)
    return (*head, shown, quality, raw, role, others), good


def registers_of(tag: Tag, request: ReadRequest, registers: list[int]) -> list[int]:
    """The tag's own registers (or bit) out of its request's reply."""
    start = tag.address - request.address
    return registers[start : start + tag.span]


def request_text(request: ReadRequest) -> str:
    """The request as a person reads it: "input 22..26", "holding 100"."""
    span = f"..{request.end - 1}" if request.count > 1 else ""
    return f"{request.table.value} {request.address}{span}"


# -- the shell ------------------------------------------------------------------------------


class _Unreachable(Exception):
    """The controller cannot be read this round: one line says why."""


class ModbusProbe:
    """The controller over Modbus, read once a round through one `ModbusLink`."""

    def __init__(self, config, roles: dict[str, str], log_reason=lambda: ""):
        """`log_reason()`: the last thing pymodbus said about a connection (its connect
        failure is only logged), for the one line when the controller cannot be reached."""
        self.cfg = config.controller
        self.tags: tuple[Tag, ...] = config.tags
        self.roles = roles
        self.log_reason = log_reason
        self.link = ModbusLink(self.cfg)
        plans = group_requests(config)
        self.requests = [r for group in sorted(plans) for r in plans[group]]
        self._task: asyncio.Task | None = None

    @property
    def title(self) -> str:
        kind = "Modbus RTU" if self.cfg.protocol == "rtu" else "Modbus TCP"
        return f"controller {self.link.where} ({kind}): {len(self.tags)} tags"

    async def round(self) -> Report:
        if self._task is None:
            self._task = asyncio.create_task(self.link.maintain(), name="probe-modbus-link")
        wait_s = CONNECT_TIMEOUTS * self.cfg.timeout_s
        if not await self.link.wait_connected(wait_s):
            reason = self.log_reason() or "no answer"
            return Report(
                self.title,
                error=f"controller {self.link.where}: cannot connect within {wait_s:g} s "
                f"({reason}); nothing read",
            )
        started = time.monotonic()
        replies: dict[str, list[int] | int | str] = {}
        notes: list[str] = []
        try:
            for request in self.requests:
                reply = await self._read(request)
                if isinstance(reply, int) and len(request.tags) > 1:
                    # Which register the controller refuses is what commissioning needs to
                    # know: each tag of the refused request is read on its own.
                    notes.append(
                        f"{request_text(request)} refused whole ({exception_text(reply)}); "
                        f"its {len(request.tags)} tags read one at a time"
                    )
                    for tag in request.tags:
                        alone = ReadRequest(tag.table, tag.address, tag.span, (tag,))
                        replies[tag.name] = await self._read(alone)
                    continue
                for tag in request.tags:
                    replies[tag.name] = (
                        reply if isinstance(reply, int | str) else registers_of(tag, request, reply)
                    )
        except _Unreachable as exc:
            return Report(self.title, error=str(exc))
        elapsed_ms = (time.monotonic() - started) * 1e3
        report = Report(
            f"{self.title} in {len(self.requests)} read requests, {elapsed_ms:.0f} ms",
            COLUMNS,
            notes=notes,
        )
        for tag in self.tags:
            row, good = tag_row(tag, replies[tag.name], self.roles.get(tag.name, ""))
            report.rows.append(row)
            report.failed += not good
        if any(has_orders(t) and t.type.words > 1 for t in self.tags):
            report.notes.append(
                "orders: ABCD big-endian; CDAB word_order = little; BADC byte_order = little; "
                "DCBA both little"
            )
        return report

    async def _read(self, request: ReadRequest) -> list[int] | int | str:
        """The request's registers, its exception code, or why its reply was refused; a
        timeout or a lost connection ends the round (`_Unreachable`)."""
        try:
            return await self.link.read(request)
        except LinkError as exc:
            if exc.kind == "timeout":
                raise _Unreachable(
                    f"controller {self.link.where}: no reply to read {request_text(request)} "
                    f"within {self.cfg.timeout_s:g} s (timeout)"
                ) from None
            if exc.kind == "bad_reply":
                return f"bad reply: {exc.detail}"
            raise _Unreachable(
                f"controller {self.link.where}: connection lost at read {request_text(request)}"
            ) from None

    async def close(self) -> None:
        if self._task is None:
            return
        # A read's caller has its reply before the link has ended that request's own
        # bookkeeping; a link stopped in between leaves a waiter task of its own pending
        # ("Task was destroyed but it is pending!"). So let it end the request first.
        for _ in range(100):
            if self.link.queue.in_flight is None:
                break
            await asyncio.sleep(0.001)
        await cancel_and_wait([self._task])
        self._task = None
