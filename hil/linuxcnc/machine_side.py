"""The adapter's machine side: a userspace HAL component and the `linuxcnc` status channel, run
under Debian's python3 next to LinuxCNC by `adapter.py` (which serves Modbus).

Every `period_s` it polls LinuxCNC's status and writes one JSON line of it to stdout; each line
it reads on stdin is one agent write of the override ({"override": PCT}) and goes to the feed
rule (override.py), whose commands it applies: the component's pin `adaptive-feed`, linked to
the signal that drives motion.adaptive-feed, and the feed override through `linuxcnc.command()`.
It never raises the feed on its own: when the agent stops writing, the rule falls back; when
stdin closes (the adapter went away) or on SIGTERM, it releases (override <= the fallback,
at most 100 %, the operator's knob given back) and exits, and the signal keeps that value.

Pins of the component (`edge-adapter` by default), for halscope and for a real machine's HAL:
    adaptive-feed    float out  the agent's reductions, 0 ... 1 (linked to --signal)
    override-pct     float out  the agent's override in effect, % (after any fallback)
    knob-pct         float out  the operator's feed override, %
    link-ok          bit   out  the agent wrote within --refresh-timeout-s
    spindle-load     float in   a load to serve instead of --load-pin (net it in HAL)

Each status line also carries `feed_stop_servo_s`: the servo clock read right after the pin
last went from above 0 to 0 (the agent's feed hold written; motion reads it in the next servo
cycle), and `vel_servo_mm_min`: motion.current-vel read in the servo cycle of the positions.

Standard library, `hal` and `linuxcnc` only, plus override.py.
"""

from __future__ import annotations

import argparse
import json
import queue
import signal
import sys
import threading
import time

import hal
import linuxcnc

from hil.linuxcnc.override import FeedRule

DEFAULT_SIGNAL = "agent-adaptive-feed"
#: 100 Hz: the plant's own step and twice the agent's 50 Hz poll of the load.
DEFAULT_PERIOD_S = 0.01
DEFAULT_CLOCK = "edge-servo-clock.out"
AXES = "xyz"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="machine_side", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="edge-adapter", help="HAL component name")
    parser.add_argument("--signal", default=DEFAULT_SIGNAL, help="net to motion.adaptive-feed")
    parser.add_argument("--period-s", type=float, default=DEFAULT_PERIOD_S)
    parser.add_argument("--refresh-timeout-s", type=float, default=2.0)
    parser.add_argument("--fallback-pct", type=float, default=100.0)
    parser.add_argument("--load-pin", help="a HAL pin, signal or parameter holding the load, %")
    parser.add_argument("--max-feed-override", type=float, help="default: the INI's")
    parser.add_argument(
        "--servo-clock",
        default=DEFAULT_CLOCK,
        help="a HAL pin counting servo time in s (config/edge_agent.hal); '' or absent: none",
    )
    return parser.parse_args(argv)


def link_adaptive_feed(pin: str, signal_name: str) -> None:
    """Link our pin to the signal driving motion.adaptive-feed; made here if the HAL files
    did not (then it starts at 1.0: nothing drove motion.adaptive-feed before)."""
    signals = {s["NAME"] for s in hal.get_info_signals()}
    if signal_name not in signals:
        hal.new_sig(signal_name, hal.HAL_FLOAT)
        hal.connect("motion.adaptive-feed", signal_name)
    hal.connect(pin, signal_name)


def max_feed_override(stat) -> float:
    """[DISPLAY]MAX_FEED_OVERRIDE of the running configuration (1.0 when it has none)."""
    value = linuxcnc.ini(stat.ini_filename).find("DISPLAY", "MAX_FEED_OVERRIDE")
    return float(value) if value else 1.0


def sample_positions(clock_pin: str | None, stat) -> tuple[float | None, list[float], float]:
    """(servo time s, machine positions x y z, path speed mm/min): from HAL, clock, positions
    and motion.current-vel of one servo cycle (read again if a cycle passed while reading),
    when there is a clock; else (None, the status channel's, which lag it by up to a task
    cycle or two)."""
    if not clock_pin:
        return None, list(stat.actual_position[:3]), stat.current_vel * 60.0
    for _ in range(5):
        before = hal.get_value(clock_pin)
        position = [hal.get_value(f"axis.{axis}.pos-cmd") for axis in AXES]
        speed = hal.get_value("motion.current-vel") * 60.0
        if hal.get_value(clock_pin) == before:
            break
    return before, position, speed


def status(stat, command, servo_s, machine_position, load, speed, feed_stop_s) -> dict:
    """One status line: what the register map needs, positions in the program's coordinates
    (G5x, G92 and tool length offsets taken off; an XY rotation is not)."""
    position = [
        machine_position[i] - stat.g5x_offset[i] - stat.g92_offset[i] - stat.tool_offset[i]
        for i in range(3)
    ]
    spindle = stat.spindle[0]
    running = stat.task_mode == linuxcnc.MODE_AUTO and stat.interp_state != linuxcnc.INTERP_IDLE
    return {
        "t": time.monotonic(),
        "servo_s": servo_s,
        "pos": position,
        "vel_mm_min": stat.current_vel * 60.0,
        "programmed_mm_min": stat.settings[1],
        "running": running,
        "paused": bool(stat.paused),
        "estop": bool(stat.estop),
        "on": stat.task_state == linuxcnc.STATE_ON,
        "servo_fault": any(stat.joint[i]["fault"] for i in range(stat.joints)),
        "tool": stat.tool_in_spindle,
        "line": stat.motion_line,
        "spindle_rpm": abs(spindle["speed"]) if spindle["enabled"] else 0.0,
        "spindle_on": bool(spindle["enabled"]),
        "feed_override": stat.feedrate,
        "adaptive_feed": command.adaptive_feed,
        "override_pct": command.override_pct,
        "knob_pct": command.knob_pct,
        "link_ok": command.link_ok,
        "raise_held": command.raise_held,
        "load_pct": load,
        "vel_servo_mm_min": speed,
        "feed_stop_servo_s": feed_stop_s,
    }


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    stat, nml = linuxcnc.stat(), linuxcnc.command()
    stat.poll()
    rule = FeedRule(
        max_feed_override=args.max_feed_override or max_feed_override(stat),
        refresh_timeout_s=args.refresh_timeout_s,
        fallback_pct=args.fallback_pct,
    )
    comp = hal.component(args.name)
    comp.newpin("adaptive-feed", hal.HAL_FLOAT, hal.HAL_OUT)
    comp.newpin("override-pct", hal.HAL_FLOAT, hal.HAL_OUT)
    comp.newpin("knob-pct", hal.HAL_FLOAT, hal.HAL_OUT)
    comp.newpin("link-ok", hal.HAL_BIT, hal.HAL_OUT)
    comp.newpin("spindle-load", hal.HAL_FLOAT, hal.HAL_IN)
    now = time.monotonic()
    rule.observe(stat.feedrate, now)
    first = rule.command(now)
    comp["adaptive-feed"] = first.adaptive_feed  # before the link: the signal never jumps up
    comp.ready()
    link_adaptive_feed(f"{args.name}.adaptive-feed", args.signal)

    clock = args.servo_clock
    if clock and clock not in {p["NAME"] for p in hal.get_info_pins()}:
        clock = None  # positions from the status channel instead

    writes: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()

    def read_writes() -> None:
        for line in sys.stdin:
            try:
                writes.put((time.monotonic(), json.loads(line)))
            except ValueError:
                print(f"machine_side: not JSON, ignored: {line[:80]!r}", file=sys.stderr)
        stop.set()  # stdin closed: the adapter went away

    threading.Thread(target=read_writes, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    feed_stop_s = None  # the servo clock when the pin last went to 0

    def apply(command) -> None:
        nonlocal feed_stop_s
        stopping = command.adaptive_feed == 0.0 and comp["adaptive-feed"] > 0.0
        comp["adaptive-feed"] = command.adaptive_feed
        if stopping and clock:
            feed_stop_s = hal.get_value(clock)
        comp["override-pct"] = command.override_pct
        comp["knob-pct"] = command.knob_pct
        comp["link-ok"] = command.link_ok
        if command.feed_override is not None:
            nml.feedrate(command.feed_override)

    deadline = time.monotonic()
    try:
        while not stop.is_set():
            while not writes.empty():
                at, message = writes.get()
                if "override" in message:
                    rule.agent_write(float(message["override"]), at)
            stat.poll()
            servo_s, machine_position, speed = sample_positions(clock, stat)
            now = time.monotonic()
            rule.observe(stat.feedrate, now)
            command = rule.command(now)
            apply(command)
            load = hal.get_value(args.load_pin) if args.load_pin else comp["spindle-load"]
            line = status(stat, command, servo_s, machine_position, float(load), speed, feed_stop_s)
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
            deadline = max(deadline + args.period_s, time.monotonic() - args.period_s)
            time.sleep(max(0.0, deadline - time.monotonic()))
    except (BrokenPipeError, KeyboardInterrupt):  # the adapter gone; halcmd unload
        pass
    finally:
        apply(rule.release(time.monotonic()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
