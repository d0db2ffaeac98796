"""The bench OPC UA server's address space: where each plant tag lives, with its OPC UA type,
unit and range, laid out like an OPC 40501-1 (umati MachineTool) instance.

The one truth for `hil/opcua_server.py`, `docs/opcua.md` and the tests, as
`hil/register_map.py` is for Modbus. Pure data and pure functions: never does I/O.

Browse names follow OPC 40501-1 where it has the value (`Monitoring/<Channel>/FeedOverride`,
`ChannelState`, `Spindle/IsRotating`, `Production/ActiveProgram/Name`), then OPC 40502 (CNC
Systems: `ActLoad`, `ActPower`, `ActSpeed`, `ActFeedrate`, `CmdFeedrate`, `PosTcpBcsX`), then
names of our own. All of them are qualified by the bench's own `NAMESPACE_URI`: the bench does
not load the companion nodesets, so on a real umati server the standard names carry the
MachineTool namespace (and `Machines` the Machinery one) instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from asyncua import ua

from hil.register_map import AGENT_OVERRIDE, AGENT_OVERRIDE_RANGE_PCT, BY_NAME, RUN_STATE

NAMESPACE_URI = "urn:edge-agent:hil:machine-tool"
#: The machine object's browse name under `Objects/Machines` unless the controller is given one.
MACHINE = "HIL-1"

#: OPC 40501-1 ChannelState (12.1): Active 0, Interrupted 1 ("can be restarted"), Reset 2 (idle).
CHANNEL_STATE = {
    RUN_STATE["running"]: 0,
    RUN_STATE["feed_hold"]: 1,
    RUN_STATE["alarm"]: 1,
    RUN_STATE["idle"]: 2,
    RUN_STATE["stopped"]: 2,
}

#: Register-map unit -> (UNECE Rec. 20 common code, display name), as OPC UA's EUInformation
#: carries them (OPC 10000-8, 5.6.3).
UNITS = {
    "%": ("P1", "%"),
    "mm/min": ("H81", "mm/min"),
    "rpm": ("RPM", "r/min"),
    "kW": ("KWT", "kW"),
    "degC": ("CEL", "°C"),
    "mm": ("MMT", "mm"),
    "s": ("SEC", "s"),
}
UNECE_URI = "http://www.opcfoundation.org/UA/units/un/cefact"


@dataclass(frozen=True)
class Variable:
    """One plant tag as an OPC UA variable: `path` is its browse names below the machine."""

    tag: str
    path: str
    type: ua.VariantType
    eu_range: tuple[float, float] | None = None

    @property
    def unit(self) -> str:
        return BY_NAME[self.tag].unit

    @property
    def writable(self) -> bool:
        return self.tag == AGENT_OVERRIDE

    @property
    def browse_names(self) -> tuple[str, ...]:
        return tuple(self.path.split("/"))

    def value(self, plant_value: float) -> object:
        """The plant's value as this variable's OPC UA value."""
        if self.tag == "run_state":
            return CHANNEL_STATE[int(plant_value)]
        if self.type is ua.VariantType.Boolean:
            return plant_value != 0
        if self.type is ua.VariantType.String:
            return str(int(plant_value))
        if self.type in (ua.VariantType.UInt32, ua.VariantType.Int32):
            return round(plant_value)
        return float(plant_value)


_D, _B, _U = ua.VariantType.Double, ua.VariantType.Boolean, ua.VariantType.UInt32
_SPINDLE, _CHANNEL = "Monitoring/Spindle", "Monitoring/Channel"

VARIABLES: tuple[Variable, ...] = (
    # A drive's short-time overload reaches about twice its S1 rating: 0-200 % is its span.
    Variable("spindle_load", f"{_SPINDLE}/ActLoad", _D, (0.0, 200.0)),
    Variable("spindle_power", f"{_SPINDLE}/ActPower", _D),
    Variable("spindle_speed", f"{_SPINDLE}/ActSpeed", _D),
    Variable("spindle_on", f"{_SPINDLE}/IsRotating", _B),
    Variable("spindle_temperature", f"{_SPINDLE}/ActTemperature", _D),
    # A panel's feed knob commonly spans 0-120 %.
    Variable("feed_knob", f"{_CHANNEL}/FeedOverride", _D, (0.0, 120.0)),
    Variable(
        AGENT_OVERRIDE,
        f"{_CHANNEL}/AgentFeedOverride",
        _D,
        tuple(float(v) for v in AGENT_OVERRIDE_RANGE_PCT),
    ),
    Variable("programmed_feed", f"{_CHANNEL}/CmdFeedrate", _D),
    Variable("actual_feed", f"{_CHANNEL}/ActFeedrate", _D),
    Variable("run_state", f"{_CHANNEL}/ChannelState", ua.VariantType.Int32),
    Variable("program_running", f"{_CHANNEL}/ProgramRunning", _B),
    Variable("block_number", f"{_CHANNEL}/BlockNumber", _U),
    Variable("tool_number", f"{_CHANNEL}/ActToolNumber", _U),
    Variable("x_position", f"{_CHANNEL}/PosTcpBcsX", _D),
    Variable("y_position", f"{_CHANNEL}/PosTcpBcsY", _D),
    Variable("z_position", f"{_CHANNEL}/PosTcpBcsZ", _D),
    Variable("cycle_time", f"{_CHANNEL}/CycleTime", _D),
    Variable("program_number", "Production/ActiveProgram/Name", ua.VariantType.String),
    Variable("in_alarm", "Notification/InAlarm", _B),
    Variable("alarm_spindle_overload", "Notification/Alarms/SpindleOverload", _B),
    Variable("alarm_servo", "Notification/Alarms/Servo", _B),
    Variable("alarm_emergency_stop", "Notification/Alarms/EmergencyStop", _B),
)

BY_TAG: dict[str, Variable] = {v.tag: v for v in VARIABLES}


def objects() -> tuple[str, ...]:
    """Every object path below the machine, parents before children."""
    paths = {"/".join(v.browse_names[:i]) for v in VARIABLES for i in range(1, len(v.browse_names))}
    return tuple(sorted(paths, key=lambda p: (p.count("/"), p)))


def unece_id(code: str) -> int:
    """The UnitId of a UNECE common code: its ASCII bytes as one big-endian integer."""
    return int.from_bytes(code.encode("ascii"), "big")
