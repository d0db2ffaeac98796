"""The family's report: a Markdown table per fault class (p50/p95/p99 of each figure, the
detection rate), the criteria with PASS/FAIL, report.json with every case's figures, histograms
and CDFs, and the traces of the worst cases of each criterion (re-run alone from their ids).
Reads figures and re-runs single cases; writes only into the report folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

from hil.family import Criterion, percentile, run_case
from hil.family_gen import case, parse_id
from hil.report import plot

#: Figures tabled per class: (key in a case's figures, heading).
COLUMNS = (
    ("ratio", "cycle/oracle"),
    ("peak_pct", "peak %"),
    ("above_limit_s", "above limit s"),
    ("overshoot_pct", "overshoot %"),
    ("rms_pct", "RMS err %"),
    ("bias_pct", "bias %"),
    ("reaction_s", "reaction s"),
)
CLASSES = ("no_fault", "breakage", "overload", "sensor_freeze", "link_loss")


def _finite(records: list[dict], key: str) -> list[float]:
    values = (r[key] for r in records)
    return [v for v in values if v is not None and not math.isnan(v) and not math.isinf(v)]


def class_table(records: list[dict]) -> str:
    """One row per class and figure: count, p50/p95/p99; and the detection rate."""
    lines = [
        "| class | cases | detected | figure | p50 | p95 | p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in CLASSES:
        group = [r for r in records if r["class"] == kind]
        if not group:
            continue
        detected = (
            f"{sum(r['detected'] for r in group)}/{len(group)}"
            if kind
            in (
                "breakage",
                "overload",
            )
            else "-"
        )
        first = True
        for key, heading in COLUMNS:
            values = _finite(group, key)
            if not values:
                continue
            cells = " | ".join(f"{percentile(values, q):.3g}" for q in (50, 95, 99))
            head = f"{kind} | {len(group)} | {detected}" if first else " | | "
            lines.append(f"| {head} | {heading} (n={len(values)}) | {cells} |")
            first = False
    return "\n".join(lines)


def plots(records: list[dict], out: Path) -> list[str]:
    """Histograms and CDFs of cycle/oracle, peak, overshoot and reaction time; file names."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    names = []
    for key, heading in (
        ("ratio", "cycle / oracle"),
        ("peak_pct", "true peak load %"),
        ("overshoot_pct", "overshoot at steps, % of target"),
        ("reaction_s", "fault reaction, s"),
    ):
        figure, (hist, cdf) = pyplot.subplots(1, 2, figsize=(10, 3.6))
        for kind in CLASSES:
            values = sorted(_finite([r for r in records if r["class"] == kind], key))
            if not values:
                continue
            hist.hist(values, bins=40, histtype="step", label=f"{kind} ({len(values)})")
            cdf.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=kind)
        hist.set_xlabel(heading)
        hist.set_ylabel("cases")
        cdf.set_xlabel(heading)
        cdf.set_ylabel("share of cases")
        hist.legend(fontsize="small")
        figure.tight_layout()
        name = f"{key}.png"
        figure.savefig(out / name, dpi=80)
        pyplot.close(figure)
        names.append(name)
    return names


def write_trace(case_id: str, out: Path) -> Path:
    """Re-run one case alone and plot its baseline and agent runs."""
    item = case(*parse_id(case_id))
    baseline, agent, _ = run_case(item)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"case-{case_id}.png"
    plot([baseline, agent], path)
    return path


def write_report(
    records: list[dict], verdicts: list[Criterion], out: Path, header: str, traces: bool = True
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(records, indent=0) + "\n")
    lines = [f"# HIL scenario family: {header}", "", "## Criteria", ""]
    lines += [f"- {v.line()}" for v in verdicts]
    lines += ["", "## Per class", "", class_table(records), "", "## Distributions", ""]
    lines += [f"![{name}]({name})" for name in plots(records, out)]
    if traces:
        lines += ["", "## Worst cases per criterion", ""]
        drawn: set[str] = set()
        for verdict in verdicts:
            if not verdict.worst:
                continue
            lines.append(f"**{verdict.name}**: " + ", ".join(verdict.worst))
            lines.append("")
            for case_id in verdict.worst:
                if case_id not in drawn:
                    write_trace(case_id, out)
                    drawn.add(case_id)
                lines.append(f"![case {case_id}](case-{case_id}.png)")
            lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
