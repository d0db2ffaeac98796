"""The simulated controller's register map: the one truth that `docs/register-map.md`,
the demo configuration and the replay mapping describe.

Addresses are zero-based protocol addresses (what goes on the wire), not the
1-based "40001" notation of some controller manuals.
"""

from __future__ import annotations

from edge_agent.registers import Order, Table, Tag, ValueType

_I, _H, _D = Table.INPUT, Table.HOLDING, Table.DISCRETE
T = ValueType

#: Run-state codes in `run_state`.
RUN_STATE = {"idle": 0, "running": 1, "feed_hold": 2, "stopped": 3, "alarm": 4}

#: Bits of the alarm word (input register 8), each also a bitfield tag.
ALARM_BITS = {"alarm_spindle_overload": 0, "alarm_servo": 1, "alarm_emergency_stop": 2}

#: The agent's own feed-override request: the only register the agent may write.
AGENT_OVERRIDE = "agent_feed_override"
AGENT_OVERRIDE_RANGE_PCT = (0, 150)

TAGS: tuple[Tag, ...] = (
    Tag("spindle_load", 0, _I, T.UINT16, scale=0.1, unit="%"),
    Tag("spindle_speed", 1, _I, T.UINT16, unit="rpm"),
    Tag("programmed_feed", 2, _I, T.FLOAT32, unit="mm/min"),
    Tag("actual_feed", 4, _I, T.FLOAT32, unit="mm/min"),
    Tag("feed_knob", 6, _I, T.UINT16, unit="%"),
    Tag("run_state", 7, _I, T.UINT16),
    *(Tag(name, 8, _I, T.BITFIELD, bit=bit) for name, bit in ALARM_BITS.items()),
    Tag("x_position", 10, _I, T.INT32, scale=0.001, unit="mm"),
    Tag("y_position", 12, _I, T.INT32, scale=0.001, unit="mm"),
    Tag("z_position", 14, _I, T.INT32, scale=0.001, unit="mm"),
    Tag("program_number", 16, _I, T.UINT32),
    Tag("tool_number", 18, _I, T.UINT16),
    Tag("block_number", 19, _I, T.UINT16),
    # Word-swapped, as many PLCs store 32-bit floats.
    Tag("spindle_power", 20, _I, T.FLOAT32, word_order=Order.LITTLE, unit="kW"),
    Tag("cycle_time", 22, _I, T.FLOAT64, unit="s"),
    Tag("spindle_temperature", 26, _I, T.INT16, scale=0.1, unit="degC"),
    Tag(AGENT_OVERRIDE, 100, _H, T.UINT16, unit="%"),
    Tag("spindle_on", 0, _D, T.BOOL),
    Tag("program_running", 1, _D, T.BOOL),
    Tag("in_alarm", 2, _D, T.BOOL),
)

BY_NAME: dict[str, Tag] = {tag.name: tag for tag in TAGS}
