"""`edge-agent probe CONFIG [--watch [SECONDS]]`: every configured source read once from the
real machine, for commissioning, so that a wrong register map, node id or byte order shows
before the agent runs on it.

One module a kind of source, as `sources/` is split: `modbus.py` (each tag's value, raw
registers and its value under the other byte and word orders), `opcua.py` (each node's value,
type, status and source time), `bridge.py` (the board's identity and a value per channel);
each reads through the agent's own code (link, client, source) and makes a `Report`
(`report.py`, pure) of one row per channel, the control roles marked.

Never writes to the machine: no writer is taken, no Modbus write or OPC UA Write is sent.
Never runs the agent: no spool, no telemetry, no control loop. Exit status: 0 when every
channel read good, 1 when one did not or a source could not be reached.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import time
from collections import deque
from dataclasses import fields
from datetime import datetime

from ..config import AgentConfig
from ..sources.registry import KINDS
from .report import Report, render

#: Clears a terminal and homes the cursor (ECMA-48 ED 2, CUP): `--watch` redraws in place.
CLEAR = "\x1b[H\x1b[2J"
#: `--watch`'s shortest period: each round reads every tag of every source once; faster than
#: ten a second is polling, which is the agent's work.
MIN_WATCH_S = 0.1


def control_roles(control) -> dict[str, str]:
    """Channel name -> what control does with it: the inputs by their key in `[control]`
    (`signal`, `spindle_on_tag` as "spindle_on", ...), the override "override, writable",
    another whitelisted one "writable". Shown whether control is enabled or not: the map is
    commissioned before control is switched on."""
    roles: dict[str, list[str]] = {}
    for f in fields(control):
        if f.name == "signal" or f.name.endswith("_tag"):
            name = getattr(control, f.name)
            if name:
                roles.setdefault(name, []).append(f.name.removesuffix("_tag"))
    for name in control.writable:
        roles.setdefault(name, []).append("writable")
    return {name: ", ".join(labels) for name, labels in roles.items()}


def _probe_for(kind: str, config: AgentConfig, roles: dict[str, str], logs: _LastWords):
    if kind == "controller":
        from .modbus import ModbusProbe

        return ModbusProbe(config, roles, lambda: logs.os_error("pymodbus"))
    if kind == "opcua":
        from .opcua import OpcUaProbe

        return OpcUaProbe(config.opcua, roles)
    if kind == "bridge":
        from .bridge import BridgeProbe

        return BridgeProbe(config.bridge, roles, lambda: logs.reason("edge_agent.sources.bridge"))
    return _NotProbed(kind)


class _NotProbed:
    """A kind of source the probe cannot read yet: said on its line, counted as a failure."""

    def __init__(self, kind: str):
        self.kind = kind

    async def round(self) -> Report:
        return Report(self.kind, error=f"{self.kind}: edge-agent probe cannot read this source")

    async def close(self) -> None:
        pass


async def probe(config: AgentConfig, out=sys.stdout, watch_s: float | None = None) -> int:
    """Read every configured source once (or every `watch_s` until cancelled) and print the
    tables to `out`; the exit status of the (last) round."""
    roles = control_roles(config.control)
    channels = {c.name for c in config.tags}
    channels |= {n.name for n in config.opcua.nodes} if config.opcua else set()
    channels |= {name for name, *_ in config.bridge.streams()} if config.bridge else set()
    marked = sorted(set(roles) & channels)
    with _LastWords() as logs:
        probes = [_probe_for(k.name, config, roles, logs) for k in KINDS if k.configured(config)]
        try:
            while True:
                started = time.monotonic()
                reports = [await p.round() for p in probes]
                lines: list[str] = []
                if watch_s is not None:
                    now = datetime.now().strftime("%H:%M:%S")
                    lines.append(f"{config.source} at {now}: every {watch_s:g} s until Ctrl-C")
                for i, report in enumerate(reports):
                    lines += [""] * (i > 0) + render(report)  # a blank line between sources
                if marked and any(not r.error for r in reports):
                    lines.append(
                        f"control ({'enabled' if config.control.enabled else 'disabled'}): the "
                        "rows marked are what it reads and writes; probe never writes"
                    )
                text = "\n".join(lines) + "\n"
                if watch_s is not None:
                    text = (CLEAR if out.isatty() else "\n") + text
                out.write(text)
                out.flush()
                status = 0 if all(r.ok for r in reports) else 1
                if watch_s is None:
                    return status
                await asyncio.sleep(max(0.0, watch_s - (time.monotonic() - started)))
        finally:
            for p in probes:
                await p.close()


class _LastWords(logging.Handler):
    """While probing, the agent's and its libraries' log lines are kept, not printed: the probe
    says in its own lines what went wrong. The last warning of each logger is remembered, for
    the line saying why a source could not be reached (pymodbus only logs why a connect
    failed). A traceback of the agent's own (a bug) is still printed."""

    LOGGERS = ("edge_agent", "pymodbus", "asyncua")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._last: deque[tuple[str, str]] = deque(maxlen=50)  # (logger, first line)
        self._saved: list[tuple[logging.Logger, int, bool]] = []

    def __enter__(self) -> _LastWords:
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            self._saved.append((logger, logger.level, logger.propagate))
            logger.setLevel(logging.WARNING)
            logger.propagate = False
            logger.addHandler(self)
        return self

    def __exit__(self, *exc_info) -> None:
        for logger, level, propagate in self._saved:
            logger.removeHandler(self)
            logger.setLevel(level)
            logger.propagate = propagate
        self._saved.clear()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a library's malformed log call must not end the probe
            return
        self._last.append((record.name, message.splitlines()[0] if message else ""))
        if record.exc_info and record.name.startswith("edge_agent"):  # a bug: its traceback
            print(f"edge-agent: {self.format(record)}", file=sys.stderr)

    def said(self, prefix: str) -> list[str]:
        """The last warnings of the loggers under `prefix`, oldest first."""
        return [m for name, m in self._last if name == prefix or name.startswith(prefix + ".")]

    def reason(self, prefix: str) -> str:
        """The newest warning of the loggers under `prefix`."""
        said = self.said(prefix)
        return said[-1] if said else ""

    def os_error(self, prefix: str) -> str:
        """The newest OS error among the warnings, as its text: "Connection refused" for
        pymodbus' "Failed to connect [Errno 111] Connect call failed ..." (which it then
        repeats as "Repeating...."); else the newest warning."""
        for message in reversed(self.said(prefix)):
            errno = re.search(r"\[Errno (\d+)\]", message)
            if errno:
                return os.strerror(int(errno[1]))
        return self.reason(prefix)
