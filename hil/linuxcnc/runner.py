"""Runs a headless simulated LinuxCNC for the bench: starts it on a copy of config/ in a
temporary folder, runs G-code programs on it to their end with their cycle times, and shuts it
down, within bounded times, leaving nothing running.

LinuxCNC's own start script runs the show: it loads HAL and the realtime side, then runs the
config's display, here `edge-session` (session.py), and shuts everything down when the display
returns. This module talks to that display over a Unix socket. As root, LinuxCNC's realtime side
refuses to start unless RTAPI_UID names an unprivileged user, who must also be able to create
its socket (RTAPI_FIFO_PATH): `unprivileged_uid` makes the user (once), the session gives it a
folder. Every process of a session carries EDGE_LINUXCNC_SESSION in its environment, so what a
session left behind is found by that mark, and only that is ever killed.

Only one LinuxCNC runs on a computer at a time (/tmp/linuxcnc.lock, fixed shared-memory keys):
`start` refuses when another one is running. Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hil.linuxcnc import CONFIG_DIR, REPO_ROOT, SYSTEM_PYTHON

SOCKET_ENV = "EDGE_LINUXCNC_SESSION"  # session.py reads it too
INI_NAME = "edge_sim.ini"
#: The unprivileged user LinuxCNC's realtime side runs as when we are root.
DEFAULT_USER = "linuxcnc-hil"
LOCK_FILE = Path("/tmp/linuxcnc.lock")
#: The NML buffers' description ([EMC] NML_FILE's default; the bench's INI keeps it).
NML_FILE = Path("/usr/share/linuxcnc/linuxcnc.nml")
#: LinuxCNC's own servers, by command name: one of them alive is a LinuxCNC running.
SERVER_NAMES = frozenset({"linuxcncsvr", "milltask", "rtapi_app"})

#: Measured here (docs/linuxcnc.md): ready in about 1.1 s, down in about 0.5 s. The bounds are
#: an order of magnitude above, for a loaded CI machine or a Raspberry Pi.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
KILL_WAIT_S = 5.0


class LinuxCNCError(RuntimeError):
    """LinuxCNC would not start, run or stop; the message says what and where its logs are."""


class LinuxCNCMissing(LinuxCNCError):
    """LinuxCNC (Debian's linuxcnc-uspace) is not installed."""


class LinuxCNCBusy(LinuxCNCError):
    """Another LinuxCNC runs on this computer."""


@dataclass(frozen=True)
class ProgramRun:
    """One program run to its end: cycle time from cycle start to the interpreter idle."""

    program: str
    cycle_s: float
    ok: bool
    messages: tuple[str, ...] = ()


def missing_reason() -> str | None:
    """Why LinuxCNC cannot run here, or None when it can."""
    if shutil.which("linuxcnc") is None:
        return "LinuxCNC is not installed: apt-get install linuxcnc-uspace (docs/linuxcnc.md)"
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} is missing: LinuxCNC's Python modules need Debian's python3"
    return None


def unprivileged_uid(user: str = DEFAULT_USER) -> int | None:
    """The uid LinuxCNC's realtime side must run as (RTAPI_UID): None unless we are root; as
    root, `user`'s, made as a system user without home or login the first time."""
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(user).pw_uid
    made = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
        capture_output=True,
        text=True,
    )
    try:  # another process may have made it meanwhile (useradd then fails): look again
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise LinuxCNCError(f"cannot create user {user!r}: {made.stderr.strip()}") from None


def _processes() -> list[tuple[int, str, str, bytes]]:
    """(pid, command name, state, environment) of every process we may read."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        state = stat[stat.rindex(")") + 2 :].split(" ", 1)[0]
        found.append((int(entry.name), name, state, environ))
    return found


def _remove_nml_memory() -> None:
    """`ipcrm` each shared-memory buffer of LinuxCNC's NML file, as its own shutdown does."""
    with contextlib.suppress(OSError):
        for line in NML_FILE.read_text().splitlines():
            words = line.split()
            if len(words) > 9 and words[0] == "B" and words[2] == "SHMEM":
                subprocess.run(["ipcrm", "-M", words[9]], capture_output=True)


def linuxcnc_pids(mark: str) -> list[int]:
    """Live (not zombie) processes carrying session `mark` in their environment."""
    needle = f"{SOCKET_ENV}={mark}".encode()
    return [
        pid
        for pid, _, state, environ in _processes()
        if state != "Z" and needle in environ.split(b"\0")
    ]


def _foreign_linuxcnc() -> list[int]:
    """Live LinuxCNC server processes that no session of ours (still present) started."""
    pids = []
    for pid, name, state, environ in _processes():
        if state == "Z" or name not in SERVER_NAMES:
            continue
        marks = [v for v in environ.split(b"\0") if v.startswith(f"{SOCKET_ENV}=".encode())]
        if not marks:
            pids.append(pid)
    return pids


class LinuxCNC:
    """One headless LinuxCNC session: `with LinuxCNC() as cnc: cnc.run("part.ngc")`.

    `workdir` (default: a fresh temporary folder, removed at `stop`) receives the config copy,
    LinuxCNC's logs (`home/linuxcnc_*.txt`, written when it fails) and the session's socket.
    """

    def __init__(
        self,
        config_dir: Path | str = CONFIG_DIR,
        *,
        user: str = DEFAULT_USER,
        workdir: Path | str | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        self.config_dir = Path(config_dir)
        self.user = user
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else None
        self.env: dict[str, str] = {}
        self.ready_s = 0.0  # LinuxCNC started until the machine was homed and in auto mode
        self.stop_s = 0.0  # quit sent until every process of the session was gone
        self.killed: list[int] = []  # leftovers killed at stop
        self._proc: subprocess.Popen | None = None
        self._out = None  # LinuxCNC's own stdout and stderr (little: it logs to files)
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._inbox = None

    # -- life cycle ---------------------------------------------------------------------------

    @property
    def ini(self) -> Path:
        return self.workdir / "config" / INI_NAME

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> LinuxCNC:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Start LinuxCNC and wait until its machine is on, homed and in auto mode."""
        reason = missing_reason()
        if reason:
            raise LinuxCNCMissing(reason)
        self._clean_stale()
        foreign = _foreign_linuxcnc()
        if foreign:
            raise LinuxCNCBusy(f"another LinuxCNC is running here (pids {foreign}); stop it first")
        started = time.monotonic()
        self._prepare()
        self._out = open(self.workdir / "linuxcnc.out", "wb")  # noqa: SIM115 (closed at stop)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.env[SOCKET_ENV])
        self._listener.listen(1)
        self._proc = subprocess.Popen(
            ["linuxcnc", str(self.ini)],
            cwd=self.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: signalled as one at stop
        )
        try:
            self._accept(started + self.start_timeout_s)
            reply = self._receive(started + self.start_timeout_s)
            if reply.get("event") != "ready":
                raise LinuxCNCError(f"LinuxCNC session failed: {reply.get('message', reply)}")
        except BaseException:
            self.stop()
            raise
        self.ready_s = time.monotonic() - started

    def _prepare(self) -> None:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="edge-linuxcnc-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config"
        shutil.copytree(self.config_dir, config, dirs_exist_ok=True)
        os.chmod(config / "bin" / "edge-session", 0o755)
        home = self.workdir / "home"  # LinuxCNC copies its logs here when it fails
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
        env.update(
            HOME=str(home),
            PYTHONPATH=str(REPO_ROOT),
            **{SOCKET_ENV: str(self.workdir / "session.sock")},
        )
        uid = unprivileged_uid(self.user)
        if uid is not None:
            fifo_dir = self.workdir / "rtapi"  # rtapi_app binds its socket as that user,
            fifo_dir.mkdir(exist_ok=True)
            os.chmod(self.workdir, 0o711)  # who must pass through the (0700) temporary folder
            os.chown(fifo_dir, uid, -1)
            env.update(RTAPI_UID=str(uid), RTAPI_FIFO_PATH=str(fifo_dir / ".rtapi_fifo"))
        self.env = env

    def _accept(self, deadline: float) -> None:
        while True:
            readable, _, _ = select.select([self._listener], [], [], 0.1)
            if readable:
                self._conn, _ = self._listener.accept()
                self._inbox = self._conn.makefile("r", encoding="utf-8")
                return
            self._check_alive("starting")
            if time.monotonic() > deadline:
                raise LinuxCNCError(f"LinuxCNC not ready after {self.start_timeout_s:g} s")

    def _receive(self, deadline: float) -> dict:
        while True:
            readable, _, _ = select.select([self._conn], [], [], 0.1)
            if readable:
                line = self._inbox.readline()
                if not line:
                    self._check_alive("running")
                    raise LinuxCNCError(f"LinuxCNC session closed its socket{self._logs()}")
                return json.loads(line)
            self._check_alive("running")
            if time.monotonic() > deadline:
                raise LinuxCNCError("LinuxCNC session did not answer in time")

    def _send(self, message: dict) -> None:
        self._conn.sendall((json.dumps(message) + "\n").encode())

    def _check_alive(self, doing: str) -> None:
        if self._proc.poll() is not None:
            raise LinuxCNCError(
                f"LinuxCNC exited with status {self._proc.returncode} while {doing}{self._logs()}"
            )

    def _logs(self) -> str:
        """The end of whatever LinuxCNC logged, for an error message."""
        said = []
        for name in ("home/linuxcnc_debug.txt", "home/linuxcnc_print.txt", "linuxcnc.out"):
            path = self.workdir / name
            if path.exists() and path.stat().st_size:
                tail = path.read_text(errors="replace").strip().splitlines()[-8:]
                said.append(f"{name}: " + " | ".join(tail))
        return (": " + "; ".join(said)) if said else ""

    def run(
        self, program: Path | str, *, feed_override: float | None = None, timeout_s: float = 600
    ) -> ProgramRun:
        """Run `program` to its end (a feed override first, if given; 1.0 = 100 %)."""
        if self._conn is None:
            raise LinuxCNCError("run() before start()")
        path = str(Path(program).resolve())
        if not Path(path).is_file():
            raise LinuxCNCError(f"{program}: no such program")
        self._send(
            {"cmd": "run", "program": path, "feed_override": feed_override, "timeout_s": timeout_s}
        )
        reply = self._receive(time.monotonic() + timeout_s + 10.0)
        return ProgramRun(path, reply["cycle_s"], reply["ok"], tuple(reply["messages"]))

    def abort(self) -> None:
        """Abort the program `run` is running (from another thread): `run` returns, not ok,
        with the time it ran; a no-op after its end."""
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._send({"cmd": "abort"})

    def halcmd(self, *args: str, timeout_s: float = 10.0) -> str:
        """Run `halcmd ARGS` in this session (e.g. "sets", "agent-adaptive-feed", "0.5")."""
        done = subprocess.run(
            ["halcmd", *args], env=self.env, capture_output=True, text=True, timeout=timeout_s
        )
        if done.returncode != 0:
            raise LinuxCNCError(f"halcmd {' '.join(args)}: {done.stderr.strip() or done.stdout}")
        return done.stdout

    def stop(self) -> float:
        """Quit the session and wait for LinuxCNC's own shutdown; past `stop_timeout_s`,
        signal its process group, then kill what is left of the session. Returns the time it
        took. Safe to call twice, and after a failed start."""
        started = time.monotonic()
        forced = False
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._send({"cmd": "quit"})
            with contextlib.suppress(OSError):
                self._inbox.close()
                self._conn.close()
            self._conn = self._inbox = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                forced = True
                self._signal_group(signal.SIGTERM)  # the script traps it and cleans up
                try:
                    self._proc.wait(timeout=KILL_WAIT_S)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    self._proc.wait()
            self._proc = None
        if self._out is not None:
            self._out.close()
            self._out = None
        if self.env:
            self._kill_leftovers(self.env[SOCKET_ENV], forced=forced)
        self.stop_s = time.monotonic() - started
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        return self.stop_s

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signum)

    def _kill_leftovers(self, mark: str, *, forced: bool = False) -> None:
        """What the session left running: first `halrun -U` (unloads HAL, stops rtapi_app),
        then a SIGKILL for each process still carrying the session's mark; then, as LinuxCNC's
        own shutdown would have, the lock file and the NML shared memory (left there, they
        hang the next LinuxCNC's first status poll)."""
        if not linuxcnc_pids(mark) and not forced:
            return
        env = dict(self.env or os.environ)
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run(["halrun", "-U"], env=env, capture_output=True, timeout=STOP_TIMEOUT_S)
        deadline = time.monotonic() + KILL_WAIT_S
        while (pids := linuxcnc_pids(mark)) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(pid)
            time.sleep(0.1)
        if not _foreign_linuxcnc() and not linuxcnc_pids(mark):
            LOCK_FILE.unlink(missing_ok=True)
            _remove_nml_memory()

    def _clean_stale(self) -> None:
        """Leftovers of earlier sessions of ours whose folder is gone (a killed test run)."""
        stale = set()
        prefix = f"{SOCKET_ENV}=".encode()
        for _, _, state, environ in _processes():
            for var in environ.split(b"\0"):
                if var.startswith(prefix) and state != "Z":
                    path = var[len(prefix) :].decode(errors="replace")
                    if not Path(path).parent.exists():
                        stale.add(path)
        for mark in stale:
            self._kill_leftovers(mark)


__all__ = [
    "LinuxCNC",
    "LinuxCNCBusy",
    "LinuxCNCError",
    "LinuxCNCMissing",
    "ProgramRun",
    "missing_reason",
    "unprivileged_uid",
]
