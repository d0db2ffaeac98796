"""`python -m hil.linuxcnc`: LinuxCNC in the loop from the command line (docs/linuxcnc.md).

`run` starts the bench's headless simulated LinuxCNC, runs G-code programs on it to their end,
prints their cycle times and shuts it down; with --serve, the adapter serves it over Modbus
meanwhile, so that an agent can adapt its feed. `bench` (what `make hil-linuxcnc` runs:
bench.py) runs the programs at a fixed 100 % and with the agent and writes
reports/hil-linuxcnc/; `series` (series.py, also in `make hil-linuxcnc`) makes one program
several times in a row with one agent learning its profile; `measure` gives their cycle times at
fixed feeds and LinuxCNC's start and stop times. `adapter` serves a LinuxCNC that is already
running (a real machine) until Ctrl-C or SIGTERM. Neither listens anywhere but where told
(default 127.0.0.1:5020).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from hil import host_port
from hil.linuxcnc import PROGRAMS_DIR
from hil.linuxcnc.adapter import LinuxCNCAdapter, load_source
from hil.linuxcnc.override import FALLBACK_MAX_PCT
from hil.linuxcnc.runner import LinuxCNC, LinuxCNCError

log = logging.getLogger("hil.linuxcnc")


def _pct(text: str, high: float = 150.0) -> float:
    value = float(text)
    if not 0 <= value <= high:
        raise argparse.ArgumentTypeError(f"{text}: must be a percentage in 0 ... {high:g}")
    return value


def _fallback_pct(text: str) -> float:
    return _pct(text, FALLBACK_MAX_PCT)


def _adapter_options(parser: argparse.ArgumentParser, load_default: str) -> None:
    parser.add_argument(
        "--load",
        default=load_default,
        metavar="SOURCE",
        help=f"scenario:NAME|PATH (the cutting plant) or hal:PIN (default {load_default})",
    )
    parser.add_argument("--refresh-timeout-s", type=float, default=2.0, metavar="S")
    parser.add_argument("--fallback-pct", type=_fallback_pct, default=100.0, metavar="PCT")
    parser.add_argument("--program-number", type=int, default=1)
    parser.add_argument("--unit-id", type=int, default=1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hil.linuxcnc", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run programs on the bench's simulated LinuxCNC")
    run.add_argument("programs", nargs="+", metavar="PROGRAM.ngc")
    run.add_argument("--feed-override", type=_pct, metavar="PCT", help="the knob, 0 ... 150 %%")
    run.add_argument(
        "--adaptive-feed", type=_pct, metavar="PCT", help="motion.adaptive-feed, 0 ... 100 %%"
    )
    run.add_argument("--repeat", type=int, default=1, help="run the programs this many times")
    run.add_argument("--serve", type=host_port, metavar="HOST:PORT", help="serve the adapter")
    run.add_argument("--wait-s", type=float, default=0.0, help="--serve: wait before running")
    _adapter_options(run, "scenario:face_two_passes")
    measure = sub.add_parser(
        "measure", help="cycle times at 100 %%, 50 %% (adaptive-feed), 120 %% (feed override)"
    )
    measure.add_argument("programs", nargs="*", metavar="PROGRAM.ngc", help="default: all")
    bench = sub.add_parser(
        "bench", help="the programs fixed at 100 %% and with the agent: reports/hil-linuxcnc/"
    )
    bench.add_argument("programs", nargs="*", metavar="PROGRAM.ngc", help="default: bench.PROGRAMS")
    bench.add_argument("--out", type=Path, default=Path("reports/hil-linuxcnc"))
    series = sub.add_parser(
        "series", help="one program fixed at 100 %%, then parts in a row with the preview"
    )
    series.add_argument(
        "program", nargs="?", metavar="PROGRAM.ngc", help="default: series.SERIES_PROGRAM"
    )
    series.add_argument("--parts", type=int, default=5, help="parts with the agent (default 5)")
    series.add_argument("--out", type=Path, default=Path("reports/hil-linuxcnc"))
    adapter = sub.add_parser("adapter", help="serve a running LinuxCNC over Modbus TCP")
    adapter.add_argument("--listen", type=host_port, default=("127.0.0.1", 5020))
    _adapter_options(adapter, "hal:edge-adapter.spindle-load")
    return parser.parse_args(argv)


def _adapter(args: argparse.Namespace, env=None) -> LinuxCNCAdapter:
    return LinuxCNCAdapter(
        load_source(args.load),
        env=env,
        refresh_timeout_s=args.refresh_timeout_s,
        fallback_pct=args.fallback_pct,
        program_number=args.program_number,
        unit_id=args.unit_id,
    )


async def run(args: argparse.Namespace) -> int:
    if args.adaptive_feed is not None and args.serve:
        raise LinuxCNCError("--adaptive-feed and --serve: the adapter owns adaptive-feed")
    loop = asyncio.get_running_loop()
    cnc = LinuxCNC()
    await loop.run_in_executor(None, cnc.start)
    print(f"LinuxCNC ready in {cnc.ready_s:.2f} s", flush=True)
    adapter = None
    failed = False
    try:
        if args.serve:
            adapter = _adapter(args, cnc.env)
            port = await adapter.start(*args.serve)
            print(f"adapter serving Modbus TCP on {args.serve[0]}:{port}", flush=True)
            await asyncio.sleep(args.wait_s)
        if args.adaptive_feed is not None:
            cnc.halcmd("sets", "agent-adaptive-feed", f"{args.adaptive_feed / 100:g}")
        knob = None if args.feed_override is None else args.feed_override / 100
        for _ in range(args.repeat):
            for program in args.programs:
                done = await loop.run_in_executor(
                    None, lambda p=program: cnc.run(p, feed_override=knob)
                )
                failed |= not done.ok
                said = f" ({'; '.join(done.messages)})" if done.messages else ""
                print(f"{program}: cycle {done.cycle_s:.2f} s{'' if done.ok else ' FAILED'}{said}")
    finally:
        if adapter is not None:
            await adapter.stop()
        stop_s = await loop.run_in_executor(None, cnc.stop)
        print(f"LinuxCNC stopped in {stop_s:.2f} s", flush=True)
    return 1 if failed else 0


#: What `measure` runs each program at: (label, feed override, adaptive-feed).
SETTINGS = (
    ("100 %", 1.0, 1.0),
    ("50 % (adaptive-feed)", 1.0, 0.5),
    ("120 % (feed override)", 1.2, 1.0),
)


def measure(args: argparse.Namespace) -> int:
    """A table of cycle times, one LinuxCNC for all, and what its start and stop took."""
    programs = args.programs or sorted(str(p) for p in PROGRAMS_DIR.glob("*.ngc"))
    cnc = LinuxCNC()
    cnc.start()
    rows, failed = [], False
    try:
        for program in programs:
            for label, knob, adaptive in SETTINGS:
                cnc.halcmd("sets", "agent-adaptive-feed", f"{adaptive:g}")
                done = cnc.run(program, feed_override=knob)
                failed |= not done.ok
                rows.append((Path(program).name, label, f"{done.cycle_s:.2f}", done.ok))
    finally:
        cnc.stop()
    print("| program | feed | cycle s | ok |\n|---|---|---:|---|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    print(f"\nLinuxCNC ready in {cnc.ready_s:.2f} s, stopped in {cnc.stop_s:.2f} s")
    return 1 if failed else 0


async def serve(args: argparse.Namespace) -> int:
    adapter = _adapter(args)
    port = await adapter.start(*args.listen)
    log.info("LinuxCNC adapter serving Modbus TCP on %s:%d", args.listen[0], port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    ended = asyncio.create_task(adapter.ended.wait())
    try:
        await asyncio.wait([asyncio.create_task(stop.wait()), ended], return_when="FIRST_COMPLETED")
    finally:
        await adapter.stop()
    if ended.done() and not stop.is_set():
        log.error("the machine side ended: is LinuxCNC running?")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    args = parse_args(argv)
    try:
        if args.command == "measure":
            return measure(args)
        if args.command == "bench":
            from hil.linuxcnc.bench import main as bench_main

            return bench_main(args.programs, args.out)
        if args.command == "series":
            from hil.linuxcnc.series import main as series_main

            return series_main(args.program, args.parts, args.out)
        return asyncio.run(run(args) if args.command == "run" else serve(args))
    except (LinuxCNCError, RuntimeError, ValueError, OSError) as exc:
        print(f"python -m hil.linuxcnc: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
