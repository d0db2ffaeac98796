"""The bench runner and its report: baseline runs, table, JSON and plots."""

import asyncio
import json
import math

import pytest

from hil.__main__ import main
from hil.bench import BASELINE, Progress, run_realtime, run_simulated, time_limit_s
from hil.oracle import oracle
from hil.report import HEADER, notes, table, write_report
from hil.scenario import load_scenario, parse_scenario, scenario_path

pytestmark = pytest.mark.timeout(60)

SHORT = """
name = "short"
description = "a 1.5 s cut with a link loss in it"
[[segments]]
kind = "cut"
length_mm = 30
depth_mm = 5
width_mm = 10
feed_mm_min = 1500
[[events]]
kind = "link_loss"
start_s = 0.3
duration_s = 0.5
"""


def test_a_simulated_baseline_run_is_measured_against_its_oracle():
    scenario = load_scenario(scenario_path("hard_spot"))
    run = run_simulated(scenario)
    assert run.driver == BASELINE
    assert run.result.finished
    assert run.oracle_s == oracle(scenario).cycle_time_s
    assert run.ratio == pytest.approx(run.result.cycle_time_s / run.oracle_s)
    assert set(run.trace["override_pct"]) == {100.0}


def test_a_run_that_cannot_finish_stops_at_the_time_limit_and_says_so():
    scenario = parse_scenario(SHORT)
    held = parse_scenario(SHORT + "[machine]\noverload_alarm_pct = 10\noverload_alarm_s = 0.1\n")
    run = run_simulated(held)  # the drive trips at once: the part never ends
    assert not run.result.finished
    assert math.isnan(run.ratio)
    assert "overload alarm at" in notes(run)
    assert run_simulated(scenario).result.finished
    assert time_limit_s(10.0) == 60.0


def test_real_time_over_modbus_gives_the_same_figures_as_simulated_time():
    scenario = parse_scenario(SHORT)
    live = asyncio.run(run_realtime(scenario))
    simulated = run_simulated(scenario)
    assert live.result.finished
    assert live.result.cycle_time_s == simulated.result.cycle_time_s
    assert live.result.peak_load_pct == simulated.result.peak_load_pct


def test_the_report_has_a_row_per_run_a_png_per_scenario_and_json(tmp_path):
    runs = [run_simulated(load_scenario(scenario_path(name))) for name in ("breakage", "overload")]
    path = write_report(runs, tmp_path)
    text = path.read_text()
    for column in HEADER:
        assert column in text
    assert "| breakage " in text and "tool broke at" in text
    for stem in ("breakage", "overload"):
        assert (tmp_path / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = json.loads((tmp_path / "report.json").read_text())
    assert [r["scenario"] for r in records] == ["breakage", "overload"]
    assert records[1]["above_limit_s"] > 3.0  # the overload pass, at the programmed feed


def test_the_table_lines_up():
    lines = table([run_simulated(load_scenario(scenario_path("steady_cut")))]).splitlines()
    assert len(lines) == 3
    assert len({len(line) for line in lines}) == 1


def test_progress_prints_a_line_every_few_seconds_when_not_on_a_terminal(capsys):
    import sys

    progress = Progress(sys.stderr)
    for second in range(12):
        progress(0, 3, float(second))
    progress(3, 3, 12.0)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "hil: [....................] 0/3 scenarios finished, 0 s",
        "hil: [....................] 0/3 scenarios finished, 5 s",
        "hil: [....................] 0/3 scenarios finished, 10 s",
        "hil: [####################] 3/3 scenarios finished, 12 s",
    ]


def test_bench_command_on_simulated_time_prints_the_table_and_writes_the_report(tmp_path, capsys):
    assert main(["bench", "--sim", "--out", str(tmp_path), "steady_cut"]) == 0
    out = capsys.readouterr().out
    assert "| steady cut " in out and f"report: {tmp_path}/report.md" in out
    assert main(["bench", "--sim", "--out", str(tmp_path), "no_such"]) == 1
    assert "no such scenario" in capsys.readouterr().err
