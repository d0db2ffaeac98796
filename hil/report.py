"""The HIL report: one table row per run and one PNG per scenario with every driver's run
(load, target, override, state over time). Reads runs; never runs anything."""

from __future__ import annotations

import json
import math
from pathlib import Path

from hil.bench import BASELINE, Run
from hil.metrics import control_metrics, fault_reaction_s
from hil.plant import MOTION

HEADER = (
    "scenario",
    "driver",
    "cycle s",
    "oracle s",
    "ratio",
    "vs baseline",
    "peak load %",
    "above limit s",
    "RMS err %",
    "overshoot %",
    "bias %",
    "reaction s",
    "notes",
)


def notes(run: Run) -> str:
    result, said = run.result, []
    if run.held:
        said.append(f"agent held the feed: {run.held}")
    if not result.finished:
        said.append(f"unfinished at {run.stopped_at_s:.1f} s")
    if result.alarm_at_s is not None:
        said.append(f"overload alarm at {result.alarm_at_s:.2f} s")
    if result.broken_at_s is not None:
        said.append(f"tool broke at {result.broken_at_s:.2f} s")
    if run.scenario.parts > 1:
        said.append(f"{len(result.part_times_s)} of {run.scenario.parts} parts")
    return ", ".join(said)


def by_scenario(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by scenario file, in the order first seen, the baseline first."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.scenario.source, []).append(run)
    return {
        source: sorted(group, key=lambda r: r.driver != BASELINE)
        for source, group in groups.items()
    }


def _versus(run: Run, baseline: Run | None) -> str:
    """The cycle time saved against the baseline, as a share of the baseline's."""
    if run is baseline or baseline is None:
        return ""
    if not (run.result.finished and baseline.result.finished):
        return "-"
    saved = 1 - run.result.cycle_time_s / baseline.result.cycle_time_s
    return f"{saved:+.1%}"


def rows(runs: list[Run]) -> list[tuple[str, ...]]:
    out = []
    for group in by_scenario(runs).values():
        baseline = next((r for r in group if r.driver == BASELINE), None)
        for run in group:
            out.append(_row(run, baseline))
    return out


def _figure(value: float | None, form: str) -> str:
    return "-" if value is None or math.isnan(value) else format(value, form)


def _row(run: Run, baseline: Run | None) -> tuple[str, ...]:
    result = run.result
    quality = control_metrics(run)
    return (
        run.scenario.name,
        run.driver,
        f"{result.cycle_time_s:.2f}" if result.finished else "-",
        f"{run.oracle_s:.2f}",
        "-" if math.isnan(run.ratio) else f"{run.ratio:.3f}",
        _versus(run, baseline),
        f"{result.peak_load_pct:.1f}",
        f"{result.above_limit_s:.2f}",
        _figure(quality.steady_rms_pct, ".1f"),
        _figure(quality.overshoot_pct, ".1f") if quality.steps else "-",
        _figure(quality.bias_pct, "+.1f"),
        _figure(fault_reaction_s(run), ".2f"),
        notes(run),
    )


def table(runs: list[Run]) -> str:
    return markdown_table(HEADER, rows(runs))


def markdown_table(header: tuple[str, ...], rows) -> str:
    """A Markdown table that also reads well in a terminal: each column as wide as its
    widest cell."""
    body = [header, *rows]
    widths = [max(len(row[i]) for row in body) for i in range(len(header))]

    def line(row):
        return "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in body[1:])])


#: Line colours per driver, in the order the runs come (the baseline first).
_COLOURS = ("0.55", "tab:blue", "tab:green", "tab:orange")


def plot(runs: list[Run], path: Path) -> None:
    """One scenario, every driver: load read (with target and hard limit), agent override and
    applied feed %, and the tool's state, over plant time."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a bench or in CI
    from matplotlib import pyplot

    control = runs[0].scenario.control
    figure, (load, feed, state) = pyplot.subplots(
        3, 1, sharex=True, figsize=(10, 7), height_ratios=(3, 2, 1.2)
    )
    top = control.override_max_pct
    for run, colour in zip(runs, _COLOURS, strict=False):
        trace = run.trace
        t = trace["t_s"]
        load.plot(t, trace["load_pct"], lw=0.9, color=colour, label=f"load read, {run.driver}")
        feed.plot(t, trace["override_pct"], lw=0.9, color=colour, label=f"override, {run.driver}")
        state.step(t, trace["motion"], where="post", color=colour, lw=0.8)
        top = max(top, *trace["feed_pct"])
    load.axhline(control.target_load_pct, color="tab:orange", ls="--", lw=1, label="target")
    load.axhline(control.hard_limit_pct, color="tab:red", ls=":", lw=1, label="hard limit")
    load.set_ylabel("spindle load %")
    load.legend(loc="upper right", fontsize="small")
    feed.set_ylim(0, 1.1 * top)
    feed.set_ylabel("agent override %")
    feed.legend(loc="upper right", fontsize="small")
    state.set_yticks(list(MOTION.values()), list(MOTION), fontsize="small")
    state.set_xlabel("plant time, s")
    title = ", ".join(
        f"{run.driver} {run.result.cycle_time_s:.2f} s"
        if run.result.finished
        else f"{run.driver} unfinished"
        for run in runs
    )
    figure.suptitle(
        f"{runs[0].scenario.name}: oracle {runs[0].oracle_s:.2f} s; {title}", fontsize=10
    )
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    pyplot.close(figure)


def write_report(runs: list[Run], out: Path) -> Path:
    """report.md, report.json and one PNG per run into `out`; returns the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# HIL bench report", "", table(runs), ""]
    for source, group in by_scenario(runs).items():
        png = out / f"{Path(source).stem}.png"
        plot(group, png)
        lines.append(f"![{group[0].scenario.name}]({png.name})")
    records = [
        {
            "scenario": Path(run.scenario.source).stem,
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
        for run in runs
    ]
    (out / "report.json").write_text(json.dumps(records, indent=1) + "\n")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
