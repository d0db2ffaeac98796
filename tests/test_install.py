"""deploy/install.sh and deploy/uninstall.sh, run for real into a temporary root.

Every path points into tmp_path (PREFIX, ETC_DIR, UNIT_DIR, BIN_DIR, STATE_DIR), the user is
not created (CREATE_USER=no) and systemctl is a stub that logs its arguments and answers
`is-active` from a file: these tests never touch the machine's /opt, /etc or systemd.
Each install makes a real virtual environment and pip-installs a real wheel of this tree with
its real dependencies; the wheel is built once per module (compiling the Cython kernels
dominates) and the dependencies come from a wheelhouse downloaded once, so an install costs
what `python -m venv` costs, about 5 s.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.tools import closed_to_others, missing, shared_temp_dir

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
INSTALL = DEPLOY / "install.sh"
UNINSTALL = DEPLOY / "uninstall.sh"

# The first test that installs builds the wheel and the wheelhouse (about 40 s on two cores,
# the kernels' compilation) and then makes up to four installs of about 5 s each.
INSTALLS = pytest.mark.timeout(180)
BUILD_TIMEOUT_S = 150
SCRIPT_TIMEOUT_S = 90

# What the real deploy/edge-agent.service names, for a tree where it is not written yet.
STAND_IN_UNIT = """\
[Unit]
Description=edge-agent (a test's stand-in for deploy/edge-agent.service)

[Service]
ExecStart=/opt/edge-agent/current/bin/edge-agent run /etc/edge-agent/agent.toml
User=edge-agent
Group=edge-agent
SupplementaryGroups=dialout
StateDirectory=edge-agent
ConfigurationDirectory=edge-agent

[Install]
WantedBy=multi-user.target
"""

# systemctl: every call logged; `is-active` answers from the file `active`, `restart` fails
# while the file `restart-fails` exists.
SYSTEMCTL_STUB = """\
#!/bin/sh
echo "$*" >> "{root}/systemctl.log"
case "$1" in
is-active) test -e "{root}/active" ;;
restart) test ! -e "{root}/restart-fails" ;;
esac
"""

INVALID_CONFIG = b'[machine]\nsite = 7\nmachine_id = "mill-07"\n'


@dataclass(frozen=True)
class Packages:
    wheel: Path
    wheelhouse: Path

    @property
    def version(self) -> str:
        return self.wheel.name.split("-")[1]  # edge_agent-<version>-<tags>.whl


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> Packages:
    """The wheel of this tree, and a wheelhouse with the wheels of its dependencies."""
    out = tmp_path_factory.mktemp("packages")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    # Built as pip builds it on the Pi: in an isolated environment with pyproject's build
    # requirements (the project's venv need not have Cython). About 35 s on two cores.
    wheels = out / "wheel"
    _checked([*pip, "wheel", "--no-deps", "-w", wheels, _source_copy(out / "tree")])
    (wheel,) = wheels.glob("edge_agent-*.whl")
    wheelhouse = out / "wheelhouse"
    _checked([*pip, "download", "--dest", wheelhouse, wheel])
    return Packages(wheel, wheelhouse)


def _source_copy(to: Path) -> Path:
    """The tree as install.sh copies it: without a developer's build output (setuptools
    packs whatever an old build/ holds, a package since removed included)."""
    shutil.copytree(
        ROOT,
        to,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            ".*_cache",
            ".hypothesis",
            "reports",
            "*.so",
            "*.db",
        ),
    )
    return to


def _checked(command: list) -> None:
    result = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
    )
    assert result.returncode == 0, f"{command}:\n{result.stdout}{result.stderr}"


class Site:
    """One temporary machine: the directories install.sh writes and a systemctl stub."""

    def __init__(self, root: Path, packages: Packages) -> None:
        self.root = root
        self.packages = packages
        self.prefix = root / "opt"
        self.etc = root / "etc"
        self.units = root / "units"
        self.bin = root / "bin"
        self.state = root / "state"
        self.bin.mkdir()
        self.deploy = DEPLOY if (DEPLOY / "edge-agent.service").exists() else self._stand_in()
        systemctl = root / "systemctl"
        systemctl.write_text(SYSTEMCTL_STUB.format(root=root))
        systemctl.chmod(0o755)
        self.env = {
            **os.environ,
            "PREFIX": str(self.prefix),
            "ETC_DIR": str(self.etc),
            "UNIT_DIR": str(self.units),
            "BIN_DIR": str(self.bin),
            "STATE_DIR": str(self.state),
            "DEPLOY_DIR": str(self.deploy),
            "PYTHON": sys.executable,
            "SYSTEMCTL": str(systemctl),
            "CREATE_USER": "no",
            "PIP_ARGS": f"--no-index --find-links {packages.wheelhouse}",
        }

    def _stand_in(self) -> Path:
        deploy = self.root / "deploy"
        deploy.mkdir()
        for name in ("edge-agent.example.toml", "edge-collector.example.toml"):
            shutil.copy(DEPLOY / name, deploy / name)
        shutil.copy(DEPLOY / "edge-collector.service", deploy / "edge-collector.service")
        (deploy / "edge-agent.service").write_text(STAND_IN_UNIT)
        return deploy

    def run(self, script: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(script), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT_S,
        )

    def install(self, *args: str) -> subprocess.CompletedProcess:
        result = self.run(INSTALL, "--from", str(self.packages.wheel), *args)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def releases(self) -> list[str]:
        return sorted(p.name for p in (self.prefix / "releases").iterdir())

    def current(self) -> str:
        return Path(os.readlink(self.prefix / "current")).name

    def calls(self) -> list[str]:
        log = self.root / "systemctl.log"
        return log.read_text().splitlines() if log.exists() else []

    def set_active(self, active: bool = True) -> None:
        (self.root / "active").unlink(missing_ok=True)
        if active:
            (self.root / "active").touch()


@dataclass(frozen=True)
class Snapshot:
    releases: list[str]
    current: str
    calls: list[str]


def _snapshot(site: Site) -> Snapshot:
    return Snapshot(site.releases(), site.current(), site.calls())


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("edge-agent install: "), lines[0]
    return lines[0]


# --- a fresh install ------------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, packages) -> Site:
    site = Site(tmp_path_factory.mktemp("fresh"), packages)
    site.install()
    return site


@INSTALLS
def test_a_fresh_install_makes_one_release_and_points_current_at_it(fresh):
    assert fresh.releases() == [fresh.current()]
    assert fresh.current().startswith(f"{fresh.packages.version}-")
    assert os.readlink(fresh.prefix / "current") == f"releases/{fresh.current()}"


@INSTALLS
def test_the_current_command_runs(fresh):
    for command in (fresh.prefix / "current" / "bin" / "edge-agent", fresh.bin / "edge-agent"):
        result = subprocess.run([command, "--version"], capture_output=True, text=True)
        assert result.stdout.strip() == f"edge-agent {fresh.packages.version}"


@INSTALLS
def test_the_wheel_and_the_install_carry_no_bench(fresh):
    """The simulated machine, its recordings and the LinuxCNC files stay in the source tree:
    nothing the agent runs may need them on a device."""
    with zipfile.ZipFile(fresh.packages.wheel) as wheel:
        names = wheel.namelist()
    assert not [n for n in names if n.startswith(("hil/", "tests/", "benchmarks/"))]
    assert any(n.startswith("edge_agent/kernels/") for n in names)
    python = fresh.prefix / "current" / "bin" / "python"
    probe = "import importlib.util as u; print(u.find_spec('hil'))"
    result = subprocess.run([python, "-I", "-c", probe], capture_output=True, text=True)
    assert result.stdout.strip() == "None", result.stdout + result.stderr


@INSTALLS
def test_a_fresh_install_installs_the_example_configuration_readable_by_the_group_only(fresh):
    example = (fresh.deploy / "edge-agent.example.toml").read_bytes()
    assert (fresh.etc / "agent.toml").read_bytes() == example
    assert (fresh.etc / "agent.toml.example").read_bytes() == example
    assert stat.S_IMODE((fresh.etc / "agent.toml").stat().st_mode) == 0o640
    assert stat.S_IMODE(fresh.etc.stat().st_mode) == 0o750


@INSTALLS
def test_a_fresh_install_installs_and_enables_the_unit_but_does_not_start_it(fresh):
    unit = (fresh.deploy / "edge-agent.service").read_bytes()
    assert (fresh.units / "edge-agent.service").read_bytes() == unit
    assert not (fresh.units / "edge-collector.service").exists()
    calls = fresh.calls()
    assert calls.index("daemon-reload") < calls.index("enable edge-agent")
    assert not [call for call in calls if call.split()[0] in ("start", "restart")]


@INSTALLS
def test_rollback_without_an_older_release_fails_and_changes_nothing(fresh):
    before = fresh.current()
    result = fresh.run(INSTALL, "--rollback")
    assert result.returncode != 0
    assert "no release older than" in _one_error_line(result)
    assert fresh.current() == before


# --- upgrades, a rollback and pruning: one machine's history ---------------------------


@dataclass(frozen=True)
class History:
    site: Site
    edited_config: bytes
    state_file: Path
    first: Snapshot  # installed, the service not running
    upgraded: Snapshot  # the config edited, the service running, installed again
    rolled_back: Snapshot  # install.sh --rollback
    pruned: Snapshot  # installed twice more


@pytest.fixture(scope="module")
def history(tmp_path_factory, packages) -> History:
    site = Site(tmp_path_factory.mktemp("history"), packages)
    site.install()
    first = _snapshot(site)
    edited = (site.etc / "agent.toml").read_bytes().replace(b"mill-07", b"mill-12")
    (site.etc / "agent.toml").write_bytes(edited)
    site.state.mkdir()
    state_file = site.state / "spool.db"
    state_file.write_bytes(b"SQLite format 3\x00 and what is spooled")
    site.set_active()
    site.install()
    upgraded = _snapshot(site)
    rollback = site.run(INSTALL, "--rollback")
    assert rollback.returncode == 0, rollback.stderr
    rolled_back = _snapshot(site)
    site.install()
    site.install()
    return History(site, edited, state_file, first, upgraded, rolled_back, _snapshot(site))


@INSTALLS
def test_an_upgrade_adds_a_release_and_points_current_at_it(history):
    assert len(history.upgraded.releases) == 2
    assert history.first.current in history.upgraded.releases
    assert history.upgraded.current == history.upgraded.releases[-1] != history.first.current


@INSTALLS
def test_an_upgrade_restarts_a_running_service_after_reloading_its_unit(history):
    calls = history.upgraded.calls[len(history.first.calls) :]
    assert calls.index("daemon-reload") < calls.index("restart edge-agent")


@INSTALLS
def test_upgrades_keep_an_edited_configuration_byte_for_byte(history):
    assert (history.site.etc / "agent.toml").read_bytes() == history.edited_config


@INSTALLS
def test_upgrades_and_rollbacks_never_touch_the_state(history):
    assert history.state_file.read_bytes() == b"SQLite format 3\x00 and what is spooled"
    assert [p.name for p in history.site.state.iterdir()] == ["spool.db"]


@INSTALLS
def test_rollback_points_current_at_the_previous_release_and_restarts(history):
    assert history.rolled_back.current == history.first.current
    assert history.rolled_back.releases == history.upgraded.releases
    assert history.rolled_back.calls[-1] == "restart edge-agent"


@INSTALLS
def test_installs_keep_three_releases_with_the_current_and_the_previous(history):
    # first, upgraded, then two more: the first is the one pruned.
    pruned = history.pruned
    assert len(pruned.releases) == 3
    assert history.first.current not in pruned.releases
    assert history.upgraded.current in pruned.releases
    assert pruned.current == pruned.releases[-1]


# --- failed upgrades ---------------------------------------------------------------------


@INSTALLS
def test_an_upgrade_the_configuration_fails_keeps_the_running_release(tmp_path, packages):
    site = Site(tmp_path, packages)
    site.install()
    running = site.current()
    site.set_active()
    (site.etc / "agent.toml").write_bytes(INVALID_CONFIG)

    result = site.run(INSTALL, "--from", str(packages.wheel))

    assert result.returncode != 0
    error = _one_error_line(result)
    assert "agent.toml:2: machine.site" in error and f"keeps running {running}" in error
    assert site.current() == running
    assert site.releases() == [running]  # the rejected release is not kept
    assert "restart edge-agent" not in site.calls()
    assert (site.etc / "agent.toml").read_bytes() == INVALID_CONFIG


@INSTALLS
def test_an_upgrade_that_does_not_start_goes_back_to_the_running_release(tmp_path, packages):
    site = Site(tmp_path, packages)
    site.install()
    running = site.current()
    site.set_active()
    (site.root / "restart-fails").touch()

    result = site.run(INSTALL, "--from", str(packages.wheel))

    assert result.returncode != 0
    assert "did not start" in _one_error_line(result)
    assert site.current() == running
    assert site.releases() == [running]
    assert site.calls()[-2:] == ["restart edge-agent", "restart edge-agent"]


# --- uninstall ---------------------------------------------------------------------------


@INSTALLS
def test_uninstall_removes_releases_and_units_but_keeps_configuration_and_state(tmp_path, packages):
    site = Site(tmp_path, packages)
    site.install("--collector")
    assert (site.units / "edge-collector.service").exists()
    site.state.mkdir()
    (site.state / "teach.json").write_text("{}")

    result = site.run(UNINSTALL)

    assert result.returncode == 0, result.stderr
    assert not site.prefix.exists()
    assert not list(site.units.iterdir())
    assert not (site.bin / "edge-agent").is_symlink()
    assert (site.etc / "agent.toml").exists() and (site.state / "teach.json").exists()
    assert str(site.etc) in result.stdout and "--purge" in result.stdout
    for service in ("edge-agent", "edge-collector"):
        assert f"stop {service}" in site.calls() and f"disable {service}" in site.calls()
    assert site.calls()[-1] == "daemon-reload"


@INSTALLS
def test_uninstall_purge_removes_configuration_and_state_too(tmp_path, packages):
    site = Site(tmp_path, packages)
    site.install()
    site.state.mkdir()
    (site.state / "spool.db").write_bytes(b"")

    result = site.run(UNINSTALL, "--purge")

    assert result.returncode == 0, result.stderr
    assert not site.prefix.exists() and not site.etc.exists() and not site.state.exists()


# --- refusals, without installing -------------------------------------------------------


def test_install_refuses_what_is_neither_a_wheel_nor_a_source_tree(tmp_path):
    site = Site(tmp_path, Packages(tmp_path / "none.whl", tmp_path))
    (tmp_path / "notes.txt").write_text("")
    result = site.run(INSTALL, "--from", str(tmp_path / "notes.txt"))
    assert result.returncode != 0
    assert "neither a wheel" in _one_error_line(result)
    assert not site.prefix.exists()


@pytest.fixture
def shared_dir():
    directory = shared_temp_dir("edge-agent-install-")
    yield directory
    shutil.rmtree(directory)


def as_nobody(script: Path, shared: Path) -> tuple[list[str], Path]:
    """The command that runs `script` as the user nobody, and the directory to run it in.
    Nobody cannot enter the checkout when it sits in a private directory (a home is 0750 on
    recent Ubuntu), nor pytest's tmp_path: the script is run from a copy in `shared`."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to run the script as a normal user")
    closed = closed_to_others(shared)
    if closed is not None:
        pytest.fail(
            f"{closed} is closed to other users: point TMPDIR at a directory they can enter"
        )
    copy = shared / script.name
    shutil.copy(script, copy)
    copy.chmod(0o755)
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", str(copy)], shared


@pytest.mark.parametrize("script", [INSTALL, UNINSTALL], ids=lambda p: p.name)
def test_creating_the_user_needs_root(tmp_path, shared_dir, script):
    site = Site(tmp_path, Packages(tmp_path / "none.whl", tmp_path))
    env = {**site.env, "CREATE_USER": "yes"}
    command, cwd = [str(script)], None
    if os.geteuid() == 0:
        command, cwd = as_nobody(script, shared_dir)
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, result.stderr  # that line only, no shell complaint
    assert "must run as root" in result.stderr.strip().splitlines()[-1]
    assert not site.prefix.exists() and not site.etc.exists()


# --- the scripts as text ----------------------------------------------------------------


@pytest.mark.parametrize("script", [INSTALL, UNINSTALL], ids=lambda p: p.name)
def test_the_script_is_executable_bash(script):
    assert os.access(script, os.X_OK), f"{script} lost its executable bit"
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)


@pytest.mark.parametrize("script", [INSTALL, UNINSTALL], ids=lambda p: p.name)
def test_the_script_passes_shellcheck(script):
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        missing("shellcheck is not installed (make test-deps, or sudo apt-get install shellcheck)")
    result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout
