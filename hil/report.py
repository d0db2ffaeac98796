"""The HIL report: one table row per run and one PNG per scenario (load, target, override,
state over time). Reads runs; never runs anything."""

from __future__ import annotations

import json
import math
from pathlib import Path

from hil.bench import Run
from hil.plant import MOTION

HEADER = (
    "scenario",
    "driver",
    "cycle s",
    "oracle s",
    "ratio",
    "peak load %",
    "above limit s",
    "notes",
)


def notes(run: Run) -> str:
    result, said = run.result, []
    if not result.finished:
        said.append(f"unfinished at {run.stopped_at_s:.1f} s")
    if result.alarm_at_s is not None:
        said.append(f"overload alarm at {result.alarm_at_s:.2f} s")
    if result.broken_at_s is not None:
        said.append(f"tool broke at {result.broken_at_s:.2f} s")
    if run.scenario.parts > 1:
        said.append(f"{len(result.part_times_s)} of {run.scenario.parts} parts")
    return ", ".join(said)


def rows(runs: list[Run]) -> list[tuple[str, ...]]:
    out = []
    for run in runs:
        result = run.result
        cycle = f"{result.cycle_time_s:.2f}" if result.finished else "-"
        ratio = "-" if math.isnan(run.ratio) else f"{run.ratio:.3f}"
        out.append(
            (
                run.scenario.name,
                run.driver,
                cycle,
                f"{run.oracle_s:.2f}",
                ratio,
                f"{result.peak_load_pct:.1f}",
                f"{result.above_limit_s:.2f}",
                notes(run),
            )
        )
    return out


def table(runs: list[Run]) -> str:
    """A Markdown table that also reads well in a terminal."""
    body = [HEADER, *rows(runs)]
    widths = [max(len(row[i]) for row in body) for i in range(len(HEADER))]

    def line(row):
        return "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(HEADER), rule, *(line(row) for row in body[1:])])


def plot(run: Run, path: Path) -> None:
    """Load (read and true) with target and hard limit, override and applied feed %, and the
    tool's state, over plant time."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a bench or in CI
    from matplotlib import pyplot

    trace, control = run.trace, run.scenario.control
    t = trace["t_s"]
    figure, (load, feed, state) = pyplot.subplots(
        3, 1, sharex=True, figsize=(10, 7), height_ratios=(3, 2, 1.2)
    )
    load.plot(t, trace["load_true_pct"], lw=0.6, color="0.6", label="true load")
    load.plot(t, trace["load_pct"], lw=0.9, color="tab:blue", label="load read by controller")
    load.axhline(control.target_load_pct, color="tab:green", ls="--", lw=1, label="target")
    load.axhline(control.hard_limit_pct, color="tab:red", ls=":", lw=1, label="hard limit")
    load.set_ylabel("spindle load %")
    load.legend(loc="upper right", fontsize="small")
    feed.plot(t, trace["override_pct"], color="tab:orange", label="agent override %")
    feed.plot(t, trace["feed_pct"], color="tab:purple", lw=0.8, ls="--", label="applied feed %")
    feed.set_ylim(0, 1.1 * max(control.override_max_pct, *trace["feed_pct"]))
    feed.set_ylabel("%")
    feed.legend(loc="upper right", fontsize="small")
    state.step(t, trace["motion"], where="post", color="black", lw=0.8)
    state.set_yticks(list(MOTION.values()), list(MOTION), fontsize="small")
    state.set_xlabel("plant time, s")
    result = run.result
    cycle = f"{result.cycle_time_s:.2f} s" if result.finished else "unfinished"
    figure.suptitle(
        f"{run.scenario.name} ({run.driver}): cycle {cycle}, oracle {run.oracle_s:.2f} s"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    pyplot.close(figure)


def write_report(runs: list[Run], out: Path) -> Path:
    """report.md, report.json and one PNG per run into `out`; returns the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# HIL bench report", "", table(runs), ""]
    records = []
    for run in runs:
        stem = Path(run.scenario.source).stem
        png = out / f"{stem}.png"
        plot(run, png)
        lines.append(f"![{run.scenario.name}]({png.name})")
        records.append(
            {
                "scenario": stem,
                "driver": run.driver,
                "finished": run.result.finished,
                "cycle_time_s": run.result.cycle_time_s,
                "part_times_s": run.result.part_times_s,
                "oracle_s": run.oracle_s,
                "peak_load_pct": run.result.peak_load_pct,
                "above_limit_s": run.result.above_limit_s,
                "alarm_at_s": run.result.alarm_at_s,
                "broken_at_s": run.result.broken_at_s,
            }
        )
    (out / "report.json").write_text(json.dumps(records, indent=1) + "\n")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
