"""The service's logging: journald priorities, and repeats limited on a simulated clock."""

from __future__ import annotations

import logging

from edge_agent.logs import JournalFormatter, RepeatLimit


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _record(msg: str, level: int = logging.WARNING, name: str = "edge_agent.x", args=()):
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_journal_lines_carry_the_syslog_priority_on_every_line():
    formatter = JournalFormatter("%(name)s: %(message)s")
    assert formatter.format(_record("link lost", logging.ERROR)) == "<3>edge_agent.x: link lost"
    assert formatter.format(_record("a\nb", logging.INFO)) == "<6>edge_agent.x: a\n<6>b"
    assert formatter.format(_record("w", logging.WARNING)).startswith("<4>")


def test_a_repeating_message_passes_burst_times_per_window_then_is_counted(caplog):
    clock = Clock()
    limit = RepeatLimit(burst=3, window_s=60, clock=clock)
    passed = [limit.filter(_record("timeout on %s", args=(i,))) for i in range(10)]
    assert passed == [True] * 3 + [False] * 7  # the arguments differ, the message does not
    assert limit.filter(_record("another message"))  # its own window
    assert limit.suppressed == 7
    clock.t = 59.9
    assert not limit.filter(_record("timeout on %s", args=(11,)))
    clock.t = 60.0
    with caplog.at_level(logging.WARNING):
        assert limit.filter(_record("timeout on %s", args=(12,)))  # a new window
    summaries = [r.getMessage() for r in caplog.records if "more like" in r.getMessage()]
    assert summaries == ["(8 more like 'timeout on %s' in the last 60 s, not logged)"]


def test_levels_and_loggers_are_limited_apart():
    limit = RepeatLimit(burst=1, window_s=60, clock=Clock())
    assert limit.filter(_record("m", logging.WARNING))
    assert limit.filter(_record("m", logging.ERROR))
    assert limit.filter(_record("m", name="edge_agent.y"))
    assert not limit.filter(_record("m", logging.WARNING))
