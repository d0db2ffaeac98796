"""The OPC UA source: reads a machine's OPC UA server by time group, emits samples, and holds
the one writer to it (docs/opcua.md, "The agent's OPC UA source").

Two parts, as `bridge.py` is split:

- sans-IO: `reading()` turns a node's StatusCode and value into a number and what is wrong
  with it; `GroupCore` keeps a time group's latest readings and when the server last vouched
  for them, and makes each period's snapshot (GOOD, BAD, STALE once); `Deadlines` is the
  absolute-deadline schedule; `write_value()` converts a write to the node's type.
- `OpcUaSource`, the asyncio shell around asyncua: connects (security, user), resolves node
  ids and browse paths, subscribes one subscription per group (or reads each period), keeps
  the session alive, reconnects with backoff, and sends the writer's writes one at a time.

Whatever the transport, every group emits one snapshot of all its nodes per period, stamped
with the cycle's `clock.stamp_ns()`: control and telemetry see the same periodic samples as
from the Modbus poller. Never raises the server's faults out of `run()` (they are counted in
`stats()` and logged once per change); never blocks the caller of `write`; never writes a node
not configured `writable`. asyncua is imported only once a source connects: it costs an agent
some 40 MB resident, which one without [opcua] keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ..backoff import Backoff
from ..config import ConfigError
from ..samples import Quality, Sample
from ..stats import LatencyWindow
from ..tasks import run_together
from .base import (
    INTEGER_RANGES,
    Deadlines,
    Declaration,
    Emit,
    GroupFigures,
    SourceChannel,
    SourceStats,
)
from .modbus_queue import Job, RequestQueue
from .opcua_config import (
    OpcUaConfig,
    OpcUaGroup,
    OpcUaNode,
    parse_browse_path,
    parse_node_id,
    read_user_file,
)

log = logging.getLogger(__name__)

#: The first connection's bound, in request timeouts: a connect is some ten requests (hello,
#: secure channel, session, namespaces, paths, types, subscriptions), tens of ms on a LAN;
#: two timeouts leave a secured handshake on a slow Pi room.
CONNECT_TIMEOUTS = 2
#: Subscriptions a server may refuse, for the source to read by Read instead.
SUBSCRIPTION_REFUSALS = frozenset(
    {
        "BadTooManySubscriptions",
        "BadTooManyMonitoredItems",
        "BadServiceUnsupported",
        "BadNotSupported",
        "BadNotImplemented",
        "BadMonitoredItemFilterUnsupported",
    }
)
#: Status codes that say the session or its connection is gone: reconnect.
SESSION_GONE = frozenset(
    {
        "BadSessionIdInvalid",
        "BadSessionClosed",
        "BadSessionNotActivated",
        "BadSecureChannelIdInvalid",
        "BadSecureChannelClosed",
        "BadConnectionClosed",
        "BadNotConnected",
        "BadServerNotConnected",
        "BadNoCommunication",
        "BadCommunicationError",
        "BadShutdown",
        "BadServerHalted",
    }
)
#: What `identity` says, from the server's BuildInfo.
IDENTITY = ("manufacturer", "product", "software_version")
ACCESS_DENIED = frozenset(
    {
        "BadUserAccessDenied",
        "BadIdentityTokenInvalid",
        "BadIdentityTokenRejected",
        "BadUserSignatureInvalid",
    }
)

# -- sans-IO --------------------------------------------------------------------------------

#: The scalar types a channel can carry, as asyncua's VariantType names them: their values
#: 1..12 are also the node ids (namespace 0) of the data types (OPC 10000-6 5.1.2).
SCALARS = (
    "Boolean",
    "SByte",
    "Byte",
    "Int16",
    "UInt16",
    "Int32",
    "UInt32",
    "Int64",
    "UInt64",
    "Float",
    "Double",
    "String",
)
_FLOAT32_MAX = 3.4028234663852886e38
#: A String node's value as a number: a plain decimal ("1001", "-2.5"), nothing else.
_DECIMAL = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)\s*")


def severity(status: int) -> str:
    """A StatusCode's severity, its top two bits (OPC 10000-4 7.39): "good", "uncertain" or
    "bad" (11, reserved, counts as bad)."""
    return ("good", "uncertain", "bad", "bad")[(status >> 30) & 0b11]


def reading(status: int, variant: str, value, is_array: bool = False) -> tuple[float, str]:
    """A node's value as (number, fault): fault "" for a GOOD sample, else why it is BAD (the
    number then NaN): "bad_status"; "uncertain" (the server doubts it: control acts on good
    values only, and a fault never raises the feed); "no_value"; "unsupported_type" (arrays,
    dates, structures); "not_numeric" (a String that is not a decimal number); "bad_value"
    (NaN or infinite, as a Modbus float)."""
    kind = severity(status)
    if kind != "good":
        return math.nan, "bad_status" if kind == "bad" else "uncertain"
    if value is None or variant == "Null":
        return math.nan, "no_value"
    if is_array or variant not in SCALARS:
        return math.nan, "unsupported_type"
    if variant == "String" and not (isinstance(value, str) and _DECIMAL.fullmatch(value)):
        return math.nan, "not_numeric"
    number = float(value)
    if not math.isfinite(number):
        return math.nan, "bad_value"
    return number, ""


class WriteRefused(ValueError):
    """A write the node's type cannot hold; the message is the StatusCode name a server would
    answer (BadOutOfRange, BadTypeMismatch)."""


def write_value(value: float, variant: str) -> bool | int | float | str:
    """`value` as the node's type holds it: integers rounded down (as the actuator rounds:
    never a higher feed than asked), a Boolean true unless 0, a String in decimal;
    WriteRefused when the type cannot hold it."""
    value = float(value)  # a plain float, whatever number type the caller had
    if variant == "Double":
        return value
    if variant == "Float":
        if math.isfinite(value) and abs(value) > _FLOAT32_MAX:
            raise WriteRefused("BadOutOfRange")
        return value
    if variant not in SCALARS:
        raise WriteRefused("BadTypeMismatch")
    if not math.isfinite(value):
        raise WriteRefused("BadOutOfRange")
    if variant == "Boolean":
        return value != 0
    if variant == "String":
        return str(int(value)) if value.is_integer() else repr(value)
    lo, hi = INTEGER_RANGES[variant.lower()]
    number = math.floor(value + 1e-9)  # 88.0 computed as 87.9999999 is 88
    if not lo <= number <= hi:
        raise WriteRefused("BadOutOfRange")
    return number


@dataclass
class _NodeState:
    value: float = math.nan
    fault: str | None = None  # None: nothing read this session; "": good; else why BAD
    detail: str = ""  # the StatusCode name, for the log
    logged: str = ""  # the fault last logged ("": good)
    last_value: float = math.nan  # the last good value
    last_good_ns: int | None = None  # when the server last vouched for a good value
    stale: bool = False


class GroupCore:
    """One time group's nodes: their latest readings, and when the server last vouched that
    they are current (a subscription's publish response, keep-alives included, or a Read's
    reply). Sans-IO: the shell passes the readings and the monotonic time.

    `snapshot(stamp, now)` is the group's sample set for one cycle: while the server vouches
    (within stale_after_s), each node's latest reading, GOOD or BAD (NaN); a node with no
    good value for stale_after_s gets one STALE sample with its last good value, as the
    Modbus poller's tags do (the age counts from the first cycle)."""

    def __init__(self, group: OpcUaGroup, names: Sequence[str]):
        self.group = group
        self.names = tuple(names)
        self.state = {name: _NodeState() for name in self.names}
        self.vouched_ns: int | None = None
        self.counters: Counter[str] = Counter()  # BAD samples by fault, STALE ones
        self.cycles = 0
        self.overruns = 0
        self.latency = LatencyWindow()
        self._stale_ns = round(group.stale_after_s * 1e9)

    def update(self, name: str, value: float, fault: str, detail: str = "") -> None:
        """A node's reading: a notification, a Read's result, or why it cannot be read."""
        state = self.state[name]
        state.value, state.fault, state.detail = value, fault, detail
        if fault != state.logged:
            if fault:
                log.warning("opcua node %s: %s%s", name, fault, f" ({detail})" if detail else "")
            else:
                log.info("opcua node %s: good again", name)
            state.logged = fault

    def vouch(self, now_ns: int) -> None:
        """The server says the group's readings are current as of `now_ns`."""
        self.vouched_ns = now_ns

    def lapse(self) -> None:
        """The server no longer vouches (a Read failed): nothing is current until it does."""
        self.vouched_ns = None

    def reset(self) -> None:
        """A new session: nothing is known until the server says it again."""
        self.vouched_ns = None
        for state in self.state.values():
            state.fault = None

    def snapshot(self, stamp_ns: int, now_ns: int) -> list[Sample]:
        current = self.vouched_ns is not None and now_ns - self.vouched_ns <= self._stale_ns
        samples = []
        for name in self.names:
            state = self.state[name]
            if current and state.fault is not None:
                if state.fault:
                    self.counters[state.fault] += 1
                    samples.append(Sample(name, stamp_ns, math.nan, Quality.BAD))
                else:
                    state.last_value, state.last_good_ns = state.value, self.vouched_ns
                    state.stale = False
                    samples.append(Sample(name, stamp_ns, state.value, Quality.GOOD))
            if state.stale:
                continue
            if state.last_good_ns is None:
                state.last_good_ns = now_ns
            elif now_ns - state.last_good_ns > self._stale_ns:
                state.stale = True
                self.counters["stale"] += 1
                samples.append(Sample(name, stamp_ns, state.last_value, Quality.STALE))
        self.cycles += 1
        return samples


def declare(cfg: OpcUaConfig) -> Declaration:
    """Every node, in the section's order; a group is a time group (one stamp a cycle)."""
    return Declaration(
        tuple(sorted(cfg.groups)),
        tuple(
            SourceChannel(
                node.name,
                node.unit,
                node.default_quantum,
                cfg.groups[node.group].period_s,
                node.group,
                f"opcua.groups.{node.group}",
            )
            for node in cfg.nodes
        ),
    )


# -- the asyncio shell ---------------------------------------------------------------------


async def make_client(cfg: OpcUaConfig):
    """An asyncua client for `cfg`, configured, not connected. Its session keep-alive is
    asyncua's watchdog: a read of the server's state every timeout_s / 2, answered within as
    long, so a dead server is noticed within timeout_s. Certificates and keys may be PEM or
    DER, whatever their names; the agent's application URI is its certificate's."""
    from asyncua import Client, ua
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

    client = Client(cfg.url, timeout=cfg.timeout_s, watchdog_intervall=cfg.timeout_s / 2)
    client.session_timeout = round(cfg.session_timeout_s * 1000)
    client.name = client.description = "edge-agent"
    if cfg.security != "none":
        own = _key_file(cfg.certificate)
        client.application_uri = _application_uri(own)
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            certificate=own,
            private_key=_key_file(cfg.private_key),
            server_certificate=_key_file(cfg.server_certificate),
            mode=getattr(ua.MessageSecurityMode, _MODES[cfg.security]),
        )
    if cfg.user_file:
        user, password = read_user_file(cfg.user_file)
        client.set_user(user)
        client.set_password(password)
    return client


_MODES = {"sign": "Sign", "sign_and_encrypt": "SignAndEncrypt"}


def _key_file(path: str):
    """A certificate or key file as asyncua takes it, PEM or DER by its content (asyncua goes
    by the name's suffix: a PEM "agent.crt" would not load)."""
    from asyncua.crypto.uacrypto import CertProperties

    with open(path, "rb") as file:
        content = file.read()
    return CertProperties(content, "pem" if content.lstrip().startswith(b"-----") else "der")


def _application_uri(properties) -> str:
    """An OPC UA application's URI is in its certificate's subjectAltName (OPC 10000-6
    6.2.2); servers check the one a client says against it."""
    from cryptography import x509

    pem = properties.extension == "pem"
    load = x509.load_pem_x509_certificate if pem else x509.load_der_x509_certificate
    certificate = load(properties.path_or_content)
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        raise ValueError("the certificate has no subjectAltName with an application URI") from None
    uris = names.value.get_values_for_type(x509.UniformResourceIdentifier)
    if not uris:
        raise ValueError("the certificate's subjectAltName holds no application URI")
    return uris[0]


@dataclass(frozen=True)
class _Resolved:
    """A node found on the server: its node id (an asyncua NodeId) and the VariantType name
    of its values (None: not one the agent can write)."""

    node_id: object
    variant: str | None


class OpcUaWriter:
    """Hands writes from any thread to the source's event loop, never waiting for them."""

    def __init__(self, source: OpcUaSource, loop: asyncio.AbstractEventLoop):
        self._source, self._loop = source, loop

    def write(self, node: OpcUaNode, value: float, urgent: bool = False) -> None:
        """Queue a write of `value` to `node`; an urgent one (a safe override, a feed hold)
        goes before anything else waiting, and a newer value replaces one not yet sent. A
        node not configured `writable` raises ValueError."""
        self._source.check_writable(node)
        self._loop.call_soon_threadsafe(self._source._queue_write, node, value, urgent)

    async def flush(self) -> None:
        """Wait for the writes already asked for: each ends with its reply, its timeout
        (timeout_s after it was sent), the session down, or a newer write replacing it."""
        await asyncio.sleep(0)  # let call_soon_threadsafe callbacks queue their writes
        await self._source._writes_settled()


class OpcUaSource:
    """One OPC UA server, for as long as `run()` runs: one session shared by every group
    and the writer (a controller has few sessions to spare)."""

    name = "opcua"
    controller = True

    def __init__(
        self,
        cfg: OpcUaConfig,
        clock,
        emit: Emit,
        connect: Callable[[OpcUaConfig], Awaitable[object]] | None = None,
        rng: Callable[[], float] = random.random,
    ):
        """`connect(cfg)`: a configured, unconnected asyncua `Client` for each attempt
        (`make_client` unless a test injects its own)."""
        self.cfg, self.clock, self.emit = cfg, clock, emit
        self._connect = connect or make_client
        self.backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s, rng)
        self.ready_wait_s = CONNECT_TIMEOUTS * cfg.timeout_s
        self.nodes = {node.name: node for node in cfg.nodes}
        self.groups = {
            name: GroupCore(group, [n.name for n in cfg.nodes if n.group == name])
            for name, group in sorted(cfg.groups.items())
        }
        self.state = "down"
        self.identity: dict | None = None
        self.connects = 0
        self.disconnects = 0
        self.emitted = 0
        self.counters: Counter[str] = Counter()  # the session's work and faults
        self.write_counters: Counter[str] = Counter()
        self.queue = RequestQueue(can_abandon=False)  # writes only: one at a time, in order
        self._index = {node.name: i for i, node in enumerate(cfg.nodes)}
        self._client = None
        self._up = asyncio.Event()
        self._lost: asyncio.Future | None = None
        self._failing: str | None = None  # the kind of failure last logged
        self._resolved: dict[str, _Resolved] = {}
        self._polled: set[str] = set()  # groups read by Read this session
        self._handles: dict[int, str] = {}  # monitored item client handle -> node name
        self._writer: OpcUaWriter | None = None
        self._work = asyncio.Event()
        self._writes: set[asyncio.Future] = set()
        self._running = False
        self._opened = False  # the client's connect succeeded: its session is to be closed
        # A subscribed group's publish responses: when the last came, how long the silence
        # may last before the subscription is taken for lost.
        self._heard_ns: dict[str, int] = {}
        self._silence_ns: dict[str, int] = {}

    @property
    def connected(self) -> bool:
        return self.state == "up"

    async def wait_ready(self, timeout_s: float | None) -> bool:
        try:
            await asyncio.wait_for(self._up.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def take_writer(self, loop: asyncio.AbstractEventLoop) -> OpcUaWriter:
        """The one writer, for the actuator; a second call is refused."""
        if self._writer is not None:
            raise RuntimeError(f"opcua {self.cfg.url}: the writer is already taken")
        self._writer = OpcUaWriter(self, loop)
        return self._writer

    def write_targets(self, control) -> dict[str, OpcUaNode]:
        """`[control] writable`'s nodes, each configured `writable`; a ConfigError (one
        line) names the first that is not."""
        targets = {}
        for name in control.writable:
            node = self.nodes.get(name)
            if node is None:
                raise ConfigError(f"[control] writable: no OPC UA node named {name!r}")
            if not node.writable:
                raise ConfigError(
                    f"[control] writable: OPC UA node {name!r} lacks writable = true: refused"
                )
            targets[name] = node
        return targets

    def check_writable(self, node: OpcUaNode) -> None:
        if self.nodes.get(node.name) != node or not node.writable:
            raise ValueError(
                f"opcua {self.cfg.url}: node {node.name!r} is not writable "
                "(writable = true in its [[opcua.nodes]] makes it so)"
            )

    def stats(self) -> SourceStats:
        faults = Counter(self.counters)
        for core in self.groups.values():
            faults.update(core.counters)
        counts = {k: faults.pop(k, 0) for k in ("publishes", "notifications", "reads")}
        return SourceStats(
            self.name,
            self.cfg.url,
            self.state,
            self.connected,
            self.emitted,
            self.connects,
            self.disconnects,
            counts,
            dict(faults),
            {
                name: GroupFigures(
                    core.cycles,
                    core.overruns,
                    tuple(core.latency.percentile(q) for q in (50, 99, 100)),
                )
                for name, core in self.groups.items()
            },
            dict(self.write_counters),
            sum(core.cycles for core in self.groups.values()) if self._running else None,
        )

    async def run(self) -> None:
        await run_together(
            (
                ("opcua-session", self._keep_session()),
                ("opcua-writes", self._send_writes()),
                ("opcua-groups", self._run_groups()),
            )
        )

    # -- the groups' cycles -------------------------------------------------------------------

    async def _run_groups(self) -> None:
        # The first connection gets its bound before the cycles start, so that a healthy
        # start does not count its first cycles' values as stale.
        await self.wait_ready(self.ready_wait_s)
        self._running = True
        try:
            await run_together((f"opcua-{name}", self._run_group(name)) for name in self.groups)
        finally:
            self._running = False

    async def _run_group(self, name: str) -> None:
        deadlines = Deadlines(self.groups[name].group.period_s, self.clock.monotonic_ns())
        while True:
            await self.cycle(name)
            sleep_s, missed = deadlines.after_cycle(self.clock.monotonic_ns())
            self.groups[name].overruns += missed
            await asyncio.sleep(sleep_s)

    async def cycle(self, name: str) -> list[Sample]:
        """One cycle of one group: read it (when it is polled), emit its snapshot. Returns
        what it emitted."""
        core = self.groups[name]
        started = self.clock.monotonic_ns()
        stamp = self.clock.stamp_ns()  # one stamp for the group's snapshot
        if name in self._polled:
            await self._poll(name)
        now = self.clock.monotonic_ns()
        if name in self._silence_ns and now - self._heard_ns[name] > self._silence_ns[name]:
            self._subscription_lost(f"group {name}'s subscription silent past its keep-alive")
        samples = core.snapshot(stamp, now)
        core.latency.add((now - started) / 1e9)
        if samples:
            self.emitted += len(samples)
            self.emit(samples)
        return samples

    async def _poll(self, name: str) -> None:
        """One Read of the group's nodes (its node ids, resolved at connect)."""
        from asyncua import ua

        core, client = self.groups[name], self._client
        wanted = [(n, self._resolved[n].node_id) for n in core.names if n in self._resolved]
        if not wanted:
            core.vouch(self.clock.monotonic_ns())  # nothing to read: its faults are current
            return
        self.counters["reads"] += 1
        params = ua.ReadParameters(
            MaxAge=0,
            TimestampsToReturn=ua.TimestampsToReturn.Neither,
            NodesToRead=[ua.ReadValueId(node_id, ua.AttributeIds.Value) for _, node_id in wanted],
        )
        try:
            values = await client.uaclient.read(params)
        except Exception as exc:  # the session's faults, counted, never raised
            core.lapse()
            if client is self._client:  # not a read the session's close cut short
                kind, detail = classify(exc)
                if kind in ("session_lost", "unreachable"):
                    self._lose(detail)  # counted as the session's loss
                else:
                    self.counters[kind] += 1
            return
        for (node, _), datavalue in zip(wanted, values, strict=True):
            core.update(node, *_reading(datavalue))
        core.vouch(self.clock.monotonic_ns())

    # -- the session --------------------------------------------------------------------------

    async def _keep_session(self) -> None:
        """Connect, read, notice the loss, back off, again: until cancelled."""
        while True:
            try:
                await self._session()
            except Exception as exc:  # the server's faults and the agent's bugs: never raised
                self._failed(exc)
            finally:
                await self._close()
            await asyncio.sleep(self.backoff.next_delay())

    async def _session(self) -> None:
        self.state = "connecting"
        self._lost = asyncio.get_running_loop().create_future()
        try:
            client = await self._connect(self.cfg)
        except (OSError, ValueError) as exc:
            raise _SetupError(_one_line(exc)) from None
        self._client = client
        async with asyncio.timeout(self.ready_wait_s):
            client.connection_lost_callback = functools.partial(self._connection_lost, client)
            await client.connect()
            self._opened = True
            self.connects += 1
            await self.prepare(client)
            await self._start_reading(client)
            # A subscription's first values come with its first publish, a period later (a
            # second for a slow group): one Read now, so the first cycles carry every value
            # and control does not start with an input it has not seen.
            for name in self.groups:
                await self._poll(name)
        self.backoff.reset()
        self.state = "up"
        self._up.set()
        self._failing = None
        modes = ", ".join(
            f"{name} {'polled' if name in self._polled else 'subscribed'}" for name in self.groups
        )
        log.info(
            "opcua %s: connected to %s; %d of %d nodes found; %s",
            self.cfg.url,
            " ".join(self.identity.values()) if self.identity else "the server",
            len(self._resolved),
            len(self.cfg.nodes),
            modes,
        )
        reason = await self._lost
        self.disconnects += 1
        self.counters["session_lost"] += 1
        self._failing = "session_lost"
        log.warning("opcua %s: session lost (%s); reconnecting", self.cfg.url, reason)

    def _failed(self, exc: Exception) -> None:
        kind, detail = classify(exc)
        self.counters[kind] += 1
        if kind == self._failing:
            return
        self._failing = kind
        if kind == "internal_errors":  # a bug: its traceback, once
            log.exception("opcua %s: session failed: %s; retrying", self.cfg.url, detail)
        else:
            log.warning(
                "opcua %s: cannot connect: %s (%s); retrying with backoff up to %.1f s",
                self.cfg.url,
                kind,
                detail,
                self.cfg.reconnect_max_s,
            )

    async def _connection_lost(self, client, exc: Exception) -> None:
        """asyncua's watchdog: the keep-alive failed or the connection closed."""
        if client is self._client:  # not an earlier session's, late
            self._lose(classify(exc)[1])

    def _subscription_lost(self, reason: str) -> None:
        """A subscription ended or fell silent: a new session makes them all again (unless
        the session is already lost, which ends them all)."""
        if self._lost is not None and not self._lost.done():
            self.counters["subscription_lost"] += 1
            self._lose(reason)

    def _lose(self, reason: str) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(reason)

    async def _close(self) -> None:
        client, self._client = self._client, None
        opened, self._opened = self._opened, False
        self._up.clear()
        self.state = "down"
        self._resolved.clear()
        self._polled.clear()
        self._handles.clear()
        self._heard_ns.clear()
        self._silence_ns.clear()
        for core in self.groups.values():
            core.reset()
        if client is None:
            return
        if not opened:  # a connect that failed or timed out: its socket only
            client.disconnect_socket()
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.cfg.timeout_s):
                await client.disconnect()

    def node_ids(self) -> dict[str, object]:
        """Each node found this session: its name -> its NodeId (`edge-agent probe` reads them)."""
        return {name: resolved.node_id for name, resolved in self._resolved.items()}

    async def prepare(self, client) -> None:
        """The server's namespaces and identity, the nodes' ids and types: one Read, one
        TranslateBrowsePathsToNodeIds, one Read (`edge-agent probe` resolves by it too)."""
        from asyncua import ua

        ids, value = ua.ObjectIds, ua.AttributeIds.Value
        first = await client.uaclient.read(
            _read_params(
                ua,
                [
                    (ua.NodeId(ids.Server_NamespaceArray), value),
                    (ua.NodeId(ids.Server_ServerStatus_BuildInfo_ManufacturerName), value),
                    (ua.NodeId(ids.Server_ServerStatus_BuildInfo_ProductName), value),
                    (ua.NodeId(ids.Server_ServerStatus_BuildInfo_SoftwareVersion), value),
                ],
            )
        )
        first[0].StatusCode.check()
        namespaces = list(first[0].Value.Value)
        identity = {
            key: str(v.Value.Value)
            for key, v in zip(IDENTITY, first[1:], strict=True)
            if v.StatusCode.is_good() and v.Value.Value
        }
        self.identity = identity or None
        found = await self._find(client, namespaces)
        await self._types(client, found)

    async def _find(self, client, namespaces: list[str]) -> dict[str, object]:
        """Node name -> NodeId for every node the server has; the others BAD, "unresolved"."""
        from asyncua import ua

        found: dict[str, object] = {}
        paths: dict[str, object] = {}
        for node in self.cfg.nodes:
            try:
                if node.node_id:
                    found[node.name] = _node_id(ua, parse_node_id(node.node_id), namespaces)
                else:
                    paths[node.name] = _browse_path(
                        ua, parse_browse_path(node.browse_path, self.cfg.namespace), namespaces
                    )
            except LookupError as exc:
                self._unresolved(node.name, str(exc))
        if paths:
            results = await client.uaclient.translate_browsepaths_to_nodeids(list(paths.values()))
            for name, result in zip(paths, results, strict=True):
                if result.StatusCode.is_good() and result.Targets:
                    target = result.Targets[0].TargetId
                    found[name] = ua.NodeId(target.Identifier, target.NamespaceIndex)
                else:
                    self._unresolved(name, f"browse path: {result.StatusCode.name}")
        return found

    async def _types(self, client, found: dict[str, object]) -> None:
        """Each node's data type (and value, for a subtype's built-in type): what a write is
        converted to, and what a node's `type` is checked against."""
        from asyncua import ua

        names = list(found)
        attrs = (ua.AttributeIds.DataType, ua.AttributeIds.Value)
        wanted = [(found[n], attr) for n in names for attr in attrs]
        results = await client.uaclient.read(_read_params(ua, wanted)) if wanted else []
        for i, name in enumerate(names):
            data_type, value = results[2 * i], results[2 * i + 1]
            if not data_type.StatusCode.is_good():
                self._unresolved(name, data_type.StatusCode.name)
                continue
            variant = _variant_of(data_type.Value.Value, value)
            node = self.nodes[name]
            if node.type and variant is not None and variant.lower() != node.type:
                self._unresolved(name, f"the server types it {variant}, the config {node.type}")
                continue
            self._resolved[name] = _Resolved(found[name], variant)

    def _unresolved(self, name: str, detail: str) -> None:
        self.groups[self.nodes[name].group].update(name, math.nan, "unresolved", detail)

    async def _start_reading(self, client) -> None:
        """A subscription per group, or its Read each cycle (mode "poll", a refusal)."""
        from asyncua import ua

        for name, core in self.groups.items():
            nodes = [n for n in core.names if n in self._resolved]
            if self.cfg.mode == "poll" or not nodes:
                self._polled.add(name)
                continue
            try:
                await self._subscribe(client, core.group, nodes)
            except ua.UaStatusCodeError as exc:
                code = ua.StatusCode(exc.code).name
                if code not in SUBSCRIPTION_REFUSALS:
                    raise
                if not self.counters["subscription_refused"]:
                    log.warning(
                        "opcua %s: the server refuses subscriptions (%s); reading by Read "
                        "each period instead",
                        self.cfg.url,
                        code,
                    )
                self.counters["subscription_refused"] += 1
                self._polled.add(name)

    async def _subscribe(self, client, group: OpcUaGroup, nodes: list[str]) -> None:
        """One subscription: published and sampled each period; a keep-alive at least every
        half stale_after_s, so a quiet healthy group never looks stale; a lifetime of the
        session timeout (OPC 10000-4 5.13.2: at least three keep-alives)."""
        from asyncua import ua

        period_ms = group.period_s * 1000
        keepalive = max(1, int(group.stale_after_s / (2 * group.period_s)))
        lifetime = max(3 * keepalive, math.ceil(self.cfg.session_timeout_s / group.period_s))
        result = await client.uaclient.create_subscription(
            ua.CreateSubscriptionParameters(
                RequestedPublishingInterval=period_ms,
                RequestedLifetimeCount=min(lifetime, 0xFFFF_FFFF),
                RequestedMaxKeepAliveCount=keepalive,
                MaxNotificationsPerPublish=0,
                PublishingEnabled=True,
                Priority=0,
            ),
            functools.partial(self._published, client, group.name),
        )
        silence_s = result.RevisedPublishingInterval * result.RevisedMaxKeepAliveCount / 1000
        # Three keep-alives missed and a request timeout: the subscription is gone.
        self._heard_ns[group.name] = self.clock.monotonic_ns()
        self._silence_ns[group.name] = round((3 * silence_s + self.cfg.timeout_s) * 1e9)
        if silence_s > group.stale_after_s:
            log.warning(
                "opcua %s: group %s: the server keeps quiet up to %.3g s (publishing every "
                "%.3g s), past stale_after_s %.3g s: unchanged values will go STALE",
                self.cfg.url,
                group.name,
                silence_s,
                result.RevisedPublishingInterval / 1000,
                group.stale_after_s,
            )
        items = []
        for name in nodes:
            handle = len(self._handles) + 1
            self._handles[handle] = name
            items.append(
                ua.MonitoredItemCreateRequest(
                    ItemToMonitor=ua.ReadValueId(
                        self._resolved[name].node_id, ua.AttributeIds.Value
                    ),
                    MonitoringMode=ua.MonitoringMode.Reporting,
                    RequestedParameters=ua.MonitoringParameters(
                        ClientHandle=handle,
                        SamplingInterval=period_ms,
                        QueueSize=self.cfg.queue_size,
                        DiscardOldest=True,
                    ),
                )
            )
        created = await client.uaclient.create_monitored_items(
            ua.CreateMonitoredItemsParameters(
                SubscriptionId=result.SubscriptionId,
                TimestampsToReturn=ua.TimestampsToReturn.Neither,
                ItemsToCreate=items,
            )
        )
        refused = [r.StatusCode for r in created if not r.StatusCode.is_good()]
        if refused:
            with contextlib.suppress(Exception):
                await client.uaclient.delete_subscriptions([result.SubscriptionId])
            raise ua.UaStatusCodeError(refused[0].value)

    def _published(self, client, group: str, result) -> None:
        """A publish response of a group's subscription: data, a keep-alive, or its end."""
        from asyncua import ua

        if client is not self._client:
            return  # an earlier session's
        core, now = self.groups[group], self.clock.monotonic_ns()
        self._heard_ns[group] = now
        self.counters["publishes"] += 1
        for data in result.NotificationMessage.NotificationData or ():
            if isinstance(data, ua.DataChangeNotification):
                for item in data.MonitoredItems:
                    name = self._handles.get(item.ClientHandle)
                    if name is not None:
                        self.counters["notifications"] += 1
                        core.update(name, *_reading(item.Value))
            elif isinstance(data, ua.StatusChangeNotification):
                core.lapse()
                self._subscription_lost(f"group {group}'s subscription ended: {data.Status.name}")
                return
        core.vouch(now)

    # -- writes -------------------------------------------------------------------------------

    def _queue_write(self, node: OpcUaNode, value: float, urgent: bool) -> None:
        """One write, queued (on the event loop); its outcome is counted, and logged once
        per kind. A write while the session is down fails at once: never sent later."""
        if not self.connected:
            self._count_write("down", "not connected")
            return
        outcome = asyncio.get_running_loop().create_future()
        outcome.add_done_callback(self._write_ended)
        self._writes.add(outcome)
        superseded = self.queue.put(Job(self._index[node.name], urgent, (node, value, outcome)))
        if superseded is not None:
            superseded.payload[2].set_result("superseded")
        self._work.set()

    async def _send_writes(self) -> None:
        """One write at a time, in the queue's order: a write sent beside another to the same
        node could land after it, an older value last."""
        try:
            while True:
                job = self.queue.take()
                if job is None:
                    self._work.clear()
                    await self._work.wait()
                    continue
                node, value, outcome = job.payload
                result = "down"
                try:
                    result = await self._write_one(node, value)
                finally:
                    self.queue.done(job)
                    if not outcome.done():
                        outcome.set_result(result)
        finally:
            for job in self.queue.drain():
                if not job.payload[2].done():
                    job.payload[2].set_result("down")

    async def _write_one(self, node: OpcUaNode, value: float) -> str:
        """The write's outcome: "ok", "down", "timeout", "unresolved", "refused_<status>"."""
        from asyncua import ua

        client, resolved = self._client, self._resolved.get(node.name)
        if client is None or not self.connected:
            return "down"
        if resolved is None:
            return "unresolved"
        try:
            variant = ua.Variant(
                write_value(value, resolved.variant), ua.VariantType[resolved.variant]
            )
        except WriteRefused as exc:
            return f"refused_{exc}"
        params = ua.WriteParameters(
            NodesToWrite=[
                ua.WriteValue(
                    NodeId=resolved.node_id,
                    AttributeId=ua.AttributeIds.Value,
                    Value=ua.DataValue(variant),
                )
            ]
        )
        try:
            (status,) = await client.uaclient.write(params)
        except Exception as exc:  # the session's faults, counted, never raised
            kind, detail = classify(exc)
            if kind in ("session_lost", "unreachable"):
                self._lose(detail)
                return "down"
            if kind in ("refused", "access_denied", "security"):
                return f"refused_{detail}"  # a StatusCode's name
            return kind
        return "ok" if status.is_good() else f"refused_{status.name}"

    def _write_ended(self, outcome: asyncio.Future) -> None:
        self._writes.discard(outcome)
        kind = outcome.result()
        if kind in ("ok", "superseded"):
            self.write_counters[kind] += 1
        else:
            self._count_write(kind, "")

    def _count_write(self, kind: str, detail: str) -> None:
        if not self.write_counters[kind]:
            log.warning(
                "opcua %s: write %s%s (further ones counted)",
                self.cfg.url,
                kind,
                f": {detail}" if detail else "",
            )
        self.write_counters[kind] += 1

    async def _writes_settled(self) -> None:
        if self._writes:
            # One at a time, each within timeout_s of being sent.
            await asyncio.wait(list(self._writes), timeout=self.cfg.timeout_s * len(self._writes))


class _SetupError(Exception):
    """The client could not be made: a certificate, key or user file unusable."""


def _reading(datavalue) -> tuple[float, str, str]:
    """An asyncua DataValue as `reading()` sees it, with the status's name for the log."""
    variant, status = datavalue.Value, datavalue.StatusCode
    code = status.value if status is not None else 0
    value, fault = reading(
        code,
        variant.VariantType.name if variant is not None else "Null",
        variant.Value if variant is not None else None,
        bool(variant is not None and variant.is_array),
    )
    return value, fault, status.name if fault in ("bad_status", "uncertain") else ""


def _read_params(ua, wanted):
    return ua.ReadParameters(
        MaxAge=0,
        TimestampsToReturn=ua.TimestampsToReturn.Neither,
        NodesToRead=[ua.ReadValueId(node_id, attr) for node_id, attr in wanted],
    )


def _node_id(ua, parts, namespaces: list[str]):
    namespace = parts.namespace
    if isinstance(namespace, str):
        if namespace not in namespaces:
            raise LookupError(f"namespace {namespace} is not on the server")
        namespace = namespaces.index(namespace)
    return ua.NodeId(parts.identifier, namespace)


def _browse_path(ua, names, namespaces: list[str]):
    """A BrowsePath from the Root folder along hierarchical references."""
    elements = []
    for uri, name in names:
        if uri not in namespaces:
            raise LookupError(f"namespace {uri} is not on the server")
        elements.append(
            ua.RelativePathElement(
                ReferenceTypeId=ua.NodeId(ua.ObjectIds.HierarchicalReferences),
                IsInverse=False,
                IncludeSubtypes=True,
                TargetName=ua.QualifiedName(name, namespaces.index(uri)),
            )
        )
    return ua.BrowsePath(
        StartingNode=ua.NodeId(ua.ObjectIds.RootFolder),
        RelativePath=ua.RelativePath(Elements=elements),
    )


def _variant_of(data_type, value) -> str | None:
    """A node's built-in type: its DataType when that is one (namespace 0, ids 1..12), else
    the type of the value it holds (a subtype: Duration is a Double, an enumeration Int32)."""
    number = getattr(data_type, "Identifier", None)
    if data_type is not None and data_type.NamespaceIndex == 0 and number in range(1, 13):
        return SCALARS[number - 1]
    variant = value.Value if value.StatusCode.is_good() else None
    if variant is None or variant.is_array or variant.VariantType.name not in SCALARS:
        return None
    return variant.VariantType.name


def classify(exc: BaseException) -> tuple[str, str]:
    """(fault kind, one-line detail) of a failed request or connection."""
    from asyncua import ua

    if isinstance(exc, _SetupError):
        return "client_setup", str(exc)
    if isinstance(exc, TimeoutError):
        return "timeout", "no answer in time"
    if isinstance(exc, ua.UaStatusCodeError):
        name = ua.StatusCode(exc.code).name
        if name in SESSION_GONE:
            return "session_lost", name
        if name in ACCESS_DENIED:
            return "access_denied", name
        if name.startswith(("BadCertificate", "BadSecurity", "BadNonce", "BadApplication")):
            return "security", name
        if name in ("BadTimeout", "BadRequestTimeout"):
            return "timeout", name
        return "refused", name
    if isinstance(exc, OSError):  # ConnectionError among them
        return "unreachable", _one_line(exc)
    if isinstance(exc, ua.UaError):  # "No matching endpoints", "Server certificate mismatch"
        text = _one_line(exc)
        return ("security" if re.search("certificate|endpoint", text, re.I) else "protocol"), text
    return "internal_errors", f"{type(exc).__name__}: {_one_line(exc)}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text or type(exc).__name__
