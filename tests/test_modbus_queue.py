"""The order of a controller's requests (sans-IO), and what it means on simulated time: the
safe write reaches the wire within one reply timeout of the decision (at once on TCP), and a
stop with the controller silent ends within one reply timeout (two on RTU), however long the
silence and however many reads and refreshes were asked for meanwhile."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.sources.modbus_queue import Job, RequestQueue

pytestmark = pytest.mark.timeout(60)

OVERRIDE = 100  # the override register


def read(name="read"):
    return Job(payload=name)


def write(value, urgent=False, register=OVERRIDE):
    return Job(register, urgent, payload=value)


# -- the rules -------------------------------------------------------------------------------


def test_an_urgent_write_goes_before_reads_and_other_writes():
    queue = RequestQueue(can_abandon=False)
    queue.put(read("a"))
    queue.put(write(150, register=200))
    queue.put(write(100, urgent=True))
    assert queue.take().payload == 100


def test_a_write_goes_before_the_reads_that_wait():
    queue = RequestQueue(can_abandon=False)
    queue.put(read("a"))
    queue.put(read("b"))
    queue.put(write(120))
    assert queue.take().payload == 120


def test_writes_never_go_twice_in_a_row_while_a_read_waits():
    queue = RequestQueue(can_abandon=False)
    taken = []
    queue.put(read("a"))
    for value in range(4):
        queue.put(write(value, register=value))  # four registers: none superseded
    while (job := queue.take()) is not None:
        taken.append(job.payload)
        queue.done(job)
        if job.payload == "a":
            queue.put(read("b"))
    assert taken == [0, "a", 1, "b", 2, 3]


def test_a_newer_write_supersedes_the_one_waiting_for_its_register():
    queue = RequestQueue(can_abandon=False)
    first, second, third = write(110), write(120), write(130)
    assert queue.put(first) is None
    assert queue.put(second) is first
    assert queue.put(third) is second
    assert len(queue) == 1 and queue.take() is third


def test_a_write_in_flight_is_not_superseded_the_next_one_waits():
    queue = RequestQueue(can_abandon=False)
    queue.put(write(110))
    in_flight = queue.take()
    assert queue.put(write(120)) is None
    queue.done(in_flight)
    assert queue.take().payload == 120


@pytest.mark.parametrize(("can_abandon", "expected"), [(True, True), (False, False)])
def test_an_urgent_write_preempts_the_request_in_flight_only_where_it_can_be_abandoned(
    can_abandon, expected
):
    queue = RequestQueue(can_abandon)
    queue.put(read())
    queue.take()
    queue.put(write(120))
    assert not queue.preempts()  # a write that is not urgent waits its turn
    queue.put(write(100, urgent=True))
    assert queue.preempts() is expected


def test_nothing_to_preempt_when_nothing_is_in_flight():
    queue = RequestQueue(can_abandon=True)
    queue.put(write(100, urgent=True))
    assert not queue.preempts()


def test_a_waiting_job_can_be_discarded_and_drained():
    queue = RequestQueue(can_abandon=False)
    a, b, w = read("a"), read("b"), write(100)
    for job in (a, b, w):
        queue.put(job)
    assert queue.discard(a) and not queue.discard(a)
    in_flight = queue.take()
    assert in_flight is w
    assert queue.drain() == [b] and len(queue) == 0
    assert queue.in_flight is w  # the drain leaves the request in flight to its shell


def test_taking_while_a_job_is_in_flight_is_a_bug():
    queue = RequestQueue(can_abandon=False)
    queue.put(read())
    queue.take()
    with pytest.raises(RuntimeError, match="still in flight"):
        queue.take()


# -- on simulated time -----------------------------------------------------------------------


class SimulatedLink:
    """The link's shell on simulated time: one request in flight, answered `reply_s` after it
    went out (None: a silent controller, so it ends at the timeout), abandoned at once when
    the queue preempts it. Records when each job went on the wire and when it ended."""

    def __init__(self, can_abandon: bool, timeout_s: float, reply_s: float | None = None):
        self.queue = RequestQueue(can_abandon)
        self.timeout_s, self.reply_s = timeout_s, reply_s
        self.now = 0.0
        self.ends_at: float | None = None
        self.sent: dict[int, float] = {}  # id(job) -> time on the wire
        self.ended: dict[int, float] = {}  # id(job) -> answered, timed out or abandoned
        self.reads_sent = 0
        self.superseded = 0

    def put(self, job: Job) -> None:
        superseded = self.queue.put(job)
        if superseded is not None:
            self.ended[id(superseded)] = self.now  # answered "superseded", never sent
            self.superseded += 1
        self._step()

    def advance_to(self, t: float) -> None:
        while self.ends_at is not None and self.ends_at <= t:
            self.now = self.ends_at
            self._end()
        self.now = t

    def _end(self) -> None:
        job = self.queue.in_flight
        self.ended[id(job)] = self.now
        self.queue.done(job)
        self.ends_at = None
        if not job.is_write:
            self.put(read())  # the poll group asks again at once: it is always behind
        self._step()

    def _step(self) -> None:
        if self.queue.preempts():
            self._end()
        if self.queue.in_flight is None:
            job = self.queue.take()
            if job is not None:
                self.sent[id(job)] = self.now
                self.reads_sent += not job.is_write
                self.ends_at = self.now + (self.timeout_s if self.reply_s is None else self.reply_s)


TIMEOUT_S = 5.0  # the issue's `timeout_s = 5`
EPS = 1e-9  # float sums of simulated seconds


@given(
    can_abandon=st.booleans(),
    groups=st.integers(1, 6),
    decided_at=st.floats(0.0, 60.0),
    refreshes=st.booleans(),
)
def test_a_safe_write_reaches_the_wire_within_one_timeout_of_the_decision(
    can_abandon, groups, decided_at, refreshes
):
    """A silent controller; every poll group always has a read waiting (each times out), and
    the control loop may have re-sent a write every 0.5 s (verify_s) all along."""
    link = SimulatedLink(can_abandon, TIMEOUT_S)
    for _ in range(groups):
        link.put(read())
    t = 0.0
    while refreshes and t + 0.5 < decided_at:
        t += 0.5
        link.advance_to(t)
        link.put(write(150))
    link.advance_to(decided_at)
    safe = write(100, urgent=True)
    link.put(safe)
    link.advance_to(decided_at + 3 * TIMEOUT_S)
    to_wire = link.sent[id(safe)] - decided_at
    if can_abandon:
        assert to_wire == 0.0  # TCP: the request in flight is abandoned
    else:
        assert to_wire <= TIMEOUT_S + EPS  # RTU: the request in flight ends first, then the write
    assert link.ended[id(safe)] - decided_at <= to_wire + TIMEOUT_S + EPS


@pytest.mark.parametrize(("can_abandon", "timeouts"), [(True, 1), (False, 2)])
def test_a_stop_after_30_s_of_silence_ends_within_one_timeout_two_on_rtu(can_abandon, timeouts):
    """The issue's case: timeout_s = 5, 30 s of silence with writes re-sent every 0.5 s and
    refreshed every 1 s, then SIGTERM: the safe write is all the stop waits for."""
    link = SimulatedLink(can_abandon, TIMEOUT_S)
    link.put(read("fast"))
    link.put(read("slow"))
    for i in range(1, 61):
        link.advance_to(i * 0.5)
        link.put(write(150))
    stop = 30.0
    safe = write(100, urgent=True)
    link.put(safe)
    link.advance_to(stop + 10 * TIMEOUT_S)
    assert link.ended[id(safe)] - stop <= timeouts * TIMEOUT_S + EPS
    # Of the 60 writes asked in the silence, one at a time was waiting: the rest were
    # superseded, never sent (before, each waited its own timeout: 225.6 s to stop).
    assert link.superseded >= 60 - 30 / TIMEOUT_S - 1


def test_a_control_loop_writing_every_tick_does_not_starve_the_poll():
    """RTU at 19200 baud: a write round trip takes about 15 ms and the loop asks for a new
    value every 10 ms; the reads still get every other turn."""
    link = SimulatedLink(can_abandon=False, timeout_s=1.0, reply_s=0.015)
    link.put(read())
    for tick in range(1, 101):
        link.advance_to(tick * 0.01)
        link.put(write(100 + tick % 50))
    assert link.reads_sent >= 25  # one second: about 33 rounds of a write and a read
