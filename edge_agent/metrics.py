"""The Prometheus endpoint (`[service] metrics_listen`, loopback by default): the agent's own
counters and windows read at scrape time, so that nothing in the poll or control paths pays
for metrics nobody scrapes. Served by prometheus_client's small HTTP server in its own thread;
the spool's figures are asked of the spool's thread through the event loop, with a bound.

Names and meanings are listed in docs/service.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric

from . import __version__

if TYPE_CHECKING:
    from .daemon import AgentService

log = logging.getLogger(__name__)

PREFIX = "edge_agent"
#: Quantiles of the latency windows, as a summary's `quantile` label.
QUANTILES = (0.5, 0.99, 1.0)
#: How long a scrape waits for the spool's thread before it leaves the spool figures out.
SPOOL_WAIT_S = 2.0


class AgentCollector:
    """What one scrape reports about the service's current agent."""

    def __init__(self, service: AgentService, loop: asyncio.AbstractEventLoop):
        self.service = service
        self.loop = loop

    def collect(self) -> Iterator[Metric]:
        service, agent = self.service, self.service.agent
        yield _by_label("reloads", "SIGHUP reloads by outcome", "outcome", service.reloads)
        if service.log_limit is not None:
            yield _counter(
                "log_messages_suppressed",
                "repeated log messages counted instead of written",
                value=service.log_limit.suppressed,
            )
        if agent is None:
            return
        machine = agent.config.machine
        info = InfoMetricFamily(f"{PREFIX}", "the agent's version, machine and boot")
        info.add_metric(
            [],
            {
                "version": __version__,
                "site": machine.site,
                "machine": machine.machine_id,
                "boot": agent.boot_id,
            },
        )
        yield info
        yield _gauge(
            "ready", "1 once the controller, spool and control loop are up", agent.up.is_set()
        )
        yield from self._sources(agent)
        yield from self._control(agent)
        yield from self._telemetry(agent)
        yield from self._upstream(agent)

    def _sources(self, agent) -> Iterator[Metric]:
        """Every source alike, labelled with its name (`sources/base.py`, SourceStats)."""
        stats = agent.source_stats()
        families = {
            "up": _gauge_family("source_up", "1 while the source delivers", ["source"]),
            "state": _gauge_family(
                "source_state", "1 for the source's current state", ["source", "state"]
            ),
            "connects": _counter("source_connects", "connections made", ["source"]),
            "disconnects": _counter("source_disconnects", "connections lost", ["source"]),
            "samples": _counter("source_samples", "samples emitted", ["source"]),
            "counts": _counter("source_work", "the source's work by kind", ["source", "kind"]),
            "faults": _counter("source_faults", "what went wrong, by kind", ["source", "kind"]),
            "writes": _counter(
                "source_writes", "writes to the machine by outcome", ["source", "outcome"]
            ),
            "cycles": _counter("source_cycles", "read cycles by time group", ["source", "group"]),
            "overruns": _counter(
                "source_overruns", "read cycles skipped (late) by time group", ["source", "group"]
            ),
            "latency": _gauge_family(
                "source_cycle_seconds",
                "one read cycle's duration over the last 4096 cycles, by group and quantile",
                ["source", "group", "quantile"],
            ),
        }
        for s in stats:
            families["up"].add_metric([s.name], float(s.up))
            families["state"].add_metric([s.name, s.state], 1)
            families["connects"].add_metric([s.name], s.connects)
            families["disconnects"].add_metric([s.name], s.disconnects)
            families["samples"].add_metric([s.name], s.samples)
            for key, values in (("counts", s.counts), ("faults", s.faults), ("writes", s.writes)):
                for kind, count in values.items():
                    families[key].add_metric([s.name, kind], count)
            for group, figures in s.groups.items():
                families["cycles"].add_metric([s.name, group], figures.cycles)
                families["overruns"].add_metric([s.name, group], figures.overruns)
                for q, value in zip(QUANTILES, figures.latency_s, strict=True):
                    families["latency"].add_metric([s.name, group, str(q)], value)
        yield from families.values()

    def _control(self, agent) -> Iterator[Metric]:
        control = agent.control
        if control is None:
            return
        cfg = agent.config.control
        yield _gauge("control_period_seconds", "the control loop's configured period", cfg.period_s)
        yield _counter("control_ticks", "control loop ticks", value=control.ticks)
        yield _counter("control_overruns", "control deadlines missed", value=control.overruns)
        for name, window, text in (
            (
                "control_lateness_seconds",
                control.lateness,
                "tick start after its deadline (jitter)",
            ),
            (
                "control_latency_seconds",
                control.latency,
                "load sample arrival to the write answering it",
            ),
        ):
            family = GaugeMetricFamily(
                f"{PREFIX}_{name}", text + ", last 4096, by quantile", labels=["quantile"]
            )
            for q in QUANTILES:
                family.add_metric([str(q)], window.percentile(q * 100))
            yield family
        override = control.actuator.value.get(cfg.override_tag)
        if override is not None:
            yield _gauge("control_override_percent", "the feed override last written", override)
        state = GaugeMetricFamily(
            f"{PREFIX}_control_state", "1 for the controller's current state", labels=["state"]
        )
        state.add_metric([control.controller.state.value], 1)
        yield state
        yield _by_label(
            "control_events", "control events by kind", "kind", agent.control_host.events
        )
        yield _by_label(
            "actuator_events",
            "the actuator's writes, checks and refusals",
            "kind",
            control.actuator.counters,
        )

    def _telemetry(self, agent) -> Iterator[Metric]:
        journal = agent.journal
        yield _counter(
            "payloads_stored", "payloads written to the spool", value=journal.frames_stored
        )
        yield _counter(
            "payload_bytes_stored",
            "payload bytes written to the spool",
            value=journal.bytes_stored,
        )
        yield _counter(
            "points_stored", "samples packed into data frames", value=journal.points_stored
        )
        yield _gauge("last_seq", "the newest sequence number", journal.last_seq)
        yield _gauge(
            "spool_writable",
            "1 while the spool takes payloads, 0 while they are held in memory (disk full, "
            "locked, not writable)",
            journal.spool_trouble is None,
        )
        yield _gauge(
            "spool_held_payloads", "payloads held in memory for the spool", len(journal.held)
        )
        yield _by_label(
            "spool_store_failures",
            "stores the spool refused, by reason",
            "reason",
            journal.store_failures,
        )
        yield _by_label(
            "never_stored",
            "held payloads dropped from memory before the spool took them: data frames "
            "(kind data), their samples (points), events",
            "kind",
            journal.held.dropped_total,
        )
        spool = self._spool_stats(agent)
        if spool is None:
            return
        stats, counters = spool
        yield _gauge("spool_payloads", "payloads waiting for acknowledgement", stats["depth"])
        yield _gauge("spool_bytes", "bytes of payloads waiting", stats["bytes"])
        age = 0.0
        if stats["depth"]:
            age = (agent.clock.stamp_ns() - stats["oldest_stored_ns"]) / 1e9
        yield _gauge("spool_oldest_age_seconds", "age of the oldest payload waiting", age)
        dropped = _counter(
            "spool_dropped", "payloads dropped by the disk budget, by reason", ["reason"]
        )
        for kind, count in counters.items():
            if kind.startswith("dropped_"):
                dropped.add_metric([kind.removeprefix("dropped_")], count)
        yield dropped

    def _spool_stats(self, agent):
        """The spool's figures from its own thread; None while it is closed (a reload) or
        busy beyond the bound."""
        try:
            future = asyncio.run_coroutine_threadsafe(agent.journal.spool.stats(), self.loop)
            stats = future.result(SPOOL_WAIT_S)
        except Exception:  # closed, busy past the bound, or the loop is gone: left out
            return None
        spool = agent.journal.spool.spool
        return stats, dict(spool.counters) if spool is not None else {}

    def _upstream(self, agent) -> Iterator[Metric]:
        publisher = agent.publisher
        if publisher is None:
            return
        yield _gauge("upstream_connected", "1 while the upstream link is up", publisher.connected)
        yield _by_label(
            "upstream_events",
            "publishes, acknowledgements, refusals, reconnects",
            "kind",
            publisher.counters,
        )


def _counter(name: str, text: str, labels: list[str] | None = None, value: float | None = None):
    family = CounterMetricFamily(f"{PREFIX}_{name}", text, labels=labels)
    if value is not None:
        family.add_metric([], value)
    return family


def _by_label(name: str, text: str, label: str, counts) -> CounterMetricFamily:
    """A counter family with one sample per entry of `counts` (a mapping, copied first: the
    agent's threads may add a key while the scrape reads it)."""
    family = _counter(name, text, [label])
    for key, count in dict(counts).items():
        family.add_metric([key], count)
    return family


def _gauge_family(name: str, text: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", text, labels=labels)


def _gauge(name: str, text: str, value: float | bool) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", text, value=float(value))


class MetricsServer:
    """The HTTP endpoint; `listen` (again, after a reload) moves it to a new address."""

    def __init__(self, service: AgentService):
        self.service = service
        self.address = ""
        self._server = None

    def listen(self, address: str) -> None:
        if address == self.address:
            return
        self.close()
        if not address:
            return
        host, _, port = address.rpartition(":")
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # CPU seconds, resident memory, open files
        registry.register(AgentCollector(self.service, asyncio.get_running_loop()))
        try:
            self._server, _ = start_http_server(int(port), host.strip("[]"), registry)
        except OSError as exc:
            log.error("metrics: cannot listen on %s: %s; running without", address, exc.strerror)
            return
        self.address = address
        log.info("metrics on http://%s/metrics", address)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.address = ""
