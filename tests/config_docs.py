"""Generated configuration documents, for the config property test: shipped configs, mutated.

A document starts from a configuration that loads (the demo's, the example, the demo with a
sensor bridge, each with control on or off; the collector's example) and takes one to four
mutations: a key set to a value it may or may not admit (the ends of its range and just
past them, 0, -0, tiny, huge, 1e308, NaN and infinity, big integers, odd strings, another
tag's name), a key removed or retyped, a section removed or made a scalar, a tag duplicated,
an unknown key; then, now and then, a mutation of the bytes (invalid UTF-8, a truncation, a
line doubled). `dumps` is a small TOML writer: the standard library only reads TOML.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import fields
from pathlib import Path

from hypothesis import strategies as st

from edge_agent import limits
from edge_agent.config import (
    _FILTER_PARAMS,
    _PUBLISHER_ONLY,
    ChannelConfig,
    CollectorSection,
    ControlConfig,
    ServiceConfig,
    SpoolConfig,
    TelemetryConfig,
    UpstreamConfig,
)
from edge_agent.sources.bridge_config import BridgeChannel, BridgeConfig
from edge_agent.sources.modbus_config import TAG_KEYS, ControllerConfig
from edge_agent.tomlcheck import KeyPath, Range

ROOT = Path(__file__).resolve().parent.parent
DEMO = tomllib.loads((ROOT / "edge_agent" / "defaults" / "demo.toml").read_text())
EXAMPLE = tomllib.loads((ROOT / "deploy" / "edge-agent.example.toml").read_text())
COLLECTOR = tomllib.loads((ROOT / "deploy" / "edge-collector.example.toml").read_text())
#: The example's commented-out [bridge], on the demo.
BRIDGE = {
    "port": "/dev/ttyACM0",
    "channels": [
        {
            "name": "spindle_current",
            "index": 0,
            "unit": "A",
            "scale": 0.0122,
            "raw": True,
            "features": ["mean", "rms"],
        },
        {"name": "vibration_x", "index": 1, "unit": "g", "scale": 0.0039, "features": ["rms"]},
    ],
}


def _with(doc: dict, **sections) -> dict:
    return {**doc, **sections}


#: What agent documents start from, by name.
AGENT_BASES = {
    "demo": DEMO,
    "demo without control": _with(DEMO, control={**DEMO["control"], "enabled": False}),
    "example": EXAMPLE,
    "demo with a bridge": _with(DEMO, bridge=BRIDGE),
    "a bridge channel as the signal": _with(
        DEMO, bridge=BRIDGE, control={**DEMO["control"], "signal": "spindle_current_rms"}
    ),
}

# -- what a key may be set to -------------------------------------------------------------

_SECTION_KEYS = {
    "machine": ("site", "machine_id"),
    "controller": tuple(f.name for f in fields(ControllerConfig)),
    "control": tuple(f.name for f in fields(ControlConfig)),
    "telemetry": tuple(f.name for f in fields(TelemetryConfig)),
    "spool": tuple(f.name for f in fields(SpoolConfig)),
    "upstream": tuple(f.name for f in fields(UpstreamConfig)),
    "service": tuple(f.name for f in fields(ServiceConfig)),
    "bridge": tuple(f.name for f in fields(BridgeConfig) if f.name != "channels"),
}
_CHANNEL_KEYS = tuple(
    f.name for f in fields(ChannelConfig) if f.name not in ("name", "sample_rate_hz")
)
_FILTER_KEYS = ("kind", *sorted({k for params in _FILTER_PARAMS.values() for k in params}))
_BRIDGE_CHANNEL_KEYS = tuple(f.name for f in fields(BridgeChannel))
_COLLECTOR_KEYS = {
    "collector": tuple(f.name for f in fields(CollectorSection)),
    "broker": tuple(f.name for f in fields(UpstreamConfig) if f.name not in _PUBLISHER_ONLY),
}

_CHOICES = {
    "table": ("holding", "input", "coil", "discrete"),
    "type": ("int16", "uint16", "int32", "uint32", "float32", "float64", "bool", "bitfield"),
    "byte_order": ("big", "little"),
    "word_order": ("big", "little"),
    "protocol": ("tcp", "rtu", "5", "3.1.1"),
    "parity": ("N", "E", "O"),
    "kind": ("mqtt", "file", "none", *_FILTER_PARAMS),
    "report": ("sampled", "on_change"),
    "telemetry": ("raw", "filtered", "both"),
    "target_mode": ("fixed", "teach_in"),
    "log_level": ("debug", "info", "warning", "error"),
    "features": (["rms"], ["mean", "rms", "peak"], ["peak", "peak"], []),
}
#: Plausible values of the keys that hold text (the odd ones come from _ODD_STRINGS).
_STRINGS = {
    "site": ("plant-b", "a.b", "x" * 64),
    "machine_id": ("mill-08", "M_1", "x" * 64),
    "host": ("127.0.0.1", "::1", "controller.local"),
    "port": ("/dev/ttyACM1", "/dev/serial/by-id/usb-x"),
    "serial_port": ("/dev/ttyUSB0",),
    "unit": ("%", "mm/min", "°C"),
    "poll_group": ("fast", "slow", "g2"),
    "topic_prefix": ("edge", "a/b/c", "plant-1"),
    "share_group": ("", "plant", "g-1"),
    "client_id": ("", "agent-1"),
    "username": ("", "agent"),
    "password_env": ("", "EDGE_AGENT_TEST_NOT_SET"),
    "metrics_listen": ("", "127.0.0.1:0", "[::1]:9100"),
    "db": ("collector.db",),
    "path": ("spool.db",),
    "file_path": ("", "up.msgpack"),
    "teach_file": ("teach.json",),
}
_ODD_STRINGS = (
    "",
    ".",
    "..",
    "a/b",
    "#",
    "+",
    "x" * 300,
    "grüße",
    "\x00",
    "\n",
    "a b",
    "$share",
    "127.0.0.1:0",
    "/nonexistent/file",
)
_EXTREMES = (
    0,
    0.0,
    -0.0,
    1,
    -1,
    0.5,
    5e-324,
    1e-320,
    1e-10,
    1e-9,
    1e9,
    1e300,
    1e308,
    -1e308,
    math.inf,
    -math.inf,
    math.nan,
    2**31,
    2**63 - 1,
    -(2**63),
    2**64,
    10**30,
)

_RANGES: dict[str, list[Range]] = {}
for _table in (
    limits.CONTROLLER,
    limits.POLL_GROUP,
    limits.TAG,
    limits.TELEMETRY,
    limits.CHANNEL,
    limits.FILTER,
    limits.SPOOL,
    limits.UPSTREAM,
    limits.SERVICE,
    limits.BRIDGE,
    limits.BRIDGE_CHANNEL,
    limits.CONTROL,
    limits.COLLECTOR,
):
    for _key, _range in _table.items():
        _RANGES.setdefault(_key, []).append(_range)


def _edges(r: Range, inside: bool) -> list:
    """A range's ends and middle (`inside`), or just past its ends."""
    if r.integer:
        lo, hi = int(r.lo), int(r.hi)
        values = [lo, hi, (lo + hi) // 2] if inside else [lo - 1, hi + 1]
    elif inside:
        lo, hi = float(r.lo), float(r.hi)
        values = [lo, hi, (lo + hi) / 2, min(hi, lo * 1.5 if lo else 1e-3)]
    else:
        values = [math.nextafter(float(r.lo), -math.inf), math.nextafter(float(r.hi), math.inf)]
    if r.signed:
        values += [-v for v in values]
    if r.zero and inside:
        values.append(0 if r.integer else 0.0)
    return values


@st.composite
def value_for(draw, key: str | int, names: list[str]):
    """A value for `key`: mostly of the kind it takes, near the edges of its range."""
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return draw(st.sampled_from(_EXTREMES))
    if kind == 1:
        return draw(st.sampled_from((*_ODD_STRINGS, *names)))
    if kind == 2:
        return draw(
            st.one_of(
                st.booleans(),
                st.floats(),
                st.integers(),
                st.text(max_size=12),
                st.lists(st.integers(-3, 3), max_size=3),
                st.just({}),
                st.just([{}]),
            )
        )
    if isinstance(key, str) and key in _RANGES:
        inside = kind > 4
        return draw(st.sampled_from([v for r in _RANGES[key] for v in _edges(r, inside)]))
    if isinstance(key, str) and key in _STRINGS and (key != "port" or kind % 2):
        return draw(st.sampled_from(_STRINGS[key]))
    if isinstance(key, str) and key in _CHOICES:
        return draw(st.sampled_from(_CHOICES[key]))
    if isinstance(key, str) and (key.endswith("_tag") or key in ("signal", "name", "ref")):
        return draw(st.sampled_from(names or ["x"]))
    if key in ("writable", "include"):
        return draw(st.lists(st.sampled_from(names or ["x"]), max_size=3))
    if key in ("tools", "programs"):
        return draw(st.lists(st.sampled_from((0, 1, 7, 2**32 - 1, 2**32, -1)), max_size=3))
    if key == "filters":
        kinds = sorted(_FILTER_PARAMS)
        return [{"kind": draw(st.sampled_from(kinds))} | draw(st.sampled_from(_SAMPLE_PARAMS))]
    if key in ("enabled", "raw", "tls", "tls_verify"):
        return draw(st.booleans())
    return draw(st.sampled_from(_EXTREMES))


_SAMPLE_PARAMS = (
    {"order": 2, "cutoff_hz": 1.0},
    {"order": 8, "cutoff_hz": 1e-7},
    {"order": 4, "low_hz": 0.5, "high_hz": 2.0},
    {"tau_s": 0.5},
    {"window": 5},
    {"window": 3, "n_sigmas": 3.0},
    {"factor": 10},
    {"factor": 1000, "order": 8},
    {},
)

# -- paths into a document ----------------------------------------------------------------


def _walk(node, path=()):
    """Every (path, value) below `node`, tables and arrays included."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, key), value
            yield from _walk(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield (*path, i), value
            yield from _walk(value, (*path, i))


def _known_paths(doc: dict, collector: bool) -> dict[str, list[KeyPath]]:
    """Paths of keys the schema knows, set in the document or not, by section (so that a
    long register map does not crowd out the other sections)."""
    if collector:
        return {s: [(s, k) for k in keys] for s, keys in _COLLECTOR_KEYS.items()}
    paths = {s: [(s, k) for k in keys] for s, keys in _SECTION_KEYS.items()}
    groups = doc.get("poll_groups")
    paths["poll_groups"] = [
        ("poll_groups", name, key)
        for name in (list(groups) if isinstance(groups, dict) else ["fast"])
        for key in ("period_s", "stale_after_s")
    ]
    tags = doc.get("tags")
    paths["tags"] = [
        ("tags", i, k) for i in range(len(tags) if isinstance(tags, list) else 1) for k in TAG_KEYS
    ]
    names = _names(doc)[:8] or ["spindle_load"]
    paths["channels"] = [("channels", name, k) for name in names for k in _CHANNEL_KEYS]
    paths["filters"] = [("channels", n, "filters", 0, k) for n in names for k in _FILTER_KEYS]
    bridge = doc.get("bridge")
    channels = bridge.get("channels") if isinstance(bridge, dict) else None
    if isinstance(channels, list) and channels:
        paths["bridge.channels"] = [
            ("bridge", "channels", i, k) for i in range(len(channels)) for k in _BRIDGE_CHANNEL_KEYS
        ]
    return {section: sorted(p, key=str) for section, p in paths.items()}


def _names(doc: dict) -> list[str]:
    """The document's tag names and bridge streams: what roles and refs may name."""
    names = []
    tags = doc.get("tags")
    for tag in tags if isinstance(tags, list) else []:
        if isinstance(tag, dict) and isinstance(tag.get("name"), str):
            names.append(tag["name"])
    bridge = doc.get("bridge")
    for channel in bridge.get("channels", []) if isinstance(bridge, dict) else []:
        if isinstance(channel, dict) and isinstance(channel.get("name"), str):
            names += [channel["name"], f"{channel['name']}_rms", f"{channel['name']}_mean"]
    return names


def _set(doc, path: KeyPath, value) -> None:
    """Set `path` to `value`, making the tables on the way (a list index past the end
    appends)."""
    node = doc
    for i, key in enumerate(path[:-1]):
        following = path[i + 1]
        if isinstance(node, dict):
            if not isinstance(node.get(key), dict | list):
                node[key] = [] if isinstance(following, int) else {}
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int):
            while len(node) <= key:
                node.append({} if not isinstance(following, int) else [])
            node = node[key]
        else:
            return
    last = path[-1]
    if isinstance(node, dict) and isinstance(last, str):
        node[last] = value
    elif isinstance(node, list) and isinstance(last, int):
        if last < len(node):
            node[last] = value
        else:
            node.append(value)


def _delete(doc, path: KeyPath) -> None:
    node = doc
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]


def _copy(node):
    return json.loads(json.dumps(node, allow_nan=True))


# -- the documents ------------------------------------------------------------------------


@st.composite
def mutated(draw, bases, collector: bool = False) -> bytes:
    doc = _copy(draw(st.sampled_from(bases)))
    for _ in range(draw(st.sampled_from((1, 1, 1, 2, 2, 3, 4)))):
        _mutate(draw, doc, collector)
    text = dumps(doc).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 19)) == 0:
        text = _mutate_bytes(draw, text)
    return text


def agent_documents():
    return mutated(list(AGENT_BASES.values()))


def collector_documents():
    return mutated((COLLECTOR,), collector=True)


def _mutate(draw, doc: dict, collector: bool) -> None:
    op = draw(st.sampled_from(("known",) * 6 + ("leaf", "leaf", "delete", "retype", "shape")))
    names = _names(doc)
    existing = [p for p, _ in _walk(doc)]
    if op == "known" or not existing:
        known = _known_paths(doc, collector)
        path = draw(st.sampled_from(known[draw(st.sampled_from(sorted(known)))]))
        _set(doc, path, draw(value_for(path[-1], names)))
    elif op == "leaf":
        leaves = [p for p, v in _walk(doc) if not isinstance(v, dict | list)] or existing
        path = draw(st.sampled_from(leaves))
        _set(doc, path, draw(value_for(path[-1], names)))
    elif op == "delete":
        path = draw(st.sampled_from(existing))
        _delete(doc, path)
    elif op == "retype":
        path = draw(st.sampled_from(existing))
        _set(doc, path, draw(st.sampled_from(("1", 1, 1.5, True, [], {}, [1, "a"], {"x": 1}))))
    else:
        _reshape(draw, doc, names, collector)


def _reshape(draw, doc: dict, names: list[str], collector: bool) -> None:
    """Whole-document changes: a duplicated or removed tag, a new poll group, an unknown
    key, control switched on, a section made a scalar."""
    what = draw(st.integers(0, 5))
    tags = doc.get("tags")
    if what == 0 and isinstance(tags, list) and tags:
        tags.append(_copy(draw(st.sampled_from(tags))))
    elif what == 1 and isinstance(tags, list) and tags:
        tags.pop(draw(st.integers(0, len(tags) - 1)))
    elif what == 2 and not collector:
        period = draw(st.sampled_from((0.001, 0.01, 1.0, 3600.0, 1e-10, 0)))
        _set(doc, ("poll_groups", "g2", "period_s"), period)
        if isinstance(tags, list) and tags and isinstance(tags[0], dict):
            tags[0]["poll_group"] = "g2"
    elif what == 3:
        section = draw(st.sampled_from(sorted(doc) or ["x"]))
        _set(doc, (section, "bogus_key"), 1)
    elif what == 4 and not collector:
        _set(doc, ("control", "enabled"), True)
        if names:
            _set(doc, ("control", "signal"), draw(st.sampled_from(names)))
    elif doc:
        section = draw(st.sampled_from(sorted(doc)))
        doc[section] = draw(st.sampled_from((1, "x", [], [1, 2], True)))


def _mutate_bytes(draw, text: bytes) -> bytes:
    what = draw(st.integers(0, 3))
    at = draw(st.integers(0, len(text)))
    if what == 0:
        return (
            text[:at]
            + draw(st.sampled_from((b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80")))
            + text[at:]
        )
    if what == 1:
        return text[:at]
    if what == 2:
        lines = text.split(b"\n")
        i = draw(st.integers(0, len(lines) - 1))
        return b"\n".join(lines[: i + 1] + lines[i:])
    return text[:at] + b"[" + text[at:]


# -- a small TOML writer ------------------------------------------------------------------

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def dumps(doc: dict) -> str:
    """TOML for a document of tables, arrays of tables and values (floats include NaN and
    infinity, integers any size: what tomllib reads is up to tomllib)."""
    lines: list[str] = []
    _table(doc, (), lines)
    return "\n".join(lines) + "\n"


def _is_table_array(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _table(table: dict, path: tuple, lines: list[str], header: str = "") -> None:
    if header:
        lines.append(header)
    for key, value in table.items():
        if not isinstance(value, dict) and not _is_table_array(value):
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in table.items():
        where = (*path, key)
        if isinstance(value, dict):
            _table(value, where, lines, f"[{_dotted(where)}]")
        elif _is_table_array(value):
            for item in value:
                _table(item, where, lines, f"[[{_dotted(where)}]]")


def _key(key) -> str:
    key = str(key)
    return key if _BARE.fullmatch(key) else json.dumps(key)


def _dotted(path: tuple) -> str:
    return ".".join(_key(k) for k in path)


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")
