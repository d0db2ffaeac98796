"""`edge-agent decode`: a spool's frames as JSON lines, for people and for `jq`.

Reads only. A frame that does not decode gets one line on the error stream naming its
sequence number and what is wrong, is counted, and the rest still print.
"""

from __future__ import annotations

import json
import math
from typing import TextIO

import msgpack

from .frames import VERSION
from .sink import FrameSink

#: v0 bodies nest at most four levels (frame -> ch -> channel -> list); event details are
#: flat maps. Well under Python's recursion limit, so a hostile body cannot exhaust the stack.
MAX_DEPTH = 32


class FrameError(ValueError):
    """A frame body that is not a valid v0 frame: one line saying what is wrong."""


def decode_body(body: bytes) -> dict:
    """A frame body as a dict, checked for the v0 envelope."""
    try:
        frame = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise FrameError(f"not msgpack: {why}") from None
    if not isinstance(frame, dict):
        raise FrameError(f"body is a {type(frame).__name__}, not a map")
    if frame.get("v") != VERSION:
        raise FrameError(f"unknown frame version {frame.get('v')!r}")
    if frame.get("type") not in ("data", "event"):
        raise FrameError(f"unknown frame type {frame.get('type')!r}")
    if frame["type"] == "data" and not _valid_channels(frame.get("ch")):
        raise FrameError("data frame without a valid channel map")
    return frame


def _valid_channels(channels) -> bool:
    if not isinstance(channels, dict):
        return False
    for entry in channels.values():
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("t"), list)
            and isinstance(entry.get("v"), list)
            and len(entry["t"]) == len(entry["v"])
        ):
            return False
        if "q" in entry and (
            not isinstance(entry["q"], list) or len(entry["q"]) != len(entry["v"])
        ):
            return False
    return True


def decode_sink(path: str, out: TextIO, err: TextIO) -> tuple[int, int]:
    """Print every frame of the spool at `path`; (frames printed, frames bad)."""
    printed = bad = 0
    sink = FrameSink(path, readonly=True)
    try:
        for seq, stored_ns, _, body in sink.frames():
            try:
                line = json.dumps(
                    {"seq": seq, "stored_ns": stored_ns, **_json_safe(decode_body(body))},
                    allow_nan=False,
                )
            except FrameError as exc:
                print(f"{path}: frame seq {seq}: {exc}", file=err)
                bad += 1
                continue
            out.write(line + "\n")
            printed += 1
    finally:
        sink.close()
    return printed, bad


def _json_safe(value, depth: int = 0):
    """NaN and infinities become the strings "NaN", "Infinity", "-Infinity" (valid JSON);
    bytes become hex. Anything v0 never writes (msgpack ext types, nesting deeper than
    `MAX_DEPTH`) is a `FrameError`, not a crash of the whole decode."""
    if depth > MAX_DEPTH:
        raise FrameError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {_key(k): _json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v, depth + 1) for v in value]
    raise FrameError(f"holds a {type(value).__name__}, which v0 frames never contain")


def _key(key) -> str:
    return key.hex() if isinstance(key, bytes) else key
