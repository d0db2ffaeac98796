"""The `[opcua]` section: an OPC UA server to read (and write the one override to), its
time groups and its nodes, with one-line errors naming the key (docs/opcua.md, "The agent's
OPC UA source", has every key's default and why).

Pure: parses TOML data and checks files (their mode, the user file's form); never imports
asyncua, which costs an agent some 40 MB resident (`sources/opcua.py` imports it only once an
OPC UA source runs). The node-id and browse-path parsers live here because both the check and
the source need them.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple

from .. import limits
from ..tomlcheck import KeyPath, Range, TomlChecker
from .base import FLOAT_QUANTUM

#: OPC UA's own namespace (index 0 on every server): the Objects folder, the Server object.
STANDARD_NAMESPACE = "http://opcfoundation.org/UA/"

SECURITY_MODES = ("none", "sign", "sign_and_encrypt")
READ_MODES = ("subscribe", "poll")
#: The OPC UA built-in types a node may hold (OPC 10000-6 5.1.2), as `type` names them; the
#: agent turns each into a number (a String: a decimal program number, docs/opcua.md).
INTEGER_TYPES = ("sbyte", "byte", "int16", "uint16", "int32", "uint32", "int64", "uint64")
TYPES = ("boolean", *INTEGER_TYPES, "float", "double", "string")

SECTION = {
    "timeout_s": Range(
        0.1,
        60.0,
        "a LAN request is answered in ms and a secured handshake within a second on a Pi; "
        "past a minute the server is dead",
    ),
    "session_timeout_s": Range(
        10.0,
        3600.0,
        "how long the server keeps a session gone quiet, one of its few slots: under 10 s a "
        "busy moment ends it, over an hour a dead agent holds one that long",
    ),
    **limits.RECONNECT,
    "queue_size": Range(
        1, 1000, "values a server queues per node between publishes: memory on it", integer=True
    ),
}
GROUP = {
    "period_s": Range(
        0.01,
        3600.0,
        "servers sample at 10 ms at best (most revise faster requests to 50-100 ms); "
        "slower than an hour is not live",
    ),
    # Also at least period_s: a value is not late before its next period.
    "stale_after_s": Range(0.01, 86400.0, "at least the period, at most a day"),
}
QUANTUM = Range(
    1e-9,
    1e9,
    "values travel as integers of it (at most 2^48): a nano- to a giga-unit",
    zero="by the node's type",
)

_URL = re.compile(
    r"opc\.tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
    r":(?P<port>\d{1,5})(?P<path>/[^\s]*)?"
)
_NODE_ID = re.compile(
    r"(?:ns=(?P<ns>[0-9]{1,5});|nsu=(?P<nsu>[^;]+);)?(?P<kind>[isgb])=(?P<id>.+)", re.DOTALL
)
_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_ELEMENT = re.compile(r"(?:\{(?P<uri>[^{}]+)\})?(?P<name>[^/{}]+)")


@dataclass(frozen=True)
class OpcUaGroup:
    """A time group: its nodes are sampled together, once a period, and share their stamps."""

    name: str
    period_s: float
    stale_after_s: float  # no fresh value this long: STALE (three periods by default)


@dataclass(frozen=True)
class OpcUaNode:
    """One node read as one channel: addressed by `node_id` or by `browse_path`, not both."""

    name: str  # the channel's name
    node_id: str = ""  # "ns=2;s=...", "nsu=<uri>;i=...", as OPC 10000-6 5.3.1.10 writes them
    browse_path: str = ""  # "Objects/{<uri>}Machines/...": see parse_browse_path
    unit: str = ""
    quantum: float = 0.0  # 0: by type (1 for integers, booleans, strings, 0.001 otherwise)
    group: str = ""
    writable: bool = False  # the writer may write it; every other node it refuses
    type: str = ""  # the built-in type the server must give it ("" any): decides the quantum

    @property
    def default_quantum(self) -> float:
        """What its values are integers of unless `quantum` says: whole numbers for the
        whole-number types, FLOAT_QUANTUM otherwise (and when the type is not known before
        the server says it, which is after the channel table is made)."""
        if self.quantum:
            return self.quantum
        if self.type in (*INTEGER_TYPES, "boolean", "string"):
            return 1.0
        return FLOAT_QUANTUM

    @property
    def resolution(self) -> float:
        """The smallest step a written value takes (the actuator rounds down to it): the
        node's quantum, so a writable integer node should say its `type`."""
        return self.default_quantum


@dataclass(frozen=True)
class OpcUaConfig:
    """The `[opcua]` section: one server, its groups and nodes (docs/opcua.md, "Keys")."""

    url: str  # opc.tcp://host:port[/path]
    # Basic256Sha256 Sign or SignAndEncrypt with `certificate` and `private_key` (the agent's)
    # and `server_certificate` (pinned: the session is refused unless the server shows it).
    security: str = "none"
    certificate: str = ""
    private_key: str = ""
    server_certificate: str = ""
    user_file: str = ""  # "user:password" (or user and password on two lines), private
    namespace: str = ""  # the namespace URI of unqualified browse names ("": OPC UA's own)
    # A request unanswered this long has failed; the session keep-alive notices a dead
    # server within it (a read of the server's state every timeout_s / 2).
    timeout_s: float = 2.0
    # The server drops the agent's session this long after it went quiet: a restarted agent
    # makes a new one, and a controller has few session slots to spare.
    session_timeout_s: float = 30.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    mode: str = "subscribe"  # or "poll": one Read a group each period
    queue_size: int = 1  # the source keeps each node's latest value: one is enough
    groups: dict[str, OpcUaGroup] = field(default_factory=dict)
    nodes: tuple[OpcUaNode, ...] = ()


class NodeIdParts(NamedTuple):
    """A node id's text, checked: its namespace (an index, or a URI the server's namespace
    array turns into one), its kind (i numeric, s string, g GUID, b opaque) and identifier."""

    namespace: int | str
    kind: str
    identifier: int | str | uuid.UUID | bytes


class BrowseName(NamedTuple):
    """One element of a browse path: a browse name and its namespace URI."""

    namespace: str
    name: str


def parse_node_id(text: str) -> NodeIdParts:
    """`[ns=<index>;|nsu=<uri>;]<i|s|g|b>=<identifier>`; no ns: namespace 0 (OPC UA's own).
    A ValueError says what is wrong, in one line."""
    match = _NODE_ID.fullmatch(text)
    if not match:
        raise ValueError(
            f'must be "[ns=<index>;|nsu=<uri>;]<i|s|g|b>=<identifier>" (e.g. '
            f'"ns=2;s=Spindle/ActLoad"), got {text!r}'
        )
    namespace: int | str = match["nsu"] if match["nsu"] is not None else int(match["ns"] or 0)
    if isinstance(namespace, int) and namespace > 0xFFFF:
        raise ValueError(f"namespace index {namespace} is past 65535")
    kind, raw = match["kind"], match["id"]
    identifier: int | str | uuid.UUID | bytes = raw
    if kind == "i":
        if not re.fullmatch(r"[0-9]{1,10}", raw) or int(raw) > 0xFFFF_FFFF:
            raise ValueError(f"i= takes a number in 0..4294967295, got {raw!r}")
        identifier = int(raw)
    elif kind == "g":
        if not _GUID.fullmatch(raw):
            raise ValueError(f"g= takes a GUID (8-4-4-4-12 hex digits), got {raw!r}")
        identifier = uuid.UUID(raw)
    elif kind == "b":
        try:
            identifier = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"b= takes base64, got {raw!r}") from None
    return NodeIdParts(namespace, kind, identifier)


def parse_browse_path(text: str, namespace: str = "") -> tuple[BrowseName, ...]:
    """`Objects/<name>/<name>/...` from the Objects folder down. A name is qualified by its
    namespace URI in braces, `{http://opcfoundation.org/UA/MachineTool/}Monitoring` (URIs hold
    ':' and '/', so the "<uri>:" form could not say where one ends); an unqualified name is in
    `namespace`, the section's default ("": OPC UA's own). Names cannot hold '/', '{', '}'.
    A ValueError says what is wrong, in one line."""
    elements = _split_path(text)
    if not elements or elements[0] != "Objects":
        raise ValueError(f'must start at the Objects folder, "Objects/...", got {text!r}')
    names = [BrowseName(STANDARD_NAMESPACE, "Objects")]
    for element in elements[1:]:
        match = _ELEMENT.fullmatch(element)
        if not match:
            raise ValueError(
                f"element {element!r} of {text!r} must be a name or {{namespace-uri}}name"
            )
        names.append(BrowseName(match["uri"] or namespace or STANDARD_NAMESPACE, match["name"]))
    if len(names) < 2:
        raise ValueError(f"names only the Objects folder, not a node in it: {text!r}")
    return tuple(names)


def _split_path(text: str) -> list[str]:
    """Split at each '/' outside braces (a namespace URI holds '/')."""
    elements, current, depth = [], [], 0
    for char in text:
        if char == "/" and depth == 0:
            elements.append("".join(current))
            current = []
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        current.append(char)
    elements.append("".join(current))
    return elements


def read_user_file(path: str) -> tuple[str, str]:
    """(user, password) from a file of "user:password", or of the user and the password on
    two lines. An OSError or a ValueError (one line, never the password) when it cannot be."""
    with open(path, encoding="utf-8") as file:
        text = file.read()
    lines = text.rstrip("\r\n").splitlines()
    if len(lines) == 2:
        user, password = lines
    elif len(lines) == 1 and ":" in lines[0]:
        user, _, password = lines[0].partition(":")
    else:
        raise ValueError(
            f'{path} must hold "user:password", or the user and the password on two lines'
        )
    if not user or not password:
        raise ValueError(f"{path} holds an empty user or password")
    return user, password


def parse_opcua(checker: TomlChecker, data: dict, taken: set[str]) -> OpcUaConfig | None:
    """The `[opcua]` section of a configuration's TOML data; None when it has none. `taken`:
    the channel names other sources feed (a node may not feed one of them too)."""
    if "opcua" not in data:
        return None
    path: KeyPath = ("opcua",)
    raw = checker.table(data["opcua"], path, [f.name for f in fields(OpcUaConfig)])
    d = OpcUaConfig("")
    url = checker.value(raw, path, "url", str)
    match = _URL.fullmatch(url)
    if not match or not 1 <= int(match["port"]) <= 65535:
        raise checker.fail(
            (*path, "url"),
            f'must be "opc.tcp://host:port[/path]" (4840 is OPC UA\'s port), got {url!r}',
        )
    strings = {
        key: checker.value(raw, path, key, str, getattr(d, key))
        for key in ("certificate", "private_key", "server_certificate", "user_file", "namespace")
    }
    cfg = OpcUaConfig(
        url,
        security=checker.choice(raw, path, "security", SECURITY_MODES, d.security),
        mode=checker.choice(raw, path, "mode", READ_MODES, d.mode),
        **strings,
        **{k: checker.within(raw, path, k, r, getattr(d, k)) for k, r in SECTION.items()},
    )
    if cfg.reconnect_max_s < cfg.reconnect_min_s:
        raise checker.fail((*path, "reconnect_max_s"), "must not be less than reconnect_min_s")
    _check_security(checker, cfg, path)
    groups = _groups(checker, raw, path)
    nodes = _nodes(checker, raw, path, groups, taken, cfg.namespace)
    for name in groups:
        if not any(node.group == name for node in nodes):
            raise checker.fail((*path, "groups", name), "no node is read in this group")
    return replace(cfg, groups=groups, nodes=nodes)


def _check_security(checker: TomlChecker, cfg: OpcUaConfig, path: KeyPath) -> None:
    files = ("certificate", "private_key", "server_certificate")
    for key in files:
        name = getattr(cfg, key)
        if cfg.security == "none" and name:
            raise checker.fail(
                (*path, key), 'is used only with security "sign" or "sign_and_encrypt"'
            )
        if cfg.security != "none" and not name:
            raise checker.fail((*path, key), f"is needed with security {cfg.security!r}")
    if cfg.security != "none":
        _readable(checker, (*path, "certificate"), cfg.certificate)
        _readable(checker, (*path, "server_certificate"), cfg.server_certificate)
        checker.private_file((*path, "private_key"), cfg.private_key)
    if cfg.user_file:
        where = (*path, "user_file")
        checker.private_file(where, cfg.user_file)
        try:
            read_user_file(cfg.user_file)
        except OSError as exc:
            raise checker.fail(where, f"{cfg.user_file}: {exc.strerror}") from None
        except ValueError as exc:
            raise checker.fail(where, str(exc)) from None


def _readable(checker: TomlChecker, path: KeyPath, name: str) -> None:
    try:
        with open(name, "rb"):
            pass
    except OSError as exc:
        raise checker.fail(path, f"{name}: {exc.strerror}") from None


def _groups(checker: TomlChecker, raw: dict, path: KeyPath) -> dict[str, OpcUaGroup]:
    where: KeyPath = (*path, "groups")
    table = raw.get("groups")
    if not isinstance(table, dict) or not table:
        raise checker.fail(where, "needs one or more [opcua.groups.<name>] with period_s")
    groups = {}
    for name, entry in table.items():
        at: KeyPath = (*where, name)
        checker.channel_name(at, name, group=True)
        checker.table(entry, at, tuple(GROUP))
        period = checker.within(entry, at, "period_s", GROUP["period_s"])
        stale = checker.within(entry, at, "stale_after_s", GROUP["stale_after_s"], 3 * period)
        if stale < period:
            raise checker.fail((*at, "stale_after_s"), f"must be at least period_s ({period})")
        groups[name] = OpcUaGroup(name, period, stale)
    return groups


def _nodes(
    checker: TomlChecker,
    raw: dict,
    path: KeyPath,
    groups: dict[str, OpcUaGroup],
    taken: set[str],
    namespace: str,
) -> tuple[OpcUaNode, ...]:
    entries = raw.get("nodes")
    if not isinstance(entries, list) or not entries:
        raise checker.fail((*path, "nodes"), "needs one or more [[opcua.nodes]] (name, ...)")
    nodes: list[OpcUaNode] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        node = _node(checker, entry, (*path, "nodes", i), groups, namespace)
        where = (*path, "nodes", i, "name")
        if node.name in taken:
            raise checker.fail(where, f"channel {node.name!r} is already another source's")
        if node.name in seen:
            first = f"opcua.nodes[{seen[node.name]}]"
            raise checker.fail(where, f"duplicate node {node.name!r} (first at {first})")
        seen[node.name] = i
        nodes.append(node)
    return tuple(nodes)


def _node(
    checker: TomlChecker, entry: Any, at: KeyPath, groups: dict[str, OpcUaGroup], namespace: str
) -> OpcUaNode:
    entry = checker.table(entry, at, [f.name for f in fields(OpcUaNode)])
    name = checker.channel_name((*at, "name"), checker.value(entry, at, "name", str))
    node_id = checker.value(entry, at, "node_id", str, "")
    browse_path = checker.value(entry, at, "browse_path", str, "")
    if node_id and browse_path:
        raise checker.fail((*at, "browse_path"), "set node_id or browse_path, not both")
    if not node_id and not browse_path:
        raise checker.fail(at, "needs node_id or browse_path")
    try:
        if node_id:
            parse_node_id(node_id)
        else:
            parse_browse_path(browse_path, namespace)
    except ValueError as exc:
        raise checker.fail((*at, "node_id" if node_id else "browse_path"), str(exc)) from None
    if "group" in entry:
        group = checker.value(entry, at, "group", str)
        if group not in groups:
            raise checker.fail(
                (*at, "group"), f"no group {group!r} in [opcua.groups] (has {', '.join(groups)})"
            )
    elif len(groups) == 1:
        group = next(iter(groups))
    else:
        raise checker.fail((*at, "group"), f"missing (one of {', '.join(groups)})")
    kind = checker.value(entry, at, "type", str, "")
    if kind and kind not in TYPES:
        raise checker.fail((*at, "type"), f"must be one of {', '.join(TYPES)}, got {kind!r}")
    return OpcUaNode(
        name,
        node_id,
        browse_path,
        checker.value(entry, at, "unit", str, ""),
        checker.within(entry, at, "quantum", QUANTUM, 0.0),
        group,
        checker.value(entry, at, "writable", bool, False),
        kind,
    )


def check_writable_node(checker: TomlChecker, node: OpcUaNode, path: KeyPath, roles: dict) -> None:
    """An OPC UA node the actuator may write: marked `writable` in [[opcua.nodes]] (every
    other node the writer refuses), and not read in another role."""
    if not node.writable:
        raise checker.fail(
            path, f"{node.name!r} is not writable = true in [[opcua.nodes]]: refused"
        )
    if node.name in roles and roles[node.name] != "override_tag":
        raise checker.fail(
            path,
            f"{node.name!r} is read as control.{roles[node.name]}: it cannot also be written",
        )
