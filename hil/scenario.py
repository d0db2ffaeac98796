"""HIL scenarios: what the plant machines, on which machine, with which sensor and faults.

One TOML schema (docs/hil-scenarios.md) with two ways to describe the work: `[[segments]]`, a
toolpath whose engagement is given (depth, width, material per segment), or `[stock]` with
`[[moves]]`, a block of stock and tool moves whose engagement the stock model works out (and
whose positions may come from outside, from a real motion controller). Bad files fail with one
line naming the file, the line and the key. Never does I/O beyond reading the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from edge_agent.tomlcheck import KeyPath, TomlChecker, read_toml_text
from hil.physics import MATERIALS
from hil.stock import Box, HardSpot, HeightRegion

#: The scenarios shipped with the bench, one TOML file each.
SCENARIO_DIR = Path(__file__).parent / "scenarios"


class ScenarioError(ValueError):
    """A mistake in a scenario file, as one line: file, line, key, what is wrong."""


@dataclass(frozen=True)
class Machine:
    """The machine tool; each default is a small vertical machining centre's figure."""

    rated_power_kw: float = 5.5  # spindle S1 rating: 100 % load
    idle_power_kw: float = 0.45  # spindle turning in air at cutting speed
    efficiency: float = 0.8  # spindle drive and transmission, eta in the power formula
    spindle_rpm: float = 6000.0
    max_feed_mm_min: float = 6000.0  # the controller's cutting-feed clamp
    rapid_mm_min: float = 12000.0  # rapids ignore feed overrides, as on most controllers
    feed_lag_s: float = 0.08  # axis acceleration, as a first-order lag on the path speed
    spindle_start_s: float = 1.0  # each part starts with the spindle coming up to speed
    max_feed_pct: float = 150.0  # the controller's clamp on knob x agent override
    overload_alarm_pct: float = 150.0  # the spindle drive trips above this ...
    overload_alarm_s: float = 1.0  # ... held this long: feed and spindle stop, alarm latched
    step_s: float = 0.01  # the plant's fixed step: finer than any poll, coarse enough to be cheap
    # The controller's watchdog on the agent's override: with no write for this long the
    # override falls to min(current, 100 %) (docs/safety.md). 0, the default: none, the
    # last override stays, as on a controller without one.
    override_watchdog_s: float = 0.0
    # Between the parts of a series the program ends and the spindle stops for this long (a
    # part or pallet change), as the agent sees a series on a real machine. 0, the default:
    # the next part starts at once, in the same program run.
    part_change_s: float = 0.0


@dataclass(frozen=True)
class Sensor:
    """How the controller's spindle-load reading lags and blurs the true load."""

    lag_s: float = 0.15  # drive current filtering, first order
    dead_time_s: float = 0.05  # the drive's and the controller's update cycles
    quantum_pct: float = 0.1  # the register's resolution
    noise_pct: float = 0.3  # standard deviation, seeded: deterministic


@dataclass(frozen=True)
class Control:
    """What adaptive control aims at, and so what the oracle is computed for."""

    target_load_pct: float = 70.0
    hard_limit_pct: float = 110.0  # above this, the tool is at risk
    override_min_pct: float = 50.0
    override_max_pct: float = 150.0


@dataclass(frozen=True)
class Tool:
    number: int = 1
    diameter_mm: float = 12.0
    wear_kc_per_part: float = 0.0  # Kc grows by this fraction with every part finished


@dataclass(frozen=True)
class HardZone:
    """Part of a segment, by distance from its start, where Kc is `kc_factor` times higher."""

    from_mm: float
    to_mm: float
    kc_factor: float


@dataclass(frozen=True)
class Segment:
    """One piece of a given toolpath. `cut` moves at the programmed feed with the engagement
    given (depth 0: an air cut); `rapid` moves at the rapid rate; `dwell` waits `seconds`."""

    kind: str
    length_mm: float = 0.0
    depth_mm: float = 0.0
    width_mm: float = 0.0
    feed_mm_min: float = 0.0
    material: str = "steel"
    seconds: float = 0.0
    hard_zones: tuple[HardZone, ...] = ()

    def kc_factor(self, at_mm: float) -> float:
        """The product of the Kc factors of the hard zones holding `at_mm` (1 outside)."""
        factor = 1.0
        for zone in self.hard_zones:
            if zone.from_mm <= at_mm < zone.to_mm:
                factor *= zone.kc_factor
        return factor


@dataclass(frozen=True)
class StockSpec:
    box: Box
    top_z: float
    material: str
    cell_mm: float = 0.5
    regions: tuple[HeightRegion, ...] = ()
    hard_spots: tuple[HardSpot, ...] = ()


@dataclass(frozen=True)
class Move:
    """A straight tool move to an absolute point; `rapid` ignores the feed and its override."""

    x: float
    y: float
    z: float
    rapid: bool
    feed_mm_min: float


@dataclass(frozen=True)
class Event:
    """`breakage` at `at_mm` along part `part`'s path; `sensor_freeze` and `link_loss` for
    `duration_s` of plant time, from `start_s`, or (with `at_mm` set) from when part `part`'s
    tool reaches `at_mm` along its path: a fault placed where on the work it strikes."""

    kind: str
    at_mm: float | None = None  # None: a freeze or link loss placed by `start_s`
    part: int = 1
    start_s: float = 0.0
    duration_s: float = 0.0
    spike_factor: float = 3.0  # the load jumps this much as the edge chips ...
    spike_s: float = 0.05  # ... for this long, then ...
    residual: float = 0.05  # ... the broken tool only rubs: this fraction of the cutting power

    @property
    def by_position(self) -> bool:
        return self.at_mm is not None


#: The keys of a segment that a part's `edits` may change: its path and its engagement.
EDITABLE = ("length_mm", "depth_mm", "width_mm", "feed_mm_min", "material")


@dataclass(frozen=True)
class PartVariant:
    """How one part of a series differs from the scenario: more (or less) stock, hard
    material in it alone, or its program edited (`[[vary]]`, docs/hil-scenarios.md)."""

    part: int
    allowance_mm: float = 0.0  # added to every cut's depth (a [stock]'s top, its regions')
    hard_zones: tuple[tuple[int, HardZone], ...] = ()  # (segment index, zone)
    hard_spots: tuple[HardSpot, ...] = ()  # [stock] scenarios
    edits: tuple[tuple[int, tuple[tuple[str, object], ...]], ...] = ()  # (segment, changes)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    seed: int = 0
    parts: int = 1
    machine: Machine = field(default_factory=Machine)
    sensor: Sensor = field(default_factory=Sensor)
    control: Control = field(default_factory=Control)
    tool: Tool = field(default_factory=Tool)
    materials: dict[str, float] = field(default_factory=lambda: dict(MATERIALS))
    segments: tuple[Segment, ...] = ()
    stock: StockSpec | None = None
    start: tuple[float, float, float] = (0.0, 0.0, 50.0)
    moves: tuple[Move, ...] = ()
    events: tuple[Event, ...] = ()
    variants: tuple[PartVariant, ...] = ()
    source: str = "<memory>"

    def kc(self, material: str) -> float:
        return self.materials[material]

    def variant(self, part: int) -> Scenario:
        """The scenario as part `part` of the series is made: its `[[vary]]` entry applied
        (the scenario itself where there is none)."""
        v = next((v for v in self.variants if v.part == part), None)
        if v is None:
            return self
        if self.stock is not None:
            lift = v.allowance_mm
            regions = tuple(replace(r, top_z=r.top_z + lift) for r in self.stock.regions)
            stock = replace(
                self.stock,
                top_z=self.stock.top_z + lift,
                regions=regions,
                hard_spots=self.stock.hard_spots + v.hard_spots,
            )
            return replace(self, stock=stock, variants=())
        segments = list(self.segments)
        for index, changes in v.edits:
            segments[index] = replace(segments[index], **dict(changes))
        for index, zone in v.hard_zones:
            segments[index] = replace(
                segments[index], hard_zones=segments[index].hard_zones + (zone,)
            )
        if v.allowance_mm:
            segments = [
                replace(seg, depth_mm=seg.depth_mm + v.allowance_mm)
                if seg.kind == "cut" and seg.depth_mm > 0
                else seg
                for seg in segments
            ]
        return replace(self, segments=tuple(segments), variants=())


def load_scenario(path: str | Path) -> Scenario:
    return parse_scenario(read_toml_text(path, ScenarioError), str(path))


def shipped_scenarios() -> list[Path]:
    return sorted(SCENARIO_DIR.glob("*.toml"))


def scenario_path(name_or_path: str) -> Path:
    """A shipped scenario by name (`hard_spot`), or a path to a file."""
    path = SCENARIO_DIR / f"{name_or_path}.toml"
    if path.exists():
        return path
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.exists():
        return path
    known = ", ".join(p.stem for p in shipped_scenarios())
    raise ScenarioError(f"{name_or_path}: no such scenario (shipped: {known})")


def parse_scenario(text: str, source: str = "<memory>") -> Scenario:
    checker = _ScenarioChecker(source, text, ScenarioError)
    return checker.scenario(checker.parse())


_TOP = (
    "name",
    "description",
    "seed",
    "parts",
    "machine",
    "sensor",
    "control",
    "tool",
    "materials",
    "segments",
    "stock",
    "start",
    "moves",
    "events",
    "vary",
)
_EVENT_KEYS = {
    "breakage": ("kind", "at_mm", "part", "spike_factor", "spike_s", "residual"),
    "sensor_freeze": ("kind", "start_s", "at_mm", "part", "duration_s"),
    "link_loss": ("kind", "start_s", "at_mm", "part", "duration_s"),
}


class _ScenarioChecker(TomlChecker):
    def scenario(self, data: dict) -> Scenario:
        self.table(data, (), _TOP)
        materials = self.materials(data)
        machine = self.positive_section(
            data, "machine", Machine, zero_ok=("override_watchdog_s", "part_change_s")
        )
        sensor = self.section(data, "sensor", Sensor)
        for key in ("lag_s", "dead_time_s", "quantum_pct", "noise_pct"):
            if getattr(sensor, key) < 0:
                raise self.fail(
                    ("sensor", key), f"must not be negative, got {getattr(sensor, key)}"
                )
        control = self.control(data, machine)
        tool = self.section(data, "tool", Tool)
        self.positive(data.get("tool", {}), ("tool",), "diameter_mm", 12.0)
        if tool.wear_kc_per_part < 0:
            raise self.fail(("tool", "wear_kc_per_part"), "must not be negative")
        scenario = Scenario(
            name=self.value(data, (), "name", str),
            description=self.value(data, (), "description", str),
            seed=self.int_in(data, (), "seed", 0, 2**63 - 1, 0),
            parts=self.int_in(data, (), "parts", 1, 10_000, 1),
            machine=machine,
            sensor=sensor,
            control=control,
            tool=tool,
            materials=materials,
            source=self.source,
        )
        has_segments, has_stock = "segments" in data, "stock" in data
        if has_segments == has_stock:
            raise self.fail((), "needs either [[segments]] or [stock] with [[moves]], not both")
        if has_segments:
            segments = self.segments(data, materials)
            scenario = replace(scenario, segments=segments)
        else:
            if "moves" not in data:
                raise self.fail(("moves",), "missing: a [stock] scenario needs [[moves]]")
            start = self.point(data, (), "start", (0.0, 0.0, 50.0))
            stock = self.stock(data, materials)
            scenario = replace(scenario, stock=stock, start=start, moves=self.moves(data, start))
        scenario = replace(scenario, variants=self.variants(data, scenario))
        return replace(scenario, events=self.events(data, scenario))

    def positive_section(self, data: dict, name: str, cls: type, zero_ok: tuple[str, ...] = ()):
        """The section, every value above 0 (0 too for the keys in `zero_ok`: off)."""
        section = self.section(data, name, cls)
        for key, value in vars(section).items():
            if value < 0 or (value == 0 and key not in zero_ok):
                bound = "must not be negative" if key in zero_ok else "must be greater than 0"
                raise self.fail((name, key), f"{bound}, got {value}")
        return section

    def materials(self, data: dict) -> dict[str, float]:
        raw = data.get("materials", {})
        self.table(raw, ("materials",), raw.keys() if isinstance(raw, dict) else ())
        materials = dict(MATERIALS)
        for name in raw:
            materials[name] = self.positive(raw, ("materials",), name)
        return materials

    def control(self, data: dict, machine: Machine) -> Control:
        control = self.positive_section(data, "control", Control)
        path = ("control",)
        idle_pct = 100 * machine.idle_power_kw / machine.rated_power_kw
        if control.target_load_pct <= idle_pct:
            raise self.fail(
                (*path, "target_load_pct"),
                f"must be above the idle load ({idle_pct:.1f} %), got {control.target_load_pct}",
            )
        if control.hard_limit_pct <= control.target_load_pct:
            raise self.fail((*path, "hard_limit_pct"), "must be above target_load_pct")
        if control.override_max_pct < control.override_min_pct:
            raise self.fail((*path, "override_max_pct"), "must not be below override_min_pct")
        return control

    def material(self, data: dict, path: KeyPath, materials: dict[str, float]) -> str:
        return self.choice(data, path, "material", sorted(materials), "steel")

    def segments(self, data: dict, materials) -> tuple[Segment, ...]:
        raw = data["segments"]
        if not isinstance(raw, list) or not raw:
            raise self.fail(("segments",), "must be an array of tables ([[segments]])")
        segments = []
        keys = {
            "cut": (
                "kind",
                "length_mm",
                "depth_mm",
                "width_mm",
                "feed_mm_min",
                "material",
                "hard_zones",
            ),
            "rapid": ("kind", "length_mm"),
            "dwell": ("kind", "seconds"),
        }
        for i, entry in enumerate(raw):
            path = ("segments", i)
            if not isinstance(entry, dict):
                raise self.fail(path, "must be a table ([[segments]])")
            kind = self.choice(entry, path, "kind", tuple(keys))
            self.table(entry, path, keys[kind])
            if kind == "dwell":
                segments.append(Segment("dwell", seconds=self.positive(entry, path, "seconds")))
                continue
            length = self.positive(entry, path, "length_mm")
            if kind == "rapid":
                segments.append(Segment("rapid", length_mm=length))
                continue
            depth = self.non_negative(entry, path, "depth_mm")
            width = self.non_negative(entry, path, "width_mm", 0.0 if depth == 0 else ...)
            segments.append(
                Segment(
                    "cut",
                    length_mm=length,
                    depth_mm=depth,
                    width_mm=width,
                    feed_mm_min=self.positive(entry, path, "feed_mm_min"),
                    material=self.material(entry, path, materials),
                    hard_zones=self.hard_zones(
                        self.value(entry, path, "hard_zones", list, []),
                        (*path, "hard_zones"),
                        length,
                    ),
                )
            )
        return tuple(segments)

    def non_negative(self, data, path, key, default=...) -> float:
        value = self.value(data, path, key, float, default)
        if value < 0:
            raise self.fail((*path, key), f"must not be negative, got {value}")
        return value

    def hard_zones(self, raw, path: KeyPath, length: float) -> tuple[HardZone, ...]:
        zones = []
        for i, entry in enumerate(raw):
            where = (*path, i)
            self.table(entry, where, ("from_mm", "to_mm", "kc_factor"))
            start = self.non_negative(entry, where, "from_mm")
            stop = self.positive(entry, where, "to_mm")
            if not start < stop <= length:
                raise self.fail(
                    (*where, "to_mm"), f"must be above from_mm and at most length_mm ({length:g})"
                )
            zones.append(HardZone(start, stop, self.positive(entry, where, "kc_factor")))
        return tuple(zones)

    def point(self, data, path, key, default=...) -> tuple[float, float, float]:
        value = self.value(data, path, key, list, default)
        if len(value) != 3 or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in value
        ):
            raise self.fail((*path, key), f"must be [x, y, z] in mm, got {value}")
        return tuple(float(v) for v in value)

    def box(self, data, path) -> Box:
        spans = []
        for key in ("x", "y"):
            span = self.value(data, path, key, list)
            if len(span) != 2 or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in span
            ):
                raise self.fail((*path, key), f"must be [min, max] in mm, got {span}")
            if not span[0] < span[1]:
                raise self.fail((*path, key), f"min must be below max, got {span}")
            spans.append((float(span[0]), float(span[1])))
        return Box(*spans)

    def stock(self, data, materials) -> StockSpec:
        raw, path = data["stock"], ("stock",)
        self.table(raw, path, ("x", "y", "top_z", "material", "cell_mm", "regions", "hard_spots"))
        box = self.box(raw, path)
        cell = self.positive(raw, path, "cell_mm", 0.5)
        regions, spots = [], []
        for i, entry in enumerate(self.value(raw, path, "regions", list, [])):
            where = (*path, "regions", i)
            self.table(entry, where, ("x", "y", "top_z"))
            regions.append(
                HeightRegion(self.box(entry, where), self.value(entry, where, "top_z", float))
            )
        for i, entry in enumerate(self.value(raw, path, "hard_spots", list, [])):
            where = (*path, "hard_spots", i)
            self.table(entry, where, ("x", "y", "kc_factor"))
            spots.append(HardSpot(self.box(entry, where), self.positive(entry, where, "kc_factor")))
        return StockSpec(
            box=box,
            top_z=self.value(raw, path, "top_z", float),
            material=self.material(raw, path, materials),
            cell_mm=cell,
            regions=tuple(regions),
            hard_spots=tuple(spots),
        )

    def moves(self, data, start) -> tuple[Move, ...]:
        raw = data["moves"]
        if not isinstance(raw, list) or not raw:
            raise self.fail(("moves",), "must be an array of tables ([[moves]])")
        x, y, z = start
        feed = None
        moves = []
        for i, entry in enumerate(raw):
            path = ("moves", i)
            self.table(entry, path, ("x", "y", "z", "rapid", "feed_mm_min"))
            x = self.value(entry, path, "x", float, x)
            y = self.value(entry, path, "y", float, y)
            z = self.value(entry, path, "z", float, z)
            rapid = self.value(entry, path, "rapid", bool, False)
            if "feed_mm_min" in entry:
                feed = self.positive(entry, path, "feed_mm_min")
            if not rapid and feed is None:
                raise self.fail((*path, "feed_mm_min"), "missing (no feed programmed yet)")
            moves.append(Move(x, y, z, rapid, 0.0 if rapid else feed))
        return tuple(moves)

    def variants(self, data, scenario: Scenario) -> tuple[PartVariant, ...]:
        """`[[vary]]`: how single parts of the series differ (one entry a part)."""
        raw = self.value(data, (), "vary", list, [])
        variants, seen = [], {}
        keys = ("part", "allowance_mm", "hard_zones", "hard_spots", "edits")
        for i, entry in enumerate(raw):
            path = ("vary", i)
            if not isinstance(entry, dict):
                raise self.fail(path, "must be a table ([[vary]])")
            self.table(entry, path, keys)
            part = self.int_in(entry, path, "part", 1, scenario.parts)
            if part in seen:
                raise self.fail((*path, "part"), f"part {part} is already vary[{seen[part]}]")
            seen[part] = i
            on_stock = scenario.stock is not None
            for key in ("edits", "hard_zones") if on_stock else ("hard_spots",):
                if key in entry:
                    what = "[[segments]]" if key != "hard_spots" else "[stock]"
                    raise self.fail((*path, key), f"goes with a {what} scenario")
            segments = list(scenario.segments)
            edits = self.edits(entry, path, segments, scenario.materials)
            for index, changes in edits:
                segments[index] = replace(segments[index], **dict(changes))
            allowance = self.value(entry, path, "allowance_mm", float, 0.0)
            for k, seg in enumerate(segments):
                if seg.kind == "cut" and seg.depth_mm > 0 and seg.depth_mm + allowance < 0:
                    raise self.fail(
                        (*path, "allowance_mm"),
                        f"leaves segments[{k}] a negative depth ({seg.depth_mm + allowance:g})",
                    )
            zones = []
            for k, zone in enumerate(self.value(entry, path, "hard_zones", list, [])):
                where = (*path, "hard_zones", k)
                index = self.segment_index(zone, where, segments)
                rest = {key: value for key, value in zone.items() if key != "segment"}
                (made,) = self.hard_zones([rest], where[:-1], segments[index].length_mm)
                zones.append((index, made))
            spots = []
            for k, spot in enumerate(self.value(entry, path, "hard_spots", list, [])):
                where = (*path, "hard_spots", k)
                self.table(spot, where, ("x", "y", "kc_factor"))
                spots.append(
                    HardSpot(self.box(spot, where), self.positive(spot, where, "kc_factor"))
                )
            variants.append(PartVariant(part, allowance, tuple(zones), tuple(spots), tuple(edits)))
        return tuple(variants)

    def segment_index(self, entry, path: KeyPath, segments: list[Segment]) -> int:
        """An entry's `segment`: the index of a cut in [[segments]] (0 the first)."""
        if not isinstance(entry, dict):
            raise self.fail(path, "must be a table")
        index = self.int_in(entry, path, "segment", 0, len(segments) - 1)
        if segments[index].kind != "cut":
            raise self.fail(
                (*path, "segment"), f"segments[{index}] is a {segments[index].kind}, not a cut"
            )
        return index

    def edits(self, entry, path: KeyPath, segments: list[Segment], materials):
        """A part's edited segments: (index, the keys changed), each checked as [[segments]]."""
        edits = []
        for k, edit in enumerate(self.value(entry, path, "edits", list, [])):
            where = (*path, "edits", k)
            index = self.segment_index(edit, where, segments)
            self.table(edit, where, ("segment", *EDITABLE))
            changes = []
            for key in EDITABLE:
                if key not in edit:
                    continue
                if key == "material":
                    value = self.material(edit, where, materials)
                elif key in ("depth_mm", "width_mm"):
                    value = self.non_negative(edit, where, key)
                else:
                    value = self.positive(edit, where, key)
                changes.append((key, value))
            if not changes:
                raise self.fail(where, f"changes nothing (keys: {', '.join(EDITABLE)})")
            edited = replace(segments[index], **dict(changes))
            for zone in edited.hard_zones:
                if zone.to_mm > edited.length_mm:
                    raise self.fail(
                        (*where, "length_mm"),
                        f"cuts off segments[{index}]'s hard zone ending at {zone.to_mm:g} mm",
                    )
            edits.append((index, tuple(changes)))
        return edits

    def events(self, data, scenario: Scenario) -> tuple[Event, ...]:
        raw = self.value(data, (), "events", list, [])
        events = []
        for i, entry in enumerate(raw):
            path = ("events", i)
            if not isinstance(entry, dict):
                raise self.fail(path, "must be a table ([[events]])")
            kind = self.choice(entry, path, "kind", tuple(_EVENT_KEYS))
            self.table(entry, path, _EVENT_KEYS[kind])
            if kind == "breakage":
                event = Event(
                    kind,
                    at_mm=self.non_negative(entry, path, "at_mm"),
                    part=self.int_in(entry, path, "part", 1, scenario.parts, 1),
                    spike_factor=self.positive(entry, path, "spike_factor", 3.0),
                    spike_s=self.positive(entry, path, "spike_s", 0.05),
                    residual=self.non_negative(entry, path, "residual", 0.05),
                )
            else:
                event = self.timed_event(entry, path, kind, scenario)
            events.append(event)
        return tuple(events)

    def timed_event(self, entry: dict, path: KeyPath, kind: str, scenario: Scenario) -> Event:
        """A freeze or link loss: from `start_s`, or from `at_mm` on `part`; one, not both."""
        duration = self.positive(entry, path, "duration_s")
        if ("start_s" in entry) == ("at_mm" in entry):
            raise self.fail(path, f"{kind} needs either start_s or at_mm (with part), not both")
        if "start_s" in entry:
            if "part" in entry:
                raise self.fail((*path, "part"), "goes with at_mm, not start_s")
            return Event(
                kind, start_s=self.non_negative(entry, path, "start_s"), duration_s=duration
            )
        return Event(
            kind,
            at_mm=self.non_negative(entry, path, "at_mm"),
            part=self.int_in(entry, path, "part", 1, scenario.parts, 1),
            duration_s=duration,
        )
