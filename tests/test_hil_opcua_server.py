"""The simulated controller as an OPC UA server, with an asyncua client over loopback."""

import asyncio
import contextlib
import math
import re
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

from hil.opcua_server import APPLICATION_URI, OpcUaController, make_certificate
from hil.opcua_space import BY_TAG, MACHINE, NAMESPACE_URI, VARIABLES, objects
from hil.plant import demo_plant
from hil.register_map import AGENT_OVERRIDE, TAGS
from tests.test_hil_controller import FakeClock

# Each test starts a server (about 1.5 s of asyncua building its standard address space).
pytestmark = pytest.mark.timeout(60)

CLIENT_URI = "urn:edge-agent:test:client"
USERS = {"agent": "feed-4-speed"}
WAIT_S = 5.0  # for what asyncua's own tasks deliver (publish responses): far above a run's


@contextlib.asynccontextmanager
async def serving(plant=None, **options):
    """A controller on 127.0.0.1, port 0; no refresh task unless asked: the test drives."""
    clock = FakeClock()
    options.setdefault("refresh_period_s", None)
    controller = OpcUaController(plant or demo_plant(), clock=clock, **options)
    await controller.start()
    try:
        yield controller, clock
    finally:
        await controller.stop()


@contextlib.asynccontextmanager
async def connected(url: str):
    client = Client(url, timeout=WAIT_S)
    async with client:
        yield client


async def node_of(client: Client, tag: str):
    """The tag's variable, found by its browse path as an agent configured by paths does."""
    ns = await client.get_namespace_index(NAMESPACE_URI)
    path = ("Machines", MACHINE, *BY_TAG[tag].browse_names)
    return await client.nodes.objects.get_child([f"{ns}:{name}" for name in path])


def run(scenario):
    asyncio.run(scenario())


# -- the address space ---------------------------------------------------------------------


def test_every_register_map_tag_has_exactly_one_variable():
    assert sorted(v.tag for v in VARIABLES) == sorted(tag.name for tag in TAGS)
    assert len({v.path for v in VARIABLES}) == len(VARIABLES)
    assert all(path not in {v.path for v in VARIABLES} for path in objects())


def test_the_docs_table_is_the_address_space():
    docs = Path(__file__).parent.parent / "docs" / "opcua.md"
    rows = re.findall(
        r"^\| `([\w/]+)` \| `(\w+)` \| (\w+) \|.*\| (\**yes\**|no) \|$", docs.read_text(), re.M
    )
    want = [(v.path, v.tag, v.type.name, v.writable) for v in VARIABLES]
    assert [(path, tag, kind, "yes" in w) for path, tag, kind, w in rows] == want


def test_load_and_override_read_by_browse_path_as_the_plants_values():
    async def scenario():
        async with serving() as (controller, clock), connected(controller.url) as client:
            clock.t_s = 8.0  # cutting
            load = await (await node_of(client, "spindle_load")).read_value()
            override = await (await node_of(client, AGENT_OVERRIDE)).read_value()
            values = controller.plant.values()
            assert load == values["spindle_load"] > 0
            assert override == values[AGENT_OVERRIDE] == 100.0

    run(scenario)


def test_every_variable_reads_its_tag_with_its_type():
    async def scenario():
        async with serving() as (controller, clock), connected(controller.url) as client:
            clock.t_s = 8.0
            for var in VARIABLES:
                datavalue = await (await node_of(client, var.tag)).read_data_value()
                want = var.value(controller.plant.values()[var.tag])
                assert datavalue.Value.VariantType == var.type, var.path
                assert datavalue.Value.Value == want, var.path
                assert datavalue.SourceTimestamp is not None, var.path

    run(scenario)


def test_analog_variables_carry_their_unit_and_range():
    async def scenario():
        async with serving() as (controller, _clock), connected(controller.url) as client:
            override = await node_of(client, AGENT_OVERRIDE)
            eu_range = await (await override.get_child("0:EURange")).read_value()
            units = await (await override.get_child("0:EngineeringUnits")).read_value()
            assert (eu_range.Low, eu_range.High) == (0.0, 150.0)
            assert units.UnitId == 0x5031  # UNECE "P1", percent
            assert units.DisplayName.Text == "%"
            feed = await node_of(client, "actual_feed")
            units = await (await feed.get_child("0:EngineeringUnits")).read_value()
            assert units.DisplayName.Text == "mm/min"

    run(scenario)


def test_plant_time_is_the_injected_clock_since_the_controller_was_made():
    async def scenario():
        clock = FakeClock(1000.0)
        plant = demo_plant()
        controller = OpcUaController(plant, clock=clock, refresh_period_s=None)
        await controller.start()
        try:
            async with connected(controller.url) as client:
                clock.t_s = 1005.0
                await (await node_of(client, "spindle_load")).read_value()
                assert plant.time_s == pytest.approx(5.0)
        finally:
            await controller.stop()
        assert not controller.running

    run(scenario)


def test_port_zero_binds_a_free_port_and_the_endpoints_advertise_it():
    async def scenario():
        controller = OpcUaController(demo_plant(), refresh_period_s=None)
        port = await controller.start("127.0.0.1", 0)
        try:
            assert port > 0
            assert controller.url == f"opc.tcp://127.0.0.1:{port}"
            async with connected(controller.url) as client:
                endpoints = await client.get_endpoints()
            assert {e.EndpointUrl for e in endpoints} == {controller.url}
        finally:
            await controller.stop()

    run(scenario)


# -- subscriptions and writes --------------------------------------------------------------


class Changes:
    """An asyncua subscription handler that queues every value it is told of."""

    def __init__(self) -> None:
        self.values: asyncio.Queue = asyncio.Queue()

    def datachange_notification(self, node, value, data) -> None:
        self.values.put_nowait(value)


def test_a_subscription_sees_the_load_change_as_the_plant_advances():
    async def scenario():
        async with serving() as (controller, clock), connected(controller.url) as client:
            changes = Changes()
            subscription = await client.create_subscription(10, changes)
            await subscription.subscribe_data_change(await node_of(client, "spindle_load"))
            first = await asyncio.wait_for(changes.values.get(), WAIT_S)
            clock.t_s = 8.0
            assert await controller.advance() == 8.0
            changed = await asyncio.wait_for(changes.values.get(), WAIT_S)
            assert first == 0.0
            assert changed == controller.plant.values()["spindle_load"] > 0

    run(scenario)


def test_the_refresh_task_publishes_the_plant_moving_with_no_request_at_all():
    async def scenario():
        async with (
            serving(refresh_period_s=0.01) as (controller, clock),
            connected(controller.url) as client,
        ):
            changes = Changes()
            subscription = await client.create_subscription(10, changes)
            await subscription.subscribe_data_change(await node_of(client, "block_number"))
            assert await asyncio.wait_for(changes.values.get(), WAIT_S) == 10
            clock.t_s = 8.0  # only the clock moves: the refresh task brings the plant along
            assert await asyncio.wait_for(changes.values.get(), WAIT_S) > 10
            assert controller.plant.time_s == pytest.approx(8.0)

    run(scenario)


def test_writing_the_agent_override_changes_the_plants_override():
    async def scenario():
        async with serving() as (controller, _clock), connected(controller.url) as client:
            node = await node_of(client, AGENT_OVERRIDE)
            await node.write_value(ua.Variant(80.0, ua.VariantType.Double))
            assert controller.plant.values()[AGENT_OVERRIDE] == 80.0
            assert await node.read_value() == 80.0

    run(scenario)


def test_an_override_out_of_range_is_refused_and_the_plant_keeps_its_own():
    async def scenario():
        async with serving() as (controller, _clock), connected(controller.url) as client:
            node = await node_of(client, AGENT_OVERRIDE)
            for value in (150.5, -1.0, math.nan):
                with pytest.raises(ua.uaerrors.BadOutOfRange):
                    await node.write_value(ua.Variant(value, ua.VariantType.Double))
            with pytest.raises(ua.uaerrors.BadTypeMismatch):
                await node.write_value(ua.Variant(80, ua.VariantType.Int32))
            assert controller.plant.values()[AGENT_OVERRIDE] == 100.0

    run(scenario)


def test_a_write_to_a_read_only_node_is_refused():
    async def scenario():
        async with serving() as (controller, _clock), connected(controller.url) as client:
            for tag in ("spindle_load", "feed_knob"):
                node = await node_of(client, tag)
                with pytest.raises(ua.uaerrors.BadNotWritable):
                    await node.write_value(ua.Variant(50.0, ua.VariantType.Double))
            assert controller.plant.values()["feed_knob"] == 100.0

    run(scenario)


# -- faults --------------------------------------------------------------------------------


def test_an_injected_bad_status_reaches_the_clients_data_value():
    async def scenario():
        async with serving() as (controller, clock), connected(controller.url) as client:
            node = await node_of(client, "spindle_load")
            controller.faults.fail("spindle_load", ua.StatusCodes.BadSensorFailure)
            datavalue = await node.read_data_value(raise_on_bad_status=False)
            assert datavalue.StatusCode.value == ua.StatusCodes.BadSensorFailure
            assert datavalue.Value.Value is None
            controller.faults.clear()
            clock.t_s = 8.0
            assert await node.read_value() == controller.plant.values()["spindle_load"]

    run(scenario)


def test_without_subscriptions_a_client_is_refused_one_and_can_still_poll():
    async def scenario():
        async with (
            serving(subscriptions=False) as (controller, _clock),
            connected(controller.url) as client,
        ):
            with pytest.raises(ua.uaerrors.BadTooManySubscriptions):
                await client.create_subscription(10, Changes())
            assert await (await node_of(client, "spindle_load")).read_value() == 0.0

    run(scenario)


def test_dropped_sessions_refuse_the_next_request_and_a_new_session_reads():
    async def scenario():
        async with serving() as (controller, _clock):
            client = Client(controller.url, timeout=WAIT_S)
            await client.connect()
            node = await node_of(client, "spindle_load")
            assert await controller.drop_sessions() == 1
            with pytest.raises(ua.uaerrors.BadSessionNotActivated):
                await node.read_value()
            with contextlib.suppress(Exception):
                await client.disconnect()  # its session is gone: only the socket closes
            async with connected(controller.url) as again:
                assert await (await node_of(again, "spindle_load")).read_value() == 0.0

    run(scenario)


def test_dropped_connections_fail_the_clients_next_request():
    async def scenario():
        async with serving() as (controller, _clock):
            client = Client(controller.url, timeout=WAIT_S)
            await client.connect()
            node = await node_of(client, "spindle_load")
            assert controller.drop_connections() == 1
            with pytest.raises((ConnectionError, ua.UaError)):
                await node.read_value()
            with contextlib.suppress(Exception):
                await client.disconnect()

    run(scenario)


def test_a_silent_link_answers_nothing_until_it_is_back_then_delivers_what_it_held():
    async def scenario():
        async with serving() as (controller, clock):
            client = Client(controller.url, timeout=WAIT_S)
            await client.connect()
            node = await node_of(client, "spindle_load")
            controller.faults.silent = True
            await controller.advance()
            pending = asyncio.create_task(node.read_value())
            newcomer = asyncio.create_task(connected(controller.url).__aenter__())
            await asyncio.sleep(1.0)
            assert not pending.done() and not newcomer.done()  # nothing comes back
            clock.t_s = 8.0
            controller.faults.silent = False
            await controller.advance()
            assert (
                await asyncio.wait_for(pending, WAIT_S) == controller.plant.values()["spindle_load"]
            )
            await asyncio.wait_for(newcomer, WAIT_S)  # its handshake went on
            newcomer.cancel()
            await client.disconnect()

    run(scenario)


def test_restart_serves_again_at_the_same_address_with_the_plant_going_on():
    async def scenario():
        async with serving() as (controller, clock):
            url = controller.url
            clock.t_s = 8.0
            async with connected(url) as client:
                before = await (await node_of(client, "x_position")).read_value()
            await controller.restart()
            clock.t_s = 9.0
            assert controller.running
            assert controller.url == url
            async with connected(url) as client:
                after = await (await node_of(client, "x_position")).read_value()
            assert after > before > 0
            assert controller.plant.time_s == pytest.approx(9.0)

    run(scenario)


# -- security -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def opcua_pki(tmp_path_factory):
    """Server and client certificates; the client's in the server's trusted folder."""
    d = tmp_path_factory.mktemp("opcua-pki")
    (d / "trusted").mkdir()
    make_certificate(d / "server-cert.pem", d / "server-key.pem", APPLICATION_URI)
    make_certificate(d / "trusted" / "client-cert.pem", d / "client-key.pem", CLIENT_URI)
    make_certificate(d / "stranger-cert.pem", d / "stranger-key.pem", CLIENT_URI)
    return d


def secure_options(pki):
    return {
        "certificate": pki / "server-cert.pem",
        "private_key": pki / "server-key.pem",
        "users": USERS,
        "trusted_clients": pki / "trusted",
    }


async def secure_client(url, pki, *, password, cert="trusted/client-cert.pem", key="client-key"):
    client = Client(url, timeout=WAIT_S)
    client.application_uri = CLIENT_URI  # must be the one in the client certificate
    await client.set_security(
        SecurityPolicyBasic256Sha256,
        certificate=str(pki / cert),
        private_key=str(pki / f"{key}.pem"),
        server_certificate=str(pki / "server-cert.pem"),
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )
    client.set_user("agent")
    client.set_password(password)
    return client


def test_sign_and_encrypt_with_a_trusted_certificate_and_the_password_reads(opcua_pki):
    async def scenario():
        async with serving(**secure_options(opcua_pki)) as (controller, clock):
            client = await secure_client(controller.url, opcua_pki, password=USERS["agent"])
            clock.t_s = 8.0
            async with client:
                load = await (await node_of(client, "spindle_load")).read_value()
                assert load == controller.plant.values()["spindle_load"] > 0

    run(scenario)


def test_a_wrong_password_is_refused(opcua_pki):
    async def scenario():
        async with serving(**secure_options(opcua_pki)) as (controller, _clock):
            client = await secure_client(controller.url, opcua_pki, password="feed-4-sped")
            with pytest.raises(ua.uaerrors.BadUserAccessDenied):
                await client.connect()
            with contextlib.suppress(Exception):
                await client.disconnect()

    run(scenario)


def test_an_untrusted_client_certificate_is_refused(opcua_pki):
    async def scenario():
        async with serving(**secure_options(opcua_pki)) as (controller, _clock):
            client = await secure_client(
                controller.url,
                opcua_pki,
                password=USERS["agent"],
                cert="stranger-cert.pem",
                key="stranger-key",
            )
            with pytest.raises(ua.uaerrors.BadCertificateUntrusted):
                await client.connect()
            with contextlib.suppress(Exception):
                await client.disconnect()

    run(scenario)


def test_a_secure_server_offers_no_unsecured_endpoint(opcua_pki):
    async def scenario():
        async with serving(**secure_options(opcua_pki)) as (controller, _clock):
            with pytest.raises(ua.UaError, match="No matching endpoints"):
                async with connected(controller.url):
                    pass

    run(scenario)
