"""The learned profiles on disk (control/profile_store.py): written atomically, read back the
same, and a file that cannot be read is one line that leaves the others loading."""

import array
import math

import pytest

from edge_agent.control.path import Visit
from edge_agent.control.profile import Profile
from edge_agent.control.profile_store import ProfileError, ProfileStore, profile_dir

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
