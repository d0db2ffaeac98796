"""Every numeric configuration key's admitted range, with its reason.

One table per section, by key: `config.py` refuses a value outside its range with the reason
in the one-line error, `deploy/edge-agent.example.toml` and `deploy/edge-collector.example.toml`
document each range beside its key (tests/test_config_limits.py holds them to this table), and
every default lies inside its range. The bounds come from the machine (what a controller's
registers and override can mean), from physics (a spindle's rating, a tool's breakage), from
the agent's own loops (a period it can keep, a stop that fits systemd's `TimeoutStopSec=30`)
and from the wire (what a value or a frame can carry). Relations between keys (a stale limit
against its poll period, the override range around the neutral value) are checked in
`config.py`, where both keys are known.

Data only: imports nothing of the agent but `Range`.
"""

from __future__ import annotations

from .tomlcheck import Range

# -- shared by several sections -----------------------------------------------------------

#: Reconnect backoffs (controller, upstream, bridge, the collector's broker).
RECONNECT = {
    "reconnect_min_s": Range(
        0.01, 60.0, "under 10 ms a refused connect busy-loops; over a minute a blip costs one"
    ),
    "reconnect_max_s": Range(
        0.01, 3600.0, "the doubling's cap: a peer back after an outage is found within the hour"
    ),
}

#: The MQTT settings of the agent's [upstream] and of the collector's [broker].
BROKER = {
    "port": Range(0, 65535, "a TCP port; 0 is 1883, or 8883 with TLS", integer=True),
    "keepalive_s": Range(
        5,
        3600,
        "under 5 s pings outweigh payloads; a dead broker hides an hour at most",
        integer=True,
    ),
    **RECONNECT,
}

#: A tag's or a bridge channel's calibration, value = raw x scale + offset.
SCALE = Range(
    1e-9, 1e9, "a nano- to a giga-unit per count; also the wire's default quantum", signed=True
)
OFFSET = Range(-1e9, 1e9, "a zero shift: past 1e9 a float64 loses the register's resolution")

# -- the agent's sections -----------------------------------------------------------------

CONTROLLER = {
    "port": Range(1, 65535, "a TCP port (502 is Modbus TCP's)", integer=True),
    "unit_id": Range(0, 247, "Modbus unit ids; 248..255 are reserved", integer=True),
    "baudrate": Range(
        300, 4_000_000, "from the slowest modem to USB-serial chips' fastest", integer=True
    ),
    "stopbits": Range(1, 2, "what a serial line has", integer=True),
    "bytesize": Range(7, 8, "what Modbus RTU and ASCII use", integer=True),
    "timeout_s": Range(
        0.01, 10.0, "ms on a LAN, tens at 9600 baud; past 10 s the link is dead (a stop waits one)"
    ),
    **RECONNECT,
    "max_gap_registers": Range(0, 125, "one read's registers at most (FC 3/4)", integer=True),
    "max_gap_bits": Range(0, 2000, "one read's bits at most (FC 1/2)", integer=True),
    "max_registers_per_read": Range(
        4, 125, "a float64 (4 registers) must fit; 125 is Modbus's maximum", integer=True
    ),
    "max_bits_per_read": Range(1, 2000, "2000 is Modbus's maximum", integer=True),
}

POLL_GROUP = {
    "period_s": Range(
        0.001, 3600.0, "a Modbus round trip takes about a ms; slower than an hour is not live"
    ),
    # Also at least period_s: a value is not late before its next poll is due.
    "stale_after_s": Range(0.001, 86400.0, "at least the period, at most a day"),
}

TAG = {
    "address": Range(0, 65535, "the Modbus address space", integer=True),
    "bit": Range(0, 15, "the bits of a 16-bit register", integer=True),
    "width": Range(1, 16, "the bits of a 16-bit register, from `bit` up", integer=True),
    "scale": SCALE,
    "offset": OFFSET,
}

TELEMETRY = {
    "frame_interval_s": Range(
        0.1, 600.0, "ten frames a second at most; unframed samples are lost in a crash"
    ),
    "max_points_per_frame": Range(
        100,
        100_000,
        "a frame's size and memory; a collector takes 100000 points a frame "
        "(wire.MAX_FRAME_POINTS)",
        integer=True,
    ),
}

CHANNEL = {
    "quantum": Range(
        1e-9,
        1e9,
        "values travel as integers of it (at most 2^48): a nano- to a giga-unit",
        zero="the register's resolution",
    ),
    "deadband": Range(0.0, 1e9, "in the value's unit: up to heartbeats only"),
    "deadband_pct": Range(0.0, 100.0, "a share of the last value sent"),
    "heartbeat_s": Range(0.1, 86400.0, "a quiet channel shows it is alive once a day at least"),
}

#: Filter stages: at most this many per channel (each costs every sample; docs/filters.md).
MAX_FILTER_STAGES = 16
#: A filter frequency's lower bound, as a share of the rate the stage sees: below a millionth
#: of it a Butterworth pole sits so near z = 1 that double precision cannot place it (the
#: design fails at 1e-12).
MIN_RELATIVE_FREQUENCY = 1e-6
#: Stage parameters other than frequencies (which lie in fs x 1e-6 .. fs/2, open at fs/2).
FILTER = {
    "order": Range(1, 8, "Butterworth sections stay accurate to order 8", integer=True),
    "tau_s": Range(1e-6, 86400.0, "a microsecond smooths nothing at any rate, a day is no signal"),
    "window": Range(1, 100_000, "samples of state each stage keeps", integer=True),
    "hampel_window": Range(
        3, 31, "a median of up to 31 samples is cheap by insertion", integer=True
    ),
    "n_sigmas": Range(0.1, 100.0, "outliers past n deviations: under 0.1 every sample is one"),
    "factor": Range(2, 1000, "keep every factor-th sample", integer=True),
}

SPOOL = {
    "max_bytes": Range(
        1 << 20,
        1 << 50,
        "a MiB holds minutes of the standard load; a PiB is past any disk",
        integer=True,
    ),
    "max_age_s": Range(
        60.0, 366 * 86400.0, "under a minute a broker restart drops payloads; a year at most"
    ),
    "commit_interval_s": Range(
        0.1, 600.0, "uncommitted frames are lost in a crash: ten minutes at most"
    ),
}

#: The agent's [upstream] besides BROKER: what only a publisher has.
PUBLISHER = {
    "window": Range(
        1, 1000, "publishes in flight: memory, and the broker's receive maximum", integer=True
    ),
    "drain_on_stop_s": Range(0.1, 20.0, "the stop must fit systemd's TimeoutStopSec=30"),
    "file_rotate_bytes": Range(1 << 16, 1 << 40, "64 KiB to 1 TiB a file", integer=True),
    # Each costs some 250 bytes of the agent's memory while unacknowledged: 2.5 MB at most,
    # and 10,000 cover 28 s of round trip at the backlog drain target of 360 payloads/s.
    "max_unacked": Range(
        1, 10_000, "payloads sent and not yet stored by the plant: memory", integer=True
    ),
    "ack_timeout_s": Range(
        0.1,
        3600.0,
        "under 0.1 s the round trip through broker and collector is often slower (every payload "
        "sent twice); over an hour a dropped payload waits longer than most outages",
    ),
}
UPSTREAM = BROKER | PUBLISHER

SERVICE = {
    "stats_interval_s": Range(
        1.0, 86400.0, "a health line a second at most (the log is on the SD card)"
    ),
    "log_repeat_burst": Range(1, 1000, "lines of one message per window", integer=True),
    "log_repeat_window_s": Range(1.0, 86400.0, "a second to a day"),
}

BRIDGE = {
    "baudrate": CONTROLLER["baudrate"],
    "sample_hz": Range(1, 5000, "the board's limits (SET_RATES)", integer=True),
    "block_samples": Range(8, 496, "the board's limits (SET_RATES)", integer=True),
    "ping_interval_s": Range(
        0.05, 60.0, "the clock fit wants round trips every few s; under 50 ms they crowd the link"
    ),
    "command_timeout_s": Range(0.01, 10.0, "a USB CDC command is answered in about a ms"),
    **RECONNECT,
}

BRIDGE_CHANNEL = {
    "index": Range(0, 3, "0 the ADC, 1..3 the accelerometer's x, y, z", integer=True),
    "scale": SCALE,
    "offset": OFFSET,
}

#: The widest feed override a controller means: CNC feed-override ranges end at 120-200 %;
#: more is a unit mistake (the agent wrote 10000).
MAX_OVERRIDE_PCT = 200.0
#: Tool and program numbers: a 32-bit register's values.
MAX_NUMBER = (1 << 32) - 1

CONTROL = {
    "period_s": Range(
        0.001, 1.0, "past 1 kHz it only burns a core; a feed hold comes within two periods"
    ),
    "realtime_priority": Range(0, 99, "SCHED_FIFO's priorities; 0: normal", integer=True),
    # Also at least twice the poll period of the signal and the run state, and the loop's.
    "stale_s": Range(0.002, 10.0, "a load older than 10 s says nothing of the cut now"),
    # Also at least twice the signal's poll period.
    "frozen_s": Range(0.002, 60.0, "a live load moves within a minute", zero="off"),
    "target_load_pct": Range(
        1.0, 200.0, "% of the spindle drive's rating: past 200 % is an overload on purpose"
    ),
    "teach_fraction": Range(0.1, 1.0, "a share of the taught peak: above 1 aims past it"),
    "hard_limit_pct": Range(
        1.0, 250.0, "% of the drive's rating: a limit past 250 % is protection off"
    ),
    # Also below target_load_pct.
    "idle_load_pct": Range(0.1, 100.0, "a spindle turning in air", zero="learned"),
    "idle_settle_s": Range(0.01, 60.0, "a spindle comes up to speed within seconds"),
    "override_min_pct": Range(
        1.0, 100.0, "the law's floor: 0 is a feed hold, over 100 it could never slow a cut"
    ),
    "override_max_pct": Range(
        1.0, MAX_OVERRIDE_PCT, "CNC feed-override ranges end at 120-200 %: more is a mistake"
    ),
    # These two also within override_min_pct..override_max_pct.
    "safe_override_pct": Range(1.0, 100.0, "a fault: min(current, this), never a raise"),
    "neutral_override_pct": Range(
        1.0, 100.0, "written when control ends: never a hold, never a boost"
    ),
    # These two also within override_min_pct..override_max_pct.
    "air_override_pct": Range(1.0, MAX_OVERRIDE_PCT, "within the override range"),
    "entry_override_pct": Range(
        1.0, MAX_OVERRIDE_PCT, "within the override range", zero="the last cut's override"
    ),
    "entry_margin_pct": Range(0.1, 100.0, "load over idle that means the tool entered"),
    "entry_s": Range(0.001, 10.0, "about a cutter radius at the feed"),
    "exit_fraction": Range(
        0.01, 0.9, "of the target's cutting load: 0 never exits, 1 exits mid-cut"
    ),
    "exit_s": Range(0.001, 10.0, "how long the load stays low before the cut ended"),
    # Not both 0: the law would never move.
    "kp": Range(0.0, 10.0, "the share of an error step corrected at once; past 10 it rings"),
    "ki": Range(0.0, 100.0, "per second: 4 removes the error in about a second"),
    "deadband": Range(0.0, 0.5, "a relative error counted as on target"),
    "rise_pct_per_s": Range(0.1, 10_000.0, "raise slowly; 0 would never raise the feed again"),
    # Also at least rise_pct_per_s and override_max_pct - override_min_pct (in a second).
    "fall_pct_per_s": Range(1.0, 100_000.0, "cut fast: 0 could never lower the feed"),
    "overload_persist_s": Range(
        0.001, 5.0, "1 s as Heidenhain AFC; an overload held longer breaks tools"
    ),
    "breakage_spike_ratio": Range(1.05, 10.0, "x the cutting level: near 1 every cut spikes"),
    "breakage_drop_fraction": Range(0.01, 0.95, "of the cutting level, on its way to the rub"),
    "breakage_window_s": Range(0.01, 10.0, "chip-then-rub lasts a fraction of a second"),
    "refresh_s": Range(
        0.01,
        60.0,
        "for a controller-side watchdog that reverts an override",
        zero="write on change only",
    ),
    # Also at least twice the override tag's poll period: a write reads back at a poll.
    "verify_s": Range(0.01, 60.0, "a write not read back this long is re-sent"),
    "tools": Range(0, MAX_NUMBER, "a 32-bit register's value", integer=True),
    "programs": Range(0, MAX_NUMBER, "a 32-bit register's value", integer=True),
}

# -- the collector -------------------------------------------------------------------------

COLLECTOR = {
    "retention_days": Range(
        1.0,
        36500.0,
        "longer than the agents' spool age, which a reconnecting agent replays",
        zero="keep all",
    ),
    "session_expiry_s": Range(
        0, 1 << 31, "MQTT 5's expiry is 32-bit; 0 ends the session at disconnect", integer=True
    ),
}
