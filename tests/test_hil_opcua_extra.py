"""The bench's OPC UA server serving values beyond the register map's (`auxiliary`), as the
standard load's synthetic ones (benchmarks/service_load.py), with an asyncua client over
loopback."""

import asyncio
import contextlib

import pytest
from asyncua import Client, ua

from hil.opcua_server import AUXILIARY, OpcUaController
from hil.opcua_space import MACHINE, NAMESPACE_URI
from hil.plant import demo_plant
from tests.test_hil_controller import FakeClock

# Each test that serves starts a server (about 1.5 s of asyncua building its address space).
pytestmark = pytest.mark.timeout(60)

WAIT_S = 5.0  # for what asyncua's own tasks deliver (publish responses): far above a run's


class WithCoolant:
    """The demo plant plus two values of its own, which follow plant time."""

    def __init__(self) -> None:
        self.plant = demo_plant()

    def advance_to(self, t_s: float) -> None:
        self.plant.advance_to(t_s)

    def write(self, name: str, value: float) -> None:
        self.plant.write(name, value)

    def values(self) -> dict[str, float]:
        t_s = self.plant.time_s
        return {**self.plant.values(), "coolant_pressure_bar": 6.0 + t_s, "coolant_temp": 20.5}


@contextlib.asynccontextmanager
async def serving(auxiliary=("coolant_pressure_bar", "coolant_temp")):
    """A controller on 127.0.0.1, port 0, and a client of it; the test drives the clock."""
    clock = FakeClock()
    controller = OpcUaController(
        WithCoolant(), clock=clock, refresh_period_s=None, auxiliary=auxiliary
    )
    await controller.start()
    try:
        async with Client(controller.url, timeout=WAIT_S) as client:
            yield controller, clock, client
    finally:
        await controller.stop()


async def auxiliary_node(client: Client, name: str):
    """The value's variable, found by its browse path as an agent configured by paths does."""
    ns = await client.get_namespace_index(NAMESPACE_URI)
    path = ("Machines", MACHINE, AUXILIARY, name)
    return await client.nodes.objects.get_child([f"{ns}:{name}" for name in path])


def run(scenario):
    asyncio.run(scenario())


def test_an_auxiliary_value_is_a_double_in_the_auxiliary_folder_with_the_plants_value():
    async def scenario():
        async with serving() as (controller, clock, client):
            clock.t_s = 2.5
            node = await auxiliary_node(client, "coolant_pressure_bar")
            datavalue = await node.read_data_value()
            assert datavalue.Value.VariantType == ua.VariantType.Double
            assert datavalue.Value.Value == pytest.approx(8.5)
            assert datavalue.SourceTimestamp is not None
            assert await (await auxiliary_node(client, "coolant_temp")).read_value() == 20.5

    run(scenario)


def test_an_auxiliary_values_node_id_is_the_machine_folder_and_name():
    async def scenario():
        async with serving() as (controller, _clock, client):
            node = await auxiliary_node(client, "coolant_temp")
            ns = controller.namespace_index
            assert node.nodeid == ua.NodeId(f"{MACHINE}/{AUXILIARY}/coolant_temp", ns)

    run(scenario)


def test_a_subscription_sees_an_auxiliary_value_move_with_the_plant():
    async def scenario():
        async with serving() as (controller, clock, client):
            changes: asyncio.Queue = asyncio.Queue()

            class Handler:
                def datachange_notification(self, node, value, data) -> None:
                    changes.put_nowait(value)

            subscription = await client.create_subscription(10, Handler())
            node = await auxiliary_node(client, "coolant_pressure_bar")
            await subscription.subscribe_data_change(node)
            assert await asyncio.wait_for(changes.get(), WAIT_S) == pytest.approx(6.0)
            clock.t_s = 4.0
            await controller.advance()
            assert await asyncio.wait_for(changes.get(), WAIT_S) == pytest.approx(10.0)

    run(scenario)


def test_an_auxiliary_value_refuses_writes_and_is_not_written():
    async def scenario():
        async with serving() as (controller, _clock, client):
            node = await auxiliary_node(client, "coolant_temp")
            with pytest.raises(ua.uaerrors.BadNotWritable):
                await node.write_value(ua.Variant(99.0, ua.VariantType.Double))
            assert await node.read_value() == 20.5

    run(scenario)


def test_without_auxiliary_values_there_is_no_auxiliary_folder():
    async def scenario():
        async with serving(auxiliary=()) as (_controller, _clock, client):
            ns = await client.get_namespace_index(NAMESPACE_URI)
            machine = await client.nodes.objects.get_child([f"{ns}:Machines", f"{ns}:{MACHINE}"])
            names = {
                (await child.read_browse_name()).Name for child in await machine.get_children()
            }
            assert AUXILIARY not in names
            assert "Monitoring" in names

    run(scenario)


@pytest.mark.parametrize(
    ("names", "why"),
    [
        (("coolant_flow",), "the plant has no such value"),
        (("spindle_load",), "served already"),
        (("coolant_temp", "coolant_temp"), "served already"),
    ],
)
def test_an_auxiliary_value_the_plant_lacks_or_served_already_is_refused(names, why):
    with pytest.raises(ValueError, match=why):
        OpcUaController(WithCoolant(), refresh_period_s=None, auxiliary=names)
