"""`edge-agent decode`: payloads as JSON lines or CSV, with channel names and units restored.

From a spool, or from a stream of payloads back to back (a file, or standard input: what a
broker subscription captured). Reads only. Data frames decode with the channel table of their
boot's birth. A payload that does not decode gets one line on the error stream naming its
sequence number and what is wrong, is counted, and the rest still print; a last line counts
the refused (those that failed their checksum among them) and the unchecked (wire v1, which has
no checksum; each such payload prints with "unchecked": true).
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from typing import BinaryIO, TextIO

import msgpack

from . import wire
from .spool import Spool


def decode_payload(payload: bytes, tables: dict[bytes, list[wire.Channel]]) -> dict:
    """One payload as a JSON-ready dict; a birth's channel table goes into `tables`."""
    frame = wire.decode(payload)
    kind, boot = frame["k"], frame["b"]
    if not isinstance(boot, bytes):
        raise wire.WireError("boot id must be a bin")
    head = {"seq": frame.get("s"), "kind": kind, "boot": boot.hex()}  # a death has no seq
    if frame["v"] == wire.UNCHECKED_VERSION:
        head["unchecked"] = True
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


def decode_spool(path: str, out: TextIO, err: TextIO, as_csv: bool = False) -> tuple[int, int]:
    """Print every payload still in the spool at `path`; (printed, bad)."""
    spool = Spool(path, readonly=True)
    try:
        rows = ((f"frame seq {row.seq}", row.stored_ns, row.body) for row in spool.frames())
        return _summary(_print(rows, path, out, err, as_csv), path, err)
    finally:
        spool.close()


def decode_stream(
    stream: BinaryIO, where: str, out: TextIO, err: TextIO, as_csv: bool = False
) -> tuple[int, int]:
    """Print payloads read back to back from a byte stream (as captured from a broker)."""
    data = stream.read()
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    rows, trouble, end = [], None, 0
    try:
        for n, _ in enumerate(unpacker, start=1):
            # Each payload's own bytes, which its checksum covers (packed again they may differ)
            start, end = end, unpacker.tell()
            rows.append((f"payload {n}", None, data[start:end]))
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        trouble = f"not msgpack: {type(exc).__name__}"
    if trouble is None and end != len(data):
        trouble = f"truncated at byte {end} of {len(data)}"
    counts = _print(rows, where, out, err, as_csv)
    if trouble:
        print(f"{where}: payload {len(rows) + 1}: {trouble}", file=err)
        counts["bad"] += 1
    return _summary(counts, where, err)


CSV_HEADER = ("seq", "boot", "channel", "unit", "t_us", "value", "quality")


def _summary(counts: Counter, where: str, err: TextIO) -> tuple[int, int]:
    """(printed, bad), after a line on the error stream counting the refused and the unchecked
    when there were any."""
    printed, bad, unchecked = counts["printed"], counts["bad"], counts["unchecked"]
    if bad or unchecked:
        print(
            f"{where}: {printed} printed, {bad} refused ({counts['bad_checksum']} failed their "
            f"checksum), {unchecked} unchecked (wire v1, no checksum)",
            file=err,
        )
    return printed, bad


def _print(rows, where: str, out: TextIO, err: TextIO, as_csv: bool) -> Counter:
    """Prints the payloads; counts `printed`, `bad`, `bad_checksum` and `unchecked`."""
    counts: Counter[str] = Counter()
    tables: dict[bytes, list[wire.Channel]] = {}
    writer = csv.writer(out, lineterminator="\n") if as_csv else None
    if writer:
        writer.writerow(CSV_HEADER)
    for label, stored_ns, body in rows:
        try:
            decoded = decode_payload(body, tables)
        except wire.WireError as exc:
            print(f"{where}: {label}: {exc}", file=err)
            counts["bad"] += 1
            counts["bad_checksum"] += isinstance(exc, wire.ChecksumError)
            continue
        counts["printed"] += 1
        counts["unchecked"] += decoded.get("unchecked", False)
        if writer is None:
            if stored_ns is not None:
                decoded = {"seq": decoded["seq"], "stored_ns": stored_ns, **decoded}
            out.write(json.dumps(decoded) + "\n")
        elif decoded["kind"] == "data":
            for name, entry in decoded["channels"].items():
                bad_at = dict(map(tuple, entry.get("q", [])))
                for i, (t, v) in enumerate(zip(entry["t"], entry["v"], strict=True)):
                    writer.writerow(
                        (
                            decoded["seq"],
                            decoded["boot"],
                            name,
                            entry["unit"],
                            t,
                            v,
                            bad_at.get(i, 0),
                        )
                    )
    return counts


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
