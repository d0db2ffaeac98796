"""Reconnect backoff: doubles from the minimum, never past the cap, jittered, reset on success."""

from hypothesis import given
from hypothesis import strategies as st

from edge_agent.backoff import Backoff


def test_without_jitter_the_ceiling_doubles_up_to_the_cap():
    backoff = Backoff(0.5, 30.0, rng=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_reset_starts_over_from_the_minimum():
    backoff = Backoff(0.5, 30.0, rng=lambda: 1.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == 0.5


@given(st.floats(0.01, 5), st.floats(1, 100), st.lists(st.floats(0, 1), min_size=1, max_size=80))
def test_every_delay_lies_between_minimum_and_cap(min_s, extra, draws):
    max_s = min_s + extra
    rolls = iter(draws)
    backoff = Backoff(min_s, max_s, rng=lambda: next(rolls))
    for _ in draws:
        assert min_s <= backoff.next_delay() <= max_s


def test_jitter_spreads_agents_apart():
    rolls = iter([0.1, 0.9])
    a, b = Backoff(1, 60, rng=lambda: next(rolls)), Backoff(1, 60, rng=lambda: 0.0)
    a.next_delay(), b.next_delay()
    assert a.next_delay() != b.next_delay()
