"""Every numeric key has a range with a reason, and the relations between keys hold: what the
configuration refuses so that a mistake never reaches the machine (issue 16, items 1, 4, 6).

The dangerous values and the inputs that crashed the agent though they passed validation are
here one by one; the shipped examples document every range beside its key; and the agent
runs at the extremes of what is admitted.
"""

import asyncio
import copy
import math
from dataclasses import fields
from pathlib import Path

import pytest

from edge_agent import cli, limits
from edge_agent.config import (
    ChannelConfig,
    CollectorSection,
    ConfigError,
    ControlConfig,
    ServiceConfig,
    SpoolConfig,
    TelemetryConfig,
    UpstreamConfig,
    load_config,
    parse_collector_config,
    parse_config,
)
from edge_agent.registers import Tag
from edge_agent.sources.bridge_config import BridgeChannel, BridgeConfig
from edge_agent.sources.modbus_config import ControllerConfig, PollGroup
from edge_agent.telemetry import wire
from edge_agent.tomlcheck import Range
from tests.config_docs import BRIDGE, COLLECTOR, DEMO, _set, dumps
from tests.config_run import agent_outcome, collector_outcome

ROOT = Path(__file__).resolve().parent.parent
AGENT_EXAMPLE = ROOT / "deploy" / "edge-agent.example.toml"
COLLECTOR_EXAMPLE = ROOT / "deploy" / "edge-collector.example.toml"

#: Each section's dataclass and its ranges (limits.py).
SECTIONS = [
    (ControllerConfig(), limits.CONTROLLER),
    (PollGroup("fast", 0.1, 0.3), limits.POLL_GROUP),
    (Tag("t", 0, "holding", "uint16"), limits.TAG),
    (TelemetryConfig(), limits.TELEMETRY),
    (ChannelConfig("c"), limits.CHANNEL),
    (SpoolConfig(), limits.SPOOL),
    (UpstreamConfig(), limits.UPSTREAM),
    (ServiceConfig(), limits.SERVICE),
    (BridgeConfig(), limits.BRIDGE),
    (BridgeChannel("b", 0), limits.BRIDGE_CHANNEL),
    (ControlConfig(), limits.CONTROL),
    (CollectorSection(), limits.COLLECTOR),
]
#: Numbers derived from others, not keys of the file.
DERIVED = {"sample_rate_hz"}


def demo(**changes) -> str:
    """The demo's configuration with changes by dotted path ("control.period_s", "tags.0.scale"),
    as TOML."""
    doc = copy.deepcopy(DEMO)
    for dotted, value in changes.items():
        path = tuple(int(p) if p.isdigit() else p for p in dotted.split("."))
        _set(doc, path, value)
    return dumps(doc)


def refusal(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "agent.toml")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("agent.toml")
    return message


def tag_index(name: str) -> int:
    return [t["name"] for t in DEMO["tags"]].index(name)


# -- every key has a range, its default inside, documented beside it ------------------------


@pytest.mark.parametrize(("section", "ranges"), SECTIONS, ids=lambda x: type(x).__name__)
def test_every_numeric_key_of_every_section_has_a_range(section, ranges):
    numeric = {
        f.name
        for f in fields(section)
        if f.type in ("int", "float", "tuple[int, ...]") and f.name not in DERIVED
    }
    assert numeric == set(ranges) & {f.name for f in fields(section)}
    for key in numeric:
        values = getattr(section, key)
        for value in values if isinstance(values, tuple) else (values,):
            assert ranges[key].admits(value), f"the default {key} = {value} is out of range"


def test_every_filter_parameter_has_a_range_and_its_default_lies_in_it():
    from edge_agent.config import _FILTER_PARAMS, FREQUENCY

    for kind, params in _FILTER_PARAMS.items():
        for key, (allowed, default) in params.items():
            assert allowed == FREQUENCY or isinstance(allowed, Range), (kind, key)
            if default is not ... and isinstance(allowed, Range):
                assert allowed.admits(default), (kind, key)


def _documented(path: Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.mark.parametrize(
    ("example", "ranges"),
    [(AGENT_EXAMPLE, table) for _, table in SECTIONS[:-1]]
    + [(AGENT_EXAMPLE, limits.FILTER), (COLLECTOR_EXAMPLE, limits.COLLECTOR)]
    + [(COLLECTOR_EXAMPLE, limits.BROKER)],
)
def test_the_example_documents_each_range_beside_its_key(example, ranges):
    lines = _documented(example)
    for key, allowed in ranges.items():
        assert any(key in line and allowed.text() in line for line in lines), (
            f"{example.name}: no line with {key} and its range {allowed.text()}"
        )


# -- item 4: dangerous values ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"control.override_max_pct": 10000},
            "control.override_max_pct: must be a number in 1..200",
        ),
        ({"control.fall_pct_per_s": 0}, "control.fall_pct_per_s: must be a number in 1..100000"),
        ({"control.hard_limit_pct": 1e300}, "control.hard_limit_pct: must be a number in 1..250"),
        ({"control.overload_persist_s": 1e300}, "control.overload_persist_s: must be a number in"),
        ({"control.neutral_override_pct": 0}, "control.neutral_override_pct: must be a number in"),
        ({"control.neutral_override_pct": -5}, "control.neutral_override_pct: must be a number"),
        ({"control.neutral_override_pct": 40}, "control.neutral_override_pct: must lie within"),
        (
            {"control.safe_override_pct": 150},
            "control.safe_override_pct: must be a number in 1..100",
        ),
        ({"control.override_min_pct": 0}, "control.override_min_pct: must be a number in 1..100"),
        (
            {"control.override_tag": "in_alarm", "control.writable": ["in_alarm"]},
            "control.override_tag: 'in_alarm' is already control.alarm_tag",
        ),
        (
            {"control.override_tag": "spindle_load", "control.writable": ["spindle_load"]},
            "control.override_tag: 'spindle_load' is already control.signal",
        ),
        (
            {"control.knob_tag": "spindle_on"},
            "control.knob_tag: 'spindle_on' is already control.spindle_on_tag",
        ),
        ({"control.spindle_on_tag": ""}, "control.spindle_on_tag: must name a tag"),
        ({"control.path_tags": ["x_position", "u_axis"]}, "control.path_tags[1]: no tag or node"),
        (
            {"control.path_tags": ["spindle_load"]},
            "control.path_tags[0]: 'spindle_load' is already control.signal",
        ),
        (
            {"control.programmed_feed_tag": ""},
            "control.programmed_feed_tag: goes with actual_feed_tag",
        ),
        (
            {"control.actual_feed_tag": "feed_knob", "control.programmed_feed_tag": "actual_feed"},
            "control.actual_feed_tag: 'feed_knob' is already control.knob_tag",
        ),
        ({"control.tool_tag": "", "control.tools": [3]}, "control.tools: needs tool_tag"),
        ({"control.tools": [-1]}, "control.tools[0]: must be an integer in 0..4294967295"),
        ({"control.kp": 0, "control.ki": 0}, "control.ki: kp and ki are both 0"),
        (
            {"control.fall_pct_per_s": 50},
            "control.fall_pct_per_s: must be at least rise_pct_per_s and override_max_pct - "
            "override_min_pct (100 %/s)",
        ),
        ({"control.idle_load_pct": 80}, "control.idle_load_pct: must be below target_load_pct"),
        ({"control.period_s": 0.5}, "control.period_s: must not be above stale_s (0.3)"),
        (
            {"control.stale_s": 0.03},
            "control.stale_s: must be at least twice the 0.02 s period of 'spindle_load' "
            "(poll_groups.fast)",
        ),
        (
            {"control.verify_s": 0.03},
            "control.verify_s: must be at least twice the 0.02 s period of 'agent_feed_override'",
        ),
        ({"control.frozen_s": 0.03}, "control.frozen_s: must be at least twice"),
        (
            {"control.refresh_s": 1e300},
            "control.refresh_s: must be 0 (write on change only) or a number in 0.01..60",
        ),
        ({"control.exit_fraction": 0}, "control.exit_fraction: must be a number in 0.01..0.9"),
    ],
)  # fmt: skip
def test_a_dangerous_control_value_is_refused(changes, expected):
    assert expected in refusal(demo(**changes))


def test_refresh_0_means_write_on_change_only_and_is_admitted():
    assert parse_config(demo(**{"control.refresh_s": 0})).control.refresh_s == 0


def test_a_decimated_signal_needs_stale_s_over_two_of_its_output_periods():
    channel = {"filters": [{"kind": "decimate", "factor": 10}]}
    message = refusal(demo(**{"channels.spindle_load": channel}))
    assert "control.stale_s: must be at least twice the 0.2 s period of 'spindle_load' " in message
    assert "decimated by 10" in message


# -- item 1: only a whole register of its own is written -------------------------------------


def _override_as(**tag) -> str:
    i = tag_index("agent_feed_override")
    return demo(**{f"tags.{i}.{key}": value for key, value in tag.items()})


def test_a_bitfield_override_is_refused_a_write_would_clear_its_neighbours():
    # The override in bits 0-7; coolant and spindle-enable bits in 8-15 of the same register.
    doc = copy.deepcopy(DEMO)
    i = tag_index("agent_feed_override")
    doc["tags"][i] |= {"type": "bitfield", "bit": 0, "width": 8}
    doc["tags"].append(
        {
            "name": "coolant_on",
            "address": 100,
            "table": "holding",
            "type": "bitfield",
            "bit": 8,
            "poll_group": "fast",
        }
    )
    assert (
        "control.writable[0]: 'agent_feed_override' is a bitfield tag: a write sends the whole "
        "register and would clear the other bits in it" in refusal(dumps(doc))
    )


def test_a_bool_override_is_refused():
    assert "'agent_feed_override' is a bool tag" in refusal(_override_as(type="bool"))


def test_an_input_register_is_never_written():
    message = refusal(_override_as(table="input", address=200))
    assert "control.writable[0]: 'agent_feed_override' is a input tag" in message


def test_a_register_control_reads_is_never_also_written():
    i = tag_index("feed_knob")
    text = demo(
        **{
            f"tags.{i}.table": "holding",
            "control.writable": ["agent_feed_override", "feed_knob"],
        }
    )
    assert "control.writable[1]: 'feed_knob' is read as control.knob_tag" in refusal(text)


def test_the_override_register_must_hold_the_whole_override_range():
    message = refusal(_override_as(scale=0.001))
    assert "control.override_tag: 'agent_feed_override' (uint16, scale 0.001, offset 0)" in message
    assert "cannot hold 150 %" in message
    assert "cannot hold 0 %" in refusal(_override_as(offset=10.0))
    assert "negative scale" in refusal(_override_as(type="int16", scale=-1.0))
    assert parse_config(_override_as(type="float32")).control.override_tag


# -- item 6: inputs that crashed the agent though they passed validation ---------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"poll_groups.fast.period_s": 1e-10},
            "poll_groups.fast.period_s: must be a number in 0.001..3600, got 1e-10",
        ),
        ({"control.period_s": 1e-10}, "control.period_s: must be a number in 0.001..1, got 1e-10"),
        ({"tags.0.scale": 1e-320}, "tags[0].scale: must be a number in +-1e-9..1e9, got 1e-320"),
        (
            {"spool.commit_interval_s": 1e300},
            "spool.commit_interval_s: must be a number in 0.1..600",
        ),
        (
            {"telemetry.frame_interval_s": 1e-9},
            "telemetry.frame_interval_s: must be a number in 0.1..600",
        ),
        (
            {"channels.spindle_load.filters": [{"kind": "lowpass", "order": 2, "cutoff_hz": 1e-9}]},
            "filters[0].cutoff_hz: must be at least 5e-05",
        ),
        (
            {"channels.actual_feed.ref": "spindle_load"},
            "channels.actual_feed.ref: 'spindle_load' travels in quanta of 0.1, this channel "
            "in 0.001",
        ),
    ],
)  # fmt: skip
def test_an_input_that_crashed_the_agent_is_refused(changes, expected):
    assert expected in refusal(demo(**changes))


def test_a_collector_retention_that_overflowed_is_refused():
    text = dumps(_with_collector(retention_days=1e300))
    with pytest.raises(ConfigError, match=r"retention_days: must be 0 \(keep all\) or a number"):
        parse_collector_config(text, "collector.toml")


def _with_collector(**keys) -> dict:
    doc = copy.deepcopy(COLLECTOR)
    doc["collector"] |= keys
    return doc


@pytest.mark.parametrize(
    "changes",
    [
        {"poll_groups.fast.period_s": 0.001, "control.period_s": 0.001, "control.stale_s": 0.002,
         "control.frozen_s": 0.002, "control.verify_s": 0.01, "control.refresh_s": 0.01},
        {"poll_groups.fast.period_s": 0.5, "poll_groups.slow.period_s": 3600,
         "control.period_s": 1.0, "control.stale_s": 10, "control.frozen_s": 60,
         "control.verify_s": 60, "control.refresh_s": 60},
        {"telemetry.frame_interval_s": 0.1, "spool.commit_interval_s": 0.1},
        {"telemetry.frame_interval_s": 600, "spool.commit_interval_s": 600},
        {"tags.0.scale": 1e-9, "tags.1.scale": -1e-9, "tags.9.scale": 1e9, "tags.10.scale": -1e9,
         "tags.11.offset": 1e9, "tags.12.offset": -1e9, "tags.2.offset": 1e9},
        {"channels.spindle_power.quantum": 1e-9, "channels.spindle_speed.quantum": 1e9,
         "channels.x_position.ref": "y_position", "channels.cycle_time.report": "on_change",
         "channels.cycle_time.deadband": 1e9, "channels.cycle_time.heartbeat_s": 0.1},
        {"channels.spindle_speed.filters": [
            {"kind": "lowpass", "order": 8, "cutoff_hz": 5e-5},
            {"kind": "decimate", "factor": 1000, "order": 8},
            {"kind": "ema", "tau_s": 1e-6}, {"kind": "hampel", "window": 31, "n_sigmas": 100}]},
        {"bridge": BRIDGE | {"sample_hz": 5000, "block_samples": 496}},
        {"bridge": BRIDGE | {"sample_hz": 1, "block_samples": 8}},
        {"control.override_max_pct": 200, "control.air_override_pct": 200,
         "control.override_min_pct": 1, "control.fall_pct_per_s": 100_000,
         "control.rise_pct_per_s": 10_000, "control.kp": 10, "control.ki": 100,
         "control.target_load_pct": 200, "control.hard_limit_pct": 250},
    ],
    ids=["fastest", "slowest", "short frames", "long frames", "scales", "wire", "filters",
         "bridge fastest", "bridge slowest", "control"],
)  # fmt: skip
def test_the_agent_runs_at_the_extremes_of_what_is_admitted(changes, tmp_path):
    assert agent_outcome(demo(**changes).encode(), tmp_path, seconds=5.0, max_steps=5000) == (
        "valid"
    )


@pytest.mark.parametrize("days", [1, 36500, 0])
def test_the_collector_prunes_at_the_extremes_of_its_retention(days, tmp_path):
    text = dumps(_with_collector(retention_days=days)).encode()
    assert collector_outcome(text, tmp_path) == "valid"


# -- a file that is not UTF-8 ----------------------------------------------------------------

NOT_UTF8 = b'[machine]\nsite = "plant-a"\nmachine_id = "mill-\xff07"\n'


def test_a_config_that_is_not_utf8_is_one_line_naming_the_line(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_bytes(NOT_UTF8)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{path}:3: not UTF-8 text (byte 0xff at offset 46); TOML files are UTF-8"
    )


@pytest.mark.parametrize(
    "command",
    [["check-config", "{}"], ["run", "{}"], ["collect", "run", "{}"], ["status", "--config", "{}"],
     ["teach", "list", "--config", "{}"]],
    ids=lambda c: " ".join(c[:2]),
)  # fmt: skip
def test_every_command_reading_a_config_says_not_utf8_in_one_line(command, tmp_path, capsys):
    path = tmp_path / "agent.toml"
    path.write_bytes(NOT_UTF8)
    assert cli.main([part.format(path) for part in command]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"edge-agent: {path}:3: not UTF-8 text (byte 0xff at offset 46); TOML files are UTF-8\n"
    )


def test_the_range_text_says_what_0_means_and_the_sign():
    assert limits.CONTROL["refresh_s"].rule() == (
        "0 (write on change only) or a number in 0.01..60"
    )
    assert limits.TAG["scale"].text() == "+-1e-9..1e9"
    assert limits.TAG["scale"].admits(-2.0) and not limits.TAG["scale"].admits(0.0)
    assert not limits.CONTROL["stale_s"].admits(math.nan)


def test_asyncio_is_left_clean():
    # The outcomes above run their agents with asyncio.run: none leaves a loop set.
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_the_benchs_toml_files_that_are_not_utf8_are_one_line_too(tmp_path):
    from hil.replay import ReplayMapError, load_replay_map
    from hil.scenario import ScenarioError, load_scenario

    path = tmp_path / "bench.toml"
    path.write_bytes(b'name = "steady"\nnote = "\xe9"\n')
    expected = rf"^{path}:2: not UTF-8 text \(byte 0xe9 at offset 24\); TOML files are UTF-8$"
    with pytest.raises(ScenarioError, match=expected):
        load_scenario(path)
    with pytest.raises(ReplayMapError, match=expected):
        load_replay_map(path)


def test_more_published_channels_than_a_birth_may_carry_is_refused():
    """A collector refuses a birth of more than wire.MAX_CHANNELS channels: the agent must not
    start with a table it cannot deliver (a tag each, at fresh input registers)."""
    doc = copy.deepcopy(DEMO)
    first = max(t["address"] for t in DEMO["tags"] if t.get("table") == "input") + 10
    doc["tags"] += [
        {
            "name": f"extra_{i}",
            "address": first + i,
            "table": "input",
            "type": "uint16",
            "poll_group": "slow",
        }
        for i in range(wire.MAX_CHANNELS)
    ]
    assert "over the 4096 a birth may carry" in refusal(dumps(doc))
