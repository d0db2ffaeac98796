"""The poller on simulated time, against a scripted link: decoding, quality, staleness,
bad replies counted and survived, refused gaps split."""

import asyncio
import math

from edge_agent.clock import FakeClock
from edge_agent.config import parse_config
from edge_agent.registers import encode_registers
from edge_agent.samples import Quality
from edge_agent.sources.modbus import ModbusPoller
from edge_agent.sources.modbus_link import LinkError

CONFIG = """\
[machine]
site = "s"
machine_id = "m"
[controller]
max_gap_registers = 8
[poll_groups.fast]
period_s = 0.1
stale_after_s = 0.3
[[tags]]
name = "spindle_load"
address = 0
table = "input"
type = "uint16"
scale = 0.1
poll_group = "fast"
[[tags]]
name = "spindle_power"
address = 4
table = "input"
type = "float32"
word_order = "little"
poll_group = "fast"
[[tags]]
name = "spindle_on"
address = 0
table = "discrete"
poll_group = "fast"
"""


PASS = object()


class ScriptedLink:
    """Answers reads from a register image, or with what the test scripts next."""

    def __init__(self, image):
        self.image = image
        self.script = []
        self.reads = []

    async def read(self, request):
        self.reads.append((request.table, request.address, request.count))
        if self.script:
            outcome = self.script.pop(0)
            if outcome is PASS:
                return self._from_image(request)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        return self._from_image(request)

    def _from_image(self, request):
        table = self.image[request.table.value]
        return [table.get(a, 0) for a in range(request.address, request.end)]


def make(image=None):
    config = parse_config(CONFIG)
    tags = {t.name: t for t in config.tags}
    image = image or {"input": {}, "discrete": {}}
    for name, value in (("spindle_load", 42.5), ("spindle_power", 3.25), ("spindle_on", 1)):
        tag = tags[name]
        for i, word in enumerate(encode_registers(tag, value)):
            image[tag.table.value][tag.address + i] = word
    clock = FakeClock()
    emitted = []
    link = ScriptedLink(image)
    poller = ModbusPoller(config, link, clock, emitted.extend)
    return poller, link, clock, emitted


def poll(poller):
    return asyncio.run(poller.poll_once("fast"))


def by_channel(samples):
    return {s.channel: s for s in samples}


def test_values_are_decoded_scaled_and_good():
    poller, link, _, _ = make()
    samples = by_channel(poll(poller))
    assert samples["spindle_load"].value == 42.5
    assert samples["spindle_power"].value == 3.25
    assert samples["spindle_on"].value == 1.0
    assert {s.quality for s in samples.values()} == {Quality.GOOD}


def test_gap_within_limit_is_read_in_one_request():
    poller, link, _, _ = make()
    poll(poller)
    assert [(t.value, a, n) for t, a, n in link.reads] == [("input", 0, 6), ("discrete", 0, 1)]
    assert poller.requests_per_cycle == {"fast": 2}


def test_exception_reply_marks_its_tags_bad_and_is_counted():
    poller, link, _, _ = make()
    link.script = [4]  # server device failure on the first request (input registers)
    samples = by_channel(poll(poller))
    assert samples["spindle_load"].quality is Quality.BAD
    assert math.isnan(samples["spindle_load"].value)
    assert samples["spindle_on"].quality is Quality.GOOD
    assert poller.counters["exception_04"] == 1


def test_timeouts_and_lost_link_are_counted_and_survived():
    poller, link, _, _ = make()
    link.script = [LinkError("timeout"), LinkError("down")]
    assert poll(poller) == []
    assert poller.counters["timeout"] == 1 and poller.counters["down"] == 1
    assert len(poll(poller)) == 3


def test_values_go_stale_once_after_their_age_limit():
    poller, link, clock, _ = make()
    poll(poller)
    for _ in range(3):
        clock.advance(0.1)
        link.script = [LinkError("down"), LinkError("down")]
        assert poll(poller) == []
    clock.advance(0.05)
    link.script = [LinkError("down"), LinkError("down")]
    stale = by_channel(poll(poller))
    assert set(stale) == {"spindle_load", "spindle_power", "spindle_on"}
    assert stale["spindle_load"].quality is Quality.STALE
    assert stale["spindle_load"].value == 42.5  # the last good value
    clock.advance(1.0)
    link.script = [LinkError("down"), LinkError("down")]
    assert poll(poller) == []  # reported once, not every cycle
    fresh = by_channel(poll(poller))
    assert fresh["spindle_load"].quality is Quality.GOOD


def test_not_stale_within_the_age_limit():
    poller, link, clock, _ = make()
    poll(poller)
    clock.advance(0.29)
    link.script = [LinkError("down"), LinkError("down")]
    assert poll(poller) == []


def test_nan_from_the_controller_is_bad_not_good():
    poller, link, _, _ = make()
    tag = next(t for t in poller.plans["fast"][0].request.tags if t.name == "spindle_power")
    for i, word in enumerate(encode_registers(tag, math.nan)):
        link.image["input"][tag.address + i] = word
    samples = by_channel(poll(poller))
    assert samples["spindle_power"].quality is Quality.BAD
    assert poller.counters["bad_values"] == 1


def test_refused_gap_splits_the_request_for_good():
    poller, link, _, _ = make()
    link.script = [2]  # illegal data address: the controller does not map register 1..3
    samples = by_channel(poll(poller))
    assert samples["spindle_load"].value == 42.5  # read again, gap-free, in the same cycle
    assert poller.requests_per_cycle == {"fast": 3}
    link.reads.clear()
    samples = by_channel(poll(poller))
    assert [(t.value, a, n) for t, a, n in link.reads] == [
        ("input", 0, 1),
        ("input", 4, 2),
        ("discrete", 0, 1),
    ]
    assert samples["spindle_power"].value == 3.25


def test_illegal_address_without_a_gap_is_bad_not_split():
    poller, link, _, _ = make()
    link.script = [PASS, 2]  # the discrete read is refused; it reads no gap
    samples = by_channel(poll(poller))
    assert samples["spindle_on"].quality is Quality.BAD
    assert samples["spindle_load"].quality is Quality.GOOD
    assert poller.requests_per_cycle == {"fast": 2}
    assert poller.counters["exception_02"] == 1
