"""The standard load of one machine, served to a real agent process (`bench_service.py`,
`bench_sources.py`): the simulated controller on Modbus TCP (or on OPC UA) with 200 tags for one
10 Hz poll group, the sensor bridge emulator on a pseudo-terminal, and the agent configurations
that read them and control the feed.

Bench support only: serves on 127.0.0.1 and a pseudo-terminal, never on a real port or device,
and writes no file. Never imports the agent's service: it is the machine, not the agent.

The controller is the cutting plant on the demo part (looping), whose register map
(`hil/register_map.py`, 22 tags) is widened with 178 synthetic input registers served beside
it: slow sines with a little noise, in the four usual shapes (a 0.01 % load, a 0.1 degC
temperature, a float32 pressure, a 0.001 mm int32 position), from `AUX_BASE` on. Over OPC UA
(`--opcua`) the same plant is served by `hil/opcua_server.py`: the plant's 22 variables of
`hil/opcua_space.py` and the 178 synthetic values as Doubles in the machine's `Auxiliary`
folder. The bridge runs its real firmware under the MicroPython unix port on its own
deterministic signals (no feed: the load process stays light); `--no-bridge` leaves it out.

Run as a script (what the benchmarks do, in a process of its own so that serving never
competes with the measurement for the benchmark's interpreter): prints one JSON line
{"port", "bridge"} (and "url" over OPC UA; "bridge" null without one) once it serves; answers
each `stats` line on stdin with a JSON line of counters; stops at the end of stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import random
import sys
from dataclasses import dataclass

from edge_agent.registers import Table, Tag, ValueType
from edge_agent.sources.modbus import default_quantum
from hil import register_map
from hil.bridge_emulator import BridgeEmulator
from hil.controller import SimulatedController
from hil.opcua_server import AUXILIARY, OpcUaController
from hil.opcua_space import MACHINE, NAMESPACE_URI, VARIABLES
from hil.plant import Plant, demo_plant

#: The standard load (benchmarks/standard_load.py): 200 tags at 10 Hz, one channel at 1 kHz.
TAGS_TOTAL = 200
POLL_PERIOD_S = 0.1
BRIDGE_SAMPLE_HZ = 1000
#: The first synthetic register: clear of the plant's map (inputs 0..26) with a gap, so that
#: the planner reads it in requests of its own, as it would a second block of a real PLC.
AUX_BASE = 40
#: The bridge channel's calibration: a 50 A current clamp over the ADC's 4095 counts.
BRIDGE_SCALE = 50 / 4095


@dataclass(frozen=True)
class AuxShape:
    """One kind of synthetic register: its type, resolution and the range its sine spans."""

    kind: str
    type: ValueType
    scale: float
    unit: str
    base: float
    amplitude: float
    noise: float


#: Cycled through in order, so the 178 registers are a mix of the four.
AUX_SHAPES = (
    AuxShape("load", ValueType.UINT16, 0.01, "%", 50.0, 20.0, 0.05),
    AuxShape("temperature", ValueType.INT16, 0.1, "degC", 40.0, 15.0, 0.1),
    AuxShape("pressure", ValueType.FLOAT32, 1.0, "bar", 6.0, 1.0, 0.002),
    AuxShape("position", ValueType.INT32, 0.001, "mm", 0.0, 250.0, 0.001),
)


def aux_tags(count: int = TAGS_TOTAL - len(register_map.TAGS)) -> list[tuple[Tag, AuxShape]]:
    """The synthetic registers, each with its shape, packed from AUX_BASE in the input table."""
    out, address = [], AUX_BASE
    for i in range(count):
        shape = AUX_SHAPES[i % len(AUX_SHAPES)]
        tag = Tag(
            f"aux_{shape.kind}_{i:03d}",
            address,
            Table.INPUT,
            shape.type,
            scale=shape.scale,
            unit=shape.unit,
            poll_group="fast",
        )
        out.append((tag, shape))
        address = tag.end
    return out


class WithAuxiliaries:
    """A plant (the `hil.plant.Plant` protocol) plus synthetic registers; counts the agent's
    override writes, which the controller hands to `write` only once it accepted them."""

    def __init__(self, plant: Plant, aux: list[tuple[Tag, AuxShape]], seed: int = 1):
        self.plant = plant
        self.override_writes = 0
        self.last_override_pct: float | None = None
        rng = random.Random(seed)
        self._rng = rng
        # name, shape, period s, phase
        self._aux = [
            (tag.name, shape, rng.uniform(10, 120), rng.uniform(0, 2 * math.pi))
            for tag, shape in aux
        ]
        self._t_s = 0.0
        self._cached_at: float | None = None
        self._cached: dict[str, float] = {}

    def advance_to(self, t_s: float) -> None:
        self.plant.advance_to(t_s)
        self._t_s = t_s

    def write(self, name: str, value: float) -> None:
        self.plant.write(name, value)
        self.override_writes += 1
        self.last_override_pct = value

    def values(self) -> dict[str, float]:
        # One set of synthetic values per plant time: the requests of one poll cycle agree.
        if self._cached_at != self._t_s:
            t, gauss = self._t_s, self._rng.gauss
            self._cached = {
                name: shape.base
                + shape.amplitude * math.sin(2 * math.pi * t / period + phase)
                + gauss(0.0, shape.noise)
                for name, shape, period, phase in self._aux
            }
            self._cached_at = t
        return {**self.plant.values(), **self._cached}


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string for these names
    return repr(value)


def _tag_toml(tag: Tag) -> str:
    lines = [
        "[[tags]]",
        f'name = "{tag.name}"',
        f"address = {tag.address}",
        f'table = "{tag.table.value}"',
        f'type = "{tag.type.value}"',
        'poll_group = "fast"',
    ]
    if tag.table.is_bits:
        lines.remove(f'type = "{tag.type.value}"')
    if tag.word_order.value != "big":
        lines.append(f'word_order = "{tag.word_order.value}"')
    if tag.byte_order.value != "big":
        lines.append(f'byte_order = "{tag.byte_order.value}"')
    if tag.scale != 1.0:
        lines.append(f"scale = {tag.scale!r}")
    if tag.unit:
        lines.append(f'unit = "{tag.unit}"')
    if tag.type is ValueType.BITFIELD:
        lines.append(f"bit = {tag.bit}")
    return "\n".join(lines)


def _modbus_source(controller_port: int) -> tuple[list[str], list[str]]:
    """The controller over Modbus TCP: its sections, and every tag (the plant's and the
    synthetic ones) in the one 10 Hz poll group."""
    tags = [*register_map.TAGS, *(tag for tag, _ in aux_tags())]
    sections = [
        # The simulated controller refuses unmapped registers (docs/register-map.md).
        f'[controller]\nprotocol = "tcp"\nhost = "127.0.0.1"\nport = {controller_port}\n'
        "max_gap_registers = 0",
        f"[poll_groups.fast]\nperiod_s = {POLL_PERIOD_S!r}",
    ]
    return sections, [_tag_toml(tag) for tag in tags]


def opcua_nodes() -> list[dict[str, object]]:
    """The `[[opcua.nodes]]` of the controller over OPC UA, as the Modbus tags are channels:
    the same names, units and quanta (so the same channel table), all in the one 10 Hz group;
    each by its browse path on the bench's server, the agent's override the one writable."""
    tags = {tag.name: tag for tag in register_map.TAGS}
    nodes = []
    for var in VARIABLES:
        tag = tags[var.tag]
        nodes.append(
            {
                "name": var.tag,
                "browse_path": f"Objects/Machines/{MACHINE}/{var.path}",
                "unit": tag.unit,
                "quantum": default_quantum(tag),
                "type": var.type.name.lower(),  # Double -> "double", Int32 -> "int32", ...
                "group": "fast",
                "writable": var.writable,
            }
        )
    for tag, _ in aux_tags():
        nodes.append(
            {
                "name": tag.name,
                "browse_path": f"Objects/Machines/{MACHINE}/{AUXILIARY}/{tag.name}",
                "unit": tag.unit,
                "quantum": default_quantum(tag),
                "type": "double",
                "group": "fast",
                "writable": False,
            }
        )
    return nodes


def _opcua_source(url: str) -> tuple[list[str], list[str]]:
    """The controller over OPC UA (subscriptions, the default mode): its sections, and every
    node in the one 10 Hz group."""
    sections = [
        f"[opcua]\nurl = {_toml_value(url)}\nnamespace = {_toml_value(NAMESPACE_URI)}",
        f"[opcua.groups.fast]\nperiod_s = {POLL_PERIOD_S!r}",
    ]
    items = [
        "[[opcua.nodes]]\n"
        + "\n".join(
            f"{key} = {_toml_value(value)}"
            for key, value in node.items()
            if value != "" and value is not False  # the defaults: no unit, read only
        )
        for node in opcua_nodes()
    ]
    return sections, items


def _agent_toml(
    source: tuple[list[str], list[str]],
    *,
    spool: str,
    teach_file: str,
    upstream: str,
    bridge_port: str | None = None,
    service: dict[str, object] | None = None,
) -> str:
    """The agent's TOML around a controller source: control at 100 Hz on the hampel-cleaned
    spindle load writing the override, the bridge when `bridge_port` is given, `upstream`'s
    keys, `service`'s keys in `[service]`, every other setting at its default."""
    sections, items = source
    service_lines = [f"{key} = {_toml_value(value)}" for key, value in (service or {}).items()]
    bridge = [
        f"[bridge]\nport = {_toml_value(bridge_port)}\nsample_hz = {BRIDGE_SAMPLE_HZ}",
        '[[bridge.channels]]\nname = "spindle_current"\nindex = 0\nunit = "A"\n'
        f"scale = {BRIDGE_SCALE!r}\nraw = true\nfeatures = []",
    ]
    parts = [
        '[machine]\nsite = "bench"\nmachine_id = "standard-load"',
        *sections,
        # As the demo: single-sample spikes out of the control signal, nothing slower.
        '[channels.spindle_load]\nfilters = [{kind = "hampel", window = 3}]\ntelemetry = "both"',
        f"[control]\nenabled = true\nperiod_s = 0.01\ntarget_load_pct = 70\nhard_limit_pct = 110\n"
        f"teach_file = {_toml_value(teach_file)}",
        *(bridge if bridge_port is not None else ()),
        f"[spool]\npath = {_toml_value(spool)}",
        f"[upstream]\n{upstream}",
        "[service]\n" + "\n".join(service_lines),
        *items,
    ]
    return "\n\n".join(parts) + "\n"


def agent_config(
    *,
    controller_port: int,
    bridge_port: str,
    broker_host: str,
    broker_port: int,
    spool: str,
    teach_file: str,
    service: dict[str, object] | None = None,
) -> str:
    """The agent's TOML for the standard load: every tag of the controller (its own 22 and
    the synthetic ones) in one 10 Hz poll group, control at 100 Hz on the hampel-cleaned
    spindle load writing the override, one raw bridge channel at 1 kHz, MQTT to the broker.
    Everything else at its default (`[spool] commit_interval_s` included); `service` adds keys
    to `[service]`."""
    return _agent_toml(
        _modbus_source(controller_port),
        spool=spool,
        teach_file=teach_file,
        upstream=f'kind = "mqtt"\nhost = "{broker_host}"\nport = {broker_port}',
        bridge_port=bridge_port,
        service=service,
    )


#: The sources compared alone (`bench_sources.py`): payloads wait in the spool, sent nowhere,
#: the lightest valid upstream, so that neither the bridge nor a broker shares the figures.
SOURCES_ALONE_UPSTREAM = 'kind = "none"'


def modbus_agent_config(
    *, controller_port: int, spool: str, teach_file: str, service: dict[str, object] | None = None
) -> str:
    """`agent_config`'s controller and control alone, over Modbus TCP: no bridge, no
    upstream."""
    return _agent_toml(
        _modbus_source(controller_port),
        spool=spool,
        teach_file=teach_file,
        upstream=SOURCES_ALONE_UPSTREAM,
        service=service,
    )


def opcua_agent_config(
    *, url: str, spool: str, teach_file: str, service: dict[str, object] | None = None
) -> str:
    """`modbus_agent_config` with the controller over OPC UA (`service_load.py --opcua` at
    `url`): the same 200 channels in one 10 Hz group (`opcua_nodes`), read by subscription,
    the same control; no bridge, no upstream."""
    return _agent_toml(
        _opcua_source(url),
        spool=spool,
        teach_file=teach_file,
        upstream=SOURCES_ALONE_UPSTREAM,
        service=service,
    )


# -- the load process ---------------------------------------------------------------------


async def _controller(plant: WithAuxiliaries, aux: list[tuple[Tag, AuxShape]], opcua: bool):
    """The controller serving `plant` on 127.0.0.1, a free port; its stop, and what the ready
    line says of it."""
    if opcua:
        server = OpcUaController(plant, auxiliary=[tag.name for tag, _ in aux])
        port = await server.start("127.0.0.1", 0)
        return server, server.stop, {"port": port, "url": server.url}
    tags = (*register_map.TAGS, *(tag for tag, _ in aux))
    controller = SimulatedController(plant, tags=tags)
    port = await controller.start_tcp("127.0.0.1", 0)
    return controller, controller.stop, {"port": port}


async def _serve(bridge: BridgeEmulator | None, opcua: bool) -> None:
    aux = aux_tags()
    plant = WithAuxiliaries(demo_plant(), aux)
    controller, stop, ready = await _controller(plant, aux, opcua)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_command() -> None:
        line = sys.stdin.readline()
        if not line:
            done.set()
            return
        stats = {
            "override_writes": plant.override_writes,
            "last_override_pct": plant.last_override_pct,
        }
        if not opcua:
            stats["requests_served"] = controller.requests_served
        print(json.dumps(stats), flush=True)

    loop.add_reader(sys.stdin.fileno(), on_command)
    print(json.dumps({**ready, "bridge": bridge.path if bridge else None}), flush=True)
    try:
        await done.wait()
    finally:
        loop.remove_reader(sys.stdin.fileno())
        await stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="service_load.py", description="Serve the standard load of one machine."
    )
    parser.add_argument(
        "--opcua",
        action="store_true",
        help="serve the controller over OPC UA (hil/opcua_server.py), not Modbus TCP",
    )
    parser.add_argument(
        "--no-bridge", action="store_true", help="leave the sensor bridge emulator out"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="service_load %(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    if args.no_bridge:
        asyncio.run(_serve(None, args.opcua))
        return 0
    with BridgeEmulator() as bridge:
        asyncio.run(_serve(bridge, args.opcua))
    return 0


if __name__ == "__main__":
    sys.exit(main())
