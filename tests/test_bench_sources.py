"""`make bench`'s OPC UA against Modbus (benchmarks/bench_sources.py): the two agent
configurations are the same load but for the source, every OPC UA node is on the bench's
server, and an unhealthy run is refused. No wall-clock figure here."""

import asyncio
import importlib
import math
import re
from pathlib import Path

import pytest
from asyncua import Client

from edge_agent.config import parse_config
from edge_agent.sources.registry import declared
from hil.opcua_server import OpcUaController
from hil.opcua_space import NAMESPACE_URI
from hil.plant import demo_plant

# One test serves OPC UA (about 1.5 s of asyncua building its standard address space).
pytestmark = pytest.mark.timeout(60)

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def service_load(monkeypatch):
    """benchmarks/service_load.py, imported as the benchmarks import it."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("service_load")


@pytest.fixture
def bench_sources(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("bench_sources")


def configs(service_load, tmp_path):
    """The Modbus and the OPC UA configuration of the bench, parsed."""
    files = {
        "spool": str(tmp_path / "spool.db"),
        "teach_file": str(tmp_path / "teach.json"),
        "service": {"metrics_listen": "127.0.0.1:9999"},
    }
    modbus = service_load.modbus_agent_config(controller_port=5020, **files)
    opcua = service_load.opcua_agent_config(url="opc.tcp://127.0.0.1:4840", **files)
    return parse_config(modbus, "modbus.toml"), parse_config(opcua, "opcua.toml")


def channels(config) -> dict[str, tuple]:
    """Every channel the configuration's sources declare: name -> (unit, quantum, period)."""
    return {
        c.name: (c.unit, c.quantum, c.period_s)
        for _, declaration in declared(config)
        for c in declaration.channels
    }


def test_the_opcua_config_reads_200_nodes_in_one_10_hz_subscribed_group(service_load, tmp_path):
    _, opcua = configs(service_load, tmp_path)
    assert opcua.tags == ()
    assert len(opcua.opcua.nodes) == 200
    assert list(opcua.opcua.groups) == ["fast"]
    assert opcua.opcua.groups["fast"].period_s == 0.1
    assert opcua.opcua.mode == "subscribe"
    assert len(channels(opcua)) == 200


def test_the_opcua_and_modbus_configs_declare_the_same_channel_table(service_load, tmp_path):
    modbus, opcua = configs(service_load, tmp_path)
    assert channels(opcua) == channels(modbus)
    assert len(channels(modbus)) == 200


def test_both_configs_run_the_same_control_without_the_bridge_or_an_upstream(
    service_load, tmp_path
):
    modbus, opcua = configs(service_load, tmp_path)
    assert opcua.control == modbus.control
    assert opcua.control.enabled and opcua.control.period_s == 0.01
    assert opcua.channels == modbus.channels
    assert opcua.bridge is None and modbus.bridge is None
    assert opcua.upstream == modbus.upstream
    assert opcua.upstream.kind == "none"


def test_the_agents_override_is_the_one_writable_node(service_load, tmp_path):
    _, opcua = configs(service_load, tmp_path)
    assert [n.name for n in opcua.opcua.nodes if n.writable] == [opcua.control.override_tag]


def test_every_node_of_the_opcua_config_is_on_the_bench_server_with_its_type(service_load):
    async def scenario():
        aux = service_load.aux_tags()
        plant = service_load.WithAuxiliaries(demo_plant(), aux)
        controller = OpcUaController(
            plant, refresh_period_s=None, auxiliary=[tag.name for tag, _ in aux]
        )
        await controller.start()
        try:
            async with Client(controller.url, timeout=5.0) as client:
                ns = await client.get_namespace_index(NAMESPACE_URI)
                for node in service_load.opcua_nodes():
                    names = node["browse_path"].split("/")[1:]  # below Objects
                    found = await client.nodes.objects.get_child([f"{ns}:{n}" for n in names])
                    value = await found.read_data_value()
                    assert value.StatusCode.is_good(), node["name"]
                    assert value.Value.VariantType.name.lower() == node["type"], node["name"]
        finally:
            await controller.stop()

    asyncio.run(scenario())


# -- refusing an unhealthy run -------------------------------------------------------------


def scrapes(key, source: str, *, faults: int = 0, samples: float = 2000.0, up: float = 1.0):
    """The agent's metrics endpoint at the start and the end of a 10 s window (`key`: how
    the scrape names a sample)."""
    start = {
        key("edge_agent_source_samples_total", source=source): 0.0,
        key("edge_agent_source_faults_total", source=source, kind="stale"): 0.0,
        "edge_agent_control_ticks_total": 0.0,
    }
    end = {
        key("edge_agent_source_samples_total", source=source): samples * 10,
        key("edge_agent_source_faults_total", source=source, kind="stale"): float(faults),
        key("edge_agent_source_up", source=source): up,
        key("edge_agent_source_work_total", source=source, kind="publishes"): 100.0,
        key("edge_agent_source_cycle_seconds", group="fast", quantile="0.99", source=source): 0.0,
        "edge_agent_control_ticks_total": 1000.0,
        "edge_agent_control_overruns_total": 0.0,
        **{key("edge_agent_control_latency_seconds", quantile=q): 0.001 for q in ("0.5", "1.0")},
        key("edge_agent_control_latency_seconds", quantile="0.99"): 0.002,
    }
    return (0.0, start), (10.0, end)


def figures(bench_sources, *, writes: int = 50, **health):
    return bench_sources._figures(
        "opcua",
        "opcua",
        window_s=10.0,
        ready_s=1.0,
        cpu=5.0,
        server_cpu=50.0,
        load=(
            {"override_writes": 10, "last_override_pct": 100.0},
            {"override_writes": 10 + writes, "last_override_pct": 120.0},
        ),
        metrics=scrapes(bench_sources.metric_key, "opcua", **health),
        warnings=0,
        notable=[],
    )


def test_a_healthy_run_reports_the_latency_quantiles_and_the_cpu(bench_sources):
    result = figures(bench_sources)
    assert (result.latency_p50_s, result.latency_p99_s, result.cpu_pct) == (0.001, 0.002, 5.0)
    assert not any(math.isnan(value) for value in result)


@pytest.mark.parametrize(
    ("health", "why"),
    [
        ({"writes": 0}, "accepted no override write"),
        ({"faults": 3}, "source faults in the window: {'stale': 3.0}"),
        ({"samples": 1500.0}, "1500 samples/s arrived, not 2000"),
        ({"up": 0.0}, "source was not up"),
    ],
)
def test_an_unhealthy_run_is_refused_saying_what_was_wrong(bench_sources, health, why):
    with pytest.raises(bench_sources.BenchError, match=re.escape(why)):
        figures(bench_sources, **health)
