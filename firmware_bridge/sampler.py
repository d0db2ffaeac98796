"""The sampling path: a preallocated ring of blocks that the timer interrupt fills, and the
per-block features (mean, RMS, peak) the main loop computes from it.

`Sampler.tick` runs in the timer interrupt on the board. It never allocates: the ring is
allocated once, at START; it touches only small ints, preallocated arrays and the HAL's
allocation-free readers; it is kept to a few locals because MicroPython puts the frame of a
function whose locals and stack exceed 11 words on the heap at every call (objfun.c,
VM_MAX_STATE_ON_STACK). It never blocks and never skips a sample silently: when the ring is
full it drops whole blocks and counts them, and the main loop reports each such overrun.
Floats appear only in `features`, which runs in the main loop.

The interrupt and the main loop share the ring without a lock: the interrupt alone writes
`_head`, `_published`, `_skipped` and the slot it fills; the main loop alone writes `_tail`
and `_consumed`. Counters wrap (& 0xFFFF, & 0x3FFFFFFF) so they stay small ints on a 32-bit
MCU, where an int above 2**30 would be a heap object.
"""

from array import array

try:
    from micropython import const
except ImportError:  # CPython

    def const(value):  # type: ignore[misc]  # the stubs' const is generic
        return value


# Samples per channel the ring holds: 4096 is 0.8 s at 5 kHz, 4 s at 1 kHz, and 8 KB per
# channel (32 KB for all four) out of the RP2040's ~190 KB MicroPython heap. The main loop
# must drain a block before the ring wraps; a USB host that stalls longer causes an overrun.
RING_SAMPLES = const(4096)
CHANNELS = (0, 1, 2, 3)  # 0: ADC (spindle power/current), 1..3: ADXL345 X, Y, Z
_MASK16 = const(0xFFFF)
_MASK30 = const(0x3FFFFFFF)


def _zeros(typecode, count, itemsize):
    return array(typecode, bytearray(count * itemsize))


class Sampler:
    """Samples the active `channels` once per `tick` into a ring of `block_samples`-sample
    blocks; the main loop takes complete blocks with `ready`, `block`, `release`."""

    def __init__(self, hal, channels, block_samples, ring_samples=RING_SAMPLES):
        self.channels = channels
        self.block_samples = block_samples
        self.slots = max(2, ring_samples // block_samples)
        size = self.slots * block_samples
        self._hal = hal
        self._rx = hal.accel_rx
        self._has_adc = 0 in channels
        self._has_accel = 1 in channels or 2 in channels or 3 in channels
        self._adc = _zeros("h", size if self._has_adc else 1, 2)
        accel_size = size if self._has_accel else 1
        self._x = _zeros("h", accel_size, 2)
        self._y = _zeros("h", accel_size, 2)
        self._z = _zeros("h", accel_size, 2)
        self.rings = (self._adc, self._x, self._y, self._z)
        self._stamps = _zeros("i", self.slots, 4)  # stamp() of each slot's first sample
        self._skipped_before = _zeros("H", self.slots, 2)  # blocks dropped before each slot
        # written by the interrupt only
        self._pos = 0
        self._base = 0
        self._head = 0
        self._published = 0
        self._keep = False
        self._skipped = 0
        self.overruns = 0  # overrun episodes begun (a full ring at a block's start)
        self.ticks = 0
        # written by the main loop only
        self._tail = 0
        self._consumed = 0
        # The timer gets this one bound method, made once: `self.tick` made afresh at every
        # interrupt would be an allocation.
        self.tick = self._tick

    # -- the interrupt side ------------------------------------------------------------------

    def _tick(self, _timer):
        pos = self._pos
        if pos == 0:
            self._begin_block()
        if self._keep:
            self._store(self._base + pos)
        self.ticks = (self.ticks + 1) & _MASK30
        pos += 1
        if pos == self.block_samples:
            self._end_block()
            pos = 0
        self._pos = pos

    def _begin_block(self):
        if ((self._published - self._consumed) & _MASK16) < self.slots:
            self._base = self._head * self.block_samples
            self._stamps[self._head] = self._hal.stamp()
            self._keep = True
        else:
            if self._keep or not self._skipped:
                self.overruns += 1
            self._keep = False

    def _store(self, i):
        if self._has_adc:
            self._adc[i] = self._hal.read_adc()
        if self._has_accel:
            self._hal.read_accel()
            self._store_accel(i, self._rx)

    def _store_accel(self, i, rx):
        value = rx[1] | (rx[2] << 8)
        self._x[i] = value - ((value & 0x8000) << 1)
        value = rx[3] | (rx[4] << 8)
        self._y[i] = value - ((value & 0x8000) << 1)
        value = rx[5] | (rx[6] << 8)
        self._z[i] = value - ((value & 0x8000) << 1)

    def _end_block(self):
        if self._keep:
            head = self._head
            self._skipped_before[head] = self._skipped
            self._skipped = 0
            self._head = (head + 1) % self.slots
            self._published = (self._published + 1) & _MASK16
        elif self._skipped < _MASK16:
            self._skipped += 1

    # -- the main-loop side ------------------------------------------------------------------

    def ready(self):
        """True when a complete block waits in the ring."""
        return ((self._published - self._consumed) & _MASK16) != 0

    def block(self):
        """(base, stamp, skipped_before) of the oldest complete block: its first sample's
        offset in the rings, its stamp() (low 30 bits of the MCU clock), and the number of
        whole blocks dropped (overrun) just before it."""
        tail = self._tail
        return tail * self.block_samples, self._stamps[tail], self._skipped_before[tail]

    def release(self):
        """Give the oldest block's slot back to the interrupt."""
        self._tail = (self._tail + 1) % self.slots
        self._consumed = (self._consumed + 1) & _MASK16

    def pending_skipped(self):
        """Blocks dropped since the last complete one (an overrun not yet followed by a block)."""
        return self._skipped

    def samples(self, channel, base):
        """The block's samples of `channel`, a memoryview of int16 into the ring."""
        return memoryview(self.rings[channel])[base : base + self.block_samples]

    def features(self, channel, base):
        """(mean, rms, peak) of the block's samples of `channel`; peak is the largest |sample|."""
        ring = self.rings[channel]
        total = 0
        squares = 0
        peak = 0
        for i in range(base, base + self.block_samples):
            value = ring[i]
            total += value
            squares += value * value
            if value < 0:
                value = -value
            if value > peak:
                peak = value
        count = self.block_samples
        return total / count, (squares / count) ** 0.5, float(peak)
