"""The `edge-agent` command: exit codes and one-line errors a person can act on."""

import asyncio
import io
import json
from pathlib import Path

import pytest

from edge_agent.cli import main
from hil.__main__ import main as hil_main
from hil.demo import run_demo

ROOT = Path(__file__).resolve().parent.parent


def test_check_config_prints_the_read_plan(capsys):
    assert main(["check-config", str(ROOT / "edge_agent/defaults/demo.toml")]) == 0
    out = capsys.readouterr().out
    assert "ok: 23 channels published" in out
    assert "  controller fast: every 0.02 s, 18 channels; 5 read requests: holding 100+1" in out
    assert "  controller slow: every 1 s, 4 channels; 2 read requests" in out


def test_check_config_error_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "agent.toml"
    bad.write_text(
        (ROOT / "deploy/edge-agent.example.toml")
        .read_text()
        .replace('site = "plant-a"', 'site = "plant-a"\nsight = 1')
    )
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"edge-agent: {bad}:12: machine.sight: unknown key")


def test_run_refuses_an_invalid_config(tmp_path, capsys):
    bad = tmp_path / "agent.toml"
    bad.write_text("[machine]\n")
    assert main(["run", str(bad)]) == 2
    assert "machine.site: missing" in capsys.readouterr().err


def test_decode_of_a_missing_spool_is_one_line(tmp_path, capsys):
    assert main(["decode", str(tmp_path / "none.db")]) == 2
    assert capsys.readouterr().err.strip().endswith("none.db: no such spool file")


def test_the_agent_has_no_demo_the_bench_has(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--duration", "1"])
    assert "invalid choice: 'demo'" in capsys.readouterr().err


def test_unknown_recording_is_one_line(capsys):
    assert hil_main(["demo", "--duration", "1", "--replay", "experiment_99"]) == 1
    assert "experiment_99: no such recording (bundled: experiment_01" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_demo_runs_and_summarises_then_decode_reads_its_telemetry_file(tmp_path, capsys):
    out, progress = io.StringIO(), io.StringIO()
    spool, telemetry = tmp_path / "demo.db", tmp_path / "demo.msgpack"
    agent = asyncio.run(
        run_demo(2.0, spool=str(spool), telemetry=str(telemetry), out=out, progress=progress)
    )
    summary = out.getvalue()
    for line in (
        "  controller         ",
        " requests, 0 preempted, 0 connections lost; faults: none",
        "    group fast ",
        "latency p50",
        "frames stored",
        "bytes per point",
        f"to {telemetry}, 0 left in the spool",
    ):
        assert line in summary
    assert agent.controller_source.stats().samples > 0 and agent.journal.frames_stored >= 3
    assert "samples" in progress.getvalue()
    assert main(["decode", str(spool)]) == 0  # everything was delivered: the spool is empty
    assert capsys.readouterr().out == ""
    assert main(["decode", str(telemetry)]) == 0
    frames = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # The birth on connecting, then every stored payload in order, then the death.
    assert [f["seq"] for f in frames] == [1, *range(1, agent.journal.frames_stored + 1), None]
    assert [f["kind"] for f in frames[:2]] == ["birth", "birth"]
    assert {f["kind"] for f in frames[2:-1]} == {"event", "data"}
    assert frames[-1]["kind"] == "death" and frames[-1]["birth_seq"] == 1


def test_check_config_of_an_opcua_machine_lists_its_groups(tmp_path, capsys):
    """docs/opcua.md's example for the bench server, as a whole agent configuration: no
    Modbus section needed."""
    docs = (ROOT / "docs/opcua.md").read_text()
    example = docs.split("The bench server, `python -m hil.opcua_server`")[1]
    example = example.split("```toml\n")[1].split("```")[0]
    config = tmp_path / "agent.toml"
    config.write_text('[machine]\nsite = "s"\nmachine_id = "m"\n' + example)
    assert main(["check-config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "ok: 5 channels published" in out
    assert "  opcua fast: every 0.1 s, 4 channels" in out
    assert "  opcua slow: every 1 s, 1 channels" in out
    assert "controller" not in out
