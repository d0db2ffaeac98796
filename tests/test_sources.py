"""The source seam: the channel table and the renderings come from what sources declare and
report, whatever the source."""

import dataclasses
from pathlib import Path

import pytest

from edge_agent.config import load_config
from edge_agent.sources import registry
from edge_agent.sources.base import Declaration, GroupFigures, SourceChannel, SourceStats
from edge_agent.telemetry.channels import channel_table

pytestmark = pytest.mark.timeout(30)

DEMO = Path(__file__).resolve().parent.parent / "edge_agent" / "defaults" / "demo.toml"


def _probe(config) -> Declaration:
    return Declaration(
        ("slow", "fast"),
        (
            SourceChannel("probe_temp", "degC", 0.01, 1.0, "slow", "probe.slow"),
            SourceChannel("probe_force", "N", 0.5, 0.001, "fast", "probe.fast"),
        ),
    )


def test_a_new_kind_of_source_needs_no_change_to_the_channel_table(monkeypatch):
    config = load_config(DEMO)
    before = channel_table(config)
    groups_before = sum(len(d.time_groups) for _, d in registry.declared(config))
    kind = registry.SourceKind("probe", lambda c: True, _probe, lambda *a: None)
    monkeypatch.setattr(registry, "KINDS", (*registry.KINDS, kind))
    after = channel_table(config)
    assert after[: len(before)] == before
    temp, force = after[len(before) :]
    assert (temp.name, temp.unit, temp.quantum, temp.period_us) == ("probe_temp", "degC", 0.01, 1e6)
    # Its time groups are numbered after every earlier source's, in its declared order.
    assert (temp.group, force.group) == (groups_before, groups_before + 1)
    assert force.period_us == 1000


def test_sources_number_their_time_groups_one_after_another():
    config = load_config(DEMO)
    declared = registry.declared(config)
    offset, expected = 0, {}
    for _, declaration in declared:
        for i, group in enumerate(declaration.time_groups):
            for channel in declaration.channels:
                if channel.time_group == group:
                    expected[channel.name] = offset + i
        offset += len(declaration.time_groups)
    table = {c.name: c for c in channel_table(config)}
    sampled = [n for n in expected if n in table and table[n].kind == "sampled"]
    assert sampled
    assert all(table[n].group == expected[n] for n in sampled)


def test_the_health_words_of_a_source_say_its_state_work_faults_and_cycle_times():
    stats = SourceStats(
        "controller",
        "10.0.0.5:502 unit 1",
        "up",
        True,
        1200,
        2,
        1,
        {"requests": 300},
        {"timeout": 2, "exception_02": 0, "stale": 5},
        {"fast": GroupFigures(150, 1, (0.001, 0.0042, 0.009))},
    )
    assert stats.line() == (
        "controller up: 1200 samples, 300 requests, 1 connections lost, "
        "faults stale 5, timeout 2, p99 fast 4.2 ms"
    )
    quiet = dataclasses.replace(stats, faults={"timeout": 0}, groups={})
    assert quiet.line().endswith("1 connections lost, faults none")
