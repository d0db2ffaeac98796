"""The plant's acknowledgement of what it stored (docs/wire-format.md, "Acknowledgements"):
`[1, 4, boot, runs]` on `<prefix>/<site>/<machine>/ack`, `runs` a flat array of inclusive
(first, last) sequence numbers, ascending and disjoint. The collector sends them once its
store transaction committed; the agent deletes from its spool only what they name.

Sans-IO: bytes in, numbers out. A decoder refuses anything else with `AckError` (one line),
and never allocates more than `MAX_RUNS` runs' worth for a hostile payload.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgpack

VERSION = 1
#: The kind number, after the telemetry payloads' 0-3 (birth, data, event, death).
KIND = 4
BOOT_BYTES = 8
#: Sequence numbers are 64-bit signed integers in every store (SQLite's INTEGER).
_SEQ_MAX = (1 << 63) - 1
#: Runs in one ack at most: a collector batch of 500 messages makes 500 runs at worst, so
#: one ack is always enough for it; 4096 runs are under 80 kB, well inside any broker's limit.
MAX_RUNS = 4096
#: 4096 runs of two 9-byte integers, the envelope and room for fields a later v1.x adds.
MAX_BYTES = 80_000


class AckError(ValueError):
    """A payload that is not a valid v1 acknowledgement: one line saying what is wrong."""


def runs(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sequence numbers as ascending, disjoint, inclusive (first, last) runs."""
    out: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if out and seq == out[-1][1] + 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


def encode(boot: bytes, seqs: Iterable[int]) -> list[bytes]:
    """The acks naming `seqs` of `boot`: one payload, or more when there are more than
    `MAX_RUNS` runs; none for no numbers."""
    if len(boot) != BOOT_BYTES:
        raise ValueError(f"a boot id is {BOOT_BYTES} bytes, got {len(boot)}")
    all_runs = runs(seqs)
    out = []
    for start in range(0, len(all_runs), MAX_RUNS):
        flat = [seq for run in all_runs[start : start + MAX_RUNS] for seq in run]
        out.append(msgpack.packb([VERSION, KIND, boot, flat]))
    return out


def decode(payload: bytes) -> tuple[bytes, list[tuple[int, int]]]:
    """An ack -> (boot, runs). Elements past the runs are ignored (a later v1.x may add some)."""
    if not isinstance(payload, bytes | bytearray):
        raise AckError(f"payload is a {type(payload).__name__}, not bytes")
    if len(payload) > MAX_BYTES:
        raise AckError(f"{len(payload)} bytes, more than an ack's {MAX_BYTES}")
    try:
        body = msgpack.unpackb(
            payload,
            raw=False,
            max_bin_len=MAX_BYTES,
            max_str_len=MAX_BYTES,
            max_array_len=2 * MAX_RUNS,
        )
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise AckError(f"not msgpack: {type(exc).__name__}: {exc}".rstrip(": ")) from None
    if not (isinstance(body, list) and len(body) >= 4):
        raise AckError("not an array [v, kind, boot, runs]")
    version, kind, boot, flat = body[:4]
    if version != VERSION or kind != KIND or isinstance(kind, bool):
        raise AckError(f"not a v{VERSION} ack: version {version!r}, kind {kind!r}")
    if not (isinstance(boot, bytes) and len(boot) == BOOT_BYTES):
        raise AckError(f"the boot id must be a bin of {BOOT_BYTES} bytes")
    if not (isinstance(flat, list) and len(flat) % 2 == 0):
        raise AckError("runs must be an array of first, last pairs")
    out: list[tuple[int, int]] = []
    for i in range(0, len(flat), 2):
        first, last = flat[i], flat[i + 1]
        low = out[-1][1] + 1 if out else 1
        if not (_is_int(first) and _is_int(last) and low <= first <= last):
            raise AckError(f"run {i // 2}: {first!r}..{last!r} is not ascending from {low}")
        out.append((first, last))
    return boot, out


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _SEQ_MAX
