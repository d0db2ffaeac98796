"""Learning a finished part in a child process (edge_agent/control/learning.py): the same
profiles as learning it in the agent's own process, and a child that fails is counted, never
the end of learning."""

import array
import asyncio
import copy
import dataclasses
import logging
from types import SimpleNamespace

import pytest

from edge_agent.config import ControlConfig
from edge_agent.control.host import ControlHost
from edge_agent.control.learning import learn_in_child, learn_part
from edge_agent.control.profile_store import ProfileStore
from hil.scenario import load_scenario, scenario_path
from tests.test_preview import run, series

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def finished():
    """Two parts of depth_steps: the book after the first, and the second part to learn."""
    _, loop, book = run(series(load_scenario(scenario_path("depth_steps")), parts=2), True)
    controller = loop.controller
    return controller.last_part, controller.idle_pct, book


def test_a_part_learned_in_a_child_gives_the_profiles_learned_in_process(finished, tmp_path):
    part, idle, book = finished
    here = learn_part(copy.deepcopy(book), part, idle, ProfileStore(tmp_path / "here"))
    child = learn_in_child(copy.deepcopy(book), part, idle, ProfileStore(tmp_path / "child"))
    assert [kind for kind, _ in child.events] == ["profile_learned"]
    assert child.events == here.events and child.failures == here.failures == []
    assert child.book.profiles.keys() == here.book.profiles.keys()
    for key, profile in child.book.profiles.items():
        same = array.array("d", here.book.profiles[key].k).tobytes()
        assert array.array("d", profile.k).tobytes() == same  # bit for bit, NaN (air) too
    assert child.book.timing == here.book.timing
    saved = sorted(p.name for p in (tmp_path / "child").iterdir())
    assert saved == sorted(p.name for p in (tmp_path / "here").iterdir()) and len(saved) == 2


def test_a_child_that_fails_is_one_line_and_counted_and_the_book_is_kept(
    finished, tmp_path, caplog
):
    part, idle, book = finished
    stored = []

    async def store_event(kind, detail):
        stored.append(kind)

    cfg = ControlConfig(teach_file=str(tmp_path / "teach.json"))
    host = ControlHost(cfg, None, None, None, store_event)
    host.book = book
    told = []
    controller = SimpleNamespace(set_profiles=lambda *args: told.append(args))
    broken = dataclasses.replace(part, readings={"t_s": None})  # the child's learn raises
    with caplog.at_level(logging.ERROR, logger="edge_agent.control.host"):
        asyncio.run(host._learn(controller, broken, idle))
    assert host.events == {"profile_learn_failed": 1} and host.book is book and not told
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "learning program 1001's part failed" in lines[0]
    assert "KeyError" in lines[0]  # the child's own last line of error
    assert "\n" not in lines[0]
    asyncio.run(host._learn(controller, part, idle))  # the next part is learned as ever
    assert host.events["profile_learned"] == 1 and len(told) == 1 and host.book is not book
    assert stored == ["profile_learned"]
