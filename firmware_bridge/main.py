"""The sensor bridge's firmware: the command loop (the board's main.py).

Reads the host's frames from the serial link, answers each command (docs/bridge-protocol.md,
section "Behaviour"), streams FEATURES and RAW frames of every block the sampler completes,
and feeds the hardware watchdog only while it is making progress. Never hangs on bad input:
every frame it cannot use is answered with an ERROR (one line), and the loop goes on. Never
allocates in the sampling path (firmware_bridge/sampler.py); allocates freely here.

`run(hal)` runs with either HAL. On the board, main.py is started at boot with the RP2040
HAL; under the MicroPython unix port:

    micropython firmware_bridge/main.py --serial /dev/pts/N [--feed FIFO] [--board HEX]
        [--wdt-ms 2000]
"""

import struct
import sys

try:
    from firmware_bridge import protocol
    from firmware_bridge.sampler import CHANNELS, Sampler
except ImportError:  # on the board: the files sit flat in the root of its filesystem
    import protocol
    from sampler import CHANNELS, Sampler

try:
    from micropython import const
except ImportError:  # CPython

    def const(value):  # type: ignore[misc]  # the stubs' const is generic
        return value


FIRMWARE_VERSION = "0.1.0"
# Defaults before any SET_RATES: 1 kHz (the agent's minimum for spindle power) in 32-sample
# blocks, 31.25 blocks a second: small frames, and a block's latency (32 ms) well under the
# agent's 100 Hz control period x 4.
DEFAULT_SAMPLE_HZ = const(1000)
DEFAULT_BLOCK_SAMPLES = const(32)
MAX_SAMPLE_HZ = const(5000)
MIN_BLOCK_SAMPLES = const(8)  # below 8 the frame overhead (20 bytes) outweighs the samples
MAX_BLOCK_SAMPLES = const(496)  # protocol.MAX_RAW_SAMPLES: one block is one RAW frame
# 2 s: the RP2040's watchdog allows up to 8.3 s; 2 s is long enough for a 1 KB frame at the
# slowest UART rate we support (9600 baud: ~1 s), short enough that a hung board streams again
# within seconds.
WDT_TIMEOUT_MS = const(2000)
# While streaming the loop counts as making progress only if the timer ticked within the last
# STALL_US (or three sample periods, at low rates): a dead timer must reset the board.
STALL_US = const(500_000)
# Idle wait for input when not streaming: short enough to feed the watchdog 20 times per
# timeout.
IDLE_WAIT_MS = const(100)
# Blocks sent per loop pass before the loop reads the serial again, so that STOP and PING
# are answered while a backlog drains.
BLOCKS_PER_PASS = const(4)


class Bridge:
    """The firmware's state: the link (decoder, seq), the rates, and the stream if any."""

    def __init__(self, hal, wdt_timeout_ms=WDT_TIMEOUT_MS):
        self.hal = hal
        self.decoder = protocol.Decoder()
        self.seq = 0
        self.sample_hz = DEFAULT_SAMPLE_HZ
        self.block_samples = DEFAULT_BLOCK_SAMPLES
        self.sampler = None
        self.raw_channels = ()  # type: tuple[int, ...]
        self.raw_requests = {}  # channel -> blocks still to send as RAW (SEND_RAW)
        self.block_no = 0  # blocks since START, dropped ones included (uint32 wraps)
        self.overruns = 0  # overrun episodes reported since boot
        self.wdt_timeout_ms = wdt_timeout_ms
        self._dropped = 0  # decoder drops seen so far
        self._last_ticks = 0
        self._last_tick_us = 0

    # -- sending ------------------------------------------------------------------------------

    def send(self, ftype, payload=b"", ticks_us=None):
        if ticks_us is None:
            ticks_us = self.hal.ticks_us()
        self.hal.serial_write(protocol.encode(ftype, self.seq, ticks_us, payload))
        self.seq = (self.seq + 1) & 0xFFFF

    def error(self, code, message, extra=None):
        body = {"code": code, "message": message}
        if extra:
            for key in extra:
                body[key] = extra[key]
        self.send(protocol.ERROR, protocol.pack_json(body))

    def ack(self, frame):
        self.send(protocol.ACK, protocol.pack_ack(frame.seq, frame.ftype))

    # -- the loop -----------------------------------------------------------------------------

    def step(self):
        """One pass: wait for input (briefly), handle commands, send complete blocks, feed
        the watchdog if the pass made progress."""
        hal = self.hal
        hal.service()
        if self.sampler is None or not self.sampler.ready():
            hal.wait_input(IDLE_WAIT_MS)
            hal.service()
        data = hal.serial_read()
        if data:
            rx_ticks = hal.ticks_us()
            for frame in self.decoder.feed(data):
                self.handle(frame, rx_ticks)
            self._report_drops()
        if self.sampler is not None:
            sent = 0
            while sent < BLOCKS_PER_PASS and self.sampler.ready():
                self.send_block()
                sent += 1
                hal.service()
        if self.progressing():
            hal.wdt_feed()

    def progressing(self):
        sampler = self.sampler
        if sampler is None:
            return True
        now = self.hal.ticks_us()
        if sampler.ticks != self._last_ticks:
            self._last_ticks = sampler.ticks
            self._last_tick_us = now
            return True
        limit = max(STALL_US, 3 * 1_000_000 // self.sample_hz)
        return (now - self._last_tick_us) & 0xFFFFFFFF < limit

    def _report_drops(self):
        d = self.decoder
        dropped = d.crc_errors + d.oversize + d.malformed
        if dropped != self._dropped:
            self.error(
                "bad_frame",
                str(dropped - self._dropped) + " frame(s) dropped; last: " + str(d.last_error),
            )
            self._dropped = dropped

    # -- commands -----------------------------------------------------------------------------

    def handle(self, frame, rx_ticks):
        ftype = frame.ftype
        if ftype == protocol.IDENTIFY:
            self.send(
                protocol.IDENTITY, protocol.pack_identity(FIRMWARE_VERSION, self.hal.board_id())
            )
        elif ftype == protocol.PING:
            if len(frame.payload) != protocol.PING_TOKEN_SIZE:
                self.error("bad_payload", "PING payload must be 8 bytes, got " + _n(frame.payload))
            else:
                self.send(protocol.PONG, protocol.pack_pong(frame.payload, rx_ticks))
        elif ftype == protocol.SET_RATES:
            self.set_rates(frame)
        elif ftype == protocol.START:
            self.start(frame)
        elif ftype == protocol.STOP:
            self.stop()
            self.ack(frame)
        elif ftype == protocol.SEND_RAW:
            self.send_raw(frame)
        else:
            name = protocol.TYPE_NAMES.get(ftype, "unknown")
            self.error(
                "unknown_type",
                "frame type " + hex(ftype) + " (" + name + ") is not a command this board takes",
            )

    def _json(self, frame, what):
        """The frame's JSON object, or None after sending ERROR bad_json."""
        try:
            value = protocol.parse_json(frame.payload, what + " payload")
        except protocol.ProtocolError as exc:
            self.error("bad_json", str(exc))
            return None
        if type(value) is not dict:
            self.error("bad_json", what + " payload is not a JSON object")
            return None
        return value

    def set_rates(self, frame):
        if self.sampler is not None:
            self.error("busy", "SET_RATES while streaming: send STOP first")
            return
        body = self._json(frame, "SET_RATES")
        if body is None:
            return
        hz = body.get("sample_hz")
        block = body.get("block_samples")
        if not _int_in(hz, 1, MAX_SAMPLE_HZ):
            self.error("bad_rates", "sample_hz must be an int in 1.." + str(MAX_SAMPLE_HZ))
            return
        if not _int_in(block, MIN_BLOCK_SAMPLES, MAX_BLOCK_SAMPLES):
            self.error(
                "bad_rates",
                "block_samples must be an int in "
                + str(MIN_BLOCK_SAMPLES)
                + ".."
                + str(MAX_BLOCK_SAMPLES),
            )
            return
        self.sample_hz = hz
        self.block_samples = block
        self.ack(frame)

    def start(self, frame):
        if self.sampler is not None:
            self.error("busy", "START while streaming: send STOP first")
            return
        channels = list(CHANNELS)
        raw = []  # type: list[int]
        if frame.payload:
            body = self._json(frame, "START")
            if body is None:
                return
            channels = body.get("channels", channels)
            raw = body.get("raw", raw)
            if not _channel_list(channels) or not channels:
                self.error(
                    "bad_channels", "channels must be a non-empty list of distinct ints in 0..3"
                )
                return
            if not _channel_list(raw) or any(c not in channels for c in raw):
                self.error("bad_channels", "raw must be a list of distinct active channels")
                return
        if not self.hal.accel_ok and any(c != 0 for c in channels):
            self.error("no_sensor", str(self.hal.accel_error))
            return
        self.raw_channels = tuple(sorted(raw))
        self.raw_requests = {}
        self.block_no = 0
        try:
            import gc

            gc.collect()
        except ImportError:
            pass
        self.sampler = Sampler(self.hal, tuple(sorted(channels)), self.block_samples)
        self.hal.set_rate(self.sample_hz)
        self.ack(frame)
        self._last_ticks = 0
        self._last_tick_us = self.hal.ticks_us()
        self.hal.start_timer(self.sample_hz, self.sampler.tick)

    def stop(self):
        """End the stream: the timer stops, the complete blocks in the ring go out, a partial
        block is dropped, an overrun not yet reported is reported."""
        sampler = self.sampler
        if sampler is None:
            return
        self.hal.stop_timer()
        while sampler.ready():
            self.send_block()
        if sampler.pending_skipped():
            self.report_overrun(sampler.pending_skipped(), self.block_no)
        self.sampler = None

    def send_raw(self, frame):
        body = self._json(frame, "SEND_RAW")
        if body is None:
            return
        if self.sampler is None:
            self.error("not_streaming", "SEND_RAW needs a stream: send START first")
            return
        channel = body.get("channel")
        blocks = body.get("blocks")
        if not _int_in(channel, 0, 3) or channel not in self.sampler.channels:
            self.error("bad_channels", "channel must be an active channel: " + repr(channel))
            return
        if not _int_in(blocks, 1, 0xFFFF):
            self.error("bad_payload", "blocks must be an int in 1..65535")
            return
        self.raw_requests[channel] = blocks
        self.ack(frame)

    # -- blocks -------------------------------------------------------------------------------

    def send_block(self):
        sampler = self.sampler
        if sampler is None:
            return
        base, stamp, skipped = sampler.block()
        if skipped:
            self.report_overrun(skipped, self.block_no)
            self.block_no += skipped
        block_samples = sampler.block_samples
        block_index = self.block_no & 0xFFFFFFFF
        first_index = (self.block_no * block_samples) & 0xFFFFFFFF
        ticks = self.stamp_to_ticks(stamp)
        features = []
        for channel in sampler.channels:
            mean, rms, peak = sampler.features(channel, base)
            features.append((channel, mean, rms, peak))
        self.send(
            protocol.FEATURES,
            protocol.pack_features(block_index, block_samples, features),
            ticks,
        )
        requests = self.raw_requests
        for channel in sampler.channels:
            wanted = channel in self.raw_channels
            if channel in requests:
                wanted = True
                if requests[channel] <= 1:
                    del requests[channel]
                else:
                    requests[channel] -= 1
            if wanted:
                payload = struct.pack("<BBHI", channel, 0, block_samples, first_index)
                payload += bytes(sampler.samples(channel, base))
                self.send(protocol.RAW, payload, ticks)
        sampler.release()
        self.block_no += 1

    def stamp_to_ticks(self, stamp):
        """The 32-bit MCU ticks of a 30-bit stamp taken less than 2**30 us (17.9 min) ago."""
        now = self.hal.ticks_us()
        age = (now - stamp) & 0x3FFFFFFF
        return (now - age) & 0xFFFFFFFF

    def report_overrun(self, skipped_blocks, block_no):
        self.overruns += 1
        samples = skipped_blocks * self.block_samples
        next_index = ((block_no + skipped_blocks) * self.block_samples) & 0xFFFFFFFF
        self.error(
            "overrun",
            "sampling fell behind (ring buffer full): "
            + str(samples)
            + " samples dropped, the stream resumes at sample "
            + str(next_index)
            + " (overrun "
            + str(self.overruns)
            + " since boot)",
            {"dropped_samples": samples, "next_index": next_index, "overruns": self.overruns},
        )


def _n(payload):
    return str(len(payload))


def _int_in(value, low, high):
    return type(value) is int and low <= value <= high


def _channel_list(value):
    if type(value) is not list:
        return False
    for i, channel in enumerate(value):
        if not _int_in(channel, 0, 3) or channel in value[:i]:
            return False
    return True


def run(hal, wdt_timeout_ms=WDT_TIMEOUT_MS):
    """The firmware: forever, with `hal` (BoardHal on the board, SimHal on the unix port)."""
    bridge = Bridge(hal, wdt_timeout_ms)
    # A 0x00 first: the host's decoder drops whatever partial frame the boot left on the line.
    hal.serial_write(b"\x00")
    hal.wdt_start(wdt_timeout_ms)
    while True:
        bridge.step()


def _board_main():
    import time

    import rp2
    from hal import BoardHal

    # Escape hatch: BOOTSEL held during the first 2 s after reset leaves the REPL to mpremote
    # (the firmware turns Ctrl-C off, so nothing else can interrupt it once running).
    deadline = time.ticks_add(time.ticks_ms(), 2000)
    while time.ticks_diff(deadline, time.ticks_ms()) > 0:
        if rp2.bootsel_button():
            print("bridge: BOOTSEL held, firmware not started")
            return
        time.sleep_ms(20)
    run(BoardHal())


USAGE = (
    "usage: micropython firmware_bridge/main.py --serial PATH|FD [--feed FIFO] [--board HEX]"
    " [--wdt-ms MS]"
)


def _unix_main(argv):
    try:
        from firmware_bridge.hal import SimHal, SimWatchdog
    except ImportError:
        from hal import SimHal, SimWatchdog

    options = {"--serial": None, "--feed": None, "--board": "51a1b0a4d0000001", "--wdt-ms": "2000"}
    i = 0
    while i < len(argv):
        if argv[i] not in options or i + 1 >= len(argv):
            print(USAGE)
            sys.exit(2)
        options[argv[i]] = argv[i + 1]
        i += 2
    if options["--serial"] is None:
        print(USAGE)
        sys.exit(2)
    hal = SimHal(options["--serial"], options["--feed"], options["--board"])
    try:
        run(hal, int(options["--wdt-ms"] or WDT_TIMEOUT_MS))
    except SimWatchdog as exc:
        print("bridge: simulated watchdog reset: " + str(exc))
        sys.exit(3)
    except OSError as exc:
        print("bridge: serial link closed: " + str(exc))
        sys.exit(0)


if __name__ == "__main__":
    if sys.platform == "rp2":
        _board_main()
    else:
        _unix_main(sys.argv[1:])
