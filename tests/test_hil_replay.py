"""Replaying a recording through the register map: the CSV, served register by register."""

import asyncio
import csv

import pytest
from pymodbus.client import AsyncModbusTcpClient

from edge_agent.registers import Table
from hil.codec import decode_registers
from hil.controller import SimulatedController
from hil.register_map import AGENT_OVERRIDE, BY_NAME, TAGS
from hil.replay import (
    DEFAULT_MAP,
    RECORDINGS_DIR,
    ReplayMapError,
    ReplayPlant,
    load_replay_map,
    parse_replay_map,
    recording_path,
)

SHORT = "experiment_05"  # 462 rows: every one of them is checked


def csv_rows(name):
    with recording_path(name).open(newline="") as f:
        return list(csv.DictReader(f))


class FakeClock:
    t_s = 0.0

    def __call__(self):
        return self.t_s


async def read_everything(client) -> dict[str, float]:
    """Every tag, in three requests, decoded by the register map."""
    blocks = {
        Table.INPUT: (await client.read_input_registers(0, count=9, device_id=1)).registers,
        Table.HOLDING: (await client.read_holding_registers(100, count=1, device_id=1)).registers,
        Table.DISCRETE: (await client.read_discrete_inputs(0, count=3, device_id=1)).bits,
    }
    blocks[Table.INPUT] += [0] + (
        await client.read_input_registers(10, count=17, device_id=1)
    ).registers
    base = {Table.INPUT: 0, Table.HOLDING: 100, Table.DISCRETE: 0}
    out = {}
    for tag in TAGS:
        at = tag.address - base[tag.table]
        out[tag.name] = decode_registers(tag, list(blocks[tag.table][at : at + tag.span]))
    return out


def test_every_row_of_a_recording_is_served_to_each_registers_scale():
    rows = csv_rows(SHORT)

    async def scenario():
        clock = FakeClock()
        plant = ReplayPlant(recording_path(SHORT))
        controller = SimulatedController(plant, clock=clock)
        port = await controller.start_tcp()
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
        await client.connect()
        try:
            for i, row in enumerate(rows):
                clock.t_s = i * 0.1 + 0.05
                got = await read_everything(client)
                power = float(row["S1_OutputPower"])
                assert got["spindle_power"] == pytest.approx(power, rel=1e-6, abs=1e-12)
                assert got["spindle_load"] == pytest.approx(max(0.0, power * 100), abs=0.05 + 1e-9)
                speed = max(0.0, float(row["S1_ActualVelocity"]) * 60)
                assert got["spindle_speed"] == pytest.approx(speed, abs=0.5 + 1e-9)
                feed = float(row["M1_CURRENT_FEEDRATE"]) * 60
                assert got["programmed_feed"] == got["actual_feed"] == pytest.approx(feed)
                for axis in "xyz":
                    recorded = float(row[f"{axis.upper()}1_ActualPosition"])
                    assert got[f"{axis}_position"] == pytest.approx(recorded, abs=0.0005 + 1e-9)
                assert got["program_number"] == float(row["M1_CURRENT_PROGRAM_NUMBER"])
                assert got["block_number"] == float(row["M1_sequence_number"])
                running = row["Machining_Process"].lower() != "end"
                assert got["run_state"] == got["program_running"] == float(running)
                assert got["spindle_on"] == float(float(row["S1_CommandVelocity"]) > 1.0)
                assert got["cycle_time"] == pytest.approx(i * 0.1)
                assert got[AGENT_OVERRIDE] == 100
                assert got == plant.expected(clock.t_s), i
        finally:
            client.close()
            await controller.stop()

    asyncio.run(scenario())


def test_row_i_holds_from_i_times_100_ms_and_the_last_row_holds_after_the_end():
    plant = ReplayPlant(recording_path(SHORT))
    assert plant.row_at(0.0) == 0
    assert plant.row_at(0.0999) == 0
    assert plant.row_at(0.1) == 1
    assert plant.row_at(1e6) == plant.rows - 1
    assert plant.duration_s == pytest.approx(plant.rows * 0.1)


def test_loop_starts_again_from_the_first_row():
    plant = ReplayPlant(recording_path(SHORT), loop=True)
    first = plant.expected(0.0)
    assert plant.expected(plant.duration_s) == first
    assert plant.row_at(plant.duration_s + 0.25) == 2


def test_time_never_goes_backwards():
    plant = ReplayPlant(recording_path(SHORT))
    plant.advance_to(10.0)
    later = plant.values()
    plant.advance_to(1.0)
    assert plant.values() == later


def test_override_writes_are_remembered_and_change_nothing_else():
    plant = ReplayPlant(recording_path(SHORT))
    plant.advance_to(12.0)
    before = plant.values()
    plant.write(AGENT_OVERRIDE, 80)
    after = plant.values()
    assert after.pop(AGENT_OVERRIDE) == 80
    before.pop(AGENT_OVERRIDE)
    assert after == before


def test_glitches_are_carried_as_recorded():
    rows = csv_rows("experiment_02")
    glitch = next(i for i, r in enumerate(rows) if float(r["M1_CURRENT_FEEDRATE"]) == 50)
    odd_program = next(i for i, r in enumerate(rows) if r["M1_CURRENT_PROGRAM_NUMBER"] != "1.0")
    plant = ReplayPlant(recording_path("experiment_02"))
    assert plant.expected(glitch * 0.1)["programmed_feed"] == 3000
    expected_program = float(rows[odd_program]["M1_CURRENT_PROGRAM_NUMBER"])
    assert plant.expected(odd_program * 0.1)["program_number"] == expected_program


def test_every_bundled_recording_loads_with_the_default_map():
    paths = sorted(RECORDINGS_DIR.glob("experiment_*.csv"))
    assert len(paths) == 12
    for path in paths:
        plant = ReplayPlant(path)
        assert set(plant.expected(0.0)) == {tag.name for tag in TAGS}


def test_the_bundled_data_carries_its_provenance():
    readme = (RECORDINGS_DIR / "README.md").read_text()
    assert "CC0" in readme and "University of" in readme and "glitch" in readme.lower()


def test_recording_path_takes_a_name_or_a_path():
    by_name = recording_path("experiment_01")
    assert by_name == RECORDINGS_DIR / "experiment_01.csv"
    assert recording_path(str(by_name)) == by_name
    with pytest.raises(ReplayMapError, match="experiment_99: no such recording"):
        recording_path("experiment_99")


def test_the_default_map_covers_every_tag():
    assert set(load_replay_map(DEFAULT_MAP).sources) == set(BY_NAME)


def _map_text(**overrides: str | None) -> str:
    """The default map with some [tags.<name>] tables replaced, added, or removed (None)."""
    head, *sections = DEFAULT_MAP.read_text().split("\n[tags.")
    kept = [s for s in sections if s.split("]", 1)[0].split(".")[0] not in overrides]
    added = [f"{name}]\n{body}\n" for name, body in overrides.items() if body is not None]
    return "\n[tags.".join([head, *kept, *added])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"spindle_load": 'column = "S1_OutputPower"\nscale = "big"'},
            "tags.spindle_load.scale: must be a number",
        ),
        (
            {"spindle_load": 'column = "S1_OutputPower"\nvalue = 3'},
            "tags.spindle_load: needs exactly one of column or value",
        ),
        (
            {"spindle_load": 'column = "S1_OutputPower"\ncolour = 1'},
            "tags.spindle_load.colour: unknown key",
        ),
        ({"spindle_load": None}, "tags.spindle_load: missing"),
        ({"spindel_load": "value = 1"}, "tags.spindel_load: not a tag of the register map"),
        ({"tool_number": "value = 1\nscale = 2"}, "tags.tool_number: value is a constant"),
        ({"block_number": "column = 7"}, "tags.block_number.column: must be a column name"),
    ],
)
def test_map_errors_are_one_line_naming_the_key(change, message):
    with pytest.raises(ReplayMapError) as caught:
        parse_replay_map(_map_text(**change), "replay-map.toml")
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith("replay-map.toml: ")
    assert message in text


def test_unknown_top_level_key_and_bad_toml_are_one_line_errors():
    for text, message in (
        (DEFAULT_MAP.read_text().replace("period_s", "period"), "period: unknown key"),
        ("period_s = 0\n", "period_s: must be a number > 0"),
        ("[tags\n", "replay-map.toml: "),
    ):
        with pytest.raises(ReplayMapError, match=message) as caught:
            parse_replay_map(text, "replay-map.toml")
        assert "\n" not in str(caught.value)


def test_a_column_missing_from_the_recording_names_the_tag(tmp_path):
    path = tmp_path / "replay-map.toml"
    path.write_text(_map_text(x_position='column = "X9_ActualPosition"'))
    with pytest.raises(ReplayMapError, match=r"tags\.x_position\.column: no column 'X9_"):
        ReplayPlant(recording_path(SHORT), replay_map=path)


def test_a_text_without_a_code_names_the_tag_and_the_row(tmp_path):
    path = tmp_path / "replay-map.toml"
    path.write_text(_map_text(run_state='column = "Machining_Process"\ncodes = { Prep = 1 }'))
    with pytest.raises(ReplayMapError, match=r"tags\.run_state\.codes: row \d+: no code for"):
        ReplayPlant(recording_path(SHORT), replay_map=path)
