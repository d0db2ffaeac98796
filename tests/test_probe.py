"""`edge-agent probe`: what it prints of each row (pure), then the probe against the simulated
Modbus controller, the bench's OPC UA server and the bridge firmware's emulator on loopback:
the plant's values as the agent decodes them, a wrong word order shown as a wrong number beside
the right one, a refused register's exception on its own row, one line when nothing answers."""

import asyncio
import contextlib
import dataclasses
import io
import math
import socket

import pytest
from pymodbus.constants import ExcCodes

from edge_agent.cli import main
from edge_agent.config import ControlConfig
from edge_agent.probe import control_roles, probe
from edge_agent.probe.bridge import stream_row
from edge_agent.probe.modbus import order_label, other_orders, tag_row
from edge_agent.probe.opcua import missing_row, node_row
from edge_agent.probe.report import Report, render
from edge_agent.registers import Order, Table, Tag, ValueType, encode_registers
from edge_agent.samples import Quality, Sample
from edge_agent.sources.opcua_config import OpcUaNode
from hil.codec import as_registered
from hil.controller import SimulatedController
from hil.demo import demo_config, opcua_demo_config
from hil.opcua_server import OpcUaController
from hil.plant import demo_plant
from hil.register_map import BY_NAME

pytestmark = pytest.mark.timeout(60)

BIG, LITTLE = Order.BIG, Order.LITTLE


def feed(address=2, **changes) -> Tag:
    return Tag("programmed_feed", address, Table.INPUT, ValueType.FLOAT32, unit="mm/min", **changes)


def columns(lines: list[str]) -> list[dict[str, str]]:
    """A printed table's rows as {header: cell}: columns start where their header does."""
    header = lines[0]
    names = header.split()
    starts = []
    for name in names:
        starts.append(header.index(name, starts[-1] + 1 if starts else 0))
    ends = [*starts[1:], None]
    return [
        {
            name: line[start:end].strip()
            for name, start, end in zip(names, starts, ends, strict=True)
        }
        for line in lines[1:]
    ]


def table_of(text: str, title_start: str) -> dict[str, dict[str, str]]:
    """The rows of the table under the title line starting with `title_start`, by first cell;
    multi-word headers ("raw (hex)") are keyed by their first word."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title_start))
    body = []
    for line in lines[start + 1 :]:
        if not line.startswith("  ") or line.startswith("  orders:"):
            break
        body.append(line[2:])
    header = body[0]
    # One space inside a header ("raw (hex)", "source time (UTC)") joins its words.
    for joined in ("raw (hex)", "other orders", "source time (UTC)", "node id"):
        header = header.replace(joined, joined.replace(" ", "_"))
    return {row[next(iter(row))]: row for row in columns([header, *body[1:]])}


# -- what a row says (pure) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "byte_order", "word_order", "label"),
    [
        (2, BIG, BIG, "ABCD"),
        (2, BIG, LITTLE, "CDAB"),
        (2, LITTLE, BIG, "BADC"),
        (2, LITTLE, LITTLE, "DCBA"),
        (4, BIG, LITTLE, "GHEFCDAB"),
        (4, LITTLE, BIG, "BADCFEHG"),
        (1, LITTLE, BIG, "BA"),
    ],
)
def test_orders_are_named_by_the_bytes_on_the_wire_as_controller_manuals_name_them(
    words, byte_order, word_order, label
):
    assert order_label(words, byte_order, word_order) == label


def test_a_float32_row_has_its_value_its_registers_and_the_value_under_each_other_order():
    tag = feed()
    row, good = tag_row(tag, encode_registers(tag, 1234.5), "signal")
    name, where, kind, value, quality, raw, role, others = row
    assert (name, where, kind, value, quality, raw, role) == (
        "programmed_feed",
        "input 2..3",
        "float32 ABCD",
        "1234.5 mm/min",
        "GOOD",
        "449A 5000",
        "signal",
    )
    assert good
    assert [part.split()[0] for part in others.split(", ")] == ["CDAB", "BADC", "DCBA"]


def test_the_same_registers_under_a_swapped_word_order_are_another_number_beside_the_right_one():
    registers = encode_registers(feed(), 1234.5)  # the controller sends ABCD
    row, good = tag_row(feed(word_order=LITTLE), registers)  # the map says CDAB
    assert good and row[2] == "float32 CDAB"
    assert float(row[3].split()[0]) != pytest.approx(1234.5)
    assert "ABCD 1234.5" in row[7].split(", ")


def test_a_one_register_value_has_only_the_other_byte_order():
    tag = Tag("feed_knob", 6, Table.INPUT, ValueType.UINT16, unit="%")
    row, _ = tag_row(tag, [100])
    assert row[3] == "100 %" and row[5] == "0064" and row[7] == "BA 25600"
    assert [t.byte_order for t in other_orders(tag)] == [LITTLE]


def test_bits_and_bitfields_have_no_other_orders():
    bit = Tag("spindle_on", 0, Table.DISCRETE, ValueType.BOOL)
    field = Tag("alarm_servo", 8, Table.INPUT, ValueType.BITFIELD, bit=1)
    assert other_orders(bit) == other_orders(field) == []
    assert tag_row(bit, [1])[0][1:8] == ("discrete 0", "bit", "1", "GOOD", "1", "", "")
    assert tag_row(field, [0b10])[0][1:4] == ("input 8 bit 1", "bitfield", "1")


def test_a_scaled_integer_shows_its_scale_and_its_physical_value():
    tag = Tag("x_position", 10, Table.INPUT, ValueType.INT32, scale=0.001, unit="mm")
    row, _ = tag_row(tag, encode_registers(tag, -123.456))
    assert row[2:4] == ("int32 ABCD x0.001", "-123.456 mm")


def test_a_refused_register_shows_its_exception_code_on_its_row():
    row, good = tag_row(feed(), 2, "knob")
    assert not good
    assert row[3:] == ("", "BAD: exception 02 (illegal data address)", "", "knob", "")


def test_a_float_that_is_not_finite_is_bad_as_the_agent_takes_it():
    row, good = tag_row(feed(), [0x7FC0, 0x0000])
    assert not good and row[3] == "nan mm/min" and row[4] == "BAD: not a finite number"


def test_control_roles_mark_the_inputs_and_the_writable_override():
    roles = control_roles(ControlConfig(enable_tag="agent_enable"))
    assert roles["spindle_load"] == "signal"
    assert roles["spindle_on"] == "spindle_on"
    assert roles["agent_enable"] == "enable"
    assert roles["agent_feed_override"] == "override, writable"
    assert "" not in roles


def test_a_table_is_aligned_and_leaves_out_a_column_empty_in_every_row():
    report = Report(
        "controller x",
        ("tag", "value", "control"),
        [("spindle_load", "8.2 %", ""), ("feed_knob", "100 %", "")],
        notes=["a note"],
    )
    assert render(report) == [
        "controller x",
        "  tag           value",
        "  spindle_load  8.2 %",
        "  feed_knob     100 %",
        "  a note",
    ]


def test_a_report_that_could_not_read_is_its_one_line():
    assert render(Report("controller x", error="controller x: cannot connect")) == [
        "controller x: cannot connect"
    ]


def test_an_opcua_row_says_the_value_its_type_status_and_what_the_agent_makes_of_it():
    node = OpcUaNode("program_number", node_id="ns=2;s=Program", unit="", group="slow")
    row, good = node_row(node, "ns=2;s=Program", "String", "O1001", 0, "Good", None)
    assert not good and row[1:4] == ("String", '"O1001"', "BAD: not_numeric")
    load = OpcUaNode("spindle_load", browse_path="Objects/Load", unit="%", group="fast")
    row, good = node_row(load, "ns=2;i=7", "Float", 42.5, 0, "Good", None, "signal")
    assert good
    assert row == ("spindle_load", "Float", "42.5 %", "GOOD", "Good", "-", "signal", "ns=2;i=7")
    assert missing_row(load, "BadNoMatch")[3] == "BAD: not found: BadNoMatch"
    assert missing_row(load, "BadNoMatch")[7] == "Objects/Load"


def test_a_bridge_row_says_the_latest_value_and_its_age():
    sample = Sample("vib_x_rms", 1_000_000_000, 0.25, Quality.GOOD)
    row, good = stream_row("vib_x_rms", 1, "rms", "g", sample, 1_012_000_000)
    assert good and row == ("vib_x_rms", "1 accel x", "rms", "0.25 g", "GOOD", "12 ms", "")
    assert stream_row("vib_x_rms", 1, "rms", "g", None, 0)[0][4] == "BAD: no sample yet"


# -- against the simulated controller -------------------------------------------------------


def quick(config, **controller):
    return dataclasses.replace(
        config, controller=dataclasses.replace(config.controller, timeout_s=0.3, **controller)
    )


class Cutting:
    """A plant clock that starts at 0 and then stands at 12.3 s, mid-cut: every value is
    known and most are not 0."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        now, self.now = self.now, 12.3
        return now


@contextlib.asynccontextmanager
async def simulated(tmp_path):
    plant = demo_plant()
    controller = SimulatedController(plant, clock=Cutting())
    port = await controller.start_tcp("127.0.0.1", 0)
    try:
        yield controller, plant, quick(demo_config(port=port, spool=str(tmp_path / "s.db")))
    finally:
        await controller.stop()


async def _probe(config) -> tuple[int, str]:
    out = io.StringIO()
    status = await probe(config, out)
    return status, out.getvalue()


def test_probe_prints_the_plants_values_as_the_agent_decodes_them(tmp_path):
    async def run():
        async with simulated(tmp_path) as (_, plant, config):
            status, text = await _probe(config)
            return status, text, config, plant.values()

    status, text, config, values = asyncio.run(run())
    assert status == 0
    rows = table_of(text, "controller 127.0.0.1:")
    assert list(rows) == [t.name for t in config.tags]
    for tag in config.tags:
        row = rows[tag.name]
        want = as_registered(BY_NAME[tag.name], values[tag.name])
        got = float(row["value"].removesuffix(tag.unit).strip())
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9), tag.name
        assert row["quality"] == "GOOD"
    assert rows["spindle_load"]["control"] == "signal"
    assert rows["agent_feed_override"]["control"] == "override, writable"
    assert "probe never writes" in text.splitlines()[-1]


def test_a_float32_mapped_with_the_wrong_word_order_reads_wrong_and_shows_the_right_order(tmp_path):
    async def run():
        async with simulated(tmp_path) as (_, plant, config):
            # The controller sends spindle_power CDAB; this map says ABCD.
            tags = tuple(
                dataclasses.replace(t, word_order=BIG) if t.name == "spindle_power" else t
                for t in config.tags
            )
            status, text = await _probe(dataclasses.replace(config, tags=tags))
            return status, text, plant.values()["spindle_power"]

    status, text, power = asyncio.run(run())
    row = table_of(text, "controller ")["spindle_power"]
    assert status == 0  # a wrong number is still a number: the person judges it
    assert row["type"] == "float32 ABCD"
    shown = float(row["value"].removesuffix("kW"))
    assert not math.isclose(shown, power, rel_tol=1e-3)
    cdab = next(p for p in row["other_orders"].split(", ") if p.startswith("CDAB "))
    assert float(cdab.split()[1]) == pytest.approx(power, rel=1e-5)


def test_a_refused_register_shows_its_exception_on_that_tags_row_and_exit_1(tmp_path):
    async def run():
        async with simulated(tmp_path) as (controller, _, config):
            controller.faults.fail(Table.INPUT, 26, 1, ExcCodes.DEVICE_FAILURE)
            unmapped = Tag("coolant_level", 40, Table.INPUT, ValueType.UINT16, poll_group="slow")
            config = dataclasses.replace(config, tags=(*config.tags, unmapped))
            return await _probe(config)

    status, text = asyncio.run(run())
    assert status == 1
    rows = table_of(text, "controller ")
    assert rows["spindle_temperature"]["quality"] == "BAD: exception 04 (server device failure)"
    assert rows["coolant_level"]["quality"] == "BAD: exception 02 (illegal data address)"
    assert rows["cycle_time"]["quality"] == "GOOD"  # read in the same request, then alone
    assert "input 22..26 refused whole (exception 04 (server device failure))" in text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_controller_is_one_line_and_exit_1(tmp_path, capsys):
    path = tmp_path / "agent.toml"
    text = demo_toml().replace("port = 5020", f"port = {free_port()}")
    path.write_text(text.replace("timeout_s = 1.0", "timeout_s = 0.2"))
    assert main(["probe", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and err == ""
    assert out.startswith("controller 127.0.0.1:")
    assert out.endswith("cannot connect within 0.4 s (Connection refused); nothing read\n")


def test_a_controller_that_does_not_answer_is_one_line_and_exit_1(tmp_path):
    async def run():
        async with simulated(tmp_path) as (controller, _, config):
            controller.faults.silent = True
            return await _probe(config)

    status, text = asyncio.run(run())
    assert status == 1
    assert text.count("\n") == 1
    assert "no reply to read" in text and "within 0.3 s (timeout)" in text


def test_watch_reads_again_every_period_until_stopped(tmp_path):
    async def run():
        async with simulated(tmp_path) as (controller, _, config):
            out = io.StringIO()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(probe(config, out, watch_s=0.1), 0.55)
            return out.getvalue()

    text = asyncio.run(run())
    rounds = text.count("every 0.1 s until Ctrl-C")
    assert 2 <= rounds <= 7  # 0.55 s at 0.1 s a round, on a busy machine too
    assert text.count("controller 127.0.0.1:") == rounds


def test_a_bad_configuration_is_exit_2(tmp_path, capsys):
    path = tmp_path / "agent.toml"
    path.write_text(demo_toml().replace('site = "demo-shop"', 'site = "demo-shop"\nsight = 1'))
    assert main(["probe", str(path)]) == 2
    assert "machine.sight: unknown key" in capsys.readouterr().err


def test_watch_before_the_file_takes_the_file_as_the_file(tmp_path, capsys):
    path = tmp_path / "agent.toml"
    path.write_text(demo_toml().replace('site = "demo-shop"', 'site = "demo shop"'))
    assert main(["probe", "--watch", str(path)]) == 2
    assert "machine.site: must be" in capsys.readouterr().err  # the file was read


@pytest.mark.parametrize("seconds", ["0", "0.05", "soon", "nan"])
def test_a_watch_period_that_is_not_a_number_of_seconds_is_one_line_and_exit_2(seconds, capsys):
    assert main(["probe", "agent.toml", "--watch", seconds]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"edge-agent probe: --watch: seconds must be a number, at least 0.1, got {seconds!r}\n"
    )


def demo_toml() -> str:
    from importlib import resources

    return resources.files("edge_agent.defaults").joinpath("demo.toml").read_text()


# -- against the bench's OPC UA server ------------------------------------------------------


def test_probe_over_opcua_prints_values_and_status_and_a_missing_node_on_its_row(tmp_path):
    async def run():
        plant = demo_plant()
        server = OpcUaController(plant, clock=Cutting(), refresh_period_s=None)
        port = await server.start("127.0.0.1", 0)
        config = opcua_demo_config(f"opc.tcp://127.0.0.1:{port}", spool=str(tmp_path / "s.db"))
        missing = OpcUaNode("coolant_level", node_id="ns=2;s=Coolant/Level", group="slow")
        opcua = dataclasses.replace(config.opcua, nodes=(*config.opcua.nodes, missing))
        server.faults.fail("spindle_temperature")
        try:
            status, text = await _probe(dataclasses.replace(config, opcua=opcua))
        finally:
            await server.stop()
        return status, text, plant.values(), config

    status, text, values, config = asyncio.run(run())
    assert status == 1
    assert f"{len(config.opcua.nodes)} of {len(config.opcua.nodes) + 1} nodes found" in text
    rows = table_of(text, "opcua opc.tcp://")
    load = rows["spindle_load"]
    assert (load["type"], load["quality"], load["status"], load["control"]) == (
        "Double",
        "GOOD",
        "Good",
        "signal",
    )
    assert float(load["value"].removesuffix("%")) == pytest.approx(values["spindle_load"])
    assert load["node_id"].startswith("ns=")
    assert rows["spindle_on"]["value"] == "true"
    assert rows["program_number"]["value"] == '"1001"'
    temperature = rows["spindle_temperature"]
    assert (temperature["quality"], temperature["status"]) == (
        "BAD: bad_status",
        "BadSensorFailure",
    )
    coolant = rows["coolant_level"]
    assert coolant["quality"] == "BAD: not found: BadNodeIdUnknown"
    assert coolant["node_id"] == "ns=2;s=Coolant/Level"


def test_no_opcua_server_is_one_line_and_exit_1(tmp_path):
    config = opcua_demo_config(f"opc.tcp://127.0.0.1:{free_port()}", spool=str(tmp_path / "s"))
    status, text = asyncio.run(_probe(config))
    assert status == 1
    assert text == (
        f"{config.opcua.url}: cannot connect: unreachable (Connection refused); nothing read\n"
    ).replace(config.opcua.url, f"opcua {config.opcua.url}")


# -- against the bridge firmware's emulator -------------------------------------------------


def test_probe_of_the_bridge_says_the_boards_identity_and_a_value_per_channel(tmp_path):
    from edge_agent.sources.bridge_config import BridgeChannel, BridgeConfig
    from hil.bridge_emulator import BridgeEmulator
    from tests.test_bridge_protocol import require_tool

    power = BridgeChannel("spindle_power", 0, "W", 2.5, -100.0, raw=True, features=("mean",))
    vib = BridgeChannel("vib_x", 1, "g", 0.0039, features=("rms",))
    with BridgeEmulator(feed=True, micropython=require_tool("micropython")) as emulator:
        emulator.feed_counts(1000, 0, 0, 256)
        bridge = BridgeConfig(emulator.path, channels=(power, vib))
        config = dataclasses.replace(
            demo_config(spool=str(tmp_path / "s.db")), tags=(), poll_groups={}, bridge=bridge
        )
        status, text = asyncio.run(_probe(config))
    assert status == 0
    title = text.splitlines()[0]
    assert title.startswith(f"bridge {emulator.path} (board 51a1b0a4d0000001, firmware ")
    rows = table_of(text, "bridge ")
    assert list(rows) == ["spindle_power", "spindle_power_mean", "vib_x_rms"]
    assert rows["spindle_power"]["value"] == "2400 W"  # 1000 counts x 2.5 - 100
    assert rows["spindle_power_mean"]["value"] == "2400 W"
    assert all(row["quality"] == "GOOD" for row in rows.values())


def test_a_bridge_that_is_not_there_is_one_line_and_exit_1(tmp_path):
    from edge_agent.sources.bridge_config import BridgeChannel, BridgeConfig

    port = str(tmp_path / "ttyACM9")
    bridge = BridgeConfig(port, channels=(BridgeChannel("vib_x", 1, "g"),))
    config = dataclasses.replace(
        demo_config(spool=str(tmp_path / "s.db")), tags=(), poll_groups={}, bridge=bridge
    )
    status, text = asyncio.run(_probe(config))
    assert status == 1
    assert text.count("\n") == 1
    assert text.startswith(f"bridge {port}: not streaming (cannot open (")
