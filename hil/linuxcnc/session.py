"""The bench's headless LinuxCNC display: LinuxCNC starts it as its [DISPLAY] program
(config/bin/edge-session), under Debian's python3 (the `linuxcnc` module lives only there).

It readies the machine (e-stop reset, power on, home), says so to the runner over the Unix
socket named by EDGE_LINUXCNC_SESSION, runs each program the runner sends to its end and reports
its cycle time, and returns when told to quit or when the runner goes away; LinuxCNC then shuts
down, as it does when a GUI closes. It never moves the machine except by running the programs it
is sent, and never touches adaptive-feed (that is the adapter's). Standard library and
`linuxcnc` only.

The runner's protocol, one JSON object a line each way:
    session -> runner  {"event": "ready", "ready_s": S} | {"event": "failed", "message": M}
    runner -> session  {"cmd": "run", "program": PATH, "feed_override": F|null, "timeout_s": S}
    session -> runner  {"event": "done", "cycle_s": S, "ok": B, "messages": [...]}
    runner -> session  {"cmd": "abort"}   (while a program runs: abort it, as the stop button)
    runner -> session  {"cmd": "quit"}
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import time

import linuxcnc

SOCKET_ENV = "EDGE_LINUXCNC_SESSION"
#: Status polls while waiting: 1 ms, the servo period, so a cycle time is good to about 1 ms.
POLL_S = 0.001
READY_TIMEOUT_S = 10.0  # e-stop reset, power on and switchless homing take well under 1 s
START_TIMEOUT_S = 5.0  # cycle start to the interpreter running: a few task cycles


class SessionError(RuntimeError):
    pass


class Session:
    def __init__(self) -> None:
        self.stat = linuxcnc.stat()
        self.command = linuxcnc.command()
        self.errors = linuxcnc.error_channel()

    def ready(self) -> None:
        """E-stop reset, machine on, every joint homed (switchless: at once), auto mode."""
        c, s = self.command, self.stat
        for state in (linuxcnc.STATE_ESTOP_RESET, linuxcnc.STATE_ON):
            c.state(state)
            c.wait_complete()
        c.mode(linuxcnc.MODE_MANUAL)
        c.wait_complete()
        c.teleop_enable(False)
        c.wait_complete()
        c.home(-1)
        c.wait_complete()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            s.poll()
            if s.task_state == linuxcnc.STATE_ON and all(s.homed[: s.joints]):
                break
            if time.monotonic() > deadline:
                raise SessionError(
                    f"not ready after {READY_TIMEOUT_S:g} s: task state {s.task_state}, "
                    f"homed {s.homed[: s.joints]}, {self.drain_messages() or 'no messages'}"
                )
            time.sleep(POLL_S * 10)
        c.mode(linuxcnc.MODE_AUTO)
        c.wait_complete()

    def run(
        self, program: str, feed_override: float | None, timeout_s: float, abort_asked=None
    ) -> dict:
        """Open and run `program` to its end: the time from cycle start to the interpreter
        idle again. Aborts it after `timeout_s`, or when `abort_asked()` says so."""
        c, s = self.command, self.stat
        self.drain_messages()
        c.mode(linuxcnc.MODE_AUTO)
        c.wait_complete()
        c.program_open(program)
        c.wait_complete()
        if feed_override is not None:
            c.feedrate(feed_override)
            c.wait_complete()
        started = time.monotonic()
        c.auto(linuxcnc.AUTO_RUN, 0)
        left_idle = False
        messages: list[str] = []
        ok = True
        while True:
            s.poll()
            now = time.monotonic()
            for kind, text in self.messages():
                messages.append(text)
                ok &= kind not in (linuxcnc.NML_ERROR, linuxcnc.OPERATOR_ERROR)
            if s.interp_state != linuxcnc.INTERP_IDLE:
                left_idle = True
            elif (left_idle and s.queue == 0) or (now - started > 1.0 and not ok):
                break
            elif not left_idle and now - started > START_TIMEOUT_S:
                messages.append(f"did not start within {START_TIMEOUT_S:g} s")
                ok = False
                break
            asked = abort_asked is not None and abort_asked()
            if now - started > timeout_s or asked:
                c.abort()
                c.wait_complete()
                said = "by the runner" if asked else f"after {timeout_s:g} s"
                messages.append(f"aborted {said} at {now - started:.2f} s")
                ok = False
                break
            time.sleep(POLL_S)
        return {"event": "done", "cycle_s": now - started, "ok": ok, "messages": messages}

    def messages(self) -> list[tuple[int, str]]:
        out = []
        while (message := self.errors.poll()) is not None:
            out.append(message)
        return out

    def drain_messages(self) -> str:
        return "; ".join(text for _, text in self.messages())


def main(argv: list[str]) -> int:
    path = os.environ.get(SOCKET_ENV)
    if not path:
        print(f"edge-session: {SOCKET_ENV} is not set (started by hil/linuxcnc/runner.py)")
        return 2
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    inbox, outbox = conn.makefile("r", encoding="utf-8"), conn.makefile("w", encoding="utf-8")

    def send(message: dict) -> None:
        outbox.write(json.dumps(message) + "\n")
        outbox.flush()

    started = time.monotonic()
    session = Session()
    try:
        session.ready()
    except (SessionError, linuxcnc.error) as exc:
        send({"event": "failed", "message": str(exc)})
        return 1
    send({"event": "ready", "ready_s": time.monotonic() - started})

    def abort_asked() -> bool:
        """An abort from the runner while a program runs (nothing else is sent meanwhile)."""
        if not select.select([conn], [], [], 0)[0]:
            return False
        line = inbox.readline()
        return not line or json.loads(line).get("cmd") in ("abort", "quit")

    for line in inbox:  # until quit, or EOF: the runner went away
        request = json.loads(line)
        if request.get("cmd") == "quit":
            break
        if request.get("cmd") == "run":
            send(
                session.run(
                    request["program"],
                    request.get("feed_override"),
                    request.get("timeout_s", 600),
                    abort_asked,
                )
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
