"""The real agent and the standard load, each a process of its own, for the wall-clock
benchmarks (`bench_service.py`, `bench_sources.py`): `edge-agent run CONFIG` as systemd runs
it (logs on a pipe, as journald reads them), the serving process (`service_load.py`), readings
of /proc/<pid> and scrapes of the agent's metrics endpoint.

Bench support only: starts nothing but these two on loopback, asserts no figure, and ends only
the processes it started (their own sessions).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from contextlib import suppress
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: The agent's stop: the feed made safe, the batch spooled, drain_on_stop_s (2 s), the death.
AGENT_STOP_TIMEOUT_S = 30.0
LOAD_STOP_TIMEOUT_S = 10.0
#: systemd's variables: the agent here is not under systemd and must not think it is.
SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "LISTEN_FDS")


class BenchError(RuntimeError):
    """The run was not healthy; the message says what was missing."""


def window_from_env(variable: str, default_s: float) -> float:
    """The measured window in seconds from the environment variable `variable`, else
    `default_s`."""
    text = os.environ.get(variable, "")
    if not text:
        return default_s
    try:
        value = float(text)
    except ValueError:
        raise BenchError(f"{variable}={text!r}: expected seconds, e.g. 40") from None
    if value <= 0:
        raise BenchError(f"{variable}={text!r}: must be more than 0")
    return value


# -- /proc ------------------------------------------------------------------------------------


def proc_reading(pid: int) -> dict[str, int]:
    """One reading of the process: memory (kB) and threads from status, CPU ticks from stat,
    the I/O counters from io."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "Threads"):
                out[key] = int(value.split()[0])
    with open(f"/proc/{pid}/stat") as f:
        after_comm = f.read().rpartition(")")[2].split()
    out["cpu_ticks"] = int(after_comm[11]) + int(after_comm[12])  # utime, stime (fields 14, 15)
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = int(value)
    if "VmRSS" not in out:  # a zombie: it exited and has not been reaped yet
        raise ProcessLookupError(f"process {pid} has exited")
    return out


def cpu_pct(before: dict[str, int], after: dict[str, int], seconds: float) -> float:
    """The CPU time (utime + stime) between two readings, in % of one core over `seconds`."""
    return (after["cpu_ticks"] - before["cpu_ticks"]) / os.sysconf("SC_CLK_TCK") / seconds * 100


# -- the agent's logs -------------------------------------------------------------------------


class LogTap:
    """Reads the agent's stdout+stderr from a pipe (as journald reads a service's stream),
    keeps it in a file and counts the bytes."""

    def __init__(self, fd: int, path: Path):
        self.path = path
        self.bytes = 0
        self._fd = fd
        self._thread = threading.Thread(target=self._run, name="agent-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with open(self.path, "wb") as out:
            while chunk := os.read(self._fd, 65536):
                out.write(chunk)
                out.flush()
                self.bytes += len(chunk)
        os.close(self._fd)

    def join(self, timeout_s: float = 5.0) -> None:
        self._thread.join(timeout_s)

    def tail(self, lines: int = 30) -> str:
        text = self.path.read_text(errors="replace") if self.path.exists() else ""
        return "\n".join(f"    {line}" for line in text.splitlines()[-lines:]) or "    (nothing)"


def log_levels(log_path: Path) -> tuple[Counter[str], list[str]]:
    """Log lines by level (`LEVEL logger: message`, the agent's format off journald), and the
    lines at WARNING and above."""
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    levels: Counter[str] = Counter()
    notable = []
    for line in text.splitlines():
        level = re.match(r"([A-Z]+) \S+:", line)
        if level:
            levels[level.group(1)] += 1
            if level.group(1) in ("WARNING", "ERROR", "CRITICAL"):
                notable.append(line)
    return levels, notable


# -- the load process -------------------------------------------------------------------------


class LoadProcess:
    """service_load.py in a process of its own, with `args` (`--opcua`, `--no-bridge`);
    `ready` is its first JSON line (where it serves)."""

    def __init__(self, log_path: Path, *args: str):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self._log = open(log_path, "wb")  # noqa: SIM115 (the child writes it until stop)
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("service_load.py")), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=REPO,
            env=env,
            text=True,
            start_new_session=True,
        )
        self.log_path = log_path
        try:
            self.ready: dict = self._line()
        except BaseException:
            self.stop()
            raise

    def _line(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(LOAD_STOP_TIMEOUT_S)
            raise BenchError(
                f"the load process (service_load.py) exited with {self.process.returncode}: "
                + self.log_path.read_text(errors="replace")[-2000:]
            )
        return json.loads(line)

    def stats(self) -> dict:
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        return self._line()

    def stop(self) -> None:
        """End of stdin (its orderly stop: the server, the firmware, the pty pair), then
        SIGTERM, then SIGKILL of its session (it and the firmware it started)."""
        process = self.process
        try:
            if process.poll() is None:
                with suppress(OSError):
                    process.stdin.close()
                try:
                    process.wait(LOAD_STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.terminate()
                    try:
                        process.wait(5)
                    except subprocess.TimeoutExpired:
                        os.killpg(process.pid, signal.SIGKILL)
                        process.wait(5)
        finally:
            process.stdout.close()
            self._log.close()


# -- the agent --------------------------------------------------------------------------------


def agent_binary() -> str:
    beside = Path(sys.executable).parent / "edge-agent"
    if beside.exists():
        return str(beside)
    return str(REPO / ".venv" / "bin" / "edge-agent")


class AgentProcess:
    """`edge-agent run CONFIG` in a session of its own, in `workdir`, not under systemd; its
    stdout and stderr through a pipe into `workdir/agent.log` (`logs`)."""

    def __init__(self, config: Path, workdir: Path):
        env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ENV}
        read_fd, write_fd = os.pipe()
        self.logs = LogTap(read_fd, workdir / "agent.log")  # ends at the pipe's end: the exit
        try:
            self.process = subprocess.Popen(
                [agent_binary(), "run", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                cwd=workdir,
                env=env,
                start_new_session=True,
            )
        finally:
            os.close(write_fd)
        self.started = time.monotonic()

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def check_alive(self, when: str) -> None:
        """A BenchError with the log's tail if the agent has exited."""
        if self.process.poll() is not None:
            self.logs.join()
            raise BenchError(
                f"the agent exited with {self.process.returncode} {when}; its log:\n"
                + self.logs.tail()
            )

    def proc(self, when: str) -> dict[str, int]:
        """`proc_reading` of the agent; a BenchError if it has exited."""
        try:
            return proc_reading(self.process.pid)
        except OSError:  # gone between a check and the reading
            self.process.wait(AGENT_STOP_TIMEOUT_S)
            self.check_alive(when)
            raise

    def stop(self) -> int:
        """SIGTERM (systemd's stop), then SIGKILL if it outlives AGENT_STOP_TIMEOUT_S; the
        log read to its end. Returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(AGENT_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.logs.join()
        return self.process.returncode


# -- its metrics endpoint ---------------------------------------------------------------------


def scrape(address: str) -> dict[str, float]:
    """The agent's metrics endpoint as {'name{labels}': value}; empty when it does not answer
    (or `address` is "": the endpoint is off)."""
    if not address:
        return {}
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                continue
    return out


def metric_key(family: str, **labels: str) -> str:
    """A sample's key in `scrape`'s answer: prometheus_client writes the labels sorted by
    name, whatever order the family declares them in."""
    if not labels:
        return family
    return family + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def labelled(scraped: dict[str, float], family: str) -> list[tuple[dict[str, str], str]]:
    """(labels, key) of every sample of `family` in `scrape`'s answer."""
    out = []
    for key in sorted(scraped):
        name, brace, rest = key.partition("{")
        if name == family and brace:
            out.append((dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest)), key))
    return out


def delta(after: dict[str, float], before: dict[str, float], key: str) -> float | None:
    """The change of one sample of the endpoint; 0 for a label not (yet) counted in a family
    that is there (a Counter's missing key), None when the family is not served at all."""
    if key not in after:
        family = key.partition("{")[0]
        return 0.0 if any(k.partition("{")[0] == family for k in after) else None
    return after[key] - before.get(key, 0.0)
