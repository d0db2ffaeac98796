"""The OPC UA source: its sans-IO core on simulated time (snapshots, qualities, staleness, the
schedule, conversions), then the whole source against the bench's OPC UA server on loopback
(subscriptions, polling, faults, reconnects, writes, security)."""

import asyncio
import contextlib
import math
import time
from dataclasses import replace

import pytest
from asyncua import ua
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge_agent.clock import FakeClock, SystemClock
from edge_agent.config import ConfigError, ControlConfig
from edge_agent.samples import Quality, Sample
from edge_agent.sources.base import Deadlines
from edge_agent.sources.opcua import (
    GroupCore,
    OpcUaSource,
    WriteRefused,
    declare,
    reading,
    write_value,
)
from edge_agent.sources.opcua_config import OpcUaGroup, parse_opcua
from edge_agent.tasks import cancel_and_wait
from edge_agent.tomlcheck import TomlChecker
from hil.opcua_server import APPLICATION_URI, OpcUaController, make_certificate
from hil.opcua_space import MACHINE, NAMESPACE_URI
from hil.plant import demo_plant
from hil.register_map import AGENT_OVERRIDE

# A test against the server starts one (about 1.5 s of asyncua building its address space).
pytestmark = pytest.mark.timeout(60)

GOOD, BAD_STATUS = 0, ua.StatusCodes.BadSensorFailure
UNCERTAIN = ua.StatusCodes.UncertainLastUsableValue
WAIT_S = 10.0  # for what the server and asyncua deliver: far above a run's
CLIENT_URI = "urn:edge-agent:test:agent"
USERS = {"agent": "feed-4-speed"}
_ms = 1_000_000

# -- the core, on simulated time ----------------------------------------------------------------


def core(stale_after_s=0.3, names=("load", "knob")):
    return GroupCore(OpcUaGroup("fast", 0.1, stale_after_s), names)


def test_a_vouched_group_emits_every_node_once_a_cycle_with_one_stamp():
    group = core()
    group.update("load", 42.5, "")
    group.update("knob", 100.0, "")
    group.vouch(1000 * _ms)
    samples = group.snapshot(77, 1000 * _ms)
    assert samples == [Sample("load", 77, 42.5, Quality.GOOD), Sample("knob", 77, 100.0)]
    assert group.snapshot(78, 1100 * _ms) == [Sample("load", 78, 42.5), Sample("knob", 78, 100.0)]


def test_values_go_stale_once_with_the_last_good_value_when_the_server_stops_vouching():
    group = core()
    group.update("load", 42.5, "")
    group.update("knob", 100.0, "")
    group.vouch(0)
    assert len(group.snapshot(1, 0)) == 2
    assert len(group.snapshot(2, 300 * _ms)) == 2  # within stale_after_s: still current
    stale = group.snapshot(4, 301 * _ms)
    assert stale == [
        Sample("load", 4, 42.5, Quality.STALE),
        Sample("knob", 4, 100.0, Quality.STALE),
    ]
    assert group.snapshot(5, 2000 * _ms) == []  # once
    group.vouch(2100 * _ms)
    assert [s.quality for s in group.snapshot(6, 2100 * _ms)] == [Quality.GOOD, Quality.GOOD]
    assert group.counters["stale"] == 2


def test_a_bad_node_is_bad_every_cycle_and_stale_once_past_the_limit():
    group = core()
    group.update("load", 42.5, "")
    group.update("knob", 100.0, "")
    group.vouch(0)
    group.snapshot(1, 0)
    group.update("load", math.nan, "bad_status", "BadSensorFailure")
    qualities = []
    for i in range(1, 6):
        group.vouch(i * 100 * _ms)
        qualities += [s.quality for s in group.snapshot(i, i * 100 * _ms) if s.channel == "load"]
    assert qualities == [Quality.BAD] * 3 + [Quality.BAD, Quality.STALE, Quality.BAD]
    assert group.counters["bad_status"] == 5


def test_after_a_new_session_old_readings_wait_for_the_server_to_say_them_again():
    group = core()
    group.update("load", 42.5, "")
    group.update("knob", 100.0, "")
    group.vouch(0)
    group.snapshot(1, 0)
    group.reset()
    group.vouch(100 * _ms)  # a keep-alive before the new subscription's first data
    assert group.snapshot(2, 100 * _ms) == []
    group.update("knob", 90.0, "")
    assert group.snapshot(3, 200 * _ms) == [Sample("knob", 3, 90.0)]


def test_a_failed_read_emits_nothing_until_the_next_one():
    group = core()
    group.update("load", 42.5, "")
    group.update("knob", 100.0, "")
    group.vouch(0)
    group.snapshot(1, 0)
    group.lapse()
    assert group.snapshot(2, 100 * _ms) == []


def test_a_node_never_read_goes_stale_as_nan_from_its_first_cycle():
    group = core(names=("load",))
    assert group.snapshot(1, 0) == []
    stale = group.snapshot(2, 400 * _ms)
    assert len(stale) == 1 and stale[0].quality is Quality.STALE and math.isnan(stale[0].value)


@pytest.mark.parametrize(
    ("status", "variant", "value", "expected"),
    [
        (GOOD, "Double", 42.5, (42.5, "")),
        (GOOD, "Boolean", True, (1.0, "")),
        (GOOD, "UInt64", 2**64 - 1, (float(2**64 - 1), "")),
        (GOOD, "SByte", -5, (-5.0, "")),
        (GOOD, "String", "1001", (1001.0, "")),
        (GOOD, "String", " -2.5 ", (-2.5, "")),
        (GOOD, "String", "PART_A.MPF", (math.nan, "not_numeric")),
        (GOOD, "String", "nan", (math.nan, "not_numeric")),
        (GOOD, "Double", math.inf, (math.nan, "bad_value")),
        (GOOD, "DateTime", object(), (math.nan, "unsupported_type")),
        (GOOD, "Null", None, (math.nan, "no_value")),
        (UNCERTAIN, "Double", 42.5, (math.nan, "uncertain")),
        (BAD_STATUS, "Null", None, (math.nan, "bad_status")),
        (0xC0000000, "Double", 1.0, (math.nan, "bad_status")),  # reserved severity
    ],
)
def test_a_reading_is_a_number_or_why_it_is_bad(status, variant, value, expected):
    number, fault = reading(status, variant, value)
    assert fault == expected[1]
    assert number == expected[0] or math.isnan(number) and math.isnan(expected[0])


def test_an_array_is_not_a_channel_value():
    assert reading(GOOD, "Double", [1.0, 2.0], is_array=True)[1] == "unsupported_type"


@pytest.mark.parametrize(
    ("value", "variant", "expected"),
    [
        (87.4, "Double", 87.4),
        (87.6, "Int16", 87),  # down, as the actuator rounds
        (87.9999999999, "Int16", 88),  # float noise under a whole number is that number
        (-0.6, "SByte", -1),
        (0.4, "UInt16", 0),
        (255.0, "Byte", 255),
        (0.0, "Boolean", False),
        (2.0, "Boolean", True),
        (1001.0, "String", "1001"),
        (12.5, "String", "12.5"),
        (1e39, "Double", 1e39),
    ],
)
def test_a_write_is_converted_to_the_nodes_type(value, variant, expected):
    assert write_value(value, variant) == expected
    assert type(write_value(value, variant)) is type(expected)


@pytest.mark.parametrize(
    ("value", "variant", "code"),
    [
        (256.0, "Byte", "BadOutOfRange"),
        (-0.4, "UInt32", "BadOutOfRange"),
        (math.nan, "Int32", "BadOutOfRange"),
        (math.inf, "Boolean", "BadOutOfRange"),
        (1e39, "Float", "BadOutOfRange"),
        (1.0, "DateTime", "BadTypeMismatch"),
        (1.0, None, "BadTypeMismatch"),
    ],
)
def test_a_write_the_type_cannot_hold_is_refused_with_the_servers_code(value, variant, code):
    with pytest.raises(WriteRefused, match=f"^{code}$"):
        write_value(value, variant)


def test_the_schedule_keeps_absolute_deadlines_and_a_late_cycle_skips_ahead():
    deadlines = Deadlines(0.1, 1000 * _ms)
    assert deadlines.after_cycle(1002 * _ms) == (pytest.approx(0.098), 0)
    assert deadlines.after_cycle(1101 * _ms) == (pytest.approx(0.099), 0)
    # 250 ms late: the cycles due at 1.3 and 1.4 s are skipped, the next is due at 1.5 s.
    assert deadlines.after_cycle(1450 * _ms) == (pytest.approx(0.05), 2)
    assert deadlines.next_ns == 1500 * _ms


# -- the source against the bench's server ------------------------------------------------------


class ServerClock:
    """The bench plant's time: the test sets it (8 s into the demo is mid-cut)."""

    def __init__(self) -> None:
        self.t_s = 0.0

    def __call__(self) -> float:
        return self.t_s


@contextlib.asynccontextmanager
async def serving(**options):
    """The demo plant served on 127.0.0.1, a free port, cutting (plant time 8 s); a refresh
    every 20 ms, so subscriptions see injected faults."""
    clock = ServerClock()
    controller = OpcUaController(demo_plant(), clock=clock, refresh_period_s=0.02, **options)
    await controller.start()
    clock.t_s = 8.0
    await controller.advance()
    try:
        yield controller
    finally:
        await controller.stop()


def section(url: str, extra: str = "", nodes: str = "") -> str:
    return f"""\
[opcua]
url = "{url}"
namespace = "{NAMESPACE_URI}"
timeout_s = 1.0
reconnect_min_s = 0.05
reconnect_max_s = 0.2
{extra}
[opcua.groups.fast]
period_s = 0.05
stale_after_s = 0.25

[opcua.groups.slow]
period_s = 0.1

[[opcua.nodes]]
name = "spindle_load"
browse_path = "Objects/Machines/{MACHINE}/Monitoring/Spindle/ActLoad"
unit = "%"
group = "fast"

[[opcua.nodes]]
name = "{AGENT_OVERRIDE}"
node_id = "nsu={NAMESPACE_URI};s={MACHINE}/Monitoring/Channel/AgentFeedOverride"
unit = "%"
group = "fast"
writable = true

[[opcua.nodes]]
name = "spindle_on"
browse_path = "Objects/Machines/{MACHINE}/Monitoring/Spindle/IsRotating"
group = "slow"

[[opcua.nodes]]
name = "tool_number"
browse_path = "Objects/Machines/{MACHINE}/Monitoring/Channel/ActToolNumber"
group = "slow"
type = "uint32"

[[opcua.nodes]]
name = "program_number"
browse_path = "Objects/Machines/{MACHINE}/Production/ActiveProgram/Name"
group = "slow"
{nodes}"""


def config(text: str):
    checker = TomlChecker("agent.toml", text, ConfigError)
    return parse_opcua(checker, checker.parse(), set())


class Run:
    """A source running in a task; what it emitted, by channel."""

    def __init__(self, source: OpcUaSource, samples: list[Sample]):
        self.source, self.samples = source, samples

    def last(self, channel: str) -> Sample | None:
        return next((s for s in reversed(self.samples) if s.channel == channel), None)

    def of(self, channel: str, quality: Quality) -> list[Sample]:
        return [s for s in self.samples if s.channel == channel and s.quality is quality]

    def since(self, count: int, quality: Quality) -> set[str]:
        """The channels with a `quality` sample after the first `count` samples."""
        return {s.channel for s in self.samples[count:] if s.quality is quality}

    async def until(self, predicate, what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not predicate():
            assert time.monotonic() < deadline, f"no {what} within {WAIT_S} s"
            await asyncio.sleep(0.02)

    async def good(self, channel: str) -> Sample:
        await self.until(lambda: (s := self.last(channel)) and s.quality is Quality.GOOD, "GOOD")
        return self.last(channel)


@contextlib.asynccontextmanager
async def running(cfg, connect=None):
    samples: list[Sample] = []
    source = OpcUaSource(cfg, SystemClock(), samples.extend, connect)
    task = asyncio.create_task(source.run())
    try:
        yield Run(source, samples)
        assert not task.done(), "run() ended: it must never raise the server's faults"
    finally:
        await cancel_and_wait([task])


def run(scenario):
    asyncio.run(scenario())


def test_values_arrive_by_subscription_with_their_names_units_and_quality():
    async def scenario():
        async with serving() as controller, running(config(section(controller.url))) as r:
            units = {c.name: c.unit for c in declare(r.source.cfg).channels}
            assert units["spindle_load"] == units[AGENT_OVERRIDE] == "%"
            assert await r.source.wait_ready(WAIT_S)
            plant = controller.plant.values()
            assert (await r.good("spindle_load")).value == plant["spindle_load"] > 0
            assert (await r.good(AGENT_OVERRIDE)).value == 100.0
            assert (await r.good("spindle_on")).value == 1.0
            assert (await r.good("tool_number")).value == plant["tool_number"]
            assert (await r.good("program_number")).value == plant["program_number"] == 1001
            for _ in range(300):  # the first values came by one Read a group at connect
                if r.source.stats().counts["notifications"] >= 5:
                    break
                await asyncio.sleep(0.01)
            stats = r.source.stats()
            assert (stats.state, stats.up, stats.connects) == ("up", True, 1)
            # then the subscriptions only
            assert stats.counts["notifications"] >= 5 and stats.counts["reads"] == 2
            assert stats.groups["fast"].cycles > 0 and stats.groups["slow"].cycles > 0
            assert set(stats.faults) <= {"stale"}  # a loaded test machine may stall a cycle
            assert r.source.identity["product"]
            # One stamp a group cycle: the fast group's nodes share theirs, the slow group's not.
            stamps = {n: {s.stamp_ns for s in r.samples if s.channel == n} for n in plant}
            assert stamps["spindle_load"] == stamps[AGENT_OVERRIDE]
            assert stamps["spindle_on"] == stamps["program_number"]
            assert not stamps["spindle_load"] & stamps["spindle_on"]

    run(scenario)


def test_a_bad_status_on_the_server_shows_as_bad_and_clears_to_good():
    async def scenario():
        async with serving() as controller, running(config(section(controller.url))) as r:
            await r.good("spindle_load")
            controller.faults.fail("spindle_load", ua.StatusCodes.BadSensorFailure)
            await r.until(lambda: r.last("spindle_load").quality is Quality.BAD, "BAD")
            assert math.isnan(r.last("spindle_load").value)
            assert r.last(AGENT_OVERRIDE).quality is Quality.GOOD
            assert r.source.stats().faults["bad_status"] >= 1
            controller.faults.clear()
            assert (await r.good("spindle_load")).value == controller.plant.values()["spindle_load"]

    run(scenario)


def test_a_stopped_server_makes_values_stale_once_and_a_restarted_one_is_read_again():
    async def scenario():
        async with serving() as controller, running(config(section(controller.url))) as r:
            load = (await r.good("spindle_load")).value
            await r.good("program_number")
            await controller.stop()
            names = ("spindle_load", AGENT_OVERRIDE, "spindle_on", "program_number")
            await r.until(lambda: all(r.of(n, Quality.STALE) for n in names), "STALE")
            assert r.of("spindle_load", Quality.STALE)[0].value == load  # the last good one
            assert r.source.stats().state == "down"
            await asyncio.sleep(0.5)  # more cycles with the server down: no second STALE
            assert all(len(r.of(n, Quality.STALE)) == 1 for n in names)
            assert r.source.stats().faults["unreachable"] >= 1
            count = len(r.samples)
            await controller.restart()
            assert await r.source.wait_ready(WAIT_S)
            await r.until(lambda: set(names) <= r.since(count, Quality.GOOD), "GOOD again")
            stats = r.source.stats()
            assert (stats.connects, stats.disconnects, stats.faults["session_lost"]) == (2, 1, 1)

    run(scenario)


def test_a_dropped_session_is_noticed_and_a_new_one_subscribes_again():
    async def scenario():
        async with serving() as controller, running(config(section(controller.url))) as r:
            await r.good("spindle_load")
            assert await controller.drop_sessions() == 1
            await r.until(lambda: r.source.stats().disconnects == 1, "session loss")
            await r.until(
                lambda: r.source.stats().connects == 2 and r.source.connected, "reconnect"
            )
            count = len(r.samples)
            controller.faults.fail("spindle_load")  # a change only the new subscription sees
            await r.until(lambda: "spindle_load" in r.since(count, Quality.BAD), "notifications")
            assert r.source.stats().counts["publishes"] > 0

    run(scenario)


def test_a_subscription_the_server_forgot_is_noticed_by_its_silence():
    async def scenario():
        async with serving() as controller, running(config(section(controller.url))) as r:
            await r.good("spindle_load")
            # As a server whose subscriptions expired, the session kept: the bench has no
            # switch for it, so its asyncua server deletes them.
            service = controller._server.iserver.subscription_service
            await service.delete_subscriptions(list(service.subscriptions))
            faults = r.source.stats
            await r.until(lambda: faults().faults.get("subscription_lost") == 1, "the silence")
            await r.until(lambda: faults().connects == 2, "a new session")
            count = len(r.samples)
            await r.until(lambda: "spindle_load" in r.since(count, Quality.GOOD), "GOOD again")

    run(scenario)


def test_a_server_that_refuses_subscriptions_is_read_each_period():
    async def scenario():
        async with (
            serving(subscriptions=False) as controller,
            running(config(section(controller.url))) as r,
        ):
            assert (await r.good("spindle_load")).value == controller.plant.values()["spindle_load"]
            await r.good("program_number")
            stats = r.source.stats()
            assert stats.faults["subscription_refused"] >= 1
            assert stats.counts["reads"] > 0 and stats.counts["publishes"] == 0

    run(scenario)


def test_mode_poll_reads_each_period_without_subscribing():
    async def scenario():
        async with (
            serving() as controller,
            running(config(section(controller.url, 'mode = "poll"'))) as r,
        ):
            await r.good("spindle_load")
            controller.faults.fail("spindle_load")
            await r.until(lambda: r.last("spindle_load").quality is Quality.BAD, "BAD")
            stats = r.source.stats()
            assert stats.counts["reads"] > 0 and stats.counts["publishes"] == 0
            assert "subscription_refused" not in stats.faults

    run(scenario)


def test_a_node_the_server_lacks_is_bad_and_the_others_are_read():
    missing = (
        '\n[[opcua.nodes]]\nname = "spindle_torque"\ngroup = "fast"\n'
        f'browse_path = "Objects/Machines/{MACHINE}/Monitoring/Spindle/ActTorque"\n'
        '\n[[opcua.nodes]]\nname = "load_as_integer"\ngroup = "fast"\ntype = "int32"\n'
        f'browse_path = "Objects/Machines/{MACHINE}/Monitoring/Spindle/ActLoad"\n'
    )

    async def scenario():
        async with (
            serving() as controller,
            running(config(section(controller.url, nodes=missing))) as r,
        ):
            await r.good("spindle_load")
            await r.until(lambda: r.last("load_as_integer") is not None, "a sample")
            for name in ("spindle_torque", "load_as_integer"):  # no such node; a Double
                assert r.last(name).quality is Quality.BAD
            assert r.source.stats().faults["unresolved"] >= 2

    run(scenario)


def _node(cfg, name):
    return next(n for n in cfg.nodes if n.name == name)


def test_a_write_of_the_override_moves_the_plants_agent_override():
    async def scenario():
        async with serving() as controller:
            cfg = config(section(controller.url))
            async with running(cfg) as r:
                await r.good(AGENT_OVERRIDE)
                writer = r.source.take_writer(asyncio.get_running_loop())
                writer.write(_node(cfg, AGENT_OVERRIDE), 80.0)
                await writer.flush()
                assert controller.plant.values()[AGENT_OVERRIDE] == 80.0
                assert r.source.stats().writes == {"ok": 1}
                await r.until(lambda: r.last(AGENT_OVERRIDE).value == 80.0, "the read-back")

    run(scenario)


def test_a_newer_write_supersedes_one_not_yet_sent():
    async def scenario():
        async with serving() as controller:
            cfg = config(section(controller.url))
            async with running(cfg) as r:
                await r.source.wait_ready(WAIT_S)
                writer = r.source.take_writer(asyncio.get_running_loop())
                for value in (90.0, 80.0, 70.0):  # queued in one go: the writer is not woken
                    writer.write(_node(cfg, AGENT_OVERRIDE), value)
                await writer.flush()
                assert controller.plant.values()[AGENT_OVERRIDE] == 70.0
                assert r.source.stats().writes == {"ok": 1, "superseded": 2}

    run(scenario)


def test_writes_the_server_refuses_are_counted_by_its_status_code():
    knob = (
        '\n[[opcua.nodes]]\nname = "feed_knob"\ngroup = "slow"\nwritable = true\n'
        f'browse_path = "Objects/Machines/{MACHINE}/Monitoring/Channel/FeedOverride"\n'
    )

    async def scenario():
        async with serving() as controller:
            cfg = config(section(controller.url, nodes=knob))
            async with running(cfg) as r:
                await r.source.wait_ready(WAIT_S)
                writer = r.source.take_writer(asyncio.get_running_loop())
                writer.write(_node(cfg, "feed_knob"), 50.0)  # read-only on the server
                await writer.flush()
                writer.write(_node(cfg, AGENT_OVERRIDE), 151.0)  # past its 0..150
                await writer.flush()
                assert r.source.stats().writes == {
                    "refused_BadNotWritable": 1,
                    "refused_BadOutOfRange": 1,
                }
                values = controller.plant.values()
                assert (values["feed_knob"], values[AGENT_OVERRIDE]) == (100.0, 100.0)

    run(scenario)


def test_a_node_not_configured_writable_raises_and_the_writer_is_handed_out_once():
    async def scenario():
        cfg = config(section("opc.tcp://127.0.0.1:9"))
        source = OpcUaSource(cfg, FakeClock(), lambda samples: None)
        writer = source.take_writer(asyncio.get_running_loop())
        with pytest.raises(ValueError, match="'spindle_load' is not writable"):
            writer.write(_node(cfg, "spindle_load"), 50.0)
        with pytest.raises(RuntimeError, match="already taken"):
            source.take_writer(asyncio.get_running_loop())

    run(scenario)


def test_control_may_write_only_nodes_configured_writable():
    cfg = config(section("opc.tcp://127.0.0.1:9"))
    source = OpcUaSource(cfg, FakeClock(), lambda samples: None)
    targets = source.write_targets(ControlConfig(writable=(AGENT_OVERRIDE,)))
    assert targets == {AGENT_OVERRIDE: _node(cfg, AGENT_OVERRIDE)}
    assert targets[AGENT_OVERRIDE].resolution == 0.001  # a node of no stated type: a float's
    assert _node(cfg, "tool_number").resolution == 1.0  # type = "uint32"
    for name, why in (("spindle_load", "lacks writable = true"), ("feed", "no OPC UA node")):
        with pytest.raises(ConfigError, match=why):
            source.write_targets(ControlConfig(writable=(name,)))


def test_a_write_while_the_server_is_away_fails_at_once_as_down():
    async def scenario():
        cfg = config(section("opc.tcp://127.0.0.1:9"))  # the discard port: nobody serves
        async with running(cfg) as r:
            writer = r.source.take_writer(asyncio.get_running_loop())
            writer.write(_node(cfg, AGENT_OVERRIDE), 80.0, urgent=True)
            await writer.flush()
            assert r.source.stats().writes == {"down": 1}
            assert r.source.stats().state != "up"

    run(scenario)


def test_a_client_that_cannot_be_made_is_counted_and_retried_without_raising():
    made = []

    async def connect(cfg):
        made.append(cfg)
        raise FileNotFoundError(2, "No such file or directory", "agent-key.pem")

    async def scenario():
        async with running(config(section("opc.tcp://127.0.0.1:9")), connect) as r:
            await r.until(lambda: len(made) >= 3, "retries")
            assert r.source.stats().faults["client_setup"] >= 2
            assert r.source.stats().state != "up"

    run(scenario)


# -- security ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def opcua_pki(tmp_path_factory):
    """Server and agent certificates (the agent's trusted by the server) and user files; the
    same certificates as DER, and the agent's key as PEM under a name that is not .pem."""
    d = tmp_path_factory.mktemp("opcua-pki")
    (d / "trusted").mkdir()
    make_certificate(d / "server-cert.pem", d / "server-key.pem", APPLICATION_URI)
    make_certificate(d / "trusted" / "agent-cert.pem", d / "agent-key.pem", CLIENT_URI)
    for pem, der in (
        ("trusted/agent-cert.pem", "agent-cert.der"),
        ("server-cert.pem", "server.crt"),
    ):
        certificate = x509.load_pem_x509_certificate((d / pem).read_bytes())
        (d / der).write_bytes(certificate.public_bytes(serialization.Encoding.DER))
    (d / "agent.key").write_bytes((d / "agent-key.pem").read_bytes())
    (d / "agent.key").chmod(0o600)
    for name, text in (("user", "agent:feed-4-speed\n"), ("wrong-user", "agent\nfeed-4-sped\n")):
        (d / name).write_text(text)
        (d / name).chmod(0o600)
    return d


PEM_FILES = ("trusted/agent-cert.pem", "agent-key.pem", "server-cert.pem")
DER_FILES = ("agent-cert.der", "agent.key", "server.crt")  # the key PEM, its name not .pem


def secured(url, pki, security="sign_and_encrypt", user="user", files=PEM_FILES):
    certificate, key, server = (pki / name for name in files)
    keys = (
        f'security = "{security}"\ncertificate = "{certificate}"\nprivate_key = "{key}"\n'
        f'server_certificate = "{server}"\nuser_file = "{pki / user}"\n'
    )
    return config(section(url, keys))


def secure_server(pki):
    return serving(
        certificate=pki / "server-cert.pem",
        private_key=pki / "server-key.pem",
        users=USERS,
        trusted_clients=pki / "trusted",
    )


@pytest.mark.parametrize(
    ("security", "files"),
    [("sign_and_encrypt", PEM_FILES), ("sign", DER_FILES)],
    ids=["pem", "der"],
)
def test_a_secured_session_with_user_and_password_reads_and_writes(opcua_pki, security, files):
    async def scenario():
        async with secure_server(opcua_pki) as controller:
            cfg = secured(controller.url, opcua_pki, security, files=files)
            async with running(cfg) as r:
                assert (await r.good("spindle_load")).value > 0
                writer = r.source.take_writer(asyncio.get_running_loop())
                writer.write(_node(cfg, AGENT_OVERRIDE), 85.0)
                await writer.flush()
                assert controller.plant.values()[AGENT_OVERRIDE] == 85.0

    run(scenario)


def test_a_wrong_password_is_counted_and_retried_without_raising(opcua_pki):
    async def scenario():
        async with (
            secure_server(opcua_pki) as controller,
            running(secured(controller.url, opcua_pki, user="wrong-user")) as r,
        ):
            await r.until(lambda: r.source.stats().faults.get("access_denied", 0) >= 2, "retries")
            assert r.source.stats().connects == 0
            assert "spindle_load" not in r.since(0, Quality.GOOD)

    run(scenario)


def test_a_server_showing_another_certificate_is_refused(opcua_pki, tmp_path):
    make_certificate(tmp_path / "other-cert.pem", tmp_path / "other-key.pem", APPLICATION_URI)

    async def scenario():
        async with secure_server(opcua_pki) as controller:
            cfg = secured(controller.url, opcua_pki)
            pinned = replace(cfg, server_certificate=str(tmp_path / "other-cert.pem"))
            async with running(pinned) as r:
                # The bench server cannot decrypt what is sealed for another key: it answers
                # nothing, and each attempt times out.
                await r.until(lambda: r.source.stats().faults.get("timeout", 0) >= 2, "retries")
                assert r.source.stats().connects == 0
                assert "spindle_load" not in r.since(0, Quality.GOOD)

    run(scenario)
