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


class FrameError(ValueError):
    pass


def decode_body(body: bytes) -> dict:
    """A frame body as a dict, checked for the v0 envelope."""
    try:
        frame = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise FrameError(f"not msgpack: {type(exc).__name__}: {exc}") from None
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
                frame = decode_body(body)
            except FrameError as exc:
                print(f"{path}: frame seq {seq}: {exc}", file=err)
                bad += 1
                continue
            out.write(
                json.dumps(
                    {"seq": seq, "stored_ns": stored_ns, **_json_safe(frame)}, allow_nan=False
                )
                + "\n"
            )
            printed += 1
    finally:
        sink.close()
    return printed, bad


def _json_safe(value):
    """NaN and infinities become the strings "NaN", "Infinity", "-Infinity" (valid JSON);
    bytes become hex."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value
