"""The broker fixture itself (tests/mosquitto.py): a real Mosquitto delivers, checks certificates
and passwords, and comes back on the same port after an outage. Plain paho clients, no agent."""

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import paho.mqtt.client as mqtt
import pytest

from tests import mosquitto
from tests.mosquitto import Broker, BrokerError

# Every wait in these tests: loopback round trips take milliseconds, 3 s is a stuck broker.
WAIT_S = 3.0


def client(name: str) -> mqtt.Client:
    # No reconnect after a refused CONNACK: a test sees the refusal once, not a retry loop.
    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, reconnect_on_failure=False)


@contextmanager
def session(c: mqtt.Client, host: str, port: int) -> Iterator[mqtt.ReasonCode]:
    """Connect `c`, run its network loop, and yield the broker's CONNACK reason code; a
    connection lost before any CONNACK raises ConnectionError."""
    connack: list[mqtt.ReasonCode] = []
    answered = threading.Event()

    def on_connect(c, userdata, flags, reason_code, properties):
        connack.append(reason_code)
        answered.set()

    c.on_connect = on_connect
    c.on_disconnect = lambda c, userdata, flags, reason_code, properties: answered.set()
    rc = c.connect(host, port, keepalive=10)
    if rc != mqtt.MQTT_ERR_SUCCESS:
        raise ConnectionError(f"connect to {host}:{port}: {mqtt.error_string(rc)}")
    c.loop_start()
    try:
        assert answered.wait(WAIT_S), f"no CONNACK from {host}:{port} within {WAIT_S} s"
        if not connack:
            raise ConnectionError(f"{host}:{port} closed the connection before its CONNACK")
        yield connack[0]
    finally:
        c.disconnect()
        c.loop_stop()


def subscribe(c: mqtt.Client, topic: str) -> list[mqtt.MQTTMessage]:
    """Subscribe `c` to `topic` at QoS 1; the list it returns fills with what arrives."""
    received: list[mqtt.MQTTMessage] = []
    granted = threading.Event()
    c.on_message = lambda c, userdata, message: received.append(message)
    c.on_subscribe = lambda c, userdata, mid, reason_codes, properties: granted.set()
    c.subscribe(topic, qos=1)
    assert granted.wait(WAIT_S), f"no SUBACK for {topic} within {WAIT_S} s"
    return received


def wait_for(received: list, count: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while len(received) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(received) >= count, f"{len(received)} of {count} messages within {WAIT_S} s"


def test_qos1_publish_reaches_a_subscriber_on_the_plain_listener(broker):
    subscriber, publisher = client("subscriber"), client("publisher")
    with session(subscriber, broker.host, broker.port) as accepted:
        assert not accepted.is_failure
        received = subscribe(subscriber, "plant/cell-1/mill-7/data")
        with session(publisher, broker.host, broker.port):
            info = publisher.publish("plant/cell-1/mill-7/data", b"\x01spindle", qos=1)
            info.wait_for_publish(WAIT_S)
            assert info.is_published()
        wait_for(received, 1)
    assert (received[0].payload, received[0].qos) == (b"\x01spindle", 1)


def test_low_limits_make_the_broker_drop_what_a_slow_subscriber_cannot_take(make_broker):
    broker = make_broker(limits={"max_inflight_messages": 2, "max_queued_messages": 5})
    subscriber = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id="slow",
        reconnect_on_failure=False,
        manual_ack=True,  # it never acknowledges: a collector whose disk stalled
    )
    publisher = client("publisher")
    with session(subscriber, broker.host, broker.port):
        received = subscribe(subscriber, "plant/+/+/data")
        with session(publisher, broker.host, broker.port):
            for n in range(50):
                publisher.publish("plant/cell-1/mill-7/data", bytes([n]), qos=1).wait_for_publish(
                    WAIT_S
                )
        wait_for(received, 2)
        time.sleep(0.2)
    assert len(received) == 2  # in flight; 5 more queued, 43 dropped
    assert "Outgoing messages are being dropped for client slow." in broker.log()


def test_tls_with_the_right_ca_connects_and_delivers(broker, pki):
    c = client("tls-client")
    c.tls_set(ca_certs=str(pki.ca_cert))
    with session(c, broker.host, broker.tls_port) as accepted:
        assert not accepted.is_failure
        received = subscribe(c, "plant/tls")
        c.publish("plant/tls", b"encrypted", qos=1).wait_for_publish(WAIT_S)
        wait_for(received, 1)
    assert received[0].payload == b"encrypted"


def test_tls_trusting_the_wrong_ca_is_refused_at_the_handshake(broker, pki):
    c = client("misled-client")
    c.tls_set(ca_certs=str(pki.other_ca_cert))
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        c.connect(broker.host, broker.tls_port, keepalive=10)


def test_client_certificate_is_required_when_asked_for(make_broker, pki):
    broker = make_broker(require_certificate=True)
    c = client("certified-client")
    c.tls_set(ca_certs=str(pki.ca_cert), certfile=str(pki.client_cert), keyfile=str(pki.client_key))
    with session(c, broker.host, broker.tls_port) as accepted:
        assert not accepted.is_failure
    anonymous = client("uncertified-client")
    anonymous.tls_set(ca_certs=str(pki.ca_cert))
    # TLS 1.3: the client's side of the handshake is over before the broker checks for a
    # certificate, so the refusal is a closed connection where the CONNACK should be.
    refused = pytest.raises((ConnectionError, ssl.SSLError))
    with refused, session(anonymous, broker.host, broker.tls_port):
        pass


def test_a_stopped_broker_refuses_and_start_brings_it_back_on_the_same_port(broker):
    port = broker.port
    broker.stop()
    with pytest.raises(ConnectionRefusedError):
        client("during-outage").connect(broker.host, port, keepalive=10)
    broker.start()
    assert broker.port == port
    with session(client("after-outage"), broker.host, port) as accepted:
        assert not accepted.is_failure


def test_a_killed_broker_comes_back_on_the_same_port(broker):
    broker.kill()
    assert not broker.running
    broker.start()
    with session(client("after-power-cut"), broker.host, broker.port) as accepted:
        assert not accepted.is_failure


def test_with_users_a_wrong_password_is_refused_and_the_right_one_connects(make_broker):
    broker = make_broker(users={"edge-agent": "right horse battery"})
    intruder = client("intruder")
    intruder.username_pw_set("edge-agent", "wrong")
    with session(intruder, broker.host, broker.port) as refused:
        assert refused.is_failure
    anonymous = client("anonymous")
    with session(anonymous, broker.host, broker.port) as refused:
        assert refused.is_failure
    agent = client("agent")
    agent.username_pw_set("edge-agent", "right horse battery")
    with session(agent, broker.host, broker.port) as accepted:
        assert not accepted.is_failure


def test_a_broker_that_cannot_start_says_why_from_its_log(pki):
    broker = Broker(pki, binary=mosquitto.require_mosquitto())
    squatter = socket.create_server((broker.host, broker.port))
    try:
        with pytest.raises(BrokerError, match="Address already in use"):
            broker.start()
        assert not broker.running
    finally:
        squatter.close()
        broker.close()
    assert not broker.directory.exists()


def test_a_missing_mosquitto_skips_a_developer_run(monkeypatch):
    monkeypatch.setattr(mosquitto, "find_mosquitto", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install mosquitto"):
        mosquitto.require_mosquitto()


def test_a_missing_mosquitto_fails_a_ci_run(monkeypatch):
    monkeypatch.setattr(mosquitto, "find_mosquitto", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="make test-deps"):
        mosquitto.require_mosquitto()
