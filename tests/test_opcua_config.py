"""The [opcua] section: what loads, its defaults, the one-line error for each kind of mistake,
and the node-id and browse-path parsers held to round trips."""

import re
import uuid
from base64 import b64encode
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.config import ConfigError
from edge_agent.sources.opcua import declare
from edge_agent.sources.opcua_config import (
    STANDARD_NAMESPACE,
    BrowseName,
    NodeIdParts,
    parse_browse_path,
    parse_node_id,
    parse_opcua,
)
from edge_agent.tomlcheck import TomlChecker

pytestmark = pytest.mark.timeout(60)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "opcua.md"
NS = "urn:edge-agent:hil:machine-tool"

MINIMAL = f"""\
[opcua]
url = "opc.tcp://10.0.0.7:4840"
namespace = "{NS}"

[opcua.groups.fast]
period_s = 0.1

[[opcua.nodes]]
name = "spindle_load"
browse_path = "Objects/Machines/HIL-1/Monitoring/Spindle/ActLoad"
unit = "%"
"""


def parse(text: str, taken=()):
    checker = TomlChecker("agent.toml", text, ConfigError)
    return parse_opcua(checker, checker.parse(), set(taken))


def error_of(text: str, taken=()) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(text, taken)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_no_section_is_none():
    assert parse('[machine]\nsite = "a"\n') is None


def test_a_minimal_section_fills_the_documented_defaults():
    cfg = parse(MINIMAL)
    assert (cfg.security, cfg.mode, cfg.timeout_s, cfg.session_timeout_s) == (
        "none",
        "subscribe",
        2.0,
        30.0,
    )
    assert (cfg.reconnect_min_s, cfg.reconnect_max_s, cfg.queue_size) == (0.5, 30.0, 1)
    assert cfg.groups["fast"].stale_after_s == pytest.approx(0.3)  # three periods
    (node,) = cfg.nodes
    assert (node.group, node.writable, node.quantum, node.type) == ("fast", False, 0.0, "")


def test_declare_gives_sorted_time_groups_and_quanta_by_type():
    text = MINIMAL.replace(
        "[opcua.groups.fast]", "[opcua.groups.slow]\nperiod_s = 1.0\n\n[opcua.groups.fast]"
    )
    text += (
        '\n[[opcua.nodes]]\nname = "tool_number"\nnode_id = "ns=2;s=HIL-1/Monitoring/Channel/'
        'ActToolNumber"\ngroup = "slow"\ntype = "uint32"\n'
        '\n[[opcua.nodes]]\nname = "x_position"\nnode_id = "ns=2;i=5"\ngroup = "fast"\n'
        "quantum = 0.0001\n"
    )
    text = text.replace('unit = "%"\n', 'unit = "%"\ngroup = "fast"\n')
    declaration = declare(parse(text))
    assert declaration.time_groups == ("fast", "slow")
    channels = {c.name: c for c in declaration.channels}
    assert [c.name for c in declaration.channels] == ["spindle_load", "tool_number", "x_position"]
    assert channels["spindle_load"].quantum == 0.001  # a float, or a type not known yet
    assert channels["tool_number"].quantum == 1.0
    assert channels["x_position"].quantum == 0.0001
    assert channels["tool_number"].origin == "opcua.groups.slow"
    assert channels["tool_number"].period_s == 1.0
    assert channels["spindle_load"].unit == "%"


def _docs_examples() -> list[str]:
    section = DOCS.read_text().split("## The agent's OPC UA source", 1)[1]
    return re.findall(r"```toml\n(.*?)```", section, re.S)


def test_the_docs_examples_load(tmp_path):
    examples = _docs_examples()
    assert len(examples) >= 2
    for text in examples:
        # The secured example names files under /etc/edge-agent/opcua/: make them here.
        for name in set(re.findall(r'"/etc/edge-agent/opcua/([\w.-]+)"', text)):
            path = tmp_path / name
            path.write_text("agent:secret\n")
            path.chmod(0o600)
        text = text.replace("/etc/edge-agent/opcua/", f"{tmp_path}/")
        cfg = parse(text)
        assert cfg.nodes and cfg.groups


BAD_INPUTS = [
    ('url = "opc.tcp://10.0.0.7:4840"', 'url = "http://10.0.0.7:4840"', "opcua.url: must be"),
    ('url = "opc.tcp://10.0.0.7:4840"', 'url = "opc.tcp://10.0.0.7"', "opcua.url: must be"),
    ('url = "opc.tcp://10.0.0.7:4840"', 'url = "opc.tcp://me:pw@host:4840"', "opcua.url:"),
    ('url = "opc.tcp://10.0.0.7:4840"', 'url = "opc.tcp://host:70000"', "opcua.url:"),
    ("[opcua]\n", '[opcua]\nsecurity = "encrypt"\n', "opcua.security: must be one of"),
    ("[opcua]\n", '[opcua]\nsecurity = "sign"\n', "opcua.certificate: is needed with security"),
    ("[opcua]\n", '[opcua]\ncertificate = "a.pem"\n', "opcua.certificate: is used only with"),
    ("[opcua]\n", '[opcua]\nmode = "push"\n', "opcua.mode: must be one of subscribe, poll"),
    ("[opcua]\n", "[opcua]\nqueue_size = 0\n", "opcua.queue_size: must be an integer in 1..1000"),
    ("[opcua]\n", "[opcua]\ntimeout_s = 0\n", "opcua.timeout_s: must be a number in 0.1..60"),
    ("[opcua]\n", "[opcua]\nsession_timeout_s = 5\n", "opcua.session_timeout_s:"),
    (
        "[opcua]\n",
        "[opcua]\nreconnect_min_s = 5\nreconnect_max_s = 1\n",
        "opcua.reconnect_max_s: must not be less than reconnect_min_s",
    ),
    ("[opcua]\n", "[opcua]\nsampling = 1\n", "opcua.sampling: unknown key"),
    ("period_s = 0.1", "period_s = 0.001", "opcua.groups.fast.period_s: must be a number in"),
    (
        "period_s = 0.1",
        "period_s = 0.1\nstale_after_s = 0.05",
        "opcua.groups.fast.stale_after_s: must be at least period_s",
    ),
    ("[opcua.groups.fast]", "[opcua.groups.Fast]", "opcua.groups.Fast: group name must be"),
    (
        "[opcua.groups.fast]",
        "[opcua.groups.slow]\nperiod_s = 1\n[opcua.groups.fast]",
        "opcua.nodes[0].group: missing (one of slow, fast)",
    ),
    ('unit = "%"', 'unit = "%"\ngroup = "slow"', "opcua.nodes[0].group: no group 'slow'"),
    ('name = "spindle_load"', 'name = "Spindle-Load"', "opcua.nodes[0].name: must start"),
    ('name = "spindle_load"', 'name = "spindle_load"\nnode_id = "i=1"', "set node_id or browse"),
    ('browse_path = "Objects/Machines/HIL-1/Monitoring/Spindle/ActLoad"', "", "needs node_id or"),
    (
        'browse_path = "Objects/Machines/HIL-1/Monitoring/Spindle/ActLoad"',
        'node_id = "ns=2;x=1"',
        "opcua.nodes[0].node_id: must be",
    ),
    (
        'browse_path = "Objects/Machines/HIL-1/Monitoring/Spindle/ActLoad"',
        'node_id = "ns=2;i=4294967296"',
        "opcua.nodes[0].node_id: i= takes a number",
    ),
    (
        "Objects/Machines/HIL-1/Monitoring/Spindle/ActLoad",
        "Machines/HIL-1/Monitoring/Spindle/ActLoad",
        "opcua.nodes[0].browse_path: must start at the Objects folder",
    ),
    (
        "Objects/Machines/HIL-1/Monitoring/Spindle/ActLoad",
        "Objects/Machines//ActLoad",
        "opcua.nodes[0].browse_path: element '' of",
    ),
    ('unit = "%"', 'unit = "%"\nscale = 0.1', "opcua.nodes[0].scale: unknown key"),
    ('unit = "%"', 'unit = "%"\ntype = "float64"', "opcua.nodes[0].type: must be one of"),
    ('unit = "%"', 'unit = "%"\nquantum = -1', "opcua.nodes[0].quantum: must be 0 (by the node"),
    ('unit = "%"', 'unit = "%"\nwritable = "yes"', "opcua.nodes[0].writable: must be true or"),
]


@pytest.mark.parametrize(("old", "new", "expected"), BAD_INPUTS, ids=[b[2] for b in BAD_INPUTS])
def test_a_mistake_is_one_line_naming_the_key(old, new, expected):
    assert old in MINIMAL
    message = error_of(MINIMAL.replace(old, new, 1))
    assert expected in message
    assert re.match(r"agent\.toml:\d+: opcua", message), message


def test_a_group_without_nodes_is_refused():
    text = MINIMAL.replace('unit = "%"', 'unit = "%"\ngroup = "fast"')
    text += "\n[opcua.groups.slow]\nperiod_s = 1.0\n"
    assert "opcua.groups.slow: no node is read in this group" in error_of(text)


def test_no_groups_or_no_nodes_are_refused():
    no_groups = MINIMAL.replace("[opcua.groups.fast]\nperiod_s = 0.1\n", "")
    assert "opcua.groups: needs one or more" in error_of(no_groups)
    no_nodes = MINIMAL.split("[[opcua.nodes]]")[0]
    assert "opcua.nodes: needs one or more" in error_of(no_nodes)


def test_a_duplicate_or_taken_channel_name_is_refused():
    twice = MINIMAL + '\n[[opcua.nodes]]\nname = "spindle_load"\nnode_id = "ns=2;i=7"\n'
    assert "opcua.nodes[1].name: duplicate node 'spindle_load' (first at opcua.nodes[0])" in (
        error_of(twice)
    )
    assert "opcua.nodes[0].name: channel 'spindle_load' is already another source's" in (
        error_of(MINIMAL, taken={"spindle_load"})
    )


def _secret(tmp_path, name: str, text: str, mode: int) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_user_file_others_can_read_is_refused(tmp_path):
    users = _secret(tmp_path, "user", "agent:secret\n", 0o644)
    message = error_of(MINIMAL.replace("[opcua]\n", f'[opcua]\nuser_file = "{users}"\n'))
    assert "opcua.user_file:" in message
    assert "readable by others (mode 0644)" in message


@pytest.mark.parametrize("text", ["agent\n", "agent:\n", "a\nb\nc\n", ""])
def test_a_user_file_not_user_and_password_is_refused(tmp_path, text):
    users = _secret(tmp_path, "user", text, 0o600)
    message = error_of(MINIMAL.replace("[opcua]\n", f'[opcua]\nuser_file = "{users}"\n'))
    assert "opcua.user_file:" in message
    assert "password" in message


@pytest.mark.parametrize("text", ["agent:feed-4-speed\n", "agent\nfeed:4:speed\n"])
def test_a_user_file_of_either_form_loads(tmp_path, text):
    users = _secret(tmp_path, "user", text, 0o640)
    cfg = parse(MINIMAL.replace("[opcua]\n", f'[opcua]\nuser_file = "{users}"\n'))
    assert cfg.user_file == str(users)


def test_security_needs_its_files_and_a_private_key(tmp_path):
    cert = _secret(tmp_path, "agent.pem", "cert", 0o644)
    key = _secret(tmp_path, "agent-key.pem", "key", 0o644)
    server = _secret(tmp_path, "server.der", "cert", 0o644)
    keys = (
        f'[opcua]\nsecurity = "sign_and_encrypt"\ncertificate = "{cert}"\n'
        f'private_key = "{key}"\nserver_certificate = "{server}"\n'
    )
    assert "opcua.private_key:" in error_of(MINIMAL.replace("[opcua]\n", keys))
    key.chmod(0o600)
    assert parse(MINIMAL.replace("[opcua]\n", keys)).security == "sign_and_encrypt"
    missing = keys.replace(str(server), str(tmp_path / "nowhere.der"))
    assert "opcua.server_certificate:" in error_of(MINIMAL.replace("[opcua]\n", missing))
    no_server = keys.replace(f'server_certificate = "{server}"\n', "")
    assert "opcua.server_certificate: is needed" in error_of(
        MINIMAL.replace("[opcua]\n", no_server)
    )


# -- the parsers ------------------------------------------------------------------------------


def test_node_ids_of_every_kind_parse():
    assert parse_node_id("i=2258") == NodeIdParts(0, "i", 2258)
    assert parse_node_id("ns=2;s=HIL-1/Monitoring") == NodeIdParts(2, "s", "HIL-1/Monitoring")
    assert parse_node_id(f"nsu={NS};s=a;b=c") == NodeIdParts(NS, "s", "a;b=c")
    guid = "72962b91-fa75-4ae6-8d28-b404dc7daf63"
    assert parse_node_id(f"ns=1;g={guid}") == NodeIdParts(1, "g", uuid.UUID(guid))
    assert parse_node_id("ns=3;b=AAEC") == NodeIdParts(3, "b", b"\x00\x01\x02")


@pytest.mark.parametrize(
    "text", ["", "s=", "ns=;s=a", "ns=70000;i=1", "ns=2;i=-1", "ns=2;g=72962b91", "b=!!", "x=1"]
)
def test_bad_node_ids_are_refused(text):
    with pytest.raises(ValueError):
        parse_node_id(text)


def test_a_browse_path_takes_the_default_namespace_and_braced_uris():
    mt = "http://opcfoundation.org/UA/MachineTool/"
    path = f"Objects/{{http://opcfoundation.org/UA/Machinery/}}Machines/Mill 1/{{{mt}}}Monitoring"
    assert parse_browse_path(path, "urn:vendor") == (
        BrowseName(STANDARD_NAMESPACE, "Objects"),
        BrowseName("http://opcfoundation.org/UA/Machinery/", "Machines"),
        BrowseName("urn:vendor", "Mill 1"),
        BrowseName(mt, "Monitoring"),
    )
    assert parse_browse_path("Objects/Server")[1] == BrowseName(STANDARD_NAMESPACE, "Server")


_URIS = st.text(st.characters(exclude_characters=";"), min_size=1)  # nsu= ends at a ';'
_PATH_URIS = st.text(st.characters(exclude_characters="{}"), min_size=1)
_NAMES = st.text(st.characters(exclude_characters="/{}"), min_size=1)


@given(
    st.one_of(st.integers(0, 65535), _URIS),
    st.one_of(
        st.tuples(st.just("i"), st.integers(0, 2**32 - 1)),
        st.tuples(st.just("s"), st.text(min_size=1)),
        st.tuples(st.just("g"), st.uuids()),
        st.tuples(st.just("b"), st.binary(min_size=1)),
    ),
)
def test_a_node_id_reads_back_what_was_written(namespace, id_kind):
    kind, identifier = id_kind
    text = {"i": str, "s": str, "g": str, "b": lambda b: b64encode(b).decode()}[kind](identifier)
    prefix = f"nsu={namespace};" if isinstance(namespace, str) else f"ns={namespace};"
    parts = parse_node_id(f"{prefix}{kind}={text}")
    assert parts == NodeIdParts(namespace, kind, identifier)


@given(st.lists(st.tuples(st.one_of(st.none(), _PATH_URIS), _NAMES), min_size=1))
def test_a_browse_path_reads_back_what_was_written(elements):
    text = "Objects/" + "/".join(f"{{{uri}}}{name}" if uri else name for uri, name in elements)
    parsed = parse_browse_path(text, "urn:default")
    assert parsed[1:] == tuple(BrowseName(uri or "urn:default", name) for uri, name in elements)


@given(st.text())
def test_any_text_parses_or_is_refused_in_one_line(text):
    for parser in (parse_node_id, parse_browse_path):
        try:
            parser(text)
        except ValueError as exc:
            assert "\n" not in str(exc)
