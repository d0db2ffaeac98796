"""Shared test settings: a bounded hypothesis profile for CI, a default one for developers;
the real Mosquitto broker the MQTT tests run against (tests/mosquitto.py)."""

import contextlib
import os

import pytest
from hypothesis import HealthCheck, settings

from tests.mosquitto import IDENTITIES, PKI, Broker, require_mosquitto

settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> PKI:
    """Test certificates (a CA, server and client certificates, an unrelated CA), made once."""
    return PKI.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def make_broker(pki):
    """Start a `Broker(pki, **options)` (users=..., require_certificate=...); each is stopped
    and removed after the test. Skips when mosquitto is missing; fails instead under CI."""
    binary = require_mosquitto()
    with contextlib.ExitStack() as brokers:

        def make(**options) -> Broker:
            broker = Broker(pki, binary=binary, **options)
            brokers.callback(broker.close)
            broker.start()
            return broker

        yield make


@pytest.fixture
def broker(make_broker) -> Broker:
    """A running broker with the default options: anonymous, TLS without client certificates."""
    return make_broker()


@pytest.fixture
def acl_broker(make_broker) -> Broker:
    """A running broker with the ACL the deployment ships and `IDENTITIES` as its users: a
    machine publishes only under its own topics, the collector reads them all."""
    return make_broker(users=IDENTITIES, acl=True)
