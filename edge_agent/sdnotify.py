"""systemd's service notification protocol (sd_notify(3)): newline-separated `KEY=value`
lines in one datagram to the AF_UNIX socket named by `$NOTIFY_SOCKET` (a leading '@' names
the abstract namespace). Without that variable every call does nothing: the agent run by hand,
in the demo or in a test without a socket.

It is a dozen lines of protocol, so it lives here rather than in a dependency; the tests hold
it to a real datagram socket.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, env: Mapping[str, str] = os.environ):
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None
        self.watchdog_s = _watchdog_s(env)
        self.sent = 0
        self.failed = 0
        self._socket: socket.socket | None = None
        if self.address is not None:
            # Non-blocking: a listener that stops reading fills its queue, and a blocking
            # send would then stall the event loop this runs on.
            kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            self._socket = socket.socket(socket.AF_UNIX, kind)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, **fields: str | int) -> None:
        """One datagram of `KEY=value` lines (`send(READY=1, STATUS="...")`). A failure
        (systemd gone, its queue full) is counted and logged once: no reason to stop the
        machine's agent, nor to wait."""
        if self._socket is None:
            return
        text = "\n".join(f"{key}={_one_line(value)}" for key, value in fields.items())
        try:
            self._socket.sendto(text.encode(), self.address)
            self.sent += 1
        except OSError as exc:
            self.failed += 1
            if self.failed == 1:
                log.warning("systemd notify socket %r: %s", self.address, exc.strerror or exc)

    def ready(self, status: str) -> None:
        self.send(READY=1, STATUS=status)

    def reloading(self, monotonic_ns: int) -> None:
        """systemd 253 and later track the reload with these; older ones ignore them."""
        self.send(RELOADING=1, MONOTONIC_USEC=monotonic_ns // 1000)

    def status(self, text: str) -> None:
        self.send(STATUS=text)

    def watchdog(self) -> None:
        self.send(WATCHDOG=1)

    def extend_start(self, seconds: float, status: str) -> None:
        """Still starting, and alive: systemd waits `seconds` more before it gives up."""
        self.send(EXTEND_TIMEOUT_USEC=round(seconds * 1e6), STATUS=status)

    def stopping(self, status: str) -> None:
        self.send(STOPPING=1, STATUS=status)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _watchdog_s(env: Mapping[str, str]) -> float | None:
    """The watchdog period systemd expects pings within, when it is meant for this process
    (`WATCHDOG_PID` names another process when the variable was inherited)."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 1e6


def _one_line(value: str | int) -> str:
    return str(value).replace("\n", " ")
