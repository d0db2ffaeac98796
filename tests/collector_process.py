"""`edge-agent collect run` in a process of its own against a test broker: the plant side that
stores what agents publish and acknowledges it (the agents' default `delivery = "stored"`
deletes a payload only then). For the soak and the benchmarks; test support only."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

# The collector is subscribed within a second of starting; 30 s absorbs a loaded machine.
START_TIMEOUT_S = 30.0
# It stops at once on SIGTERM (one transaction at most to finish).
STOP_TIMEOUT_S = 30.0


class CollectorProcess:
    """One collector on `broker`, its database, configuration and log in `workdir`."""

    def __init__(self, broker, workdir: Path, name: str = "collector", broker_keys: str = ""):
        """`broker_keys`: more `[broker]` lines (its identity: username, password_file)."""
        self.db = workdir / f"{name}.db"
        self.config = workdir / f"{name}.toml"
        self.log = workdir / f"{name}.log"
        self.config.write_text(
            f'[collector]\ndb = "{self.db}"\n\n'
            f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\n'
            f'client_id = "edge-{name}"\nreconnect_min_s = 0.1\nreconnect_max_s = 0.5\n'
            + broker_keys
        )
        self.process: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> None:
        """Start it and (`wait`) return once it is subscribed (its log says so)."""
        start = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "collect", "run", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while wait and b"subscribed to" not in self.log.read_bytes()[start:]:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop(signal.SIGKILL)
                raise RuntimeError(f"the collector did not subscribe; {self.log}:\n{self.tail()}")
            time.sleep(0.05)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signum)
            self.process.wait(STOP_TIMEOUT_S)
            self.process = None

    def seqs(self, machine: str, kind: str | None = None) -> list[int]:
        """The seqs of `machine` it has stored (of `kind`, or all), one per payload row."""
        if not self.db.exists():
            return []
        db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            rows = db.execute(
                "SELECT seq FROM payloads WHERE machine = ? AND kind LIKE ?", (machine, kind or "%")
            )
            return [seq for (seq,) in rows]
        finally:
            db.close()

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
