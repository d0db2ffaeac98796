"""The sensor bridge's host side: the sans-IO core on simulated time (clock alignment with
offset, drift and the uint32 wrap; raw and feature samples; what is counted), its
configuration, and the asyncio shell against a fake board on a pseudo-terminal pair
(unplug, replug, garbage, an incompatible board, and the agent's pipeline end to end)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import random
import select
import threading
import time

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.config import ConfigError, parse_config
from edge_agent.samples import Quality
from edge_agent.service import Agent
from edge_agent.sources.bridge import BridgeCore, BridgeSource, ClockAlignment, TickUnwrapper
from edge_agent.sources.bridge_config import BridgeChannel, BridgeConfig
from edge_agent.telemetry.channels import channel_table
from firmware_bridge import protocol
from hil.controller import SimulatedController
from hil.demo import demo_config
from hil.plant import demo_plant
from hil.ptypair import PtyPair
from tests.test_config import MINIMAL

pytestmark = pytest.mark.timeout(30)

WRAP = 1 << 32

SPINDLE = BridgeChannel("spindle_power", 0, "W", 2.5, -100.0, raw=True, features=("mean", "rms"))
VIB_X = BridgeChannel("vib_x", 1, "g", 0.0039, 0.0, raw=False, features=("rms", "peak"))


def bridge_config(port="/dev/null", **changes) -> BridgeConfig:
    cfg = BridgeConfig(port=port, channels=(SPINDLE, VIB_X))
    return dataclasses.replace(cfg, **changes)


# -- a board on simulated time ------------------------------------------------------------


class SimBoard:
    """A board whose MCU clock runs (1 + drift) times the host's, reading `offset_us` at
    host time 0 and wrapping at 2**32; frames numbered by one seq counter."""

    def __init__(self, offset_us: int, drift_ppm: float, sample_hz=2000, block=32):
        self.offset_us, self.rate = offset_us, 1 + drift_ppm * 1e-6
        self.sample_hz, self.block = sample_hz, block
        self.seq = 0

    def mcu_us(self, host_ns: float) -> int:
        """Unwrapped MCU µs at a host time."""
        return self.offset_us + int(host_ns * self.rate / 1000)

    def host_ns(self, mcu_us: float) -> float:
        return (mcu_us - self.offset_us) * 1000 / self.rate

    def frame(self, ftype, payload, ticks):
        data = protocol.encode(ftype, self.seq, ticks % WRAP, payload)
        self.seq = (self.seq + 1) & 0xFFFF
        return data

    def block_frames(self, k: int, start_us: int, raw=(0,)) -> bytes:
        """Block k of a stream started at MCU µs `start_us`: FEATURES, then RAW per channel;
        channel 0's sample n is n % 4096."""
        first = k * self.block
        ticks = start_us + round(first * 1e6 / self.sample_hz)
        values = [(first + i) % 4096 for i in range(self.block)]
        mean = sum(values) / len(values)
        rms = math.sqrt(sum(v * v for v in values) / len(values))
        features = [(0, mean, rms, max(values)), (1, 0.5, 2.0, 4.0)]
        out = self.frame(protocol.FEATURES, protocol.pack_features(k, self.block, features), ticks)
        for channel in raw:
            out += self.frame(protocol.RAW, protocol.pack_raw(channel, first, values), ticks)
        return out


def ping_round_trip(core, board, t1_ns, out_us, back_us):
    """One PING sent at host t1 and its PONG fed at host t4; delays in µs each way."""
    t1_ns = round(t1_ns)
    _, ping = core.ping(t1_ns)
    token = protocol.Decoder().feed(ping)[0].payload
    rx = board.mcu_us(t1_ns + out_us * 1000)
    tx = rx + 20  # the board answers in 20 µs
    t4 = board.host_ns(tx) + back_us * 1000
    pong = board.frame(protocol.PONG, protocol.pack_pong(token, rx % WRAP), tx)
    core.receive(pong, round(t4))


def simulate(core, board, seconds, rng, start_host_ns=0, ping_every_s=0.5, slow_every=7):
    """Ping and stream for `seconds` of simulated host time; returns the raw samples and,
    for each, the true host time of its MCU sample time."""
    block_ns = board.block * 1e9 / board.sample_hz
    start_us = board.mcu_us(start_host_ns)
    got, truth = [], []
    k, next_ping, n_ping = 0, start_host_ns, 0
    t = start_host_ns
    while t < start_host_ns + seconds * 1e9:
        if t >= next_ping:
            slow = n_ping % slow_every == 3  # now and then a busy host: a slow round trip
            ping_round_trip(
                core,
                board,
                t,
                rng.uniform(80, 1500) + (20_000 if slow else 0),
                rng.uniform(80, 1500),
            )
            next_ping += ping_every_s * 1e9
            n_ping += 1
        block_end_us = start_us + (k + 1) * board.block * 1e6 / board.sample_hz
        arrival = board.host_ns(block_end_us) + rng.uniform(100, 3000) * 1000
        samples, _ = core.receive(board.block_frames(k, start_us), round(arrival))
        first = k * board.block
        raw = [s for s in samples if s.channel == "spindle_power"]
        for i, s in enumerate(raw):
            got.append(s)
            truth.append(board.host_ns(start_us + (first + i) * 1e6 / board.sample_hz))
        k += 1
        t = start_host_ns + k * block_ns
    return got, truth


# -- the core on simulated time ------------------------------------------------------------


def test_ticks_unwrap_across_the_uint32_wrap_and_older_ticks_stay_older():
    unwrap = TickUnwrapper()
    assert unwrap.unwrap(WRAP - 10) == WRAP - 10
    assert unwrap.unwrap(5) == WRAP + 5
    assert unwrap.unwrap(WRAP - 3) == WRAP - 3  # older (a PONG's receive tick), not wrapped
    assert unwrap.unwrap(100) == WRAP + 100


def test_alignment_recovers_offset_and_drift_through_the_wrap_within_250_us():
    rng = random.Random(7)
    core = BridgeCore(bridge_config())
    # 50 ppm fast, the 32-bit ticks wrap 20 s in; two minutes of stream
    board = SimBoard(offset_us=WRAP - 20_000_000, drift_ppm=50.0)
    got, truth = simulate(core, board, 120, rng)
    errors = [abs(s.stamp_ns - t) for s, t in zip(got, truth, strict=True)]
    settled = errors[len(errors) // 4 :]  # after the first 30 s
    mean = sum(settled) / len(settled)
    print(f"alignment error: mean {mean / 1e3:.0f} us, max {max(settled) / 1e3:.0f} us settled")
    assert max(settled) < 250_000, max(settled)
    assert mean < 100_000, mean
    assert max(errors) < 1_500_000, max(errors)  # the first seconds: one or two round trips
    assert core.stats()["resyncs"] == 0


def test_stamps_are_monotonic_and_regular_within_a_block():
    core = BridgeCore(bridge_config())
    got, _ = simulate(core, SimBoard(WRAP - 5_000_000, -80.0), 20, random.Random(3))
    stamps = [s.stamp_ns for s in got]
    assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False))
    assert stamps[1] - stamps[0] == 500_000  # i / sample_hz within a block


def test_a_host_clock_step_back_resyncs_the_fit_and_stamps_never_go_backwards():
    rng = random.Random(5)
    core = BridgeCore(bridge_config())
    board = SimBoard(1_000_000, 20.0)
    got, _ = simulate(core, board, 20, rng)
    # The host's clock steps 3 s back (as a wall clock re-based on an NTP jump would):
    # for the same MCU time the host now reads 3 s less.
    board.offset_us += 3_000_000
    later, _ = simulate(core, board, 20, rng, start_host_ns=17e9)
    stamps = [s.stamp_ns for s in got + later]
    assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False))
    assert core.stats()["resyncs"] == 1
    assert core.counters["stamps_held"] > 0


def test_raw_frames_become_one_calibrated_sample_per_value_at_block_time_plus_i_over_rate():
    core = BridgeCore(bridge_config())
    core.align.add(0, 5_000_000_000, 5_000_000_000, 0)  # board = host + 5 s exactly
    board = SimBoard(0, 0.0)
    samples, _ = core.receive(board.block_frames(3, start_us=5_000_000), 10**9)
    raw = [s for s in samples if s.channel == "spindle_power"]
    assert len(raw) == 32
    block_start_ns = 3 * 32 * 500_000  # block 3 starts 48 ms after the stream's start
    assert [s.stamp_ns for s in raw] == [block_start_ns + i * 500_000 for i in range(32)]
    assert [s.value for s in raw] == [2.5 * (96 + i) - 100.0 for i in range(32)]
    assert core.counters["raw_samples"] == 32


def test_features_become_calibrated_per_block_channels_at_the_blocks_first_sample():
    core = BridgeCore(bridge_config())
    core.align.add(0, 0, 0, 0)
    board = SimBoard(0, 0.0)
    samples, _ = core.receive(board.block_frames(0, start_us=1000, raw=()), 10**9)
    by_name = {s.channel: s for s in samples}
    assert set(by_name) == {"spindle_power_mean", "spindle_power_rms", "vib_x_rms", "vib_x_peak"}
    assert all(s.stamp_ns == 1_000_000 for s in samples)
    values = list(range(32))
    mean = sum(values) / 32
    want_rms = math.sqrt(sum((2.5 * v - 100) ** 2 for v in values) / 32)  # of calibrated y
    assert by_name["spindle_power_mean"].value == pytest.approx(2.5 * mean - 100, rel=1e-6)
    assert by_name["spindle_power_rms"].value == pytest.approx(want_rms, rel=1e-6)
    assert by_name["vib_x_rms"].value == pytest.approx(2.0 * 0.0039)
    assert by_name["vib_x_peak"].value == pytest.approx(4.0 * 0.0039)


def test_samples_before_the_first_pong_are_dropped_and_counted():
    core = BridgeCore(bridge_config())
    samples, _ = core.receive(SimBoard(0, 0.0).block_frames(0, 0), 10**9)
    assert samples == []
    assert core.counters["unaligned_blocks"] >= 1


def test_seq_gaps_lost_blocks_overruns_and_board_errors_are_counted():
    core = BridgeCore(bridge_config())
    core.align.add(0, 0, 0, 0)
    board = SimBoard(0, 0.0)
    core.receive(board.block_frames(0, 0), 1)
    board.block_frames(1, 0)  # block 1 is lost on the line: two frames never arrive
    overrun = {"code": "overrun", "message": "ring full", "dropped_samples": 64}
    core.receive(board.frame(protocol.ERROR, protocol.pack_json(overrun), 0), 2)
    core.receive(board.frame(protocol.ERROR, protocol.pack_error("busy", "streaming"), 0), 3)
    core.receive(board.block_frames(4, 0), 4)
    stats = core.stats()
    assert (stats["seq_gaps"], stats["frames_lost"]) == (1, 2)
    assert stats["blocks_lost"] == 3  # blocks 1, 2 and 3
    assert stats["overruns"] == 1 and stats["samples_dropped_by_board"] == 64
    assert stats["errors_from_board"] == 1


def test_a_bad_payload_in_a_good_frame_is_counted_with_one_line():
    core = BridgeCore(bridge_config())
    core.receive(protocol.encode(protocol.RAW, 0, 0, b"\x00\x00\x05"), 1)
    assert core.counters["bad_payloads"] == 1
    assert "\n" not in core.last_error and "RAW" in core.last_error


def test_alignment_is_not_ready_before_a_round_trip_and_rejects_impossible_ones():
    align = ClockAlignment()
    assert align.to_host_ns(123) is None
    assert not align.add(10, 0, 0, 5)  # received before it was sent
    assert align.add(0, 1000, 1000, 2000)
    assert align.to_host_ns(1000) == 1000


# -- configuration --------------------------------------------------------------------------

BRIDGE = """
[bridge]
port = "/dev/serial/by-id/usb-bridge"
sample_hz = 1000

[[bridge.channels]]
name = "spindle_power"
index = 0
unit = "W"
scale = 2.5
raw = true
features = ["mean", "rms"]

[[bridge.channels]]
name = "vib_x"
index = 1
unit = "g"
scale = 0.0039
"""


def config_error(text):
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "agent.toml")
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_bridge_section_loads_with_documented_defaults_and_is_off_when_absent():
    assert parse_config(MINIMAL).bridge is None
    cfg = parse_config(MINIMAL + BRIDGE).bridge
    assert (cfg.sample_hz, cfg.block_samples, cfg.ping_interval_s) == (1000, 32, 0.5)
    assert cfg.channels[1] == BridgeChannel("vib_x", 1, "g", 0.0039, 0.0, False, ("rms",))
    assert [name for name, *_ in cfg.streams()] == [
        "spindle_power",
        "spindle_power_mean",
        "spindle_power_rms",
        "vib_x_rms",
    ]


def test_bridge_channels_join_the_channel_table_in_two_time_groups():
    config = parse_config(MINIMAL + BRIDGE + "\n[channels.vib_x_rms]\nquantum = 0.001\n")
    rows = {c.name: c for c in channel_table(config)}
    raw, mean, vib = rows["spindle_power"], rows["spindle_power_mean"], rows["vib_x_rms"]
    assert (raw.period_us, raw.unit, raw.quantum) == (1000, "W", 2.5)
    assert mean.period_us == vib.period_us == 32_000
    assert mean.group == vib.group != raw.group != rows["spindle_load"].group
    assert vib.quantum == 0.001


def test_control_signal_may_name_a_bridge_channel():
    text = MINIMAL + BRIDGE.replace(
        "[bridge]", '[control]\nsignal = "spindle_power_rms"\n\n[bridge]'
    )
    assert parse_config(text).control.signal == "spindle_power_rms"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ('name = "spindle_power"', 'name = "spindle_load"'),
            r"agent.toml:31: bridge.channels\[0\].name: channel 'spindle_load' is also a tag",
        ),
        (("index = 1", "index = 4"), r"bridge.channels\[1\].index: must be an integer in 0..3"),
        (("index = 1", "index = 0"), r"board channel 0 is already bridge.channels\[0\]"),
        (('features = ["mean", "rms"]', 'features = ["max"]'), r"features\[0\]: must be"),
        (("sample_hz = 1000", "sample_hz = 9000"), r"agent.toml:28: bridge.sample_hz: "),
        (("sample_hz = 1000", "sampel_hz = 1000"), r"bridge.sampel_hz: unknown key"),
    ],
)
def test_bridge_config_mistakes_are_one_line_naming_file_line_and_key(change, message):
    import re

    error = config_error(MINIMAL + BRIDGE.replace(*change))
    assert re.search(message, error), error


# -- a fake board on a pseudo-terminal -------------------------------------------------------


class FakeBoard:
    """The bridge's behaviour in CPython on a pty pair, in a thread of its own: answers the
    commands, streams blocks on its own drifting MCU clock, can be unplugged and plugged in.

    The agent opens `link`, a symlink re-pointed at each plug-in's new pty, as udev's
    /dev/serial/by-id/ names follow a board to whatever ttyACM it gets: a pty's path cannot
    be chosen, and the agent's configuration names one stable path."""

    def __init__(
        self,
        link,
        offset_us=WRAP - 1_500_000,
        drift_ppm=40.0,
        protocol_version=1,
        identity_payload=None,
        ack_payload=None,
    ):
        self.link = str(link)
        self.offset_us, self.rate = offset_us, 1 + drift_ppm * 1e-6
        self.protocol_version = protocol_version
        self.identity_payload = identity_payload  # instead of its identity: a hostile board
        self.ack_payload = ack_payload  # instead of each ACK's
        self.commands: list[int] = []
        self.plugs = 0
        self._garbage = bytearray()
        self._thread = None

    def ticks(self) -> int:
        """Unwrapped MCU µs: the board (re)boots at offset_us."""
        return self.offset_us + int((time.monotonic_ns() - self.t0) * self.rate) // 1000

    def mono_ns_of(self, mcu_us: float) -> float:
        return self.t0 + (mcu_us - self.offset_us) * 1000 / self.rate

    def plug(self):
        self.pair = PtyPair()
        self.pair.start()
        tmp = self.link + ".new"
        os.symlink(self.pair.b, tmp)
        os.replace(tmp, self.link)
        self.fd = os.open(self.pair.a, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.t0 = time.monotonic_ns()
        self.seq, self.decoder, self.out = 0, protocol.Decoder(), bytearray(b"\x00")
        self.streaming, self.rates, self.start_us = False, (1000, 32), 0
        self.raw, self.block = [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.plugs += 1

    def unplug(self):
        self._stop.set()
        self._thread.join()
        os.close(self.fd)
        self.pair.stop()

    def inject(self, garbage: bytes):
        self._garbage += garbage

    def _send(self, ftype, payload=b"", ticks=None):
        ticks = self.ticks() if ticks is None else ticks
        if self._garbage:
            self.out += self._garbage
            self._garbage.clear()
        self.out += protocol.encode(ftype, self.seq, ticks % WRAP, payload)
        self.seq = (self.seq + 1) & 0xFFFF

    def _run(self):
        while not self._stop.is_set():
            readable, _, _ = select.select([self.fd], [], [], 0.001)
            if readable:
                rx = self.ticks()
                with contextlib.suppress(BlockingIOError):
                    for frame in self.decoder.feed(os.read(self.fd, 4096)):
                        self._command(frame, rx)
            if self.streaming:
                hz, n = self.rates
                while self.ticks() >= self.start_us + (self.block + 1) * n * 1e6 / hz:
                    self._emit_block(hz, n)
            if self.out:
                with contextlib.suppress(BlockingIOError):
                    del self.out[: os.write(self.fd, self.out)]

    def _command(self, frame, rx):
        self.commands.append(frame.ftype)
        ack = self.ack_payload or protocol.pack_ack(frame.seq, frame.ftype)
        if frame.ftype == protocol.IDENTIFY:
            identity = {"board": "e661fa4e", "firmware": "0.1.0", "protocol": self.protocol_version}
            self._send(protocol.IDENTITY, self.identity_payload or protocol.pack_json(identity))
        elif frame.ftype == protocol.SET_RATES:
            rates = protocol.parse_json(frame.payload)
            self.rates = (rates["sample_hz"], rates["block_samples"])
            self._send(protocol.ACK, ack)
        elif frame.ftype == protocol.START:
            self.raw = protocol.parse_json(frame.payload)["raw"]
            self._send(protocol.ACK, ack)
            self.streaming, self.start_us, self.block = True, self.ticks(), 0
        elif frame.ftype == protocol.STOP:
            self.streaming = False
            self._send(protocol.ACK, ack)
        elif frame.ftype == protocol.PING:
            self._send(protocol.PONG, protocol.pack_pong(frame.payload, rx % WRAP))

    def _emit_block(self, hz, n):
        first = self.block * n
        ticks = self.start_us + round(first * 1e6 / hz)
        values = [(first + i) % 4096 for i in range(n)]
        mean = sum(values) / n
        rms = math.sqrt(sum(v * v for v in values) / n)
        features = [(c, mean, rms, float(max(values))) for c in (0, 1)]
        self._send(protocol.FEATURES, protocol.pack_features(self.block, n, features), ticks)
        for channel in self.raw:
            self._send(protocol.RAW, protocol.pack_raw(channel, first, values), ticks)
        self.block += 1


class MonoClock:
    """Stamps equal to the monotonic clock, so the board's truth maps straight onto them."""

    def monotonic_ns(self):
        return time.monotonic_ns()

    def stamp_ns(self):
        return time.monotonic_ns()


async def until(condition, timeout_s=10.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def fast_bridge(link, **changes):
    return bridge_config(
        port=str(link),
        ping_interval_s=0.05,
        command_timeout_s=0.2,
        reconnect_min_s=0.02,
        reconnect_max_s=0.1,
        **changes,
    )


@contextlib.asynccontextmanager
async def source_on(board, cfg):
    got = []
    source = BridgeSource(cfg, MonoClock(), got.extend)
    task = asyncio.create_task(source.run())
    try:
        yield source, got
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _stream_unplug_replug(tmp_path):
    board = FakeBoard(tmp_path / "bridge")
    board.plug()
    async with source_on(board, fast_bridge(tmp_path / "bridge")) as (source, got):
        await until(lambda: source.state == "streaming", what="streaming")
        await until(lambda: source.core.align.round_trips >= 10, what="round trips")
        await until(lambda: len(got) > 4000, what="2 s of samples")
        first_session = list(got)
        board.unplug()
        await until(lambda: source.state == "lost", what="the unplug noticed")
        await asyncio.sleep(0.2)  # unplugged a while: opens fail, quietly
        board.plug()
        await until(lambda: source.reconnects == 1 and source.state == "streaming", what="replug")
        count = len(got)
        await until(lambda: len(got) > count + 500, what="samples after the replug")
    return board, source, first_session, got


def test_shell_streams_at_2_khz_survives_unplug_and_replug(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edge_agent.sources.bridge")
    board, source, first, got = asyncio.run(_stream_unplug_replug(tmp_path))
    assert len([s for s in first if s.channel == "spindle_power"]) >= 2000
    stamps = [s.stamp_ns for s in got if s.channel == "spindle_power"]
    assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False))
    assert board.commands.count(protocol.IDENTIFY) >= 2  # re-identified after the replug
    stats = source.counts()
    assert stats["crc_errors"] + stats["malformed"] == 0
    lines = [r.getMessage() for r in caplog.records]
    assert sum("streaming" in line for line in lines) == 2
    assert sum("reconnecting" in line for line in lines) == 1  # not one per retry


async def _alignment_on_the_pty(tmp_path):
    board = FakeBoard(tmp_path / "bridge")
    board.plug()
    async with source_on(board, fast_bridge(tmp_path / "bridge")) as (source, got):
        await until(lambda: len(got) > 5000, what="samples")
        start_us = board.start_us
        hz = board.rates[0]
        board_of = board.mono_ns_of
    board.unplug()
    raw = [s for s in got if s.channel == "spindle_power"]
    errors = []
    for s in raw[len(raw) // 2 :]:
        # sample n has value 2.5 * (n % 4096) - 100; n is the one nearest the stamp
        residue = round((s.value + 100) / 2.5)
        approx_n = (s.stamp_ns - board_of(start_us)) * hz / 1e9
        n = residue + 4096 * round((approx_n - residue) / 4096)
        errors.append(abs(s.stamp_ns - board_of(start_us + n * 1e6 / hz)))
    return errors


def test_on_the_pty_stamps_match_the_boards_sample_times_within_2_ms(tmp_path):
    errors = asyncio.run(_alignment_on_the_pty(tmp_path))
    print(f"pty alignment error: max {max(errors) / 1e3:.0f} us over {len(errors)} samples")
    assert errors and max(errors) < 2_000_000, max(errors)


async def _garbage(tmp_path):
    board = FakeBoard(tmp_path / "bridge")
    board.plug()
    async with source_on(board, fast_bridge(tmp_path / "bridge")) as (source, got):
        await until(lambda: source.state == "streaming", what="streaming")
        await asyncio.sleep(0.2)
        for i in range(5):
            board.inject(bytes(random.Random(i).randrange(1, 256) for _ in range(40)))
            await asyncio.sleep(0.05)
        board.inject(b"\x00\x13\x37\x00")  # garbage that ends in 0x00: costs no frame
        await asyncio.sleep(0.3)
        count = len(got)
        await until(lambda: len(got) > count + 200, what="samples after the garbage")
        assert source.state == "streaming" and source.reconnects == 0
    board.unplug()
    return source


def test_garbage_in_the_stream_costs_at_most_one_frame_per_burst(tmp_path):
    source = asyncio.run(_garbage(tmp_path))
    stats = source.counts()
    assert 1 <= stats["crc_errors"] + stats["malformed"] + stats["oversize"] <= 6
    assert stats["frames_lost"] <= 5


async def _incompatible(tmp_path):
    board = FakeBoard(tmp_path / "bridge", protocol_version=2)
    board.plug()
    async with source_on(board, fast_bridge(tmp_path / "bridge")) as (source, _):
        await until(lambda: board.commands.count(protocol.IDENTIFY) >= 3, what="slow retries")
        assert source.state.startswith("refused")
    board.unplug()
    return board


def test_an_incompatible_board_gets_one_line_naming_both_versions_and_no_stream(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edge_agent.sources.bridge")
    board = asyncio.run(_incompatible(tmp_path))
    assert protocol.START not in board.commands
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "protocol version 2" in errors[0] and "speaks version 1" in errors[0]
    assert "\n" not in errors[0]


async def _hostile(tmp_path, **board_changes):
    board = FakeBoard(tmp_path / "bridge", **board_changes)
    board.plug()
    async with source_on(board, fast_bridge(tmp_path / "bridge")) as (source, _):
        task = asyncio.current_task()
        await until(lambda: board.commands.count(protocol.IDENTIFY) >= 3, what="retries")
        running = [t for t in asyncio.all_tasks() if t is not task and not t.done()]
        state = source.state
    board.unplug()
    return source, state, running


def test_an_identity_nested_1000_deep_is_refused_in_one_line_and_the_source_keeps_trying(
    tmp_path, caplog
):
    """The issue's finding: check_identity raised RecursionError and the agent exited."""
    caplog.set_level(logging.INFO, logger="edge_agent.sources.bridge")
    source, state, running = asyncio.run(_hostile(tmp_path, identity_payload=b"[" * 1000))
    assert running, "the source's task ended"
    assert state.startswith("refused: IDENTITY payload nests deeper than 8 levels")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors


def test_a_malformed_ack_is_a_counted_bad_payload_and_the_source_keeps_trying(tmp_path):
    """A bad ACK reached the command loop, whose ProtocolError ended the source's task."""
    source, state, running = asyncio.run(_hostile(tmp_path, ack_payload=b"\x01\x02"))
    assert running, "the source's task ended"
    assert state == "lost"  # no answer to STOP: reconnecting
    assert source.counts()["bad_payloads"] >= 1
    assert "ACK payload of 2 bytes, not 3" in source.core.last_error


async def _buggy(tmp_path):
    board = FakeBoard(tmp_path / "bridge")
    board.plug()
    async with source_on(board, fast_bridge(tmp_path / "bridge")) as (source, _):
        task = asyncio.current_task()
        await until(lambda: source.sessions >= 3, what="sessions retried")
        running = [t for t in asyncio.all_tasks() if t is not task and not t.done()]
    board.unplug()
    return source, running


def test_a_bug_in_a_session_is_logged_once_and_retried_slowly_never_the_end_of_the_source(
    tmp_path, caplog, monkeypatch
):
    def broken(self, host_ns):
        raise RuntimeError("a bug")

    monkeypatch.setattr(BridgeCore, "identify", broken)
    source, running = asyncio.run(_buggy(tmp_path))
    assert running, "the source's task ended"
    assert source.state == "failed" and source.counts()["internal_errors"] >= 3
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info, [r.getMessage() for r in errors]


def test_an_overrun_claiming_more_samples_than_a_counter_holds_is_a_bad_payload():
    """10**300 dropped samples, added to a counter, broke every metrics scrape after it."""
    core = BridgeCore(bridge_config())
    huge = {"code": "overrun", "message": "m", "dropped_samples": 10**300}
    core.receive(protocol.encode(protocol.ERROR, 0, 0, protocol.pack_json(huge)), 1)
    assert core.stats()["bad_payloads"] == 1
    assert core.counters["samples_dropped_by_board"] == 0 and core.counters["overruns"] == 0
    assert "dropped_samples" in core.last_error


REPLY_PAYLOADS = st.binary(max_size=64) | st.builds(
    lambda code, extra: protocol.pack_json({"code": code, "message": "m", **extra}),
    st.sampled_from(["overrun", "busy", "bad_frame"]),
    st.dictionaries(
        st.sampled_from(["dropped_samples", "next_index"]),
        st.integers(-(2**70), 2**70) | st.floats() | st.booleans() | st.text(max_size=3),
    ),
)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(sorted(protocol.TYPE_NAMES)) | st.integers(0, 255),
            st.integers(0, 0xFFFF),
            st.integers(0, WRAP - 1),
            REPLY_PAYLOADS,
        ),
        max_size=20,
    )
)
def test_any_frames_from_the_board_are_used_or_counted_never_raised(frames):
    """The host's decoder of what the board sends: every frame is a sample, a reply the shell
    can act on (an ACK it can read), or counted; nothing escapes."""
    core = BridgeCore(bridge_config())
    core.align.add(0, 0, 0, 0)
    data = b"".join(
        protocol.encode(ftype, seq, ticks, payload) for ftype, seq, ticks, payload in frames
    )
    _, replies = core.receive(data, 10**9)
    for reply in replies:
        if reply.ftype == protocol.ACK:
            protocol.parse_ack(reply.payload)
    assert all(isinstance(v, int) and v < WRAP * 1000 for v in core.stats().values())


# -- the agent's pipeline ---------------------------------------------------------------------


async def _agent(tmp_path):
    board = FakeBoard(tmp_path / "bridge")
    board.plug()
    controller = SimulatedController(demo_plant(), clock=lambda: 5.0)
    port = await controller.start_tcp("127.0.0.1", 0)
    config = demo_config(port=port, spool=str(tmp_path / "spool.db"))
    config = dataclasses.replace(
        config,
        bridge=fast_bridge(tmp_path / "bridge"),
        control=dataclasses.replace(config.control, enabled=False),
        telemetry=dataclasses.replace(config.telemetry, frame_interval_s=0.1),
    )
    agent = Agent(config)
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    try:
        await until(lambda: "spindle_power" in agent.latest, what="bridge samples in the agent")
        await until(lambda: "spindle_load" in agent.latest, what="Modbus samples in the agent")
        await until(lambda: agent.journal.points_stored > 3000, what="bridge points in frames")
        birth = await agent.journal.spool.birth_of(agent.boot)
    finally:
        stop.set()
        await run
        await controller.stop()
        board.unplug()
    return agent, birth, board


def test_the_agent_runs_the_bridge_with_the_modbus_source_and_its_birth_names_the_firmware(
    tmp_path,
):
    agent, birth, board = asyncio.run(_agent(tmp_path))
    for name in ("spindle_power", "spindle_power_mean", "spindle_power_rms", "vib_x_rms"):
        assert agent.latest[name].quality is Quality.GOOD, name
    info = msgpack.unpackb(birth.body, raw=False)[5]
    assert info["fw"] == "0.1.0"
    assert "spindle_power" in [row[0] for row in info["ch"]]
    assert board.commands[-1] == protocol.STOP  # stopped cleanly with the agent
