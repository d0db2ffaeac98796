"""The simulated CNC controller as an OPC UA server: serves a `Plant` through the umati-like
address space of `hil/opcua_space.py` (asyncua), with fault injection for tests.

Never changes the plant except by `Plant.write` of the agent's override, and never advances it
by the wall clock: plant time is the injected clock. The wall clock only stamps values, as a
real server stamps its samples.

Like a real controller, every node but the agent's override refuses writes (BadNotWritable),
an override outside its range is refused (BadOutOfRange), a failed sensor shows as a Bad
status with no value, and a server can drop its sessions or offer no subscriptions at all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import ipaddress
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from asyncua import Server, ua
from asyncua.common.callback import CallbackType
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.address_space import AttributeService
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hil.opcua_space import (
    BY_TAG,
    MACHINE,
    NAMESPACE_URI,
    UNECE_URI,
    UNITS,
    VARIABLES,
    Variable,
    objects,
    unece_id,
)
from hil.plant import Plant, demo_plant

APPLICATION_URI = "urn:edge-agent:hil:opcua-server"
#: The folder below the machine that the `auxiliary` values are served in.
AUXILIARY = "Auxiliary"
#: The bench's refresh period without a test driving it: the demo plant's step, 10 ms; a
#: shorter period would publish nothing new.
REFRESH_PERIOD_S = 0.01
_GOOD = ua.StatusCodes.Good


@dataclass
class Faults:
    """What the server does wrong, on purpose; takes effect at the next refresh (every read,
    write and `advance()` makes one). Tests change it at any time."""

    status: dict[str, int] = field(default_factory=dict)  # plant tag -> Bad StatusCode shown
    # A link down (the scenarios' `link_loss`): nothing is read from or sent to any client,
    # new connections included, until it clears; then what was held flows on, as TCP would.
    silent: bool = False

    def fail(self, tag: str, code: int = ua.StatusCodes.BadSensorFailure) -> None:
        self.status[tag] = code

    def clear(self) -> None:
        self.status.clear()


class OpcUaController:
    """An OPC UA server whose variables are a plant's values.

    Plant time is `clock()` minus `clock()` at construction. Every client read, every write
    and `advance()` first brings the plant to that time; so does a task every
    `refresh_period_s` while serving (None: only those), so subscriptions see the plant move.

    Security: SecurityPolicy None unless `certificate` and `private_key` (PEM or DER files) are
    given; then only Basic256Sha256 Sign and SignAndEncrypt. `users` (name -> password) turns
    anonymous access off. `trusted_clients`, a folder of client certificates, refuses every
    other client certificate (without it any is accepted). `subscriptions=False` refuses every
    CreateSubscription (BadTooManySubscriptions), so a client must poll.

    `auxiliary` names further values of the plant's `values()`, beyond the register
    map's tags, to serve as read-only Doubles without a unit in a folder `Auxiliary`
    below the machine (node id `<machine>/Auxiliary/<name>`): the synthetic values of
    the standard load (`benchmarks/service_load.py`).
    """

    def __init__(
        self,
        plant: Plant,
        *,
        clock: Callable[[], float] = time.monotonic,
        machine: str = MACHINE,
        certificate: Path | None = None,
        private_key: Path | None = None,
        users: Mapping[str, str] | None = None,
        trusted_clients: Path | None = None,
        subscriptions: bool = True,
        refresh_period_s: float | None = REFRESH_PERIOD_S,
        auxiliary: Iterable[str] = (),
    ) -> None:
        if (certificate is None) != (private_key is None):
            raise ValueError("certificate and private_key go together")
        self._auxiliary = _auxiliary_variables(plant, auxiliary)
        self._variables = VARIABLES + self._auxiliary
        self.plant = plant
        self.machine = machine
        self.faults = Faults()
        self.url = ""  # where it serves, for logs and clients: "opc.tcp://127.0.0.1:4840"
        self.namespace_index = 0  # of NAMESPACE_URI, once serving
        self._clock = clock
        self._t0 = clock()
        self._certificate, self._private_key = certificate, private_key
        self._users = dict(users) if users is not None else None
        self._trusted_clients = trusted_clients
        self._subscriptions = subscriptions
        self._refresh_period_s = refresh_period_s
        self._lock = asyncio.Lock()  # one refresh at a time: an interleaved one could go back
        self._server: Server | None = None
        self._ticker: asyncio.Task | None = None
        self._address: tuple[str, int] | None = None
        self._node_ids: dict[str, ua.NodeId] = {}  # plant tag -> its variable
        self._nodes: dict[ua.NodeId, Variable | None] = {}  # every node of ours; objects: None
        self._shown: dict[str, tuple[object, int]] = {}  # plant tag -> (value, status) served
        self._held: dict[asyncio.Transport, list[bytes]] = {}  # silenced: what it would send

    # -- life cycle -----------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on `host`:`port` (0: a free port; `host` must then name one address);
        return the bound port."""
        if self._server is not None:
            raise RuntimeError(f"already serving on {self.url}")
        server = Server(user_manager=_Users(self._users) if self._users is not None else None)
        await server.init()  # the standard address space: about 1.3 s on this machine
        server.set_endpoint(f"opc.tcp://{host}:{port}")
        server.set_server_name("edge-agent HIL bench")
        await server.set_application_uri(APPLICATION_URI)
        server.allow_remote_admin(False)
        await self._secure(server)
        if not self._subscriptions:
            server.iserver.max_subscriptions = 0
        self.namespace_index = await server.register_namespace(NAMESPACE_URI)
        # asyncua offers no per-node write hook that can answer a status: the Write service is
        # replaced whole, and passes every node not of ours on to asyncua's own.
        server.iserver.attribute_service = _ControllerWrites(server.iserver.aspace, self)
        server.iserver.subscribe_server_callback(CallbackType.PreRead, self._before_read)
        server.iserver.asyncio_transports = _Transports(self._hold)
        self._server = server
        try:
            await self._build(server)
            await server.start()
        except BaseException:
            self._server = None
            raise
        bound = server.bserver.port
        if not bound:
            await self.stop()
            raise RuntimeError(f"{host}: port 0 needs a host that names one address")
        self.url = f"opc.tcp://{host}:{bound}"
        self._serve_at(server, self.url)
        self._address = (host, bound)
        if self._refresh_period_s is not None:
            self._ticker = asyncio.create_task(self._tick(self._refresh_period_s))
        return bound

    async def stop(self) -> None:
        """Stop serving and close every session and connection; `restart()` serves again."""
        server, self._server = self._server, None
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker  # a refresh that failed raises here
        if server is not None:
            # asyncua's clock task sleeps a second between ticks and stop() would wait it out.
            clock, server.iserver.time_task = server.iserver.time_task, None
            if clock is not None:
                clock.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await clock
            await server.stop()
        self._shown.clear()
        self._held.clear()

    async def restart(self) -> None:
        """Stop, then serve again where it served before (the same port), as a controller
        rebooting: sessions and subscriptions are gone, node ids stay."""
        if self._address is None:
            raise RuntimeError("restart() before start()")
        await self.stop()
        await self.start(*self._address)

    @property
    def running(self) -> bool:
        return self._server is not None

    async def advance(self) -> float:
        """Bring the plant up to the clock and every variable up to the plant (reads and
        writes do this too); the plant time, s. A coroutine: subscriptions are told here."""
        async with self._lock:
            return await self._advance()

    async def drop_sessions(self) -> int:
        """Close every client session now, their subscriptions with it, as a controller that
        lost them; connections stay, and a client's next request answers
        BadSessionNotActivated (asyncua's word for it). Returns how many there were."""
        processors = [c.processor for c in self._clients() if c.processor is not None]
        sessions = [p.session for p in processors if p.session is not None]
        for session in sessions:
            await session.close_session(delete_subs=True)
        return len(sessions)

    def drop_connections(self) -> int:
        """Close every client connection now; return how many there were. Sessions with
        subscriptions outlive it, as OPC 10000-4 6.7 asks, until their timeout."""
        clients = [c for c in self._clients() if c.transport is not None]
        for client in clients:
            client.transport.close()
        return len(clients)

    def _hold_link(self) -> None:
        """Apply `faults.silent` to every client connection (see `_hold`)."""
        for transport in [t for t in self._held if t.is_closing()]:
            del self._held[transport]
        if self._server is not None:
            for transport in list(self._server.iserver.asyncio_transports):
                self._hold(transport)

    def _hold(self, transport: asyncio.Transport) -> None:
        """A silenced connection reads nothing and keeps what the server sends; unsilenced, it
        reads again and sends what it kept."""
        held = self._held.get(transport)
        if self.faults.silent and held is None:
            transport.pause_reading()
            held = self._held[transport] = []
            transport.write = held.append  # shadows the method until the link is back
        elif not self.faults.silent and held is not None:
            del transport.write, self._held[transport]
            transport.resume_reading()
            for data in held:
                transport.write(data)

    def _clients(self) -> list:
        return list(self._server.bserver.clients) if self._server and self._server.bserver else []

    # -- serving ----------------------------------------------------------------------------

    async def _advance(self) -> float:
        self._hold_link()
        t_s = self._clock() - self._t0
        self.plant.advance_to(t_s)
        await self._refresh()
        return t_s

    async def _refresh(self) -> None:
        """Write each variable whose value or status changed: subscriptions see only those."""
        if self._server is None:
            return
        values = self.plant.values()
        stamp = datetime.now(UTC)
        for var in self._variables:
            status = self.faults.status.get(var.tag, _GOOD)
            shown = (var.value(values[var.tag]), status)
            if self._shown.get(var.tag) == shown:
                continue
            self._shown[var.tag] = shown
            value = ua.Variant(shown[0], var.type)
            datavalue = ua.DataValue(
                value, ua.StatusCode(status), SourceTimestamp=stamp, ServerTimestamp=stamp
            )
            await self._server.write_attribute_value(self._node_ids[var.tag], datavalue)

    async def _tick(self, period_s: float) -> None:
        while True:
            await asyncio.sleep(period_s)
            await self.advance()

    async def _before_read(self, event, _dispatcher) -> None:
        if event.is_external:
            await self.advance()

    async def _client_write(self, item: ua.WriteValue) -> ua.StatusCode:
        """One client write to a node of ours, answered as a controller would."""
        if item.NodeId not in self._nodes:
            return ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)
        var = self._nodes[item.NodeId]
        if var is None or not var.writable or item.AttributeId != ua.AttributeIds.Value:
            return ua.StatusCode(ua.StatusCodes.BadNotWritable)
        if item.IndexRange:  # a scalar has no elements to write into
            return ua.StatusCode(ua.StatusCodes.BadIndexRangeInvalid)
        variant = item.Value.Value
        if variant is None or variant.VariantType != var.type:
            return ua.StatusCode(ua.StatusCodes.BadTypeMismatch)
        lo, hi = var.eu_range
        if not lo <= variant.Value <= hi:  # NaN too
            return ua.StatusCode(ua.StatusCodes.BadOutOfRange)
        async with self._lock:
            await self._advance()
            self.plant.write(var.tag, variant.Value)
            await self._refresh()
        return ua.StatusCode(_GOOD)

    # -- the server -------------------------------------------------------------------------

    async def _secure(self, server: Server) -> None:
        if self._certificate is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            await server.load_certificate(str(self._certificate))
            await server.load_private_key(str(self._private_key))
            server.set_security_policy(
                [
                    ua.SecurityPolicyType.Basic256Sha256_Sign,
                    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                ]
            )
        token = ua.UserNameIdentityToken if self._users is not None else ua.AnonymousIdentityToken
        server.set_identity_tokens([token])
        if self._trusted_clients is not None:
            store = TrustStore([self._trusted_clients], [])
            await store.load()
            server.set_certificate_validator(
                CertificateValidator(
                    CertificateValidatorOptions.TRUSTED_VALIDATION
                    | CertificateValidatorOptions.PEER_CLIENT,
                    store,
                )
            )

    async def _build(self, server: Server) -> None:
        """`Objects/Machines/<machine>/...`: string node ids from the browse path, so that
        they stay the same across restarts."""
        ns = self.namespace_index
        self._nodes.clear()
        machines = await server.nodes.objects.add_folder(
            ua.NodeId("Machines", ns), ua.QualifiedName("Machines", ns)
        )
        parents = {"": await machines.add_object(self._id(""), ua.QualifiedName(self.machine, ns))}
        self._nodes[machines.nodeid] = None
        self._nodes[parents[""].nodeid] = None
        for path in objects() + ((AUXILIARY,) if self._auxiliary else ()):
            parent, _, name = path.rpartition("/")
            parents[path] = await parents[parent].add_object(
                self._id(path), ua.QualifiedName(name, ns)
            )
            self._nodes[parents[path].nodeid] = None
        values = self.plant.values()
        for var in self._variables:
            parent, _, name = var.path.rpartition("/")
            node_id = await self._add_variable(server, parents[parent].nodeid, var, name, values)
            self._node_ids[var.tag] = node_id
            self._nodes[node_id] = var

    def _id(self, path: str) -> ua.NodeId:
        return ua.NodeId(f"{self.machine}/{path}" if path else self.machine, self.namespace_index)

    async def _add_variable(
        self, server: Server, parent: ua.NodeId, var: Variable, name: str, values: dict
    ) -> ua.NodeId:
        """An AnalogUnitType (AnalogUnitRangeType with a range) variable where it has a unit,
        as OPC 40501-1 types FeedOverride; a BaseDataVariableType otherwise."""
        ns, node_id = self.namespace_index, self._id(var.path)
        item = ua.AddNodesItem()
        item.RequestedNewNodeId = node_id
        item.BrowseName = ua.QualifiedName(name, ns)
        item.NodeClass = ua.NodeClass.Variable
        item.ParentNodeId = parent
        item.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HasComponent)
        if not var.unit:
            kind = ua.ObjectIds.BaseDataVariableType
        elif var.eu_range is None:
            kind = ua.ObjectIds.AnalogUnitType
        else:
            kind = ua.ObjectIds.AnalogUnitRangeType
        item.TypeDefinition = ua.NodeId(kind)
        access = ua.AccessLevel.CurrentRead.mask
        if var.writable:
            access |= ua.AccessLevel.CurrentWrite.mask
        attrs = ua.VariableAttributes()
        attrs.DisplayName = ua.LocalizedText(name)
        attrs.Value = ua.Variant(var.value(values[var.tag]), var.type)
        attrs.DataType = ua.NodeId(var.type.value)  # a built-in type's id is its variant type
        attrs.ValueRank = ua.ValueRank.Scalar
        attrs.AccessLevel = attrs.UserAccessLevel = access
        item.NodeAttributes = attrs
        (result,) = await server.iserver.isession.add_nodes([item])
        result.StatusCode.check()
        node = server.get_node(node_id)
        if var.unit:
            code, display = UNITS[var.unit]
            units = ua.EUInformation(
                NamespaceUri=UNECE_URI,
                UnitId=unece_id(code),
                DisplayName=ua.LocalizedText(display),
                Description=ua.LocalizedText(var.unit),
            )
            await node.add_property(
                self._id(f"{var.path}/EngineeringUnits"),
                ua.QualifiedName("EngineeringUnits", 0),
                units,
            )
        if var.eu_range is not None:
            lo, hi = var.eu_range
            await node.add_property(
                self._id(f"{var.path}/EURange"),
                ua.QualifiedName("EURange", 0),
                ua.Range(Low=lo, High=hi),
            )
        return node_id

    @staticmethod
    def _serve_at(server: Server, url: str) -> None:
        """Advertise the bound address: endpoints were made before the port was known."""
        server.set_endpoint(url)
        for endpoint in server.iserver.endpoints:
            endpoint.EndpointUrl = url
            endpoint.Server.DiscoveryUrls = [url]


@dataclass(frozen=True)
class _Auxiliary(Variable):
    """A plant value beyond the register map's: read-only, no unit (so no EURange)."""

    @property
    def unit(self) -> str:
        return ""

    @property
    def writable(self) -> bool:
        return False


def _auxiliary_variables(plant: Plant, names: Iterable[str]) -> tuple[Variable, ...]:
    """The `auxiliary` values as Doubles in the Auxiliary folder; a ValueError for a name
    the plant has no value of, one served already, or one no browse name can be."""
    names = tuple(names)
    if not names:
        return ()
    values = plant.values()
    for i, name in enumerate(names):
        if name in BY_TAG or name in names[:i]:
            raise ValueError(f"auxiliary {name!r} is served already")
        if name not in values:
            raise ValueError(f"auxiliary {name!r}: the plant has no such value")
        if not name or "/" in name:
            raise ValueError(f"auxiliary {name!r}: a browse name is not empty and holds no '/'")
    return tuple(_Auxiliary(name, f"{AUXILIARY}/{name}", ua.VariantType.Double) for name in names)


class _Transports(list):
    """asyncua's list of client connections, which each new one joins as it is made (before
    it reads a byte): a connection made while the link is silent is silenced at once."""

    def __init__(self, hold: Callable[[asyncio.Transport], None]) -> None:
        super().__init__()
        self._hold = hold

    def append(self, transport: asyncio.Transport) -> None:
        super().append(transport)
        self._hold(transport)


class _ControllerWrites(AttributeService):
    """The Write service: nodes of the controller's namespace are answered by it, every other
    node by asyncua's own service."""

    def __init__(self, aspace, controller: OpcUaController) -> None:
        super().__init__(aspace)
        self._controller = controller

    async def write(self, params: ua.WriteParameters, user: User) -> list[ua.StatusCode]:
        results = []
        for item in params.NodesToWrite:
            if item.NodeId.NamespaceIndex == self._controller.namespace_index:
                results.append(await self._controller._client_write(item))
            else:
                (result,) = await super().write(ua.WriteParameters(NodesToWrite=[item]), user)
                results.append(result)
        return results


class _Users:
    """A user manager that knows the bench's accounts: a wrong name or password gets None,
    which asyncua answers with BadUserAccessDenied."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = {name: password.encode() for name, password in users.items()}

    def get_user(self, iserver, username=None, password=None, certificate=None) -> User | None:
        expected = self._users.get(username or "")
        given = (password or "").encode()
        if expected is None or not hmac.compare_digest(expected, given):
            return None
        return User(role=UserRole.User, name=username)


def make_certificate(
    certificate: Path,
    private_key: Path,
    application_uri: str,
    *,
    hostnames: Iterable[str] = ("localhost", socket.gethostname()),
    days: int = 365,
) -> None:
    """Write a self-signed application instance certificate and its key, both PEM, for an OPC
    UA server or client (OPC 10000-6 6.2.2): the application URI in subjectAltName, which
    peers check against the application's description, beside the host names and 127.0.0.1;
    RSA 2048 and SHA-256, as Basic256Sha256 requires. Self-signed, so it is its own CA: a
    trust store accepts it only as such."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, application_uri)])
    now = datetime.now(UTC)
    alt_names = [
        x509.UniformResourceIdentifier(application_uri),
        *(x509.DNSName(host) for host in dict.fromkeys(hostnames)),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=True,
        key_encipherment=True,
        data_encipherment=True,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    purposes = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))  # a peer whose clock is a little behind
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    private_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private_key.chmod(0o600)


async def _serve(args: argparse.Namespace) -> None:
    """The demo plant on the wall clock until interrupted."""
    options = {}
    if args.pki is not None:
        args.pki.mkdir(parents=True, exist_ok=True)
        cert, key = args.pki / "server-cert.pem", args.pki / "server-key.pem"
        if not cert.exists():
            make_certificate(cert, key, APPLICATION_URI)
        options = {"certificate": cert, "private_key": key}
        trusted = args.pki / "trusted"
        if trusted.is_dir():
            options["trusted_clients"] = trusted
    if args.user:
        name, _, password = args.user.partition(":")
        options["users"] = {name: password}
    controller = OpcUaController(demo_plant(), **options)
    await controller.start(args.host, args.port)
    print(f"serving {controller.url}: {NAMESPACE_URI} Objects/Machines/{controller.machine}")
    try:
        await asyncio.Event().wait()
    finally:
        await controller.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m hil.opcua_server", description="Serve the demo plant over OPC UA."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4840, help="4840: OPC UA's registered port")
    parser.add_argument(
        "--pki",
        type=Path,
        help="folder of server-cert.pem/server-key.pem (made if missing) and trusted/ client "
        "certificates: serve Basic256Sha256 Sign and SignAndEncrypt only",
    )
    parser.add_argument("--user", help="NAME:PASSWORD: refuse anonymous clients")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
