"""Teach-in: the recorder learns a tool's peak; the store keeps every tool's record durably."""

import json
import math
import os
import stat

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.control.teach import TeachError, TeachIn, TeachStore, ToolRecord, to_json

pytestmark = pytest.mark.timeout(60)

STAMP = "2024-05-01T10:00:00Z"


def record(tool=5, peak=80.0, idle=10.0, blocks=(20, 30), program=1001, samples=50):
    return ToolRecord(tool, peak, idle, tuple(blocks), program, samples, STAMP)


def error_of(store: TeachStore, action=None) -> str:
    with pytest.raises(TeachError) as caught:
        (action or store.load)()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{store.path}: ")
    return message


def write_doc(path, doc) -> None:
    path.write_text(json.dumps(doc))


# -- the target ----------------------------------------------------------------------


def test_target_is_the_fraction_of_the_peak_between_the_guards():
    assert record(peak=80.0, idle=10.0).target_pct(0.9, 110.0) == pytest.approx(72.0)


def test_target_never_exceeds_ninety_percent_of_the_hard_limit():
    assert record(peak=200.0).target_pct(0.9, 110.0) == pytest.approx(99.0)


def test_target_never_falls_below_idle_plus_five():
    assert record(peak=12.0, idle=10.0).target_pct(0.9, 110.0) == pytest.approx(15.0)


def test_hard_limit_guard_wins_when_the_guards_cross():
    assert record(peak=50.0, idle=40.0).target_pct(0.9, 40.0) == pytest.approx(36.0)


@given(
    peak=st.floats(0, 500),
    idle=st.floats(0, 50),
    fraction=st.floats(0.01, 1.5),
    limit=st.floats(60, 300),
)
def test_target_lies_within_both_guards(peak, idle, fraction, limit):
    target = record(peak=peak, idle=idle).target_pct(fraction, limit)
    assert target <= 0.9 * limit
    assert target >= idle + 5.0 or target == 0.9 * limit  # the guards crossed: the limit wins
    if idle + 5.0 <= fraction * peak <= 0.9 * limit:
        assert target == fraction * peak


# -- the recorder --------------------------------------------------------------------


def test_recorder_learns_peak_blocks_and_sample_count():
    teach = TeachIn(tool=7, program=1001, idle_load_pct=8.0)
    for load, block in [(9.0, 10), (40.0, 20), (65.5, 20), (50.0, 30), (41.0, 20)]:
        teach.observe(load, block, cutting=True)
    got = teach.finish(STAMP, min_samples=5)
    assert got == ToolRecord(7, 65.5, 8.0, (10, 20, 30), 1001, 5, STAMP)


def test_air_samples_do_not_count_toward_the_peak():
    teach = TeachIn(7, 1001, 8.0)
    teach.observe(95.0, 5, cutting=False)  # a rapid's acceleration spike in air
    for _ in range(10):
        teach.observe(40.0, 20, cutting=True)
    got = teach.finish(STAMP)
    assert got is not None
    assert (got.peak_load_pct, got.cut_blocks, got.samples) == (40.0, (20,), 10)


def test_fewer_than_min_samples_teaches_nothing():
    teach = TeachIn(7, 1001, 8.0)
    for _ in range(9):
        teach.observe(40.0, 20, cutting=True)
    assert teach.finish(STAMP, min_samples=10) is None


def test_an_air_only_run_teaches_nothing_even_with_min_samples_zero():
    teach = TeachIn(7, 1001, 8.0)
    for _ in range(50):
        teach.observe(9.0, 20, cutting=False)
    assert teach.finish(STAMP, min_samples=0) is None


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_loads_are_ignored_and_counted(bad):
    teach = TeachIn(7, 1001, 8.0)
    for _ in range(10):
        teach.observe(40.0, 20, cutting=True)
    teach.observe(bad, 99, cutting=True)
    teach.observe(bad, 99, cutting=False)
    got = teach.finish(STAMP)
    assert teach.ignored == 2
    assert got is not None
    assert (got.peak_load_pct, got.cut_blocks, got.samples) == (40.0, (20,), 10)


def test_non_finite_idle_load_is_refused():
    with pytest.raises(ValueError):
        TeachIn(7, 1001, math.nan)


samples = st.lists(
    st.tuples(
        st.one_of(st.floats(-50, 300), st.sampled_from([math.nan, math.inf, -math.inf])),
        st.integers(0, 99_999),
        st.booleans(),
    ),
    max_size=200,
)


@given(samples)
def test_recorder_peak_is_the_max_of_the_finite_cutting_samples(observed):
    teach = TeachIn(3, 1, 5.0)
    for load, block, cutting in observed:
        teach.observe(load, block, cutting)
    cutting = [(load, block) for load, block, cut in observed if cut and math.isfinite(load)]
    assert teach.ignored == sum(not math.isfinite(load) for load, _, _ in observed)
    got = teach.finish(STAMP, min_samples=1)
    if not cutting:
        assert got is None
        return
    assert got is not None
    assert got.peak_load_pct == max(load for load, _ in cutting)
    assert got.samples == len(cutting)
    assert got.cut_blocks == tuple(sorted({block for _, block in cutting}))


# -- the store: reading --------------------------------------------------------------


def test_missing_file_is_no_tools(tmp_path):
    assert TeachStore(tmp_path / "none" / "teach.json").load() == {}


def test_saved_records_load_back(tmp_path):
    store = TeachStore(tmp_path / "teach.json")
    records = {5: record(5), 12: record(12, peak=95.25, blocks=(1,))}
    store.save(records)
    assert store.load() == records


def test_the_file_is_versioned_human_readable_json(tmp_path):
    store = TeachStore(tmp_path / "teach.json")
    store.save({5: record(5)})
    text = store.path.read_text()
    assert json.loads(text) == {
        "version": 1,
        "tools": {
            "5": {
                "peak_load_pct": 80.0,
                "idle_load_pct": 10.0,
                "cut_blocks": [20, 30],
                "program": 1001,
                "samples": 50,
                "learned_at": STAMP,
            }
        },
    }
    assert '"cut_blocks": [20, 30],\n' in text  # a field a line, blocks on one
    assert text.endswith("\n")


def test_an_empty_store_is_still_a_teach_file(tmp_path):
    store = TeachStore(tmp_path / "teach.json")
    store.save({})
    assert json.loads(store.path.read_text()) == {"version": 1, "tools": {}}
    assert store.load() == {}


def test_integer_loads_written_by_hand_are_accepted(tmp_path):
    store = TeachStore(tmp_path / "teach.json")
    doc = json.loads(to_json({5: record(5)}))
    doc["tools"]["5"]["peak_load_pct"] = 80
    write_doc(store.path, doc)
    assert store.load()[5].peak_load_pct == 80.0


def test_corrupt_json_is_one_line_naming_the_file(tmp_path):
    store = TeachStore(tmp_path / "teach.json")
    store.path.write_text('{"version": 1, "tools": {"5": {')
    assert "invalid JSON" in error_of(store)


def test_binary_garbage_is_one_line_naming_the_file(tmp_path):
    store = TeachStore(tmp_path / "teach.json")
    store.path.write_bytes(b"\xff\xfe\x00garbage")
    assert "not UTF-8" in error_of(store)


@pytest.mark.parametrize(
    "doc, expected",
    [
        ([], "top level must be an object"),
        ({"tools": {}}, "not a teach file of version 1 (version: null)"),
        ({"version": "1", "tools": {}}, 'version: "1"'),
        ({"version": 1.0, "tools": {}}, "version: 1.0"),
        ({"version": True, "tools": {}}, "version: true"),
        ({"version": 2, "tools": {}}, "version 2 is newer than this agent's (1)"),
        ({"version": 1, "tools": []}, "tools: must be an object"),
        ({"version": 1}, "tools: must be an object"),
        ({"version": 1, "tools": {}, "extra": 0}, "extra: unknown key"),
    ],
)
def test_wrong_version_or_shape_is_one_line_naming_the_file(tmp_path, doc, expected):
    store = TeachStore(tmp_path / "teach.json")
    write_doc(store.path, doc)
    assert expected in error_of(store)


@pytest.mark.parametrize(
    "key, change, expected",
    [
        ("peak_load_pct", "80", "tools.5.peak_load_pct: must be a number, got a string"),
        ("peak_load_pct", None, "tools.5.peak_load_pct: must be a number, got null"),
        ("idle_load_pct", True, "tools.5.idle_load_pct: must be a number, got a boolean"),
        ("idle_load_pct", "NaN", "tools.5.idle_load_pct: must be finite"),
        ("cut_blocks", [1, "2"], "tools.5.cut_blocks: must be a list of block numbers"),
        ("cut_blocks", 3, "tools.5.cut_blocks: must be a list of block numbers"),
        ("program", 1001.5, "tools.5.program: must be an integer, got a number"),
        ("samples", True, "tools.5.samples: must be an integer, got a boolean"),
        ("samples", 0, "tools.5.samples: must be at least 1"),
        ("learned_at", 1714557600, "tools.5.learned_at: must be a string, got a number"),
        ("learned_at", ..., "tools.5.learned_at: missing"),
        ("colour", "red", "tools.5.colour: unknown key"),
    ],
)
def test_a_bad_field_is_one_line_naming_the_file_and_the_tool(tmp_path, key, change, expected):
    store = TeachStore(tmp_path / "teach.json")
    doc = json.loads(to_json({5: record(5)}))
    if change is ...:
        del doc["tools"]["5"][key]
    else:
        doc["tools"]["5"][key] = change
    text = json.dumps(doc).replace('"NaN"', "NaN")
    store.path.write_text(text)
    assert expected in error_of(store)


@pytest.mark.parametrize("key", ["T5", "05", "-5", "", "5.0"])
def test_a_key_that_is_not_a_tool_number_is_named(tmp_path, key):
    store = TeachStore(tmp_path / "teach.json")
    doc = json.loads(to_json({5: record(5)}))
    doc["tools"][key] = doc["tools"].pop("5")
    write_doc(store.path, doc)
    assert f"tools.{key}: the key must be a tool number" in error_of(store)


def test_a_record_that_is_not_an_object_is_named(tmp_path):
    store = TeachStore(tmp_path / "teach.json")
    write_doc(store.path, {"version": 1, "tools": {"5": [80.0]}})
    assert "tools.5: must be an object, got an array" in error_of(store)


# -- the store: writing --------------------------------------------------------------


def test_put_adds_and_replaces_one_tool(tmp_path):
    store = TeachStore(tmp_path / "teach.json")
    store.put(record(5))
    store.put(record(12))
    store.put(record(5, peak=60.0))
    assert store.load() == {5: record(5, peak=60.0), 12: record(12)}


def test_reset_forgets_one_tool(tmp_path):
    store = TeachStore(tmp_path / "teach.json")
    store.save({5: record(5), 12: record(12)})
    assert store.reset(5) is True
    assert store.load() == {12: record(12)}


def test_reset_of_an_untaught_tool_is_false_and_writes_nothing(tmp_path):
    store = TeachStore(tmp_path / "teach.json")
    assert store.reset(5) is False
    assert not store.path.exists()
    store.save({12: record(12)})
    before = os.stat(store.path)
    assert store.reset(5) is False
    assert os.stat(store.path).st_ino == before.st_ino


@pytest.mark.parametrize("action", ["put", "reset"])
def test_put_and_reset_refuse_a_corrupt_file_and_leave_it_untouched(tmp_path, action):
    store = TeachStore(tmp_path / "teach.json")
    corrupt = b'{"version": 1, "tools": {"5": {"peak_load_pct": 8'
    store.path.write_bytes(corrupt)
    error_of(store, lambda: store.put(record(7)) if action == "put" else store.reset(5))
    assert store.path.read_bytes() == corrupt
    assert os.listdir(tmp_path) == ["teach.json"]


def test_save_creates_the_directory_and_a_0644_file(tmp_path):
    store = TeachStore(tmp_path / "var" / "lib" / "teach.json")
    old = os.umask(0o077)
    try:
        store.save({5: record(5)})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o644


@pytest.mark.parametrize("crash", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_crash_before_the_rename_leaves_the_old_file_and_no_temp_file(
    tmp_path, monkeypatch, crash
):
    store = TeachStore(tmp_path / "teach.json")
    store.save({5: record(5)})
    before = store.path.read_bytes()

    def replace(src, dst):
        raise crash

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises((TeachError, KeyboardInterrupt)) as caught:
        store.put(record(12))
    if isinstance(crash, OSError):
        assert str(caught.value) == f"{store.path}: cannot save: No space left on device"
    assert store.path.read_bytes() == before
    assert os.listdir(tmp_path) == ["teach.json"]


def test_save_fsyncs_the_file_and_the_directory(tmp_path, monkeypatch):
    store = TeachStore(tmp_path / "teach.json")
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store.save({5: record(5)})
    assert synced == [False, True]


def test_a_non_finite_record_is_not_saved(tmp_path):
    store = TeachStore(tmp_path / "teach.json")
    message = error_of(store, lambda: store.save({5: record(5, peak=math.nan)}))
    assert "non-finite" in message
    assert not store.path.exists()


def test_a_record_filed_under_another_tool_is_not_saved(tmp_path):
    store = TeachStore(tmp_path / "teach.json")
    assert "tool 5 filed under tool 6" in error_of(store, lambda: store.save({6: record(5)}))


tool_records = st.dictionaries(
    st.integers(0, 10**6),
    st.tuples(
        st.floats(allow_nan=False, allow_infinity=False),
        st.floats(allow_nan=False, allow_infinity=False),
        st.lists(st.integers(-(2**63), 2**63), unique=True).map(sorted).map(tuple),
        st.integers(-(2**31), 2**31),
        st.integers(1, 2**63),
        st.text(),
    ),
    max_size=8,
).map(lambda d: {tool: ToolRecord(tool, *fields) for tool, fields in d.items()})


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tool_records)
def test_save_then_load_round_trips_any_records_exactly(tmp_path, records):
    store = TeachStore(tmp_path / "teach.json")
    store.save(records)
    loaded = store.load()
    assert loaded == records
    for tool, got in loaded.items():  # == would pass 0.0 for -0.0
        assert math.copysign(1, got.peak_load_pct) == math.copysign(1, records[tool].peak_load_pct)


def test_a_tool_number_of_5000_digits_is_one_teach_error_not_a_value_error(tmp_path):
    """int() of it raised ValueError (over Python's 4300 digits), out of load()."""
    store = TeachStore(tmp_path / "teach.json")
    write_doc(store.path, {"version": 1, "tools": {"9" * 5000: GOOD_RECORD}})
    assert error_of(store).endswith("the key must be a tool number (0, 1, 2, ...)")


def test_a_key_with_a_newline_is_quoted_in_one_line(tmp_path):
    store = TeachStore(tmp_path / "teach.json")
    write_doc(store.path, {"version": 1, "tools": {"5": {**GOOD_RECORD, "a\nb": 1}}})
    assert error_of(
        store
    ) == f'{store.path}: tools.5."a\\nb": unknown key (allowed: cut_blocks,' + (
        " idle_load_pct, learned_at, peak_load_pct, program, samples)"
    )


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)
# A good record with any field, or the record itself, replaced by any JSON value.
GOOD_RECORD = json.loads(to_json({5: record()}))["tools"]["5"]
KEYS = st.sampled_from(["5", "05", "-1", "x", "١", "5\n", "a\nb", "\x1b[2J", "9" * 300])
TEACH_DOCS = st.builds(
    lambda version, key, field, value, extra: {
        "version": version,
        "tools": {key: value if field is None else {**GOOD_RECORD, field: value}},
        **extra,
    },
    st.just(1) | JSON_VALUES,
    KEYS,
    st.sampled_from([None, *GOOD_RECORD]) | KEYS,
    JSON_VALUES,
    st.dictionaries(KEYS, st.just(0), max_size=1),
)


@settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=300, deadline=None
)
@given(
    text=TEACH_DOCS.map(json.dumps)
    | st.binary(max_size=200).map(lambda b: b.decode("latin-1"))
    | st.integers(0, 5000).map(lambda n: '{"version": 1, "tools": {"5": ' + "[" * n + "]" * n)
)
def test_any_teach_file_loads_or_is_one_teach_error(tmp_path, text):
    """The teach file's decoder: whatever the file holds (an operator's edit, a disk's
    damage), records or one TeachError line, nothing else."""
    store = TeachStore(tmp_path / "teach.json")
    (tmp_path / "teach.json").write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        records = store.load()
    except TeachError as exc:
        assert "\n" not in str(exc) and "\x1b" not in str(exc) and len(str(exc)) < 400
    else:
        assert all(isinstance(r, ToolRecord) for r in records.values())


# -- noticing edits ------------------------------------------------------------------


def test_changed_since_notices_creation_a_save_and_removal(tmp_path):
    store = TeachStore(tmp_path / "teach.json")
    changed, stamp = store.changed_since(None)
    assert changed is False
    store.put(record(5))
    changed, stamp = store.changed_since(stamp)
    assert changed is True
    assert store.changed_since(stamp) == (False, stamp)
    store.reset(5)  # same directory, maybe the same mtime tick: a new inode all the same
    changed, stamp = store.changed_since(stamp)
    assert changed is True
    store.path.unlink()
    assert store.changed_since(stamp)[0] is True


def test_changed_since_notices_an_edit_in_place(tmp_path):
    store = TeachStore(tmp_path / "teach.json")
    store.save({5: record(5)})
    _, stamp = store.changed_since(None)
    with open(store.path, "r+") as f:  # an editor that rewrites the same inode
        f.write(f.read().replace("80.0", "85.0"))
    st_ = os.stat(store.path)
    os.utime(store.path, ns=(st_.st_atime_ns, st_.st_mtime_ns + 1_000_000))
    assert store.changed_since(stamp)[0] is True
