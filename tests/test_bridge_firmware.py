"""The sensor bridge's firmware (docs/bridge-protocol.md "Behaviour", docs/bridge-firmware.md)
run for real: firmware_bridge/main.py under the MicroPython unix port on a pty pair, with its
simulated HAL, driven through hil/bridge_emulator.py; the sampling path's allocations measured
under the same port; every firmware file compiled by mpy-cross and type-checked against the
RP2040 stubs.

When `micropython` (or mpy-cross, mypy) is missing these tests skip, and under CI they fail
with one line saying what to install (the helper of tests/test_bridge_protocol.py).
"""

import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firmware_bridge import protocol as p
from hil.bridge_emulator import BridgeEmulator, g_to_counts, power_to_counts
from tests.test_bridge_protocol import require_tool

pytestmark = pytest.mark.timeout(20)

REPO = Path(__file__).resolve().parent.parent
FIRMWARE_FILES = ["protocol.py", "hal.py", "sampler.py", "main.py"]
SUBPROCESS_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def bridge():
    """One firmware process for the command tests (each leaves it idle, not streaming)."""
    binary = require_tool("micropython")
    with BridgeEmulator(micropython=binary) as emulator:
        yield emulator


@pytest.fixture
def link(bridge):
    with bridge.open_link() as host:
        host.write(b"\x00")
        yield host
        host.send(p.STOP)  # whatever the test did, leave the board idle for the next one
        host.expect(p.ACK, 5.0)


def set_rates(link, sample_hz, block_samples):
    seq = link.send(
        p.SET_RATES, p.pack_json({"block_samples": block_samples, "sample_hz": sample_hz})
    )
    assert p.parse_ack(link.expect(p.ACK).payload) == (seq, p.SET_RATES)


def start(link, **body):
    seq = link.send(p.START, p.pack_json(body) if body else b"")
    assert p.parse_ack(link.expect(p.ACK).payload) == (seq, p.START)


def expect_error(link, code):
    found, message = p.parse_error(link.expect(p.ERROR).payload)
    assert found == code, message
    assert message and "\n" not in message
    return message


def collect(link, seconds):
    frames = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        frame = link.next_frame(1.0)
        assert frame is not None, "the stream stopped"
        frames.append(frame)
    return frames


# -- commands --------------------------------------------------------------------------------


def test_identify_answers_the_board_id_firmware_and_protocol(link):
    link.send(p.IDENTIFY)
    identity = p.check_identity(link.expect(p.IDENTITY).payload)
    assert identity == {"board": "51a1b0a4d0000001", "firmware": "0.1.0", "protocol": 1}


def test_ping_is_answered_with_its_token_and_the_ticks_at_receipt(link):
    token = bytes(range(11, 19))
    link.send(p.PING, p.pack_ping(token))
    pong = link.expect(p.PONG)
    echoed, rx_ticks = p.parse_pong(pong.payload)
    assert echoed == token
    assert 0 <= (pong.ticks - rx_ticks) & 0xFFFFFFFF < 1_000_000  # sent after it arrived


def test_set_rates_out_of_range_is_bad_rates(link):
    for body in (
        {"sample_hz": 0, "block_samples": 32},
        {"sample_hz": 5001, "block_samples": 32},
        {"sample_hz": 1000, "block_samples": 7},
        {"sample_hz": 1000, "block_samples": 497},
        {"sample_hz": "1000", "block_samples": 32},
        {"block_samples": 32},
    ):
        link.send(p.SET_RATES, p.pack_json(body))
        expect_error(link, "bad_rates")


def test_bad_input_is_answered_with_error_and_the_board_still_answers(link):
    link.write(b"\x13\x37garbage\x00")  # not a frame
    assert "dropped" in expect_error(link, "bad_frame")
    link.write(b"\x01" * 1500 + b"\x00")  # no delimiter within 1 KiB
    expect_error(link, "bad_frame")
    link.send(0x42)  # unknown type
    assert "0x42" in expect_error(link, "unknown_type")
    link.send(p.ACK, p.pack_ack(1, 2))  # a board -> host type
    expect_error(link, "unknown_type")
    link.send(p.SET_RATES, b"{not json")
    expect_error(link, "bad_json")
    link.send(p.START, b"[1, 2]")
    expect_error(link, "bad_json")
    link.send(p.START, p.pack_json({"channels": [0, 4]}))
    expect_error(link, "bad_channels")
    link.send(p.START, p.pack_json({"channels": [1], "raw": [0]}))
    expect_error(link, "bad_channels")
    link.send(p.PING, b"short")
    expect_error(link, "bad_payload")
    link.send(p.SEND_RAW, p.pack_json({"channel": 0, "blocks": 1}))
    expect_error(link, "not_streaming")
    link.send(p.IDENTIFY)
    p.check_identity(link.expect(p.IDENTITY).payload)
    assert link.decoder.seq_gaps == 0 and link.decoder.crc_errors == 0


def test_set_rates_and_start_while_streaming_are_busy(link):
    start(link, channels=[0])
    link.send(p.SET_RATES, p.pack_json({"sample_hz": 100, "block_samples": 8}))
    expect_error(link, "busy")
    link.send(p.START)
    expect_error(link, "busy")


# -- streaming -------------------------------------------------------------------------------


def _check_stream(frames, block_samples, sample_hz, raw_channels):
    """Blocks consecutive, RAW after their FEATURES, features equal to the RAW samples."""
    features = [f for f in frames if f.ftype == p.FEATURES]
    assert [f.ftype for f in frames if f.ftype not in (p.FEATURES, p.RAW)] == []
    block_indexes = [p.parse_features(f.payload)[0] for f in features]
    assert block_indexes == list(range(block_indexes[0], block_indexes[0] + len(features)))
    period_us = block_samples * 1_000_000 / sample_hz
    for a, b in zip(features, features[1:], strict=False):
        assert abs(((b.ticks - a.ticks) & 0xFFFFFFFF) - period_us) <= 1
    i = 0
    while i + len(raw_channels) < len(frames):
        head = frames[i]
        if head.ftype != p.FEATURES:
            i += 1
            continue
        block, n, stats = p.parse_features(head.payload)
        assert n == block_samples
        by_channel = {channel: (mean, rms, peak) for channel, mean, rms, peak in stats}
        for k, channel in enumerate(raw_channels):
            raw = frames[i + 1 + k]
            assert raw.ftype == p.RAW and raw.ticks == head.ticks
            got_channel, first_index, samples = p.parse_raw(raw.payload)
            assert (got_channel, first_index, len(samples)) == (channel, block * n, n)
            mean, rms, peak = by_channel[channel]
            assert mean == pytest.approx(sum(samples) / n, rel=1e-6)
            assert rms == pytest.approx(math.sqrt(sum(s * s for s in samples) / n), rel=1e-6)
            assert peak == max(abs(s) for s in samples)
        i += 1 + len(raw_channels)
    return features


def test_a_2_khz_stream_with_raw_channel_0_has_no_gaps_and_features_match_the_samples(link):
    set_rates(link, 2000, 32)
    start(link, raw=[0])
    frames = collect(link, 3.0)
    features = _check_stream(frames, 32, 2000, [0])
    assert p.parse_features(features[0].payload)[0] == 0
    assert len(features) * 32 >= 0.8 * 2000 * 3.0  # the board keeps up with 2 kHz
    assert [c for c, *_ in p.parse_features(features[0].payload)[2]] == [0, 1, 2, 3]
    assert link.decoder.seq_gaps == 0 and link.decoder.crc_errors == 0


def test_stop_is_acknowledged_and_nothing_streams_after_the_ack(link):
    set_rates(link, 1000, 16)
    start(link, channels=[0, 3], raw=[3])
    collect(link, 0.3)
    seq = link.send(p.STOP)
    assert p.parse_ack(link.expect(p.ACK).payload) == (seq, p.STOP)
    assert link.drain(0.3) == []


def test_send_raw_adds_the_next_n_blocks_of_a_channel(link):
    set_rates(link, 1000, 16)
    start(link, channels=[0, 2])
    collect(link, 0.1)
    link.send(p.SEND_RAW, p.pack_json({"blocks": 3, "channel": 2}))
    link.expect(p.ACK)
    frames = collect(link, 0.5)
    raws = [p.parse_raw(f.payload) for f in frames if f.ftype == p.RAW]
    assert [channel for channel, _, _ in raws] == [2, 2, 2]
    assert [b[1] - a[1] for a, b in zip(raws, raws[1:], strict=False)] == [16, 16]


def test_a_stalled_board_reports_one_overrun_and_resumes_at_the_announced_index():
    binary = require_tool("micropython")
    with BridgeEmulator(micropython=binary) as bridge, bridge.open_link() as link:
        set_rates(link, 5000, 64)
        start(link, channels=[0], raw=[0])
        collect(link, 0.3)
        os.kill(bridge.process.pid, signal.SIGSTOP)  # 1.2 s: longer than the 0.8 s ring
        time.sleep(1.2)
        os.kill(bridge.process.pid, signal.SIGCONT)
        frames = collect(link, 0.6)
        errors = [f for f in frames if f.ftype == p.ERROR]
        assert len(errors) == 1
        body = p.parse_json(errors[0].payload)
        assert body["code"] == "overrun" and body["overruns"] == 1
        assert body["dropped_samples"] > 0 and body["dropped_samples"] % 64 == 0
        after = frames[frames.index(errors[0]) + 1 :]
        raw = next(f for f in after if f.ftype == p.RAW)
        assert p.parse_raw(raw.payload)[1] == body["next_index"]
        assert link.decoder.seq_gaps == 0
        link.send(p.STOP)
        link.expect(p.ACK, 5.0)


def test_fed_sensor_values_are_what_the_board_samples():
    binary = require_tool("micropython")
    with BridgeEmulator(micropython=binary, feed=True) as bridge, bridge.open_link() as link:
        bridge.feed_physical(spindle_power_kw=5.0, accel_g=(0.5, -0.25, 1.0))
        time.sleep(0.1)
        set_rates(link, 1000, 16)
        start(link)
        collect(link, 0.1)
        features = [f for f in collect(link, 0.2) if f.ftype == p.FEATURES]
        _, _, stats = p.parse_features(features[-1].payload)
        means = [mean for _, mean, _, _ in stats]
        assert means == [power_to_counts(5.0, 20.0), 128, -64, 256]
        assert (power_to_counts(5.0, 20.0), g_to_counts(0.5)) == (1024, 128)
        link.send(p.STOP)
        link.expect(p.ACK, 5.0)


# -- the sampling path allocates nothing --------------------------------------------------------

ALLOCATION_SCRIPT = """
import gc, micropython
from firmware_bridge.hal import SimHal
from firmware_bridge.sampler import Sampler

def measure(tick, count):
    gc.collect()
    before = gc.mem_free()
    i = 0
    while i < count:
        tick(None)
        i += 1
    after = gc.mem_free()
    return before - after

def locked(tick, count):
    micropython.heap_lock()
    try:
        i = 0
        while i < count:
            tick(None)
            i += 1
    finally:
        micropython.heap_unlock()
    return count

hal = SimHal(1)
hal.start_timer(1000, None)
for channels in ((0, 1, 2, 3), (0,), (2,)):
    sampler = Sampler(hal, channels, 32)
    filling = sampler.slots * 32 - 1  # the ring fills: the keep path
    print("keep", measure(sampler.tick, filling), "bytes")
    print("drop", measure(sampler.tick, 3000), "bytes", sampler.overruns, "overrun")
    while sampler.ready():
        sampler.release()
    print("locked", locked(sampler.tick, 3000), "ticks")
"""


def test_the_sampling_path_allocates_nothing_under_micropython(tmp_path):
    binary = require_tool("micropython")
    done = subprocess.run(
        [binary, "-c", ALLOCATION_SCRIPT],
        cwd=tmp_path,
        env={**os.environ, "MICROPYPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr or done.stdout
    # For each channel set: the ring filling (every sample kept), the ring full (every sample
    # dropped, one overrun episode), and 3000 ticks with the heap locked (MemoryError on any
    # allocation, as in a hard interrupt).
    expected = ["keep 0 bytes", "drop 0 bytes 1 overrun", "locked 3000 ticks"] * 3
    assert done.stdout.splitlines() == expected


# -- the files compile and type-check -----------------------------------------------------------


@pytest.mark.parametrize("name", FIRMWARE_FILES)
def test_mpy_cross_compiles_every_firmware_file(name, tmp_path):
    binary = require_tool("mpy-cross")
    out = tmp_path / (name[:-3] + ".mpy")
    done = subprocess.run(
        [binary, "-o", str(out), str(REPO / "firmware_bridge" / name)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 0


# The RP2040 stubs, and the MicroPython stdlib stubs whose API differs from CPython's
# (time.ticks_us, select.poll on streams, gc.mem_free), shadowing typeshed's.
STUB_MODULES = ("machine.pyi", "micropython.pyi", "rp2", "time.pyi", "select.pyi", "gc.pyi")
# The stubs themselves do not pass mypy (machine.pyi: undefined names; rp2: a redefined
# const), so their own errors are not ours; protocol.py is checked by its own tests and has
# two annotations mypy wants (its owner's call), so it is imported, not judged, here.
MYPY_CONFIG = """
[mypy]
python_version = 3.11
no_site_packages = True
ignore_missing_imports = True
check_untyped_defs = True
[mypy-machine,micropython,rp2,rp2.*,time,select,gc,protocol]
ignore_errors = True
"""


def _stub_dir() -> Path | None:
    """The site-packages holding the RP2040 stubs (machine.pyi, rp2/)."""
    for entry in sys.path:
        if (Path(entry) / "machine.pyi").exists() and (Path(entry) / "rp2").is_dir():
            return Path(entry)
    return None


@pytest.mark.timeout(120)
def test_the_firmware_type_checks_against_the_rp2040_stubs(tmp_path):
    mypy = require_tool("mypy")
    stubs = _stub_dir()
    if stubs is None:
        pytest.skip("micropython-rp2-stubs is not installed (setup.py's test extras)")
    # The board's view: its four files flat, as `make flash` copies them, and only the stubs.
    board = tmp_path / "board"
    board.mkdir()
    for name in FIRMWARE_FILES:
        shutil.copy(REPO / "firmware_bridge" / name, board / name)
    stub_path = tmp_path / "stubs"
    stub_path.mkdir()
    for name in STUB_MODULES:
        source = stubs / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, stub_path / name)
    config = tmp_path / "mypy.ini"
    config.write_text(MYPY_CONFIG)
    done = subprocess.run(
        [mypy, "--config-file", str(config), "--cache-dir", str(tmp_path / "cache"),
         *[str(board / name) for name in FIRMWARE_FILES]],
        cwd=board,
        env={**os.environ, "MYPYPATH": str(stub_path)},
        capture_output=True,
        text=True,
        timeout=110,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout


def test_the_raw_frame_layout_is_the_codecs():
    # main.py builds RAW payloads straight from the ring's bytes; this is pack_raw's layout.
    samples = [0, 1, -1, 32767, -32768]
    head = struct.pack("<BBHI", 3, 0, len(samples), 4096)
    assert head + struct.pack("<5h", *samples) == p.pack_raw(3, 4096, samples)


def test_a_stalled_main_loop_lets_the_watchdog_reset_the_board():
    """The simulated WDT stands for machine.WDT: a main loop that stops making progress for
    longer than the timeout (here the process stopped by SIGSTOP) ends the firmware (exit 3,
    as a board resets) instead of hanging."""
    require_tool("micropython")
    emulator = BridgeEmulator(wdt_ms=300)
    emulator.start()
    try:
        process = emulator.process
        time.sleep(0.6)  # twice the timeout, idle: the loop keeps feeding its watchdog
        assert process.poll() is None
        process.send_signal(signal.SIGSTOP)
        time.sleep(1.0)
        process.send_signal(signal.SIGCONT)
        assert process.wait(timeout=5) == 3
    finally:
        emulator.stop()
