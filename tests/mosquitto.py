"""A real Mosquitto broker for the MQTT tests: one process per `Broker`, on loopback ports of its
own, with test certificates made by openssl once per session (`PKI`).

Test support only: never touches the system broker (no systemctl, no /etc/mosquitto, no port
1883), listens on 127.0.0.1 only, and leaves no process or file behind once closed.
"""

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.tools import closed_to_others, missing, shared_temp_dir

HOST = "127.0.0.1"
#: The broker ACL the deployment ships (docs/broker.md): what `Broker(acl=True)` runs with.
SHIPPED_ACL = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto" / "edge-agent.acl"
#: The collector's identity in the shipped ACL; a machine's is "<site>/<machine>".
COLLECTOR_USER = "edge-collector"
#: Identities (user: password) of an ACL broker in the tests: the machines the tests publish
#: as (tests/upstream_helpers.py's TOPICS, the demo's machine) and the collector.
IDENTITIES = {
    "plant/m1": "m1-secret",
    "plant/m2": "m2-secret",
    "demo-shop/sim-mill-01": "demo-secret",
    COLLECTOR_USER: "collector-secret",
}
INSTALL_HINT = "install it with `sudo apt-get install mosquitto` or `make test-deps`"

# A broker on a small machine is up in well under a second; 10 s absorbs a loaded CI runner.
START_TIMEOUT_S = 10.0
# mosquitto exits at once on SIGTERM; a broker still there after 5 s is hung and is killed.
STOP_TIMEOUT_S = 5.0
# Between connect probes while the broker starts: short next to its ~50 ms start-up.
PROBE_INTERVAL_S = 0.02
# Lines of the broker's log quoted when it fails to start: enough for the error and context.
LOG_TAIL_LINES = 20
# Generous for a test session, short enough that a leaked certificate is worthless.
CERT_DAYS = 30


class BrokerError(RuntimeError):
    """The broker could not be prepared, started or stopped; the message says why."""


def find_mosquitto() -> str | None:
    """The mosquitto binary: on PATH, or Debian's /usr/sbin (not on a normal user's PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


def require_mosquitto() -> str:
    """The mosquitto binary; when it is missing, the calling test fails under CI, else skips."""
    binary = find_mosquitto()
    if binary is None:
        missing(f"mosquitto (the MQTT broker the tests start) is not installed; {INSTALL_HINT}")
    return binary


def _run(args: list[str], cwd: Path) -> None:
    try:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=30)
    except FileNotFoundError as error:
        raise BrokerError(f"{args[0]} is not installed ({error})") from None
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip().splitlines()
        raise BrokerError(f"{' '.join(args[:2])} failed: {' '.join(output[-3:])}")


def _free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports the kernel has just given out (all held while picking)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class PKI:
    """Test certificates: a CA, a server certificate for 127.0.0.1 and localhost, a client
    certificate, and a second, unrelated CA with a client certificate of its own (what a
    client trusting the wrong CA, or presenting a stranger's certificate, is tested with).

    EC P-256 keys: each certificate costs a few milliseconds. Private keys are 0600.
    """

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path
    other_ca_key: Path
    other_client_cert: Path
    other_client_key: Path

    @classmethod
    def create(cls, directory: Path) -> "PKI":
        """Make every key and certificate in `directory` (which must exist) with openssl."""
        d = Path(directory)
        _issue(d, "ca", "/CN=edge-agent test CA", ca=True)
        _issue(
            d,
            "server",
            "/CN=localhost",
            issuer="ca",
            usage="serverAuth",
            alt_names="IP:127.0.0.1,DNS:localhost",
        )
        _issue(d, "client", "/CN=edge-agent-test-client", issuer="ca", usage="clientAuth")
        _issue(d, "other-ca", "/CN=unrelated test CA", ca=True)
        _issue(d, "other-client", "/CN=stranger", issuer="other-ca", usage="clientAuth")
        return cls(
            directory=d,
            ca_cert=d / "ca.crt",
            ca_key=d / "ca.key",
            server_cert=d / "server.crt",
            server_key=d / "server.key",
            client_cert=d / "client.crt",
            client_key=d / "client.key",
            other_ca_cert=d / "other-ca.crt",
            other_ca_key=d / "other-ca.key",
            other_client_cert=d / "other-client.crt",
            other_client_key=d / "other-client.key",
        )

    def client_for(self, identity: str) -> tuple[Path, Path]:
        """A client certificate (and its key) from the CA whose CN is `identity` (such as
        "plant/m1": a '/' in it is escaped for openssl), made on first use."""
        name = "id-" + identity.replace("/", "+")
        crt, key = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        if not crt.exists():
            subject = "/CN=" + identity.replace("\\", "\\\\").replace("/", "\\/")
            _issue(self.directory, name, subject, issuer="ca", usage="clientAuth")
        return crt, key


def _issue(
    d: Path,
    name: str,
    subject: str,
    *,
    ca: bool = False,
    issuer: str | None = None,
    usage: str = "",
    alt_names: str = "",
) -> None:
    """`name`.key and `name`.crt: a self-signed CA, or a leaf signed by `issuer`'s key.

    Key, then request, then `x509 -req` with an explicit extension file: the same commands on
    OpenSSL 1.1.1 (Debian 11, Raspberry Pi OS 11) and 3.x. The extensions are those
    Python's strict verification (3.13's default) asks for: critical basicConstraints,
    keyUsage, key identifiers.
    """
    key, csr, crt, ext = (d / f"{name}.{suffix}" for suffix in ("key", "csr", "crt", "ext"))
    if ca:
        extensions = [
            "basicConstraints = critical, CA:TRUE",
            "keyUsage = critical, keyCertSign, cRLSign",
            "subjectKeyIdentifier = hash",
        ]
    else:
        extensions = [
            "basicConstraints = critical, CA:FALSE",
            "keyUsage = critical, digitalSignature",
            f"extendedKeyUsage = {usage}",
            "subjectKeyIdentifier = hash",
            "authorityKeyIdentifier = keyid",
        ]
        if alt_names:
            extensions.append(f"subjectAltName = {alt_names}")
    ext.write_text("\n".join(extensions) + "\n")
    curve = ["-pkeyopt", "ec_paramgen_curve:P-256"]
    _run(["openssl", "genpkey", "-algorithm", "EC", *curve, "-out", key.name], d)
    key.chmod(0o600)
    _run(["openssl", "req", "-new", "-key", key.name, "-subj", subject, "-out", csr.name], d)
    sign = ["openssl", "x509", "-req", "-in", csr.name, "-extfile", ext.name, "-out", crt.name]
    sign += ["-days", str(CERT_DAYS), "-sha256"]
    if issuer is None:
        sign += ["-signkey", key.name]
    else:
        sign += ["-CA", f"{issuer}.crt", "-CAkey", f"{issuer}.key", "-CAcreateserial"]
    _run(sign, d)
    csr.unlink()
    ext.unlink()


class Broker:
    """One mosquitto process for a test, on a plain and (with `pki`) a TLS loopback listener,
    with mosquitto.conf's global `limits` if given.

    The ports are chosen once, here, and kept: `stop()` then `start()` brings the broker back
    where clients expect it (an outage). Persistence is off, so a restart forgets sessions and
    retained messages, as a broker that lost its disk would.

    Run as root, mosquitto drops to the user `mosquitto` before it reads the password file
    and certificates, so the broker's files live in a directory of their own under the system
    temp dir (0755, files 0644: test secrets only), not under pytest's 0700 tmp_path.

    `acl=True` runs it with the ACL the deployment ships (`SHIPPED_ACL`, docs/broker.md), so
    identities matter: a machine's is "<site>/<machine>" (a user in `users`, or a client
    certificate's CN with `identity_from_certificate`), the collector's `COLLECTOR_USER`.
    `identity_from_certificate` makes the TLS listener take the CN as the username (and
    require a certificate).
    """

    def __init__(
        self,
        pki: PKI | None = None,
        *,
        users: dict[str, str] | None = None,
        require_certificate: bool = False,
        acl: bool = False,
        identity_from_certificate: bool = False,
        limits: dict[str, int] | None = None,
        binary: str | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        if (require_certificate or identity_from_certificate) and pki is None:
            raise BrokerError("client certificates need a pki for the TLS listener")
        self.binary = binary or find_mosquitto()
        if self.binary is None:
            raise BrokerError(f"mosquitto is not installed; {INSTALL_HINT}")
        self.pki = pki
        self.users = dict(users or {})
        self.require_certificate = require_certificate or identity_from_certificate
        self.acl = acl
        self.identity_from_certificate = identity_from_certificate
        self.limits = dict(limits or {})
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.host = HOST
        ports = _free_ports(2)
        self.port: int = ports[0]
        self.tls_port: int | None = ports[1] if pki is not None else None
        self.directory = shared_temp_dir("edge-agent-mosquitto-")
        closed = closed_to_others(self.directory)
        if os.geteuid() == 0 and closed is not None:
            shutil.rmtree(self.directory)
            raise BrokerError(
                f"{closed} is not traversable by the user mosquitto drops to; "
                "point TMPDIR at a directory every user can enter (such as /tmp)"
            )
        self.conf_path = self.directory / "mosquitto.conf"
        self.log_path = self.directory / "mosquitto.log"
        self._process: subprocess.Popen | None = None
        try:
            self._write_files()
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise

    def _readable(self, path: Path) -> Path:
        path.chmod(0o644)
        return path

    def _write_files(self) -> None:
        lines = [
            "# One test broker, written by tests/mosquitto.py.",
            "per_listener_settings false",
            "persistence false",
            # stderr, which start() sends to mosquitto.log: a log file would have to be
            # writable by the user mosquitto drops to.
            "log_dest stderr",
            "log_timestamp_format %H:%M:%S",
            # 2.0 refuses anonymous clients unless told otherwise.
            f"allow_anonymous {'false' if self.users or self.acl else 'true'}",
        ]
        # Broker-wide limits (max_inflight_messages, max_queued_messages, max_queued_bytes):
        # set low, the broker drops messages to a subscriber that falls behind.
        lines += [f"{name} {value}" for name, value in self.limits.items()]
        if self.users:
            lines.append(f"password_file {self._write_password_file()}")
        if self.acl:
            acl_file = self._readable(Path(shutil.copy(SHIPPED_ACL, self.directory / "acl")))
            lines.append(f"acl_file {acl_file}")
        lines += ["", f"listener {self.port} {self.host}"]
        if self.pki is not None:
            copies = {
                name: self._readable(Path(shutil.copy(source, self.directory / name)))
                for name, source in (
                    ("ca.crt", self.pki.ca_cert),
                    ("server.crt", self.pki.server_cert),
                    ("server.key", self.pki.server_key),
                )
            }
            lines += [
                "",
                f"listener {self.tls_port} {self.host}",
                f"cafile {copies['ca.crt']}",
                f"certfile {copies['server.crt']}",
                f"keyfile {copies['server.key']}",
                f"require_certificate {'true' if self.require_certificate else 'false'}",
            ]
            if self.identity_from_certificate:
                lines.append("use_identity_as_username true")
        self.conf_path.write_text("\n".join(lines) + "\n")
        self._readable(self.conf_path)

    def _write_password_file(self) -> Path:
        """The users in a plain `name:password` file, then hashed in place by mosquitto_passwd."""
        tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        if not os.access(tool, os.X_OK):
            raise BrokerError(f"mosquitto_passwd is not installed; {INSTALL_HINT}")
        for name, password in self.users.items():
            if not name or ":" in name or "\n" in name + password:
                raise BrokerError(f"user {name!r}: names non-empty, without ':'; no newlines")
        path = self.directory / "passwd"
        path.write_text("".join(f"{name}:{pw}\n" for name, pw in self.users.items()))
        _run([tool, "-U", str(path)], self.directory)
        return self._readable(path)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start mosquitto and return once every listener accepts connections."""
        if self.running:
            raise BrokerError(f"broker on port {self.port} is already running")
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self.binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        ports = [self.port] if self.tls_port is None else [self.port, self.tls_port]
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            code = self._process.poll()
            if code is not None:
                self._process = None
                raise BrokerError(
                    f"mosquitto exited with {code} on start; its log:\n{self._log_tail(log_start)}"
                )
            if all(_accepts(self.host, port) for port in ports):
                return
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerError(
                    f"mosquitto did not accept connections on {self.host}:{ports} within "
                    f"{self.start_timeout_s} s; its log:\n{self._log_tail(log_start)}"
                )
            time.sleep(PROBE_INTERVAL_S)

    def stop(self) -> None:
        """SIGTERM, as an orderly shutdown; SIGKILL if it is still there after stop_timeout_s."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(self.stop_timeout_s)
        self._process = None

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without closing anything, as on a power cut."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(self.stop_timeout_s)
        self._process = None

    def close(self) -> None:
        """Stop the broker and remove its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def log(self) -> str:
        """Everything the broker has logged, over every start."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _log_tail(self, since: int) -> str:
        """The last lines logged since byte `since` (the start that failed), indented."""
        with self.log_path.open("rb") as log:
            log.seek(since)
            lines = log.read().decode(errors="replace").strip().splitlines()
        return "\n".join(f"    {line}" for line in lines[-LOG_TAIL_LINES:]) or "    (nothing)"

    def __enter__(self) -> "Broker":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        tls = f", tls_port={self.tls_port}" if self.tls_port is not None else ""
        state = "running" if self.running else "stopped"
        return f"<Broker {self.host}:{self.port}{tls} {state}>"


def _accepts(host: str, port: int) -> bool:
    """Whether `port` takes a TCP connection. The broker logs a probe of its TLS port as a
    failed client ("unexpected eof while reading"): harmless, and only at start."""
    try:
        with socket.create_connection((host, port), timeout=PROBE_INTERVAL_S * 10):
            return True
    except OSError:
        return False
