"""Logging for a service nobody watches: one line per message on stderr, a syslog priority
prefix (`<3>`) that journald turns into the entry's priority when it runs us, and repeats of
one message limited per window so that a fault that lasts a week writes a few lines an hour,
not one per poll (the SD card's wear, docs/service.md).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping

#: syslog priorities (sd-daemon(3)) by logging level.
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class JournalFormatter(logging.Formatter):
    """`<priority>logger: message`; journald stamps the entry itself. A traceback is folded
    into the same entry's lines, each with the prefix, so that none loses its priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        text = super().format(record)
        return "\n".join(prefix + line for line in text.splitlines())


class RepeatLimit(logging.Filter):
    """Lets each distinct message (logger, level, format string) through `burst` times per
    `window_s`; the rest are counted and summed up in one line when the window turns."""

    def __init__(self, burst: int, window_s: float, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self.clock = clock
        self._windows: dict[tuple, list] = {}  # key: [window start, passed, suppressed]
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "repeat_summary", False):
            return True
        key = (record.name, record.levelno, record.msg)
        now = self.clock()
        window = self._windows.get(key)
        if window is None or now - window[0] >= self.window_s:
            if window is not None and window[2]:
                _summary(record, window[2], self.window_s)
            if len(self._windows) > 1000:  # messages with varying text do not pile up
                self._windows.clear()
            self._windows[key] = [now, 1, 0]
            return True
        if window[1] < self.burst:
            window[1] += 1
            return True
        window[2] += 1
        self.suppressed += 1
        return False


def _summary(record: logging.LogRecord, count: int, window_s: float) -> None:
    logging.getLogger(record.name).log(
        record.levelno,
        "(%d more like %r in the last %.0f s, not logged)",
        count,
        record.msg,
        window_s,
        extra={"repeat_summary": True},
    )


def setup(
    level: str, burst: int = 5, window_s: float = 60.0, env: Mapping[str, str] = os.environ
) -> RepeatLimit:
    """One stderr handler for the whole process; journald's form when `JOURNAL_STREAM` says
    stderr is the journal. Returns the repeat limit (its count is a metric)."""
    handler = logging.StreamHandler(sys.stderr)
    if env.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    limit = RepeatLimit(burst, window_s)
    handler.addFilter(limit)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # pymodbus logs every timeout at ERROR, asyncua a traceback for every lost connection; the
    # agent's sources count them and log once per change of state.
    for library in ("pymodbus", "asyncua"):
        logging.getLogger(library).setLevel(logging.CRITICAL)
    return limit
