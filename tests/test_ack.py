"""The plant's acknowledgement (upstream/ack.py) and the publisher's ledger of what it has not
confirmed (upstream/outstanding.py): sans-IO, on simulated time, property-tested and fuzzed."""

import heapq
import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.upstream import ack
from edge_agent.upstream.outstanding import Outstanding

BOOT = bytes.fromhex("0123456789abcdef")
seq_sets = st.sets(st.integers(1, (1 << 63) - 1), max_size=200) | st.sets(
    st.integers(1, 300), max_size=200
)


@given(seq_sets)
def test_runs_name_exactly_the_numbers_ascending_and_disjoint(seqs):
    runs = ack.runs(seqs)
    assert sum(last - first + 1 for first, last in runs) == len(seqs)
    assert all(a[1] + 1 < b[0] for a, b in zip(runs, runs[1:], strict=False))  # merged
    assert all(first in seqs and last in seqs for first, last in runs)


@given(seq_sets)
def test_an_ack_decodes_to_what_was_encoded(seqs):
    payloads = ack.encode(BOOT, seqs)
    assert len(payloads) == (0 if not seqs else 1)
    decoded = [ack.decode(p) for p in payloads]
    assert all(boot == BOOT for boot, _ in decoded)
    assert [run for _, runs in decoded for run in runs] == ack.runs(seqs)


def test_an_ack_is_bytes_a_person_can_read_with_any_msgpack():
    (payload,) = ack.encode(BOOT, [5, 6, 7, 9])
    assert msgpack.unpackb(payload) == [1, 4, BOOT, [5, 7, 9, 9]]
    assert payload.hex() == "940104c4080123456789abcdef9405070909"


def test_more_runs_than_one_ack_holds_make_several():
    seqs = range(1, 2 * (ack.MAX_RUNS + 10), 2)  # every other number: one run each
    payloads = ack.encode(BOOT, seqs)
    assert len(payloads) == 2 and all(len(p) <= ack.MAX_BYTES for p in payloads)
    assert [r for p in payloads for r in ack.decode(p)[1]] == [(s, s) for s in seqs]


@pytest.mark.parametrize(
    "body, why",
    [
        ([2, 4, BOOT, [1, 1]], "not a v1 ack"),
        ([1, 1, BOOT, [1, 1]], "not a v1 ack"),
        ([1, True, BOOT, [1, 1]], "not a v1 ack"),
        ([1, 4, BOOT[:7], [1, 1]], "boot id must be a bin of 8 bytes"),
        ([1, 4, BOOT, [1]], "runs must be an array of first, last pairs"),
        ([1, 4, BOOT, [3, 2]], "run 0: 3..2 is not ascending"),
        ([1, 4, BOOT, [1, 5, 5, 6]], "run 1: 5..6 is not ascending from 6"),
        ([1, 4, BOOT, [0, 1]], "run 0"),
        ([1, 4, BOOT, [1, 1 << 63]], "run 0"),
        ([1, 4, BOOT, [1.0, 2]], "run 0"),
        ([1, 4, BOOT], "not an array"),
        ({"v": 1}, "not an array"),
    ],
)
def test_a_bad_ack_is_one_line_saying_what(body, why):
    with pytest.raises(ack.AckError) as caught:
        ack.decode(msgpack.packb(body))
    assert why in str(caught.value) and "\n" not in str(caught.value)


def test_an_ack_may_carry_more_fields_later():
    assert ack.decode(msgpack.packb([1, 4, BOOT, [1, 2], {"later": 1}])) == (BOOT, [(1, 2)])


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_only_ack_error(payload):
    try:
        boot, runs = ack.decode(payload)
    except ack.AckError as exc:
        assert "\n" not in str(exc)
    else:
        assert len(boot) == 8 and all(1 <= a <= b for a, b in runs)


def test_a_huge_ack_is_refused_before_it_is_parsed():
    with pytest.raises(ack.AckError, match="more than an ack's"):
        ack.decode(b"\x00" * (ack.MAX_BYTES + 1))


# -- the ledger -----------------------------------------------------------------------------


def ledger(capacity=8, timeout_s=10.0, max_timeout_s=60.0):
    return Outstanding(capacity, timeout_s, max_timeout_s)


def send(o, seqs, now, boot=BOOT):
    for seq in seqs:
        o.sent(seq, boot)
        o.arm(seq, now)


def test_a_payload_times_out_only_once_the_broker_took_it():
    o = ledger()
    o.sent(1, BOOT)  # awaiting the broker's PUBACK: not timed
    assert o.expire(1e9) == 0 and o.next_timeout() is None
    o.arm(1, 100.0)
    assert o.next_timeout() == 110.0
    assert o.expire(109.9) == 0 and o.expire(110.0) == 1
    assert o.take_lost(5) == [1]


def test_each_further_attempt_waits_twice_as_long_up_to_the_cap():
    o = ledger(timeout_s=10.0, max_timeout_s=60.0)
    now, waits = 0.0, []
    send(o, [1], now)
    for _ in range(6):
        waits.append(o.next_timeout() - now)
        now = o.next_timeout()
        o.expire(now)
        send(o, o.take_lost(1), now)
    assert waits == [10.0, 20.0, 40.0, 60.0, 60.0, 60.0]


def test_stored_removes_what_it_names_for_the_boot_and_an_unknown_boot_matches_any():
    o = ledger()
    send(o, [1, 2, 3], 0.0)
    o.sent(4, None)  # a spool gap event: boot not recorded
    assert o.stored(bytes(8), [(1, 4)]) == [4]  # another boot: only the unknown one
    assert o.stored(BOOT, [(2, 1 << 62)]) == [2, 3]  # a wide run looks only at what is here
    assert list(sorted(s for s in range(10) if s in o)) == [1]


def test_the_limit_falls_to_one_on_a_timeout_and_grows_back_as_tcp_does():
    o = ledger(capacity=16)
    send(o, range(1, 17), 0.0)
    assert o.room_for_new() == 0
    o.expire(10.0)  # all 16 presumed lost: threshold 8, limit 1
    assert (o.limit, o.threshold, o.room()) == (1.0, 8.0, 1)
    send(o, o.take_lost(o.room()), 10.0)
    assert o.room() == 0
    o.stored(BOOT, [(1, 1)])
    assert o.limit == 2.0  # below the threshold: one more per confirmation (x2 per trip)
    o.stored(BOOT, [(2, 7)])  # not in transit, still counts: the plant has them
    assert o.limit == 8.0
    o.stored(BOOT, [(8, 8)])
    assert o.limit == pytest.approx(8.125)  # at the threshold: +1/limit (+1 per trip)


def test_the_limit_is_lowered_once_per_timeout_not_once_per_payload():
    o = ledger(capacity=16)
    send(o, range(1, 9), 0.0)
    send(o, range(9, 17), 5.0)
    o.expire(10.0)
    assert o.limit == 1.0 and o.threshold == 8.0
    o.stored(BOOT, [(1, 3)])  # 1 -> 2 -> 3 -> 4
    o.expire(15.0)  # the second half, within the same timeout: one loss event
    assert o.limit == 4.0


def test_lost_payloads_given_back_are_taken_again_first():
    o = ledger()
    send(o, [1, 2, 3], 0.0)
    o.expire(10.0)
    assert o.take_lost(2) == [1, 2]
    o.give_back([1, 2])
    assert o.take_lost(5) == [1, 2, 3]


def test_the_heaps_stay_in_proportion_to_what_is_outstanding():
    o = ledger(capacity=100)
    for seq in range(1, 100_001):
        send(o, [seq], float(seq) * 1e-3)
        assert o.stored(BOOT, [(seq, seq)]) == [seq]
    assert len(o) == 0 and len(o._timers) <= 64 + 1


@settings(max_examples=60, deadline=None)
@given(
    drop=st.floats(0.0, 0.6),
    capacity=st.integers(1, 64),
    count=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
)
def test_through_a_lossy_path_every_payload_is_confirmed_and_the_bounds_hold(
    drop, capacity, count, seed
):
    """A simulated plant: each publish (and each ack) is lost with probability `drop`, the rest
    take 10-200 ms each way. Sending by the ledger's rules, every payload ends up confirmed;
    never more than `capacity` unconfirmed, never more sent at once than the limit allowed."""
    rng = random.Random(seed)
    o = ledger(capacity=capacity, timeout_s=1.0, max_timeout_s=8.0)
    events: list[tuple[float, int, str, int]] = []  # (when, tiebreak, what, seq)
    now, next_seq, sends, confirmed, tick = 0.0, 1, 0, set(), 0

    def send(seq):
        nonlocal sends, tick
        o.sent(seq, BOOT)
        o.arm(seq, now)  # the broker took it at once
        sends += 1
        if rng.random() >= drop:  # reaches the collector, which stores and acks it
            tick += 1
            back = now + rng.uniform(0.01, 0.2) + rng.uniform(0.01, 0.2)
            if rng.random() >= drop:
                heapq.heappush(events, (back, tick, "ack", seq))

    while len(confirmed) < count:
        assert now < 1e6, f"not all confirmed in 10^6 s: {len(confirmed)} of {count}"
        o.expire(now)
        before = o.in_transit
        for seq in o.take_lost(o.room()):
            send(seq)
        for _ in range(min(o.room_for_new(), count + 1 - next_seq)):
            send(next_seq)
            next_seq += 1
        assert len(o) <= capacity
        assert o.in_transit <= max(before, int(o.limit))  # sent only within the limit
        timeout = o.next_timeout()
        when = min([t for t in (timeout, events[0][0] if events else None) if t is not None])
        now = max(now, when)
        while events and events[0][0] <= now:
            _, _, _, seq = heapq.heappop(events)
            confirmed.update(o.stored(BOOT, [(seq, seq)]))
    assert confirmed == set(range(1, count + 1))
    if drop == 0:
        assert sends == count  # nothing sent twice on a path that loses nothing
