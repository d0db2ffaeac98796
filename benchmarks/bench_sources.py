"""OPC UA against Modbus at the standard load, wall clock: the agent's control latency and CPU
reading the same simulated controller over each, one after the other in one run; never asserts
a figure, but refuses to report a run that was not healthy.

The load (`service_load.py --no-bridge`, served by a process of its own): the cutting plant on
the demo part with 200 values, its own 22 and 178 synthetic ones, served on loopback either
by the simulated Modbus TCP controller (`hil/controller.py`: 200 tags, 7 read requests a
cycle) or by the bench's OPC UA server (`--opcua`, `hil/opcua_server.py`: 200 variables, the
synthetic ones in its `Auxiliary` folder, refreshed from the plant every 10 ms). The agent,
`edge-agent run CONFIG` in a process of its own as systemd runs it
(`service_load.modbus_agent_config` / `opcua_agent_config`), reads the same 200 channels
(names, units, quanta) in one 10 Hz group, over OPC UA by one subscription (the default), and
runs the same 100 Hz adaptive control writing the override. To compare the sources alone,
neither run has the sensor bridge or a broker: `[upstream] kind = "none"` (payloads wait in
the spool, on a disk-backed temporary directory), every other setting at its default.

Each run: the server up, then the agent; once its metrics endpoint says it is ready, a
warm-up of WARMUP_S, then the measured window: the agent's CPU as utime + stime
(/proc/<pid>/stat, % of one core; the server's likewise, on stderr only), and the control
loop's sample-to-write latency (a load sample's arrival in the agent to the override write
answering it) as the p50 and p99 its metrics endpoint serves
(`edge_agent_control_latency_seconds`). Those quantiles are over the loop's last 4096
answers, at most 10 a second: for a window under about 400 s they include the warm-up's.

Health (one line per run on stderr; a run missing any of it raises): the agent running to
the end and exiting 0 on SIGTERM, its source up at the end, at least MIN_SAMPLES_SHARE of the
2000 samples a second arriving, no source fault in the window (BAD or STALE samples, lost
sessions, refused reads), the server accepting override writes in the window.

BENCH_SOURCES_S: the measured window in seconds of each run (default 60); e.g.
`BENCH_SOURCES_S=20 .venv/bin/python benchmarks/run.py sources` for a quick look.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple

import service_load
from agent_process import (
    AgentProcess,
    BenchError,
    LoadProcess,
    cpu_pct,
    delta,
    labelled,
    log_levels,
    metric_key,
    proc_reading,
    scrape,
    window_from_env,
)

from tests.mosquitto import _free_ports

DEFAULT_WINDOW_S = 60.0
#: After `edge_agent_ready`: the first cycles, the teach file, the spool's first pages and
#: the control loop's settling are over well within this; what follows is steady state.
WARMUP_S = 10.0
#: The agent is ready 0.3 s after its start over Modbus, 0.7 s over OPC UA (a session, the
#: 200 browse paths translated, the subscription made) on the bench machine: far below this.
READY_TIMEOUT_S = 30.0
CHECK_EVERY_S = 1.0
#: 200 channels at 10 Hz; a run that delivers less than this share of them is not healthy.
SAMPLES_HZ = service_load.TAGS_TOTAL / service_load.POLL_PERIOD_S
MIN_SAMPLES_SHARE = 0.9
#: Where the standard load's agent reads the controller: the `source` label of its metrics.
SOURCES = {"modbus": "controller", "opcua": "opcua"}
LOAD_WHAT = "200 tags/nodes at 10 Hz, 100 Hz control"


# A NamedTuple, not a dataclass: run.py loads this module without registering it.
class Figures(NamedTuple):
    """One run's figures for the rows."""

    latency_p50_s: float
    latency_p99_s: float
    cpu_pct: float


def run():
    window_s = window_from_env("BENCH_SOURCES_S", DEFAULT_WINDOW_S)
    figures = {}
    for kind in SOURCES:
        try:
            figures[kind] = _measure(kind, window_s)
        except BenchError as exc:
            raise BenchError(f"{kind}: {exc}") from exc
    modbus, opcua = figures["modbus"], figures["opcua"]
    return [
        (
            f"control sample-to-write p50, {LOAD_WHAT}",
            "Modbus TCP",
            modbus.latency_p50_s * 1e3,
            "OPC UA",
            opcua.latency_p50_s * 1e3,
            "ms",
        ),
        (
            f"control sample-to-write p99, {LOAD_WHAT}",
            "Modbus TCP",
            modbus.latency_p99_s * 1e3,
            "OPC UA",
            opcua.latency_p99_s * 1e3,
            "ms",
        ),
        (
            f"agent CPU, {LOAD_WHAT} (one core)",
            "Modbus TCP",
            modbus.cpu_pct,
            "OPC UA",
            opcua.cpu_pct,
            "%",
        ),
    ]


def _measure(kind: str, window_s: float) -> Figures:
    """One run: the server, the agent reading it, the warm-up and the window."""
    source = SOURCES[kind]
    with ExitStack() as stack:
        tmp = Path(
            stack.enter_context(
                tempfile.TemporaryDirectory(prefix=f"bench-sources-{kind}-", dir="/var/tmp")
            )
        )
        load = LoadProcess(
            tmp / "load.log", "--no-bridge", *(("--opcua",) if kind == "opcua" else ())
        )
        stack.callback(load.stop)
        # On a port of its own (not the default 9846).
        metrics_address = f"127.0.0.1:{_free_ports(1)[0]}"
        files = {
            "spool": str(tmp / "spool.db"),
            "teach_file": str(tmp / "teach.json"),
            "service": {"metrics_listen": metrics_address},
        }
        if kind == "opcua":
            text = service_load.opcua_agent_config(url=load.ready["url"], **files)
        else:
            text = service_load.modbus_agent_config(controller_port=load.ready["port"], **files)
        config = tmp / "agent.toml"
        config.write_text(text)
        agent = AgentProcess(config, tmp)
        stack.callback(agent.stop)

        while scrape(metrics_address).get("edge_agent_ready") != 1.0:
            agent.check_alive("before it was ready")
            if time.monotonic() - agent.started > READY_TIMEOUT_S:
                raise BenchError(
                    f"the agent was not ready within {READY_TIMEOUT_S:g} s; its log:\n"
                    + agent.logs.tail()
                )
            time.sleep(0.1)
        ready_at = time.monotonic()
        while time.monotonic() - ready_at < WARMUP_S:
            agent.check_alive("during the warm-up")
            time.sleep(0.2)

        # The scrapes stay outside the window; the counters' rates use their own times.
        metrics0 = (time.monotonic(), scrape(metrics_address))
        load0, server0 = load.stats(), proc_reading(load.process.pid)
        proc0, t0 = agent.proc("at the start of the measured window"), time.monotonic()
        while (elapsed := time.monotonic() - t0) < window_s:
            time.sleep(min(CHECK_EVERY_S, window_s - elapsed))
            agent.check_alive(f"{time.monotonic() - t0:.0f} s into the measured window")
        proc1, t1 = agent.proc("at the end of the measured window"), time.monotonic()
        load1, server1 = load.stats(), proc_reading(load.process.pid)
        metrics1 = (time.monotonic(), scrape(metrics_address))

        returncode = agent.stop()
        if returncode != 0:
            raise BenchError(
                f"the agent exited with {returncode} on SIGTERM; its log:\n" + agent.logs.tail()
            )
        levels, notable = log_levels(agent.logs.path)
        return _figures(
            kind,
            source,
            window_s=t1 - t0,
            ready_s=ready_at - agent.started,
            cpu=cpu_pct(proc0, proc1, t1 - t0),
            server_cpu=cpu_pct(server0, server1, t1 - t0),
            load=(load0, load1),
            metrics=(metrics0, metrics1),
            warnings=sum(levels[level] for level in ("WARNING", "ERROR", "CRITICAL")),
            notable=notable,
        )


def _figures(
    kind: str,
    source: str,
    *,
    window_s: float,
    ready_s: float,
    cpu: float,
    server_cpu: float,
    load: tuple[dict, dict],
    metrics: tuple[tuple[float, dict], tuple[float, dict]],
    warnings: int,
    notable: list[str],
) -> Figures:
    """The run's figures, after the health checks (BenchError) and its line on stderr."""
    (load0, load1), ((tm0, m0), (tm1, m1)) = load, metrics
    if not m1:
        raise BenchError("the agent's metrics endpoint did not answer")
    scraped_s = tm1 - tm0

    def rate(key: str) -> float:
        return (delta(m1, m0, key) or 0.0) / scraped_s

    def of_source(family: str) -> dict[str, str]:
        """The source's samples of a family labelled by `kind`: kind -> key."""
        return {
            labels["kind"]: key
            for labels, key in labelled(m1, family)
            if labels.get("source") == source
        }

    latency = {
        q: m1.get(metric_key("edge_agent_control_latency_seconds", quantile=q), math.nan)
        for q in ("0.5", "0.99", "1.0")
    }
    samples_hz = rate(metric_key("edge_agent_source_samples_total", source=source))
    faults = {
        fault: count
        for fault, key in of_source("edge_agent_source_faults_total").items()
        if (count := delta(m1, m0, key))
    }
    writes = load1["override_writes"] - load0["override_writes"]
    problems = []
    if m1.get(metric_key("edge_agent_source_up", source=source)) != 1.0:
        problems.append(f"the {source} source was not up at the end of the window")
    if samples_hz < MIN_SAMPLES_SHARE * SAMPLES_HZ:
        problems.append(f"{samples_hz:.0f} samples/s arrived, not {SAMPLES_HZ:.0f}")
    if faults:
        problems.append(f"source faults in the window: {faults}")
    if not writes:
        problems.append("the server accepted no override write in the window")
    if any(math.isnan(value) for value in latency.values()):
        problems.append("the control loop served no sample-to-write latency")
    if problems:
        raise BenchError("; ".join(problems))

    work = ", ".join(
        f"{name} {rate(key):.1f}/s"
        for name, key in of_source("edge_agent_source_work_total").items()
    )
    cycle = metric_key(
        "edge_agent_source_cycle_seconds", source=source, group="fast", quantile="0.99"
    )
    cycle_p99 = m1.get(cycle, math.nan)
    overruns = delta(m1, m0, "edge_agent_control_overruns_total") or 0.0
    line = (
        f"sources: {kind} for {window_s:.0f} s after a {WARMUP_S:g} s warm-up (ready "
        f"{ready_s:.1f} s after start): {samples_hz:.0f} samples/s ({work}), read cycle p99 "
        f"{cycle_p99 * 1e3:.1f} ms, no faults; control {rate('edge_agent_control_ticks_total'):.1f}"
        f" ticks/s ({overruns:.0f} overruns), sample-to-write p50/p99/max "
        f"{latency['0.5'] * 1e3:.2f}/{latency['0.99'] * 1e3:.2f}/{latency['1.0'] * 1e3:.2f} ms; "
        f"{writes} override writes accepted (the last {load1['last_override_pct']} %); CPU agent "
        f"{cpu:.2f} %, server {server_cpu:.2f} % of one core; {warnings} log lines at WARNING+"
    )
    print(line, *(f"    {text}" for text in notable[:5]), sep="\n", file=sys.stderr, flush=True)
    return Figures(latency["0.5"], latency["0.99"], cpu)
