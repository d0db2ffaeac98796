"""What the kernel tests share: running a streaming kernel on a list (whole or in blocks), the
real spindle power of a recording, and catching a one-line error."""

import array
import csv
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SPINDLE_CSV = ROOT / "hil" / "data" / "cnc-mill-tool-wear" / "experiment_01.csv"


def run(kernel, x) -> list[float]:
    """The kernel's output for x, in one `process` call into a fresh output array."""
    out = array.array("d", bytes(8 * len(x)))
    kernel.process(array.array("d", x), out)
    return list(out)


def in_blocks(kernel, x, sizes) -> list[float]:
    """The same stream fed in blocks of `sizes`, then the rest in one."""
    out, start = [], 0
    for size in sizes:
        out += run(kernel, x[start : start + size])
        start += size
    return out + run(kernel, x[start:])


def spindle_power() -> list[float]:
    """S1_OutputPower of experiment 01, one value per 100 ms row."""
    with SPINDLE_CSV.open(newline="") as f:
        return [float(row["S1_OutputPower"]) for row in csv.DictReader(f)]


def one_line_error(call) -> str:
    """The ValueError `call` raises, checked to be one line."""
    with pytest.raises(ValueError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message
