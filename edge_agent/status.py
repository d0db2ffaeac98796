"""`edge-agent status`: a person's summary of a running agent, read from its metrics endpoint
(the same figures Prometheus scrapes), and of its spool, read from the file (so that a
stopped agent still says what waits to be sent)."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

from .config import AgentConfig
from .telemetry.spool import Spool, SpoolError

#: Exit statuses, as `systemctl status` uses them (LSB): running, not running.
RUNNING, NOT_RUNNING = 0, 3


class Scrape:
    """One scrape's samples by name, looked up by labels."""

    def __init__(self, text: str):
        self._samples: dict[str, list[tuple[dict, float]]] = defaultdict(list)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self._samples[sample.name].append((sample.labels, sample.value))

    def get(self, name: str, default: float | None = None, **labels: str) -> float | None:
        for sample_labels, value in self._samples.get(name, []):
            if all(sample_labels.get(k) == v for k, v in labels.items()):
                return value
        return default

    def total(self, name: str, exclude: Iterable[str] = (), **labels: str) -> float:
        """The sum of a counter over its label values, leaving out samples that carry any
        of the values in `exclude`."""
        return sum(
            value
            for sample_labels, value in self._samples.get(name, [])
            if all(sample_labels.get(k) == v for k, v in labels.items())
            and not set(sample_labels.values()) & set(exclude)
        )

    def labelled(self, name: str) -> list[tuple[dict, float]]:
        return self._samples.get(name, [])


def fetch(address: str, timeout_s: float = 2.0) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout_s) as reply:
        return reply.read().decode()


def report(config: AgentConfig) -> tuple[list[str], int]:
    """The summary's lines and the exit status."""
    lines, status = [], NOT_RUNNING
    address = config.service.metrics_listen
    if not address:
        lines.append('agent: metrics are off ([service] metrics_listen = ""); see journalctl')
    else:
        try:
            scrape = Scrape(fetch(address))
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            lines.append(f"agent: not answering on {address} ({reason}): not running?")
        else:
            lines += _agent_lines(scrape)
            status = RUNNING
    lines += _spool_lines(config.spool.path)
    return lines, status


def _agent_lines(s: Scrape) -> list[str]:
    info = s.labelled("edge_agent_info")
    who = info[0][0] if info else {}
    ready = "ready" if s.get("edge_agent_ready") else "STARTING (not ready)"
    lines = [
        f"edge-agent {who.get('version', '?')} for {who.get('site', '?')}/"
        f"{who.get('machine', '?')}, boot {who.get('boot', '?')}: {ready}"
    ]
    lines += _source_lines(s)
    if s.get("edge_agent_control_ticks_total") is not None:
        state = next(
            (labels["state"] for labels, v in s.labelled("edge_agent_control_state") if v), "?"
        )
        override = s.get("edge_agent_control_override_percent")
        period = s.get("edge_agent_control_period_seconds", 0)
        lateness = s.get("edge_agent_control_lateness_seconds", quantile="0.99")
        latency = s.get("edge_agent_control_latency_seconds", quantile="0.99")
        lines.append(
            f"  control     {state}"
            + (f" at {override:g} %" if override is not None else "")
            + f"; {1 / period:g} Hz, lateness p99 {_ms(lateness)}, latency p99 {_ms(latency)}, "
            f"{s.get('edge_agent_control_overruns_total', 0):.0f} overruns"
        )
    if s.get("edge_agent_upstream_connected") is not None:
        event = "edge_agent_upstream_events_total"
        failures = s.get(event, 0, kind="disconnects") + s.get(event, 0, kind="connect_failures")
        lines.append(
            f"  upstream    {'up' if s.get('edge_agent_upstream_connected') else 'DOWN'}; "
            f"{s.get(event, 0, kind='acked'):.0f} acknowledged, "
            f"{s.get(event, 0, kind='refused'):.0f} refused, {failures:.0f} connection failures"
        )
    depth = s.get("edge_agent_spool_payloads")
    if depth is not None:
        lines.append(
            f"  telemetry   {s.get('edge_agent_payloads_stored_total', 0):.0f} payloads stored "
            f"(last seq {s.get('edge_agent_last_seq', 0):.0f}), {depth:.0f} waiting "
            f"(oldest {s.get('edge_agent_spool_oldest_age_seconds', 0):.0f} s), "
            f"{s.total('edge_agent_spool_dropped_total'):.0f} dropped by the disk budget"
        )
        if s.get("edge_agent_spool_writable", 1) == 0:
            lines.append(
                f"  spool       NOT TAKING PAYLOADS: "
                f"{s.get('edge_agent_spool_held_payloads', 0):.0f} held in memory; see journalctl"
            )
        lost = s.total("edge_agent_never_stored_total", exclude=["points"])
        if lost:
            lines.append(
                f"  spool       {lost:.0f} payloads never stored "
                f"({s.get('edge_agent_never_stored_total', 0, kind='points'):.0f} points): "
                "dropped from memory while the spool could not take them"
            )
    rss = s.get("process_resident_memory_bytes")
    cpu = s.get("process_cpu_seconds_total")
    if rss is not None and cpu is not None:
        lines.append(f"  process     RSS {rss / 2**20:.1f} MiB, {cpu:.1f} s of CPU")
    return lines


def _source_lines(s: Scrape) -> list[str]:
    """One line a source, whatever its kind: state, connections lost, samples, faults, and
    its read cycles' p99."""
    lines = []
    for labels, _ in s.labelled("edge_agent_source_up"):
        name = labels["source"]
        state = next(
            (
                lab["state"]
                for lab, v in s.labelled("edge_agent_source_state")
                if lab["source"] == name and v
            ),
            "?",
        )
        cycles = ", ".join(
            f"{lab['group']} {_ms(v)}"
            for lab, v in s.labelled("edge_agent_source_cycle_seconds")
            if lab["source"] == name and lab["quantile"] == "0.99"
        )
        lines.append(
            f"  {name:<11} {state}; "
            f"{s.get('edge_agent_source_disconnects_total', 0, source=name):.0f} connections lost; "
            f"{s.get('edge_agent_source_samples_total', 0, source=name):.0f} samples, "
            f"{s.total('edge_agent_source_faults_total', source=name):.0f} faults"
            + (f"; p99 {cycles}" if cycles else "")
        )
    return lines


def _ms(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:  # absent, or NaN: no observation yet
        return "-"
    return f"{seconds * 1e3:.2f} ms"


def _spool_lines(path: str) -> list[str]:
    """What waits in the spool, and every file moved aside beside it (never silent)."""
    try:
        spool = Spool(path, readonly=True)
    except SpoolError as exc:
        return [f"spool: {exc}"]
    try:
        stats = spool.stats()
        return [
            f"spool {path}: {stats['depth']} payloads waiting, last seq {spool.last_seq()}",
            *(f"  moved aside: {leftover.line}" for leftover in spool.leftovers()),
        ]
    except SpoolError as exc:
        return [f"spool: {exc}"]
    finally:
        spool.close()
