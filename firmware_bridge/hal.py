"""The sensor bridge's hardware abstraction: the RP2040 board (`BoardHal`) and its simulated
twin for the MicroPython unix port (`SimHal`), with one small interface the firmware uses.

MicroPython only (the board or the unix port); never imports `edge_agent`. The methods marked
"sampling path" run in the timer interrupt on the board: they never allocate (no float, no
bigint, no new bytes, no bound method made per call) and never block beyond one SPI transfer.

The interface (both classes):
    board_id() -> str                  the board's unique id, hex
    ticks_us() -> int                  the MCU clock, low 32 bits of its 1 MHz timer (main loop)
    stamp() -> int                     the same clock's low 30 bits, a small int (sampling path)
    read_adc() -> int                  spindle power/current sensor, 0..4095 (sampling path)
    read_accel()                       ADXL345 X, Y, Z into accel_rx[1:7], int16 LE (sampling path)
    accel_ok, accel_error              whether the accelerometer answered at boot, and why not
    set_rate(sample_hz)                configure the sensors for that sampling rate
    start_timer(sample_hz, callback)   call `callback(timer)` sample_hz times a second
    stop_timer()
    service()                          main loop housekeeping (the sim runs due ticks here)
    wait_input(timeout_ms) -> bool     block until serial input or timeout
    serial_read() -> bytes             what the host sent, b"" if nothing (never blocks)
    serial_write(data)
    wdt_start(timeout_ms), wdt_feed()
"""

import select
import sys
import time
from array import array

try:
    from micropython import const
except ImportError:  # CPython (type checks, imports from the host side)

    def const(value):  # type: ignore[misc]  # the stubs' const is generic
        return value


# ADXL345 register map (Analog Devices ADXL345 datasheet, rev. G, table 19).
ADXL_DEVID = const(0x00)
ADXL_DEVID_VALUE = const(0xE5)
ADXL_BW_RATE = const(0x2C)
ADXL_POWER_CTL = const(0x2D)
ADXL_DATA_FORMAT = const(0x31)
ADXL_DATAX0 = const(0x32)  # X0, X1, Y0, Y1, Z0, Z1: int16 little-endian, right-justified
ADXL_READ = const(0x80)  # SPI: bit 7 set = read
ADXL_MULTI = const(0x40)  # SPI: bit 6 set = multi-byte (auto-increment)
ADXL_MEASURE = const(0x08)  # POWER_CTL: measurement mode
# DATA_FORMAT: FULL_RES (bit 3, 3.9 mg/LSB at every range) | range +-16 g (0b11); 4-wire SPI.
ADXL_FULL_RES_16G = const(0x0B)
# BW_RATE codes and their output data rates (Hz): the smallest rate >= sample_hz is chosen.
ADXL_RATES = ((0x0A, 100), (0x0B, 200), (0x0C, 400), (0x0D, 800), (0x0E, 1600), (0x0F, 3200))

# Why 1 MHz SPI is not used: at 5 kHz the 7-byte read must finish well inside the 200 us
# tick; at 5 MHz (the ADXL345's maximum) it takes about 11 us of bus time.
SPI_BAUD = const(5_000_000)
# The RP2040's TIMERAWL register: low 32 bits of the 1 MHz timer, not wrapped at 2**30.
TIMERAWL = const(0x40054028)
# Above this many bytes per serial_read() the main loop gets back to the ring buffer first.
SERIAL_READ_MAX = const(256)
_MASK30 = const(0x3FFFFFFF)


def _hex(data):
    text = ""
    for byte in data:
        text += "0123456789abcdef"[byte >> 4] + "0123456789abcdef"[byte & 15]
    return text


def adxl_rate_code(sample_hz):
    """The BW_RATE code of the slowest ADXL345 output data rate >= sample_hz (3200 Hz at most:
    above that, consecutive samples may repeat a reading)."""
    for code, rate_hz in ADXL_RATES:
        if rate_hz >= sample_hz:
            return code
    return ADXL_RATES[-1][0]


class BoardHal:
    """The RP2040 board: ADC0 (GP26) on the spindle power/current sensor, an ADXL345 on SPI0
    (SCK GP18, MOSI GP19, MISO GP16, CS GP17), USB-serial as the host link."""

    def __init__(self, spi_id=0, sck=18, mosi=19, miso=16, cs=17, adc_pin=26):
        import machine
        import micropython

        self._machine = machine
        # The link carries binary frames: a 0x03 byte must not raise KeyboardInterrupt.
        micropython.kbd_intr(-1)
        self._adc = machine.ADC(machine.Pin(adc_pin))
        self._cs = machine.Pin(cs, machine.Pin.OUT, value=1)
        self._spi = machine.SPI(
            spi_id,
            baudrate=SPI_BAUD,
            polarity=1,
            phase=1,
            sck=machine.Pin(sck),
            mosi=machine.Pin(mosi),
            miso=machine.Pin(miso),
        )
        self._tx = bytearray(7)
        self._tx[0] = ADXL_READ | ADXL_MULTI | ADXL_DATAX0
        self.accel_rx = bytearray(7)
        self._reg = bytearray(2)
        self._reg_rx = bytearray(2)
        self._timer = None
        self._wdt = None
        self._stdin = sys.stdin.buffer
        self._stdout = sys.stdout.buffer
        self._poll = select.poll()
        self._poll.register(sys.stdin, select.POLLIN)
        devid = self._read_reg(ADXL_DEVID)
        self.accel_ok = devid == ADXL_DEVID_VALUE
        self.accel_error = None
        if self.accel_ok:
            self._write_reg(ADXL_DATA_FORMAT, ADXL_FULL_RES_16G)
            self._write_reg(ADXL_POWER_CTL, ADXL_MEASURE)
        else:
            self.accel_error = (
                "ADXL345 not found: DEVID reads "
                + hex(devid)
                + ", expected 0xe5 (check SPI wiring)"
            )

    def _read_reg(self, reg):
        self._reg[0] = ADXL_READ | reg
        self._reg[1] = 0
        self._cs(0)
        self._spi.write_readinto(self._reg, self._reg_rx)
        self._cs(1)
        return self._reg_rx[1]

    def _write_reg(self, reg, value):
        self._reg[0] = reg
        self._reg[1] = value
        self._cs(0)
        self._spi.write(self._reg)
        self._cs(1)

    def board_id(self):
        return _hex(self._machine.unique_id())

    def ticks_us(self):
        return self._machine.mem32[TIMERAWL] & 0xFFFFFFFF

    def stamp(self):
        # time.ticks_us() on the rp2 port is the same 1 MHz timer, wrapped at 2**30: a small
        # int, so no allocation in the interrupt; the main loop restores the top two bits.
        return time.ticks_us()

    def read_adc(self):
        return self._adc.read_u16() >> 4

    def read_accel(self):
        self._cs(0)
        self._spi.write_readinto(self._tx, self.accel_rx)
        self._cs(1)

    def set_rate(self, sample_hz):
        if self.accel_ok:
            self._write_reg(ADXL_BW_RATE, adxl_rate_code(sample_hz))

    def start_timer(self, sample_hz, callback):
        # hard=True: a soft timer's callback waits in the scheduler's queue, which a long USB
        # write can fill, and then ticks would be lost without a trace. The callback is
        # allocation-free, as a hard interrupt requires.
        self._timer = self._machine.Timer(
            freq=sample_hz, mode=self._machine.Timer.PERIODIC, callback=callback, hard=True
        )

    def stop_timer(self):
        if self._timer is not None:
            self._timer.deinit()
            self._timer = None

    def service(self):
        pass

    def wait_input(self, timeout_ms):
        return bool(self._poll.poll(timeout_ms))

    def serial_read(self):
        # USB-CDC stdin has no non-blocking read of "what is there": one byte per ready poll.
        out = bytearray()
        while len(out) < SERIAL_READ_MAX and self._poll.poll(0):
            out += self._stdin.read(1)
        return bytes(out)

    def serial_write(self, data):
        self._stdout.write(data)

    def wdt_start(self, timeout_ms):
        self._wdt = self._machine.WDT(timeout=timeout_ms)

    def wdt_feed(self):
        if self._wdt is not None:
            self._wdt.feed()


# -- the simulated board, for the unix port --------------------------------------------------

# One period of a sine, amplitude 1000, in 64 steps: the simulated signals are integer table
# look-ups so that the sampling path stays free of floats (boxed, so allocated, on the unix port).
_SINE = array(
    "h",
    [
        0, 98, 195, 290, 383, 471, 556, 634,
        707, 773, 831, 882, 924, 957, 981, 995,
        1000, 995, 981, 957, 924, 882, 831, 773,
        707, 634, 556, 471, 383, 290, 195, 98,
        0, -98, -195, -290, -383, -471, -556, -634,
        -707, -773, -831, -882, -924, -957, -981, -995,
        -1000, -995, -981, -957, -924, -882, -831, -773,
        -707, -634, -556, -471, -383, -290, -195, -98,
    ],
)  # fmt: skip
SIM_ADC_BASE = const(2000)  # counts: an idling spindle's power, about half scale
SIM_ACCEL_Z = const(256)  # counts: 1 g on Z at 3.9 mg/LSB, the board lying flat
FEED_RECORD = const(8)  # a feed record: ADC counts, X, Y, Z counts, int16 little-endian each


class SimWatchdog(Exception):
    """The simulated watchdog fired: the main loop stopped feeding it (a board would reset)."""


class SimHal:
    """A simulated board under the unix port: deterministic sensors (or values fed from
    outside through `feed_path`, a FIFO of FEED_RECORD-byte records that the sensors hold
    until the next one), a timer run from the main loop on time.ticks_us(), a watchdog stub,
    and the serial link on `serial` (a pty's slave path, or a file descriptor number)."""

    def __init__(self, serial, feed_path=None, board="51a1b0a4d0000001"):
        if type(serial) is str and serial.isdigit():
            serial = int(serial)
        self._serial = open(serial, "r+b")  # noqa: SIM115  # open for the firmware's life
        self._poll = select.poll()
        self._poll.register(self._serial, select.POLLIN)
        self._feed = None
        self._feed_poll = None
        self._feed_rec = bytearray(FEED_RECORD)
        self._held = array("h", [SIM_ADC_BASE, 0, 0, SIM_ACCEL_Z])
        self.fed = False  # True once a feed record arrived: the sensors hold fed values
        if feed_path:
            self._feed = open(feed_path, "rb")  # noqa: SIM115
            self._feed_poll = select.poll()
            self._feed_poll.register(self._feed, select.POLLIN)
        self._board = board
        self.accel_rx = bytearray(7)
        self.accel_ok = True
        self.accel_error = None
        self._callback = None
        self._hz = 0
        self._t0 = 0
        self._ticks_done = 0  # ticks run since start_timer: drives the deterministic signals
        self._due = 0
        self._wdt_timeout_ms = 0
        self._wdt_fed = 0

    def board_id(self):
        return self._board

    def ticks_us(self):
        return time.ticks_us() & 0xFFFFFFFF

    def stamp(self):
        return self._due & _MASK30

    def read_adc(self):
        n = self._ticks_done
        if self.fed:
            return self._held[0]
        return SIM_ADC_BASE + (_SINE[(n * 3) & 63] >> 1)

    def read_accel(self):
        n = self._ticks_done
        if self.fed:
            x = self._held[1]
            y = self._held[2]
            z = self._held[3]
        else:
            x = _SINE[n & 63] >> 2
            y = _SINE[(n * 5) & 63] >> 3
            z = SIM_ACCEL_Z + (_SINE[(n * 7) & 63] >> 5)
        rx = self.accel_rx
        rx[1] = x & 0xFF
        rx[2] = (x >> 8) & 0xFF
        rx[3] = y & 0xFF
        rx[4] = (y >> 8) & 0xFF
        rx[5] = z & 0xFF
        rx[6] = (z >> 8) & 0xFF

    def set_rate(self, sample_hz):
        pass

    def start_timer(self, sample_hz, callback):
        self._hz = sample_hz
        self._callback = callback
        self._t0 = time.ticks_us()
        self._ticks_done = 0
        self._due = self._t0

    def stop_timer(self):
        self._callback = None

    def service(self):
        """Read the feed, run every timer tick that is due (each stamped with its scheduled
        time, as the board's interrupt would be), check the watchdog."""
        if self._feed_poll is not None:
            self._read_feed()
        callback = self._callback
        if callback is not None:
            now = time.ticks_us()
            while callback is not None and time.ticks_diff(now, self._due) >= 0:
                callback(None)
                self._ticks_done += 1
                self._due = self._t0 + self._ticks_done * 1000000 // self._hz
                callback = self._callback
        if self._wdt_timeout_ms:
            late_ms = time.ticks_diff(time.ticks_ms(), self._wdt_fed)
            if late_ms > self._wdt_timeout_ms:
                raise SimWatchdog("watchdog not fed for " + str(late_ms) + " ms")

    def _read_feed(self):
        rec = self._feed_rec
        poller = self._feed_poll
        feed = self._feed
        if poller is None or feed is None:
            return
        for _ in range(64):  # at most 64 records per pass: the ring buffer comes first
            events = poller.poll(0)
            if not events:
                return
            if events[0][1] & select.POLLIN == 0:  # the writer went away: keep what we hold
                self._feed_poll = None
                return
            got = feed.readinto(rec)
            if not got:
                self._feed_poll = None
                return
            if got < FEED_RECORD:
                continue
            for i in range(4):
                value = rec[2 * i] | (rec[2 * i + 1] << 8)
                self._held[i] = value - ((value & 0x8000) << 1)
            self.fed = True

    def wait_input(self, timeout_ms):
        if self._callback is not None:
            # Streaming: sleep no longer than to the next tick, the main loop runs the timer.
            wait_us = time.ticks_diff(self._due, time.ticks_us())
            timeout_ms = min(timeout_ms, max(0, wait_us // 1000))
        return bool(self._poll.poll(timeout_ms))

    def serial_read(self):
        out = bytearray()
        while len(out) < SERIAL_READ_MAX:
            events = self._poll.poll(0)
            if not events:
                break
            if events[0][1] & select.POLLIN == 0:  # POLLHUP: the host side is gone
                raise OSError("serial link closed")
            out += self._serial.read(1)
        return bytes(out)

    def serial_write(self, data):
        self._serial.write(data)

    def wdt_start(self, timeout_ms):
        self._wdt_timeout_ms = timeout_ms
        self._wdt_fed = time.ticks_ms()

    def wdt_feed(self):
        self._wdt_fed = time.ticks_ms()
