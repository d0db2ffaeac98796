"""Benchmark of the bridge frame codec on the host: decode throughput, and corruptions caught.

Measures only (wall clock, one core, this machine); never asserts: figures belong to
`make bench`, not to tests. The frames are what the board streams most: RAW frames of 32
int16 samples of one channel (84 bytes before framing, 86 on the wire).

- Decode: one `Decoder` fed a stream of 20,000 frames in reads of 4 KiB (a serial port's
  buffer) and of 64 bytes (one USB full-speed packet), best of 5 rounds, against the target of
  50,000 frames/s (20 us a frame). Costs are in us per frame so that the ratio reads like the
  other rows (above 1: faster than the target); the frames/s are in the row's name. Samples
  are 12-bit ADC noise, and all zeros for the worst case of COBS (one block per zero byte).
- Corruption: 10^6 mutated frames (bit flips, bursts, truncations, insertions, duplicated
  pieces, splices of two frames, a 0x00 inserted), each fed to the decoder; a frame that comes
  out and is none of the frames sent is an undetected corruption (target 0; CRC-32 alone lets
  about one random corruption in 4 x 10^9 through). A mutated frame that yields nothing and
  no error (every byte of it lost) is the sequence numbers' to notice, not the decoder's.
"""

from __future__ import annotations

import random
import sys
import time

from firmware_bridge import protocol

FRAMES = 20_000
ROUNDS = 5
SAMPLES = 32  # per RAW frame: a block of the board's sampling
TARGET_FPS = 50_000
MUTATIONS = 1_000_000
POOL = 1024  # distinct frames the mutations start from
SEED = 2026


def _raw_frames(rng: random.Random, count: int, samples) -> list[tuple[protocol.Frame, bytes]]:
    frames = []
    for i in range(count):
        payload = protocol.pack_raw(i % 4, i * SAMPLES & 0xFFFFFFFF, samples(rng))
        frame = protocol.Frame(protocol.RAW, i & 0xFFFF, i * 6400 & 0xFFFFFFFF, payload)
        frames.append((frame, protocol.encode(*frame)))
    return frames


def _noise(rng: random.Random) -> list[int]:
    return [rng.randint(-2048, 2047) for _ in range(SAMPLES)]


def _zeros(rng: random.Random) -> list[int]:
    return [0] * SAMPLES


def _decode_us_per_frame(stream: bytes, frames: int, read: int) -> float:
    reads = [stream[i : i + read] for i in range(0, len(stream), read)]
    best = float("inf")
    for _ in range(ROUNDS):
        decoder = protocol.Decoder()
        start = time.perf_counter_ns()
        for chunk in reads:
            decoder.feed(chunk)
        best = min(best, (time.perf_counter_ns() - start) / frames / 1e3)
        assert decoder.frames == frames, "the benchmark stream did not decode"
    return best


def _encode_us_per_frame(frames: list[tuple[protocol.Frame, bytes]]) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter_ns()
        for frame, _ in frames:
            protocol.encode(*frame)
        best = min(best, (time.perf_counter_ns() - start) / len(frames) / 1e3)
    return best


def _mutate(rng: random.Random, body: bytes, other: bytes) -> tuple[str, bytearray]:
    """A different COBS body, as a noisy line or a lost byte would make it."""
    data = bytearray(body)
    size = len(data)
    kind = rng.randrange(8)
    if kind == 0:
        data[rng.randrange(size)] ^= 1 << rng.randrange(8)
        return "1 bit flipped", data
    if kind == 1:
        for _ in range(rng.randint(2, 8)):
            data[rng.randrange(size)] ^= 1 << rng.randrange(8)
        return "2-8 bits flipped", data
    if kind == 2:
        at = rng.randrange(size)
        data[at : at + rng.randint(1, 16)] = rng.randbytes(rng.randint(1, 16))
        return "burst of random bytes", data
    if kind == 3:
        at = rng.randrange(size)
        del data[at : at + rng.randint(1, size)]
        return "bytes lost", data
    if kind == 4:
        at = rng.randrange(size + 1)
        data[at:at] = rng.randbytes(rng.randint(1, 16))
        return "bytes inserted", data
    if kind == 5:
        at = rng.randrange(size)
        data[at:at] = data[at : at + rng.randint(1, 32)]
        return "piece duplicated", data
    if kind == 6:
        return "two frames spliced", data[: rng.randrange(1, size)] + other[
            rng.randrange(len(other)) :
        ]
    data.insert(rng.randrange(size + 1), 0)
    return "0x00 inserted", data


def _corruption_run(count: int) -> tuple[int, float, dict[str, list[int]]]:
    """Undetected corruptions in `count` mutated frames, the seconds it took, and per kind of
    mutation: [frames, dropped by the decoder, genuine frames decoded intact (no harm: a 0x00
    inserted at an end, a splice that kept the other frame whole)]."""
    rng = random.Random(SEED)
    pool = [(frame, wire[:-1]) for frame, wire in _raw_frames(rng, POOL, _noise)]
    genuine = {frame for frame, _ in pool}
    decoder = protocol.Decoder()
    undetected = 0
    kinds: dict[str, list[int]] = {}
    start = time.perf_counter()
    done = 0
    while done < count:
        frame, body = pool[rng.randrange(POOL)]
        kind, mutated = _mutate(rng, body, pool[rng.randrange(POOL)][1])
        if mutated == body:
            continue
        done += 1
        tally = kinds.setdefault(kind, [0, 0, 0])
        tally[0] += 1
        dropped = decoder.crc_errors + decoder.malformed + decoder.oversize
        mutated.append(0)
        for out in decoder.feed(mutated):
            if out in genuine:  # this frame, or a splice that left another one whole
                tally[2] += 1
            else:
                undetected += 1
        tally[1] += decoder.crc_errors + decoder.malformed + decoder.oversize > dropped
    return undetected, time.perf_counter() - start, kinds


def run() -> list[tuple[str, str, float, str, float, str]]:
    rng = random.Random(SEED)
    noise = _raw_frames(rng, FRAMES, _noise)
    zeros = _raw_frames(rng, FRAMES, _zeros)
    noise_stream = b"".join(wire for _, wire in noise)
    zeros_stream = b"".join(wire for _, wire in zeros)
    wire_size = len(noise[0][1])
    target_us = 1e6 / TARGET_FPS
    rows = []
    for what, stream, read in (
        ("12-bit noise, 4 KiB reads", noise_stream, 4096),
        ("12-bit noise, 64-byte reads", noise_stream, 64),
        ("all-zero samples (COBS worst case), 4 KiB reads", zeros_stream, 4096),
    ):
        us = _decode_us_per_frame(stream, FRAMES, read)
        rows.append(
            (
                f"bridge decode, RAW {SAMPLES} x int16 ({wire_size} B), {what}: "
                f"{1e6 / us:,.0f} frames/s",
                f"target {TARGET_FPS:,} frames/s",
                target_us,
                "Decoder.feed",
                us,
                "us/frame",
            )
        )
    encode_us = _encode_us_per_frame(noise)
    rows.append(
        (
            f"bridge encode, RAW {SAMPLES} x int16: {1e6 / encode_us:,.0f} frames/s",
            f"target {TARGET_FPS:,} frames/s",
            target_us,
            "encode",
            encode_us,
            "us/frame",
        )
    )
    undetected, seconds, kinds = _corruption_run(MUTATIONS)
    for kind, (frames, dropped, intact) in sorted(kinds.items()):
        print(
            f"  {kind}: {frames} frames, {dropped} dropped, {intact} decoded intact",
            file=sys.stderr,
            flush=True,
        )
    rows.append(
        (
            f"undetected corruptions in {MUTATIONS:,} mutated RAW frames ({seconds:.1f} s)",
            "target",
            0,
            "CRC-32 + COBS + decoder checks",
            undetected,
            "frames",
        )
    )
    return rows
