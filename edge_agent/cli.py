"""The `edge-agent` command: run | check-config | probe | status | decode | teach | collect.

Errors a person can fix (a bad config, a missing file) end as one line on stderr and
exit status 2; nothing here prints a traceback for them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import signal
import sys
import tomllib

from . import __version__, logs
from .collector.store import StoreError
from .config import (
    AgentConfig,
    ConfigError,
    load_config,
    parse_collector_config,
    parse_config,
)
from .control.profile_store import ProfileError
from .control.teach import TeachError, TeachStore, to_json
from .telemetry.spool import SpoolError
from .tomlcheck import read_toml_text
from .upstream import UpstreamError

#: Where the systemd services and the README install the configurations.
DEFAULT_CONFIG = "/etc/edge-agent/agent.toml"
DEFAULT_COLLECTOR_CONFIG = "/etc/edge-agent/collector.toml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the agent with a configuration file")
    run.add_argument("config")
    check = commands.add_parser(
        "check-config",
        help="validate an agent's or a collector's configuration file",
        description="Validates a configuration without touching the machine or the network. "
        "A file whose top level has [collector] and no [machine] is a collector's (checked "
        "as `collect run` reads it); one with [machine] or another of the agent's sections "
        "is an agent's; any other is refused.",
    )
    check.add_argument("config")
    _add_probe(commands)
    decode = commands.add_parser(
        "decode", help="print telemetry payloads as JSON lines or CSV (names and units restored)"
    )
    decode.add_argument(
        "source", help="a spool database, a file of payloads back to back, or - for stdin"
    )
    decode.add_argument("--csv", action="store_true", help="one CSV row per sample")
    status = commands.add_parser(
        "status", help="a running agent's state (from its metrics endpoint) and its spool"
    )
    status.add_argument(
        "--config", default=DEFAULT_CONFIG, help=f"the agent's configuration ({DEFAULT_CONFIG})"
    )
    _add_teach(commands)
    _add_collect(commands)
    args = parser.parse_args(argv)

    try:
        return {
            "run": _run,
            "check-config": _check,
            "probe": _probe,
            "decode": _decode,
            "status": _status,
            "teach": _teach,
            "collect": _collect,
        }[args.command](args)
    except (ConfigError, ProfileError, SpoolError, StoreError, TeachError, UpstreamError) as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _check(args) -> int:
    from .sources.registry import describe
    from .telemetry.channels import channel_table

    text = read_toml_text(args.config, ConfigError)
    kind = _config_kind(text)
    if kind == "collector":
        return _check_collector(args.config, text)
    if kind == "neither":
        raise ConfigError(
            f"{args.config}: neither an agent's configuration nor a collector's: "
            "no [machine] (an agent's) and no [collector] (a collector's) at its top level"
        )
    config = parse_config(text, args.config)
    print(f"{args.config}: ok: {len(channel_table(config))} channels published")
    print("\n".join(describe(config)))
    return 0


def _config_kind(text: str) -> str:
    """Whose configuration the text is: "collector" when its top level has [collector] and
    no [machine], "agent" when it has any of the agent's sections (its parser then says what
    is missing), else "neither". Text that is not TOML is the agent's parser's to report."""
    try:
        top = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return "agent"
    if "collector" in top and "machine" not in top:
        return "collector"
    agent_sections = {f.name for f in dataclasses.fields(AgentConfig)} - {"source"}
    return "agent" if agent_sections & set(top) else "neither"


def _check_collector(path: str, text: str) -> int:
    from .collector.service import subscriptions

    config = parse_collector_config(text, path)
    collector, broker = config.collector, config.broker
    # The broker's port as the MQTT link resolves it (upstream/mqtt_link.settings_from).
    port = broker.port or (8883 if broker.tls else 1883)
    scheme = "mqtts" if broker.tls else "mqtt"
    keeps = (
        f"keeps {collector.retention_days:g} days"
        if collector.retention_days
        else "keeps everything"
    )
    print(
        f"{path}: ok: a collector: stores what it takes from {scheme}://{broker.host}:{port} "
        f"(MQTT {broker.protocol}) into {collector.db}, {keeps}"
    )
    print(f"  subscribes to {', '.join(subscriptions(config))}")
    return 0


def _add_probe(commands) -> None:
    probe = commands.add_parser(
        "probe",
        usage="edge-agent probe CONFIG [--watch [SECONDS]]",
        help="read every tag and node once from the machine and print it (never writes)",
        description="Commissioning: reads every configured source once from the real machine "
        "and prints each value with its unit; Modbus: the raw registers and the value under "
        "the other byte and word orders; OPC UA: the node's type, status and source time; "
        "the bridge: its identity and a value per channel. The control roles are marked. "
        "Never writes. Exit status 0 when everything read, 1 when something did not, 2 for "
        "a bad configuration.",
    )
    # Optional only so that `probe --watch CONFIG` works too: _probe requires it.
    probe.add_argument("config", nargs="?", help="the agent's configuration")
    probe.add_argument(
        "--watch",
        nargs="?",
        const="1",
        metavar="SECONDS",
        help="read again every SECONDS (default 1, at least 0.1) until Ctrl-C",
    )


def _probe(args) -> int:
    from .probe import MIN_WATCH_S, probe

    path, watch = args.config, args.watch
    if path is None and watch is not None:  # `probe --watch CONFIG`: the file, not seconds
        path, watch = watch, "1"
    if path is None:
        print("edge-agent probe: a configuration file is needed (CONFIG)", file=sys.stderr)
        return 2
    seconds = None
    if watch is not None:
        try:
            seconds = float(watch)
        except ValueError:
            seconds = math.nan
        if not seconds >= MIN_WATCH_S:
            print(
                f"edge-agent probe: --watch: seconds must be a number, at least "
                f"{MIN_WATCH_S:g}, got {watch!r}",
                file=sys.stderr,
            )
            return 2
    config = load_config(path)
    return asyncio.run(probe(config, sys.stdout, seconds))


def _decode(args) -> int:
    from .telemetry.decode import decode_spool, decode_stream

    try:
        if args.source == "-":
            _, bad = decode_stream(sys.stdin.buffer, "stdin", sys.stdout, sys.stderr, args.csv)
        elif _is_sqlite(args.source):
            _, bad = decode_spool(args.source, sys.stdout, sys.stderr, args.csv)
        else:
            with open(args.source, "rb") as stream:
                _, bad = decode_stream(stream, args.source, sys.stdout, sys.stderr, args.csv)
    except BrokenPipeError:  # `edge-agent decode spool.db | head`
        sys.stderr.close()
        return 0
    return 1 if bad else 0


def _is_sqlite(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return True  # let the spool report the error in its own words


def _run(args) -> int:
    from .daemon import AgentService

    config = load_config(args.config)
    service = config.service
    limit = logs.setup(service.log_level, service.log_repeat_burst, service.log_repeat_window_s)

    async def serve() -> None:
        await AgentService(args.config, config, log_limit=limit).run()

    asyncio.run(serve())
    return 0


def _status(args) -> int:
    from .status import report

    lines, status = report(load_config(args.config))
    print("\n".join(lines))
    return status


def _add_teach(commands) -> None:
    teach = commands.add_parser(
        "teach",
        help="list, forget or export the tools' learned loads and the learned profiles",
        description="The teach-in records: the first cut with a tool learns its peak load; "
        "later cuts aim at [control] teach_fraction of it. The learned profiles: what each "
        "(program, tool) cut along its path, for the preview ([control] preview).",
    )
    actions = teach.add_subparsers(dest="action", required=True)
    config_help = f"the agent's configuration (default {DEFAULT_CONFIG})"
    listing = actions.add_parser("list", help="one line per taught tool, with its target")
    listing.add_argument("--config", default=DEFAULT_CONFIG, help=config_help)
    reset_help = (
        "forget one tool: its next cut teaches again (a running agent picks this up "
        "at its next program start; it watches the file)"
    )
    reset = actions.add_parser("reset", help=reset_help, description=reset_help)
    reset.add_argument("tool", type=int, metavar="TOOL", help="the tool number")
    reset.add_argument("--config", default=DEFAULT_CONFIG, help=config_help)
    export = actions.add_parser(
        "export", help="the teach file's JSON, for backup or another machine"
    )
    export.add_argument("--config", default=DEFAULT_CONFIG, help=config_help)
    export.add_argument("--out", metavar="FILE", help="write it here (default: stdout)")
    profiles = actions.add_parser(
        "profiles", help="one line per learned profile of the preview ([control] preview)"
    )
    profiles.add_argument("--config", default=DEFAULT_CONFIG, help=config_help)
    show = actions.add_parser(
        "show",
        help="one learned profile and its last part: their figures, with --png a plot of both "
        "along the path, with --csv the profile as CSV",
    )
    show.add_argument("program", type=int, metavar="PROGRAM", help="the program number")
    show.add_argument("tool", type=int, metavar="TOOL", help="the tool number")
    show.add_argument(
        "--png",
        metavar="FILE",
        help="plot it here, and below it the last part's load, target and override "
        "(needs matplotlib)",
    )
    show.add_argument(
        "--csv",
        metavar="FILE",
        help="write the profile here, one row per bin: s_mm (the bin's middle), k_pct, block",
    )
    show.add_argument("--config", default=DEFAULT_CONFIG, help=config_help)
    forget_help = "forget one learned profile and its last part: its next part teaches it again"
    forget = actions.add_parser("forget", help=forget_help, description=forget_help)
    forget.add_argument("program", type=int, metavar="PROGRAM", help="the program number")
    forget.add_argument("tool", type=int, metavar="TOOL", help="the tool number")
    forget.add_argument("--config", default=DEFAULT_CONFIG, help=config_help)


def _teach(args) -> int:
    control = load_config(args.config).control
    if args.action in ("profiles", "show", "forget"):
        from .control.profile_report import profile_command

        return profile_command(args, control)
    store = TeachStore(control.teach_file)
    if args.action == "reset":
        if not store.reset(args.tool):
            print(f"edge-agent: tool {args.tool} is not taught ({store.path})", file=sys.stderr)
            return 1
        print(f"tool {args.tool} forgotten: its next cut teaches again ({store.path})")
        return 0
    records = store.load()
    if args.action == "export":
        if args.out:
            TeachStore(args.out).save(records)
            print(f"{len(records)} tools written to {args.out}", file=sys.stderr)
        else:
            sys.stdout.write(to_json(records))
        return 0
    if not records:
        print(f"no tools taught yet ({store.path})")
        return 0
    print(
        f"{'tool':>6} {'peak %':>7} {'idle %':>7} {'target %':>8} {'blocks':>6} "
        f"{'program':>8}  learned_at"
    )
    for tool, r in sorted(records.items()):
        target = r.target_pct(control.teach_fraction, control.hard_limit_pct)
        print(
            f"{tool:>6} {r.peak_load_pct:>7.1f} {r.idle_load_pct:>7.1f} {target:>8.1f} "
            f"{len(r.cut_blocks):>6} {r.program:>8}  {r.learned_at}"
        )
    if control.target_mode != "teach_in":
        print(f'(target_mode is "{control.target_mode}": these targets are not in use)')
    return 0


def _add_collect(commands) -> None:
    collect = commands.add_parser(
        "collect",
        help="the plant-side collector: subscribe and store, export CSV, status",
        description="Stores what the agents publish into SQLite (docs/collector.md).",
    )
    actions = collect.add_subparsers(dest="action", required=True)
    run = actions.add_parser("run", help="subscribe to the broker and store (the service)")
    run.add_argument(
        "config",
        nargs="?",
        default=DEFAULT_COLLECTOR_CONFIG,
        help=f"the collector's configuration (default {DEFAULT_COLLECTOR_CONFIG})",
    )
    export = actions.add_parser("export", help="samples as CSV on stdout")
    export.add_argument("db", help="the collector's database")
    export.add_argument("--machine", help="site/machine (default: all)")
    export.add_argument("--channel", action="append", help="a channel (repeat; default: all)")
    export.add_argument("--start-us", type=int, help="from this stamp (µs since the epoch)")
    export.add_argument("--end-us", type=int, help="up to this stamp, excluded")
    status = actions.add_parser(
        "status", help="per machine: what is stored, missing numbers, gaps, deaths"
    )
    status.add_argument("db", help="the collector's database")


def _collect(args) -> int:
    from .collector.store import SqliteStore

    if args.action == "run":
        return _collect_run(args.config)
    store = SqliteStore(args.db, readonly=True)
    try:
        if args.action == "export":
            store.export_csv(sys.stdout, args.machine, args.channel, args.start_us, args.end_us)
            return 0
        for machine in store.machines():
            counts = store.counts(machine)
            missing = store.missing_seqs(machine, unreported_only=True)
            print(
                f"{machine}: {counts['payloads']} payloads, {counts['samples']} samples, "
                f"{counts['events']} events, {counts['gaps']} gaps ({counts['dropped']} frames "
                f"dropped by the agent), {counts['deaths']} deaths, "
                f"{counts['conflicts']} conflicts, "
                f"{sum(last - first + 1 for first, last in missing)} numbers missing"
                + (f" {missing[:5]}" if missing else "")
            )
        return 0
    finally:
        store.close()


def _collect_run(path: str) -> int:
    from .collector.service import CollectorService
    from .config import load_collector_config

    config = load_collector_config(path)
    logs.setup("info")

    async def serve() -> None:
        service = CollectorService(config)
        task = asyncio.create_task(service.run())
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
