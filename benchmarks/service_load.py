"""The standard load of one machine, served to a real agent process (`bench_service.py`): the
simulated controller on Modbus TCP with 200 tags for one 10 Hz poll group, the sensor bridge
emulator on a pseudo-terminal, and the agent configuration that reads both and controls the feed.

Bench support only: serves on 127.0.0.1 and a pseudo-terminal, never on a real port or device,
and writes no file. Never imports the agent's service: it is the machine, not the agent.

The controller is the cutting plant on the demo part (looping), whose register map
(`hil/register_map.py`, 23 tags) is widened with 177 synthetic input registers served beside
it: slow sines with a little noise, in the four usual shapes (a 0.01 % load, a 0.1 degC
temperature, a float32 pressure, a 0.001 mm int32 position), from `AUX_BASE` on. The bridge
runs its real firmware under the MicroPython unix port on its own deterministic signals (no
feed: the load process stays light).

Run as a script (what `bench_service.py` does, in a process of its own so that serving never
competes with the measurement for the benchmark's interpreter): prints one JSON line
{"port", "bridge"} once both serve; answers each `stats` line on stdin with a JSON line of
counters; stops at the end of stdin.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import sys
from dataclasses import dataclass

from edge_agent.registers import Table, Tag, ValueType
from hil import register_map
from hil.bridge_emulator import BridgeEmulator
from hil.controller import SimulatedController
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


#: Cycled through in order, so the 177 registers are a mix of the four.
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
    """The agent's TOML for the standard load: every tag of the controller (its own 23 and
    the synthetic ones) in one 10 Hz poll group, control at 100 Hz on the hampel-cleaned
    spindle load writing the override, one raw bridge channel at 1 kHz, MQTT to the broker.
    Everything else at its default (`[spool] commit_interval_s` included); `service` adds keys
    to `[service]`."""
    tags = [*register_map.TAGS, *(tag for tag, _ in aux_tags())]
    service_lines = [f"{key} = {_toml_value(value)}" for key, value in (service or {}).items()]
    sections = [
        '[machine]\nsite = "bench"\nmachine_id = "standard-load"',
        # The simulated controller refuses unmapped registers (docs/register-map.md).
        f'[controller]\nprotocol = "tcp"\nhost = "127.0.0.1"\nport = {controller_port}\n'
        "max_gap_registers = 0",
        f"[poll_groups.fast]\nperiod_s = {POLL_PERIOD_S!r}",
        # As the demo: single-sample spikes out of the control signal, nothing slower.
        '[channels.spindle_load]\nfilters = [{kind = "hampel", window = 3}]\ntelemetry = "both"',
        f"[control]\nenabled = true\nperiod_s = 0.01\ntarget_load_pct = 70\nhard_limit_pct = 110\n"
        f"teach_file = {_toml_value(teach_file)}",
        f"[bridge]\nport = {_toml_value(bridge_port)}\nsample_hz = {BRIDGE_SAMPLE_HZ}",
        '[[bridge.channels]]\nname = "spindle_current"\nindex = 0\nunit = "A"\n'
        f"scale = {BRIDGE_SCALE!r}\nraw = true\nfeatures = []",
        f"[spool]\npath = {_toml_value(spool)}",
        f'[upstream]\nkind = "mqtt"\nhost = "{broker_host}"\nport = {broker_port}',
        "[service]\n" + "\n".join(service_lines),
        *(_tag_toml(tag) for tag in tags),
    ]
    return "\n\n".join(sections) + "\n"


# -- the load process ---------------------------------------------------------------------


async def _serve(bridge: BridgeEmulator) -> None:
    aux = aux_tags()
    plant = WithAuxiliaries(demo_plant(), aux)
    tags = (*register_map.TAGS, *(tag for tag, _ in aux))
    controller = SimulatedController(plant, tags=tags)
    port = await controller.start_tcp("127.0.0.1", 0)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_command() -> None:
        line = sys.stdin.readline()
        if not line:
            done.set()
            return
        stats = {
            "requests_served": controller.requests_served,
            "override_writes": plant.override_writes,
            "last_override_pct": plant.last_override_pct,
        }
        print(json.dumps(stats), flush=True)

    loop.add_reader(sys.stdin.fileno(), on_command)
    print(json.dumps({"port": port, "bridge": bridge.path}), flush=True)
    try:
        await done.wait()
    finally:
        loop.remove_reader(sys.stdin.fileno())
        await controller.stop()


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="service_load %(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    with BridgeEmulator() as bridge:
        asyncio.run(_serve(bridge))
    return 0


if __name__ == "__main__":
    sys.exit(main())
