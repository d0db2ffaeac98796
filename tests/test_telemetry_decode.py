"""`edge-agent decode`: frames as JSON lines; bad bodies reported one line each, never fatal."""

import io
import json
import math

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.samples import Quality, Sample
from edge_agent.telemetry.decode import decode_sink
from edge_agent.telemetry.frames import Batcher, event_body
from edge_agent.telemetry.sink import FrameSink

T0 = 1_800_000_000_000_000_000


def data_body(value=1.5):
    batcher = Batcher("boot", {"site": "s", "machine": "m"})
    batcher.add(Sample("spindle_load", T0, value))
    batcher.add(Sample("spindle_power", T0 + 10**6, math.nan, Quality.BAD))
    return batcher.close()


def run_decode(path):
    out, err = io.StringIO(), io.StringIO()
    counts = decode_sink(str(path), out, err)
    lines = [json.loads(line, parse_constant=not_json) for line in out.getvalue().splitlines()]
    return counts, lines, err.getvalue()


def not_json(token):
    raise AssertionError(f"{token} is not valid JSON")


def test_frames_print_as_json_lines_with_their_sequence_numbers(tmp_path):
    sink = FrameSink(tmp_path / "s.db")
    sink.store(
        [("event", event_body("boot", T0, "agent_start", {"version": "x"})), ("data", data_body())]
    )
    sink.close()
    (printed, bad), lines, err = run_decode(tmp_path / "s.db")
    assert (printed, bad, err) == (2, 0, "")
    assert [line["seq"] for line in lines] == [1, 2]
    assert lines[0]["kind"] == "agent_start"
    assert lines[1]["ch"]["spindle_load"]["v"] == [1.5]
    assert lines[1]["ch"]["spindle_power"]["v"] == ["NaN"]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=50)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=5))
def test_bad_bodies_are_counted_and_reported_while_good_ones_print(tmp_path_factory, junk):
    path = tmp_path_factory.mktemp("fuzz") / "s.db"
    sink = FrameSink(path)
    bodies = [("data", data_body())]
    for blob in junk:
        bodies += [("data", blob), ("data", data_body())]
    seqs = sink.store(bodies)
    sink.close()
    (printed, bad), lines, err = run_decode(path)
    assert printed + bad == len(seqs)
    assert printed >= len(junk) + 1
    assert len(err.splitlines()) == bad
    for line in err.splitlines():
        assert line.startswith(f"{path}: frame seq ")


def test_unknown_version_is_reported_not_printed(tmp_path):
    sink = FrameSink(tmp_path / "s.db")
    sink.store([("data", msgpack.packb({"v": 9, "type": "data"}))])
    sink.close()
    (printed, bad), _, err = run_decode(tmp_path / "s.db")
    assert (printed, bad) == (0, 1)
    assert err.strip() == f"{tmp_path / 's.db'}: frame seq 1: unknown frame version 9"


def test_a_body_holding_what_v0_never_writes_is_reported_not_fatal(tmp_path):
    envelope = b"\x83\xa1v\x00\xa4type\xa5event\xa6detail"
    timestamp = msgpack.packb({"v": 0, "type": "event", "detail": msgpack.Timestamp(1, 0)})
    deep = envelope + b"\x91" * 200 + b"\x90"
    sink = FrameSink(tmp_path / "s.db")
    sink.store(
        [("data", data_body()), ("event", timestamp), ("event", deep), ("data", data_body())]
    )
    sink.close()
    (printed, bad), lines, err = run_decode(tmp_path / "s.db")
    assert (printed, bad) == (2, 2)
    assert [line["seq"] for line in lines] == [1, 4]
    assert err.splitlines() == [
        f"{tmp_path / 's.db'}: frame seq 2: holds a Timestamp, which v0 frames never contain",
        f"{tmp_path / 's.db'}: frame seq 3: nested deeper than 32 levels",
    ]


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=20,
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=50)
@given(st.dictionaries(st.sampled_from(["v", "type", "ch", "t0", "detail"]), msgpack_values))
def test_any_msgpack_map_either_prints_as_valid_json_or_is_reported(tmp_path_factory, fields):
    path = tmp_path_factory.mktemp("shape") / "s.db"
    sink = FrameSink(path)
    sink.store([("data", msgpack.packb(fields, use_bin_type=True)), ("data", data_body())])
    sink.close()
    (printed, bad), lines, err = run_decode(path)
    assert printed + bad == 2 and len(err.splitlines()) == bad
    assert lines[-1]["seq"] == 2
