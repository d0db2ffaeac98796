"""The configuration file: what loads, and the one-line error for each kind of mistake."""

import re
from pathlib import Path

import pytest

from edge_agent.config import ConfigError, load_config, parse_config
from edge_agent.registers import Order, Table, ValueType

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "edge-agent.example.toml"
DEMO = ROOT / "edge_agent" / "defaults" / "demo.toml"

MINIMAL = """\
[machine]
site = "plant-a"
machine_id = "mill-01"

[controller]
host = "10.0.0.5"

[poll_groups.fast]
period_s = 0.1

[[tags]]
name = "spindle_load"
address = 0
table = "input"
type = "uint16"
scale = 0.1
poll_group = "fast"

[[tags]]
name = "feed_override"
address = 1
table = "holding"
type = "uint16"
poll_group = "fast"
"""


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "agent.toml")
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("path", [EXAMPLE, DEMO], ids=["example", "demo"])
def test_shipped_configs_load(path):
    config = load_config(path)
    assert config.tags and config.poll_groups


def test_minimal_config_fills_documented_defaults():
    config = parse_config(MINIMAL)
    assert config.controller.port == 502
    assert config.controller.unit_id == 1
    assert config.poll_groups["fast"].stale_after_s == pytest.approx(0.3)
    load = config.tags[0]
    assert (load.table, load.type, load.byte_order, load.word_order) == (
        Table.INPUT,
        ValueType.UINT16,
        Order.BIG,
        Order.BIG,
    )
    assert load.scale == 0.1


def test_unknown_key_is_named_with_its_line():
    text = MINIMAL.replace('host = "10.0.0.5"', 'host = "10.0.0.5"\nhots = "x"')
    assert re.fullmatch(
        r"agent\.toml:7: controller\.hots: unknown key \(allowed: .*\)", error_of(text)
    )


def test_unknown_section_is_an_error():
    assert (
        "bogus: unknown key (allowed: bridge, channels, control, controller, machine"
        in error_of(MINIMAL + "\n[bogus]\nx = 1\n")
    )


def test_wrong_type_names_key_and_types():
    text = MINIMAL.replace("period_s = 0.1", 'period_s = "fast"')
    assert error_of(text) == (
        "agent.toml:9: poll_groups.fast.period_s: must be a number, got a string"
    )


def test_bad_address_names_the_tag_entry():
    text = MINIMAL.replace("address = 1\n", "address = 70000\n")
    assert error_of(text) == (
        "agent.toml:21: tags[1].address: must be an integer in 0..65535, got 70000 "
        "(the Modbus address space)"
    )


def test_multi_register_value_may_not_run_past_the_address_space():
    text = MINIMAL.replace(
        'address = 1\ntable = "holding"\ntype = "uint16"',
        'address = 65534\ntable = "holding"\ntype = "float64"',
    )
    assert "tags[1].address: float64 at 65534 runs past 65535" in error_of(text)


def test_overlapping_registers_are_refused():
    text = (
        MINIMAL + '\n[[tags]]\nname = "feed"\naddress = 0\ntable = "holding"\ntype = "int32"\n'
        'poll_group = "fast"\n'
    )
    message = error_of(text)
    assert "tags[2].address" in message or "tags[1].address" in message
    assert "overlaps" in message


def test_bitfields_may_share_a_register():
    text = MINIMAL + "".join(
        f'\n[[tags]]\nname = "alarm_{bit}"\naddress = 8\ntable = "input"\ntype = "bitfield"\n'
        f'bit = {bit}\npoll_group = "fast"\n'
        for bit in range(3)
    )
    config = parse_config(text)
    assert [t.bit for t in config.tags if t.type is ValueType.BITFIELD] == [0, 1, 2]


def test_bitfield_may_not_share_with_a_whole_register_tag():
    text = (
        MINIMAL + '\n[[tags]]\nname = "alarm"\naddress = 0\ntable = "input"\n'
        'type = "bitfield"\nbit = 3\npoll_group = "fast"\n'
    )
    assert "overlaps" in error_of(text)


def test_bitfield_width_must_fit_the_register():
    text = (
        MINIMAL + '\n[[tags]]\nname = "mode"\naddress = 9\ntable = "input"\n'
        'type = "bitfield"\nbit = 12\nwidth = 8\npoll_group = "fast"\n'
    )
    assert "tags[2].width: must be an integer in 1..4, got 8" in error_of(text)


def test_coil_tag_must_be_bool():
    text = (
        MINIMAL + '\n[[tags]]\nname = "coolant"\naddress = 0\ntable = "coil"\n'
        'type = "uint16"\npoll_group = "fast"\n'
    )
    assert "tags[2].type: a coil tag is one bit: type must be bool" in error_of(text)


def test_missing_section_is_named():
    text = MINIMAL.replace('[machine]\nsite = "plant-a"\nmachine_id = "mill-01"\n', "")
    assert error_of(text) == "agent.toml: machine: missing section"


def test_missing_required_key_is_named():
    text = MINIMAL.replace('machine_id = "mill-01"\n', "")
    assert error_of(text).endswith("machine.machine_id: missing")


def test_unknown_poll_group_is_named():
    text = MINIMAL.replace('poll_group = "fast"\n\n[[tags]]', 'poll_group = "slow"\n\n[[tags]]')
    assert "tags[0].poll_group: no poll group 'slow' in [poll_groups] (have: fast)" in error_of(
        text
    )


def test_duplicate_tag_names_are_refused():
    text = MINIMAL.replace('name = "feed_override"', 'name = "spindle_load"')
    assert "tags[1].name: duplicate tag name 'spindle_load' (first at tags[0])" in error_of(text)


def test_rtu_needs_a_serial_port():
    text = MINIMAL.replace('host = "10.0.0.5"', 'protocol = "rtu"')
    assert 'controller.serial_port: missing (required when protocol = "rtu")' in error_of(text)


def test_invalid_toml_names_file_and_position():
    message = error_of(MINIMAL + "\n[broken\n")
    assert message.startswith("agent.toml: invalid TOML:") and "line" in message


def test_upstream_settings_are_checked_where_they_are_written():
    def upstream(text: str) -> str:
        return error_of(MINIMAL + "\n[upstream]\n" + text)

    assert "upstream.kind: must be one of mqtt, file, none" in upstream('kind = "kafka"\n')
    assert "upstream.file_path: is needed" in upstream('kind = "file"\n')
    assert "upstream.protocol: must be one of 5, 3.1.1" in upstream('protocol = "4"\n')
    assert "upstream.topic_prefix: must be topic levels" in upstream('topic_prefix = "a/#"\n')
    assert "upstream.username: is needed with a password" in upstream(
        'kind = "mqtt"\npassword_env = "X"\n'
    )
    assert "upstream.ca_file: is used only with tls = true" in upstream(
        'kind = "mqtt"\nca_file = "ca.pem"\n'
    )
    assert "upstream.reconnect_max_s: must not be less" in upstream(
        "reconnect_min_s = 5.0\nreconnect_max_s = 1.0\n"
    )
    assert "spool.max_bytes: must be an integer in" in error_of(
        MINIMAL + "\n[spool]\nmax_bytes = 10\n"
    )


def test_a_secret_readable_by_others_is_refused_with_its_mode(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    text = f'kind = "mqtt"\nusername = "agent"\npassword_file = "{secret}"\n'
    error = error_of(MINIMAL + "\n[upstream]\n" + text)
    assert "upstream.password_file" in error and "readable by others (mode 0644)" in error
    assert "s3cret" not in error
    secret.chmod(0o640)
    config = parse_config(MINIMAL + "\n[upstream]\n" + text)
    assert config.upstream.password_file == str(secret)
    missing = text.replace(str(secret), str(tmp_path / "none"))
    assert "No such file" in error_of(MINIMAL + "\n[upstream]\n" + missing)


def test_unreadable_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read"):
        load_config(tmp_path / "nope.toml")


def test_demo_config_mirrors_the_simulated_controller_map():
    from hil.register_map import BY_NAME

    for tag in load_config(DEMO).tags:
        truth = BY_NAME[tag.name]
        assert (
            tag.address,
            tag.table,
            tag.type,
            tag.byte_order,
            tag.word_order,
            tag.scale,
            tag.offset,
            tag.bit,
            tag.width,
        ) == (
            truth.address,
            truth.table,
            truth.type,
            truth.byte_order,
            truth.word_order,
            truth.scale,
            truth.offset,
            truth.bit,
            truth.width,
        ), tag.name


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            "quantum = -0.1",
            "channels.spindle_load.quantum: must be 0 (the register's resolution) or",
        ),
        ("quantum = inf", "channels.spindle_load.quantum: must be a finite number"),
        (
            "quantum = 1e-10",
            "channels.spindle_load.quantum: must be 0 (the register's resolution) or",
        ),
        ("quantum = 1e10", "a number in 1e-9..1e9, got 10000000000.0"),
        ('report = "sometimes"', "channels.spindle_load.report: must be one of sampled, on_change"),
        ("heartbeat_s = 0", "channels.spindle_load.heartbeat_s: must be a number in 0.1..86400"),
        ('ref = "nothing"', "channels.spindle_load.ref: must name another tag, got 'nothing'"),
        ('ref = "spindle_load"', "channels.spindle_load.ref: must name another tag"),
    ],
)
def test_wire_settings_of_a_channel_are_checked(section, message):
    assert message in error_of(MINIMAL + f"\n[channels.spindle_load]\n{section}\n")


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ('[service]\nmetrics_listen = "9846"', 'service.metrics_listen: must be "host:port"'),
        ('[service]\nmetrics_listen = "127.0.0.1:70000"', "service.metrics_listen: must be"),
        ("[service]\nlog_repeat_burst = 0", "service.log_repeat_burst: must be an integer in"),
        ("[service]\nlog_repeat_window_s = 0", "service.log_repeat_window_s: must be a number in"),
        ("[control]\nrealtime_priority = 100", "control.realtime_priority: must be an integer"),
    ],
)
def test_service_settings_are_checked(section, expected):
    assert expected in error_of(MINIMAL + "\n" + section + "\n")


def test_service_settings_default_to_loopback_metrics_and_normal_scheduling():
    config = parse_config(MINIMAL + '\n[service]\nmetrics_listen = "[::1]:9100"\n')
    assert config.service.metrics_listen == "[::1]:9100"
    assert parse_config(MINIMAL).service.metrics_listen == "127.0.0.1:9846"
    assert parse_config(MINIMAL).control.realtime_priority == 0
