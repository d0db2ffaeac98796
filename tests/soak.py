"""Crash safety, end to end: the agent (`edge-agent run`, its own process) polls the simulated
controller and publishes to a real Mosquitto while the collector (`edge-agent collect run`,
its own process) stores; the agent is SIGKILLed at random moments, restarted, killed again
(and the collector after every fifth); at the end the agent stops cleanly, and every sequence
number it ever allocated must be in the collector exactly once. The agent deletes a payload
from its spool only once the collector acknowledged storing it (`delivery = "stored"`, the
default), so what is left in its spool at the end is what had not been confirmed when it
stopped (it stops after `drain_on_stop_s` = 10 s here).

`tests/test_crash_safety.py` runs 20 kills; `make soak` runs `python -m tests.soak --kills 300`.
"""

from __future__ import annotations

import argparse
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edge_agent.telemetry.spool import Spool
from tests.collector_process import CollectorProcess
from tests.mosquitto import Broker, _free_ports, require_mosquitto
from tests.service_helpers import demo_toml

MACHINE = "demo-shop/sim-mill-01"


@dataclass
class Outcome:
    kills: int
    last_seq: int  # the newest number the agent's spool allocated
    stored: list[int]  # the numbers in the collector, one entry per stored payload
    deaths: int
    gaps: int
    left: int  # payloads still in the agent's spool at the end (not yet confirmed stored)

    @property
    def missing(self) -> list[int]:
        return sorted(set(range(1, self.last_seq + 1)) - set(self.stored))

    @property
    def duplicates(self) -> int:
        return len(self.stored) - len(set(self.stored))


def agent_config(controller_port: int, broker: Broker, spool: Path) -> str:
    """Short frames (more payloads per second) and control off (nothing here tests it)."""
    return demo_toml(controller_port, spool, broker=broker, control=False, frame_interval_s=0.1)


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "ab"),  # noqa: SIM115 (the child holds it)
        start_new_session=True,
    )


def _stop(process: subprocess.Popen, signum: int, timeout_s: float = 30.0) -> None:
    if process.poll() is None:
        process.send_signal(signum)
    process.wait(timeout_s)


def _spool_state(path: Path) -> tuple[int, int]:
    """The newest number the spool allocated, and how many payloads it still holds."""
    spool = Spool(path, readonly=True)
    try:
        return spool.last_seq(), spool.stats()["depth"]
    finally:
        spool.close()


def _collected(db_path: Path) -> tuple[list[int], int, int]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        seqs = [s for (s,) in db.execute("SELECT seq FROM payloads WHERE machine = ?", (MACHINE,))]
        deaths = db.execute("SELECT COUNT(*) FROM deaths").fetchone()[0]
        gaps = db.execute("SELECT COUNT(*) FROM gaps").fetchone()[0]
        return seqs, deaths, gaps
    finally:
        db.close()


def run(kills: int, seed: int, workdir: Path, up_s: tuple[float, float] = (0.6, 2.5)) -> Outcome:
    """Kill the agent `kills` times at random moments (uniform in `up_s` after each start),
    then run it once more and stop it cleanly; wait (bounded) for the collector to hold every
    number; report what it holds."""
    rng = random.Random(seed)
    spool = workdir / "spool.db"
    (controller_port,) = _free_ports(1)
    with Broker() as broker:
        (workdir / "agent.toml").write_text(agent_config(controller_port, broker, spool))
        controller = _spawn(
            ["-m", "hil", "serve", "--tcp", f"127.0.0.1:{controller_port}"], workdir / "hil.log"
        )
        collector = CollectorProcess(broker, workdir)
        collected = collector.db
        agent_args = ["-m", "edge_agent", "run", str(workdir / "agent.toml")]
        try:
            # The broker keeps messages only for a session that exists: the collector's first
            # subscription must come before the first payload (as in a plant, docs/collector.md).
            collector.start()
            for kill in range(kills):
                agent = _spawn(agent_args, workdir / "agent.log")
                time.sleep(rng.uniform(*up_s))
                _stop(agent, signal.SIGKILL)
                if kill % 5 == 4:  # the collector dies too, now and then, mid-stream
                    collector.stop(signal.SIGKILL)
                    collector.start(wait=False)  # the agent goes on publishing meanwhile
            agent = _spawn(agent_args, workdir / "agent.log")
            time.sleep(2.0)
            _stop(agent, signal.SIGTERM)
            assert agent.returncode == 0, (workdir / "agent.log").read_text()[-2000:]
            last, left = _spool_state(spool)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                seqs, deaths, gaps = _collected(collected) if collected.exists() else ([], 0, 0)
                if set(range(1, last + 1)) <= set(seqs):
                    break
                time.sleep(0.2)
            time.sleep(0.3)  # any late duplicate would land now
            seqs, deaths, gaps = _collected(collected)
        finally:
            collector.stop()
            _stop(controller, signal.SIGTERM)
    return Outcome(kills, last, seqs, deaths, gaps, left)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=300)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    require_mosquitto()
    with tempfile.TemporaryDirectory(prefix="edge-soak-") as tmp:
        started = time.monotonic()
        outcome = run(args.kills, args.seed, Path(tmp))
        print(
            f"soak (seed {args.seed}): {outcome.kills} SIGKILLs in "
            f"{time.monotonic() - started:.0f} s; {outcome.last_seq} sequence numbers "
            f"allocated, {len(set(outcome.stored))} in the collector, "
            f"{len(outcome.missing)} missing, {outcome.duplicates} stored twice; "
            f"{outcome.deaths} deaths (last wills) recorded, {outcome.gaps} gap events; "
            f"{outcome.left} left in the agent's spool (deleted once the collector stored them)"
        )
        return 0 if not outcome.missing and not outcome.duplicates else 1


if __name__ == "__main__":
    sys.exit(main())
