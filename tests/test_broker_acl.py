"""Who may publish as a machine: the broker side (deploy/mosquitto/) run on a real Mosquitto.

A machine's identity is "<site>/<machine>" (a password user, or a client certificate's CN) and
the shipped ACL lets it publish only under `edge/<site>/<machine>/` and read only its own
acks; the collector's identity reads every machine and writes acks. The forgeries of issue 16
(another machine's seqs, birth, death, a seq far ahead) are refused by the broker and never
reach the store; the real agent and collector work under it."""

import asyncio
import dataclasses
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge_agent import names
from edge_agent.collector.service import CollectorService
from edge_agent.collector.store import SqliteStore
from edge_agent.config import UpstreamConfig, parse_collector_config
from edge_agent.telemetry import wire
from edge_agent.upstream.mqtt_link import REFUSED, MqttError, MqttLink, settings_from
from tests import soak
from tests.collector_process import CollectorProcess
from tests.mosquitto import COLLECTOR_USER, IDENTITIES, SHIPPED_ACL, Broker, _free_ports
from tests.tools import missing
from tests.upstream_helpers import BOOT, TABLE, birth, data

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto"
ADD_MACHINE = DEPLOY / "add-machine.sh"
M1, M2 = "plant/m1", "plant/m2"
FORGED_BOOT = bytes.fromhex("badbadbadbadbad0")
NOT_AUTHORIZED = 0x87  # MQTT 5 PUBACK reason


def link_settings(broker, identity):
    """The MQTT settings of `identity` (a user of IDENTITIES) on the broker's plain port."""
    cfg = UpstreamConfig(kind="mqtt", host=broker.host, port=broker.port, username=identity)
    settings = settings_from(cfg, f"client-{identity.replace('/', '-')}")
    return dataclasses.replace(settings, password=IDENTITIES[identity])


def tls_settings(port, pki, identity):
    """The MQTT settings of a client whose certificate's CN is `identity`."""
    crt, key = pki.client_for(identity)
    cfg = UpstreamConfig(
        kind="mqtt",
        host="localhost",
        port=port,
        tls=True,
        ca_file=str(pki.ca_cert),
        cert_file=str(crt),
        key_file=str(key),
    )
    return settings_from(cfg, f"cert-{identity.replace('/', '-')}")


async def publish_as(settings, messages, will=None, die=False) -> list[int]:
    """Publish (topic, payload) as one identity, then disconnect, or with `die` drop the
    connection (the broker then sends the will); the PUBACK reason codes."""
    link = MqttLink(settings, will=will)
    await link.open()
    try:
        return [await link.publish(topic, payload) for topic, payload in messages]
    finally:
        if die:
            link._client.socket().shutdown(socket.SHUT_RDWR)
        await link.close()


def collector_config(broker, db):
    return parse_collector_config(
        f'[collector]\ndb = "{db}"\n[broker]\nhost = "{broker.host}"\nport = {broker.port}\n'
        f'reconnect_min_s = 0.05\nusername = "{COLLECTOR_USER}"\n'
        'password_env = "EDGE_TEST_COLLECTOR_PASSWORD"\n'
    )


async def wait_until(predicate, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def topic(machine, kind):
    return f"edge/{machine}/{kind}"


@pytest.mark.timeout(60)
def test_a_machine_cannot_publish_as_another_and_forgeries_never_reach_the_store(
    acl_broker, tmp_path, monkeypatch
):
    monkeypatch.setenv("EDGE_TEST_COLLECTOR_PASSWORD", IDENTITIES[COLLECTOR_USER])
    real = [(topic(M1, "birth"), birth(1))] + [(topic(M1, "data"), data(s)) for s in (2, 3)]
    forged = (
        [(topic(M1, "data"), data(s, FORGED_BOOT)) for s in range(4, 11)]  # seq 4-10
        + [(topic(M1, "birth"), wire.birth(FORGED_BOOT, 11, 0, "x", bytes(8), TABLE))]
        + [(topic(M1, "data"), data(100))]  # a seq far ahead: 89 "missing" numbers
        + [(topic(M1, "death"), wire.death(BOOT, 1))]  # m1 offline
    )

    async def run():
        service = CollectorService(collector_config(acl_broker, tmp_path / "c.db"))
        task = asyncio.create_task(service.run())
        await wait_until(lambda: service.counters["connects"] == 1)
        await asyncio.sleep(0.2)  # the subscription
        assert await publish_as(link_settings(acl_broker, M1), real) == [0, 0, 0]
        # The forger is another machine of the plant; it dies with a will on m1's death topic.
        will = (topic(M1, "death"), wire.death(BOOT, 1))
        refused = await publish_as(link_settings(acl_broker, M2), forged, will, die=True)
        assert refused == [NOT_AUTHORIZED] * len(forged)
        later = [(topic(M1, "data"), data(s)) for s in range(4, 11)]
        assert await publish_as(link_settings(acl_broker, M1), later) == [0] * 7
        await wait_until(lambda: service.collector.counters["stored"] == 10)
        await asyncio.sleep(0.5)  # a forged message, had it passed, would be stored by now
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return service

    service = asyncio.run(run())
    assert service.collector.counters["received"] == 10
    store = SqliteStore(tmp_path / "c.db", readonly=True)
    assert store.machines() == [M1]
    assert store.missing_seqs(M1) == []
    assert [d for d in store.deaths()] == []
    assert store.counts(M1)["conflicts"] == store.counts(M1)["rejects"] == 0
    assert {boot for (boot,) in store._db.execute("SELECT DISTINCT boot FROM payloads")} == {BOOT}
    assert [s.value for s in store.samples(M1)] == pytest.approx([s / 10 for s in range(2, 11)])


@pytest.mark.timeout(30)
def test_a_machine_reads_only_its_own_acks_and_only_the_collector_writes_them(acl_broker):
    def client(identity):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, f"reader-{identity}", protocol=5)
        c.username_pw_set(identity, IDENTITIES[identity])
        got, ready = [], []
        c.on_message = lambda c_, u, m: got.append(m.topic)
        c.on_subscribe = lambda *a: ready.append(True)
        c.connect(acl_broker.host, acl_broker.port)
        c.loop_start()
        c.subscribe("edge/#", qos=1)  # granted, but delivery is checked against read rights
        deadline = time.monotonic() + 5
        while not ready:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        return c, got

    async def publish_all():
        acks = [(topic(m, "ack"), b"ack") for m in (M1, M2)]
        assert await publish_as(link_settings(acl_broker, COLLECTOR_USER), acks) == [0, 0]
        m1_codes = await publish_as(
            link_settings(acl_broker, M1), [(topic(M1, "data"), data(2)), (topic(M1, "ack"), b"")]
        )
        assert m1_codes == [0, NOT_AUTHORIZED]  # a machine may not acknowledge anything

    (m1, m1_got), (m2, m2_got) = client(M1), client(M2)
    try:
        asyncio.run(publish_all())
        time.sleep(0.5)
    finally:
        for c in (m1, m2):
            c.disconnect()
            c.loop_stop()
    assert m1_got == [topic(M1, "ack")]  # not its own data either: it has no read right there
    assert m2_got == [topic(M2, "ack")]


@pytest.mark.timeout(30)
def test_a_client_certificate_cn_is_the_identity(make_broker, pki):
    broker = make_broker(users={COLLECTOR_USER: "x"}, acl=True, identity_from_certificate=True)

    async def run():
        own, other = (topic(M1, "data"), data(2)), (topic(M2, "data"), data(2))
        return await publish_as(tls_settings(broker.tls_port, pki, M1), [own, other])

    own, other = asyncio.run(run())
    assert own < REFUSED and other == NOT_AUTHORIZED  # own: 0x10, taken, no subscriber yet


def test_anonymous_clients_and_wrong_passwords_are_refused(acl_broker):
    anonymous = settings_from(
        UpstreamConfig(kind="mqtt", host=acl_broker.host, port=acl_broker.port), "anonymous"
    )
    wrong = dataclasses.replace(link_settings(acl_broker, M1), password="m2-secret")

    async def run():
        for settings in (anonymous, wrong):
            with pytest.raises(MqttError, match="refused the connection"):
                await MqttLink(settings).open()

    asyncio.run(run())


# -- the shipped configuration and the command that adds a machine ---------------------


def shipped_conf(broker: Broker, pki, passwd: Path, certificates: bool) -> str:
    """deploy/mosquitto/edge-agent.conf with the test's files and ports (a plain listener
    added: with per_listener_settings false it has the same identities and ACL)."""
    text = (DEPLOY / "edge-agent.conf").read_text()
    files = {
        "/etc/mosquitto/edge-agent.passwd": passwd,
        "/etc/mosquitto/edge-agent.acl": SHIPPED_ACL,
        "/etc/mosquitto/certs/plant-ca.pem": pki.ca_cert,
        "/etc/mosquitto/certs/broker.pem": pki.server_cert,
        "/etc/mosquitto/certs/broker.key": pki.server_key,
    }
    for path, source in files.items():
        assert path in text, f"edge-agent.conf no longer names {path}"
        copy = broker.directory / Path(path).name
        shutil.copy(source, copy)
        copy.chmod(0o644)
        text = text.replace(path, str(copy))
    text = text.replace("listener 8883\n", f"listener {broker.tls_port} {broker.host}\n")
    if certificates:
        text = text.replace("#require_certificate", "require_certificate")
        text = text.replace("#use_identity_as_username", "use_identity_as_username")
    # Every log type: the test reads the broker's word for what it dropped.
    return text + f"\nlog_type all\nlistener {broker.port} {broker.host}\n"


@pytest.mark.parametrize("certificates", [False, True], ids=["passwords", "certificates"])
@pytest.mark.timeout(60)
def test_the_shipped_broker_configuration_pins_identities_and_refuses_oversized_payloads(
    pki, tmp_path, certificates
):
    broker = Broker(pki)
    try:
        passwd = tmp_path / "passwd"
        assert add_machine("plant", "m1", passwd, IDENTITIES[M1]).returncode == 0
        broker.conf_path.write_text(shipped_conf(broker, pki, passwd, certificates))
        broker.start()
        limit = int(re.search(r"^message_size_limit (\d+)$", broker.conf_path.read_text(), re.M)[1])
        assert limit == max(wire.MAX_PAYLOAD_BYTES.values())

        async def run():
            if certificates:
                settings = tls_settings(broker.tls_port, pki, M1)
            else:
                settings = link_settings(broker, M1)
            own, other = await publish_as(
                settings, [(topic(M1, "data"), data(2)), (topic(M2, "data"), data(2))]
            )
            assert own < REFUSED and other == NOT_AUTHORIZED
            # Not taken: Mosquitto 2.0.11 answers PUBACK 0x95 ("packet too large"), which is
            # no PUBACK reason in MQTT 5, and paho drops the connection for it.
            with pytest.raises(MqttError, match="Protocol error"):
                await publish_as(settings, [(topic(M1, "data"), bytes(limit + 1))])

        asyncio.run(run())
        assert "Dropped too large PUBLISH" in broker.log()
    finally:
        broker.close()


def add_machine(site, machine, passwd, password) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ADD_MACHINE), site, machine, str(passwd)],
        input=f"{password}\n{password}\n",
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_add_machine_makes_the_identity_the_acl_names(tmp_path):
    passwd = tmp_path / "passwd"
    done = add_machine("plant", "m1", passwd, "s3cret")
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"plant/m1:\$\d+\$\S+\n", passwd.read_text())
    assert passwd.stat().st_mode & 0o007 == 0


@pytest.mark.parametrize(
    "machine", ["..", ".", "", "a/b", "m+", "m#", "m 1", "x" * 65, "é", "m\n1"]
)
def test_add_machine_refuses_what_the_agent_refuses_as_a_machine_id(tmp_path, machine):
    assert not names.is_name(machine)
    passwd = tmp_path / "passwd"
    done = add_machine("plant", machine, passwd, "s3cret")
    assert done.returncode == 2 and "must be 1-64 of letters" in done.stderr
    assert not passwd.exists()


@pytest.mark.parametrize("machine", ["m1", "sim-mill-01", "Mill_7.b", "x" * 64, "...", ".a"])
def test_add_machine_takes_what_the_agent_takes(tmp_path, machine):
    assert names.is_name(machine)
    assert add_machine("plant", machine, tmp_path / "passwd", "pw").returncode == 0


def test_add_machine_passes_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        missing("shellcheck is not installed (make test-deps, or sudo apt-get install shellcheck)")
    done = subprocess.run([shellcheck, str(ADD_MACHINE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


# -- the real agent and collector, as processes, under the ACL -------------------------


@pytest.mark.timeout(90)
def test_the_real_agent_and_collector_run_under_the_acl(acl_broker, tmp_path):
    machine = soak.MACHINE  # the demo's site/machine
    secrets = {}
    for user in (machine, COLLECTOR_USER):
        secrets[user] = tmp_path / f"{user.replace('/', '-')}.password"
        secrets[user].write_text(IDENTITIES[user] + "\n")
        secrets[user].chmod(0o600)
    spool = tmp_path / "spool.db"
    (controller_port,) = _free_ports(1)
    agent_toml = soak.agent_config(controller_port, acl_broker, spool).replace(
        "drain_on_stop_s = 10.0",
        f'drain_on_stop_s = 10.0\nusername = "{machine}"\npassword_file = "{secrets[machine]}"',
    )
    (tmp_path / "agent.toml").write_text(agent_toml)
    collector = CollectorProcess(
        acl_broker,
        tmp_path,
        broker_keys=(
            f'username = "{COLLECTOR_USER}"\npassword_file = "{secrets[COLLECTOR_USER]}"\n'
        ),
    )
    controller = soak._spawn(
        ["-m", "hil", "serve", "--tcp", f"127.0.0.1:{controller_port}"], tmp_path / "hil.log"
    )
    try:
        collector.start()
        agent = soak._spawn(
            ["-m", "edge_agent", "run", str(tmp_path / "agent.toml")], tmp_path / "agent.log"
        )
        time.sleep(3.0)
        soak._stop(agent, signal.SIGTERM)
        assert agent.returncode == 0, (tmp_path / "agent.log").read_text()[-2000:]
        last, left = soak._spool_state(spool)
        deadline = time.monotonic() + 20
        while set(range(1, last + 1)) - set(collector.seqs(machine)):
            assert time.monotonic() < deadline, collector.tail()
            time.sleep(0.2)
    finally:
        collector.stop()
        soak._stop(controller, signal.SIGTERM)
    assert last > 3  # a birth, events and frames, every one stored
