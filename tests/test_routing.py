"""The sample router (edge_agent/routing.py): what reaches control and telemetry, with which
quality, through which chain; and the same routing in the agent and on the simulated bench."""

import asyncio
import dataclasses
import math
from importlib import resources

import pytest

from edge_agent.clock import FakeClock
from edge_agent.config import AgentConfig, ChannelConfig, FilterSpec, parse_config
from edge_agent.control.adaptive import AdaptiveController
from edge_agent.filters.chain import FilterChain
from edge_agent.routing import SampleRouter
from edge_agent.samples import Quality, Sample
from edge_agent.service import Agent
from hil import bench
from hil.plant import CuttingPlant, RunResult
from hil.scenario import load_scenario, scenario_path

LOAD = "spindle_load"
EMA = (FilterSpec("ema", {"tau_s": 0.05}),)
HALVE = (FilterSpec("decimate", {"factor": 2, "order": 2}),)


def router(filters=EMA, telemetry="filtered", control=(LOAD, "run_state")):
    channel = ChannelConfig(LOAD, filters, telemetry=telemetry, sample_rate_hz=50.0)
    return SampleRouter({LOAD: channel}, control)


def loads(*values, quality=Quality.GOOD):
    return [Sample(LOAD, 1_000 + k, v, quality) for k, v in enumerate(values)]


def test_a_filtered_control_input_reaches_control_as_its_chain_output():
    values = [10.0, 50.0, 70.0, 69.0]
    oracle = FilterChain(ChannelConfig(LOAD, EMA, sample_rate_hz=50.0))
    routed = router().route(loads(*values), 7)
    assert [(at, s.value) for at, s in routed.control] == [(7, oracle.push(v)) for v in values]
    assert all(s.quality is Quality.GOOD for _, s in routed.control)


def test_a_control_input_without_a_chain_reaches_control_as_it_came():
    samples = [Sample("run_state", 5, 1.0)]
    assert router().route(samples, 9).control == [(9, samples[0])]


def test_only_the_control_tags_reach_control():
    r = router(control=("run_state",))
    routed = r.route([*loads(40.0), Sample("x_position", 1, 3.0)], 0)
    assert routed.control == []
    assert r.latest.keys() == {LOAD, "x_position"}  # every channel is still kept


def test_no_control_tags_until_the_control_loop_exists():
    assert router(control=()).route(loads(40.0), 0).control == []


def test_a_stale_sample_passes_the_chain_unfiltered_to_control_and_keeps_its_quality():
    r = router()
    r.route(loads(10.0, 20.0), 0)
    stale = loads(20.0, quality=Quality.STALE)
    routed = r.route(stale, 5)
    assert routed.control == [(5, stale[0])]
    assert r.filtered[LOAD] is stale[0]


def test_a_bad_sample_keeps_its_quality_through_a_channel_without_a_chain():
    bad = [Sample("run_state", 1, math.nan, Quality.BAD)]
    assert router().route(bad, 0).control == [(0, bad[0])]


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_non_finite_chain_output_is_bad(value):
    r = router()
    routed = r.route(loads(40.0, value, 41.0), 0)
    qualities = [s.quality for _, s in routed.control]
    assert qualities == [Quality.GOOD, Quality.BAD, Quality.GOOD]  # and the chain recovers
    assert math.isnan(routed.control[1][1].value)


def test_a_decimated_channel_sends_control_only_the_samples_its_chain_keeps():
    r = router(filters=HALVE, telemetry="both")
    routed = r.route(loads(*[float(v) for v in range(10)]), 0)
    assert len(routed.control) == 5
    raw = [s for name, s in routed.telemetry if name == LOAD]
    assert len(raw) == 10  # the raw channel ships every sample
    assert [s for name, s in routed.telemetry if name == f"{LOAD}_filtered"] == [
        s for _, s in routed.control
    ]


@pytest.mark.parametrize(
    ("mode", "names"),
    [
        ("raw", [LOAD]),
        ("filtered", [LOAD]),
        ("both", [LOAD, f"{LOAD}_filtered"]),
    ],
)
def test_telemetry_gets_raw_filtered_or_both(mode, names):
    sample = loads(40.0)[0]
    routed = router(telemetry=mode).route([sample], 0)
    assert [name for name, _ in routed.telemetry] == names
    shipped = dict(routed.telemetry)
    assert (shipped[LOAD] is sample) == (mode != "filtered")  # the raw one, not the output


def test_a_channel_without_a_chain_ships_raw_whatever_its_section_says():
    r = SampleRouter({LOAD: ChannelConfig(LOAD, (), telemetry="filtered")})
    sample = loads(40.0)[0]
    assert r.route([sample], 0).telemetry == [(LOAD, sample)]
    assert r.filtered == {}


def test_the_latest_raw_and_filtered_samples_are_kept():
    r = router()
    samples = loads(10.0, 30.0)
    routed = r.route(samples, 0)
    assert r.latest[LOAD] is samples[-1]
    assert r.filtered[LOAD] is routed.control[-1][1]


# -- the agent and the bench route alike ----------------------------------------------------


def demo_with(filters: str, spool) -> AgentConfig:
    """The demo configuration with other filters on the spindle load."""
    text = resources.files("edge_agent.defaults").joinpath("demo.toml").read_text()
    demo = '[channels.spindle_load]\nfilters = [{kind = "hampel", window = 3}]'
    assert demo in text
    text = text.replace(demo, f"[channels.spindle_load]\nfilters = {filters}")
    config = parse_config(text, "demo.toml")
    return dataclasses.replace(config, spool=dataclasses.replace(config.spool, path=str(spool)))


class ScriptedPlant:
    """Answers each of the bench's polls with the next scripted values, the run ending with
    the last."""

    script: list[dict] = []

    def __init__(self, scenario, record=False):
        self.polls = iter(self.script)
        self.left = len(self.script)
        self.result, self.trace, self.time_s = RunResult(), {}, 0.0

    @property
    def done(self) -> bool:  # the bench polls once more, the machine at its end: the last line
        return self.left <= 1

    def advance_to(self, t_s):
        self.time_s = t_s

    def link_down(self) -> bool:
        return False

    def values(self) -> dict:
        self.left -= 1
        return dict(next(self.polls))

    def write(self, name, value):
        pass


class RecordingController(AdaptiveController):
    """The bench's controller, keeping every non-empty delivery it was given."""

    deliveries: list = []

    def update(self, now_ns, arrivals):
        if arrivals:
            self.deliveries.append(list(arrivals))
        return super().update(now_ns, arrivals)


def test_the_bench_and_the_agent_route_the_same_polls_the_same_way(tmp_path, monkeypatch):
    config = demo_with(
        '[{kind = "hampel", window = 3}, {kind = "decimate", factor = 2, order = 2}]',
        tmp_path / "spool.db",
    )
    poll_s = config.poll_groups["fast"].period_s
    channel = config.channels[LOAD]
    assert channel.sample_rate_hz == 1 / poll_s  # the chain the bench builds is the agent's
    scenario = load_scenario(scenario_path("hard_spot"))
    machine = CuttingPlant(scenario).values()  # every tag, as a real poll reads them
    load = [8.0, 8.2, 40.0, 70.0, math.nan, 71.0, 72.0, math.inf, 69.0, 70.5, 70.0, 300.0]
    ScriptedPlant.script = [{**machine, LOAD: v} for v in load]
    RecordingController.deliveries = []
    monkeypatch.setattr(bench, "CuttingPlant", ScriptedPlant)
    monkeypatch.setattr(bench, "AdaptiveController", RecordingController)
    bench.run_adaptive_simulated(
        scenario, cfg=config.control, poll_s=poll_s, filters=channel.filters
    )
    on_bench = RecordingController.deliveries

    clock = FakeClock(monotonic_s=0.0)
    agent = Agent(config, clock=clock)
    loop = asyncio.new_event_loop()
    try:
        agent.control_host.make(loop)
    finally:
        loop.close()
    assert len(on_bench) == len(load)  # every poll delivers: most inputs have no chain
    in_agent = []
    for values, delivery in zip(ScriptedPlant.script, on_bench, strict=True):
        at_ns = delivery[0][0]  # when the bench polled
        clock.advance((at_ns - clock.monotonic_ns()) / 1e9)
        agent._on_samples([Sample(name, at_ns, v) for name, v in values.items()])
        while not agent.control_host.inbox.empty():
            in_agent.append(agent.control_host.inbox.get_nowait())
    assert repr(on_bench) == repr(in_agent)  # repr: NaN == NaN
    qualities = [s.quality for _, s in sum(on_bench, []) if s.channel == LOAD]
    assert Quality.BAD in qualities and len(qualities) == len(load) // 2
