"""`make bench`: runs every benchmarks/bench_*.py side by side and prints one table.

Each module exposes `run() -> list[Row]`, Row = (what, baseline, baseline value,
ours, our value, unit); the ratio printed is baseline / ours (above 1: ours is better
for costs such as time, bytes or requests). Wall-clock figures live here, never in tests.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def main() -> int:
    here = Path(__file__).parent
    sys.path.insert(0, str(here.parent))
    names = sys.argv[1:]
    rows = []
    for path in sorted(here.glob("bench_*.py")):
        if names and path.stem.removeprefix("bench_") not in names:
            continue
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(f"running {path.stem} ...", file=sys.stderr, flush=True)
        rows.extend(module.run())
    header = ("measure", "baseline", "value", "ours", "value", "unit", "ratio")
    table = [header] + [
        (what, base, f"{bv:.4g}", ours, f"{ov:.4g}", unit, f"{bv / ov:.2f}x" if ov else "-")
        for what, base, bv, ours, ov, unit in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
