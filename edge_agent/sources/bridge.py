"""The sensor bridge source: the board's frames -> calibrated samples stamped in host time.

Two parts, as h11 splits a protocol from its socket:

- `BridgeCore` is sans-IO: bytes and the host time they arrived at go in, `Sample`s and the
  command replies come out; it builds the commands' bytes. It maps the board's uint32 ticks
  to host stamps (`ClockAlignment`: NTP-style PING/PONG round trips, the least-delayed one
  per window, a linear fit for drift) and counts everything it drops.
- `BridgeSource` is the asyncio shell: it opens the serial port (pyserial, non-blocking),
  reads only when the event loop says the port is readable, identifies the board, sets the
  rates, starts the stream, pings, and reopens the port with backoff when it goes away.

Never writes to the machine, never blocks the event loop, never stops the agent: bad input
costs a counted frame and one log line; an unplugged or incompatible board is retried.
docs/bridge-host.md says what it does; docs/bridge-protocol.md is the frame spec.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import struct
from collections import Counter, deque
from collections.abc import Callable

from firmware_bridge import protocol

from ..backoff import Backoff
from ..config import AgentConfig
from ..samples import Quality, Sample
from .base import Declaration, SourceChannel, SourceStats
from .bridge_config import BridgeChannel, BridgeConfig

log = logging.getLogger(__name__)

#: How long the start waits for the board to identify, so that the birth carries its firmware
#: version: a board answers in milliseconds; an absent one delays the start this long (its
#: identity then goes out in a later birth and a `bridge_identified` event).
IDENTIFY_WAIT_S = 2.0

#: The core's counters that are its work, not something gone wrong.
WORK = ("frames", "blocks", "raw_samples")

_WRAP = 1 << 32
_HALF = 1 << 31
_US = 1000  # ns per µs


class TickUnwrapper:
    """The board's uint32 µs ticks (wrapping every 71.6 min) as one growing count. A tick up
    to 2**31 µs (35 min) behind the newest is older, not wrapped: a PONG's receive tick
    arrives after later block ticks."""

    def __init__(self) -> None:
        self._last_raw: int | None = None
        self._last = 0

    def unwrap(self, ticks: int) -> int:
        if self._last_raw is None:
            self._last_raw = self._last = ticks
            return ticks
        step = (ticks - self._last_raw) % _WRAP
        if step >= _HALF:
            return self._last - (_WRAP - step)
        self._last_raw, self._last = ticks, self._last + step
        return self._last


class ClockAlignment:
    """Board time (ns, unwrapped) -> host time (ns), from PING/PONG round trips.

    Each round trip gives four stamps: host send t1, board receive t2, board send t3, host
    receive t4. As in NTP, offset = ((t2 - t1) + (t3 - t4)) / 2 (board minus host) and
    delay = (t4 - t1) - (t3 - t2); the offset's error is at most delay / 2, and is smallest
    for the least-delayed trip. So: of every `window` round trips keep the least-delayed one
    (a point), and fit offset = a + b x board time by least squares over the last `points`
    points, each weighted by 1 / delay² (b is the crystals' drift, tens of ppm). Until two
    points exist the best trip so far is used as it is.

    A round trip whose offset is further from the fit than its own delay / 2 plus
    `step_tolerance_ns` cannot be explained by the delay: the host's clock jumped (NTP's
    first sync) or the board restarted. Two such in a row restart the fit (`resyncs`).
    """

    # 4 round trips per point and 32 points: at one PING per 0.5 s a point every 2 s and a fit
    # over 64 s. Measured on simulated time (tests/test_bridge_source.py, 80..1500 µs each
    # way, 50 ppm drift): 40-60 µs mean error, under 200 µs after the first 30 s; 16 trips
    # per point and 8 points gave twice that (docs/bridge-host.md).
    def __init__(self, window: int = 4, points: int = 32, step_tolerance_ns: int = 5_000_000):
        self.window_size, self.step_tolerance_ns = window, step_tolerance_ns
        self._window: list[tuple[int, int, float]] = []  # (delay, board ns, offset ns)
        self.points: deque[tuple[int, float, int]] = deque(maxlen=points)  # (x, offset, delay)
        self._fit: tuple[float, float, float] | None = None  # (x0, offset at x0, slope)
        self._steps = 0
        self.resyncs = 0
        self.round_trips = 0
        self.last_delay_ns = 0

    @property
    def ready(self) -> bool:
        return self._fit is not None

    def reset(self) -> None:
        self._window.clear()
        self.points.clear()
        self._fit = None
        self._steps = 0

    def add(self, t1_ns: int, t2_ns: int, t3_ns: int, t4_ns: int) -> bool:
        """One round trip (host, board, board, host ns); False when it is impossible."""
        delay = (t4_ns - t1_ns) - (t3_ns - t2_ns)
        if t4_ns < t1_ns or t3_ns < t2_ns or delay < -self.step_tolerance_ns:
            return False
        delay = max(delay, 0)
        offset = ((t2_ns - t1_ns) + (t3_ns - t4_ns)) / 2
        board = (t2_ns + t3_ns) // 2
        self.round_trips += 1
        self.last_delay_ns = delay
        if self._fit is not None:
            off_fit = abs(offset - self._offset_at(board))
            if off_fit > delay / 2 + self.step_tolerance_ns:
                self._steps += 1
                if self._steps < 2:
                    return True
                self.resyncs += 1
                self.reset()
            else:
                self._steps = 0
        self._window.append((delay, board, offset))
        if len(self._window) >= self.window_size:
            delay, x, y = min(self._window)
            self.points.append((x, y, delay))
            self._window.clear()
        self._refit()
        return True

    def to_host_ns(self, board_ns: int) -> int | None:
        if self._fit is None:
            return None
        return round(board_ns - self._offset_at(board_ns))

    def _offset_at(self, board_ns: int) -> float:
        x0, y0, slope = self._fit
        return y0 + slope * (board_ns - x0)

    def _refit(self) -> None:
        points = list(self.points)
        if len(points) < 2 and self._window:
            delay, x, y = min(self._window)
            points.append((x, y, delay))
        if not points:
            return
        # Weighted least squares: a point's error is bounded by its delay / 2, so weight
        # 1 / (delay + 50 µs)² (50 µs: what no round trip beats, so one lucky trip does not
        # take all the weight).
        weights = [1 / (d + 50_000) ** 2 for _, _, d in points]
        total = sum(weights)
        x0 = sum(w * x for w, (x, _, _) in zip(weights, points, strict=True)) / total
        y0 = sum(w * y for w, (_, y, _) in zip(weights, points, strict=True)) / total
        sxx = sum(w * (x - x0) ** 2 for w, (x, _, _) in zip(weights, points, strict=True))
        slope = 0.0
        if len(points) >= 2 and sxx > 0:
            slope = (
                sum(w * (x - x0) * (y - y0) for w, (x, y, _) in zip(weights, points, strict=True))
                / sxx
            )
        self._fit = (x0, y0, slope)


def calibrate(channel: BridgeChannel, kind: str, mean: float, rms: float, peak: float) -> float:
    """A feature in the channel's unit. For y = s·x + o: mean(y) = s·mean + o, and exactly
    rms(y) = sqrt(s²·rms² + 2·s·o·mean + o²); the peak is the swing |s|·peak (max |x| alone
    cannot tell where the offset puts the largest |y|)."""
    s, o = channel.scale, channel.offset
    if kind == "mean":
        return s * mean + o
    if kind == "rms":
        return math.sqrt(max(0.0, s * s * rms * rms + 2 * s * o * mean + o * o))
    return abs(s) * peak


def bridge_quantum(scale: float, kind: str) -> float:
    """A bridge channel's default quantum: one ADC count for raw samples and peaks (integers
    of counts on the board), a hundredth of one for the block mean and RMS (averages)."""
    return abs(scale) if kind in ("raw", "peak") else abs(scale) / 100


def declare(config: AgentConfig) -> Declaration:
    """The bridge's channels (docs/bridge-host.md): its raw channels share one time group
    (every sample, at the board's rate), its feature channels another (one value a block)."""
    return Declaration(
        ("raw", "features"),
        tuple(
            SourceChannel(
                name,
                board.unit,
                bridge_quantum(board.scale, kind),
                period_s,
                "raw" if kind == "raw" else "features",
                "the bridge",
            )
            for name, board, kind, period_s in config.bridge.streams()
        ),
    )


class BridgeCore:
    """Frames in, samples out; sans-IO (no port, no clock of its own: the caller passes the
    host time, `Clock.stamp_ns()`, at which each chunk of bytes arrived).

    `receive(data, host_ns)` returns (samples, replies): samples of every configured channel
    (a block's raw samples of every raw channel together, so that they land in one telemetry
    frame), and the frames the shell acts on (IDENTITY, ACK, PONG, ERROR). Stamps never go
    backwards: a block mapped before the end of the previous one starts just after it.
    """

    def __init__(self, cfg: BridgeConfig):
        self.cfg = cfg
        self.decoder = protocol.Decoder()
        self.align = ClockAlignment()
        self._ticks = TickUnwrapper()
        self.counters: Counter[str] = Counter()
        self.last_error: str | None = None  # one line: the last payload this core dropped
        self._by_index = {c.index: c for c in cfg.channels}
        self._raw = sorted(c.index for c in cfg.channels if c.raw)
        self._period_ns = 1e9 / cfg.sample_hz
        self._seq = 0
        self._floor_ns = 0  # the earliest stamp the next block may have: never backwards
        self.reset()

    def reset(self) -> None:
        """A new connection: the board may have restarted, its ticks with it."""
        self.decoder.reset_sequence()
        self.align.reset()
        self._ticks = TickUnwrapper()
        self._block: tuple[int, int | None] | None = None  # (ticks, host ns) of the block
        self._pending: dict[int, tuple[int, tuple[int, ...]]] = {}
        self._pending_key: int | None = None
        self._next_block: int | None = None

    def stats(self) -> dict[str, int]:
        """Every counter: the decoder's (frames, crc_errors, malformed, oversize, seq_gaps,
        frames_lost, seq_rewinds) and the core's."""
        d = self.decoder
        out = {
            "frames": d.frames,
            "crc_errors": d.crc_errors,
            "malformed": d.malformed,
            "oversize": d.oversize,
            "seq_gaps": d.seq_gaps,
            "frames_lost": d.frames_lost,
            "seq_rewinds": d.seq_rewinds,
            "resyncs": self.align.resyncs,
        }
        out.update(self.counters)
        return out

    # -- commands --------------------------------------------------------------------------

    def command(self, ftype: int, payload: bytes, host_ns: int) -> tuple[int, bytes]:
        """(seq, bytes) of one command frame; ticks_us carries the host's µs, low 32 bits."""
        seq, self._seq = self._seq, (self._seq + 1) & 0xFFFF
        return seq, protocol.encode(ftype, seq, (host_ns // _US) % _WRAP, payload)

    def identify(self, host_ns: int) -> tuple[int, bytes]:
        """IDENTIFY after a 0x00, so that the board drops whatever partial frame it holds."""
        seq, data = self.command(protocol.IDENTIFY, b"", host_ns)
        return seq, b"\x00" + data

    def set_rates(self, host_ns: int) -> tuple[int, bytes]:
        rates = {"sample_hz": self.cfg.sample_hz, "block_samples": self.cfg.block_samples}
        return self.command(protocol.SET_RATES, protocol.pack_json(rates), host_ns)

    def start(self, host_ns: int) -> tuple[int, bytes]:
        channels = sorted(self._by_index)
        payload = protocol.pack_json({"channels": channels, "raw": self._raw})
        return self.command(protocol.START, payload, host_ns)

    def stop(self, host_ns: int) -> tuple[int, bytes]:
        return self.command(protocol.STOP, b"", host_ns)

    def ping(self, host_ns: int) -> tuple[int, bytes]:
        """A PING whose token is the host's send time (the PONG brings it back)."""
        return self.command(protocol.PING, struct.pack("<q", host_ns), host_ns)

    # -- frames ----------------------------------------------------------------------------

    def receive(self, data: bytes, host_ns: int) -> tuple[list[Sample], list[protocol.Frame]]:
        samples: list[Sample] = []
        replies: list[protocol.Frame] = []
        for frame in self.decoder.feed(data):
            try:
                if frame.ftype == protocol.RAW:
                    self._on_raw(frame, samples)
                elif frame.ftype == protocol.FEATURES:
                    self._on_features(frame, samples)
                elif frame.ftype == protocol.PONG:
                    self._on_pong(frame, host_ns)
                    replies.append(frame)
                elif frame.ftype == protocol.ERROR:
                    self._on_error(frame)
                    replies.append(frame)
                elif frame.ftype == protocol.ACK:
                    protocol.parse_ack(frame.payload)  # a bad one is dropped here, counted
                    replies.append(frame)
                elif frame.ftype == protocol.IDENTITY:
                    replies.append(frame)
                else:
                    raise protocol.ProtocolError(f"unexpected frame type 0x{frame.ftype:02x}")
            except protocol.ProtocolError as exc:
                self.counters["bad_payloads"] += 1
                name = protocol.TYPE_NAMES.get(frame.ftype, f"0x{frame.ftype:02x}")
                self.last_error = f"bridge {name} frame seq {frame.seq} dropped: {exc}"
        self._flush_raw(samples, complete_only=True)
        return samples, replies

    def _on_pong(self, frame: protocol.Frame, host_ns: int) -> None:
        token, rx_ticks = protocol.parse_pong(frame.payload)
        (sent_ns,) = struct.unpack("<q", token)
        rx = self._ticks.unwrap(rx_ticks) * _US
        tx = self._ticks.unwrap(frame.ticks) * _US
        if not self.align.add(sent_ns, rx, tx, host_ns):
            self.counters["bad_pongs"] += 1

    def _on_error(self, frame: protocol.Frame) -> None:
        code, message = protocol.parse_error(frame.payload)
        if code == "overrun":
            dropped = protocol.parse_json(frame.payload).get("dropped_samples")
            if dropped is not None and not (type(dropped) is int and 0 <= dropped < _WRAP):
                # a counter the metrics export as a float: 10**300 would break every scrape
                raise protocol.ProtocolError(
                    f"overrun: dropped_samples {dropped!r:.40} is not a count 0..2**32 - 1"
                )
            self.counters["overruns"] += 1
            self.counters["samples_dropped_by_board"] += dropped or 0
        else:
            self.counters["errors_from_board"] += 1

    def _block_ns(self, ticks: int, samples: int) -> int | None:
        """Host ns of a block's first sample (the header's ticks), or None before the clock
        is aligned; cached, since FEATURES and the RAW frames of a block share their ticks."""
        if self._block is not None and self._block[0] == ticks:
            return self._block[1]
        host = self.align.to_host_ns(self._ticks.unwrap(ticks) * _US)
        if host is not None:
            if host < self._floor_ns:
                self.counters["stamps_held"] += 1
                host = self._floor_ns
            self._floor_ns = host + round((samples - 1) * self._period_ns) + _US
        self._block = (ticks, host)
        return host

    def _on_features(self, frame: protocol.Frame, samples: list[Sample]) -> None:
        block_index, block_samples, features = protocol.parse_features(frame.payload)
        self._flush_raw(samples, complete_only=False)  # a new block: the last one is done
        if self._next_block is not None and block_index != self._next_block:
            self.counters["blocks_lost"] += (block_index - self._next_block) % _WRAP
        self._next_block = (block_index + 1) % _WRAP
        self.counters["blocks"] += 1
        stamp = self._block_ns(frame.ticks, block_samples)
        if stamp is None:
            self.counters["unaligned_blocks"] += 1
            return
        for index, mean, rms, peak in features:
            channel = self._by_index.get(index)
            if channel is None:
                continue
            for kind in channel.features:
                value = calibrate(channel, kind, mean, rms, peak)
                quality = Quality.GOOD if math.isfinite(value) else Quality.BAD
                samples.append(Sample(f"{channel.name}_{kind}", stamp, value, quality))

    def _on_raw(self, frame: protocol.Frame, samples: list[Sample]) -> None:
        index, first, values = protocol.parse_raw(frame.payload)
        if index not in self._raw:
            self.counters["unexpected_raw"] += 1
            return
        if self._pending_key is not None and self._pending_key != frame.ticks:
            self._flush_raw(samples, complete_only=False)
        self._pending_key = frame.ticks
        self._pending[index] = (first, values)

    def _flush_raw(self, samples: list[Sample], complete_only: bool) -> None:
        """The pending block's raw samples, once every raw channel's frame is in (or, with
        complete_only False, whatever came of it: a lost RAW frame costs its channel only)."""
        if not self._pending or (complete_only and len(self._pending) < len(self._raw)):
            return
        ticks, pending = self._pending_key, self._pending
        self._pending, self._pending_key = {}, None
        count = max(len(values) for _, values in pending.values())
        start = self._block_ns(ticks, count)
        if start is None:
            self.counters["unaligned_blocks"] += 1
            return
        period = self._period_ns
        stamps = [start + round(i * period) for i in range(count)]
        for index in sorted(pending):
            channel = self._by_index[index]
            s, o = channel.scale, channel.offset
            _, values = pending[index]
            samples.extend(
                Sample(channel.name, stamp, s * raw + o)
                for stamp, raw in zip(stamps, values, strict=False)
            )
            self.counters["raw_samples"] += len(values)


class _Lost(Exception):
    """The port went away or stopped answering: close, back off, reopen."""


class _Refused(Exception):
    """The board cannot work with this agent (incompatible version, a refused command):
    said once, retried slowly."""


#: Tries of one handshake command before the port is reopened.
COMMAND_TRIES = 3
#: How often dropped-frame counts are logged at most (one line then, with the counts).
DROP_LOG_INTERVAL_S = 10.0


def open_serial(path: str, baudrate: int):
    """The port, non-blocking (timeout 0): reads and writes never wait."""
    import serial  # pyserial; imported here so the core runs without it

    return serial.Serial(path, baudrate=baudrate, timeout=0, write_timeout=0, exclusive=True)


class BridgeSource:
    """The bridge on one serial port, for as long as `run()` runs."""

    name = "bridge"
    controller = False
    ready_wait_s = IDENTIFY_WAIT_S

    def __init__(
        self,
        cfg: BridgeConfig,
        clock,
        emit: Callable[[list[Sample]], None],
        on_identity: Callable[[dict], None] | None = None,
        open_port: Callable[[str, int], object] | None = None,
    ):
        self.cfg, self.clock, self.emit = cfg, clock, emit
        self.on_identity = on_identity
        self.open_port = open_port or open_serial
        self.core = BridgeCore(cfg)
        self.backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s)
        self.state = "closed"
        self.identity: dict | None = None
        self.reconnects = 0
        self.sessions = 0
        self.emitted = 0  # samples
        self._identified = asyncio.Event()
        self._port = None
        self._fd = -1
        self._out = bytearray()
        self._replies: asyncio.Queue[protocol.Frame] = asyncio.Queue()
        self._lost: asyncio.Future | None = None
        self._last_rx_ns = 0
        self._awaiting = False  # a command waits for its answer
        self._drops_logged = (0, 0.0)  # (dropped frames then, monotonic s)

    def counts(self) -> dict[str, int]:
        """The core's counters and the shell's reconnects."""
        return {**self.core.stats(), "reconnects": self.reconnects}

    @property
    def connected(self) -> bool:
        return self.state == "streaming"

    def stats(self) -> SourceStats:
        faults = self.core.stats()
        counts = {k: faults.pop(k, 0) for k in WORK}
        return SourceStats(
            self.name,
            self.cfg.port,
            self.state,
            self.state == "streaming",
            self.emitted,
            self.sessions,
            self.reconnects,
            counts,
            faults,
        )

    async def wait_ready(self, timeout_s: float | None) -> bool:
        try:
            await asyncio.wait_for(self._identified.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def take_writer(self, loop: asyncio.AbstractEventLoop):
        raise RuntimeError(f"bridge {self.cfg.port}: a sensor bridge cannot write to the machine")

    def write_targets(self, control):
        return {}

    def _note(self, state: str, level: int, message: str, *args) -> None:
        """One log line per change of state; retries in the same state say nothing."""
        if state != self.state:
            log.log(level, "bridge %s: " + message, self.cfg.port, *args)
        self.state = state

    async def run(self) -> None:
        try:
            while True:
                refused = False
                try:
                    await self._session()
                except _Refused as exc:
                    self._note(f"refused: {exc}", logging.ERROR, "%s; retrying slowly", exc)
                    refused = True
                except _Lost as exc:
                    if self.state == "streaming":
                        self.reconnects += 1
                    self._note("lost", logging.WARNING, "%s; reconnecting", exc)
                except Exception as exc:  # a bug must not end the source, nor the agent
                    self.core.counters["internal_errors"] += 1
                    if self.state != "failed":
                        log.exception("bridge %s: session failed: %s", self.cfg.port, exc)
                    self.state = "failed"
                    refused = True  # retried slowly, as a refusal
                finally:
                    self._close()
                delay = self.cfg.reconnect_max_s if refused else self.backoff.next_delay()
                await asyncio.sleep(delay)
        finally:
            self._close()

    async def _session(self) -> None:
        try:
            self._port = self.open_port(self.cfg.port, self.cfg.baudrate)
            self._fd = self._port.fileno()
        except (OSError, ValueError) as exc:  # serial.SerialException is an OSError
            raise _Lost(f"cannot open ({_one_line(exc)})") from None
        loop = asyncio.get_running_loop()
        self._lost = loop.create_future()
        self._replies = asyncio.Queue()
        self._out.clear()
        self.core.reset()
        self._last_rx_ns = self.clock.monotonic_ns()
        loop.add_reader(self._fd, self._on_readable)
        self.sessions += 1
        identity = await self._handshake()
        self.backoff.reset()
        self._note(
            "streaming",
            logging.INFO,
            "board %s, firmware %s: streaming %d channels at %d Hz in blocks of %d",
            protocol.printable(identity["board"]),
            protocol.printable(identity["firmware"]),
            len(self.cfg.channels),
            self.cfg.sample_hz,
            self.cfg.block_samples,
        )
        await self._stream()

    async def _handshake(self) -> dict:
        reply = await self._request(self.core.identify, "IDENTIFY", protocol.IDENTITY)
        try:
            identity = protocol.check_identity(reply.payload)
        except protocol.ProtocolError as exc:
            raise _Refused(str(exc)) from None
        self.identity = identity
        self._identified.set()
        if self.on_identity is not None:
            self.on_identity(identity)
        # A board that outlived the last connection may still be streaming (USB CDC keeps
        # it powered): STOP first (ACKed also when idle), or SET_RATES would be refused busy.
        await self._request(self.core.stop, "STOP", protocol.ACK)
        await self._request(self.core.ping, "PING", protocol.PONG)  # align before the stream
        await self._request(self.core.set_rates, "SET_RATES", protocol.ACK)
        await self._request(self.core.start, "START", protocol.ACK)
        return identity

    async def _stream(self) -> None:
        silence_ns = round((3 * self.cfg.ping_interval_s + self.cfg.command_timeout_s) * 1e9)
        rewinds = self.core.decoder.seq_rewinds
        while True:
            self._send(self.core.ping(self.clock.stamp_ns())[1])
            await self._wait_lost(self.cfg.ping_interval_s)
            if self.clock.monotonic_ns() - self._last_rx_ns > silence_ns:
                raise _Lost(f"no frames for {silence_ns / 1e9:.1f} s")
            if self.core.decoder.seq_rewinds > rewinds:
                raise _Lost("the board restarted (its frame numbers started again)")
            self._log_drops()

    async def _request(self, make, what: str, answer: int) -> protocol.Frame:
        """Send a command until it is answered (`answer`: the reply type; an ACK must name
        the command's seq); an ERROR answer is a refusal."""
        self._awaiting = True
        try:
            return await self._answer(make, what, answer)
        finally:
            self._awaiting = False
            self._replies = asyncio.Queue()

    async def _answer(self, make, what: str, answer: int) -> protocol.Frame:
        for _ in range(COMMAND_TRIES):
            seq, data = make(self.clock.stamp_ns())
            self._send(data)
            deadline = self.clock.monotonic_ns() + round(self.cfg.command_timeout_s * 1e9)
            while (left := deadline - self.clock.monotonic_ns()) > 0:
                reply = await self._next_reply(left / 1e9)
                if reply is None:
                    break
                if reply.ftype == protocol.ERROR:
                    code, message = protocol.parse_error(reply.payload)
                    if code not in ("overrun", "bad_frame"):
                        raise _Refused(
                            f"the board refused {what}: "
                            f"{protocol.printable(code)}: {protocol.printable(message)}"
                        )
                elif reply.ftype == answer and (
                    answer != protocol.ACK or protocol.parse_ack(reply.payload)[0] == seq
                ):
                    return reply
        raise _Lost(f"no answer to {what} after {COMMAND_TRIES} tries")

    async def _next_reply(self, timeout_s: float) -> protocol.Frame | None:
        get = asyncio.ensure_future(self._replies.get())
        await asyncio.wait(
            {get, self._lost}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if not get.done():
            get.cancel()
        if self._lost.done():
            raise _Lost(self._lost.result())
        return get.result() if get.done() and not get.cancelled() else None

    async def _wait_lost(self, timeout_s: float) -> None:
        done, _ = await asyncio.wait({self._lost}, timeout=timeout_s)
        if done:
            raise _Lost(self._lost.result())

    # -- the port's callbacks (on the event loop) -----------------------------------------------

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lose(f"read failed ({_one_line(exc)}; unplugged?)")
            return
        if not data:
            self._lose("the port closed (unplugged?)")
            return
        self._last_rx_ns = self.clock.monotonic_ns()
        try:
            samples, replies = self.core.receive(data, self.clock.stamp_ns())
        except Exception as exc:  # a bug must not stop the agent: say it, drop the chunk
            self.core.counters["internal_errors"] += 1
            log.exception("bridge %s: chunk dropped: %s", self.cfg.port, exc)
            return
        if samples:
            self.emitted += len(samples)
            self.emit(samples)
        for reply in replies:
            if reply.ftype == protocol.ERROR:
                self._log_board_error(reply)
            if self._awaiting:  # while streaming, nobody waits for PONGs: not kept
                self._replies.put_nowait(reply)

    def _log_board_error(self, frame: protocol.Frame) -> None:
        try:
            code, message = protocol.parse_error(frame.payload)
        except protocol.ProtocolError:
            return
        level = logging.WARNING if code == "overrun" else logging.INFO
        log.log(
            level,
            "bridge %s: the board says %s: %s",
            self.cfg.port,
            protocol.printable(code),
            protocol.printable(message),
        )

    def _log_drops(self) -> None:
        """At most one line per DROP_LOG_INTERVAL_S about frames and payloads dropped."""
        s = self.counts()
        dropped = s["crc_errors"] + s["malformed"] + s["oversize"] + s.get("bad_payloads", 0)
        then, at = self._drops_logged
        now = self.clock.monotonic_ns() / 1e9
        if dropped > then and (then == 0 or now - at >= DROP_LOG_INTERVAL_S):
            last = self.core.decoder.last_error or self.core.last_error
            log.warning(
                "bridge %s: %d frames dropped so far (%d CRC, %d malformed, %d oversize, "
                "%d bad payloads); last: %s",
                self.cfg.port,
                dropped,
                s["crc_errors"],
                s["malformed"],
                s["oversize"],
                s.get("bad_payloads", 0),
                last,
            )
            self._drops_logged = (dropped, now)

    def _send(self, data: bytes) -> None:
        """Queue bytes for the port; written now, the rest when it is writable."""
        if self._fd < 0:
            return
        self._out += data
        self._write_out()

    def _write_out(self) -> None:
        try:
            sent = os.write(self._fd, self._out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._lose(f"write failed ({_one_line(exc)}; unplugged?)")
            return
        del self._out[:sent]
        loop = asyncio.get_running_loop()
        if self._out:
            loop.add_writer(self._fd, self._write_out)
        else:
            loop.remove_writer(self._fd)

    def _lose(self, reason: str) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(reason)
        if self._fd >= 0:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._fd)
            loop.remove_writer(self._fd)

    def _close(self) -> None:
        """Stop the stream if the port still takes it (best effort), and close the port."""
        if self._port is None:
            return
        if self._lost is not None and not self._lost.done() and self.state == "streaming":
            with _quiet():
                os.write(self._fd, self.core.stop(self.clock.stamp_ns())[1])
        with _quiet():
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._fd)
            loop.remove_writer(self._fd)
        with _quiet():
            self._port.close()
        self._port, self._fd = None, -1
        if self.state == "streaming":
            self.state = "closed"


class _quiet:
    """Suppress OSError (and RuntimeError from a closed loop) while tearing down."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is not None and issubclass(kind, (OSError, RuntimeError, ValueError))


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text or type(exc).__name__
