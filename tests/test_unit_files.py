"""The systemd units as systemd itself reads them: `systemd-analyze security` rates their
hardening (exposure at most 2.0, the issue's bar) and `systemd-analyze verify` checks a copy
whose ExecStart names this checkout's installed entry point (the real /opt path does not
exist on a clean clone)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools import missing

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = ["edge-agent.service", "edge-collector.service"]
INSTALLED = "/opt/edge-agent/current/bin/edge-agent"


@pytest.fixture(scope="module")
def analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        missing("systemd-analyze not found; install: sudo apt-get install systemd")
    return path


def _copy(unit: str, tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at the edge-agent beside this Python."""
    text = (DEPLOY / unit).read_text()
    assert INSTALLED in text, f"{unit} no longer runs {INSTALLED}"
    entry = Path(sys.executable).parent / "edge-agent"
    assert entry.exists(), f"{entry}: the test's installed entry point is missing"
    copy = tmp_path / unit
    copy.write_text(text.replace(INSTALLED, str(entry)))
    return copy


@pytest.mark.parametrize("unit", UNITS)
def test_the_unit_is_rated_at_most_2_0_exposed(unit, analyze, tmp_path):
    result = subprocess.run(
        [analyze, "security", "--offline=true", str(_copy(unit, tmp_path))],
        capture_output=True,
        text=True,
        timeout=30,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_verifies_the_unit(unit, analyze, tmp_path):
    result = subprocess.run(
        [analyze, "verify", str(_copy(unit, tmp_path))], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_verify_would_catch_a_wrong_entry_point(analyze, tmp_path):
    copy = _copy("edge-agent.service", tmp_path)
    copy.write_text(copy.read_text().replace(str(Path(sys.executable).parent), "/nonexistent"))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True)
    assert result.returncode != 0 and "is not executable" in result.stderr


def test_the_agent_unit_is_a_notify_service_with_a_watchdog():
    text = (DEPLOY / "edge-agent.service").read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Z]\w+=", line)
    )
    assert settings["Type"] == "notify" and settings["NotifyAccess"] == "main"
    assert settings["Restart"] == "on-failure"
    assert float(settings["WatchdogSec"]) > 0
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert settings["SupplementaryGroups"] == "dialout"
    assert "PrivateUsers" not in settings  # it would break access through dialout
