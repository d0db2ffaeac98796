"""Benchmark of the packed values block against JSON, msgpack, gzip and zstd; never asserts.

All 12 recordings in 1-second frames (10 rows); every codec is fed the same quantized values
(every numeric column, constant ones included, each to the quantum pinned in
`wire_quanta.toml`); each frame is encoded on its own, as each is published on its own.
Reported: bytes per point and encode ns per point, side by side in one run. The issue's
targets (docs/wire-format.md): at most 0.7 bytes/point including all framing, 20 ns/point.
"""

from __future__ import annotations

import array
import csv
import gzip
import json
import time
import tomllib
from pathlib import Path

import msgpack
import standard_load
import zstandard

from edge_agent.kernels.valuepack import COUNTED, pack
from edge_agent.telemetry import wire

HERE = Path(__file__).parent
RECORDINGS = HERE.parent / "hil" / "data" / "cnc-mill-tool-wear"
ROWS_PER_FRAME = 10  # 1 s at the recordings' 100 ms
ROUNDS = 3  # best of
PERIOD_US = 100_000  # the recordings' sampling period
BOOT = bytes(8)
# A device some days into its life: the base time and sequence numbers take the widths they
# take on the wire in service (msgpack uint64 and uint32).
T0_US = 1_795_000_000_000_000
SEQ0 = 100_000


def frames() -> tuple[list[str], list[list[list[int]]]]:
    """The column names and, per frame, the quantized columns (a list of ints each)."""
    quanta = tomllib.loads((HERE / "wire_quanta.toml").read_text())["quanta"]
    names = list(quanta)
    out = []
    for path in sorted(RECORDINGS.glob("experiment_*.csv")):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        columns = [[round(float(r[n]) / quanta[n]) for r in rows] for n in names]
        for start in range(0, len(rows), ROWS_PER_FRAME):
            out.append([c[start : start + ROWS_PER_FRAME] for c in columns])
    return names, out


def _json(names, frame) -> bytes:
    rows = zip(*frame, strict=True)
    return "\n".join(json.dumps(dict(zip(names, row, strict=True))) for row in rows).encode()


def _msgpack(names, frame) -> bytes:
    return msgpack.packb([dict(zip(names, row, strict=True)) for row in zip(*frame, strict=True)])


def _block(frame) -> tuple[array.array, array.array, array.array]:
    """The kernel's input for a frame, as wire.data makes it (refs aside): the time group's
    stamp series (regular: all zero) with its count, then every column sharing that count."""
    n = len(frame[0])
    counts = array.array("i", [n] * (len(frame) + 1))
    values = array.array("q", [0] * n + [v for c in frame for v in c])
    return counts, values, array.array("i", [COUNTED] + [0] * len(frame))


def _ours(names, frame) -> bytes:
    return pack(*_block(frame))


def _published(names, quanta, all_frames) -> tuple[int, float]:
    """Every byte our agent would publish for the recordings: a birth per recording (each is a
    fresh boot, whose channel table is sent again), a data frame per second and the text
    columns' events, envelopes included; and the encode time of the data frames from real
    values, ns per point."""
    refs = tomllib.loads((HERE / "wire_quanta.toml").read_text())["ref"]
    channels = [
        wire.Channel(i, n, "", quanta[n], "sampled", PERIOD_US, 0, _alias(refs.get(n), names))
        for i, n in enumerate(names)
    ]
    frames_real = [
        {a: [q * quanta[names[a]] for q in column] for a, column in enumerate(frame)}
        for frame in all_frames
    ]
    recordings = len(list(RECORDINGS.glob("experiment_*.csv")))
    total = recordings * len(wire.birth(BOOT, SEQ0, T0_US, "0.1.0", bytes(8), channels))
    total += sum(len(event) for event in _text_events())
    started = time.perf_counter()
    for second, frame in enumerate(frames_real):
        start = T0_US + second * 10 * PERIOD_US
        stamps = tuple(start + i * PERIOD_US for i in range(len(frame[0])))
        series = {a: wire.Series(stamps, tuple(values)) for a, values in frame.items()}
        total += len(wire.data(BOOT, SEQ0 + second, channels, series))
    return total, time.perf_counter() - started


def _text_events() -> list[bytes]:
    """The text columns as the agent sends them: an event with their values at the start of
    each recording, then one with the columns that changed, at the row they change."""
    text = tomllib.loads((HERE / "wire_quanta.toml").read_text())["text"]
    events, seq = [], SEQ0
    for path in sorted(RECORDINGS.glob("experiment_*.csv")):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        last: dict[str, str] = {}
        for i, row in enumerate(rows):
            changed = {name: row[name] for name in text if last.get(name) != row[name]}
            if changed:
                events.append(wire.event(BOOT, seq, T0_US + i * PERIOD_US, "state", changed))
                seq += 1
                last.update(changed)
    return events


def _standard_load_cpu(count: int = 10) -> float:
    """Share of one core the telemetry path takes at the standard load (200 channels at 10 Hz
    and one at 1 kHz, synthetic): every sample through the frame builder, a data frame a
    second. Wall time of a single thread doing nothing else; the synthetic samples are made
    beforehand, so only the agent's part is timed."""
    batches = standard_load.samples(count)
    started = time.perf_counter()
    for second, series in enumerate(standard_load.seconds(batches)):
        wire.data(BOOT, second, standard_load.CHANNELS, series)
    return (time.perf_counter() - started) / count * 100


def _alias(name: str | None, names: list[str]) -> int | None:
    return None if name is None else names.index(name)


def _measure(encode, names, inputs, all_frames) -> tuple[float, float]:
    """(bytes per point, encode ns per point) of `encode` over `inputs` (the frames, in the
    form the codec takes), the time the best of ROUNDS."""
    points = sum(len(c) for frame in all_frames for c in frame)
    best, size = float("inf"), 0
    for _ in range(ROUNDS):
        started = time.perf_counter()
        size = sum(len(encode(names, frame)) for frame in inputs)
        best = min(best, time.perf_counter() - started)
    return size / points, best / points * 1e9


def run():
    names, all_frames = frames()
    zstd3 = zstandard.ZstdCompressor(level=3)
    zstd19 = zstandard.ZstdCompressor(level=19)
    codecs = {
        "JSON lines": _json,
        "msgpack rows": _msgpack,
        "JSON + gzip": lambda n, f: gzip.compress(_json(n, f)),
        "JSON + zstd-3": lambda n, f: zstd3.compress(_json(n, f)),
        "JSON + zstd-19": lambda n, f: zstd19.compress(_json(n, f)),
    }
    # The batcher keeps each frame's values in arrays as they come: the kernel's own cost.
    prepared = [_block(f) for f in all_frames]
    kernel_bytes, kernel_ns = _measure(lambda _, f: pack(*f), names, prepared, all_frames)
    ours_bytes, ours_ns = _measure(_ours, names, all_frames, all_frames)
    points = sum(len(c) for frame in all_frames for c in frame)
    quanta = tomllib.loads((HERE / "wire_quanta.toml").read_text())["quanta"]
    published, published_s = _published(names, quanta, all_frames)
    what = f"12 recordings, {len(all_frames)} 1-s frames, {points} points"
    rows = []
    for name, encode in codecs.items():
        size, ns = _measure(encode, names, all_frames, all_frames)
        rows.append((f"{what}: size", name, size, "packed block", ours_bytes, "B/point"))
        rows.append(
            (
                f"{what}: encode from Python lists",
                name,
                ns,
                "lists -> arrays + kernel",
                ours_ns,
                "ns/point",
            )
        )
    cpu = _standard_load_cpu()
    rows += [
        (
            "telemetry CPU at the standard load (200 ch at 10 Hz + 1 ch at 1 kHz, 1-s frames)",
            "one core",
            100.0,
            "frame builder + wire.data",
            cpu,
            "% core",
        ),
        (
            "size vs the 0.7 target: every published byte (births, events, envelopes, blocks)",
            "target",
            0.7,
            "wire v1 payloads",
            published / points,
            "B/point",
        ),
        (
            "size of the packed block alone (stamps and values, no refs)",
            "target",
            0.7,
            "packed block",
            kernel_bytes,
            "B/point",
        ),
        (
            "encode vs the 20 ns/point target (frame already in arrays)",
            "target",
            20.0,
            "valuepack kernel",
            kernel_ns,
            "ns/point",
        ),
        (
            "data frames from real values (quantize, envelope, kernels; Python)",
            "target",
            20.0,
            "wire.data",
            published_s / points * 1e9,
            "ns/point",
        ),
    ]
    return rows
