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
import random
import time
import tomllib
from collections import Counter
from pathlib import Path
from typing import NamedTuple

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
#: Data frames damaged for the checksum's detection rates (every 60th: 2 a recording), and the
#: random bursts and byte spans tried in all, per form.
DAMAGED_EVERY = 60
BURSTS = 24_000


def recordings() -> tuple[list[str], list[tuple[str, list[dict], list[list[list[int]]]]]]:
    """The column names and, per recording, its name, its CSV rows and its frames (the
    quantized columns of each, a list of ints each)."""
    quanta = tomllib.loads((HERE / "wire_quanta.toml").read_text())["quanta"]
    names = list(quanta)
    out = []
    for path in sorted(RECORDINGS.glob("experiment_*.csv")):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        columns = [[round(float(r[n]) / quanta[n]) for r in rows] for n in names]
        frames_of = [
            [c[start : start + ROWS_PER_FRAME] for c in columns]
            for start in range(0, len(rows), ROWS_PER_FRAME)
        ]
        out.append((path.stem, rows, frames_of))
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


class Published(NamedTuple):
    """What our agent publishes for one recording."""

    name: str
    points: int
    payloads: list[bytes]  # every one: the birth, the text columns' events, the data frames
    frames: list[bytes]  # the data frames among them
    encode_s: float  # building the data frames from real values


def _channels(names, quanta) -> list[wire.Channel]:
    refs = tomllib.loads((HERE / "wire_quanta.toml").read_text())["ref"]
    return [
        wire.Channel(i, n, "", quanta[n], "sampled", PERIOD_US, 0, _alias(refs.get(n), names))
        for i, n in enumerate(names)
    ]


def _published(names, quanta, recorded) -> list[Published]:
    """Every payload our agent would publish for each recording: a birth (each recording is a
    fresh boot, whose channel table is sent again), a data frame per second and the text
    columns' events, envelopes and checksums included."""
    channels = _channels(names, quanta)
    birth = wire.birth(BOOT, SEQ0, T0_US, "0.1.0", bytes(8), channels)
    out, seq, second = [], SEQ0, 0
    for name, rows, frames_of in recorded:
        events = _text_events(rows, seq)
        seq += len(events)
        frames = []
        started = time.perf_counter()
        for frame in frames_of:
            start = T0_US + second * 10 * PERIOD_US
            stamps = tuple(start + i * PERIOD_US for i in range(len(frame[0])))
            series = {
                a: wire.Series(stamps, tuple(q * quanta[names[a]] for q in column))
                for a, column in enumerate(frame)
            }
            frames.append(wire.data(BOOT, SEQ0 + second, channels, series))
            second += 1
        encode_s = time.perf_counter() - started
        points = sum(len(c) for frame in frames_of for c in frame)
        out.append(Published(name, points, [birth, *events, *frames], frames, encode_s))
    return out


def _unchecked(payload: bytes) -> bytes:
    """A payload as wire v1 wrote it, without the checksum (what the agent sent before)."""
    return msgpack.packb([wire.UNCHECKED_VERSION, *msgpack.unpackb(payload)[1:-1]])


def _damage(frames: list[bytes], channels: list[wire.Channel]) -> dict[str, Counter]:
    """What a reader makes of damaged data frames, with the checksum and without (the same
    frames as v1 wrote them): of every single-bit flip, of BURSTS random bursts of up to 32
    bits (first and last bit flipped, each between at random; bits least significant first)
    and of as many spans of 5-64 random bytes: `refused`, `same` (decodes to the original
    samples: the damage missed every value) or `other` (decodes to other values)."""
    rng = random.Random(16)
    out = {}
    for form, make in (("v1", _unchecked), ("v2", bytes)):
        counts: dict[str, Counter] = {"flip": Counter(), "burst": Counter(), "bytes": Counter()}
        for frame in map(make, frames):
            original = wire.samples(wire.decode(frame), channels)
            bits = len(frame) * 8
            for kind, flips in (
                ("flip", ([bit] for bit in range(bits))),
                ("burst", (_burst(rng, bits) for _ in range(BURSTS // len(frames)))),
            ):
                for flipped in flips:
                    damaged = bytearray(frame)
                    for bit in flipped:
                        damaged[bit // 8] ^= 1 << (bit % 8)
                    counts[kind][_outcome(bytes(damaged), original, channels)] += 1
            for _ in range(BURSTS // len(frames)):
                at, junk = rng.randrange(len(frame)), rng.randbytes(rng.randint(5, 64))
                damaged = (frame[:at] + junk + frame[at + len(junk) :])[: len(frame)]
                counts["bytes"][_outcome(damaged, original, channels)] += 1
        out[form] = counts
    return out


def _burst(rng: random.Random, bits: int) -> list[int]:
    length = rng.randint(2, 32)
    first = rng.randrange(bits - length + 1)
    return (
        [first]
        + [first + i for i in range(1, length - 1) if rng.random() < 0.5]
        + [first + length - 1]
    )


def _outcome(payload: bytes, original, channels) -> str:
    try:
        decoded = wire.samples(wire.decode(payload), channels)
    except wire.WireError:
        return "refused"
    return "same" if decoded == original else "other"


def _text_events(rows: list[dict], seq: int) -> list[bytes]:
    """The text columns of a recording as the agent sends them: an event with their values at
    its start, then one with the columns that changed, at the row they change."""
    text = tomllib.loads((HERE / "wire_quanta.toml").read_text())["text"]
    events: list[bytes] = []
    last: dict[str, str] = {}
    for i, row in enumerate(rows):
        changed = {name: row[name] for name in text if last.get(name) != row[name]}
        if changed:
            events.append(
                wire.event(BOOT, seq + len(events), T0_US + i * PERIOD_US, "state", changed)
            )
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
    names, recorded = recordings()
    all_frames = [frame for _, _, frames_of in recorded for frame in frames_of]
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
    by_recording = _published(names, quanta, recorded)
    published = sum(len(p) for r in by_recording for p in r.payloads)
    published_v1 = sum(len(_unchecked(p)) for r in by_recording for p in r.payloads)
    published_s = sum(r.encode_s for r in by_recording)
    payload_count = sum(len(r.payloads) for r in by_recording)
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
            f"wire v{wire.VERSION} payloads",
            published / points,
            "B/point",
        ),
        (
            f"the checksum's cost: every published byte, {payload_count} payloads",
            "v1, no checksum",
            published_v1 / points,
            "v2, CRC-32",
            published / points,
            "B/point",
        ),
        *(
            (
                f"  {r.name}: every published byte, {r.points} points",
                "v1, no checksum",
                sum(len(_unchecked(p)) for p in r.payloads) / r.points,
                "v2, CRC-32",
                sum(len(p) for p in r.payloads) / r.points,
                "B/point",
            )
            for r in by_recording
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
    damaged = [f for r in by_recording for f in r.frames[::DAMAGED_EVERY]]
    outcomes = _damage(damaged, _channels(names, quanta))
    for kind, what in (
        ("flip", "every single-bit flip"),
        ("burst", "bursts of 2-32 bits"),
        ("bytes", "5-64 random bytes"),
    ):
        tried = sum(outcomes["v2"][kind].values())
        for outcome in ("refused", "other"):
            rows.append(
                (
                    f"{what} in {len(damaged)} data frames ({tried}): {outcome}"
                    + (" (decoded to other values)" if outcome == "other" else ""),
                    "v1, no checksum",
                    100 * outcomes["v1"][kind][outcome] / sum(outcomes["v1"][kind].values()),
                    "v2, CRC-32",
                    100 * outcomes["v2"][kind][outcome] / tried,
                    "%",
                )
            )
    return rows
