"""`edge-agent check-config` of a collector's configuration: told from an agent's by its top
level ([collector] and no [machine]), validated by the collector's own parser, one line when
it is refused, and one line for a file that is neither."""

from pathlib import Path

from edge_agent.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy/edge-collector.example.toml"


def test_a_collector_configuration_is_ok_with_its_broker_topics_and_database(capsys):
    assert main(["check-config", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    first, subscribes = out.splitlines()
    assert first == (
        f"{EXAMPLE}: ok: a collector: stores what it takes from "
        "mqtt://broker.plant.example:1883 (MQTT 5) into /var/lib/edge-collector/telemetry.db, "
        "keeps everything"
    )
    assert subscribes == (
        "  subscribes to edge/+/+/birth, edge/+/+/data, edge/+/+/event, edge/+/+/death"
    )
    assert err == ""


def test_a_collector_summary_says_tls_a_shared_group_and_the_retention(tmp_path, capsys):
    path = tmp_path / "collector.toml"
    path.write_text(
        '[collector]\ndb = "/srv/plant.db"\nshare_group = "pool"\nretention_days = 90\n'
        '[broker]\nhost = "broker.lan"\ntls = true\nprotocol = "5"\n'
    )
    assert main(["check-config", str(path)]) == 0
    first, subscribes = capsys.readouterr().out.splitlines()
    assert "from mqtts://broker.lan:8883 (MQTT 5) into /srv/plant.db, keeps 90 days" in first
    assert subscribes.startswith("  subscribes to $share/pool/edge/+/+/birth, ")


def test_a_collector_configuration_with_a_bad_key_is_the_collectors_one_line_and_exit_2(
    tmp_path, capsys
):
    path = tmp_path / "collector.toml"
    path.write_text(EXAMPLE.read_text().replace('db = "', 'dbb = 1\ndb = "', 1))
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"edge-agent: {path}:7: collector.dbb: unknown key")


def test_an_agents_section_in_a_collector_configuration_is_named(tmp_path, capsys):
    path = tmp_path / "collector.toml"
    path.write_text(EXAMPLE.read_text() + "\n[spool]\npath = 'x.db'\n")
    assert main(["check-config", str(path)]) == 2
    assert "spool: unknown key" in capsys.readouterr().err


def test_a_file_that_is_neither_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "scenario.toml"
    path.write_text('[stock]\nmaterial = "steel"\n')
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"edge-agent: {path}: neither an agent's configuration nor a collector's: no [machine] "
        "(an agent's) and no [collector] (a collector's) at its top level\n"
    )


def test_an_agent_configuration_missing_machine_is_still_the_agents_error(tmp_path, capsys):
    path = tmp_path / "agent.toml"
    text = (ROOT / "edge_agent/defaults/demo.toml").read_text()
    path.write_text(text.replace("[machine]", "[machin]"))
    assert main(["check-config", str(path)]) == 2
    assert "machin: unknown key" in capsys.readouterr().err
