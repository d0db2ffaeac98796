"""`edge-agent decode`: payloads as JSON lines with names and units; bad payloads reported
one line each and counted, never fatal; v1 payloads (no checksum) flagged unchecked."""

import csv
import io
import itertools
import json
import math

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.cli import main
from edge_agent.telemetry import wire
from edge_agent.telemetry.decode import decode_spool, decode_stream
from edge_agent.telemetry.spool import Spool

BOOT = bytes(range(8))
T0 = 1_800_000_000_000_000  # µs
TABLE = [
    wire.Channel(0, "spindle_load", "%", 0.1, "sampled", 100_000, 0),
    wire.Channel(1, "spindle_power", "kW", 0.001, "sampled", 100_000, 0),
]


def birth():
    return wire.birth(BOOT, 1, T0, "0.1.0", bytes(8), TABLE)


def data(value=1.5, seq=3):
    series = {
        0: wire.Series((T0,), (value,)),
        1: wire.Series((T0,), (math.nan,)),
    }
    return wire.data(BOOT, seq, TABLE, series)


def run_decode(path):
    out, err = io.StringIO(), io.StringIO()
    counts = decode_spool(str(path), out, err)
    lines = [json.loads(line, parse_constant=not_json) for line in out.getvalue().splitlines()]
    return counts, lines, err.getvalue()


def not_json(token):
    raise AssertionError(f"{token} is not valid JSON")


def test_payloads_print_as_json_lines_with_names_units_and_sequence_numbers(tmp_path):
    spool = Spool(tmp_path / "s.db")
    spool.store(
        [
            ("birth", BOOT, birth()),
            ("event", BOOT, wire.event(BOOT, 2, T0, "agent_start", {"version": "x"})),
            ("data", BOOT, data()),
        ]
    )
    spool.close()
    (printed, bad), lines, err = run_decode(tmp_path / "s.db")
    assert (printed, bad, err) == (3, 0, "")
    assert [line["seq"] for line in lines] == [1, 2, 3]
    assert [c["name"] for c in lines[0]["channels"]] == ["spindle_load", "spindle_power"]
    assert (lines[1]["event"], lines[1]["detail"]) == ("agent_start", {"version": "x"})
    load, power = lines[2]["channels"]["spindle_load"], lines[2]["channels"]["spindle_power"]
    assert (load["unit"], load["t"], load["v"]) == ("%", [T0], [1.5])
    assert (power["v"], power["q"]) == (["NaN"], [[0, 2]])


def test_a_data_frame_without_its_birth_is_reported(tmp_path):
    spool = Spool(tmp_path / "s.db")
    spool.store([("data", BOOT, data())])
    spool.close()
    (printed, bad), _, err = run_decode(tmp_path / "s.db")
    assert (printed, bad) == (0, 1)
    assert (
        err.splitlines()[0]
        == f"{tmp_path / 's.db'}: frame seq 1: no birth for boot {BOOT.hex()} before this frame"
    )


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=50)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=5))
def test_bad_payloads_are_counted_and_reported_while_good_ones_print(tmp_path_factory, junk):
    path = tmp_path_factory.mktemp("fuzz") / "s.db"
    spool = Spool(path)
    bodies = [("birth", BOOT, birth()), ("data", BOOT, data())]
    for blob in junk:
        bodies += [("data", BOOT, blob), ("data", BOOT, data())]
    seqs = spool.store(bodies)
    spool.close()
    (printed, bad), lines, err = run_decode(path)
    assert printed + bad == len(seqs)
    assert printed >= len(junk) + 2
    *reported, summary = err.splitlines()
    assert len(reported) == bad
    for line in reported:
        assert line.startswith(f"{path}: frame seq ")
    assert summary.startswith(f"{path}: {printed} printed, {bad} refused (")


def test_unknown_version_is_reported_not_printed(tmp_path):
    spool = Spool(tmp_path / "s.db")
    spool.store([("data", BOOT, wire.seal([9, 1]))])
    spool.close()
    (printed, bad), _, err = run_decode(tmp_path / "s.db")
    assert (printed, bad) == (0, 1)
    assert err.splitlines() == [
        f"{tmp_path / 's.db'}: frame seq 1: unknown version 9 (this decoder reads v2, and v1"
        " without a checksum)",
        f"{tmp_path / 's.db'}: 0 printed, 1 refused (0 failed their checksum), 0 unchecked"
        " (wire v1, no checksum)",
    ]


def damaged(payload, byte=-8):
    out = bytearray(payload)
    out[byte] ^= 0x01
    return bytes(out)


def test_a_payload_that_fails_its_checksum_is_reported_counted_and_not_printed(tmp_path):
    spool = Spool(tmp_path / "s.db")
    spool.store([("birth", BOOT, birth()), ("data", BOOT, damaged(data())), ("data", BOOT, data())])
    spool.close()
    (printed, bad), lines, err = run_decode(tmp_path / "s.db")
    assert (printed, bad, [line["seq"] for line in lines]) == (2, 1, [1, 3])
    where = tmp_path / "s.db"
    assert err.splitlines() == [
        f"{where}: frame seq 2: checksum mismatch: the CRC-32 of its first"
        f" {len(data()) - 4} bytes is not its last 4",
        f"{where}: 2 printed, 1 refused (1 failed their checksum), 0 unchecked"
        " (wire v1, no checksum)",
    ]


def v1(payload):
    """The payload as the v1 writer made it (no checksum), as a spool from before holds it."""
    return msgpack.packb([1, *msgpack.unpackb(payload)[1:-1]])


def test_a_spool_from_before_the_checksum_prints_flagged_unchecked_and_counted(tmp_path):
    spool = Spool(tmp_path / "s.db")
    spool.store([("birth", BOOT, v1(birth())), ("data", BOOT, v1(data())), ("data", BOOT, data())])
    spool.close()
    (printed, bad), lines, err = run_decode(tmp_path / "s.db")
    assert (printed, bad) == (3, 0)
    assert [line.get("unchecked", False) for line in lines] == [True, True, False]
    assert lines[1]["channels"] == lines[2]["channels"]
    assert err.splitlines() == [
        f"{tmp_path / 's.db'}: 3 printed, 0 refused (0 failed their checksum), 2 unchecked"
        " (wire v1, no checksum)"
    ]


def test_a_stream_of_payloads_decodes_like_a_spool_and_csv_has_a_row_per_sample(tmp_path):
    stream = tmp_path / "capture.bin"
    # then a payload of an unknown version, and one cut short
    stream.write_bytes(birth() + data(2.5) + wire.seal([9, 1]) + b"\x92\x09")
    out, err = io.StringIO(), io.StringIO()
    with open(stream, "rb") as f:
        assert decode_stream(f, "capture.bin", out, err, as_csv=True) == (2, 2)
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows == [
        ["seq", "boot", "channel", "unit", "t_us", "value", "quality"],
        ["3", BOOT.hex(), "spindle_load", "%", str(T0), "2.5", "0"],  # the payload's own seq
        ["3", BOOT.hex(), "spindle_power", "kW", str(T0), "NaN", "2"],
    ]
    end = len(birth() + data(2.5) + wire.seal([9, 1]))
    assert err.getvalue().splitlines() == [
        "capture.bin: payload 3: unknown version 9 (this decoder reads v2, and v1 without a"
        " checksum)",
        f"capture.bin: payload 4: truncated at byte {end} of {end + 2}",
        "capture.bin: 2 printed, 2 refused (0 failed their checksum), 0 unchecked"
        " (wire v1, no checksum)",
    ]


def test_a_stream_checks_each_payload_as_it_was_captured(tmp_path):
    """The bytes the checksum covers, not the payload unpacked and packed again (which
    writes a checksum of a small value shorter, and would refuse a good payload)."""
    deaths = (wire.death(BOOT, s) for s in itertools.count(1))
    small = next(p for p in deaths if int.from_bytes(p[-4:], "big") < 1 << 16)
    stream = tmp_path / "capture.bin"
    stream.write_bytes(birth() + small + damaged(data()))
    out, err = io.StringIO(), io.StringIO()
    with open(stream, "rb") as f:
        assert decode_stream(f, "capture.bin", out, err) == (2, 1)
    assert "payload 3: checksum mismatch" in err.getvalue()


def test_the_decode_command_reads_a_capture_file(tmp_path, capsys):
    stream = tmp_path / "capture.bin"
    stream.write_bytes(birth() + data())
    assert main(["decode", str(stream)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["seq"], line["kind"]) for line in lines] == [(1, "birth"), (3, "data")]
