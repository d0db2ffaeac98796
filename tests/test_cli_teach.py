"""`edge-agent teach`: list, reset and export the learned records, with one-line errors."""

import json

import pytest

from edge_agent.cli import main
from edge_agent.config import ConfigError
from edge_agent.control.profile_store import ProfileStore
from edge_agent.control.teach import TeachStore, ToolRecord
from tests.test_config import MINIMAL
from tests.test_profile_store import part_record

pytestmark = pytest.mark.timeout(60)

STAMP = "2024-05-01T10:00:00Z"

CONFIG = (
    MINIMAL
    + """
[control]
target_mode = "teach_in"
teach_fraction = 0.8
hard_limit_pct = 100.0
teach_file = "{teach_file}"
"""
)


@pytest.fixture
def setup(tmp_path):
    """(config path, the store it names)."""
    store = TeachStore(tmp_path / "state" / "teach.json")
    config = tmp_path / "agent.toml"
    config.write_text(CONFIG.format(teach_file=store.path))
    return str(config), store


def record(tool, peak=80.0, idle=10.0, blocks=(20, 30, 40), program=1001):
    return ToolRecord(tool, peak, idle, blocks, program, 50, STAMP)


def test_list_with_nothing_taught_says_so(setup, capsys):
    config, store = setup
    assert main(["teach", "list", "--config", config]) == 0
    assert capsys.readouterr().out == f"no tools taught yet ({store.path})\n"


def test_list_prints_one_line_per_tool_with_its_target(setup, capsys):
    config, store = setup
    store.save({12: record(12, peak=120.0, blocks=(5,), program=2002), 5: record(5)})
    assert main(["teach", "list", "--config", config]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert " ".join(header.split()) == "tool peak % idle % target % blocks program learned_at"
    # 0.8 x 80 = 64; 0.8 x 120 = 96 is capped at 90 % of the 100 % hard limit.
    assert [row.split() for row in rows] == [
        ["5", "80.0", "10.0", "64.0", "3", "1001", STAMP],
        ["12", "120.0", "10.0", "90.0", "1", "2002", STAMP],
    ]


def test_list_notes_when_the_targets_are_not_in_use(setup, capsys):
    config, store = setup
    with open(config, "r+") as f:
        text = f.read().replace('target_mode = "teach_in"', 'target_mode = "fixed"')
        f.seek(0)
        f.write(text)
        f.truncate()
    store.save({5: record(5)})
    assert main(["teach", "list", "--config", config]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        '(target_mode is "fixed": these targets are not in use)'
    )


def test_reset_forgets_one_tool(setup, capsys):
    config, store = setup
    store.save({5: record(5), 12: record(12)})
    assert main(["teach", "reset", "5", "--config", config]) == 0
    assert "tool 5 forgotten" in capsys.readouterr().out
    assert list(store.load()) == [12]


def test_reset_of_an_untaught_tool_is_one_line_and_exit_1(setup, capsys):
    config, store = setup
    store.save({12: record(12)})
    assert main(["teach", "reset", "5", "--config", config]) == 1
    err = capsys.readouterr().err
    assert err == f"edge-agent: tool 5 is not taught ({store.path})\n"
    assert list(store.load()) == [12]


@pytest.mark.parametrize("command", [["teach"], ["teach", "reset"]])
def test_reset_help_says_when_a_running_agent_sees_it(capsys, command):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    assert "next program start" in " ".join(capsys.readouterr().out.split())


def test_export_writes_the_store_json_to_stdout(setup, capsys):
    config, store = setup
    store.save({5: record(5)})
    assert main(["teach", "export", "--config", config]) == 0
    assert capsys.readouterr().out == store.path.read_text()


def test_export_of_an_empty_store_is_an_empty_teach_file(setup, capsys):
    config, _ = setup
    assert main(["teach", "export", "--config", config]) == 0
    assert json.loads(capsys.readouterr().out) == {"version": 1, "tools": {}}


def test_export_to_a_file_can_be_loaded_on_another_machine(setup, tmp_path, capsys):
    config, store = setup
    store.save({5: record(5), 12: record(12)})
    out = tmp_path / "backup" / "teach.json"
    assert main(["teach", "export", "--config", config, "--out", str(out)]) == 0
    assert TeachStore(out).load() == store.load()
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("action", [["list"], ["reset", "5"], ["export"]])
def test_a_corrupt_teach_file_is_one_line_and_exit_2(setup, capsys, action):
    config, store = setup
    store.path.parent.mkdir()
    store.path.write_text("{not json")
    assert main(["teach", *action, "--config", config]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"edge-agent: {store.path}: not a teach file: invalid JSON")
    assert store.path.read_text() == "{not json"


@pytest.mark.parametrize("action", [["list"], ["reset", "5"], ["export"]])
def test_a_bad_config_is_one_line_and_exit_2(tmp_path, capsys, action):
    bad = tmp_path / "agent.toml"
    bad.write_text("[machine]\n")
    assert main(["teach", *action, "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "machine.site: missing" in err


def test_a_missing_config_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["teach", "list", "--config", str(tmp_path / "none.toml")]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("none.toml: cannot read: No such file or directory")
    )


def test_the_config_defaults_to_the_installed_path(monkeypatch, capsys):
    import edge_agent.cli as cli

    def load_config(path):
        raise ConfigError(f"{path}: cannot read: No such file or directory")

    monkeypatch.setattr(cli, "load_config", load_config)
    assert main(["teach", "list"]) == 2
    assert capsys.readouterr().err.startswith("edge-agent: /etc/edge-agent/agent.toml: ")


# -- the learned profiles of the preview --------------------------------------------------------


def saved_profile(store_dir, program=1001, tool=1):
    import array

    from edge_agent.control.path import Visit
    from edge_agent.control.profile import Profile

    visits = (Visit(10, 0.0, 0.0), Visit(20, 0.0, 3.0, 1.0))
    k = array.array("d", [float("nan"), 20.0, 35.0])
    ProfileStore(store_dir).save(Profile(program, tool, visits, k, 3), 0.05)


def test_the_learned_profiles_are_listed_shown_plotted_and_forgotten(setup, tmp_path, capsys):
    config, store = setup
    saved_profile(store.path.parent / "profiles")
    assert main(["teach", "profiles", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "1001" in out and "preview is off" in out
    png = tmp_path / "profile.png"
    assert main(["teach", "show", "1001", "1", "--png", str(png), "--config", config]) == 0
    out = capsys.readouterr().out
    assert "20 (3.0 mm)" in out and png.read_bytes()[:4] == b"\x89PNG"
    assert main(["teach", "forget", "1001", "1", "--config", config]) == 0
    assert main(["teach", "show", "1001", "1", "--config", config]) == 1
    assert "no profile of program 1001, tool 1" in capsys.readouterr().err


def test_a_profile_file_that_does_not_read_is_one_line_and_the_listing_says_so(setup, capsys):
    config, store = setup
    folder = store.path.parent / "profiles"
    saved_profile(folder)
    (folder / "program-2-tool-2.json").write_text("{broken")
    assert main(["teach", "profiles", "--config", config]) == 1
    captured = capsys.readouterr()
    assert "1001" in captured.out
    assert captured.err.count("\n") == 1 and "program-2-tool-2.json: cannot read" in captured.err


def png_size(path):
    """(width, height) from a PNG's IHDR."""
    data = path.read_bytes()
    assert data[:4] == b"\x89PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_show_says_what_the_last_part_did_and_plots_it_below_the_profile(setup, tmp_path, capsys):
    config, store = setup
    folder = store.path.parent / "profiles"
    saved_profile(folder)
    ProfileStore(folder).save_last_part(part_record(), 1)
    png = tmp_path / "profile.png"
    assert main(["teach", "show", "1001", "1", "--png", str(png), "--config", config]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2] == "last part: 3 readings, 0.0-1.0 s into its cycle, peak load 71.1 %"
    assert png_size(png) == (1000, 800)  # two panels: the profile, the last part


def test_show_without_a_last_part_says_none_is_kept_and_plots_the_profile_alone(
    setup, tmp_path, capsys
):
    config, store = setup
    saved_profile(store.path.parent / "profiles")
    png = tmp_path / "profile.png"
    assert main(["teach", "show", "1001", "1", "--png", str(png), "--config", config]) == 0
    assert "no last part kept" in capsys.readouterr().out
    assert png_size(png) == (1000, 400)


def test_a_last_part_that_does_not_read_is_one_line_and_the_profile_is_still_shown(
    setup, tmp_path, capsys
):
    config, store = setup
    folder = store.path.parent / "profiles"
    saved_profile(folder)
    (folder / "program-1001-tool-1.last-part.csv").write_text("{broken")
    png = tmp_path / "profile.png"
    assert main(["teach", "show", "1001", "1", "--png", str(png), "--config", config]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1
    assert "program-1001-tool-1.last-part.csv: not a last part" in captured.err
    assert "20 (3.0 mm)" in captured.out and png_size(png) == (1000, 400)


def test_show_writes_the_profile_as_csv_one_row_per_bin(setup, tmp_path, capsys):
    config, store = setup
    saved_profile(store.path.parent / "profiles")
    out = tmp_path / "export" / "profile.csv"
    assert main(["teach", "show", "1001", "1", "--csv", str(out), "--config", config]) == 0
    header, *rows = out.read_text().splitlines()
    assert header == "s_mm,k_pct,block"
    # the profile's k: [nan, 20, 35] on 1 mm bins, all in block 20 (block 10 is 0 mm long)
    assert rows == ["0.5,,20", "1.5,20.000,20", "2.5,35.000,20"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{out}: the profile's 3 bins of 1 mm")


def test_forget_deletes_the_last_part_with_the_profile(setup, capsys):
    config, store = setup
    folder = store.path.parent / "profiles"
    saved_profile(folder)
    ProfileStore(folder).save_last_part(part_record(), 1)
    assert main(["teach", "forget", "1001", "1", "--config", config]) == 0
    assert "forgotten with its last part" in capsys.readouterr().out
    assert list(folder.iterdir()) == []
