"""The bridge frame protocol: bytes in, frames out, and back; one codec for board and host.

Sans-IO: never touches a port, a clock or a file, never blocks, never imports `edge_agent`,
and never holds more than one maximum-size encoded frame (MAX_ENCODED bytes) of input. The
same source runs on CPython 3.11 (the agent) and on MicroPython (the RP2040 firmware, and the
unix port in the tests), so it uses only what both have: no dataclasses, no typing, no
annotations, no f-strings, no struct.Struct, no bytearray.clear(); ints are range-checked
by hand because MicroPython's struct.pack silently truncates what CPython's refuses.
docs/bridge-protocol.md is the spec, byte for byte, with test vectors.

A frame before framing (all integers little-endian)::

    0      version      uint8   PROTOCOL_VERSION (1)
    1      type         uint8   see the table below
    2..3   seq          uint16  per sender, +1 per frame sent, wraps 65535 -> 0
    4..7   ticks_us     uint32  MCU (or host) microseconds, wraps 2**32 - 1 -> 0
    8..    payload      0..MAX_PAYLOAD (1000) bytes
    last 4 crc          uint32  CRC-32 (IEEE, as zlib.crc32) of every byte before it

then COBS-encoded (no 0x00 left in it) and followed by one 0x00 delimiter. An encoded frame,
delimiter included, is at most MAX_ENCODED (1024) bytes.

    type  name       direction      payload
    0x01  IDENTIFY   host -> board  empty
    0x02  SET_RATES  host -> board  JSON {"sample_hz": int, "block_samples": int}
    0x03  START      host -> board  empty, or JSON {"channels": [int, ...]}
    0x04  STOP       host -> board  empty
    0x05  PING       host -> board  8-byte host time token
    0x06  SEND_RAW   host -> board  JSON {"channel": int, "blocks": int}
    0x81  IDENTITY   board -> host  JSON {"board": str, "firmware": str, "protocol": int}
    0x82  ACK        board -> host  uint16 seq + uint8 type of the command acknowledged
    0x85  PONG       board -> host  the PING's 8-byte token + uint32 ticks_us at receipt
    0x90  FEATURES   board -> host  per block, per channel: mean, RMS, peak (float32)
    0x91  RAW        board -> host  a block of int16 samples of one channel
    0xFF  ERROR      board -> host  JSON {"code": str, "message": str}
"""

import json
import struct
from collections import namedtuple

try:
    from micropython import const
except ImportError:  # CPython

    def const(value):
        return value


try:
    from binascii import crc32 as _native_crc32
except ImportError:  # a MicroPython build without MICROPY_PY_BINASCII_CRC32
    _native_crc32 = None

PROTOCOL_VERSION = const(1)
MAX_PAYLOAD = const(1000)
HEADER_SIZE = const(8)
CRC_SIZE = const(4)
MIN_FRAME = const(12)  # HEADER_SIZE + CRC_SIZE: a frame with an empty payload
MAX_FRAME = const(1012)  # HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE, before COBS
# COBS adds one byte per 254 (1012 -> at most 1016) and the delimiter one more: 1017 bytes
# fit in 1 KiB with room to spare, and 1 KiB is all the decoder ever buffers (the RP2040
# has 264 KB of RAM for everything; a UART's FIFO is 32 bytes, so frames arrive in pieces).
MAX_ENCODED = const(1024)

IDENTIFY = const(0x01)
SET_RATES = const(0x02)
START = const(0x03)
STOP = const(0x04)
PING = const(0x05)
SEND_RAW = const(0x06)
IDENTITY = const(0x81)
ACK = const(0x82)
PONG = const(0x85)
FEATURES = const(0x90)
RAW = const(0x91)
ERROR = const(0xFF)

TYPE_NAMES = {
    IDENTIFY: "IDENTIFY",
    SET_RATES: "SET_RATES",
    START: "START",
    STOP: "STOP",
    PING: "PING",
    SEND_RAW: "SEND_RAW",
    IDENTITY: "IDENTITY",
    ACK: "ACK",
    PONG: "PONG",
    FEATURES: "FEATURES",
    RAW: "RAW",
    ERROR: "ERROR",
}

PING_TOKEN_SIZE = const(8)
RAW_HEADER_SIZE = const(8)  # channel, reserved, count, first sample index
MAX_RAW_SAMPLES = const(496)  # (MAX_PAYLOAD - RAW_HEADER_SIZE) // 2
FEATURES_HEADER_SIZE = const(8)  # block index, samples per block, channel count, reserved
FEATURE_SIZE = const(13)  # channel uint8 + mean, rms, peak float32
MAX_FEATURE_CHANNELS = const(76)  # (MAX_PAYLOAD - FEATURES_HEADER_SIZE) // FEATURE_SIZE
# Arrays and objects a JSON payload may nest: the deepest today is 2 ({"channels": [...]}),
# so 8 leaves room for later fields. CPython's json recurses once a level (1000 '[' in 1000
# bytes were a RecursionError), and so do repr and print of what it returns, on both sides.
MAX_JSON_DEPTH = const(8)
# How much of a bad value an error line quotes.
_QUOTE = const(60)

# CRC-32 of any data followed by its own CRC (4 bytes, little-endian) is this constant, so a
# frame is checked in one pass over all of it, with no slice of it made.
_CRC_RESIDUE = const(0x2144DF1C)
_SEQ_HALF = const(0x8000)

# One decoded frame: type, sequence number, ticks_us and payload (bytes). A namedtuple, not a
# dataclass: MicroPython has namedtuple, and a frame compares equal to a plain 4-tuple.
Frame = namedtuple("Frame", ("ftype", "seq", "ticks", "payload"))


class ProtocolError(ValueError):
    """A frame, payload or argument breaks the protocol; the message is one line saying how."""


# -- CRC-32 ---------------------------------------------------------------------------------

_crc_table = None


def _make_crc_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xEDB88320 if crc & 1 else crc >> 1
        table.append(crc)
    return table


def crc32_fallback(data, crc=0):
    """CRC-32 (IEEE 802.3, reflected, as zlib.crc32) in plain Python, table-driven: for
    MicroPython builds whose binascii has no crc32. Same arguments and result as crc32."""
    global _crc_table
    if _crc_table is None:
        _crc_table = _make_crc_table()
    table = _crc_table
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


crc32 = _native_crc32 if _native_crc32 is not None else crc32_fallback


# -- COBS -----------------------------------------------------------------------------------


def cobs_encode(data):
    """`data` in Consistent Overhead Byte Stuffing: the same bytes with no 0x00 left in them,
    at most one byte longer per 254. A run of 254 non-zero bytes that ends the data takes no
    trailing code byte (the canonical form). Returns a bytearray, without the delimiter."""
    out = bytearray()
    size = len(data)
    start = 0
    while True:
        zero = data.find(b"\x00", start)
        end = size if zero < 0 else zero
        full_block = False
        while end - start >= 254:
            out.append(0xFF)
            out += data[start : start + 254]
            start += 254
            full_block = True
        if zero < 0:
            if not (full_block and start == size):
                out.append(size - start + 1)
                out += data[start:size]
            return out
        out.append(zero - start + 1)
        out += data[start:zero]
        start = zero + 1


def _cobs_decode(body):
    """The bytes `body` (no 0x00 in it, no delimiter) stands for, or None when a code byte
    points past its end."""
    out = bytearray()
    size = len(body)
    i = 0
    while i < size:
        code = body[i]
        end = i + code
        if code == 0 or end > size:
            return None
        out += body[i + 1 : end]
        i = end
        if code != 0xFF and i < size:
            out.append(0)
    return out


def cobs_decode(body):
    """The bytes a COBS `body` (no delimiter) stands for; ProtocolError when it is not COBS."""
    if b"\x00" in body:
        raise ProtocolError("not COBS: a 0x00 byte inside the frame")
    out = _cobs_decode(body)
    if out is None:
        raise ProtocolError("not COBS: a code byte points past the end of the frame")
    return out


# -- frames ---------------------------------------------------------------------------------


def _check_uint(name, value, limit):
    if type(value) is not int or value < 0 or value > limit:
        raise ProtocolError(name + " must be an int in 0.." + str(limit) + ", got " + repr(value))


def encode(ftype, seq, ticks_us, payload=b""):
    """One frame, COBS-encoded and followed by its 0x00 delimiter, ready for the wire.

    `seq` (0..65535) and `ticks_us` (0..2**32 - 1) are taken as they are: the caller wraps
    its counters (seq = (seq + 1) & 0xFFFF). ProtocolError on anything out of range."""
    _check_uint("frame type", ftype, 0xFF)
    _check_uint("seq", seq, 0xFFFF)
    _check_uint("ticks_us", ticks_us, 0xFFFFFFFF)
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(
            "payload of " + str(len(payload)) + " bytes, over the " + str(MAX_PAYLOAD) + " maximum"
        )
    raw = bytearray(struct.pack("<BBHI", PROTOCOL_VERSION, ftype, seq, ticks_us))
    raw += payload
    raw += struct.pack("<I", crc32(raw))
    out = cobs_encode(raw)
    out.append(0)
    return bytes(out)


class Decoder:
    """Turns a byte stream into frames: `feed(data)` returns the frames completed by `data`.

    Never raises on input and never holds more than MAX_ENCODED bytes: whatever is not a
    good frame is dropped, counted in one of `crc_errors`, `oversize` or `malformed`, and
    described in `last_error` (one line); decoding resumes after the next 0x00. Empty frames
    (0x00 0x00, a sender flushing the line) are ignored and not counted.

    Sequence numbers: each sender numbers every frame it sends with one counter, so the
    decoder on one link sees one stream and counts its gaps (`seq_gaps` events, `frames_lost`
    frames in them) and its steps back (`seq_rewinds`: a duplicate, or a sender that
    restarted). What a gap means is the host's to decide; call `reset_sequence()` when the
    other side is known to have restarted (the link reopened, a new IDENTITY).
    """

    def __init__(self):
        self.frames = 0
        self.crc_errors = 0
        self.oversize = 0
        self.malformed = 0
        self.seq_gaps = 0
        self.frames_lost = 0
        self.seq_rewinds = 0
        self.last_error = None
        self._pending = bytearray(MAX_ENCODED)  # the start of a frame, awaiting its delimiter
        self._pending_len = 0
        self._skipping = False  # inside an oversize frame: drop up to the next 0x00
        self._last_seq = -1

    def reset_sequence(self):
        """Forget the last sequence number: the next frame starts a new stream, not a gap."""
        self._last_seq = -1

    def feed(self, data):
        """The frames (a list of Frame) that `data` (bytes or bytearray) completes."""
        frames = []
        if type(data) is memoryview:
            data = bytes(data)
        size = len(data)
        start = 0
        while start < size:
            end = data.find(b"\x00", start)
            if end < 0:
                self._keep(data, start, size)
                break
            if self._skipping:
                self._skipping = False
            elif self._pending_len:
                if self._pending_len + end - start >= MAX_ENCODED:
                    self._drop_oversize()
                else:
                    body = bytes(self._pending[: self._pending_len]) + data[start:end]
                    self._pending_len = 0
                    self._frame(body, frames)
            elif end - start >= MAX_ENCODED:
                self._drop_oversize()
            elif end > start:
                self._frame(data[start:end], frames)
            start = end + 1
        return frames

    def _keep(self, data, start, stop):
        """Hold data[start:stop], the start of a frame, unless it makes the frame oversize."""
        if self._skipping:
            return
        fill = self._pending_len
        if fill + stop - start >= MAX_ENCODED:
            self._drop_oversize()
            self._skipping = True
            return
        self._pending[fill : fill + stop - start] = data[start:stop]
        self._pending_len = fill + stop - start

    def _drop_oversize(self):
        self._pending_len = 0
        self.oversize += 1
        self.last_error = (
            "bridge frame dropped: no 0x00 delimiter within "
            + str(MAX_ENCODED)
            + " bytes (oversize frame or noise); resynchronising on the next 0x00"
        )

    def _frame(self, body, frames):
        raw = _cobs_decode(body)
        if raw is None:
            self.malformed += 1
            self.last_error = (
                "bridge frame dropped: bad COBS (a code byte points past the end of the "
                + str(len(body))
                + "-byte frame)"
            )
            return
        size = len(raw)
        if size < MIN_FRAME:
            self.malformed += 1
            self.last_error = (
                "bridge frame dropped: "
                + str(size)
                + " bytes, shorter than the "
                + str(MIN_FRAME)
                + "-byte minimum (header and CRC)"
            )
            return
        if crc32(raw) != _CRC_RESIDUE:
            self.crc_errors += 1
            sent = struct.unpack_from("<I", raw, size - CRC_SIZE)[0]
            computed = crc32(memoryview(raw)[: size - CRC_SIZE])
            self.last_error = (
                "bridge frame dropped: CRC mismatch (frame says "
                + _hex32(sent)
                + ", content gives "
                + _hex32(computed)
                + ", "
                + str(size)
                + " bytes)"
            )
            return
        version, ftype, seq, ticks = struct.unpack_from("<BBHI", raw, 0)
        if version != PROTOCOL_VERSION:
            self.malformed += 1
            self.last_error = (
                "bridge frame dropped: protocol version "
                + str(version)
                + ", this side speaks version "
                + str(PROTOCOL_VERSION)
            )
            return
        if size > MAX_FRAME:
            self.oversize += 1
            self.last_error = (
                "bridge frame dropped: payload of "
                + str(size - MIN_FRAME)
                + " bytes, over the "
                + str(MAX_PAYLOAD)
                + "-byte maximum"
            )
            return
        last = self._last_seq
        if last >= 0:
            step = (seq - last - 1) & 0xFFFF
            if step:
                if step < _SEQ_HALF:
                    self.seq_gaps += 1
                    self.frames_lost += step
                else:
                    self.seq_rewinds += 1
        self._last_seq = seq
        self.frames += 1
        frames.append(Frame(ftype, seq, ticks, bytes(raw[HEADER_SIZE : size - CRC_SIZE])))


def _hex32(value):
    text = hex(value)[2:]
    return "0x" + "0" * (8 - len(text)) + text


# -- payloads -------------------------------------------------------------------------------


def _dump_json(value):
    if type(value) is dict:
        items = []
        for key in sorted(value):
            if type(key) is not str:
                raise ProtocolError("JSON object keys must be str, got " + repr(key))
            items.append(json.dumps(key) + ":" + _dump_json(value[key]))
        return "{" + ",".join(items) + "}"
    if type(value) in (list, tuple):
        return "[" + ",".join([_dump_json(item) for item in value]) + "]"
    return json.dumps(value)


def pack_json(value):
    """A JSON payload: compact, object keys sorted at every level, UTF-8. Sorted because
    MicroPython's dicts keep no insertion order: this way both sides make the same bytes for
    the same value (for ASCII text, ints and bools; float text may differ between them)."""
    payload = _dump_json(value).encode("utf-8")
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(
            "JSON payload of " + str(len(payload)) + " bytes, over the " + str(MAX_PAYLOAD)
        )
    return payload


def parse_json(payload, what="JSON payload"):
    """The value a JSON payload holds; ProtocolError (one line naming `what`) when it is not
    UTF-8 JSON or nests deeper than MAX_JSON_DEPTH."""
    if _nesting(payload) > MAX_JSON_DEPTH:
        raise ProtocolError(
            what
            + " nests deeper than "
            + str(MAX_JSON_DEPTH)
            + " levels: "
            + _shown(bytes(payload[:_QUOTE]))
        )
    try:
        return json.loads(bytes(payload).decode("utf-8"))
    except (ValueError, UnicodeError):
        raise ProtocolError(what + " is not UTF-8 JSON: " + repr(bytes(payload[:40]))) from None


def _nesting(payload):
    """How deep arrays and objects nest in JSON text, strings skipped, counted on the bytes
    (no UTF-8 sequence holds an ASCII byte) without parsing: stops past MAX_JSON_DEPTH."""
    depth = 0
    in_string = escaped = False
    for byte in payload:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte == 0x5B or byte == 0x7B:  # [ {
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return depth
        elif byte == 0x5D or byte == 0x7D:  # ] }
            depth -= 1
    return depth if depth > 0 else 0


def printable(text):
    """A string from the other side (a board id, a version, an ERROR's message) for a log or
    error line: as it is, or quoted when it holds a control character (a newline, an escape),
    so that the line stays one line."""
    for char in text:  # MicroPython's str has no isprintable()
        code = ord(char)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            return repr(text)
    return text


def _shown(value):
    """repr(value) cut to _QUOTE characters: an error line quotes, it does not dump."""
    text = repr(value)
    return text if len(text) <= _QUOTE else text[: _QUOTE - 3] + "..."


def pack_identity(firmware, board):
    """IDENTITY payload: this firmware's version, the board's unique id, PROTOCOL_VERSION."""
    return pack_json({"board": board, "firmware": firmware, "protocol": PROTOCOL_VERSION})


def check_identity(payload):
    """The IDENTITY payload as a dict with str "board", str "firmware" and int "protocol";
    ProtocolError (one line naming both versions) when the board speaks another version."""
    identity = parse_json(payload, "IDENTITY payload")
    if type(identity) is not dict:
        raise ProtocolError("IDENTITY payload is not a JSON object: " + _shown(identity))
    version = identity.get("protocol")
    if type(version) is not int:
        raise ProtocolError("IDENTITY payload has no integer 'protocol': " + _shown(version))
    for key in ("board", "firmware"):
        if type(identity.get(key)) is not str:
            raise ProtocolError("IDENTITY payload has no string " + repr(key))
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            "bridge board "
            + printable(identity["board"])
            + " (firmware "
            + printable(identity["firmware"])
            + ") speaks protocol version "
            + str(version)
            + ", this side speaks version "
            + str(PROTOCOL_VERSION)
            + ": update the firmware or the agent so that they match"
        )
    return identity


def pack_error(code, message):
    """ERROR payload: a short machine-readable code ("bad_rates") and a one-line message."""
    return pack_json({"code": code, "message": message})


def parse_error(payload):
    """(code, message) of an ERROR payload."""
    error = parse_json(payload, "ERROR payload")
    if type(error) is not dict or type(error.get("code")) is not str:
        raise ProtocolError("ERROR payload has no string 'code': " + _shown(error))
    return error["code"], str(error.get("message", ""))


def pack_ack(seq, ftype):
    """ACK payload: the seq (uint16) and type (uint8) of the command it acknowledges."""
    _check_uint("acknowledged seq", seq, 0xFFFF)
    _check_uint("acknowledged type", ftype, 0xFF)
    return struct.pack("<HB", seq, ftype)


def parse_ack(payload):
    """(seq, ftype) of the command an ACK acknowledges."""
    if len(payload) != 3:
        raise ProtocolError("ACK payload of " + str(len(payload)) + " bytes, not 3")
    return struct.unpack("<HB", payload)


def pack_ping(token):
    """PING payload: the host's 8-byte time token (its clock when sending), echoed in PONG."""
    if len(token) != PING_TOKEN_SIZE:
        raise ProtocolError("PING token of " + str(len(token)) + " bytes, not 8")
    return bytes(token)


def pack_pong(token, rx_ticks_us):
    """PONG payload: the PING's token, then the board's ticks_us when the PING arrived (the
    PONG's own header carries the ticks when it was sent)."""
    _check_uint("rx_ticks_us", rx_ticks_us, 0xFFFFFFFF)
    return pack_ping(token) + struct.pack("<I", rx_ticks_us)


def parse_pong(payload):
    """(token, rx_ticks_us) of a PONG payload."""
    if len(payload) != PING_TOKEN_SIZE + 4:
        raise ProtocolError("PONG payload of " + str(len(payload)) + " bytes, not 12")
    return bytes(payload[:PING_TOKEN_SIZE]), struct.unpack_from("<I", payload, PING_TOKEN_SIZE)[0]


def pack_raw(channel, first_index, samples):
    """RAW payload: channel (uint8), reserved 0 (uint8), sample count n (uint16), index of the
    first sample in the channel's stream (uint32, wraps), then n int16 samples."""
    count = len(samples)
    _check_uint("channel", channel, 0xFF)
    _check_uint("first sample index", first_index, 0xFFFFFFFF)
    if count > MAX_RAW_SAMPLES:
        raise ProtocolError(
            "RAW block of " + str(count) + " samples, over the " + str(MAX_RAW_SAMPLES)
        )
    for sample in samples:
        if sample < -32768 or sample > 32767:
            raise ProtocolError("RAW sample " + repr(sample) + " does not fit an int16")
    return struct.pack("<BBHI" + str(count) + "h", channel, 0, count, first_index, *samples)


def parse_raw(payload):
    """(channel, first_index, samples) of a RAW payload; samples is a tuple of ints."""
    size = len(payload)
    if size < RAW_HEADER_SIZE:
        raise ProtocolError("RAW payload of " + str(size) + " bytes, shorter than its header")
    channel, _reserved, count, first_index = struct.unpack_from("<BBHI", payload, 0)
    if size != RAW_HEADER_SIZE + 2 * count:
        raise ProtocolError(
            "RAW payload of "
            + str(size)
            + " bytes for "
            + str(count)
            + " samples (needs "
            + str(RAW_HEADER_SIZE + 2 * count)
            + ")"
        )
    samples = struct.unpack_from("<" + str(count) + "h", payload, RAW_HEADER_SIZE)
    return channel, first_index, samples


def pack_features(block_index, block_samples, features):
    """FEATURES payload: block index (uint32, wraps), samples per block (uint16), channel
    count n (uint8), reserved 0 (uint8), then n times: channel (uint8), mean, RMS, peak
    (float32 each, in the channel's raw units; peak is the largest |sample|).
    `features` is a sequence of (channel, mean, rms, peak)."""
    count = len(features)
    _check_uint("block index", block_index, 0xFFFFFFFF)
    _check_uint("samples per block", block_samples, 0xFFFF)
    if count > MAX_FEATURE_CHANNELS:
        raise ProtocolError(
            "FEATURES for " + str(count) + " channels, over the " + str(MAX_FEATURE_CHANNELS)
        )
    out = bytearray(struct.pack("<IHBB", block_index, block_samples, count, 0))
    for channel, mean, rms, peak in features:
        _check_uint("channel", channel, 0xFF)
        out += struct.pack("<Bfff", channel, mean, rms, peak)
    return bytes(out)


def parse_features(payload):
    """(block_index, block_samples, [(channel, mean, rms, peak), ...]) of a FEATURES payload."""
    size = len(payload)
    if size < FEATURES_HEADER_SIZE:
        raise ProtocolError("FEATURES payload of " + str(size) + " bytes, shorter than its header")
    block_index, block_samples, count, _reserved = struct.unpack_from("<IHBB", payload, 0)
    if size != FEATURES_HEADER_SIZE + FEATURE_SIZE * count:
        raise ProtocolError(
            "FEATURES payload of "
            + str(size)
            + " bytes for "
            + str(count)
            + " channels (needs "
            + str(FEATURES_HEADER_SIZE + FEATURE_SIZE * count)
            + ")"
        )
    features = []
    offset = FEATURES_HEADER_SIZE
    for _ in range(count):
        features.append(struct.unpack_from("<Bfff", payload, offset))
        offset += FEATURE_SIZE
    return block_index, block_samples, features
