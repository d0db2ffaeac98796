"""`edge-agent decode`: a spool's payloads as JSON lines, with channel names and units restored.

Reads only. Data frames decode with the channel table of their boot's birth (which comes first
in every boot). A payload that does not decode gets one line on the error stream naming its
sequence number and what is wrong, is counted, and the rest still print.
"""

from __future__ import annotations

import json
import math
from typing import TextIO

from . import wire
from .sink import FrameSink


def decode_payload(payload: bytes, tables: dict[bytes, list[wire.Channel]]) -> dict:
    """One payload as a JSON-ready dict; a birth's channel table goes into `tables`."""
    frame = wire.decode(payload)
    kind, boot = frame["k"], frame["b"]
    if not isinstance(boot, bytes):
        raise wire.WireError("boot id must be a bin")
    head = {"kind": kind, "boot": boot.hex()}
    if kind == "birth":
        tables[boot] = wire.channels_of(frame)
        rows = [
            {
                "alias": c.alias,
                "name": c.name,
                "unit": c.unit,
                "quantum": c.quantum,
                "kind": c.kind,
                "period_us": c.period_us,
                "group": c.group,
                "ref": c.ref,
            }
            for c in tables[boot]
        ]
        return {**head, "t": frame["t"], "agent": frame.get("agent"), "channels": rows}
    if kind == "event":
        return {**head, "t": frame["t"], "event": frame["e"], "detail": _json_safe(frame["d"])}
    if kind == "death":
        return {**head, "birth_seq": frame["bs"]}
    table = tables.get(boot)
    if table is None:
        raise wire.WireError(f"no birth for boot {boot.hex()} before this frame")
    channels = {}
    units = {c.name: c.unit for c in table}
    for name, series in wire.samples(frame, table).items():
        entry = {
            "unit": units[name],
            "t": list(series.stamps_us),
            "v": [_json_safe(v) for v in series.values],
        }
        if series.quality:
            entry["q"] = [list(pair) for pair in series.quality]
        channels[name] = entry
    out = {**head, "t": frame["t"], "channels": channels}
    if frame.get("h"):
        out["historical"] = True
    return out


def decode_sink(path: str, out: TextIO, err: TextIO) -> tuple[int, int]:
    """Print every payload of the spool at `path`; (printed, bad)."""
    printed = bad = 0
    tables: dict[bytes, list[wire.Channel]] = {}
    sink = FrameSink(path, readonly=True)
    try:
        for seq, stored_ns, _, body in sink.frames():
            try:
                decoded = decode_payload(body, tables)
            except wire.WireError as exc:
                print(f"{path}: frame seq {seq}: {exc}", file=err)
                bad += 1
                continue
            out.write(json.dumps({"seq": seq, "stored_ns": stored_ns, **decoded}) + "\n")
            printed += 1
    finally:
        sink.close()
    return printed, bad


def _json_safe(value):
    """NaN and infinities become the strings "NaN", "Infinity", "-Infinity" (valid JSON);
    bytes become hex."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
