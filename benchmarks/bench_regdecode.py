"""Benchmark of the register-decoding kernel against its plain-Python oracle.

Measures only (wall clock, side by side, on this machine); never asserts: figures belong
to `make bench`, not to tests. One reply as the poller sees it: 200 tags of mixed types
and orders in one 125-register read, the Modbus maximum.
"""

from __future__ import annotations

import array
import random
import time

from edge_agent.kernels.regdecode import BlockDecoder
from tests.oracles.regdecode_oracle import decode_reference

REGISTERS = 125
TAGS = 200
#: Best of 5 rounds; about 0.5 s in all on an x86_64 desktop, a few times that on a Pi 4.
ROUNDS = 5
BLOCKS_PER_ROUND = {"oracle": 300, "kernel": 30_000}

WORDS = (1, 1, 2, 2, 2, 4, 1, 1)


def _block(seed: int = 2026) -> tuple[array.array, list[tuple]]:
    """A 125-register reply and 200 fields that read it: every type, order and a scale."""
    rng = random.Random(seed)
    regs = array.array("H", (rng.randrange(1 << 16) for _ in range(REGISTERS)))
    fields = []
    for i in range(TAGS):
        code = i % 8
        bit = rng.randrange(16)
        fields.append(
            (
                rng.randrange(REGISTERS - WORDS[code] + 1),
                code,
                rng.random() < 0.5,
                rng.random() < 0.5,
                bit,
                rng.randrange(1, 17 - bit),
                rng.choice((1.0, 0.1, 0.001)),
                rng.choice((0.0, -20.0)),
            )
        )
    return regs, fields


def _best_us_per_block(decode_once, blocks: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter_ns()
        for _ in range(blocks):
            decode_once()
        best = min(best, (time.perf_counter_ns() - start) / blocks / 1e3)
    return best


def run() -> list[tuple[str, str, float, str, float, str]]:
    regs, fields = _block()
    decoder = BlockDecoder(fields)
    out = array.array("d", bytes(8 * TAGS))
    oracle_us = _best_us_per_block(
        lambda: decode_reference(regs, fields), BLOCKS_PER_ROUND["oracle"]
    )
    kernel_us = _best_us_per_block(lambda: decoder.decode(regs, out), BLOCKS_PER_ROUND["kernel"])
    # The poller's whole path: pymodbus hands over a list, the poller copies it to array('H').
    reply = list(regs)
    poller_us = _best_us_per_block(
        lambda: decoder.decode(array.array("H", reply), out), BLOCKS_PER_ROUND["kernel"]
    )
    what = f"decode one {TAGS}-tag / {REGISTERS}-register reply"
    return [
        (what, "oracle (struct, pure Python)", oracle_us, "regdecode kernel", kernel_us, "us"),
        (
            what + " from a list",
            "oracle (struct, pure Python)",
            oracle_us,
            "array('H', list) + kernel",
            poller_us,
            "us",
        ),
    ]
