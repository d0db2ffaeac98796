"""The learned profiles on disk (control/profile_store.py) and each one's last part: written
atomically, read back the same, and a file that cannot be read is one line that leaves the
others loading."""

import array
import logging
import math

import pytest

from edge_agent.config import ControlConfig
from edge_agent.control.host import ControlHost
from edge_agent.control.learning import keep_last_part
from edge_agent.control.part import PartRecorder
from edge_agent.control.path import Visit
from edge_agent.control.profile import Profile
from edge_agent.control.profile_store import LAST_PART, ProfileError, ProfileStore, profile_dir

pytestmark = pytest.mark.timeout(30)


def profile(program=1001, tool=3):
    visits = (Visit(10, 0.0, 0.0, 0.0), Visit(20, 0.0, 60.25, 4.0))
    return Profile(program, tool, visits, array.array("d", [math.nan, 20.5, 35.125]), 4, 1.0)


def test_a_profile_reads_back_as_it_was_saved(tmp_path):
    store = ProfileStore(tmp_path / "profiles")
    store.save(profile(), 0.08)
    store.save(profile(tool=4), 0.09)
    loaded, lag, errors = store.load()
    assert errors == [] and set(loaded) == {(1001, 3), (1001, 4)}
    again = loaded[(1001, 3)]
    assert again.visits == profile().visits and again.parts == 4 and again.bin_mm == 1.0
    assert math.isnan(again.k[0]) and list(again.k)[1:] == [20.5, 35.125]
    assert lag in (0.08, 0.09)  # the last one learned
    assert [p.name for p in (tmp_path / "profiles").iterdir()] != []
    assert not list((tmp_path / "profiles").glob(".*.tmp"))  # no temporary file left


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{not json", "cannot read"),
        ('{"version": 2}', "version 2, this agent reads 1"),
        ('{"version": 1, "program": 1}', "not a profile: KeyError"),
    ],
)
def test_a_file_that_does_not_read_is_one_line_and_the_others_load(tmp_path, text, why):
    store = ProfileStore(tmp_path)
    store.save(profile(), 0.05)
    (tmp_path / "program-7-tool-1.json").write_text(text)
    loaded, _, errors = store.load()
    assert list(loaded) == [(1001, 3)]
    assert len(errors) == 1 and why in errors[0] and "program-7-tool-1.json" in errors[0]
    assert "\n" not in errors[0]


def test_forgetting_a_profile_removes_its_file_once(tmp_path):
    store = ProfileStore(tmp_path)
    store.save(profile(), 0.05)
    assert store.remove(1001, 3) and not store.remove(1001, 3)
    assert store.load()[0] == {}


def test_a_folder_that_cannot_be_written_is_one_line(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(ProfileError) as caught:
        ProfileStore(blocked / "profiles").save(profile(), 0.05)
    assert "cannot save" in str(caught.value) and "\n" not in str(caught.value)


def test_the_profiles_live_beside_the_teach_file():
    assert str(profile_dir("/var/lib/edge-agent/teach.json")) == "/var/lib/edge-agent/profiles"


# -- the last part ------------------------------------------------------------------------------

NS = 1_000_000_000


def part_record(program=1001, rejected=""):
    """A part along 0-3 mm: tool 1 cutting (its override unknown at first), then tool 2."""
    parts = PartRecorder()
    parts.start(0, program, "cutting")
    for i, (tool, load, override) in enumerate(
        [(1, 10.0, math.nan), (1, 64.25, 95.5), (1, 71.126, 88.0), (2, 30.0, 100.0)]
    ):
        parts.move(10 * (i + 1), (float(i), 0.0, 0.0))
        parts.reading(i * NS // 2, load, 70.0, override, 100.0, override, tool, load > 20.0)
    if rejected:
        parts.reject(rejected)
    return parts.finish(2 * NS)


def test_a_last_part_reads_back_with_its_tools_readings_only(tmp_path):
    store = ProfileStore(tmp_path)
    record = part_record()
    store.save_last_part(record, 1)
    last = store.last_part(1001, 1)
    assert set(last) == {name for name, _ in LAST_PART}
    assert list(last["t_s"]) == [0.0, 0.5, 1.0] and list(last["s_mm"]) == [0.0, 1.0, 2.0]
    assert list(last["load_pct"]) == [10.0, 64.25, 71.13]  # a hundredth of a percent
    assert math.isnan(last["override_pct"][0]) and list(last["override_pct"])[1:] == [95.5, 88.0]
    assert list(last["target_pct"]) == [70.0] * 3 and list(last["cutting"]) == [0.0, 1.0, 1.0]
    text = store.last_part_path(1001, 1).read_text()
    assert text.splitlines()[:2] == [
        "t_s,s_mm,load_pct,override_pct,target_pct,feed_pct,cutting",
        "0.000,0.000,10.00,,70.00,,0",
    ]
    assert store.last_part(1001, 2) is None and store.load() == ({}, None, [])
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "not a last part: its header is not t_s,s_mm,"),
        ("t_s,s_mm\n1,2\n", "not a last part: its header is not"),
        (",".join(n for n, _ in LAST_PART) + "\n", "not a last part: no readings"),
        (
            ",".join(n for n, _ in LAST_PART) + "\n1,2,3\n",
            "not a last part: line 2 has 3 cells, not 7",
        ),
        (
            ",".join(n for n, _ in LAST_PART) + "\n1,2,x,4,5,6,1\n",
            "not a last part: line 2: could not convert",
        ),
        (b"\xff\xfe", "cannot read"),
    ],
)
def test_a_last_part_that_does_not_read_is_one_line_naming_it(tmp_path, text, why):
    store = ProfileStore(tmp_path)
    path = store.last_part_path(7, 1)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ProfileError) as caught:
        store.last_part(7, 1)
    assert str(caught.value).startswith(f"{path}: ") and why in str(caught.value)
    assert "\n" not in str(caught.value)


def test_forgetting_a_profile_removes_its_last_part_too(tmp_path):
    store = ProfileStore(tmp_path)
    store.save(profile(), 0.05)
    store.save_last_part(part_record(), 3)
    assert store.remove(1001, 3)
    assert list(tmp_path.iterdir()) == []
    store.save_last_part(part_record(), 3)  # a part that taught nothing yet
    assert store.remove(1001, 3) and not store.remove(1001, 3)


def test_the_last_part_of_each_tool_is_kept_even_a_rejected_one(tmp_path):
    store = ProfileStore(tmp_path / "profiles")
    assert keep_last_part(store, part_record(rejected="hold: overload")) == []
    assert len(store.last_part(1001, 1)["t_s"]) == 3 and len(store.last_part(1001, 2)["t_s"]) == 1


def test_a_last_part_that_cannot_be_saved_is_one_line_each_and_counted_by_the_host(
    tmp_path, caplog
):
    blocked = tmp_path / "file"
    blocked.write_text("")
    failures = keep_last_part(ProfileStore(blocked / "profiles"), part_record())
    assert [counter for counter, _ in failures] == ["last_part_save_failed"] * 2
    control = ControlHost(ControlConfig(teach_file=str(blocked / "teach.json")), *[None] * 4)
    with caplog.at_level(logging.ERROR, logger="edge_agent.control.host"):
        control._count(failures)
    assert control.events == {"last_part_save_failed": 2}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("cannot save" in line and "\n" not in line for line in lines)
