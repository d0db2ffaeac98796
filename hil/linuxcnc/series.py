"""A series of repeat parts on LinuxCNC (`make hil-linuxcnc`, `python -m hil.linuxcnc series`):
one program made PARTS times in a row by one agent with the learned preview on (`[control]
preview`, docs/adaptive-control.md "Learned profiles"), after one run at a fixed 100 %.

The agent runs the whole series as one process, as on a machine making a batch: it learns the
program's profile at each part's end from LinuxCNC's block number and positions (served by the
adapter) and previews the next part from it. Each part is a fresh blank of the program's
scenario, so every part is the same work: what changes from part to part is only what the
agent knows. A table row and a plot per part (reports/hil-linuxcnc/series-PROGRAM*).
"""

from __future__ import annotations

import asyncio
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hil.linuxcnc import PROGRAMS_DIR
from hil.linuxcnc.adapter import LinuxCNCAdapter, PlantLoad
from hil.linuxcnc.bench import (
    FIXED,
    BenchRun,
    agent_toml,
    log_run,
    run_on_adapter,
    scenario_for,
    spool_events,
    start_agent,
    stop_agent,
    with_agent_events,
)
from hil.linuxcnc.runner import LinuxCNC
from hil.report import markdown_table

#: The program `make hil-linuxcnc` makes in series: three depth steps and four entries a part.
SERIES_PROGRAM = "pocket_depth_steps"
PARTS = 5
#: After each part: the operator unloads it and clamps the next blank (on a machine tens of
#: seconds; here long enough for the agent to learn the part before the next one starts).
PART_CHANGE_S = 2.0
#: The parts the issue's claim is about: from the third on, the profile has had two parts.
JUDGED_FROM = 3


@dataclass(frozen=True)
class SeriesPart:
    """One part of the series: its run, and whether the agent had a profile to go by."""

    number: int  # 0: the fixed 100 % run; 1 ...: the agent's parts
    run: BenchRun
    previewed: bool  # a profile of the program was learned before the part started
    learned: bool  # the agent learned the part into the profile (at its end)
    #: the highest true load over the target after an engagement rise, % of the target
    #: (hil/metrics.py, on the plant's true load: what the tool really met); NaN if rejected
    overshoot_pct: float


def _part(number: int, run: BenchRun, oracle_s: float, previewed=False, learned=False):
    from hil.metrics import control_metrics

    overshoot = math.nan
    if not run.rejected:
        measured = control_metrics(run.hil_run(oracle_s), overshoot_of="load_true_pct")
        overshoot = measured.overshoot_pct
    return SeriesPart(number, run, previewed, learned, overshoot)


async def run_series(
    cnc: LinuxCNC, program: Path, workdir: Path, *, parts: int = PARTS, log=lambda text: None
) -> list[SeriesPart]:
    """`program` once at a fixed 100 %, then `parts` times with one agent, preview on."""
    from hil.oracle import oracle

    workdir.mkdir(parents=True, exist_ok=True)
    scenario = scenario_for(program)
    ideal = oracle(scenario).cycle_time_s
    adapter = LinuxCNCAdapter(PlantLoad(scenario, record=True), env=cnc.env)
    port = await adapter.start()
    out: list[SeriesPart] = []
    try:
        fixed = await run_on_adapter(cnc, program, adapter, FIXED)
        log_run(fixed, log)
        out.append(_part(0, fixed, ideal))
        config = workdir / "agent.toml"
        config.write_text(agent_toml(port, workdir, preview=True))
        child = await start_agent(config, workdir / "agent.log", adapter)
        runs = []
        try:
            for number in range(1, parts + 1):
                run = await run_on_adapter(cnc, program, adapter, f"part {number}")
                log_run(run, log)
                runs.append(run)
                await asyncio.sleep(PART_CHANGE_S)  # the last part, too, is learned
                if not run.finished:
                    break  # a part that did not finish (a hold) ends the series
        finally:
            await stop_agent(child)
    finally:
        await adapter.stop()
    spool = workdir / "spool.db"
    learned_at = [e["t"] for e in spool_events(spool) if e["event"] == "profile_learned"]
    for number, run in enumerate(runs, start=1):
        started = run.wall_s[0]
        until = runs[number].wall_s[0] if number < len(runs) else math.inf
        out.append(
            _part(
                number,
                with_agent_events(run, spool),
                ideal,
                previewed=any(t < started for t in learned_at),
                learned=any(started <= t < until for t in learned_at),
            )
        )
    return out


# -- the report ------------------------------------------------------------------------------

HEADER = (
    "part",
    "profile",
    "cycle s",
    "vs part 1",
    "vs fixed",
    "peak load %",
    "peak err %",
    "RMS err %",
    "overshoot %",
    "above limit s",
    "notes",
)


def _row(part: SeriesPart, first: SeriesPart | None, fixed: SeriesPart) -> tuple[str, ...]:
    run = part.run
    if run.rejected:
        return (run.driver, "-", *("-",) * (len(HEADER) - 3), f"failed: rejected: {run.why}")

    def versus(other: SeriesPart | None) -> str:
        if other is None or other is part or not (run.finished and other.run.finished):
            return ""
        return f"{run.done.cycle_s / other.run.done.cycle_s - 1:+.1%}"

    peak_err, rms_err = run.load_errors()
    notes = [f"agent: {e['event']}" for e in run.events if e["event"] == "profile_mismatch"]
    if part.learned:
        notes.append("learned into the profile")
    if run.held:
        notes.append(f"agent held the feed: {run.held}")
    if not run.finished:
        notes.append(f"unfinished, stopped at {run.done.cycle_s:.1f} s")
    return (
        run.driver,
        "-" if part.number == 0 else ("learned" if part.previewed else "none"),
        f"{run.done.cycle_s:.2f}" if run.finished else "-",
        versus(first),
        versus(fixed),
        f"{run.result.peak_load_pct:.1f}",
        f"{peak_err:+.1f}",
        f"{rms_err:.1f}",
        f"{part.overshoot_pct:.1f}",
        f"{run.result.above_limit_s:.2f}",
        ", ".join(notes),
    )


def table(parts: list[SeriesPart]) -> str:
    fixed = parts[0]
    first = next((p for p in parts if p.number == 1), None)
    return markdown_table(HEADER, [_row(p, first, fixed) for p in parts])


def verdict(parts: list[SeriesPart], asked: int) -> tuple[bool, str]:
    """Whether parts JUDGED_FROM to `asked` were each made, faster than part 1 with a lower
    peak error (the issue's claim for LinuxCNC), and a sentence saying which were not."""
    first = next((p for p in parts if p.number == 1), None)
    judged = [p for p in parts if p.number >= JUDGED_FROM]
    if first is None or not first.run.finished or len(judged) < asked - JUDGED_FROM + 1:
        return False, "the series did not reach its judged parts"
    first_err = first.run.load_errors()[0]
    failed = [
        f"part {p.number}"
        for p in judged
        if not p.run.finished
        or p.run.done.cycle_s >= first.run.done.cycle_s
        or not p.run.load_errors()[0] < first_err
    ]
    if failed:
        return False, f"{', '.join(failed)}: not faster than part 1 with a lower peak error"
    return True, (
        f"parts {JUDGED_FROM}-{judged[-1].number}: each faster than part 1 "
        f"({first.run.done.cycle_s:.2f} s) with a lower peak error ({first_err:+.1f} %)"
    )


def write_report(
    parts: list[SeriesPart], out: Path, asked: int
) -> tuple[Path, str, tuple[bool, str]]:
    """series-PROGRAM.md and .json into `out`, with hil/report.py's plots: the fixed run, part
    1 and the last part in series-PROGRAM.png, each part beside the fixed run in
    series-PROGRAM-part-N.png; returns the Markdown's path, the table and the verdict."""
    from hil.oracle import oracle
    from hil.report import plot

    out.mkdir(parents=True, exist_ok=True)
    program = parts[0].run.program
    ok, said = verdict(parts, asked)
    text = table(parts)
    stem = f"series-{program}"
    ideal = oracle(parts[0].run.scenario).cycle_time_s
    made = [p.run.hil_run(ideal) for p in parts if not p.run.rejected]
    numbers = [p.number for p in parts if not p.run.rejected]
    overview = [made[0], *made[1:2], *made[-1:]] if len(made) > 3 else made
    plot(overview, out / f"{stem}.png")
    pictures = [f"![{stem}]({stem}.png)"]
    for number, run in zip(numbers[1:], made[1:], strict=True):  # each beside the fixed run
        png = f"{stem}-part-{number}.png"
        plot([made[0], run], out / png)
        pictures.append(f"![part {number}]({png})")
    lines = [
        f"# {program}: {len(parts) - 1} parts in a row with the learned preview",
        "",
        "One run at a fixed 100 %, then the parts, one agent (`edge-agent run`, demo "
        "configuration with `[control] preview = true`) learning the program's profile at "
        "each part's end. Load errors: the load read minus the target while cutting, % points; "
        "overshoot: the true load's highest rise over the target after an engagement step, % of "
        "the target.",
        "",
        text,
        "",
        f"{'Met' if ok else 'NOT met'}: {said}.",
        "",
        *pictures,
    ]
    records = [
        {
            "part": p.number,
            "previewed": p.previewed,
            "finished": p.run.finished,
            "cycle_s": p.run.done.cycle_s,
            "peak_load_pct": None if p.run.rejected else p.run.result.peak_load_pct,
            "load_errors_pct": p.run.load_errors(),
            "overshoot_pct": _finite(p.overshoot_pct),  # None: rejected
            "events": [e["event"] for e in p.run.events],
        }
        for p in parts
    ]
    (out / f"{stem}.json").write_text(json.dumps(records, indent=1) + "\n")
    path = out / f"{stem}.md"
    path.write_text("\n".join(lines) + "\n")
    return path, text, (ok, said)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


async def run(program: Path, workdir: Path, parts: int, log) -> list[SeriesPart]:
    """The series on a LinuxCNC of its own, started and stopped here."""
    loop = asyncio.get_running_loop()
    cnc = LinuxCNC()
    await loop.run_in_executor(None, cnc.start)
    log(f"LinuxCNC ready in {cnc.ready_s:.2f} s")
    try:
        return await run_series(cnc, program, workdir, parts=parts, log=log)
    finally:
        await loop.run_in_executor(None, cnc.stop)


def main(program: str | None, parts: int, out: Path) -> int:
    """`python -m hil.linuxcnc series`: the report, and 0 when parts JUDGED_FROM on were
    each faster than part 1 with a lower peak error."""
    if parts < JUDGED_FROM:
        raise ValueError(f"--parts {parts}: at least {JUDGED_FROM}, the first part judged")
    path = Path(program) if program else PROGRAMS_DIR / f"{SERIES_PROGRAM}.ngc"
    scenario_for(path)  # refused before LinuxCNC starts
    with tempfile.TemporaryDirectory(prefix="edge-hil-linuxcnc-series-") as workdir:
        made = asyncio.run(run(path, Path(workdir), parts, lambda t: print(t, flush=True)))
    report, text, (ok, said) = write_report(made, out, parts)
    print(text)
    print(f"\n{'met' if ok else 'NOT met'}: {said}\nreport: {report}")
    return 0 if ok else 1
