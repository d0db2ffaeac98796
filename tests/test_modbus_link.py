"""The link against a hostile controller (tests/hostile_controller.py): a real TCP server, and
an RTU peer on a pseudo-terminal pair, answering with crafted frames. A reply that does not
answer its request in every field (function code, unit id, byte count, echo) is a counted
`bad_reply` (or, where RTU framing cannot tell where the frame ends, a timeout), logged once,
and never a sample marked good; a write is a success only when its echo fits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest

from edge_agent.clock import SystemClock
from edge_agent.config import parse_config
from edge_agent.registers import Table, Tag, ValueType
from edge_agent.samples import Quality
from edge_agent.sources.modbus import ModbusPoller
from edge_agent.sources.modbus_link import ModbusLink
from edge_agent.tasks import cancel_and_wait
from hil.ptypair import PtyPair
from tests.hostile_controller import (
    HostileRtuController,
    HostileTcpController,
    Reply,
    Request,
    bits_reply,
    exception_reply,
    honest,
    registers_reply,
    write_echo,
)

pytestmark = pytest.mark.timeout(60)

#: Short enough for a quick test, long enough for a loaded machine's loopback.
TIMEOUT_S = 0.25

CONFIG = """\
[machine]
site = "s"
machine_id = "m"
[controller]
{where}
timeout_s = {timeout}
reconnect_min_s = 0.05
reconnect_max_s = 0.1
[poll_groups.fast]
period_s = 0.1
stale_after_s = 60
[[tags]]
name = "spindle_load"
address = 0
table = "{table}"
type = "uint16"
poll_group = "fast"
[[tags]]
name = "spindle_speed"
address = 1
table = "{table}"
type = "uint16"
poll_group = "fast"
[[tags]]
name = "spindle_on"
address = 2
table = "{bits}"
poll_group = "fast"
"""

OVERRIDE = Tag("agent_feed_override", 100, Table.HOLDING, ValueType.UINT16)


class Log(logging.Handler):
    """Every record at WARNING or above, from any logger (asyncio's included), except the
    repeat limit's summaries: an earlier test's `logs.setup` (test_cli's demo) leaves its
    limit in place, and its window may turn during this test, summing up lines of before."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        if getattr(record, "repeat_summary", False):
            return
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.lines.append(text)


@contextlib.contextmanager
def captured_log():
    root = logging.getLogger()
    handler = Log()
    # As the agent sets it (edge_agent/logs.py): pymodbus' own lines are off; ours count.
    pymodbus = logging.getLogger("pymodbus")
    level = pymodbus.level
    pymodbus.setLevel(logging.CRITICAL)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        pymodbus.setLevel(level)


@contextlib.asynccontextmanager
async def hostile(rtu: bool, answer, table="holding", bits="discrete", timeout=TIMEOUT_S):
    """A hostile controller, and a running link to it with its config."""
    with contextlib.ExitStack() as stack:
        if rtu:
            pair = stack.enter_context(PtyPair())
            controller = HostileRtuController(pair.a, answer)
            await controller.start()
            where = f'protocol = "rtu"\nserial_port = "{pair.b}"\nbaudrate = 115200'
        else:
            controller = HostileTcpController(answer)
            where = f'host = "127.0.0.1"\nport = {await controller.start()}'
        config = parse_config(CONFIG.format(where=where, timeout=timeout, table=table, bits=bits))
        link = ModbusLink(config.controller)
        maintain = asyncio.create_task(link.maintain())
        try:
            assert await link.wait_connected(5)
            yield controller, link, config
        finally:
            await cancel_and_wait([maintain])  # re-cancels: pymodbus' wait_for may swallow one
            await controller.stop()


def only_registers(craft):
    """Answer reads of registers with `craft`, everything else honestly."""

    def answer(request: Request):
        return craft(request) if request.function_code in (3, 4) else honest(request)

    return answer


HOSTILE_READS = {
    # case: (the reply, the outcome over TCP, over RTU)
    "FC 4 zeros to an FC 3 read": (
        lambda r: Reply(registers_reply(r, [0, 0], function_code=4)),
        "bad_reply",
        "bad_reply",
    ),
    "another unit id": (lambda r: Reply(registers_reply(r), unit=7), "bad_reply", "bad_reply"),
    "a byte count short of the request": (
        lambda r: Reply(registers_reply(r, [1])),
        "bad_reply",
        "bad_reply",
    ),
    "a byte count beyond the data": (
        lambda r: Reply(registers_reply(r, [1, 2], byte_count=6)),
        "bad_reply",
        "timeout",  # RTU: the frame's end is where its byte count says: never comes
    ),
    "data beyond the byte count": (
        lambda r: Reply(registers_reply(r, [1, 2, 3], byte_count=4)),
        "bad_reply",
        "bad_reply",  # RTU: the CRC is not where the byte count puts it
    ),
    "an odd byte count": (
        lambda r: Reply(registers_reply(r, [1, 2], byte_count=3)),
        "bad_reply",
        "bad_reply",
    ),
    "an exception for another function code": (
        lambda r: Reply(exception_reply(4, 2)),
        "bad_reply",
        "bad_reply",
    ),
    "an unknown function code 0x41": (
        lambda r: Reply(bytes([0x41, 0, 0])),
        "bad_reply",
        "timeout",  # RTU: nothing says how long an unknown function's frame is
    ),
    "garbage": (lambda r: Reply(raw=b"\xde\xad\xbe\xef" * 5), "bad_reply", "bad_reply"),
    "an empty PDU": (lambda r: Reply(b""), "bad_reply", "timeout"),
}


async def _poll_hostile(rtu: bool, craft, polls: int = 4):
    with captured_log() as log:
        async with hostile(rtu, only_registers(craft)) as (_, link, config):
            emitted = []
            poller = ModbusPoller(config, link, SystemClock(), emitted.extend)
            for _ in range(polls):
                await poller.poll_once("fast")
    return poller, emitted, log.lines


@pytest.mark.parametrize("rtu", [False, True], ids=["tcp", "rtu"])
@pytest.mark.parametrize("case", list(HOSTILE_READS))
def test_a_reply_that_does_not_fit_its_read_is_counted_logged_once_never_good(case, rtu):
    craft, tcp_kind, rtu_kind = HOSTILE_READS[case]
    poller, emitted, lines = asyncio.run(_poll_hostile(rtu, craft))
    kind = rtu_kind if rtu else tcp_kind
    assert poller.counters[kind] == 4, dict(poller.counters)
    registers = [s for s in emitted if s.channel in ("spindle_load", "spindle_speed")]
    assert not any(s.quality is Quality.GOOD for s in registers)
    assert [s.quality for s in emitted if s.channel == "spindle_on"] == [Quality.GOOD] * 4
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert lines[0].startswith(f"read holding 0..1: {kind}")


@pytest.mark.parametrize("rtu", [False, True], ids=["tcp", "rtu"])
def test_a_bit_reply_with_another_byte_count_is_a_bad_reply(rtu):
    async def scenario():
        def answer(request: Request):
            if request.function_code == 2:
                return Reply(bits_reply(request, [1] * 16))  # two bytes for one bit
            return honest(request)

        async with hostile(rtu, answer) as (_, link, config):
            emitted = []
            poller = ModbusPoller(config, link, SystemClock(), emitted.extend)
            await poller.poll_once("fast")
        return poller, emitted

    poller, emitted = asyncio.run(scenario())
    assert poller.counters["bad_reply"] == 1
    assert "spindle_on" not in {s.channel for s in emitted}


@pytest.mark.parametrize("rtu", [False, True], ids=["tcp", "rtu"])
def test_after_hostile_replies_an_honest_one_reads_good_again(rtu):
    async def scenario():
        crafted = iter([lambda r: Reply(registers_reply(r, [0, 0], function_code=4))] * 2)

        def answer(request: Request):
            craft = next(crafted, None) if request.function_code == 3 else None
            return craft(request) if craft else honest(request)

        async with hostile(rtu, answer) as (_, link, config):
            emitted = []
            poller = ModbusPoller(config, link, SystemClock(), emitted.extend)
            for _ in range(3):
                await poller.poll_once("fast")
        return poller, emitted

    poller, emitted = asyncio.run(scenario())
    assert poller.counters["bad_reply"] == 2
    load = [s for s in emitted if s.channel == "spindle_load"]
    assert [(s.value, s.quality) for s in load] == [(0x1234, Quality.GOOD)]


# -- writes ----------------------------------------------------------------------------------

HOSTILE_WRITES = {
    "an echo of another function code": (
        lambda r: Reply(write_echo(r, function_code=6)),
        "bad_reply",
        "bad_reply",
    ),
    "an echo of another address": (
        lambda r: Reply(write_echo(r, address=r.address + 1)),
        "bad_reply",
        "bad_reply",
    ),
    "an echo of another count": (lambda r: Reply(write_echo(r, count=2)), "bad_reply", "bad_reply"),
    "a read reply": (lambda r: Reply(registers_reply(r, [100])), "bad_reply", "timeout"),
    "an exception for another function code": (
        lambda r: Reply(exception_reply(3, 4)),
        "bad_reply",
        "bad_reply",
    ),
    "another unit id": (lambda r: Reply(write_echo(r), unit=9), "bad_reply", "bad_reply"),
    "an unknown function code 0x41": (
        lambda r: Reply(bytes([0x41, 0, 0])),
        "bad_reply",
        "timeout",
    ),
}


async def _write(rtu: bool, answer, writes: int = 3):
    with captured_log() as log:
        async with hostile(rtu, answer) as (controller, link, _):
            writer = link.take_writer(asyncio.get_running_loop())
            for value in range(writes):
                writer.write(OVERRIDE, 100.0 + value)
                await writer.flush()
    return controller, link, log.lines


@pytest.mark.parametrize("rtu", [False, True], ids=["tcp", "rtu"])
@pytest.mark.parametrize("case", list(HOSTILE_WRITES))
def test_a_write_reply_that_does_not_echo_the_write_is_not_a_success(case, rtu):
    craft, tcp_kind, rtu_kind = HOSTILE_WRITES[case]
    _, link, lines = asyncio.run(_write(rtu, craft))
    kind = rtu_kind if rtu else tcp_kind
    assert link.write_counters == {kind: 3}
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert f"write {kind}" in lines[0]


def test_an_honest_echo_is_a_successful_write():
    controller, link, lines = asyncio.run(_write(False, honest))
    assert link.write_counters == {"ok": 3} and lines == []
    assert [r.values for r in controller.requests] == [(100,), (101,), (102,)]


def test_an_exception_reply_to_a_write_is_counted_by_its_code():
    _, link, _ = asyncio.run(_write(False, lambda r: Reply(exception_reply(16, 3))))
    assert link.write_counters == {"exception_03": 3}


# -- the safe write never waits behind reads -------------------------------------------------

SLOW_S = 0.6  # a read reply this late: well past the decision, within nothing we wait for


def slow_reads(request: Request):
    """Reads answered SLOW_S late; writes at once."""
    if request.function_code == 16:
        return honest(request)
    return Reply(honest(request).pdu, delay_s=SLOW_S)


async def _urgent_write_while_reads_wait(rtu: bool):
    async with hostile(rtu, slow_reads, timeout=1.0) as (controller, link, config):
        writer = link.take_writer(asyncio.get_running_loop())
        poller = ModbusPoller(config, link, SystemClock(), lambda samples: None)
        polls = [asyncio.create_task(poller.poll_once("fast")) for _ in range(3)]
        while not controller.requests:  # the first read is in flight
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        decided = time.monotonic()
        writer.write(OVERRIDE, 0.0, urgent=True)
        await writer.flush()
        flushed = time.monotonic()
        await asyncio.gather(*polls)
        write = next(r for r in controller.requests if r.function_code == 16)
        order = [r.function_code for r in controller.requests]
        return write.arrived_s - decided, flushed - decided, order, poller, link


def test_on_tcp_an_urgent_write_abandons_the_read_in_flight_and_goes_at_once():
    to_wire, flushed, order, poller, link = asyncio.run(_urgent_write_while_reads_wait(False))
    assert to_wire < SLOW_S / 2  # not behind the read in flight, nor the reads queued
    assert flushed < SLOW_S / 2
    assert order[:2] == [3, 16]  # the write right after the read it abandoned
    assert link.write_counters == {"ok": 1}
    assert poller.counters["preempted"] == 1
    assert link.late_replies >= 1  # the abandoned read's reply came, and was dropped


def test_on_rtu_an_urgent_write_goes_right_after_the_read_in_flight():
    to_wire, flushed, order, poller, link = asyncio.run(_urgent_write_while_reads_wait(True))
    assert SLOW_S / 2 < to_wire < SLOW_S + 0.5  # the bus is half duplex: the read ends first
    assert order[:2] == [3, 16]  # ... then the write, before the reads that wait
    assert link.write_counters == {"ok": 1}
    assert poller.counters["preempted"] == 0


def test_a_late_reply_to_an_abandoned_read_is_never_taken_for_the_next_reply():
    """TCP: the slow read's reply arrives after the write was sent; the next read must get
    its own reply (pymodbus matches by transaction id, and the link drops the stale one)."""

    async def scenario():
        async with hostile(False, slow_reads, timeout=1.0) as (controller, link, config):
            writer = link.take_writer(asyncio.get_running_loop())
            poller = ModbusPoller(config, link, SystemClock(), lambda samples: None)
            first = asyncio.create_task(poller.poll_once("fast"))
            while not controller.requests:
                await asyncio.sleep(0.005)
            writer.write(OVERRIDE, 0.0, urgent=True)
            await writer.flush()
            await first
            samples = await poller.poll_once("fast")
            return samples, link, poller

    samples, link, poller = asyncio.run(scenario())
    assert link.late_replies >= 1 and poller.counters["bad_reply"] == 0
    assert {s.channel: s.quality for s in samples} == {
        "spindle_load": Quality.GOOD,
        "spindle_speed": Quality.GOOD,
        "spindle_on": Quality.GOOD,
    }


def test_newer_writes_to_a_register_replace_the_waiting_one():
    """A silent controller: the first write waits its timeout; of the nine asked meanwhile
    only the newest goes out, so the flush ends after two timeouts, not ten."""

    async def scenario():
        async with hostile(False, lambda r: None, timeout=0.3) as (controller, link, _):
            writer = link.take_writer(asyncio.get_running_loop())
            started = time.monotonic()
            writer.write(OVERRIDE, 100.0)
            while not controller.requests:  # in flight
                await asyncio.sleep(0.005)
            for value in range(1, 10):
                writer.write(OVERRIDE, 100.0 + value)
            await writer.flush()
            return time.monotonic() - started, controller, link

    took, controller, link = asyncio.run(scenario())
    assert [r.values for r in controller.requests] == [(100,), (109,)]
    assert link.write_counters == {"timeout": 2, "superseded": 8}
    assert took < 2 * 0.3 + 0.5
