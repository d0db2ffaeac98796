"""`python -m hil`: the bench from the command line.

`demo` runs the agent against the simulated controller for a bounded time and prints a summary
(what `make demo` runs). `serve` runs the simulated controller in real time until Ctrl-C or
SIGTERM: the cutting plant on the demo part or a scenario, or a recording with --replay. It
never serves on anything but the address it was given (default 127.0.0.1:5020, not the
privileged 502). `bench` runs scenarios against their oracle and writes the report (what
`make hil` runs). `family` runs the randomized scenario family and judges it against the
criteria (what `make hil-family` runs). `series` runs the randomized series family (repeat
parts, the learned preview against feedback alone) and judges it (what `make hil-series` runs).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from edge_agent import logs
from hil import host_port
from hil.bench import Progress, run_adaptive_simulated, run_all_realtime, run_simulated
from hil.controller import SimulatedController
from hil.demo import run_demo
from hil.plant import CuttingPlant, demo_plant
from hil.replay import ReplayMapError, ReplayPlant, recording_path
from hil.report import table, write_report
from hil.scenario import ScenarioError, load_scenario, scenario_path, shipped_scenarios

log = logging.getLogger("hil")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hil", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the simulated controller")
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--tcp", type=host_port, metavar="HOST:PORT", help="default 127.0.0.1:5020")
    where.add_argument("--rtu", metavar="DEVICE", help="serial device, e.g. /dev/ttyUSB0")
    serve.add_argument("--baudrate", type=int, default=19200, help="RTU only (default 19200)")
    serve.add_argument("--parity", choices="NEO", default="N", help="RTU only (default N)")
    serve.add_argument("--replay", metavar="NAME|PATH", help="experiment_01 ... or a CSV path")
    serve.add_argument("--loop", action="store_true", help="replay: start again at the end")
    serve.add_argument("--unit-id", type=int, default=1, help="Modbus unit id (default 1)")
    serve.add_argument("--scenario", metavar="NAME|PATH", help="a scenario, looping")
    bench = sub.add_parser("bench", help="run scenarios against their oracle, write the report")
    bench.add_argument("scenarios", nargs="*", metavar="NAME|PATH", help="default: all shipped")
    bench.add_argument("--sim", action="store_true", help="simulated time, no Modbus (fast)")
    bench.add_argument(
        "--opcua",
        action="store_true",
        help="the agent over OPC UA too (every scenario, beside its Modbus run)",
    )
    bench.add_argument("--out", default="reports/hil", help="report folder (default reports/hil)")
    family = sub.add_parser("family", help="the randomized scenario family, judged")
    family.add_argument("--cases", type=int, default=1000, help="how many (default 1000)")
    family.add_argument("--seed", type=int, default=1, help="the family's seed (default 1)")
    family.add_argument("--out", default="reports/hil-family", help="report folder")
    family.add_argument("--jobs", type=int, default=0, help="worker processes (default: cores)")
    family.add_argument("--case", metavar="SEED.INDEX", help="re-run one case, write its trace")
    series = sub.add_parser("series", help="the randomized series family (preview), judged")
    series.add_argument("--series", type=int, default=300, help="how many (default 300)")
    series.add_argument("--seed", type=int, default=2, help="the family's seed (default 2)")
    series.add_argument("--out", default="reports/hil-series", help="report folder")
    series.add_argument("--jobs", type=int, default=0, help="worker processes (default: cores)")
    demo = sub.add_parser("demo", help="the agent against the simulated machine, then a summary")
    demo.add_argument("--duration", type=float, default=30.0, help="seconds (default 30)")
    demo.add_argument(
        "--replay",
        metavar="NAME|CSV",
        help="replay a recording (e.g. experiment_01) instead of the cutting plant",
    )
    over = demo.add_mutually_exclusive_group()
    over.add_argument(
        "--rtu", action="store_true", help="Modbus RTU over a pseudo-terminal pair, not TCP"
    )
    over.add_argument(
        "--opcua", action="store_true", help="OPC UA (the bench's server), not Modbus"
    )
    demo.add_argument(
        "--spool", default="demo-spool.db", help="the spool file (default: demo-spool.db here)"
    )
    demo.add_argument(
        "--telemetry-file",
        help="where the telemetry goes (default: demo-telemetry.msgpack beside the spool)",
    )
    bridge = sub.add_parser(
        "bridge", help="the real bridge firmware under MicroPython, fed by the cutting plant"
    )
    bridge.add_argument("--seconds", type=float, default=60.0, help="how long (default 60)")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    if args.replay:
        plant = ReplayPlant(recording_path(args.replay), loop=args.loop)
        what = f"replay of {plant.path.name}" + (" (looping)" if args.loop else "")
    elif args.scenario:
        scenario = load_scenario(scenario_path(args.scenario))
        plant, what = CuttingPlant(scenario, loop=True), f"scenario {scenario.name!r}, looping"
    else:
        plant, what = demo_plant(), "cutting plant on the demo part"
    controller = SimulatedController(plant, unit_id=args.unit_id)
    if args.rtu:
        await controller.start_rtu(args.rtu, baudrate=args.baudrate, parity=args.parity)
        address = f"Modbus RTU on {args.rtu} at {args.baudrate} baud"
    else:
        host, port = args.tcp or ("127.0.0.1", 5020)
        port = await controller.start_tcp(host, port)
        address = f"Modbus TCP on {host}:{port}"
    log.info("simulated controller (%s) serving %s, unit id %d", what, address, args.unit_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await controller.stop()
        log.info("stopped after %d requests", controller.requests_served)


def bench(args: argparse.Namespace) -> None:
    logging.getLogger("edge_agent").setLevel(logging.WARNING)  # the table says what happened
    paths = [scenario_path(name) for name in args.scenarios] or shipped_scenarios()
    scenarios = [load_scenario(path) for path in paths]
    out = Path(args.out)
    if args.sim:
        runs = [run_simulated(scenario) for scenario in scenarios]
        runs += [run_adaptive_simulated(scenario)[0] for scenario in scenarios]
    else:
        runs = asyncio.run(run_all_realtime(scenarios, out / "agent", Progress(), opcua=args.opcua))
    print(table(runs))
    print(f"report: {write_report(runs, out)}")


def family(args: argparse.Namespace) -> int:
    """The family's report; 1 when a criterion fails (each failed one printed)."""
    from hil.family import criteria, default_jobs, run_family
    from hil.family_report import write_report, write_trace

    logging.getLogger("edge_agent").setLevel(logging.ERROR)  # the report says what happened
    out = Path(args.out)
    if args.case:
        print(f"trace: {write_trace(args.case, out)}")
        return 0
    ids = [f"{args.seed}.{index}" for index in range(args.cases)]
    started = time.monotonic()
    records = run_family(ids, args.jobs or default_jobs(), Progress(what="cases"))
    verdicts = criteria(records)
    header = f"{args.cases} cases, seed {args.seed}, run in {time.monotonic() - started:.0f} s"
    return _judged("family", verdicts, lambda: write_report(records, verdicts, out, header), header)


def series(args: argparse.Namespace) -> int:
    """The series family's report; 1 when a criterion fails (each failed one printed)."""
    from hil.family import default_jobs, run_family
    from hil.series_family import criteria, measure, write_report

    logging.getLogger("edge_agent").setLevel(logging.ERROR)  # the report says what happened
    ids = [f"{args.seed}.{index}" for index in range(args.series)]
    started = time.monotonic()
    records = run_family(ids, args.jobs or default_jobs(), Progress(what="series"), measure)
    verdicts = criteria(records)
    header = f"{args.series} series, seed {args.seed}, run in {time.monotonic() - started:.0f} s"
    out = Path(args.out)
    return _judged("series", verdicts, lambda: write_report(records, verdicts, out, header), header)


def _judged(command: str, verdicts, write: Callable[[], Path], header: str) -> int:
    """Each criterion's line, the report written, and 1 when one failed (each named)."""
    for verdict in verdicts:
        print(verdict.line())
    print(f"report: {write()} ({header})")
    failed = [v.name for v in verdicts if not v.passed]
    if failed:
        print(f"python -m hil {command}: {len(failed)} criteria failed: {'; '.join(failed)}")
    return 1 if failed else 0


def demo(args: argparse.Namespace) -> None:
    logs.setup("warning")
    asyncio.run(
        run_demo(
            args.duration,
            replay=args.replay,
            rtu=args.rtu,
            opcua=args.opcua,
            spool=args.spool,
            telemetry=args.telemetry_file,
        )
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # pymodbus logs every timeout at ERROR with a frame dump; our own lines say what matters.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.getLogger("asyncua").setLevel(logging.WARNING)  # a line per session otherwise
    args = parse_args(argv)
    try:
        if args.command == "bench":
            bench(args)
        elif args.command == "family":
            return family(args)
        elif args.command == "series":
            return series(args)
        elif args.command == "demo":
            demo(args)
        elif args.command == "bridge":
            from .bridge_bench import run

            logging.getLogger("edge_agent").setLevel(logging.WARNING)
            print(asyncio.run(run(args.seconds)).line())
        else:
            asyncio.run(serve(args))
    except (ReplayMapError, ScenarioError, RuntimeError, OSError, ValueError) as exc:
        print(f"python -m hil: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
